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
from twins_pcpvt.thresholds import BARS
from twins_pcpvt.thresholds import lowest as thresholds_lowest
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
        tmp_path, capsys, good, tmp_path / "b", "holds 2 output folders;", str(first), str(second)
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


# ----- the bar comes from what ran: each result's summary, the lower of the two precisions -----


def with_precision(folder: Path, precision: str | None, model: str = "twins_dynamic.onnx") -> Path:
    """Record in the summary beside `folder` what ran, as twins_pcpvt_s_infer.py does (`precision`), or as
    ais_bench does (no `precision`; its command line names an .om model) when `precision` is None."""
    summary = folder.parent / f"{folder.name}_summary.json"
    document = json.loads(summary.read_text())
    document["args"] = [
        "ais_bench/__main__.py" if precision is None else "twins_pcpvt_s_infer.py",
        "--model",
        model,
    ]
    if precision is not None:
        document["precision"] = precision
    summary.write_text(json.dumps(document))
    return folder


@pytest.fixture
def bf16_pair(tmp_path):
    """A reference and a copy 0.1 off on every score: beyond the fp32 and fp16 bars, within bf16's and
    om's."""
    logits = np.random.default_rng(7).standard_normal((3, 1000)).astype(np.float32) * 4
    a = write_result(tmp_path / "a", STEMS, logits)
    b = write_result(tmp_path / "b", STEMS, logits + 0.1)
    return a, b


@pytest.mark.parametrize(
    "ran_a, ran_b, bar, why",
    [
        ("bf16", "bf16", "bf16", "the lower precision of the two runs: A ran bf16, B ran bf16"),
        ("fp32", "bf16", "bf16", "the lower precision of the two runs: A ran fp32, B ran bf16"),
        ("fp16", "bf16", "bf16", "the lower precision of the two runs: A ran fp16, B ran bf16"),
        (
            "bf16",
            None,
            "om",
            "the lower precision of the two runs: A ran bf16, B ran om",
        ),  # ais_bench's own summary of an .om model
        (
            "fp16",
            "absent",
            "fp16",
            "the precision one summary records (the other records none): A ran fp16, "
            "B's precision is not recorded",
        ),
    ],
)
def test_the_bar_is_that_of_the_lower_precision_that_ran(bf16_pair, tmp_path, capsys, ran_a, ran_b, bar, why):
    a, b = bf16_pair
    with_precision(a, ran_a)
    if ran_b == "absent":
        (b.parent / f"{b.name}_summary.json").unlink()
    else:
        with_precision(b, ran_b, "twins_bs1.om" if ran_b is None else "twins_dynamic.onnx")
    code = compare(a, b, "--json", tmp_path / "r.json")
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "r.json").read_text())["thresholds"]
    assert (report["bar"], report["min_cosine"], report["atol"]) == (
        bar,
        BARS[bar].min_cosine,
        BARS[bar].atol,
    )
    assert f"the {bar} bar ({why})" in out.splitlines()[2]
    verdict = out.strip().splitlines()[-2]
    assert verdict.startswith("FAIL" if bar == "fp16" else "PASS") and f"(the {bar} bar; " in verdict
    assert code == (1 if bar == "fp16" else 0)
    assert (report["precision_a"], report["precision_b"]) == (
        ran_a,
        None if ran_b == "absent" else ran_b or "om",
    )


def test_explicit_flags_win_over_the_summaries(bf16_pair, tmp_path, capsys):
    a, b = (with_precision(folder, "bf16") for folder in bf16_pair)
    assert compare(a, b, "--preset", "fp32") == 1
    assert "the fp32 bar (--preset fp32: A ran bf16, B ran bf16)" in capsys.readouterr().out
    assert compare(a, b, "--atol", "1e-4", "--json", tmp_path / "r.json") == 1
    report = json.loads((tmp_path / "r.json").read_text())["thresholds"]
    assert (report["atol"], report["min_cosine"], report["bar"]) == (1e-4, BARS["bf16"].min_cosine, "bf16")
    assert report["chosen_by"] == "the lower precision of the two runs, with --atol as given"


def test_without_summaries_the_bar_is_the_strictest_and_says_so(bf16_pair, capsys):
    a, b = bf16_pair
    for folder in bf16_pair:
        (folder.parent / f"{folder.name}_summary.json").unlink()
    assert compare(a, b) == 1
    assert (
        "the fp32 bar (no summary records a precision: the strictest bar (see --preset)"
        in capsys.readouterr().out
    )


def test_a_summary_recording_an_unknown_precision_cannot_be_compared(bf16_pair, tmp_path, capsys):
    a, b = bf16_pair
    with_precision(b, "int4")
    summary = b.parent / f"{b.name}_summary.json"
    assert_cannot_compare(
        tmp_path, capsys, a, b, f"{summary}: records the precision 'int4', which has no bar"
    )
    summary.write_text("{not json")
    assert_cannot_compare(tmp_path, capsys, a, b, f"{summary}: not a summary JSON")


def test_one_table_of_bars_for_compare_agreement_and_the_docs():
    """Compare's presets and the agreement check's bar are the rows of thresholds.BARS, and docs/stages.md
    shows the same values."""
    from twins_pcpvt import compare as comparing

    docs = (ROOT / "docs" / "stages.md").read_text()
    for name, bar in BARS.items():
        assert (PRESETS[name].min_cosine, PRESETS[name].atol) == (bar.min_cosine, bar.atol)
        reference = np.zeros((1, 1000))
        reference[0, :2] = (1.0, 0.5)
        for cosine, passes in ((bar.min_cosine, True), (np.nextafter(bar.min_cosine, 0), False)):
            row = {"precision": name, "cosine": cosine, "top1_agrees_decided": 1, "top1_decided": 1}
            assert comparing.passes(row) is passes, (name, cosine)
        assert f"| `{name}` | {bar.min_cosine:g} | {bar.atol:g} |" in docs, name
    assert thresholds_lowest("fp32", "bf16", None) == "bf16" and thresholds_lowest("fp16", "om") == "om"
