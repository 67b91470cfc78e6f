"""Hostile inputs to the export (twins_pth2onnx.py), class by class: untrusted checkpoints and targets that
are not plain files. Refusals run the script in a subprocess under a time and an address-space limit."""

from __future__ import annotations

import argparse
import os
import stat
import struct
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch
from hostile import GIB, assert_clean_failure, files_left, full_disk, read_only_folder, run_script
from safetensors.torch import save_file

from twins_pcpvt.model import check_state_dict_fits, load_state_dict

SCRIPT = "twins_pth2onnx.py"
pytestmark = pytest.mark.slow  # every case runs the export in a subprocess under limits
MEMORY = 8 * GIB  # torch's own libraries take a few GB of address space; a bomb's expansion does not fit


def export(*args, cwd: Path, **options):
    return run_script(SCRIPT, *args, cwd=cwd, memory=MEMORY, timeout=600, **options)


def export_here(capsys, *args) -> subprocess.CompletedProcess:
    """The script's main() in this process (torch is loaded once), for cases with no memory or time risk."""
    import twins_pth2onnx

    argv = [str(arg) for arg in args]
    try:
        status = twins_pth2onnx.main(argv)
    except SystemExit as exited:  # the parser's usage errors
        status = exited.code
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(argv, status, captured.out, captured.err)


@pytest.fixture(scope="module")
def weights(twins_model) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in twins_model.state_dict().items()}


def assert_same(state: dict, expected: dict) -> None:
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[key], expected[key]) for key in expected)


# ----------------------------------------------------------------------------------------------------------
# 6. Untrusted checkpoints: sizes checked before loading


def zip_bomb(path: Path, expanded: int) -> Path:
    """A small PyTorch-style zip whose extra member inflates to `expanded` bytes of zeros."""
    torch.save({"head.bias": torch.zeros(4)}, path)
    chunk = bytes(16 * 2**20)
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        prefix = archive.namelist()[0].split("/")[0]
        with archive.open(f"{prefix}/data/99", "w", force_zip64=True) as member:
            for _ in range(expanded // len(chunk)):
                member.write(chunk)
    return path


def patch_central_sizes(path: Path, member: str, size: int) -> Path:
    """Make the zip directory claim `size` bytes (compressed and not) for `member`: a lying archive."""
    data = bytearray(path.read_bytes())
    entry = data.find(b"PK\x01\x02")
    while entry != -1:
        name_length = struct.unpack_from("<H", data, entry + 28)[0]
        if data[entry + 46 : entry + 46 + name_length].decode().endswith(member):
            struct.pack_into("<II", data, entry + 20, size, size)
            break
        entry = data.find(b"PK\x01\x02", entry + 4)
    assert entry != -1, member
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(
    "expanded", [64 * 2**20, pytest.param(1536 * 2**20, marks=pytest.mark.slow)], ids=["64MiB", "1.5GiB"]
)
def test_a_zip_bomb_is_refused_from_its_directory(tmp_path, expanded):
    bomb = zip_bomb(tmp_path / "bomb.pth", expanded)  # 1.5 GiB of zeros take about 1.5 MB
    assert bomb.stat().st_size < expanded / 500
    result = export("--source", bomb, "--target", tmp_path / "t.onnx", cwd=tmp_path)
    assert_clean_failure(result, 1, str(bomb), "zip bomb", "before loading")
    assert sorted(os.listdir(tmp_path)) == ["bomb.pth"]


def test_a_zip_that_claims_more_than_it_holds_is_refused(tmp_path, weights):
    source = tmp_path / "liar.pth"
    torch.save({"head.bias": weights["head.bias"]}, source)
    patch_central_sizes(source, "data/0", 2**31 - 1)
    result = export("--source", source, "--target", tmp_path / "t.onnx", cwd=tmp_path)
    assert_clean_failure(result, 1, str(source), "before loading")


# ----------------------------------------------------------------------------------------------------------
# 6. Untrusted checkpoints: only dense floating-point tensors are weights


@pytest.mark.parametrize(
    "key, bad, reason",
    [
        ("head.weight", lambda t: t.to_sparse(), "sparse tensor"),
        ("head.weight", lambda t: t.to_sparse_csr(), "sparse tensor"),
        ("head.bias", lambda t: t.to(torch.complex64), "complex tensor"),
        ("norm.weight", lambda t: t.to(torch.int64), "not floating point"),
        ("norm.bias", lambda t: t.to(torch.bool), "not floating point"),
        ("patch_embeds.0.proj.bias", lambda t: t.to(torch.uint8), "not floating point"),
    ],
)
def test_a_weight_that_is_not_a_dense_float_tensor_is_refused_by_name(
    tmp_path, capsys, weights, key, bad, reason
):
    source = tmp_path / "odd.pth"
    torch.save({**weights, key: bad(weights[key])}, source)
    result = export_here(capsys, "--source", source, "--target", tmp_path / "t.onnx")
    assert_clean_failure(result, 1, str(source), repr(key), reason)
    assert sorted(os.listdir(tmp_path)) == ["odd.pth"]


def test_half_precision_weights_are_floating_point_and_load(weights, twins_model):
    half = {key: value.half() for key, value in weights.items()}
    check_state_dict_fits(twins_model, half, "half")


# ----------------------------------------------------------------------------------------------------------
# 6. Untrusted checkpoints: the weights are found wherever the usual keys put them


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: {"model": "twins_pcpvt_small", "state_dict": sd},
        lambda sd: {"model": None, "state_dict": sd},
        lambda sd: {"model": argparse.Namespace(arch="twins"), "state_dict": sd, "epoch": 3},
        lambda sd: {"model": {"name": "pcpvt"}, "state_dict": {"module." + key: v for key, v in sd.items()}},
        lambda sd: {"state_dict": {"model": sd}, "model": 7},
    ],
    ids=["model-str", "model-none", "model-namespace", "model-dict-of-strings", "nested"],
)
def test_weights_are_found_beside_a_model_entry_that_is_not_weights(tmp_path, weights, wrap):
    source = tmp_path / "wrapped.pth"
    torch.save(wrap(weights), source)
    assert_same(load_state_dict(source), weights)


# ----------------------------------------------------------------------------------------------------------
# 6. Untrusted checkpoints: the content decides between pickle and safetensors, never the suffix


@pytest.mark.parametrize("name", ["weights.safetensors", "weights.bin", "weights"])
def test_a_pickle_under_any_name_is_read_as_a_pickle(tmp_path, weights, name):
    torch.save(weights, tmp_path / name)
    assert_same(load_state_dict(tmp_path / name), weights)


@pytest.mark.parametrize("name", ["weights.pth", "weights.pt", "weights"])
def test_a_safetensors_file_under_any_name_is_read_as_safetensors(tmp_path, weights, name):
    save_file(weights, tmp_path / name)
    assert_same(load_state_dict(tmp_path / name), weights)


@pytest.mark.parametrize("content", [b"GIF89a not weights", b"\x00" * 4096, b'{"json": true}'])
def test_other_content_under_a_safetensors_name_is_named(tmp_path, capsys, content):
    source = tmp_path / "weights.safetensors"
    source.write_bytes(content)
    result = export_here(capsys, "--source", source, "--target", tmp_path / "t.onnx")
    assert_clean_failure(result, 1, str(source), "not a PyTorch checkpoint")


# ----------------------------------------------------------------------------------------------------------
# 3, 4 and 7. The export target: never the source, never a non-regular file; bad numbers are usage errors


def test_the_target_is_never_the_source(tmp_path, capsys, checkpoint_path):
    source = tmp_path / "pcpvt_small.pth"
    source.write_bytes(checkpoint_path.read_bytes())
    before = source.read_bytes()
    os.link(source, tmp_path / "hardlink.onnx")
    (tmp_path / "symlink.onnx").symlink_to(source)
    rejected_source = tmp_path / "twins.rejected.onnx"  # where a failed check would keep its export
    rejected_source.write_bytes(before)
    cases = [
        (source, source, "is the input file"),
        (source, tmp_path / "hardlink.onnx", "is the input file"),
        (source, tmp_path / "symlink.onnx", "is the input file"),
        (rejected_source, tmp_path / "twins.onnx", "is the input file"),
    ]
    for checkpoint, target, reason in cases:
        result = export_here(capsys, "--source", checkpoint, "--target", target)
        assert_clean_failure(result, 2, reason)
    assert source.read_bytes() == before and rejected_source.read_bytes() == before
    assert (tmp_path / "symlink.onnx").is_symlink()


@pytest.mark.parametrize("kind", ["fifo", "symlink", "device", "folder"])
def test_a_target_that_is_not_a_regular_file_is_refused_before_work(tmp_path, kind):
    target = tmp_path / "twins_dynamic.onnx"
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "symlink":
        target.symlink_to(victim)
    elif kind == "folder":
        target.mkdir()
    elif os.geteuid() == 0:
        os.mknod(target, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a /dev/null of our own
    else:
        target = Path("/dev/null")
    result = export("--random-init", "--target", target, cwd=tmp_path)
    assert_clean_failure(result, 1, str(target))
    assert "exporting" not in result.stdout
    assert victim.read_text() == "precious"
    assert not stat.S_ISREG(os.lstat(target).st_mode)


@pytest.mark.parametrize("value", ["nan", "-1", "-1e-9", "inf"])
def test_a_tolerance_that_is_not_a_finite_non_negative_number_is_a_usage_error(tmp_path, capsys, value):
    result = export_here(capsys, "--random-init", "--target", tmp_path / "t.onnx", f"--tolerance={value}")
    assert_clean_failure(result, 2, "--tolerance")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("value", ["0", "-1", "8", "99"])
def test_an_opset_the_exporter_cannot_write_is_a_usage_error(tmp_path, capsys, value):
    result = export_here(capsys, "--random-init", "--target", tmp_path / "t.onnx", f"--opset={value}")
    assert_clean_failure(result, 2, "--opset")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("value", ["100000", "999999999999"])
def test_a_batch_size_too_big_for_memory_is_refused_before_allocating(tmp_path, value):
    result = export("--random-init", "--target", tmp_path / "t.onnx", "--batch-size", value, cwd=tmp_path)
    assert_clean_failure(result, 2, "--batch-size", "memory")
    assert "exporting" not in result.stdout and os.listdir(tmp_path) == []


def test_a_read_only_target_folder_is_one_line(tmp_path):
    folder = tmp_path / "ro"
    prefix = read_only_folder(folder)
    try:
        result = export("--random-init", "--target", folder / "t.onnx", cwd=tmp_path, prefix=prefix)
    finally:
        folder.chmod(0o755)
    assert_clean_failure(result, 1, str(folder / "t.onnx"), "Permission denied")
    assert os.listdir(folder) == []


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_leaves_no_partial_file(tmp_path):
    folder = tmp_path / "small"
    prefix, file_limit = full_disk(folder, size="1m")
    result = export(
        "--random-init", "--target", folder / "t.onnx", cwd=tmp_path, prefix=prefix, file_bytes=file_limit
    )
    line = assert_clean_failure(result, 1, str(folder / "t.onnx"), "cannot write")
    assert "No space left on device" in line or "File too large" in line
    assert files_left(result, folder) == []
