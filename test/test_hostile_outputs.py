"""Hostile output paths, class by class: every path a stage will write is checked before its slow work. The
runner's summary path (a link, a dangling link, a folder, a FIFO) is refused before the model runs; empty or
non-plain output names are usage errors; the agreement check's and compare's --json and the summary table's
files are checked before the runs and reads they follow. Every run is a subprocess under a time and an
address-space limit."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hostile import GIB, assert_clean_failure, run_script, tiny_onnx, write_tensors

pytestmark = pytest.mark.slow  # every case runs a script in a subprocess under limits
MEMORY = 3 * GIB


def infer(tmp_path: Path, *args):
    model, inputs = tiny_onnx(tmp_path / "tiny.onnx"), write_tensors(tmp_path / "prep", ["a.bin", "b.bin"])
    return run_script(
        "twins_pcpvt_s_infer.py",
        *("--model", model, "--backend", "onnxruntime", "--input", inputs),
        *args,
        cwd=tmp_path,
        memory=MEMORY,
        timeout=120,
    )


def occupy(path: Path, kind: str, victim: Path) -> None:
    if kind == "link to a file":
        path.symlink_to(victim)
    elif kind == "dangling link":
        path.symlink_to(path.with_name("missing"))
    elif kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)


KINDS = {
    "link to a file": "symbolic link",
    "dangling link": "symbolic link",
    "folder": "folder",
    "fifo": "FIFO",
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_summary_path_taken_is_refused_before_the_model_runs(tmp_path, kind):
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.json"
    victim.write_text("precious")
    occupy(out / "run_summary.json", kind, victim)
    outcome = infer(tmp_path, "--output", out, "--output_dirname", "run")
    assert_clean_failure(outcome, 1, "run_summary.json", KINDS[kind])
    assert "Performance Summary" not in outcome.stdout  # refused before any inference
    assert sorted(os.listdir(out)) == ["run_summary.json"]  # no output folder, no mark
    assert victim.read_text() == "precious"


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--output", "out", "--output_dirname", ""], "--output_dirname ''"),
        (["--output", "out", "--output_dirname="], "--output_dirname ''"),
        (["--output", "out", "--output_dirname", "."], "--output_dirname '.'"),
        (["--output", "out", "--output_dirname", ".."], "--output_dirname '..'"),
        (["--output", "out", "--output_dirname", "a/b"], "plain folder name"),
        (["--output", ""], "--output ''"),
        (["--output", "", "--output_dirname", "x"], "--output ''"),
        (["--engine", "ray", "--output", "out", "--output_dirname", ""], "--output_dirname ''"),
    ],
)
def test_empty_or_non_plain_output_names_are_usage_errors(tmp_path, args, fragment):
    outcome = infer(tmp_path, *args)
    assert_clean_failure(outcome, 2, fragment)
    assert sorted(os.listdir(tmp_path)) == ["prep", "tiny.onnx"]  # nothing made, not a time-stamp folder


@pytest.mark.parametrize("kind", ["folder", "dangling link"])
def test_the_agreement_json_is_checked_before_the_runs(tmp_path, kind):
    target = tmp_path / "agreement.json"
    occupy(target, kind, tmp_path / "victim")
    outcome = run_script(
        "-m twins_pcpvt.agreement",
        *("--model", tiny_onnx(tmp_path / "tiny.onnx"), "--backend", "onnxruntime"),
        *("--input", write_tensors(tmp_path / "prep", ["a.bin"]), "--precision", "fp16", "--json", target),
        cwd=tmp_path,
        memory=MEMORY,
        timeout=120,
    )
    assert_clean_failure(outcome, 1, "agreement.json", KINDS[kind])
    assert "[INFO]" not in outcome.stdout


@pytest.mark.parametrize("kind", ["link to a file", "dangling link"])
def test_a_comparison_json_path_that_is_a_link_is_refused_before_reading(tmp_path, kind):
    for side in ("a", "b"):
        folder = tmp_path / side
        folder.mkdir()
        (folder / "x_0.bin").write_bytes(b"\0" * 4000)
    victim = tmp_path / "victim.json"
    victim.write_text("precious")
    occupy(tmp_path / "c.json", kind, victim)
    outcome = run_script(
        "twins_pcpvt_s_compare.py",
        *(tmp_path / "a", tmp_path / "b", "--json", tmp_path / "c.json"),
        cwd=tmp_path,
        memory=MEMORY,
        timeout=120,
    )
    assert_clean_failure(outcome, 2, "c.json", "symbolic link")
    assert "overall:" not in outcome.stdout and victim.read_text() == "precious"


@pytest.mark.parametrize("name", ["eval_summary.md", "eval_summary.json"])
def test_the_summary_table_writes_both_files_or_neither(tmp_path, name):
    folder = tmp_path / "eval" / "bs1"
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps({"top1": 0.5, "top5": 0.75, "images": 4}))
    (folder / "perf_summary.json").write_text(json.dumps({"throughput": 3.0}))
    (tmp_path / "eval" / name).symlink_to(tmp_path / "elsewhere")
    outcome = run_script(
        "-m twins_pcpvt.evaltable", tmp_path / "eval", "--batch-sizes", "1", cwd=tmp_path, memory=MEMORY
    )
    assert_clean_failure(outcome, 1, name, "symbolic link")
    assert sorted(os.listdir(tmp_path / "eval")) == ["bs1", name]
