"""`python3 -m twins_pcpvt.agreement`: the precision a run chose, compared with fp32 on the same tensors."""

from __future__ import annotations

import json

import pytest

from twins_pcpvt import agreement, compare
from twins_pcpvt.backends import default_precision


def test_reduced_precision_is_compared_with_fp32_in_one_line(onnx_path, make_bin_folder, tmp_path, capsys):
    folder, _, _ = make_bin_folder(3)
    report = tmp_path / "out" / "agreement.json"
    status = agreement.main(["--model", str(onnx_path), "--input", str(folder), "--json", str(report)])
    out = capsys.readouterr().out
    ran = default_precision("auto", onnx_path)
    assert status == 0 and out.count("\n") == 1 and "[INFO] precision agreement:" in out
    saved = json.loads(report.read_text())
    assert saved["ran"] == ran
    if ran == "fp32":
        assert "the reference itself" in out and saved["agreement"] is None
    else:
        row = saved["agreement"]
        assert row["images"] == 3 and row["reference"] == "openvino fp32" and row["precision"] == ran
        assert row["cosine"] >= compare.MIN_COSINE[ran] and f"{ran} against openvino fp32" in out


def test_fp32_needs_no_comparison(onnx_path, make_bin_folder, capsys):
    folder, _, _ = make_bin_folder(1)
    assert (
        agreement.main(["--model", str(onnx_path), "--input", str(folder), "--backend", "onnxruntime"]) == 0
    )
    assert "onnxruntime ran fp32, the reference itself" in capsys.readouterr().out


def test_bad_inputs_are_one_line(onnx_path, tmp_path, capsys):
    assert agreement.main(["--model", str(onnx_path), "--input", str(tmp_path / "none")]) == 1
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'none'}: input folder not found"
    assert agreement.main(["--model", str(onnx_path), "--input", str(tmp_path)]) == 1
    assert "no .bin tensors" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:  # argparse's usage error, as in every script
        agreement.main(["--model", str(onnx_path), "--input", str(tmp_path), "--images", "0"])
    assert usage.value.code == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith("argument --images: must be a positive integer, got 0 (see --help)")
    )
