"""The runner contract over every installed backend, the registry's choices and errors, and batch padding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from standins.fixtures import OM_BATCH, installed_backends

from twins_pcpvt import backends
from twins_pcpvt.backends import available_backends, create_runner, normalize_device, resolve_backend
from twins_pcpvt.backends.base import Runner, pad_batch
from twins_pcpvt.common import NUM_CLASSES, ToolkitError, UsageError

INSTALLED = installed_backends()


@pytest.fixture(scope="module")
def batch2():
    return np.random.default_rng(7).standard_normal((2, 3, 224, 224), dtype=np.float32)


# ---- the contract, on every installed backend --------------------------------------------------------------
@pytest.mark.parametrize("backend", INSTALLED)
def test_runner_contract(backend, model_files, batch2, torch_logits, ais_standin):
    expected = torch_logits(batch2)
    runner = create_runner(backend, model_files[backend])
    assert not runner.active
    with runner as active:
        assert active is runner and runner.name == backend
        assert runner.device == ("npu:0" if backend == "ais" else "cpu")
        assert runner.precision == ("om" if backend == "ais" else "fp32")
        assert runner.input_shape[1:] == (3, 224, 224)
        assert runner.input_shape[0] in (None, OM_BATCH)
        logits = runner.infer(batch2)
        assert logits.shape == (2, NUM_CLASSES) and logits.dtype == np.float32
        assert float(np.abs(logits - expected).max()) <= 1e-4
        assert runner.last_compute_ms > 0
        single = runner.infer(batch2[:1])  # padded up on a static model; the padding's row is dropped
        assert single.shape == (1, NUM_CLASSES)
        assert float(np.abs(single - expected[:1]).max()) <= 1e-4
        with pytest.raises(ToolkitError, match="float32"):
            runner.infer(batch2.astype(np.float64))
        with pytest.raises(ToolkitError, match=r"\[N, 3, 224, 224\]"):
            runner.infer(batch2[:, :, :112])
        described = runner.describe()
        assert (described["backend"], described["device"], described["precision"]) == (
            backend,
            runner.device,
            runner.precision,
        )
    assert not runner.active
    with pytest.raises(ToolkitError, match="not loaded"):
        runner.infer(batch2)


def test_required_backends_are_covered():
    """The required runtimes (and ais, where the real ais_bench sources are beside the repository) are always
    there, so the contract test is never vacuous."""
    from aclruntime_double import missing_reason

    assert {"onnxruntime", "torch", *([] if missing_reason() else ["ais"])} <= set(INSTALLED)


def test_torch_reduced_precision_agrees_with_fp32(checkpoint_path, batch2, torch_logits):
    expected = torch_logits(batch2[:1]).astype(np.float64)
    with create_runner("torch", checkpoint_path, precision="bf16") as runner:
        assert runner.precision == "bf16"
        logits = runner.infer(batch2[:1])
    assert logits.dtype == np.float32 and logits.shape == (1, NUM_CLASSES)
    logits, expected = logits.astype(np.float64).ravel(), expected.ravel()
    centred, centred_expected = logits - logits.mean(), expected - expected.mean()
    cosine = float(
        centred @ centred_expected.T / (np.linalg.norm(centred) * np.linalg.norm(centred_expected))
    )
    assert cosine >= 0.999, cosine


@pytest.mark.slow
def test_openvino_runs_the_precision_it_reports(onnx_path):
    if "openvino" not in INSTALLED:
        pytest.skip("openvino is not installed")
    from twins_pcpvt.backends.openvino_runner import OpenVinoRunner

    if "bf16" in OpenVinoRunner.supported_precisions("cpu"):
        with create_runner("openvino", onnx_path, precision="bf16", batch_size=1) as runner:
            assert runner.precision == "bf16" and runner.details["inference_precision"] == "bf16"
    else:  # this CPU has no native bf16: asking for it must fail before loading, not silently run fp32
        with pytest.raises(UsageError, match="no native bf16"):
            create_runner("openvino", onnx_path, precision="bf16")
    with create_runner("openvino", onnx_path, precision="fp32", batch_size=2) as runner:
        assert runner.precision == "fp32" and runner.details["inference_precision"] == "f32"
        assert runner.static_batch == 2  # a dynamic model is compiled for the batch it will be given


def test_static_model_pads_smaller_batches_and_refuses_larger(static_onnx_path, batch2, torch_logits):
    with create_runner("onnxruntime", static_onnx_path) as runner:
        assert runner.static_batch == 4
        logits = runner.infer(batch2)
        assert float(np.abs(logits - torch_logits(batch2)).max()) <= 1e-4
        with pytest.raises(ToolkitError, match="batches of 4, got a batch of 5"):
            runner.infer(np.zeros((5, 3, 224, 224), dtype=np.float32))


def test_ais_runner_reports_om_precision_and_refuses_others(om_path, ais_standin):
    with pytest.raises(UsageError, match="ATC"):
        create_runner("ais", om_path, precision="fp16")
    with create_runner("ais", om_path, device="3") as runner:
        assert runner.device == "npu:3" and runner.static_batch == OM_BATCH


def test_ais_runner_refuses_a_dynamic_model(onnx_path, tmp_path, ais_standin):
    dynamic_om = tmp_path / "dynamic.om"
    dynamic_om.symlink_to(onnx_path)
    with pytest.raises(ToolkitError, match="dynamic.om: ais_bench cannot load"):
        with create_runner("ais", dynamic_om):
            pass


# ---- the model's inputs and outputs, checked once in the base runner ---------------------------------------
def _identity_onnx(path, input_shape, elem_type=1, outputs=1):
    """Identity nodes: every output has the input's shape and type (1: float, 10: float16)."""
    import onnx
    from onnx import helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], [f"output{index}"]) for index in range(outputs)],
        "wrong",
        [helper.make_tensor_value_info("input", elem_type, input_shape)],
        [helper.make_tensor_value_info(f"output{index}", elem_type, input_shape) for index in range(outputs)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("backend", [name for name in ("onnxruntime", "openvino") if name in INSTALLED])
def test_a_model_that_is_not_the_classifier_is_refused_by_every_onnx_runtime(backend, tmp_path):
    cases = [
        (
            _identity_onnx(tmp_path / "small.onnx", ["N", 3, 32, 32]),
            "input shape [?, 3, 32, 32] does not fit",
        ),
        (
            _identity_onnx(tmp_path / "half.onnx", ["N", 3, 224, 224], 10),
            "input 'input' is float16, expected",
        ),
        (_identity_onnx(tmp_path / "two.onnx", [1, 3, 224, 224], outputs=2), "found 1 and 2"),
        (
            _identity_onnx(tmp_path / "same.onnx", [1, 3, 224, 224]),
            "output shape [1, 3, 224, 224] is not [N, 1000]",
        ),
    ]
    for path, message in cases:
        runner = create_runner(backend, path)
        with pytest.raises(ToolkitError) as raised:
            with runner:
                pass
        assert str(raised.value).startswith(f"{path}: ") and message in str(raised.value)
        assert not runner.active


def test_the_base_check_reads_dynamic_dimensions_as_any_batch():
    from twins_pcpvt.backends.base import Port

    runner = _FixedBatchRunner("m.onnx", device="cpu", precision="fp32")
    dynamic = Port("input", (None, 3, 224, 224), "float32")
    assert runner.checked_input_shape([dynamic], [Port("output", (None, None), "float32")]) == (
        None,
        3,
        224,
        224,
    )
    assert (
        runner.checked_input_shape(
            [Port("x", (8, 3, 224, 224), "float32")], [Port("y", (8, 1000), "float32")]
        )[0]
        == 8
    )
    with pytest.raises(ToolkitError, match="input shape \\(unknown rank\\) does not fit"):
        runner.checked_input_shape([Port("x", None, "float32")], [Port("y", (8, 1000), "float32")])


# ---- batch handling shared by all runners ------------------------------------------------------------------
class _FixedBatchRunner(Runner):
    """A runner without a runtime: batch fixed at 4, logits = each row's mean, records what it ran."""

    name = "fixed"

    def _load(self):
        self.input_shape = (4, 3, 224, 224)
        self.seen = []

    def _run(self, batch):
        self.seen.append(batch.copy())
        self.last_compute_ms = 1.0
        return np.repeat(batch.reshape(len(batch), -1).mean(axis=1, keepdims=True), NUM_CLASSES, axis=1)

    def _close(self):
        pass


def test_pad_batch_repeats_the_first_row():
    batch = np.arange(2 * 3 * 224 * 224, dtype=np.float32).reshape(2, 3, 224, 224)
    padded = pad_batch(batch, 4)
    assert padded.shape == (4, 3, 224, 224)
    assert (
        np.array_equal(padded[:2], batch)
        and np.array_equal(padded[2], batch[0])
        and np.array_equal(padded[3], batch[0])
    )
    assert pad_batch(batch, 2) is batch
    with pytest.raises(ValueError):
        pad_batch(batch, 1)


def test_fixed_batch_runner_pads_and_drops_padding(tmp_path):
    rows = np.stack([np.full((3, 224, 224), value, dtype=np.float32) for value in (1.0, 2.0, 3.0)])
    with _FixedBatchRunner(tmp_path / "m", device="cpu", precision="fp32") as runner:
        logits = runner.infer(rows)
        assert logits.shape == (3, NUM_CLASSES)
        assert np.allclose(logits[:, 0], [1.0, 2.0, 3.0])
        assert runner.seen[-1].shape == (4, 3, 224, 224) and np.all(runner.seen[-1][3] == 1.0)
        with pytest.raises(ToolkitError, match="batches of 4"):
            runner.infer(np.zeros((5, 3, 224, 224), dtype=np.float32))


# ---- choosing a backend and a device -----------------------------------------------------------------------
def test_auto_follows_the_model_file():
    assert resolve_backend("auto", "twins_bs8.om") == "ais"
    assert resolve_backend("auto", "pcpvt_small.pth") == "torch"
    assert resolve_backend("auto", "model.safetensors") == "torch"
    fastest_cpu = "openvino" if "openvino" in available_backends() else "onnxruntime"
    assert resolve_backend("auto", "twins_dynamic.onnx") == fastest_cpu
    assert resolve_backend("auto", "twins_dynamic.onnx", "cpu") == fastest_cpu
    assert resolve_backend("auto", "twins_dynamic.onnx", "cuda:1") == "onnxruntime"


def test_auto_falls_back_to_onnxruntime_without_openvino(monkeypatch):
    real = backends._is_installed
    monkeypatch.setattr(backends, "_is_installed", lambda package: package != "openvino" and real(package))
    assert "openvino" not in available_backends()
    assert resolve_backend("auto", "twins_dynamic.onnx") == "onnxruntime"


def test_missing_runtime_is_one_line_naming_the_package(onnx_path, monkeypatch):
    real = backends._is_installed
    monkeypatch.setattr(backends, "_is_installed", lambda package: package != "openvino" and real(package))
    with pytest.raises(ToolkitError) as caught:
        create_runner("openvino", onnx_path)
    message = str(caught.value)
    assert "\n" not in message and "'openvino'" in message and "pip install openvino" in message


@pytest.mark.parametrize(
    ("backend", "model", "pattern"),
    [
        ("tensorflow", "m.onnx", "unknown backend 'tensorflow'"),
        ("torch", "m.onnx", "torch backend reads .pth/.pt/.safetensors"),
        ("ais", "m.pth", "ais backend reads .om"),
        ("auto", "m.tflite", "cannot tell the backend from the suffix '.tflite'"),
    ],
)
def test_backend_and_model_mismatch_is_a_usage_error(backend, model, pattern):
    with pytest.raises(UsageError, match=pattern):
        resolve_backend(backend, model)


def test_devices_are_normalised_and_checked():
    assert normalize_device("ais", None) == "npu:0"
    assert normalize_device("ais", "1") == "npu:1"
    assert normalize_device("torch", None) == "cpu"
    assert normalize_device("torch", "CUDA") == "cuda:0"
    assert normalize_device("onnxruntime", "tensorrt:2") == "tensorrt:2"
    with pytest.raises(UsageError, match="NPU id"):
        normalize_device("onnxruntime", "0")
    with pytest.raises(UsageError, match="runs on cpu, not on 'cuda'"):
        normalize_device("openvino", "cuda")
    with pytest.raises(UsageError, match="unknown device 'gpu'"):
        normalize_device("torch", "gpu")


def test_create_runner_checks_before_loading(onnx_path, checkpoint_path, tmp_path):
    with pytest.raises(ToolkitError, match="nowhere.onnx: model file not found"):
        create_runner("onnxruntime", tmp_path / "nowhere.onnx")
    with pytest.raises(UsageError, match="runs fp32, not fp16.*tensorrt"):
        create_runner("onnxruntime", onnx_path, precision="fp16")
    with pytest.raises(UsageError, match="unknown precision 'int4'"):
        create_runner("onnxruntime", onnx_path, precision="int4")
    with pytest.raises(UsageError, match="batch size must be a positive integer"):
        create_runner("onnxruntime", onnx_path, batch_size=0)
    with pytest.raises(ToolkitError, match="unknown torch.compile mode 'fastest'"):
        create_runner("torch", checkpoint_path, compile="fastest")


def test_gpu_devices_fail_clearly_without_a_gpu(onnx_path, checkpoint_path):
    import onnxruntime
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present; this checks the message on machines without one")
    with pytest.raises(ToolkitError, match="PyTorch sees no CUDA GPU"):
        create_runner("torch", checkpoint_path, device="cuda")
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(ToolkitError, match="pip install -r requirements-gpu.txt") as caught:
            create_runner("onnxruntime", onnx_path, device="cuda:0")
        assert "virtual environment of their own" in str(caught.value)
        with pytest.raises(ToolkitError, match="TensorrtExecutionProvider"):
            create_runner("auto", onnx_path, device="tensorrt", precision="fp16")


def test_the_gpu_install_hint_is_the_one_docs_gpu_md_gives():
    """Its own virtual environment and the pinned onnxruntime-gpu, never `pip install` into this one."""
    from twins_pcpvt.backends.base import GPU_INSTALL

    root = Path(__file__).resolve().parents[1]
    command = "python3 -m venv .venv-gpu && .venv-gpu/bin/pip install -r requirements-gpu.txt"
    assert command in GPU_INSTALL and command in (root / "docs" / "gpu.md").read_text()
    (pin,) = [
        line
        for line in (root / "requirements-gpu.txt").read_text().splitlines()
        if "onnxruntime-gpu==" in line
    ]
    assert pin.strip() in GPU_INSTALL
