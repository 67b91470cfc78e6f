"""Stage 2: checkpoint loading (every shape, safely, strictly), ONNX export and its check, bad inputs."""

from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from standins.static_onnx import onnx_batch_size

import twins_pth2onnx
from twins_pcpvt import export as export_module
from twins_pcpvt.common import ToolkitError
from twins_pcpvt.export import export_checked, max_abs_diff_onnx_vs_torch
from twins_pcpvt.model import load_model, load_state_dict

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "twins_pth2onnx.py"
TWINS_S_PARAMETERS = 24_106_216


def run_cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_same_weights(state: dict, reference: dict) -> None:
    assert sorted(state) == sorted(reference)
    for key, tensor in reference.items():
        assert torch.equal(state[key], tensor), key


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- the model


def test_model_is_twins_pcpvt_small_with_plain_attention(twins_model):
    assert sum(p.numel() for p in twins_model.parameters()) == TWINS_S_PARAMETERS
    assert not twins_model.training
    attention = [m for m in twins_model.modules() if hasattr(m, "fused_attn")]
    assert len(attention) == 16  # depths 3+4+6+3
    assert not any(m.fused_attn for m in attention)


def test_random_init_is_seeded_and_announced(twins_model, capsys):
    same = load_model(None, random_init=True, seed=0)
    assert_same_weights(same.state_dict(), twins_model.state_dict())
    other = load_model("ignored.pth", random_init=True, seed=1)
    assert not torch.equal(other.state_dict()["head.weight"], twins_model.state_dict()["head.weight"])
    notices = [line for line in capsys.readouterr().err.splitlines() if "random weights" in line]
    assert len(notices) == 2 and "seed 1" in notices[1]


# ---------------------------------------------------------------- checkpoint shapes


def _training_checkpoint(state: dict) -> dict:
    """The original repository's checkpoint: weights under 'model' plus its training extras."""
    parameter = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.AdamW([parameter], lr=5e-4)
    optimizer.zero_grad()
    parameter.sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=30)
    return {
        "model": state,
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": scheduler.state_dict(),
        "epoch": 299,
        "scaler": {
            "scale": 65536.0,
            "growth_factor": 2.0,
            "backoff_factor": 0.5,
            "growth_interval": 2000,
            "_growth_tracker": 7,
        },
        "args": argparse.Namespace(
            model="pcpvt_small_v0",
            batch_size=128,
            lr=5e-4,
            data_path="/data/imagenet",
            input_size=224,
            smoothing=0.1,
            dist_eval=True,
            resume="",
        ),
        "max_accuracy": np.float64(81.226),
    }


CHECKPOINT_SHAPES = {
    "bare.pth": lambda state: state,
    "training.pth": _training_checkpoint,
    "state_dict.pth": lambda state: {"state_dict": state, "epoch": 3},
    "ddp_prefixed.pth": lambda state: {"model": {f"module.{key}": value for key, value in state.items()}},
    "legacy_format.pth": lambda state: state,
}


@pytest.mark.parametrize("name", list(CHECKPOINT_SHAPES))
def test_every_pickled_checkpoint_shape_loads_the_same_weights(name, twins_model, tmp_path):
    reference = twins_model.state_dict()
    path = tmp_path / name
    torch.save(
        CHECKPOINT_SHAPES[name](reference), path, _use_new_zipfile_serialization=name != "legacy_format.pth"
    )
    assert_same_weights(load_state_dict(path), reference)


def test_safetensors_checkpoint_loads_the_same_weights(twins_model, tmp_path):
    from safetensors.torch import save_file

    reference = twins_model.state_dict()
    path = tmp_path / "twins_pcpvt_small.safetensors"
    save_file({key: value.contiguous() for key, value in reference.items()}, path)
    assert_same_weights(load_state_dict(path), reference)


@pytest.mark.slow
def test_cli_exports_a_training_checkpoint_with_a_static_batch(twins_model, tmp_path, capsys):
    source = tmp_path / "pcpvt_small.pth"
    torch.save(_training_checkpoint({f"module.{k}": v for k, v in twins_model.state_dict().items()}), source)
    target = tmp_path / "out" / "twins_bs2.onnx"
    target.parent.mkdir()
    assert twins_pth2onnx.main(["--source", str(source), "--target", str(target), "--batch-size", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert any(line.startswith("exported in") for line in lines)
    assert lines[-1].startswith(f"wrote {target} (") and "MB" in lines[-1] and "batch 2" in lines[-1]
    assert "check passed" in lines[-1] and "random" not in lines[-1]
    assert sorted(p.name for p in target.parent.iterdir()) == ["twins_bs2.onnx"]  # no temporary files left
    assert onnx_batch_size(target) == 2
    assert max_abs_diff_onnx_vs_torch(twins_model, target, batch_size=2, seed=5) <= 1e-4


def test_cli_says_random_weights_on_every_line_that_matters(tmp_path, capsys, monkeypatch):
    def export_without_work(model, target, **kwargs):  # the wiring is under test here, not the export
        Path(target).write_bytes(b"onnx")
        return Path(target), 0.0

    monkeypatch.setattr(twins_pth2onnx, "export_checked", export_without_work)
    target = tmp_path / "demo.onnx"
    assert twins_pth2onnx.main(["--random-init", "--seed", "3", "--target", str(target)]) == 0
    captured = capsys.readouterr()
    assert "notice: random weights (seed 3)" in captured.err
    assert captured.out.splitlines()[0] == "loading random weights (seed 3) ..."
    assert "random weights seed 3" in captured.out.splitlines()[-1]


# ---------------------------------------------------------------- the dynamic ONNX file


def test_dynamic_onnx_interface_and_graph(onnx_path):
    import onnx

    model = onnx.load(str(onnx_path))
    onnx.checker.check_model(model, full_check=True)
    assert [entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")] == [11]
    (graph_input,), (graph_output,) = model.graph.input, model.graph.output
    assert graph_input.name == "input" and graph_output.name == "output"
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert graph_output.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    input_dims = graph_input.type.tensor_type.shape.dim
    assert input_dims[0].dim_param and [d.dim_value for d in input_dims[1:]] == [3, 224, 224]
    assert graph_output.type.tensor_type.shape.dim[1].dim_value == 1000
    op_types = {node.op_type for node in model.graph.node}
    assert {"MatMul", "Softmax"} <= op_types
    assert not any("Attention" in op for op in op_types)
    assert onnx_batch_size(onnx_path) is None


@pytest.mark.parametrize("batch_size", [1, 3])
def test_dynamic_onnx_matches_pytorch(batch_size, twins_model, onnx_path):
    assert max_abs_diff_onnx_vs_torch(twins_model, onnx_path, batch_size=batch_size, seed=batch_size) <= 1e-4


def test_export_that_fails_the_check_is_not_written(twins_model, onnx_path, tmp_path, monkeypatch):
    """An export that disagrees with PyTorch never takes the target's place; it is kept aside as rejected."""

    def export_of_another_model(model, **kwargs):
        return onnx_path.read_bytes()  # seed-0 weights, checked against a seed-1 model below

    monkeypatch.setattr(export_module, "export_onnx_bytes", export_of_another_model)
    target = tmp_path / "twins_dynamic.onnx"
    target.write_bytes(b"previous good file")
    other_model = load_model(None, random_init=True, seed=1)
    with pytest.raises(ToolkitError, match=r"differs from PyTorch by .*rejected"):
        export_checked(other_model, target)
    assert target.read_bytes() == b"previous good file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["twins_dynamic.onnx", "twins_dynamic.rejected.onnx"]


# ---------------------------------------------------------------- bad inputs


def expect_failure(capsys, argv: list[str], status: int, *fragments: str) -> str:
    try:
        assert twins_pth2onnx.main(argv) == status
    except SystemExit as exited:  # the parser's usage errors
        assert exited.code == status
    err = capsys.readouterr().err
    error_lines = [
        line for line in err.splitlines() if line.startswith(("error: ", "twins_pth2onnx.py: error: "))
    ]
    assert len(error_lines) == 1, err
    for fragment in fragments:
        assert fragment in error_lines[0], error_lines[0]
    return error_lines[0]


def test_missing_source(tmp_path, capsys):
    missing = tmp_path / "pcpvt_small.pth"
    expect_failure(
        capsys, ["--source", str(missing), "--target", str(tmp_path / "t.onnx")], 1, str(missing), "not found"
    )
    assert list(tmp_path.iterdir()) == []


def test_source_is_required(capsys, tmp_path):
    expect_failure(capsys, ["--target", str(tmp_path / "t.onnx")], 2, "--source is required")


@pytest.mark.parametrize("content", [b"this is a README, not weights\n", bytes(range(256)) * 64])
def test_a_file_that_is_not_a_checkpoint(content, tmp_path, capsys):
    source = tmp_path / "pcpvt_small.pth"
    source.write_bytes(content)
    target = tmp_path / "twins_dynamic.onnx"
    expect_failure(
        capsys, ["--source", str(source), "--target", str(target)], 1, str(source), "not a PyTorch checkpoint"
    )
    assert not target.exists()


@pytest.mark.parametrize("layout", ["torch_zip", "torch_legacy"])
def test_a_truncated_checkpoint(layout, twins_model, checkpoint_path, tmp_path, capsys):
    if layout == "torch_legacy":
        whole = tmp_path / "whole.pth"
        torch.save(twins_model.state_dict(), whole, _use_new_zipfile_serialization=False)
        data = whole.read_bytes()
        whole.unlink()
    else:
        data = checkpoint_path.read_bytes()
    source = tmp_path / "pcpvt_small.pth"
    source.write_bytes(data[: len(data) // 2])
    target = tmp_path / "twins_dynamic.onnx"
    expect_failure(capsys, ["--source", str(source), "--target", str(target)], 1, str(source), "truncated")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pcpvt_small.pth"]


def test_a_damaged_safetensors_file(tmp_path, capsys):
    source = tmp_path / "model.safetensors"
    source.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    expect_failure(
        capsys,
        ["--source", str(source), "--target", str(tmp_path / "t.onnx")],
        1,
        str(source),
        "not a readable safetensors file",
    )


def test_a_checkpoint_of_another_architecture(twins_model, tmp_path, capsys):
    import timm

    source = tmp_path / "resnet18.pth"
    resnet_state = timm.create_model("resnet18", pretrained=False).state_dict()
    torch.save(resnet_state, source)
    target = tmp_path / "twins_dynamic.onnx"
    message = expect_failure(
        capsys,
        ["--source", str(source), "--target", str(target)],
        1,
        str(source),
        "do not fit twins_pcpvt_small",
        "missing keys: patch_embeds.0.proj.weight",
        "unexpected keys: conv1.weight, bn1.weight",
    )
    expected_count = len(twins_model.state_dict())
    assert f"{expected_count} missing keys" in message and f"{len(resnet_state)} unexpected keys" in message
    assert not target.exists()


def test_wrong_shapes_are_named(twins_model, tmp_path):
    state = dict(twins_model.state_dict())
    state["head.weight"], state["head.bias"] = torch.zeros(10, 512), torch.zeros(10)
    source = tmp_path / "ten_classes.pth"
    torch.save(state, source)
    with pytest.raises(ToolkitError, match=r"2 wrong shapes: head\.weight \(10, 512\) != \(1000, 512\)"):
        load_model(source)


class _CodeOnLoad:
    """Unpickling this object runs a shell command that creates a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


@pytest.mark.parametrize(
    "layout", [pytest.param("torch_zip", marks=pytest.mark.slow), "torch_legacy", "plain_pickle"]
)
def test_a_pickle_that_would_run_code_is_refused(layout, twins_model, tmp_path, capsys):
    marker = tmp_path / "payload_ran"
    source = tmp_path / "pcpvt_small.pth"
    if layout == "plain_pickle":  # a bare pickle renamed .pth, in the newest protocol
        source.write_bytes(
            pickle.dumps({"extra": _CodeOnLoad(marker), "epoch": 1}, protocol=pickle.HIGHEST_PROTOCOL)
        )
    else:
        torch.save(
            {"model": twins_model.state_dict(), "extra": _CodeOnLoad(marker)},
            source,
            _use_new_zipfile_serialization=layout == "torch_zip",
        )
    target = tmp_path / "twins_dynamic.onnx"
    argv = ["--source", str(source), "--target", str(target)]
    if layout == "torch_zip":  # once as a real process, for the exit status the shell sees
        result = run_cli(*argv, cwd=tmp_path)
        assert result.returncode == 1, result.stderr
        error = result.stderr.strip().splitlines()[-1]
    else:
        error = expect_failure(capsys, argv, 1)
    assert (
        error.startswith(f"error: {source}: refused to load") and f"`{os.system.__module__}.system`" in error
    )
    assert "--allow-unsafe-pickle" in error
    assert not marker.exists() and not target.exists()

    if layout != "plain_pickle":
        # The payload is real: the explicit opt-in (trusted files only) runs it, and the weights still load.
        assert_same_weights(load_state_dict(source, allow_unsafe_pickle=True), twins_model.state_dict())
        assert marker.exists()


def test_target_folder_does_not_exist(checkpoint_path, tmp_path, capsys):
    target = tmp_path / "missing" / "twins_dynamic.onnx"
    expect_failure(
        capsys, ["--source", str(checkpoint_path), "--target", str(target)], 1, str(target), "does not exist"
    )
    assert not target.parent.exists()


def _unwritable_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        (folder / "probe").touch()
    except OSError:
        return folder
    (
        folder / "probe"
    ).unlink()  # running as root: permission bits do not stop us; use a folder the kernel owns
    if Path("/proc/self").is_dir():
        return Path("/proc")
    pytest.skip("no folder this user cannot write to")


def test_target_folder_cannot_be_written(checkpoint_path, tmp_path, capsys):
    folder = _unwritable_folder(tmp_path)
    target = folder / "twins_dynamic.onnx"
    expect_failure(
        capsys,
        ["--source", str(checkpoint_path), "--target", str(target)],
        1,
        str(target),
        "cannot write",
    )
    assert not target.exists()


def test_target_equal_to_source(checkpoint_path, capsys, monkeypatch):
    before = digest(checkpoint_path)
    monkeypatch.chdir(checkpoint_path.parent)
    expect_failure(
        capsys,
        ["--source", str(checkpoint_path), "--target", checkpoint_path.name],
        2,
        checkpoint_path.name,
        "is the input file",
    )
    assert digest(checkpoint_path) == before


def test_target_is_a_folder(checkpoint_path, tmp_path, capsys):
    expect_failure(
        capsys, ["--source", str(checkpoint_path), "--target", str(tmp_path)], 1, str(tmp_path), "folder"
    )


def test_checkpoint_without_weights(tmp_path, capsys):
    source = tmp_path / "optimizer_only.pth"
    torch.save({"epoch": 3, "optimizer": {"state": {}, "param_groups": []}}, source)
    expect_failure(
        capsys,
        ["--source", str(source), "--target", str(tmp_path / "t.onnx")],
        1,
        str(source),
        "no model weights found",
        "'epoch'",
    )


def test_bad_batch_size_is_a_usage_error(checkpoint_path, tmp_path, capsys):
    expect_failure(
        capsys,
        ["--source", str(checkpoint_path), "--target", str(tmp_path / "t.onnx"), "--batch-size", "0"],
        2,
        "--batch-size",
    )


# ---------------------------------------------------------------- timm pretrained weights (no network here)


def _offline_hf_env(hf_home: Path) -> dict:
    # Offline mode and an unroutable endpoint: nothing here may reach the network.
    return {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}


@pytest.mark.slow
def test_timm_source_without_network_fails_clearly(tmp_path):
    target = tmp_path / "twins_dynamic.onnx"
    result = run_cli(
        "--source", "timm", "--target", str(target), cwd=tmp_path, env=_offline_hf_env(tmp_path / "hf")
    )
    assert result.returncode == 1
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("error: timm:in1k: could not fetch") and "twins_pcpvt_small.in1k" in error
    assert "--source" in error and not target.exists()


@pytest.mark.parametrize(
    "env, reason",
    [
        ({"HF_HUB_OFFLINE": "1"}, "(HF_HUB_OFFLINE is set)"),
        ({"HF_ENDPOINT": "http://127.0.0.1:9"}, "(127.0.0.1:9: Connection refused)"),
        (
            {"HF_ENDPOINT": "https://hub.example.invalid"},
            "hub.example.invalid:443: ",
        ),  # the name resolves not
    ],
)
def test_timm_source_without_a_reachable_hub_fails_at_once_in_one_line(env, reason, tmp_path):
    """No retries, no download attempt: one line saying how to pass a local checkpoint, before torch loads
    (the subprocess's time limit is far below the hub client's minute of retries)."""
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "", "HTTPS_PROXY": "", "https_proxy": "", **env}
    target = tmp_path / "twins_dynamic.onnx"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--source", "timm", "--target", str(target)],
        cwd=tmp_path,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1 and result.stdout == "", result.stdout
    (error,) = result.stderr.splitlines()
    assert error.startswith("error: timm:in1k: could not fetch timm's weights 'twins_pcpvt_small.in1k'")
    assert f"not in the local cache ({tmp_path / 'hf' / 'hub'})" in error and reason in error
    assert "pass a local checkpoint with --source FILE" in error
    assert not target.exists() and sorted(os.listdir(tmp_path)) == []


def test_timm_source_unknown_tag(tmp_path, capsys):
    expect_failure(
        capsys,
        ["--source", "timm:bogus", "--target", str(tmp_path / "t.onnx")],
        2,
        "twins_pcpvt_small.bogus",
        "twins_pcpvt_small.in1k",
    )


def test_timm_source_loads_from_timm_cache(twins_model, tmp_path, monkeypatch):
    """timm's pretrained path, fed from a Hugging Face cache laid out as a download leaves it; no sockets."""
    import socket

    from huggingface_hub import constants
    from safetensors.torch import save_file

    def no_network(*args, **kwargs):
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    revision = "0" * 40
    repo_cache = tmp_path / "hub" / "models--timm--twins_pcpvt_small.in1k"
    (repo_cache / "refs").mkdir(parents=True)
    (repo_cache / "refs" / "main").write_text(revision)
    snapshot = repo_cache / "snapshots" / revision
    snapshot.mkdir(parents=True)
    save_file(
        {k: v.contiguous() for k, v in twins_model.state_dict().items()}, snapshot / "model.safetensors"
    )

    model = load_model("timm")
    assert not model.training and not any(getattr(m, "fused_attn", False) for m in model.modules())
    assert_same_weights(model.state_dict(), twins_model.state_dict())
