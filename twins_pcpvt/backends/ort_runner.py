"""ONNX Runtime backend: CPU with tuned session options; CUDA and TensorRT providers (onnxruntime-gpu).

On a GPU the input is copied to the device, run and copied back through an I/O binding, so the three times
are measured apart as ais_bench reports them (H2D, compute, D2H).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..common import INPUT_SHAPE, NUM_CLASSES, ToolkitError
from .base import Runner, parse_device_index, physical_cores

_PROVIDERS = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
TENSORRT_CACHE = Path(os.environ.get("TWINS_TRT_CACHE", Path.home() / ".cache" / "twins_pcpvt" / "tensorrt"))


def cpu_session_options() -> ort.SessionOptions:
    """Session options for this model on CPU; they match ONNX Runtime's defaults, which measured best here."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # The graph is one chain of operators: the parallel executor would only add scheduling overhead.
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = physical_cores()
    options.inter_op_num_threads = 1
    # Worker threads keep spinning between operators (ONNX Runtime's default): turning that off measured 10%
    # slower at batch 1 on a quiet machine, faster only while other processes compete for the cores.
    return options


class OnnxRuntimeRunner(Runner):
    name = "onnxruntime"

    @classmethod
    def check_device(cls, device: str) -> None:
        kind = device.partition(":")[0]
        if kind in _PROVIDERS and _PROVIDERS[kind] not in ort.get_available_providers():
            raise ToolkitError(
                f"--device {device} needs ONNX Runtime's {_PROVIDERS[kind]}, which the installed onnxruntime "
                f"{ort.__version__} lacks (it has {', '.join(ort.get_available_providers())}): "
                "pip uninstall -y onnxruntime && pip install onnxruntime-gpu"
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
        if kind == "cpu":
            options, providers = cpu_session_options(), ["CPUExecutionProvider"]
        else:
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            providers = self._gpu_providers(kind, parse_device_index(self.device, kind))
        try:
            self.session = ort.InferenceSession(str(self.model_path), options, providers=providers)
        except Exception as exc:  # ONNX Runtime raises its own exception types for unreadable models
            raise ToolkitError(f"{self.model_path}: ONNX Runtime cannot load the model ({exc})") from exc
        wanted = "CPUExecutionProvider" if kind == "cpu" else _PROVIDERS[kind]
        if wanted not in self.session.get_providers():
            raise ToolkitError(
                f"{self.model_path}: ONNX Runtime did not enable {wanted} (enabled: "
                f"{', '.join(self.session.get_providers())}); check the CUDA/TensorRT libraries"
            )
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        self.input_shape = _check_io(self.model_path, inputs, outputs)
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        if kind == "tensorrt" and self.input_shape[0] is None and self.batch_size:
            # one engine for one shape: pad the last batch instead of building a second engine
            self.input_shape = (self.batch_size, *INPUT_SHAPE)
        self.details = {"providers": self.session.get_providers()}
        if kind == "cpu":
            self.details["intra_op_threads"] = options.intra_op_num_threads
        self._gpu_index = None if kind == "cpu" else parse_device_index(self.device, kind)

    def _gpu_providers(self, kind: str, index: int) -> list:
        cuda = ("CUDAExecutionProvider", {"device_id": index, "cudnn_conv_algo_search": "EXHAUSTIVE"})
        if kind == "cuda":
            return [cuda, "CPUExecutionProvider"]
        TENSORRT_CACHE.mkdir(parents=True, exist_ok=True)
        trt_options = {
            "device_id": index,
            "trt_fp16_enable": self.precision == "fp16",
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(TENSORRT_CACHE),
            "trt_timing_cache_enable": True,
        }
        if self.batch_size:
            first = f"{{name}}:1x{'x'.join(map(str, INPUT_SHAPE))}"
            fixed = f"{{name}}:{self.batch_size}x{'x'.join(map(str, INPUT_SHAPE))}"
            name = _input_name(self.model_path)
            trt_options.update(
                trt_profile_min_shapes=first.format(name=name),
                trt_profile_opt_shapes=fixed.format(name=name),
                trt_profile_max_shapes=fixed.format(name=name),
            )
        return [("TensorrtExecutionProvider", trt_options), cuda, "CPUExecutionProvider"]

    def _run(self, batch: np.ndarray) -> np.ndarray:
        if self._gpu_index is None:
            start = time.perf_counter()
            logits = self.session.run([self.output_name], {self.input_name: batch})[0]
            self.last_compute_ms = (time.perf_counter() - start) * 1e3
            return logits
        start = time.perf_counter()
        device_input = ort.OrtValue.ortvalue_from_numpy(batch, "cuda", self._gpu_index)
        copied_in = time.perf_counter()
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(self.input_name, device_input)
        binding.bind_output(self.output_name, "cuda", self._gpu_index)
        self.session.run_with_iobinding(binding)  # returns after the providers synchronise
        computed = time.perf_counter()
        logits = binding.copy_outputs_to_cpu()[0]
        done = time.perf_counter()
        self.last_h2d_ms = (copied_in - start) * 1e3
        self.last_compute_ms = (computed - copied_in) * 1e3
        self.last_d2h_ms = (done - computed) * 1e3
        return logits

    def _close(self) -> None:
        self.session = None


def _input_name(model_path: Path) -> str:
    """The model's input name, read from the graph without a session (for TensorRT's profile shapes)."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    initializers = {init.name for init in graph.initializer}
    return next(value.name for value in graph.input if value.name not in initializers)


def _check_io(model_path: Path, inputs, outputs) -> tuple[int | None, int, int, int]:
    """The model's input shape with its batch (None when dynamic), after checking it is a Twins classifier."""
    if len(inputs) != 1 or len(outputs) != 1:
        raise ToolkitError(
            f"{model_path}: expected one input and one output, found {len(inputs)} and {len(outputs)}"
        )
    shape, kind = inputs[0].shape, inputs[0].type
    if kind != "tensor(float)":
        raise ToolkitError(
            f"{model_path}: input '{inputs[0].name}' is {kind}, expected float32 (tensor(float))"
        )
    if len(shape) != 4 or any(
        isinstance(dim, int) and dim != want for dim, want in zip(shape[1:], INPUT_SHAPE, strict=True)
    ):
        raise ToolkitError(f"{model_path}: input shape {shape} does not fit [N, 3, 224, 224]")
    out_shape = outputs[0].shape
    if len(out_shape) != 2 or (isinstance(out_shape[1], int) and out_shape[1] != NUM_CLASSES):
        raise ToolkitError(f"{model_path}: output shape {out_shape} is not [N, {NUM_CLASSES}]")
    batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
    return (batch, *INPUT_SHAPE)
