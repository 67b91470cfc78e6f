"""OpenVINO backend (CPU): reads the ONNX file (or an OpenVINO IR .xml) and compiles it for the CPU plugin.

The inference precision is always set explicitly: on CPUs with native bf16 the CPU plugin otherwise runs
fp32 models in bf16 without saying so. After compiling, the precision is read back from the compiled model,
and a mismatch with the request is an error, so `precision` always names what ran.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import openvino as ov

from ..common import INPUT_SHAPE, ToolkitError, one_line, usable_cpus
from .base import Port, Runner, pad_batch

_HINTS = {"fp32": "f32", "fp16": "f16", "bf16": "bf16"}
_CAPABILITY = {"fp16": "FP16", "bf16": "BF16"}
_TYPE_NAMES = {"f32": "fp32", "f16": "fp16", "bf16": "bf16"}

# OpenVINO pins its inference threads to cores by default; on a machine where other processes use the same
# cores a
# pinned thread cannot move away from them and every inference waits for it. Unpinned measured faster there.
PIN_THREADS = False

_core: ov.Core | None = None


def core() -> ov.Core:
    global _core
    if _core is None:
        _core = ov.Core()
    return _core


class OpenVinoRunner(Runner):
    name = "openvino"
    runtime = "OpenVINO"

    @classmethod
    def supported_precisions(cls, device: str) -> tuple[str, ...]:
        capabilities = set(core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        return ("fp32", *(p for p, cap in _CAPABILITY.items() if cap in capabilities))

    @classmethod
    def default_precision(cls, device: str) -> str:
        """What the CPU plugin itself would run: bf16 on CPUs with native bf16 (as a default-compiled model
        does)."""
        hint = core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()
        native = _TYPE_NAMES.get(hint, "fp32")
        return native if native in cls.supported_precisions(device) else "fp32"

    @classmethod
    def precision_note(cls, device: str, precision: str) -> str:
        if precision in _CAPABILITY:
            name = core().get_property("CPU", "FULL_DEVICE_NAME")
            capabilities = ", ".join(core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
            return (
                f": this CPU ({name}) has no native {precision} (OpenVINO reports {capabilities}), "
                "so OpenVINO would silently run fp32; use --backend torch for emulated reduced precision"
            )
        return ""

    def _load(self) -> None:
        model = read_model(self.model_path)
        shape = self.checked_input_shape(_ports(model.inputs), _ports(model.outputs))
        streams, chunk = 1, shape[0]
        cores = usable_cpus(physical=True)
        if shape[0] is None and self.batch_size and self.pipeline and cores > 1:
            # The folder mode keeps one whole batch in flight per stream, one stream per core, as
            # benchmark_app does: no core waits for another at the end of a batch, at batch 1 too.
            streams, chunk = cores, self.batch_size
            model.reshape({model.inputs[0].get_any_name(): [chunk, *INPUT_SHAPE]})
            shape = (self.batch_size, *INPUT_SHAPE)
        elif shape[0] is None and self.batch_size:
            # A dynamic model is compiled for the batch it will be given (smaller batches are padded up),
            # split over one stream per core: each stream runs its share of the batch on one thread, which
            # measured as fast as all threads on one request on a quiet machine, faster on a busy one.
            streams = min(cores, self.batch_size)
            chunk = -(-self.batch_size // streams)
            model.reshape({model.inputs[0].get_any_name(): [chunk, *INPUT_SHAPE]})
            shape = (self.batch_size, *INPUT_SHAPE)
        config = {
            "PERFORMANCE_HINT": "LATENCY" if streams == 1 else "THROUGHPUT",
            "INFERENCE_PRECISION_HINT": _HINTS[self.precision],
        }
        if streams > 1:
            config["NUM_STREAMS"] = streams
        if not PIN_THREADS:
            config["ENABLE_CPU_PINNING"] = False
        try:
            self.compiled = core().compile_model(model, "CPU", config)
        except Exception as exc:
            raise ToolkitError(
                f"{self.model_path}: OpenVINO cannot compile the model ({one_line(exc)})"
            ) from exc
        actual, ran = compiled_precision(self.compiled)
        if actual != self.precision:
            raise ToolkitError(
                f"{self.model_path}: asked OpenVINO for {self.precision}, but the compiled model runs "
                f"{actual}"
            )
        self.precision = actual
        self.requests = [self.compiled.create_infer_request() for _ in range(streams)]
        self.in_flight = streams if chunk == self.batch_size and streams > 1 else 1
        self.started = 0  # batches started by `_start`: the next takes request `started % streams`
        self.chunk = chunk
        self.input_shape = shape
        self.details = {
            "performance_hint": str(self.compiled.get_property("PERFORMANCE_HINT")),
            "num_streams": int(self.compiled.get_property("NUM_STREAMS")),
            "inference_num_threads": int(self.compiled.get_property("INFERENCE_NUM_THREADS")),
            "images_per_request": chunk,
            "in_flight": self.in_flight,
            "cpu_pinning": bool(self.compiled.get_property("ENABLE_CPU_PINNING")),
            "inference_precision": ran,
        }

    def _run(self, batch: np.ndarray) -> np.ndarray:
        if len(self.requests) == 1 or self.in_flight > 1:
            request = self.requests[0]
            start = time.perf_counter()
            request.infer({0: batch}, share_inputs=True)
            self.last_compute_ms = (time.perf_counter() - start) * 1e3
            return request.get_output_tensor(0).data.copy()  # the request reuses its output memory
        parts = np.split(pad_batch(batch, self.chunk * len(self.requests)), len(self.requests))
        start = time.perf_counter()
        for request, part in zip(self.requests, parts, strict=True):
            request.start_async({0: part}, share_inputs=True)
        for request in self.requests:
            request.wait()
        self.last_compute_ms = (time.perf_counter() - start) * 1e3
        logits = np.concatenate([request.get_output_tensor(0).data for request in self.requests])
        return logits[: len(batch)]

    def _start(self, batch: np.ndarray):
        request = self.requests[self.started % len(self.requests)]
        self.started += 1
        request.start_async({0: batch}, share_inputs=True)  # the caller keeps `batch` until `_finish`
        return request

    def _finish(self, request) -> np.ndarray:
        request.wait()
        self.last_compute_ms = float(request.latency)
        return request.get_output_tensor(0).data.copy()  # the request reuses its output memory

    def _rebuild(self) -> str:
        # a compile now and then yields a stream whose every request returns NaN for its whole life
        # (docs/stages.md); a fresh compile of the same model does not keep it
        self._close()
        self._load()
        return "a fresh compile"

    def _close(self) -> None:
        self.requests = []
        self.compiled = None


def read_model(path: Path) -> ov.Model:
    """The model at `path` (ONNX or OpenVINO IR); a file OpenVINO cannot read is one ToolkitError line."""
    if path.suffix.lower() == ".onnx":
        from openvino.frontend import FrontEndManager

        # read_model would go on to try its other frontends, whose parsers print to stderr on the way
        if not FrontEndManager().load_by_framework("onnx").supported(str(path)):
            raise ToolkitError(f"{path}: not an ONNX model (OpenVINO's ONNX frontend cannot read it)")
    try:
        return core().read_model(str(path))
    except Exception as exc:  # OpenVINO raises RuntimeError subclasses with its own message
        raise ToolkitError(f"{path}: OpenVINO cannot read the model ({one_line(exc)})") from exc


def compiled_precision(compiled) -> tuple[str, str]:
    """The precision a compiled model runs, read back from it: ('bf16', 'bf16'), ('fp32', 'f32')..."""
    ran = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    return _TYPE_NAMES.get(ran, ran), ran


_DTYPES = {"f32": "float32", "f16": "float16", "f64": "float64", "bf16": "bfloat16"}


def _ports(ports) -> list[Port]:
    """OpenVINO's model ports as ports; a dynamic rank or dimension is unknown."""
    found = []
    for port in ports:
        partial = port.get_partial_shape()
        shape = (
            None
            if partial.rank.is_dynamic
            else tuple(dim.get_length() if dim.is_static else None for dim in partial)
        )
        kind = port.get_element_type().get_type_name()
        name = min(port.get_names(), default="")  # an output may have no name
        found.append(Port(name, shape, _DTYPES.get(kind, kind)))
    return found
