"""The GPU code paths, checked on the CPU: device selection, CUDA graph capture and replay on the requested
device
(with a stand-in for torch.cuda), process-wide math settings restored in any closing order and after a failed
load,
negative strides, TensorRT engine caches, ONNX Runtime's GPU options, whole runtime errors, NaN-proof
agreement and
the default precision that follows the hardware."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from twins_pcpvt import compare
from twins_pcpvt.backends import create_runner, default_precision
from twins_pcpvt.backends import torch_runner as tr
from twins_pcpvt.backends.base import Runner, c_contiguous
from twins_pcpvt.common import NUM_CLASSES, ToolkitError, UsageError, one_line
from twins_pcpvt.thresholds import BARS


# ---- which device is asked ---------------------------------------------------------------------------------
@pytest.fixture
def two_gpus(monkeypatch):
    """torch.cuda reporting two GPUs: 0 without bf16 (Turing, 7.5), 1 with it (Hopper, 9.0); 0 is current."""
    capabilities = {0: (7, 5), 1: (9, 0)}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capabilities[index])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: f"GPU {device}")
    # the old query answered for the current device only, whatever device was asked about
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: capabilities[0] >= (8, 0))
    return capabilities


def test_precisions_are_those_of_the_requested_gpu(two_gpus, checkpoint_path):
    assert tr.TorchRunner.supported_precisions("cuda:1") == ("fp32", "fp16", "bf16")
    assert tr.TorchRunner.supported_precisions("cuda:0") == ("fp32", "fp16")
    assert (
        tr.TorchRunner.default_precision("cuda:1") == "fp16"
    )  # tensor cores: fp16, as the OM runs on the NPU
    runner = create_runner("torch", checkpoint_path, device="cuda:1", precision="bf16")  # not loaded
    assert runner.precision == "bf16"
    with pytest.raises(UsageError, match=r"GPU cuda:0, compute capability 7\.5, has no bf16"):
        create_runner("torch", checkpoint_path, device="cuda:0", precision="bf16")
    with pytest.raises(ToolkitError, match="only 2 CUDA device"):
        create_runner("torch", checkpoint_path, device="cuda:2")


def test_a_gpu_without_tensor_cores_defaults_to_fp32(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (6, 1))
    assert tr.TorchRunner.default_precision("cuda:0") == "fp32"


class _FakeCuda:
    """Stands in for the parts of torch.cuda that capture and replay use, and records the current device."""

    def __init__(self):
        self.current = 0
        self.log: list[tuple[str, int]] = []
        outer = self

        class Graph:
            def replay(self):
                outer.log.append(("replay", outer.current))

        class Stream:
            def __init__(self, device=None):
                outer.log.append(("stream", outer.current))

            def wait_stream(self, other):
                pass

        class Event:
            def __init__(self, enable_timing=False):
                pass

            def record(self, stream=None):
                outer.log.append(("event", outer.current))

            def synchronize(self):
                pass

            def elapsed_time(self, other):
                return 1.0

        self.CUDAGraph, self.Stream, self.Event = Graph, Stream, Event

    @contextlib.contextmanager
    def device(self, index):
        saved, self.current = self.current, index
        try:
            yield
        finally:
            self.current = saved

    @contextlib.contextmanager
    def graph(self, graph):
        self.log.append(("capture", self.current))
        yield

    def current_stream(self, device=None):
        return self.Stream()

    def stream(self, stream):
        return contextlib.nullcontext()

    def synchronize(self, device=None):
        pass


def test_capture_and_replay_run_on_the_runners_gpu(monkeypatch, tmp_path):
    """On cuda:1 a graph captured while GPU 0 is current records nothing and replays stale logits."""
    fake = _FakeCuda()
    for name in (
        "device",
        "graph",
        "current_stream",
        "stream",
        "synchronize",
        "CUDAGraph",
        "Stream",
        "Event",
    ):
        monkeypatch.setattr(torch.cuda, name, getattr(fake, name))
    monkeypatch.setattr(tr, "_pinned", lambda shape: torch.empty(shape, dtype=torch.float32))
    runner = tr.TorchRunner(tmp_path / "m.pth", device="cuda:1", precision="fp32", batch_size=2)
    # what _load sets up, with the tensors on the CPU (this machine has no GPU)
    runner.on_cuda, runner.cuda_index, runner.torch_device = True, 1, torch.device("cpu")
    runner.dtype, runner.graph, runner.details = torch.float32, None, {}
    runner.model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 224 * 224, NUM_CLASSES))
    runner._events = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
    runner._capture(2)
    assert runner.details["cuda_graph"] is True and runner.input_shape == (2, 3, 224, 224)
    runner.active = True
    logits = runner.infer(np.zeros((1, 3, 224, 224), dtype=np.float32))  # padded up to the captured batch
    assert logits.shape == (1, NUM_CLASSES)
    kinds = {kind for kind, _ in fake.log}
    assert {"capture", "replay", "stream", "event"} <= kinds
    assert all(device == 1 for _, device in fake.log), fake.log
    assert fake.current == 0  # the caller's current device is left as it was


# ---- process-wide settings ---------------------------------------------------------------------------------
def _settings():
    return tr._CudaMathSettings.read()


def test_math_settings_come_back_whatever_the_closing_order():
    original = _settings()
    try:
        tr._CudaMathSettings.write(True, True, False)
        first, second = tr._CudaMathSettings(), None
        shared = first  # the runners share one holder count
        shared.acquire()
        assert _settings() == (False, False, True)
        shared.acquire()
        shared.release()  # the first opened closes first: the second still needs strict math
        assert _settings() == (False, False, True)
        shared.release()
        assert _settings() == (True, True, False) and shared.holders == 0 and second is None
    finally:
        tr._CudaMathSettings.write(*original)


def test_a_failed_cuda_load_gives_the_settings_back(monkeypatch, tmp_path):
    original = _settings()
    fake = _FakeCuda()
    monkeypatch.setattr(torch.cuda, "device", fake.device)
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a checkpoint")
    try:
        tr._CudaMathSettings.write(True, True, False)
        runner = tr.TorchRunner(bad, device="cuda:1", precision="fp16")
        with pytest.raises(ToolkitError, match="broken.pth"):
            runner.__enter__()
        assert _settings() == (True, True, False) and tr.CUDA_MATH.holders == 0
        assert not runner.active
    finally:
        tr._CudaMathSettings.write(*original)


def test_a_failed_load_is_closed_like_a_normal_exit(tmp_path):
    class Failing(Runner):
        name = "failing"
        closed = 0

        def _load(self):
            self.resource = "held"
            raise ToolkitError("cannot load")

        def _run(self, batch):
            raise AssertionError

        def _close(self):
            Failing.closed += 1
            self.resource = None

    runner = Failing(tmp_path / "m", device="cpu", precision="fp32")
    with pytest.raises(ToolkitError, match="cannot load"):
        with runner:
            pass
    assert Failing.closed == 1 and runner.resource is None and not runner.active


# ---- inputs with unusual memory layouts --------------------------------------------------------------------
def test_negative_and_odd_strides_become_plain_row_major():
    batch = np.arange(2 * 3 * 224 * 224, dtype=np.float32).reshape(2, 3, 224, 224)
    one_row = batch[1:0:-1]  # numpy calls this C-contiguous, with a negative first stride
    assert one_row.flags.c_contiguous and one_row.strides[0] < 0
    fixed = c_contiguous(one_row)
    assert fixed.strides[0] > 0 and np.array_equal(fixed, one_row)
    torch.from_numpy(fixed)  # accepted; the original would raise
    assert c_contiguous(batch) is batch
    flipped = c_contiguous(batch[:, :, ::-1])
    assert np.array_equal(flipped, batch[:, :, ::-1]) and flipped.flags.c_contiguous


@pytest.mark.slow
def test_every_backend_takes_a_one_row_batch_with_a_negative_stride(checkpoint_path, onnx_path):
    rng = np.random.default_rng(3)
    batch = rng.standard_normal((2, 3, 224, 224), dtype=np.float32)
    reversed_row = batch[1:0:-1]
    for backend, model in (("torch", checkpoint_path), ("onnxruntime", onnx_path), ("openvino", onnx_path)):
        with create_runner(backend, model, precision="fp32") as runner:
            expected = runner.infer(np.ascontiguousarray(batch[1:2]))
            assert np.allclose(runner.infer(reversed_row), expected, atol=1e-5), backend


# ---- ONNX Runtime on a GPU (options only: no GPU here)
# --------------------------------------------------------
def test_tensorrt_keeps_one_engine_per_model_precision_and_batch(onnx_path, tmp_path, monkeypatch):
    from twins_pcpvt.backends import ort_runner

    monkeypatch.setattr(ort_runner, "TENSORRT_CACHE", tmp_path / "trt")
    folders = {
        ort_runner.tensorrt_cache_folder(onnx_path, precision, batch)
        for precision in ("fp32", "fp16")
        for batch in (1, 8, None)
    }
    assert len(folders) == 6 and all(folder.parent == tmp_path / "trt" for folder in folders)
    other = tmp_path / "other.onnx"
    other.write_bytes(onnx_path.read_bytes()[:-1] + b"\0")  # other content, same name pattern
    assert ort_runner.tensorrt_cache_folder(other, "fp16", 8) != ort_runner.tensorrt_cache_folder(
        onnx_path, "fp16", 8
    )

    providers = ort_runner.gpu_providers(
        "tensorrt", 1, onnx_path, precision="fp16", batch_size=8, stream_handle="42"
    )
    (trt_name, trt), (cuda_name, cuda), cpu = providers
    assert (trt_name, cuda_name, cpu) == (
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    )
    assert trt["trt_engine_cache_path"] == str(ort_runner.tensorrt_cache_folder(onnx_path, "fp16", 8))
    assert trt["trt_fp16_enable"] is True and trt["device_id"] == cuda["device_id"] == 1
    assert trt["trt_profile_min_shapes"] == trt["trt_profile_max_shapes"] == "input:8x3x224x224"
    assert trt["user_compute_stream"] == cuda["user_compute_stream"] == "42"
    (cuda_only, _), _ = ort_runner.gpu_providers(
        "cuda", 0, onnx_path, precision="fp32", batch_size=None, stream_handle=None
    )
    assert cuda_only == "CUDAExecutionProvider"


def test_stream_timer_needs_a_gpu_that_torch_sees():
    from twins_pcpvt.backends.ort_runner import StreamTimer

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert StreamTimer.create(0) is None  # the runner then times with the wall clock and says so


# ---- runtime errors with their whole reason ----------------------------------------------------------------
@pytest.fixture
def escaping_onnx(tmp_path):
    """An ONNX model whose external weights point outside its folder."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder = tmp_path / "model"
    folder.mkdir()
    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [weight],
    )
    path = folder / "escaping.onnx"
    onnx.save_model(
        helper.make_model(graph), path, save_as_external_data=True, location="w.bin", size_threshold=0
    )
    model = onnx.load(path, load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = "../../outside.bin"
    onnx.save_model(model, path)
    return path


def test_openvino_and_onnxruntime_errors_keep_their_cause_on_one_line(escaping_onnx):
    for backend, cause in (
        ("openvino", "outside the base directory"),
        ("onnxruntime", "escapes model directory"),
    ):
        with pytest.raises(ToolkitError) as caught:
            with create_runner(backend, escaping_onnx):
                pass
        message = str(caught.value)
        assert "\n" not in message and cause in message and str(escaping_onnx) in message, message
        assert "Exception from src" not in message


def test_a_runtime_failure_while_running_is_one_line(onnx_path):
    batch = np.zeros((1, 3, 224, 224), dtype=np.float32)
    for backend in ("onnxruntime", "openvino"):
        with create_runner(backend, onnx_path, precision="fp32", batch_size=1) as runner:

            def broken(*args, **kwargs):
                raise RuntimeError("Exception from src/x.cpp:1:\nshape mismatch\nat node /blocks.0/attn")

            if backend == "onnxruntime":
                runner.session.run = broken
            else:
                runner.requests[0].infer = broken
            with pytest.raises(ToolkitError) as caught:
                runner.infer(batch)
        message = str(caught.value)
        assert (
            "\n" not in message
            and "shape mismatch; at node /blocks.0/attn" in message
            and "batch of 1" in message
        )


def test_one_line_joins_lines_and_drops_the_bare_source_location():
    exc = RuntimeError(
        "Exception from src/inference/src/cpp/core.cpp:84:\nCheck 'false' failed at x.cpp:47:\n"
        "Loading input model\n\nthe real cause\n"
    )
    assert one_line(exc) == "Check 'false' failed at x.cpp:47:; Loading input model; the real cause"
    assert one_line(RuntimeError("")) == "RuntimeError"


# ---- agreement never hides a NaN
# ------------------------------------------------------------------------------
@pytest.mark.parametrize("position", [0, 1, 2])
def test_a_nan_anywhere_makes_the_worst_cosine_nan(position):
    reference = np.random.default_rng(0).standard_normal((3, NUM_CLASSES))
    logits = reference.copy()
    logits[position, 5] = np.nan
    row = compare.agreement("x", "fp16", "ref", logits, reference)
    assert np.isnan(row["cosine"]) and row["nonfinite_values"] == 1 and not compare.passes(row)
    inf = reference.copy()
    inf[position] = np.inf
    assert not compare.passes(compare.agreement("x", "fp32", "ref", inf, reference))


def test_top1_is_required_where_the_reference_leads_clearly():
    reference = np.zeros((2, NUM_CLASSES))
    reference[0, [3, 4]] = [1.0, 0.999]  # a near-tie that bf16 rounding may swap
    reference[1, [7, 8]] = [1.0, 0.5]  # a clear lead
    swapped = reference.copy()
    swapped[0, [3, 4]] = [0.999, 1.0]
    row = compare.agreement("x", "bf16", "ref", swapped, reference)
    assert (row["top1_agrees"], row["top1_decided"], row["top1_agrees_decided"]) == (1, 1, 1)
    assert compare.passes(row) and compare.top1_text(row) == "1/2 (1/1 with a clear lead)"
    wrong = swapped.copy()
    wrong[1, [7, 8]] = [0.5, 1.0]
    assert not compare.passes(compare.agreement("x", "bf16", "ref", wrong, reference))
    # at fp32 the same near-tie counts: fp32 cannot move a logit by 1e-3
    assert not compare.passes(compare.agreement("x", "fp32", "ref", swapped, reference))


# ---- the default precision follows the hardware ------------------------------------------------------------
@pytest.mark.slow
def test_default_precision_is_what_plain_openvino_runs_here(onnx_path):
    import openvino

    from twins_pcpvt.backends.openvino_runner import compiled_precision

    plain, _ = compiled_precision(openvino.Core().compile_model(str(onnx_path), "CPU"))
    assert default_precision("auto", onnx_path) == plain
    with create_runner("openvino", onnx_path, precision="auto", batch_size=1) as runner:
        assert runner.precision == plain
        assert runner.details["cpu_pinning"] is False  # threads free to move off cores other processes use
    with create_runner("openvino", onnx_path, precision="fp32", batch_size=1) as runner:
        assert runner.precision == "fp32"  # the reference stays available by name
    assert default_precision("onnxruntime", onnx_path) == "fp32"  # it runs the fp32 graph as it is


def test_torch_on_the_cpu_defaults_to_bf16_only_where_it_is_native(monkeypatch, checkpoint_path):
    for avx512_bf16, amx, expected in ((True, False, "bf16"), (False, True, "bf16"), (False, False, "fp32")):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda value=avx512_bf16: value)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda value=amx: value)
        assert default_precision("torch", checkpoint_path) == expected


def test_auto_precision_runs_and_agrees_with_fp32(checkpoint_path):
    photos = np.random.default_rng(5).standard_normal((2, 3, 224, 224), dtype=np.float32)
    with create_runner("torch", checkpoint_path, precision="fp32") as runner:
        reference = runner.infer(photos)
    with create_runner("torch", checkpoint_path, precision="auto") as runner:
        assert runner.precision == ("bf16" if tr.native_cpu_bf16() else "fp32")
        row = compare.agreement("torch", runner.precision, "fp32", runner.infer(photos), reference)
    assert row["cosine"] >= BARS[runner.precision].min_cosine
