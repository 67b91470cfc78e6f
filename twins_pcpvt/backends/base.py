"""The contract every inference backend implements, the batch handling they share and the statistics of the
times they record.

A runner is a context manager: it loads its model on enter and frees it on exit. In between, `infer` takes a
float32 batch `[N, 3, 224, 224]` and returns float32 logits `[N, 1000]`, and records how long the model
itself took (`last_compute_ms`, plus `last_h2d_ms` / `last_d2h_ms` on backends that copy to and from a
device). A runner whose batch is fixed (a static model, a CUDA graph) pads a smaller batch up to its batch
size and drops the padding rows from the result, so callers may pass any batch up to that size.

Every batch's logits are checked here, for every backend: a non-finite logit is never returned. When its
input row is not finite either, the input is named as the cause. Otherwise it is a fault of the runtime or the
model; a backend that can build its model afresh (`_rebuild`: OpenVINO compiles it again) reruns the batch
once and records why in `recomputed`; a fault that remains, or that no rebuild can cure, stops with one line
naming the inputs. The check costs one pass over the logits (microseconds); the inputs are read only when a
logit is bad.
"""

from __future__ import annotations

import abc
import collections
import contextlib
from collections.abc import Iterable, Iterator, Sequence
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
NAMED_INPUTS = 8  # inputs an error names before "and N more"


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
        # one line per batch that was run again after its logits were not finite: what happened and to which
        # inputs
        self.recomputed: list[str] = []
        # asked by the folder mode: keep several batches computing at once where the runtime can
        # (`infer_stream`); a runner that can sets `in_flight` to how many when it loads
        self.pipeline = False
        self.in_flight = 1
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
    def infer_stream(self, batches: Iterable[tuple[np.ndarray, Sequence[str]]]) -> Iterator[np.ndarray]:
        """The logits of each (batch, sources), in order, checked as `infer` checks them, with up to
        `in_flight` batches computing at once; when one is yielded, `last_compute_ms` is that batch's own
        compute time. A batch whose logits are not finite is run again through `infer` (and its recovery)
        once the batches in flight beside it have ended; those are then started again."""
        if self.in_flight <= 1:
            for batch, sources in batches:
                yield self.infer(batch, sources)
            return
        pending: collections.deque = collections.deque()

        def collect() -> np.ndarray:
            batch, sources, count, handle = pending.popleft()
            logits = self._checked_shape(self._runtime_call(self._finish, handle, len(batch)), len(batch))
            faulty = self._faulty_rows(batch, logits, count, sources, False)
            if not faulty:
                return logits[:count]
            waiting = list(pending)
            pending.clear()
            for item in waiting:  # a rebuild frees the requests: let those in flight end first
                self._runtime_call(self._finish, item[3], len(item[0]))
            logits = self._recomputed(batch, count, sources, faulty, False)
            for other, other_sources, other_count, _ in waiting:
                started = self._runtime_call(self._start, other, len(other))
                pending.append((other, other_sources, other_count, started))
            return logits[:count]

        try:
            for batch, sources in batches:
                batch, count = self._prepared(batch, sources)
                if len(pending) >= self.in_flight:
                    yield collect()
                pending.append((batch, sources, count, self._runtime_call(self._start, batch, len(batch))))
            while pending:
                yield collect()
        finally:  # stopped early: the batches in flight end before their inputs or the model are freed
            for item in pending:
                with contextlib.suppress(Exception):
                    self._finish(item[3])

    def infer(
        self, batch: np.ndarray, sources: Sequence[str] | None = None, *, nonfinite_inputs: bool = False
    ) -> np.ndarray:
        """Logits of `batch`, all finite; `sources` name its rows (file names) in errors and in `recomputed`.

        `nonfinite_inputs`: rows whose input is not finite (ais_bench's random pure-inference data) may have
        non-finite logits; otherwise such a row stops the run naming its input as the cause.
        """
        batch, count = self._prepared(batch, sources)
        logits = self._checked_run(batch)
        faulty = self._faulty_rows(batch, logits, count, sources, nonfinite_inputs)
        if faulty:
            logits = self._recomputed(batch, count, sources, faulty, nonfinite_inputs)
        return logits[:count]

    def _recomputed(
        self,
        batch: np.ndarray,
        count: int,
        sources: Sequence[str] | None,
        faulty: list[int],
        nonfinite_inputs: bool,
    ) -> np.ndarray:
        """The logits of `batch` after a rebuild, whose `faulty` rows were not finite; recorded in
        `recomputed`. A fault that no rebuild can cure, or that remains, stops naming the inputs."""
        what = (
            f"{self.runtime or self.name} ({self.precision}) returned non-finite logits for the finite "
            f"inputs {_names(faulty, count, sources)}"
        )
        rebuilt = self._rebuild()
        if rebuilt is None:
            raise ToolkitError(
                f"{self.model_path}: {what}: a fault of the runtime or the model, not a result"
            )
        logits = self._checked_run(batch)
        if self._faulty_rows(batch, logits, count, sources, nonfinite_inputs):
            raise ToolkitError(
                f"{self.model_path}: {what}, also after {rebuilt}: a fault of the runtime or the model, "
                "not a result"
            )
        self.recomputed.append(f"{what}; recomputed after {rebuilt}: finite")
        return logits

    def _prepared(self, batch: np.ndarray, sources: Sequence[str] | None) -> tuple[np.ndarray, int]:
        """`batch` checked, contiguous and padded to a static batch; with its count of real rows."""
        if not self.active:
            raise ToolkitError(f"{self.name} runner is not loaded: use it inside a `with` block")
        if batch.ndim != 4 or tuple(batch.shape[1:]) != INPUT_SHAPE or len(batch) == 0:
            raise ToolkitError(
                f"{self.name}: expected a batch of shape [N, 3, 224, 224], got {list(batch.shape)}"
            )
        if batch.dtype != np.float32:
            raise ToolkitError(f"{self.name}: expected float32 input, got {batch.dtype}")
        if sources is not None and len(sources) != len(batch):
            raise ValueError(f"{len(sources)} sources for a batch of {len(batch)}")
        batch = c_contiguous(batch)
        count = len(batch)
        static = self.static_batch
        if static is not None and count != static:
            if count > static:
                raise ToolkitError(
                    f"{self.model_path}: the model takes batches of {static}, got a batch of {count}"
                )
            batch = pad_batch(batch, static)
        return batch, count

    def _runtime_call(self, call, argument, size: int):
        """`call(argument)`, the runtime's own errors as one line naming the runtime."""
        try:
            return call(argument)
        except Exception as exc:
            if self.runtime is None or isinstance(exc, ToolkitError):
                raise
            raise ToolkitError(
                f"{self.model_path}: {self.runtime} failed on a batch of {size} ({one_line(exc)})"
            ) from exc

    def _checked_run(self, batch: np.ndarray) -> np.ndarray:
        """`_run`, its runtime's errors as one line, its output's shape checked."""
        return self._checked_shape(self._runtime_call(self._run, batch, len(batch)), len(batch))

    def _checked_shape(self, logits: np.ndarray, size: int) -> np.ndarray:
        if logits.shape != (size, NUM_CLASSES):
            raise ToolkitError(
                f"{self.model_path}: expected output [{size}, {NUM_CLASSES}], got {list(logits.shape)}"
            )
        return logits

    def _faulty_rows(
        self,
        batch: np.ndarray,
        logits: np.ndarray,
        count: int,
        sources: Sequence[str] | None,
        nonfinite_inputs: bool,
    ) -> list[int]:
        """Rows (padding included) with a non-finite logit from a finite input; a non-finite input row with
        a non-finite logit stops here, named as the cause, unless `nonfinite_inputs` allows it."""
        if np.isfinite(logits).all():
            return []
        bad = np.flatnonzero(~np.isfinite(logits).all(axis=1))
        inputs_finite = np.isfinite(batch[bad].reshape(len(bad), -1)).all(axis=1)
        if not nonfinite_inputs and not inputs_finite.all():
            row = int(bad[np.argmin(inputs_finite)])
            values = int(np.size(batch[row]) - np.isfinite(batch[row]).sum())
            raise ToolkitError(
                f"{_names([row], count, sources)}: the input holds {values} NaN or infinite values, so its "
                "logits are not finite: the input is the cause, not the runtime (make it again with the "
                "preprocess)"
            )
        return [int(row) for row in bad[inputs_finite]]

    def _start(self, batch: np.ndarray):
        """Start `batch` without waiting (only for `in_flight` > 1); a handle for `_finish`."""
        raise NotImplementedError(f"{self.name} runner keeps one batch in flight")

    def _finish(self, handle) -> np.ndarray:
        """Wait for the batch `_start` began; set `last_compute_ms`; return its float32 logits."""
        raise NotImplementedError(f"{self.name} runner keeps one batch in flight")

    def _rebuild(self) -> str | None:
        """Build the model afresh for one rerun of a batch whose logits were not finite; what was done ("a
        fresh compile"), or None where a rerun would compute the same."""
        return None

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


def _names(rows: Sequence[int], count: int, sources: Sequence[str] | None) -> str:
    """The inputs of batch rows, distinct and in order: their sources (a padding row repeats the first), or
    'row i of the batch'; the first NAMED_INPUTS, then how many more."""
    real = [row if row < count else 0 for row in rows]
    names = list(
        dict.fromkeys(sources[row] if sources is not None else f"row {row} of the batch" for row in real)
    )
    more = f" and {len(names) - NAMED_INPUTS} more" if len(names) > NAMED_INPUTS else ""
    return ", ".join(names[:NAMED_INPUTS]) + more


def _shape_text(shape: tuple[int | None, ...] | None) -> str:
    """[1, 3, 224, 224], with '?' for a dynamic dimension; '(unknown rank)'."""
    if shape is None:
        return "(unknown rank)"
    return "[" + ", ".join("?" if dim is None else str(dim) for dim in shape) + "]"
