"""ONNX Runtime backend: CPU with tuned session options; CUDA and TensorRT providers (onnxruntime-gpu).

On a GPU the input is copied into a device buffer bound once per batch shape, run, and the bound output buffer
copied back, so the three times are measured apart as ais_bench reports them (H2D, compute, D2H). The compute
time comes from CUDA events around the run on a stream of our own that ONNX Runtime is told to use, as the
torch
backend measures it; without PyTorch's CUDA support it falls back to the wall clock (and says so in
`details`).

TensorRT builds one engine per model file, batch size and precision, each cached in its own folder, so that
changing the batch size never rebuilds (and overwrites) the engine of another.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..common import INPUT_SHAPE, NUM_CLASSES, ToolkitError, one_line, usable_cpus
from .base import GPU_INSTALL, Port, Runner, parse_device_index

_PROVIDERS = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
TENSORRT_CACHE = Path(os.environ.get("TWINS_TRT_CACHE", Path.home() / ".cache" / "twins_pcpvt" / "tensorrt"))


def cpu_session_options() -> ort.SessionOptions:
    """Session options for this model on CPU; they match ONNX Runtime's defaults, which measured best here."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # The graph is one chain of operators: the parallel executor would only add scheduling overhead.
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = usable_cpus(physical=True)
    options.inter_op_num_threads = 1
    # Worker threads keep spinning between operators (ONNX Runtime's default): turning that off measured 10%
    # slower at batch 1 on a quiet machine, faster only while other processes compete for the cores.
    return options


class OnnxRuntimeRunner(Runner):
    name = "onnxruntime"
    runtime = "ONNX Runtime"

    @classmethod
    def check_device(cls, device: str) -> None:
        kind = device.partition(":")[0]
        if kind in _PROVIDERS and _PROVIDERS[kind] not in ort.get_available_providers():
            raise ToolkitError(
                f"--device {device} needs ONNX Runtime's {_PROVIDERS[kind]}, which the installed onnxruntime "
                f"{ort.__version__} lacks (it has {', '.join(ort.get_available_providers())}): {GPU_INSTALL}"
            )

    @classmethod
    def supported_precisions(cls, device: str) -> tuple[str, ...]:
        return ("fp32", "fp16") if device.startswith("tensorrt") else ("fp32",)

    @classmethod
    def precision_note(cls, device: str, precision: str) -> str:
        if precision == "fp16" and not device.startswith("tensorrt"):
            return " (ONNX Runtime runs the fp32 graph as it is; fp16 is available with --device tensorrt)"
        return ""

    def _load(self) -> None:
        kind = self.device.partition(":")[0]
        self._gpu_index = None if kind == "cpu" else parse_device_index(self.device, kind)
        self._timer = self._buffers = None
        if kind == "cpu":
            options, providers = cpu_session_options(), ["CPUExecutionProvider"]
        else:
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            self._timer = StreamTimer.create(self._gpu_index)
            self._buffers = {}
            providers = gpu_providers(
                kind,
                self._gpu_index,
                self.model_path,
                precision=self.precision,
                batch_size=self.batch_size,
                stream_handle=self._timer.handle if self._timer else None,
            )
        try:
            self.session = ort.InferenceSession(str(self.model_path), options, providers=providers)
        except Exception as exc:  # ONNX Runtime raises its own exception types for unreadable models
            raise ToolkitError(
                f"{self.model_path}: ONNX Runtime cannot load the model ({one_line(exc)})"
            ) from exc
        wanted = "CPUExecutionProvider" if kind == "cpu" else _PROVIDERS[kind]
        if wanted not in self.session.get_providers():
            raise ToolkitError(
                f"{self.model_path}: ONNX Runtime did not enable {wanted} (enabled: "
                f"{', '.join(self.session.get_providers())}); check the CUDA/TensorRT libraries"
            )
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        self.input_shape = self.checked_input_shape(_ports(inputs), _ports(outputs))
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        if kind == "tensorrt" and self.input_shape[0] is None and self.batch_size:
            # one engine for one shape: pad the last batch instead of building a second engine
            self.input_shape = (self.batch_size, *INPUT_SHAPE)
        self.details = {"providers": self.session.get_providers()}
        if kind == "cpu":
            self.details["intra_op_threads"] = options.intra_op_num_threads
        else:
            self.details["compute_timer"] = "CUDA events" if self._timer else "wall clock (no PyTorch CUDA)"

    def _bound(self, count: int):
        """The I/O binding of device buffers for batches of `count`, made on first use and then reused."""
        if count not in self._buffers:
            device_input = ort.OrtValue.ortvalue_from_shape_and_type(
                (count, *INPUT_SHAPE), np.float32, "cuda", self._gpu_index
            )
            device_output = ort.OrtValue.ortvalue_from_shape_and_type(
                (count, NUM_CLASSES), np.float32, "cuda", self._gpu_index
            )
            binding = self.session.io_binding()
            binding.bind_ortvalue_input(self.input_name, device_input)
            binding.bind_ortvalue_output(self.output_name, device_output)
            self._buffers[count] = (device_input, binding)
        return self._buffers[count]

    def _run(self, batch: np.ndarray) -> np.ndarray:
        if self._gpu_index is None:
            start = time.perf_counter()
            logits = self.session.run([self.output_name], {self.input_name: batch})[0]
            self.last_compute_ms = (time.perf_counter() - start) * 1e3
            return logits
        device_input, binding = self._bound(len(batch))
        start = time.perf_counter()
        device_input.update_inplace(batch)  # a synchronous copy into the bound input buffer
        copied_in = time.perf_counter()
        if self._timer:
            self._timer.start()
        self.session.run_with_iobinding(binding)  # returns after the providers synchronise
        computed = time.perf_counter()
        compute_ms = self._timer.stop() if self._timer else (computed - copied_in) * 1e3
        logits = binding.copy_outputs_to_cpu()[0]
        done = time.perf_counter()
        self.last_h2d_ms = (copied_in - start) * 1e3
        self.last_compute_ms = compute_ms
        self.last_d2h_ms = (done - computed) * 1e3
        return logits

    def _close(self) -> None:
        self.session = None
        self._buffers = None
        self._timer = None


class StreamTimer:
    """CUDA events on a stream of our own, which ONNX Runtime is told to compute on (`user_compute_stream`),
    so
    that its compute time is the GPU's own, as the torch backend measures it."""

    def __init__(self, torch, index: int):
        self.torch = torch
        with torch.cuda.device(index):
            # never the default stream: ONNX Runtime takes a handle of 0 as "no stream given"
            self.stream = torch.cuda.Stream(index)
            self.began = torch.cuda.Event(enable_timing=True)
            self.ended = torch.cuda.Event(enable_timing=True)

    @classmethod
    def create(cls, index: int) -> StreamTimer | None:
        """A timer on GPU `index`, or None where PyTorch cannot reach that GPU (the wall clock is used
        then)."""
        try:
            import torch
        except ImportError:
            return None
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            return None
        return cls(torch, index)

    @property
    def handle(self) -> str:
        return str(self.stream.cuda_stream)

    def start(self) -> None:
        self.began.record(self.stream)

    def stop(self) -> float:
        self.ended.record(self.stream)
        self.ended.synchronize()
        return float(self.began.elapsed_time(self.ended))


def gpu_providers(
    kind: str,
    index: int,
    model_path: Path,
    *,
    precision: str,
    batch_size: int | None,
    stream_handle: str | None,
) -> list:
    """Provider list and options for `--device cuda:N` or `tensorrt:N`."""
    stream = {"user_compute_stream": stream_handle} if stream_handle else {}
    cuda = ("CUDAExecutionProvider", {"device_id": index, "cudnn_conv_algo_search": "EXHAUSTIVE", **stream})
    if kind == "cuda":
        return [cuda, "CPUExecutionProvider"]
    cache = tensorrt_cache_folder(model_path, precision, batch_size)
    cache.mkdir(parents=True, exist_ok=True)
    trt_options = {
        "device_id": index,
        "trt_fp16_enable": precision == "fp16",
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(TENSORRT_CACHE),
        **({"has_user_compute_stream": True, **stream} if stream else {}),
    }
    if batch_size:
        # one engine for exactly this batch: the base runner pads a smaller last batch up to it
        shape = f"{_input_name(model_path)}:{batch_size}x{'x'.join(map(str, INPUT_SHAPE))}"
        trt_options.update(
            trt_profile_min_shapes=shape, trt_profile_opt_shapes=shape, trt_profile_max_shapes=shape
        )
    return [("TensorrtExecutionProvider", trt_options), cuda, "CPUExecutionProvider"]


def tensorrt_cache_folder(model_path: Path, precision: str, batch_size: int | None) -> Path:
    """Where the engine for this model content, precision and batch size is kept (one engine per folder)."""
    digest = hashlib.sha256()
    with open(model_path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    batch = f"bs{batch_size}" if batch_size else "dynamic"
    return TENSORRT_CACHE / f"{digest.hexdigest()[:16]}-{precision}-{batch}-ort{ort.__version__}"


def _input_name(model_path: Path) -> str:
    """The model's input name, read from the graph without a session (for TensorRT's profile shapes)."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    initializers = {init.name for init in graph.initializer}
    return next(value.name for value in graph.input if value.name not in initializers)


_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64"}


def _ports(args) -> list[Port]:
    """ONNX Runtime's NodeArgs as ports; a symbolic or unknown dimension is dynamic."""
    return [
        Port(
            arg.name,
            tuple(dim if isinstance(dim, int) and dim > 0 else None for dim in arg.shape),
            _DTYPES.get(arg.type, arg.type),
        )
        for arg in args
    ]
