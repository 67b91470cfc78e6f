"""bench/soak.py at a tiny size: fresh infer processes beside a CPU hog, their outputs judged against the fp32
reference, recomputed batches counted, and a wrong model's outputs caught."""

from __future__ import annotations

import json
import os

import pytest
from standins import ov_faults
from test_faults import SITE

from bench import soak
from twins_pcpvt.common import ToolkitError

RUN_TIMEOUT_S = "300"  # each infer process; a hang fails the test


def tiny_soak(tmp_path, checkpoint, onnx, *extra) -> tuple[int, dict]:
    out = tmp_path / "soak.json"
    status = soak.main(
        [
            "--batch-sizes", "1,2", "--runs", "1", "--images", "3", "--concurrency", "2", "--hogs", "1",
            "--run-timeout", RUN_TIMEOUT_S, "--checkpoint", str(checkpoint), "--onnx", str(onnx),
            "--work", str(tmp_path / "work"), "--out", str(out), *extra,
        ]
    )  # fmt: skip
    return status, json.loads(out.read_text())


@pytest.mark.slow
def test_a_tiny_soak_counts_runs_outputs_and_no_wrong_ones(tmp_path, checkpoint_path, onnx_path, capsys):
    status, report = tiny_soak(tmp_path, checkpoint_path, onnx_path, "--paths", "onnxruntime:fp32,auto:auto")
    assert status == 0, capsys.readouterr()
    assert report["totals"] == {
        "runs": 4,
        "failed_runs": 0,
        "outputs_written": 12,
        "nonfinite_written": 0,
        "torn_written": 0,
        "disagreeing_written": 0,
        "recomputed_batches": 0,
        "wrong_outputs_written": 0,
    }
    assert set(report["paths"]) == {
        "onnxruntime:fp32 b1",
        "onnxruntime:fp32 b2",
        "auto:auto b1",
        "auto:auto b2",
    }
    assert report["settings"]["paths"]["auto:auto"]["bar_precision"] in ("fp32", "bf16")
    assert report["machine"]["cpu_flags"] is not None and report["load_average"]["samples"] >= 1
    assert "total" in capsys.readouterr().out
    assert not list((tmp_path / "work" / "runs").iterdir())  # good runs leave nothing behind


@pytest.mark.slow
def test_outputs_of_another_model_are_counted_wrong(tmp_path, onnx_path, capsys):
    import torch

    from twins_pcpvt.model import load_model

    other = tmp_path / "seed1.pth"  # the reference comes from different weights than the ONNX run
    torch.save(load_model(None, random_init=True, seed=1).state_dict(), other)
    status, report = tiny_soak(
        tmp_path, other, onnx_path, "--paths", "onnxruntime:fp32", "--batch-sizes", "2"
    )
    assert status == 1
    assert report["totals"]["disagreeing_written"] == 3 and report["totals"]["wrong_outputs_written"] == 3
    (run,) = report["runs"]
    assert run["exit"] == 0 and len(run["wrong"]) == 3 and "cosine" in run["wrong"][0]
    assert "onnxruntime:fp32 b2" in capsys.readouterr().out


@pytest.mark.slow
def test_batches_recomputed_in_the_runs_are_counted(tmp_path, checkpoint_path, onnx_path, monkeypatch):
    monkeypatch.setenv(ov_faults.ENV, "1:0,1")  # every run's first compile is broken
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(SITE), os.environ.get("PYTHONPATH")])))
    status, report = tiny_soak(
        tmp_path, checkpoint_path, onnx_path, "--paths", "openvino:fp32", "--batch-sizes", "2", "--hogs", "0"
    )
    assert status == 0
    assert report["totals"]["recomputed_batches"] == 1 and report["totals"]["wrong_outputs_written"] == 0
    assert "OpenVINO (fp32) returned non-finite logits" in report["runs"][0]["recomputed"][0]


def test_usage_errors_stop_before_any_work(tmp_path, capsys):
    onnx_path = tmp_path / "m.onnx"
    assert soak.main(["--onnx", str(onnx_path), "--work", str(tmp_path / "w")]) == 2
    assert "--checkpoint and --onnx together" in capsys.readouterr().err
    assert soak.main(["--hogs", "-1", "--work", str(tmp_path / "w")]) == 2
    assert not (tmp_path / "w").exists()
    with pytest.raises(ToolkitError, match="not BACKEND:PRECISION"):
        soak.make_path("onnxruntime", onnx_path)
