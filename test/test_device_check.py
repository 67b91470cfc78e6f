"""bench/device_check.py tried on the CPU: its carried inputs, its checks, a bare Python with torch only, and
the
time limit that kills a compilation in progress."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import benchmark, device_check

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "device_check.py"


def test_carried_crops_are_the_real_photo_preprocessed_as_the_guide_does():
    photos, note = benchmark.sample_photos()
    assert "grace_hopper" in note
    carried = device_check.photo_crops()
    assert carried.shape == photos.shape == (4, 3, 224, 224) and carried.dtype == np.float32
    assert float(np.abs(carried - photos).max()) <= 1e-6


def test_carried_timm_wheel_is_small_and_pinned_as_the_requirements_pin_it():
    (wheel,) = sorted((ROOT / "bench" / "wheels").glob("timm-*.whl"))
    pinned = next(
        line for line in (ROOT / "requirements.txt").read_text().splitlines() if line.startswith("timm==")
    )
    assert wheel.name.startswith(f"timm-{pinned.split('==')[1]}-py3-none-any")
    assert wheel.stat().st_size < 5 * 2**20


class _Runner:
    """A loaded subject that returns what `outputs` makes of each batch."""

    precision = "fp32"

    def __init__(self, outputs):
        self.outputs = outputs

    def infer(self, batch):
        return self.outputs(batch)


def _reference():
    return np.random.default_rng(0).standard_normal((4, 1000)) * 3


@pytest.mark.parametrize("batch_size", [1, 2, 3, 8])
def test_check_outputs_catches_a_stale_graph_at_every_batch_size(batch_size):
    photos = np.arange(4, dtype=np.float32).reshape(4, 1, 1, 1) * np.ones((1, 3, 224, 224), np.float32)
    reference = _reference()
    (subject,) = benchmark.parse_subjects("torch", "cpu")

    def right(batch):
        return reference[batch[:, 0, 0, 0].astype(int)]

    good = device_check.check_outputs(_Runner(right), subject, batch_size, photos, reference)
    assert good["agrees"] and good["reverse_same"] and good["cosine"] == pytest.approx(1.0)
    assert good["images"] == -(-max(batch_size, 4) // batch_size) * batch_size

    first = {}

    def stale(batch):  # a graph that recorded nothing replays the first outputs forever
        first.setdefault(len(batch), right(batch))
        return first[len(batch)]

    stale_check = device_check.check_outputs(_Runner(stale), subject, batch_size, photos, reference)
    assert not (stale_check["agrees"] and stale_check["reverse_same"])  # one of the two catches it

    previous = []

    def lagging(batch):  # a replay that hands out the previous call's outputs
        previous.append(right(batch))
        return previous[-2] if len(previous) > 1 else previous[-1]

    lag = device_check.check_outputs(_Runner(lagging), subject, batch_size, photos, reference)
    assert not (lag["agrees"] and lag["reverse_same"])

    def nan(batch):
        out = right(batch).copy()
        out[-1, 0] = np.nan
        return out

    assert not device_check.check_outputs(_Runner(nan), subject, batch_size, photos, reference)["agrees"]


def _run(args, *, env=None, timeout=600):
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )


@pytest.mark.slow
def test_device_check_runs_on_the_cpu(tmp_path):
    out = tmp_path / "check"
    done = _run(
        [
            str(SCRIPT),
            "--device",
            "cpu",
            "--batch-sizes",
            "1,2",
            "--seconds",
            "0.2",
            "--rounds",
            "2",
            "--warmup",
            "0",
            "--time-limit",
            "280",
            "--out",
            str(out),
        ]
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "device_check.json").read_text())
    assert report["finished"] and report["failures"] == []
    rows = {(row["label"], row["precision"], row["batch_size"]) for row in report["results"]}
    assert rows == {
        (label, precision, size)
        for size in (1, 2)
        for label, precision in (("timm eager", "fp32"), ("torch", "fp32"), ("torch", "bf16"))
    }
    for row in report["results"]:
        assert row["agrees"] and row["reverse_same"] and row["images"] >= 4
        assert row["cosine"] >= {"fp32": 0.99999, "bf16": 0.995}[row["precision"]]
        assert row["ratio_vs_timm_eager"] > 0
    table = (out / "device_check.md").read_text()
    assert "| torch | bf16 | 2 |" in table and "reverse order same" in table
    assert table.strip() in done.stdout


@pytest.mark.slow
def test_the_time_limit_kills_a_compilation_in_progress(tmp_path):
    out = tmp_path / "check"
    # 20 s leaves the child 15 s to import torch and compile the model on the CPU: far too little
    done = _run(
        [
            str(SCRIPT),
            "--device",
            "cpu",
            "--batch-sizes",
            "1",
            "--subjects",
            "torch:fp32+compile",
            "--seconds",
            "0.1",
            "--rounds",
            "1",
            "--warmup",
            "0",
            "--time-limit",
            "20",
            "--out",
            str(out),
        ],
        timeout=120,
    )
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "device_check.json").read_text())
    assert report["finished"] and report["compile_child"]["killed"] is True
    (failure,) = report["failures"]
    assert (
        failure["label"] == "torch +compile fp32" and "time limit came during compilation" in failure["error"]
    )
    with pytest.raises(ProcessLookupError):  # nothing of the child's process group is left
        os.killpg(report["compile_child"]["pid"], 0)
    assert "FAILED torch +compile fp32 at batch 1" in done.stdout


def _bare_python_path(tmp_path, without: set[str]) -> Path:
    """A folder that holds links to this environment's packages except `without` (a machine with less)."""
    import torch

    site = Path(torch.__file__).resolve().parents[1]
    bare = tmp_path / "site"
    bare.mkdir()
    for entry in site.iterdir():
        name = entry.name.split("-")[0].split(".")[0].lower()
        if name not in without:
            (bare / entry.name).symlink_to(entry)
    return bare


def test_a_missing_binary_dependency_is_one_line_and_a_stop(tmp_path):
    bare = _bare_python_path(tmp_path, {"timm", "torchvision"})
    done = _run(
        ["-S", str(SCRIPT), "--device", "cpu", "--out", str(tmp_path / "out")], env={"PYTHONPATH": str(bare)}
    )
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "device_check: missing Python package(s) torchvision: install them matching the CUDA build of torch"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_timm_comes_from_the_carried_wheel_on_a_machine_without_it(tmp_path):
    bare = _bare_python_path(
        tmp_path,
        {
            "timm",
            "matplotlib",
            "onnx",
            "onnxruntime",
            "openvino",
            "safetensors",
            "huggingface_hub",
            "yaml",
            "tqdm",
        },
    )
    out = tmp_path / "check"
    done = _run(
        [
            "-S",
            str(SCRIPT),
            "--device",
            "cpu",
            "--batch-sizes",
            "1",
            "--subjects",
            "timm-eager,torch:fp32",
            "--seconds",
            "0.1",
            "--rounds",
            "1",
            "--warmup",
            "0",
            "--out",
            str(out),
        ],
        env={"PYTHONPATH": str(bare)},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "device_check.json").read_text())
    assert "bench/wheels/timm-" in report["timm_from"] and report["failures"] == []
    assert {row["label"] for row in report["results"]} == {"timm eager", "torch"}
