"""Compare: ONNX Runtime against PyTorch passes, a perturbed output fails, TXT precision, bad inputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ais_layout import write_output, write_result

from twins_pcpvt.compare import PRESETS, TXT_RESOLUTION
from twins_pcpvt_s_compare import main

ROOT = Path(__file__).resolve().parents[1]
STEMS = [f"ILSVRC2012_val_{i + 1:08d}" for i in range(3)]


@pytest.fixture(scope="module")
def backend_outputs(twins_model, onnx_path):
    """The same three inputs through PyTorch and ONNX Runtime (run here, not by the toolkit's runner)."""
    import onnxruntime
    import torch

    batch = np.random.default_rng(0).standard_normal((len(STEMS), 3, 224, 224), dtype=np.float32)
    with torch.no_grad():
        torch_logits = twins_model(torch.from_numpy(batch)).numpy()
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    onnx_logits = session.run(["output"], {"input": batch})[0]
    return torch_logits, onnx_logits


def compare(*args) -> int:
    return main([str(arg) for arg in args])


def test_onnxruntime_matches_pytorch_in_every_layout_and_format(tmp_path, backend_outputs, capsys):
    torch_logits, onnx_logits = backend_outputs
    write_result(tmp_path / "torch", STEMS, torch_logits, "bin", summary="beside")
    write_result(tmp_path / "onnx_npy", STEMS, onnx_logits, "npy", summary="inside")
    onnx_txt = write_result(tmp_path / "onnx_txt", STEMS, onnx_logits, "txt", summary=None)
    assert compare(tmp_path / "torch", tmp_path / "onnx_npy", "--json", tmp_path / "npy.json") == 0
    assert "PASS" in capsys.readouterr().out
    report = json.loads((tmp_path / "npy.json").read_text())
    assert report["passed"] is True
    assert report["summary"]["compared"] == 3
    assert report["summary"]["top1_agreement"] == 1.0
    assert report["summary"]["max_abs_diff"] <= PRESETS["fp32"].atol
    assert len(report["outputs"]) == 3
    # the output folder itself (not its parent) and TXT on one side
    assert compare(tmp_path / "torch", onnx_txt, "--json", tmp_path / "txt.json") == 0
    assert json.loads((tmp_path / "txt.json").read_text())["summary"]["max_abs_diff"] < 2e-6


def test_a_perturbed_output_fails_and_is_listed_first(tmp_path, backend_outputs, capsys):
    torch_logits, onnx_logits = backend_outputs
    perturbed = onnx_logits.copy()
    perturbed[1, 123] += 1e-3
    write_result(tmp_path / "torch", STEMS, torch_logits)
    write_result(tmp_path / "onnx", STEMS, perturbed)
    assert compare(tmp_path / "torch", tmp_path / "onnx", "--json", tmp_path / "report.json") == 1
    out = capsys.readouterr().out
    assert "FAIL: 1 of 3 outputs are outside the thresholds" in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["passed"] is False
    assert report["worst"][0]["stem"] == STEMS[1] and report["worst"][0]["passed"] is False
    assert report["worst"][0]["max_abs_diff"] == pytest.approx(1e-3, rel=1e-2)
    # the same difference is within what fp16 is allowed
    assert compare(tmp_path / "torch", tmp_path / "onnx", "--preset", "fp16") == 0


def test_a_changed_prediction_fails_on_cosine_and_shows_in_top1_agreement(tmp_path, backend_outputs):
    torch_logits, _ = backend_outputs
    changed = torch_logits.copy()
    changed[0] = np.roll(changed[0], 1)
    write_result(tmp_path / "a", STEMS, torch_logits)
    write_result(tmp_path / "b", STEMS, changed)
    assert compare(tmp_path / "a", tmp_path / "b", "--atol", "inf", "--json", tmp_path / "r.json") == 1
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["thresholds"]["atol"] is None
    assert report["summary"]["top1_agreement"] == pytest.approx(2 / 3)
    assert report["summary"]["top5_agreement"] == pytest.approx(2 / 3)
    assert (
        report["worst"][0]["stem"] == STEMS[0] and report["worst"][0]["cosine"] < PRESETS["fp32"].min_cosine
    )


def test_txt_resolution_is_added_to_the_absolute_threshold(tmp_path):
    logits = np.random.default_rng(5).standard_normal((3, 1000)).astype(np.float32) * 8
    write_result(tmp_path / "bin", STEMS, logits, "bin")
    write_result(tmp_path / "txt", STEMS, logits, "txt")
    write_result(tmp_path / "bin_copy", STEMS, logits, "npy")
    assert compare(tmp_path / "bin", tmp_path / "txt", "--atol", "0", "--json", tmp_path / "r.json") == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert 0 < report["summary"]["max_abs_diff"] <= TXT_RESOLUTION
    assert report["outputs"][0]["atol"] == pytest.approx(TXT_RESOLUTION)
    assert compare(tmp_path / "bin", tmp_path / "bin_copy", "--atol", "0") == 0  # exact copies need no slack
    shifted = logits.copy()
    shifted[2, 0] += 3e-6  # beyond what TXT rounding explains
    write_result(tmp_path / "shifted", STEMS, shifted, "txt")
    assert compare(tmp_path / "bin", tmp_path / "shifted", "--atol", "0") == 1


def test_stems_on_one_side_fail_unless_allowed(tmp_path, backend_outputs, capsys):
    torch_logits, onnx_logits = backend_outputs
    write_result(tmp_path / "a", STEMS, torch_logits)
    write_result(tmp_path / "b", STEMS[:2], onnx_logits[:2])
    assert compare(tmp_path / "a", tmp_path / "b") == 1
    out = capsys.readouterr().out
    assert f"only in A (1): {STEMS[2]}" in out
    assert compare(tmp_path / "a", tmp_path / "b", "--allow-missing", "--json", tmp_path / "r.json") == 0
    assert json.loads((tmp_path / "r.json").read_text())["only_in_a"] == [STEMS[2]]


def test_nan_in_an_output_is_a_failed_comparison(tmp_path, backend_outputs, capsys):
    torch_logits, onnx_logits = backend_outputs
    broken = onnx_logits.copy()
    broken[2, 7] = np.inf
    write_result(tmp_path / "a", STEMS, torch_logits)
    write_result(tmp_path / "b", STEMS, broken, "npy")
    assert compare(tmp_path / "a", tmp_path / "b", "--preset", "om", "--json", tmp_path / "r.json") == 1
    assert "(1 with NaN or Inf)" in capsys.readouterr().out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["worst"][0]["stem"] == STEMS[2] and report["worst"][0]["cosine"] is None


def test_command_line_exit_status(tmp_path, backend_outputs):
    torch_logits, onnx_logits = backend_outputs
    write_result(tmp_path / "a", STEMS, torch_logits)
    write_result(tmp_path / "b", STEMS, onnx_logits)
    script = str(ROOT / "twins_pcpvt_s_compare.py")
    passed = subprocess.run(
        [sys.executable, script, str(tmp_path / "a"), str(tmp_path / "b")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert passed.returncode == 0, passed.stderr
    bad = subprocess.run(
        [sys.executable, script, str(tmp_path / "a")], capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2


# ----- inputs that cannot be compared: exit status 2, the file named, no JSON written -----


def assert_cannot_compare(tmp_path, capsys, a, b, *fragments, extra=()):
    assert compare(a, b, "--json", tmp_path / "r.json", *extra) == 2
    err = capsys.readouterr().err
    for fragment in fragments:
        assert fragment in err, err
    assert not (tmp_path / "r.json").exists()


@pytest.fixture
def good(tmp_path, backend_outputs):
    write_result(tmp_path / "a", STEMS, backend_outputs[0])
    return tmp_path / "a"


def test_missing_folder(tmp_path, capsys, good):
    assert_cannot_compare(
        tmp_path, capsys, good, tmp_path / "nowhere", f"{tmp_path / 'nowhere'}: no such folder"
    )


def test_parent_with_several_output_folders(tmp_path, capsys, good, backend_outputs):
    first = write_result(tmp_path / "b", STEMS, backend_outputs[1], name="2024_01_01-00_00_00")
    second = write_result(tmp_path / "b", STEMS, backend_outputs[1], name="2024_01_02-00_00_00")
    assert_cannot_compare(
        tmp_path, capsys, good, tmp_path / "b", "holds 2 output folders", str(first), str(second)
    )


def test_empty_folder(tmp_path, capsys, good):
    (tmp_path / "b").mkdir()
    assert_cannot_compare(tmp_path, capsys, good, tmp_path / "b", f"{tmp_path / 'b'}: no inference outputs")


def test_output_of_the_wrong_size(tmp_path, capsys, good, backend_outputs):
    folder = write_result(tmp_path / "b", STEMS, backend_outputs[1])
    bad = folder / f"{STEMS[1]}_0.bin"
    bad.write_bytes(b"\0" * 3000)
    assert_cannot_compare(tmp_path, capsys, good, tmp_path / "b", f"{bad}: 3000 bytes")


def test_duplicate_stem(tmp_path, capsys, good, backend_outputs):
    folder = write_result(tmp_path / "b", STEMS, backend_outputs[1])
    write_output(folder, STEMS[0], backend_outputs[1][0], "txt")
    assert_cannot_compare(tmp_path, capsys, good, tmp_path / "b", "duplicate output", STEMS[0])


def test_different_class_counts(tmp_path, capsys, good, backend_outputs):
    padded = np.concatenate([np.zeros((3, 1), np.float32), backend_outputs[1]], axis=1)
    write_result(tmp_path / "b", STEMS, padded)
    assert_cannot_compare(tmp_path, capsys, good, tmp_path / "b", "1001 classes cannot be compared")


def test_no_image_in_common(tmp_path, capsys, good, backend_outputs):
    write_result(tmp_path / "b", ["other_1", "other_2", "other_3"], backend_outputs[1])
    assert_cannot_compare(tmp_path, capsys, good, tmp_path / "b", "no image in common")


@pytest.mark.parametrize(
    "flags, message",
    [
        (("--atol", "-1"), "argument --atol: must be a non-negative number or inf, got -1"),
        (("--atol", "nan"), "argument --atol: must be a number, got nan"),
        (("--min-cosine", "1.5"), "argument --min-cosine/--min_cosine: must lie in [-1, 1], got 1.5"),
        (("--worst", "-2"), "argument --worst: must not be negative, got -2"),
    ],
)
def test_bad_thresholds(tmp_path, capsys, good, flags, message):
    with pytest.raises(SystemExit) as exited:
        compare(good, good, "--json", tmp_path / "r.json", *flags)
    assert exited.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_unknown_preset_is_bad_usage(good):
    with pytest.raises(SystemExit) as exited:
        compare(good, good, "--preset", "int8")
    assert exited.value.code == 2
