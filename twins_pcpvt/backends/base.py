"""The contract every inference backend implements, the batch handling they share and the statistics of the
times they record.

A runner is a context manager: it loads its model on enter and frees it on exit. In between, `infer` takes a
float32 batch `[N, 3, 224, 224]` and returns float32 logits `[N, 1000]`, and records how long the model
itself took (`last_compute_ms`, plus `last_h2d_ms` / `last_d2h_ms` on backends that copy to and from a
device). A runner whose batch is fixed (a static model, a CUDA graph) pads a smaller batch up to its batch
size and drops the padding rows from the result, so callers may pass any batch up to that size.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..common import INPUT_SHAPE, NUM_CLASSES, ToolkitError, one_line

PRECISIONS = ("fp32", "fp16", "bf16")
# How to get onnxruntime-gpu (docs/gpu.md): it and the CPU onnxruntime are one Python package, so it goes into
# an environment of its own, at the version requirements-gpu.txt pins.
GPU_INSTALL = (
    "install the GPU runtimes into a virtual environment of their own (docs/gpu.md): python3 -m venv "
    ".venv-gpu && .venv-gpu/bin/pip install -r requirements-gpu.txt (onnxruntime-gpu==1.31.1; installed "
    "over the CPU onnxruntime of requirements.txt, either one silently replaces the other)"
)
# "auto": the reduced precision the hardware runs natively where it has one (as the OM model runs fp16 on the
# NPU and OpenVINO bf16 on CPUs with native bf16), else fp32; each backend decides in `default_precision`.
AUTO_PRECISION = "auto"
PERCENTILE = 99  # the tail percentile of ais_bench's latency statistics


def pad_batch(batch: np.ndarray, size: int) -> np.ndarray:
    """`batch` grown to `size` rows by repeating its first row (as ais_bench pads with its first file)."""
    count = len(batch)
    if count == size:
        return batch
    if not 0 < count < size:
        raise ValueError(f"cannot pad a batch of {count} to {size}")
    padded = np.empty((size, *batch.shape[1:]), dtype=batch.dtype)
    padded[:count] = batch
    padded[count:] = batch[0]
    return padded


def c_contiguous(batch: np.ndarray) -> np.ndarray:
    """`batch` itself when its memory is plain row-major, else a row-major copy.

    numpy calls a one-row view with a negative (or any) first stride C-contiguous, and torch.from_numpy
    refuses
    negative strides, so the strides themselves are compared with the row-major ones.
    """
    expected, step = [], batch.itemsize
    for size in reversed(batch.shape):
        expected.append(step)
        step *= size
    if batch.flags.c_contiguous and batch.strides == tuple(reversed(expected)):
        return batch
    return np.array(batch, order="C", copy=True)


def time_stats(times_ms: Sequence[float]) -> dict[str, float]:
    """ais_bench's statistics block: min, max, mean, median, percentile(99%), count (ms); zeros when empty."""
    if not len(times_ms):
        return {
            "min": 0.0,
            "max": 0.0,
            "mean": 0.0,
            "median": 0.0,
            f"percentile({PERCENTILE}%)": 0.0,
            "count": 0,
        }
    values = np.asarray(times_ms, dtype=np.float64)
    return {
        "min": float(values.min()),
        "max": float(values.max()),
        "mean": float(values.mean()),
        "median": float(np.median(values)),
        f"percentile({PERCENTILE}%)": float(np.percentile(values, PERCENTILE)),
        "count": int(values.size),
    }


@dataclass(frozen=True)
class Port:
    """One input or output of a loaded model, as its runtime reports it."""

    name: str
    shape: tuple[int | None, ...] | None  # None: the rank is unknown; a None dimension: dynamic
    dtype: str  # numpy's name of the element type ("float32", "float16"...), or the runtime's own


def parse_device_index(device: str, kind: str) -> int:
    """The N of `kind` or `kind:N` (0 when absent); a clear error otherwise."""
    _, _, index = device.partition(":")
    if not index:
        return 0
    if not index.isdigit():
        raise ToolkitError(f"device {device!r}: expected {kind} or {kind}:N with N a device number")
    return int(index)


class Runner(abc.ABC):
    """Base class of the backends. Subclasses set `name`, implement `_load`, `_run` and `_close`."""

    name: str = "runner"
    # the runtime's name, for a backend whose runtime raises its own exception types while running: `infer`
    # then turns them into one ToolkitError line naming the runtime (None: exceptions pass unchanged)
    runtime: str | None = None

    def __init__(self, model_path: str | Path, *, device: str, precision: str, batch_size: int | None = None):
        self.model_path = Path(model_path)
        self.device = device
        self.precision = precision  # subclasses replace it with what actually runs once loaded
        # the batch the caller intends to pass: lets a runner fix its shapes (static model, CUDA graph) to it
        self.batch_size = batch_size
        # (batch, 3, 224, 224): batch is an int when the runner takes only that batch, None when any works
        self.input_shape: tuple[int | None, int, int, int] | None = None
        self.last_compute_ms: float | None = None
        self.last_h2d_ms: float | None = None
        self.last_d2h_ms: float | None = None
        # backend settings worth recording in a summary (providers, streams, CUDA graph...)
        self.details: dict[str, object] = {}
        self.active = False

    # ---- checks that run before anything is loaded ---------------------------------------------------------
    @classmethod  # noqa: B027 - an optional hook: most backends have nothing to check
    def check_device(cls, device: str) -> None:
        """Fail with a clear message when `device` cannot run this backend here (no GPU, no GPU provider)."""

    @classmethod
    def supported_precisions(cls, device: str) -> tuple[str, ...]:
        return ("fp32",)

    @classmethod
    def default_precision(cls, device: str) -> str:
        """What `--precision auto` runs on `device`: the native reduced precision where there is one, else
        fp32."""
        return "fp32"

    @classmethod
    def precision_note(cls, device: str, precision: str) -> str:
        """Why `precision` is missing on `device`, as a clause appended to the error (empty when obvious)."""
        return ""

    # ---- lifecycle -----------------------------------------------------------------------------------------
    def __enter__(self) -> Runner:
        try:
            self._load()
            if self.input_shape is None:
                raise ToolkitError(f"{self.model_path}: {self.name} runner did not report its input shape")
        except BaseException:
            self._close()  # a failed load frees (and restores) what it had set up, as a normal exit does
            raise
        self.active = True
        return self

    def __exit__(self, *exc_info) -> None:
        self.active = False
        self._close()

    def checked_input_shape(self, inputs: Sequence[Port], outputs: Sequence[Port]) -> tuple[int | None, ...]:
        """The model's input shape (batch None when dynamic), after checking that the ports its runtime
        reports are the classifier's: one float32 input [N, 3, 224, 224] and one output [N, 1000]."""
        model = self.model_path
        if len(inputs) != 1 or len(outputs) != 1:
            raise ToolkitError(
                f"{model}: expected one input and one output, found {len(inputs)} and {len(outputs)}"
            )
        (port,), (output,) = inputs, outputs
        if port.dtype != "float32":
            raise ToolkitError(f"{model}: input '{port.name}' is {port.dtype}, expected float32")
        shape = port.shape
        if (
            shape is None
            or len(shape) != 4
            or any(dim is not None and dim != want for dim, want in zip(shape[1:], INPUT_SHAPE, strict=True))
        ):
            raise ToolkitError(f"{model}: input shape {_shape_text(shape)} does not fit [N, 3, 224, 224]")
        out = output.shape
        if out is None or len(out) != 2 or out[1] not in (None, NUM_CLASSES):
            raise ToolkitError(f"{model}: output shape {_shape_text(out)} is not [N, {NUM_CLASSES}]")
        return (shape[0], *INPUT_SHAPE)

    @property
    def static_batch(self) -> int | None:
        """The only batch size the loaded model runs, or None when it runs any."""
        return None if self.input_shape is None else self.input_shape[0]

    # ---- inference -----------------------------------------------------------------------------------------
    def infer(self, batch: np.ndarray) -> np.ndarray:
        if not self.active:
            raise ToolkitError(f"{self.name} runner is not loaded: use it inside a `with` block")
        if batch.ndim != 4 or tuple(batch.shape[1:]) != INPUT_SHAPE or len(batch) == 0:
            raise ToolkitError(
                f"{self.name}: expected a batch of shape [N, 3, 224, 224], got {list(batch.shape)}"
            )
        if batch.dtype != np.float32:
            raise ToolkitError(f"{self.name}: expected float32 input, got {batch.dtype}")
        batch = c_contiguous(batch)
        count = len(batch)
        static = self.static_batch
        if static is not None and count != static:
            if count > static:
                raise ToolkitError(
                    f"{self.model_path}: the model takes batches of {static}, got a batch of {count}"
                )
            batch = pad_batch(batch, static)
        try:
            logits = self._run(batch)
        except Exception as exc:
            if self.runtime is None or isinstance(exc, ToolkitError):
                raise
            raise ToolkitError(
                f"{self.model_path}: {self.runtime} failed on a batch of {len(batch)} ({one_line(exc)})"
            ) from exc
        if logits.shape != (len(batch), NUM_CLASSES):
            raise ToolkitError(
                f"{self.model_path}: expected output [{len(batch)}, {NUM_CLASSES}], got {list(logits.shape)}"
            )
        return logits[:count]

    @abc.abstractmethod
    def _load(self) -> None:
        """Load the model; set `input_shape` and `precision` (what will actually run)."""

    @abc.abstractmethod
    def _run(self, batch: np.ndarray) -> np.ndarray:
        """Run exactly `batch` (padded to a static batch); set `last_compute_ms`; return float32 logits."""

    @abc.abstractmethod
    def _close(self) -> None:
        """Free what `_load` allocated; also called after a `_load` that failed part-way."""

    def describe(self) -> dict[str, object]:
        """What ran, for the summary: backend, device, precision and backend-specific settings."""
        return {"backend": self.name, "device": self.device, "precision": self.precision, **self.details}


def _shape_text(shape: tuple[int | None, ...] | None) -> str:
    """[1, 3, 224, 224], with '?' for a dynamic dimension; '(unknown rank)'."""
    if shape is None:
        return "(unknown rank)"
    return "[" + ", ".join("?" if dim is None else str(dim) for dim in shape) + "]"
