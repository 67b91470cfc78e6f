"""Ascend backend: an `.om` model (compiled by ATC) run through ais_bench's `InferSession` on an NPU.

Two generations of ais_bench are in use and both work; each method is taken as the session object spells it
(checked with hasattr, never from a version string):
- 2023 (package 0.0.2): `sumary()`, `reset_sumaryinfo()`, `MemorySummary.get_H2D_time_list()`, the summary's
  `exec_time_list` holds durations in ms; the session closes with `finalize()`.
- 2024 (7.0.0c2, what current installers fetch): `summary()`, `reset_summaryinfo()`,
  `MemorySummary.get_h2d_time_list()`, `exec_time_list` holds (start, end) pairs in ms; the session closes
  with
  `free_resource()` and then the static `finalize()`, as its command line does.
The precision of an OM model is fixed when ATC compiles it (`--precision_mode`, `op_precision.ini`), so the
runner reports 'om' rather than a precision it cannot see. Compute time is the NPU execution time ais_bench
itself reports; H2D/D2H are its copy times, where its `MemorySummary` offers them.
"""

from __future__ import annotations

import numpy as np
from ais_bench.infer.interface import InferSession

try:  # the record of host/device copy times; absent from some releases
    from ais_bench.infer.interface import MemorySummary
except ImportError:
    MemorySummary = None

from ..common import NUM_CLASSES, ToolkitError
from .base import Port, Runner, parse_device_index

OM_PRECISION = "om"  # set at ATC compile time, not at run time


class AisRunner(Runner):
    name = "ais"

    @classmethod
    def precision_note(cls, device: str, precision: str) -> str:
        return (
            " (an OM model's precision is chosen when ATC compiles it, with --precision_mode and "
            "op_precision.ini; run the .om with the default fp32, which is its float32 input and output)"
        )

    def _load(self) -> None:
        try:
            self.session = InferSession(parse_device_index(self.device, "npu"), str(self.model_path))
        except Exception as exc:  # aclruntime raises RuntimeError with the ACL error code
            raise ToolkitError(
                f"{self.model_path}: ais_bench cannot load the model on {self.device} ({exc})"
            ) from exc
        try:
            self._check_model()
        except ToolkitError:
            self._close()
            raise

    def _check_model(self) -> None:
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        shape = self.checked_input_shape(_ports(inputs), _ports(outputs))
        if shape[0] is None:
            raise ToolkitError(
                f"{self.model_path}: input shape {list(inputs[0].shape)} is not a static [N, 3, 224, 224] "
                "(compile one OM per batch size with ATC's --input_shape)"
            )
        self.input_shape = shape
        self.precision = OM_PRECISION
        self.details = {"om_input": inputs[0].name, "om_output": outputs[0].name}

    def _run(self, batch: np.ndarray) -> np.ndarray:
        session = self.session
        try:
            outputs = session.infer([batch], mode="static")
            times = _first_method(session, "summary", "sumary")().exec_time_list
            _first_method(session, "reset_summaryinfo", "reset_sumaryinfo")()
        except RuntimeError as exc:  # aclruntime reports ACL failures as RuntimeError
            raise ToolkitError(
                f"{self.model_path}: ais_bench inference failed on {self.device} ({exc})"
            ) from exc
        self.last_compute_ms = _run_time_ms(times)
        self.last_h2d_ms, self.last_d2h_ms = _copy_times_ms()
        return np.asarray(outputs[0], dtype=np.float32).reshape(len(batch), NUM_CLASSES)

    def _close(self) -> None:
        session, self.session = getattr(self, "session", None), None
        if session is None:
            return
        if hasattr(session, "free_resource"):  # 2024: free this session, then finalize the ACL runtime
            session.free_resource()
        session.finalize()


def _first_method(session, *names):
    """The session's method under the first of `names` it has (the generations spell some differently)."""
    for name in names:
        if hasattr(session, name):
            return getattr(session, name)
    raise ToolkitError(f"this ais_bench InferSession has none of {', '.join(names)}: unsupported version")


def _copy_times_ms() -> tuple[float | None, float | None]:
    """(H2D, D2H) copy time of the last run in ms, from ais_bench's MemorySummary; None where not offered."""
    if MemorySummary is None:
        return None, None
    h2d = _first_method(MemorySummary, "get_h2d_time_list", "get_H2D_time_list")()
    d2h = _first_method(MemorySummary, "get_d2h_time_list", "get_D2H_time_list")()
    MemorySummary.reset()
    return (float(sum(h2d)) if len(h2d) else None), (float(sum(d2h)) if len(d2h) else None)


def _run_time_ms(times) -> float:
    """The last run's NPU time: a duration in ms (2023) or the difference of a (start, end) pair in ms
    (2024)."""
    if not len(times):
        raise ToolkitError("ais_bench reported no execution time for the last run")
    last = times[-1]
    if isinstance(last, (tuple, list)):
        return float(last[1]) - float(last[0])
    return float(last)


def _ports(tensors) -> list[Port]:
    """aclruntime's tensor descriptions as ports: its dtype enum prints as 'dtype.float32'; a dimension below
    1 is dynamic."""
    aliases = {"float": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16"}
    ports = []
    for tensor in tensors:
        dtype = str(tensor.datatype).rsplit(".", 1)[-1].lower()
        shape = tuple(int(dim) if int(dim) > 0 else None for dim in tensor.shape)
        ports.append(Port(tensor.name, shape, aliases.get(dtype, dtype)))
    return ports
