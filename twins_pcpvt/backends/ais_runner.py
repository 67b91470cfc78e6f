"""Ascend backend: an `.om` model (compiled by ATC) run through ais_bench's `InferSession` on an NPU.

Only the documented interface is used: `InferSession(device_id, model_path)`, `get_inputs()` /
`get_outputs()` (`name`, `shape`, `datatype`), `infer(feeds, mode='static')`, the summary's
`exec_time_list` (ms per run), `reset_sumaryinfo()` and `free_resource()` (or `finalize()` in older
versions). The precision of an OM model is fixed when ATC compiles it (`--precision_mode`,
`op_precision.ini`), so the runner reports 'om' rather than a precision it cannot see. Compute time is the
NPU execution time ais_bench itself reports (H2D/D2H too, where its version has them).
"""

from __future__ import annotations

import numpy as np
from ais_bench.infer.interface import InferSession

try:  # H2D/D2H copy times: present in later ais_bench versions only
    from ais_bench.infer.interface import MemorySummary
except ImportError:
    MemorySummary = None

from ..common import INPUT_SHAPE, NUM_CLASSES, ToolkitError
from .base import Runner, parse_device_index

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
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ToolkitError(
                f"{self.model_path}: expected one input and one output, "
                f"found {len(inputs)} and {len(outputs)}"
            )
        shape = [int(dim) for dim in inputs[0].shape]
        if len(shape) != 4 or tuple(shape[1:]) != INPUT_SHAPE or shape[0] < 1:
            raise ToolkitError(
                f"{self.model_path}: input shape {shape} is not a static [N, 3, 224, 224] "
                "(compile one OM per batch size with ATC's --input_shape)"
            )
        if not _is_float32(inputs[0].datatype):
            raise ToolkitError(f"{self.model_path}: input datatype {inputs[0].datatype} is not float32")
        self.input_shape = (shape[0], *INPUT_SHAPE)
        self.precision = OM_PRECISION
        self.details = {"om_input": inputs[0].name, "om_output": outputs[0].name}

    def _run(self, batch: np.ndarray) -> np.ndarray:
        outputs = self.session.infer([batch], mode="static")
        times = _summary(self.session).exec_time_list
        self.last_compute_ms = _last_time_ms(times)
        self.session.reset_sumaryinfo()
        if MemorySummary is not None:
            h2d, d2h = MemorySummary.get_H2D_time_list(), MemorySummary.get_D2H_time_list()
            self.last_h2d_ms = float(h2d[-1]) if len(h2d) else None
            self.last_d2h_ms = float(d2h[-1]) if len(d2h) else None
            MemorySummary.reset()
        return np.asarray(outputs[0], dtype=np.float32).reshape(len(batch), NUM_CLASSES)

    def _close(self) -> None:
        session, self.session = getattr(self, "session", None), None
        if session is None:
            return
        for release in ("free_resource", "finalize"):
            if hasattr(session, release):
                getattr(session, release)()
                break


def _summary(session):
    """The session summary: `sumary()` in ais_bench's API (sic), `summary()` in some later versions."""
    return session.sumary() if hasattr(session, "sumary") else session.summary()


def _last_time_ms(times) -> float:
    if not times:
        raise ToolkitError("ais_bench reported no execution time for the last run")
    last = times[-1]
    if isinstance(last, (tuple, list)):  # some versions record (start, end) pairs in ms
        return float(last[1]) - float(last[0])
    return float(last)


def _is_float32(datatype) -> bool:
    """aclruntime's dtype enum prints as 'dtype.float32'; accept that and plain names."""
    return str(datatype).rsplit(".", 1)[-1].lower() in ("float32", "float", "fp32")
