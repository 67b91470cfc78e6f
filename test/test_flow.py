"""test/eval_acc_perf.sh end to end: the demo on generated images, random-init weights, two batch sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "test" / "eval_acc_perf.sh"


def run_flow(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(
        ["bash", str(SCRIPT), *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_demo_flow_runs_end_to_end_at_two_batch_sizes(tmp_path):
    out = tmp_path / "demo"
    result = run_flow("--demo", "--output-dir", out, "--batch-sizes", "1,4", "--loop", 2, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "random-init weights: the accuracy below is meaningless" in result.stdout
    assert "81.22%" in result.stdout

    labels = (out / "demo_data" / "val_label.txt").read_text().splitlines()
    assert len(labels) == 12
    assert len(list((out / "prep_dataset").glob("*.bin"))) == 12
    summary = json.loads((out / "eval_summary.json").read_text())
    assert [row["batch_size"] for row in summary["rows"]] == [1, 4]
    for row in summary["rows"]:
        bs_dir = out / f"bs{row['batch_size']}"
        assert len(list((bs_dir / "result" / "infer").glob("*_0.bin"))) == 12
        accuracy = json.loads((bs_dir / "result.json").read_text())
        assert accuracy["images"] == 12 and row["top1"] == accuracy["top1"]
        perf = json.loads((bs_dir / "perf_summary.json").read_text())
        assert row["throughput"] == perf["throughput"] > 0
        assert row["backend"] == perf["backend"]
    # Both batch sizes ran the same model on the same tensors: the same answers.
    assert summary["rows"][0]["top1"] == summary["rows"][1]["top1"]
    table = (out / "eval_summary.md").read_text()
    assert "| 1 |" in table and "| 4 |" in table and "meaningless" in table
    # The three runtimes ran the demo's one checkpoint and agree at fp32, each with its speed.
    runtimes = json.loads((out / "runtime_agreement.json").read_text())["runtimes"]
    assert [row["label"] for row in runtimes] == ["onnxruntime", "openvino", "torch"]
    assert all(row["cosine"] >= 0.99999 and row["top1_agrees"] == 12 for row in runtimes[1:])
    assert all(row["images_per_second"] > 0 for row in runtimes)
    assert result.stdout.count("[INFO] runtimes:") == 3


def test_flow_needs_a_dataset_and_weights(tmp_path):
    result = run_flow("--output-dir", tmp_path / "x", cwd=tmp_path)
    assert result.returncode == 2 and "--datasets-path is required" in result.stderr
    result = run_flow("--datasets-path", tmp_path, cwd=tmp_path)
    assert result.returncode == 2 and "--source" in result.stderr
    result = run_flow("--datasets-path", tmp_path, "--random-init", "--batch-sizes", "1,x", cwd=tmp_path)
    assert result.returncode == 2 and "bad --batch-sizes" in result.stderr
    result = run_flow("--bogus", cwd=tmp_path)
    assert result.returncode == 2 and "unknown argument '--bogus'" in result.stderr


def test_flow_stops_at_the_first_failing_stage(tmp_path):
    missing = tmp_path / "no_such_dataset"
    result = run_flow(
        "--datasets-path", missing, "--random-init", "--output-dir", tmp_path / "o", cwd=tmp_path
    )
    assert result.returncode != 0
    assert str(missing) in result.stderr
    assert not (tmp_path / "o" / "twins_dynamic.onnx").exists()


def test_torch_backend_needs_a_checkpoint_file(tmp_path):
    result = run_flow("--datasets-path", tmp_path, "--random-init", "--backend", "torch", cwd=tmp_path)
    assert result.returncode == 2 and "--backend torch needs --source" in result.stderr


# The Ascend branch driving the real `python3 -m ais_bench` of both generations: test/test_ais_contract.py.


def test_ascend_branch_needs_the_om_files(tmp_path):
    result = run_flow(
        "--datasets-path",
        tmp_path,
        "--backend",
        "ais",
        "--om-dir",
        tmp_path,
        "--batch-sizes",
        "4",
        "--output-dir",
        tmp_path / "o",
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert f"{tmp_path}/twins_bs4.om not found: run test/pth2om.sh" in result.stderr


def demo_images(tmp_path: Path, count: int = 3) -> tuple[Path, Path]:
    """`count` demo images, flat in `data/val/`, with their `data/val_label.txt` beside that folder."""
    from twins_pcpvt.demo import make_demo_dataset

    return make_demo_dataset(tmp_path / "data", count=count)


def test_a_flat_folder_without_labels_is_refused_before_any_work(tmp_path):
    """The README's whole-flow row on a flat folder of photos without val_label.txt: one line naming this
    script's own flag, and nothing run or written."""
    images, labels = demo_images(tmp_path)
    labels.unlink()
    checkpoint = tmp_path / "pcpvt_small.pth"
    checkpoint.write_bytes(b"never read: the labels are checked first")
    result = run_flow(
        "--datasets-path", images, "--source", checkpoint, "--output-dir", tmp_path / "o", cwd=tmp_path
    )
    assert result.returncode == 1 and result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert f"{images}: images without class folders, and no val_label.txt in or beside the folder" in line
    assert "pass --label-file FILE" in line and "--annotation-file-path" not in line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("flags", [["--precision", "fp16"], ["--label-file", "broken_labels.txt"]])
def test_what_would_fail_a_later_stage_is_refused_before_the_first(flags, tmp_path):
    images, _ = demo_images(tmp_path)
    (tmp_path / "broken_labels.txt").write_text("ILSVRC2012_val_00000001.JPEG sixty-five\n")
    result = run_flow(
        "--datasets-path", images, "--random-init", "--output-dir", tmp_path / "o", *flags, cwd=tmp_path
    )
    assert result.returncode == (2 if "--precision" in flags else 1), result.stderr
    (line,) = result.stderr.splitlines()
    assert (
        ("runs fp32" in line) if "--precision" in flags else ("broken_labels.txt:1: malformed label" in line)
    )
    assert result.stdout == "" and not (tmp_path / "o").exists()


@pytest.mark.slow
def test_labels_beside_the_data_folder_are_found_and_a_failed_stage_says_how_to_go_on(tmp_path):
    images, labels = demo_images(tmp_path)
    checkpoint = tmp_path / "pcpvt_small.pth"
    checkpoint.write_bytes(b"not a checkpoint")  # the export stage fails on it
    result = run_flow(
        "--datasets-path", images, "--source", checkpoint, "--output-dir", tmp_path / "o", cwd=tmp_path
    )
    assert result.returncode == 1
    assert f"labels: {labels} (found beside the --datasets-path folder)" in result.stdout.splitlines()[1]
    assert len(list((tmp_path / "o" / "prep_dataset").glob("*.bin"))) == 3  # the preprocess ran
    *_, error, stage = result.stderr.strip().splitlines()
    assert error.startswith(f"error: {checkpoint}")
    assert stage == (
        "eval_acc_perf.sh: error: the export stage failed (exit 1, its error is above): fix what it names "
        "and run the same command again; the preprocess keeps the tensors it already made, the later stages "
        "run again"
    )
