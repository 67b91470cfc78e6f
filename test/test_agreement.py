"""`python3 -m twins_pcpvt.agreement`: the precision a run chose, compared with fp32 on the same tensors."""

from __future__ import annotations

import json

import pytest

from twins_pcpvt import agreement
from twins_pcpvt.backends import default_precision
from twins_pcpvt.thresholds import BARS


@pytest.mark.slow
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
        assert row["cosine"] >= BARS[ran].min_cosine and f"{ran} against openvino fp32" in out


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


@pytest.mark.slow
def test_runtimes_agree_with_the_first_on_the_same_weights(
    onnx_path, checkpoint_path, make_bin_folder, tmp_path, capsys
):
    folder, _, _ = make_bin_folder(2)
    report = tmp_path / "runtimes.json"
    argv = ["--model", str(onnx_path), "--checkpoint", str(checkpoint_path), "--input", str(folder)]
    status = agreement.main([*argv, "--runtimes", "onnxruntime,openvino,torch", "--json", str(report)])
    out = capsys.readouterr().out
    assert status == 0, out
    rows = json.loads(report.read_text())["runtimes"]
    assert [(row["label"], row["precision"]) for row in rows] == [
        ("onnxruntime", "fp32"),
        ("openvino", "fp32"),
        ("torch", "fp32"),
    ]
    for row in rows[1:]:
        assert row["reference"] == "onnxruntime fp32" and row["cosine"] >= BARS["fp32"].min_cosine
        assert row["top1_agrees"] == 2
    assert all(row["images_per_second"] > 0 for row in rows)
    assert out.count("[INFO] runtimes:") == 3


@pytest.mark.slow
def test_runtimes_that_disagree_fail(onnx_path, tmp_path, make_bin_folder, capsys, twins_model):
    import torch

    folder, _, _ = make_bin_folder(2)
    other = {name: value + 0.05 * torch.randn_like(value) for name, value in twins_model.state_dict().items()}
    checkpoint = tmp_path / "other.pth"
    torch.save(other, checkpoint)
    argv = ["--model", str(onnx_path), "--checkpoint", str(checkpoint), "--input", str(folder)]
    assert agreement.main([*argv, "--runtimes", "onnxruntime,torch"]) == 1
    assert "BELOW THE BAR" in capsys.readouterr().out


def test_the_torch_runtime_needs_its_checkpoint(onnx_path, make_bin_folder, capsys):
    folder, _, _ = make_bin_folder(1)
    assert (
        agreement.main(["--model", str(onnx_path), "--input", str(folder), "--runtimes", "onnxruntime,torch"])
        == 2
    )
    assert "needs --checkpoint" in capsys.readouterr().err
