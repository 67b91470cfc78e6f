"""Stand-in for `ais_bench.infer.interface`: the documented InferSession API, backed by ONNX Runtime.

Behaviour mirrored from the real tool: shapes are static (an OM model is compiled per batch size); inputs are
fed as a list of arrays whose byte size must equal the input's `realsize`; `infer` returns a list of numpy
arrays; each run appends its execution time in ms to the summary's `exec_time_list`; a freed session cannot
run again.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort


class dtype(enum.Enum):  # noqa: N801 - named as aclruntime names it; prints as 'dtype.float32'
    float32 = 0
    float16 = 1
    int8 = 2
    int32 = 3
    uint8 = 4
    int64 = 9


_ONNX_TYPES = {
    "tensor(float)": dtype.float32,
    "tensor(float16)": dtype.float16,
    "tensor(int64)": dtype.int64,
    "tensor(int32)": dtype.int32,
}
_NUMPY_TYPES = {
    dtype.float32: np.float32,
    dtype.float16: np.float16,
    dtype.int64: np.int64,
    dtype.int32: np.int32,
}


@dataclass
class TensorDesc:
    name: str
    datatype: dtype
    format: int
    shape: list
    size: int
    realsize: int


@dataclass
class _Summary:
    exec_time_list: list


class InferSession:
    def __init__(
        self,
        device_id: int,
        model_path: str,
        acl_json_path: str | None = None,
        debug: bool = False,
        loop: int = 1,
    ):
        if not isinstance(device_id, int) or device_id < 0:
            raise RuntimeError(f"[ERROR] invalid device id {device_id!r}")
        self.device_id = device_id
        self.model_path = model_path
        self.loop = loop
        try:
            self._session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise RuntimeError(f"[ERROR] load model {model_path} failed: {exc}") from exc
        self._inputs = [self._describe(value) for value in self._session.get_inputs()]
        self._outputs = [self._describe(value) for value in self._session.get_outputs()]
        self._times: list[float] = []
        self._freed = False

    def _describe(self, value) -> TensorDesc:
        if not all(isinstance(dim, int) and dim > 0 for dim in value.shape):
            raise RuntimeError(
                f"[ERROR] {self.model_path}: {value.name} has a dynamic shape {value.shape}; "
                "OM models are static"
            )
        kind = _ONNX_TYPES[value.type]
        size = int(np.prod(value.shape)) * np.dtype(_NUMPY_TYPES[kind]).itemsize
        return TensorDesc(value.name, kind, 0, list(value.shape), size, size)

    def get_inputs(self):
        return list(self._inputs)

    def get_outputs(self):
        return list(self._outputs)

    def infer(self, feeds, mode: str = "static", custom_sizes: int = 100000):
        if self._freed:
            raise RuntimeError("[ERROR] session resources were freed")
        if mode != "static":
            raise RuntimeError(f"[ERROR] the stand-in runs static models only, not mode {mode!r}")
        if len(feeds) != len(self._inputs):
            raise RuntimeError(f"[ERROR] {len(feeds)} feeds for {len(self._inputs)} inputs")
        arrays = {}
        for feed, desc in zip(feeds, self._inputs, strict=True):
            feed = np.asarray(feed)
            if feed.nbytes != desc.realsize:
                raise RuntimeError(
                    f"[ERROR] input {desc.name}: {feed.nbytes} bytes, model needs {desc.realsize}"
                )
            # the device sees raw bytes, as aclruntime copies them
            raw = np.ascontiguousarray(feed).view(np.uint8).reshape(-1)
            arrays[desc.name] = raw.view(_NUMPY_TYPES[desc.datatype]).reshape(desc.shape)
        for _ in range(self.loop):
            start = time.perf_counter()
            outputs = self._session.run(None, arrays)
            self._times.append((time.perf_counter() - start) * 1e3)
        return list(outputs)

    def sumary(self):  # sic: the real API's spelling
        return _Summary(list(self._times))

    def reset_sumaryinfo(self):
        self._times.clear()

    def free_resource(self):
        self._freed = True
        self._session = None

    def finalize(self):
        self.free_resource()
