"""A test double of `aclruntime`, the C++ (pybind11) module under ais_bench, computing with ONNX Runtime.

Written from the module's pybind11 bindings (`backend/python/` of ais_bench): the same classes, methods,
attributes and argument types, the same errors where the bindings raise them (RuntimeError from a failing
ACL call, TypeError for arguments the bindings cannot convert). The "OM model" it loads is an ONNX file with
static shapes, as ATC compiles one OM per batch size. "Device" memory is host memory; a tensor still has to be
moved back with `to_host()` before numpy can read it, as on an NPU.

Two generations of the bindings are in use; the environment variable ACLRUNTIME_DOUBLE_GENERATION picks one:
- 2023 (ais_bench 0.0.2): `sumary.exec_time_list` holds one duration in ms per run;
`InferenceSession.finalize()`
  is a method of the session; there is no `free_resource()`.
- 2024 (ait benchmark 7.0.0c2, the default): `exec_time_list` holds (start, end) pairs in ms;
`free_resource()`
  frees a session; `InferenceSession.finalize()` is static; the AIPP and maximum-batch queries exist.
Pipelined and iterative inference (`run_pipeline`, `first_inner_run`, `inner_run`) and dynamic shapes are not
part of this double: they raise RuntimeError saying so.

ACLRUNTIME_DOUBLE_LOAD_SECONDS=`<device>:<seconds>[,...]` makes loading a model on those devices take that
much longer, as a large OM model's load on a busy NPU does (ais_bench 2024 stamps each device's output folder
after the load, so a slow device lands in a later time-stamp folder).
"""

from __future__ import annotations

import builtins
import ctypes
import enum
import os
import time

import numpy as np
import onnxruntime as _ort

GENERATION = int(os.environ.get("ACLRUNTIME_DOUBLE_GENERATION", "2024"))
if GENERATION not in (2023, 2024):
    raise ImportError(f"ACLRUNTIME_DOUBLE_GENERATION must be 2023 or 2024, not {GENERATION}")
DEVICE_COUNT = 8  # NPU ids 0..7 exist; others fail as aclrtSetDevice fails
_LOAD_SECONDS = {
    int(device): float(seconds)
    for device, _, seconds in (
        item.partition(":")
        for item in os.environ.get("ACLRUNTIME_DOUBLE_LOAD_SECONDS", "").split(",")
        if item
    )
}
_CLOCK_ZERO = time.perf_counter()


class dtype(enum.Enum):  # noqa: N801 - the bindings' names; members print as 'dtype.float32'
    float32 = 0
    float16 = 1
    int8 = 2
    int32 = 3
    uint8 = 4
    int16 = 6
    uint16 = 7
    uint32 = 8
    int64 = 9
    uint64 = 10
    double = 11
    bool = 12

    def __int__(self) -> int:
        return self.value


class type(enum.Enum):  # noqa: N801, A001 - the bindings name the memory-type enum `type`
    memory_host = 0
    memory_device = 1
    memory_dvpp = 2

    def __int__(self) -> int:
        return self.value


for _member in (*dtype, *type):  # the bindings also export each enum value at module level
    globals()[_member.name] = _member

_NUMPY_OF = {
    dtype.float32: np.float32,
    dtype.float16: np.float16,
    dtype.int8: np.int8,
    dtype.int32: np.int32,
    dtype.uint8: np.uint8,
    dtype.int16: np.int16,
    dtype.uint16: np.uint16,
    dtype.uint32: np.uint32,
    dtype.int64: np.int64,
    dtype.uint64: np.uint64,
    dtype.double: np.float64,
    dtype.bool: np.bool_,
}
_DTYPE_OF = {np.dtype(value): key for key, value in _NUMPY_OF.items()}
_ONNX_TYPES = {
    "tensor(float)": dtype.float32,
    "tensor(float16)": dtype.float16,
    "tensor(double)": dtype.double,
    "tensor(int8)": dtype.int8,
    "tensor(int16)": dtype.int16,
    "tensor(int32)": dtype.int32,
    "tensor(int64)": dtype.int64,
    "tensor(uint8)": dtype.uint8,
    "tensor(bool)": dtype.bool,
}


def _acl_error(code: int, what: str) -> RuntimeError:
    return RuntimeError(f"[{code}] {what}")


def _incompatible(function: str, *args) -> TypeError:
    """pybind11's error when no overload accepts the arguments."""
    shown = ", ".join(builtins.type(arg).__name__ for arg in args)
    return TypeError(f"{function}(): incompatible function arguments. Invoked with types: {shown}")


def _require_int(function: str, *values) -> None:
    if not all(isinstance(value, int) and not isinstance(value, builtins.bool) for value in values):
        raise _incompatible(function, *values)


def _now_ms() -> float:
    return (time.perf_counter() - _CLOCK_ZERO) * 1e3


class MemorySummary:
    """The process-wide record of host-to-device and device-to-host copy times (ms); every instance is it."""

    _lists: dict[str, list[float]] = {"H2D": [], "D2H": []}

    @property
    def H2D_time_list(self) -> list[float]:  # noqa: N802 - the bindings' name
        return list(self._lists["H2D"])

    @H2D_time_list.setter
    def H2D_time_list(self, values) -> None:  # noqa: N802
        self._lists["H2D"] = [float(value) for value in values]

    @property
    def D2H_time_list(self) -> list[float]:  # noqa: N802
        return list(self._lists["D2H"])

    @D2H_time_list.setter
    def D2H_time_list(self, values) -> None:  # noqa: N802
        self._lists["D2H"] = [float(value) for value in values]

    def reset(self) -> None:
        self._lists["H2D"] = []
        self._lists["D2H"] = []


def _copy(direction: str, data: np.ndarray) -> np.ndarray:
    start = time.perf_counter()
    copied = np.array(data, copy=True)
    MemorySummary._lists[direction].append((time.perf_counter() - start) * 1e3)
    return copied


class Tensor:
    """A tensor in host or "device" memory; numpy reads it (buffer protocol) only once it is on the host."""

    def __init__(self, array) -> None:
        try:
            source = np.ascontiguousarray(memoryview(array))
        except TypeError:
            raise _incompatible("__init__", array) from None
        kind = _DTYPE_OF.get(source.dtype, dtype.uint8)
        self._data = source.copy() if kind is not dtype.uint8 else source.view(np.uint8).copy()
        self._dtype = kind
        self._memory = type.memory_host
        self._device = -1

    @classmethod
    def _on_device(cls, data: np.ndarray, device: int) -> Tensor:
        tensor = cls.__new__(cls)
        tensor._data, tensor._dtype = data, _DTYPE_OF[data.dtype]
        tensor._memory, tensor._device = type.memory_device, device
        return tensor

    def to_device(self, device_id: int) -> None:
        _require_int("to_device", device_id)
        if not 0 <= device_id < DEVICE_COUNT:
            raise _acl_error(107001, f"aclrtSetDevice failed: invalid device id {device_id}")
        if self._memory is type.memory_host:
            self._data = _copy("H2D", self._data)
        self._memory, self._device = type.memory_device, device_id

    def to_dvpp(self, device_id: int) -> None:
        self.to_device(device_id)
        self._memory = type.memory_dvpp

    def to_host(self) -> None:
        if self._memory is not type.memory_host:
            self._data = _copy("D2H", self._data)
        self._memory, self._device = type.memory_host, -1

    def __array__(self, dtype=None, copy=None):  # noqa: A002 - numpy's protocol
        if self._memory is not type.memory_host:
            raise RuntimeError("tensor is in npu. can't convert to numpy array")
        return self._data if dtype is None else self._data.astype(dtype)

    @property
    def type(self):
        return self._memory

    @property
    def device(self) -> int:
        return self._device

    @property
    def dtype(self):
        return self._dtype

    @property
    def shape(self) -> list[int]:
        return [int(dim) for dim in self._data.shape]

    def __str__(self) -> str:
        return f"<Tensor>\nshape:\t{tuple(self.shape)}\ndtype:\t{self._dtype}\ntype:\t{self._memory}"

    __repr__ = __str__


def batch(inputs, keep_dims: bool = False) -> Tensor:
    arrays = [np.asarray(tensor) for tensor in inputs]
    joined = np.stack(arrays) if keep_dims else np.concatenate(arrays)
    return Tensor(joined)


class BaseTensor:
    """A raw (address, byte size) pair: what InferSession.run passes for a numpy array."""

    def __init__(self, buf: int, size: int) -> None:
        _require_int("__init__", buf, size)
        self.buf = buf
        self.size = size


class session_options:  # noqa: N801
    def __init__(self) -> None:
        self.loop = 1
        self.log_level = 2
        self.acl_json_path = ""


class infer_options:  # noqa: N801 - 2024's options of run_pipeline
    def __init__(self) -> None:
        self.output_dir = ""
        self.auto_dym_shape = False
        self.auto_dym_dims = False
        self.out_format = "BIN"
        self.pure_infer_mode = False
        self.output_names = []
        self.shapes_list = []


class tensor_desc:  # noqa: N801
    def __init__(self) -> None:
        self.name = ""
        self.datatype = dtype.float32
        self.format = 0
        self.shape = []
        self.realsize = 0
        self.size = 0


class sumary:  # noqa: N801 - sic, the bindings' spelling
    def __init__(self) -> None:
        self.exec_time_list = []


def _describe(value, model_path: str) -> tensor_desc:
    if not all(isinstance(dim, int) and dim > 0 for dim in value.shape):
        raise _acl_error(
            145000,
            f"{model_path}: input {value.name} has the dynamic shape {value.shape}; this double loads "
            "static models only (ATC compiles one OM per batch size)",
        )
    desc = tensor_desc()
    desc.name, desc.shape = value.name, [int(dim) for dim in value.shape]
    desc.datatype = _ONNX_TYPES[value.type]
    desc.size = desc.realsize = int(np.prod(desc.shape)) * np.dtype(_NUMPY_OF[desc.datatype]).itemsize
    return desc


class InferenceSession:
    def __init__(self, model_path: str, device_id: int, options: session_options) -> None:
        if not isinstance(model_path, str) or not isinstance(options, session_options):
            raise _incompatible("__init__", model_path, device_id, options)
        _require_int("__init__", device_id)
        if not 0 <= device_id < DEVICE_COUNT:
            raise _acl_error(107001, f"aclrtSetDevice failed: invalid device id {device_id}")
        if not os.path.isfile(model_path):
            raise _acl_error(145000, f"aclmdlLoadFromFile failed: model file {model_path} not found")
        try:
            self._session = _ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ONNX Runtime's own error types
            raise _acl_error(145000, f"aclmdlLoadFromFile failed: {model_path}: {exc}") from None
        time.sleep(_LOAD_SECONDS.get(device_id, 0.0))
        self._model_path = model_path
        self._device = device_id
        self._options = options
        self._inputs = [_describe(value, model_path) for value in self._session.get_inputs()]
        self._outputs = [_describe(value, model_path) for value in self._session.get_outputs()]
        self._summary = sumary()
        self._loaded = True

    # ---- model description ---------------------------------------------------------------------------------
    def get_inputs(self) -> list[tensor_desc]:
        return self._inputs

    def get_outputs(self) -> list[tensor_desc]:
        return self._outputs

    def options(self) -> session_options:
        return self._options

    def sumary(self) -> sumary:
        return self._summary

    def reset_sumaryinfo(self) -> int:
        self._summary.exec_time_list = []
        return 0

    def __str__(self) -> str:
        def lines(descs) -> str:
            return "".join(
                f"  #{index}    {desc.name}  {tuple(desc.shape)}  {desc.datatype}  "
                f"{desc.size}  {desc.realsize}\n"
                for index, desc in enumerate(descs)
            )

        return (
            f"<Model>\ndevice:\t{self._device}\ninput:\n{lines(self._inputs)}output:\n{lines(self._outputs)}"
        )

    __repr__ = __str__

    # ---- shapes: a static model only has its static batch -------------------------------------------------
    def set_staticbatch(self) -> int:
        self._check_loaded()
        return 0

    def _not_dynamic(self, what: str):
        return _acl_error(145000, f"{self._model_path}: {what} failed: the model has static shapes")

    def set_dynamic_batchsize(self, batchsize: int) -> int:
        _require_int("set_dynamic_batchsize", batchsize)
        raise self._not_dynamic("aclmdlSetDynamicBatchSize")

    def set_dynamic_hw(self, width: int, height: int) -> int:
        _require_int("set_dynamic_hw", width, height)
        raise self._not_dynamic("aclmdlSetDynamicHWSize")

    def set_dynamic_dims(self, dims: str) -> int:
        raise self._not_dynamic("aclmdlSetInputDynamicDims")

    def set_dynamic_shape(self, shape: str) -> int:
        raise self._not_dynamic("aclmdlSetDatasetTensorDesc")

    def set_custom_outsize(self, sizes) -> int:
        if not isinstance(sizes, list) or not all(isinstance(size, int) and size >= 0 for size in sizes):
            raise _incompatible("set_custom_outsize", sizes)
        return 0

    # ---- inference -----------------------------------------------------------------------------------------
    def _check_loaded(self) -> None:
        if not self._loaded:
            raise _acl_error(107002, f"{self._model_path}: the session's resources were freed")

    def _feed_arrays(self, feeds) -> dict[str, np.ndarray]:
        """The input arrays "on the device": raw bytes of the model's size each, as the device sees them."""
        if isinstance(feeds, dict):
            if not all(isinstance(key, str) and isinstance(value, Tensor) for key, value in feeds.items()):
                raise _incompatible("run", feeds)
            names = [desc.name for desc in self._inputs]
            if sorted(feeds) != sorted(names):
                raise _acl_error(145000, f"feeds {sorted(feeds)} do not name the model inputs {names}")
            feeds = [feeds[name] for name in names]
        if not isinstance(feeds, list) or not (
            all(isinstance(feed, Tensor) for feed in feeds)
            or all(isinstance(feed, BaseTensor) for feed in feeds)
        ):
            raise _incompatible("run", feeds)
        if len(feeds) != len(self._inputs):
            raise _acl_error(
                145000, f"CheckInVector: {len(feeds)} inputs given, the model has {len(self._inputs)}"
            )
        arrays = {}
        for index, (feed, desc) in enumerate(zip(feeds, self._inputs, strict=True)):
            if isinstance(feed, BaseTensor):
                start = time.perf_counter()
                raw = np.frombuffer(ctypes.string_at(feed.buf, feed.size), np.uint8)
                MemorySummary._lists["H2D"].append((time.perf_counter() - start) * 1e3)
            else:
                if feed.type is type.memory_host:
                    raise _acl_error(
                        145000, f"CheckInVector: input {index} is in host memory, not on the device"
                    )
                raw = feed._data.reshape(-1).view(np.uint8)
            if raw.size != desc.realsize:
                raise _acl_error(
                    145000,
                    f"CheckInVector i:{index} name:{desc.name} size:{raw.size} "
                    f"needsize:{desc.realsize} not match",
                )
            arrays[desc.name] = raw.view(_NUMPY_OF[desc.datatype]).reshape(desc.shape)
        return arrays

    def run(self, output_names, feeds) -> list[Tensor]:
        self._check_loaded()
        if not isinstance(output_names, list) or not all(isinstance(name, str) for name in output_names):
            raise _incompatible("run", output_names, feeds)
        known = [desc.name for desc in self._outputs]
        for name in output_names:
            if name not in known:
                raise _acl_error(145000, f"output name {name!r} is not an output of the model ({known})")
        arrays = self._feed_arrays(feeds)
        for _ in range(max(1, int(self._options.loop))):
            start = _now_ms()
            results = self._session.run(output_names, arrays)
            end = _now_ms()
            self._summary.exec_time_list.append((start, end) if GENERATION == 2024 else end - start)
        return [Tensor._on_device(np.ascontiguousarray(result), self._device) for result in results]

    def create_tensor_from_fileslist(self, desc: tensor_desc, files) -> Tensor:
        self._check_loaded()
        if not isinstance(desc, tensor_desc) or not all(isinstance(name, str) for name in files):
            raise _incompatible("create_tensor_from_fileslist", desc, files)
        data = bytearray()
        for name in files:
            try:
                with open(name, "rb") as handle:
                    data += handle.read(desc.realsize - len(data))
            except OSError as exc:
                raise _acl_error(145000, f"FillFileContentToMemory {name} failed: {exc.strerror}") from None
        buffer = np.zeros(desc.realsize, np.uint8)
        buffer[: len(data)] = np.frombuffer(bytes(data), np.uint8)
        tensor = Tensor(buffer.view(_NUMPY_OF[desc.datatype]).reshape(desc.shape))
        tensor.to_device(self._device)
        return tensor

    def _unsupported(self, *args, **kwargs):
        raise RuntimeError("pipelined and iterative inference are not part of the aclruntime test double")

    if GENERATION == 2023:

        def finalize(self) -> int:
            self._loaded = False
            self._session = None
            return 0

    else:

        def free_resource(self) -> int:
            self._loaded = False
            self._session = None
            return 0

        @staticmethod
        def finalize() -> int:
            return 0

        run_pipeline = first_inner_run = inner_run = _unsupported

        def get_max_dym_batchsize(self) -> int:
            self._check_loaded()
            return 0  # no dynamic batch

        def get_dym_aipp_input_exist(self) -> int:
            self._check_loaded()
            return 0  # no input with dynamic AIPP

        def check_dym_aipp_input_exist(self) -> int:
            return 0

        def _no_aipp(self, *args, **kwargs):
            raise _acl_error(145000, f"{self._model_path}: the model has no dynamic AIPP input")

        set_dym_aipp_info_set = aipp_set_max_batch_size = aipp_set_input_format = _no_aipp
        aipp_set_src_image_size = aipp_set_rbuv_swap_switch = aipp_set_ax_swap_switch = _no_aipp
        aipp_set_csc_params = aipp_set_crop_params = aipp_set_padding_params = _no_aipp
        aipp_set_dtc_pixel_mean = aipp_set_dtc_pixel_min = aipp_set_pixel_var_reci = _no_aipp


def model(modelPath: str, deviceId: int = 0, options: session_options | None = None) -> InferenceSession:  # noqa: N803
    return InferenceSession(modelPath, deviceId, options if options is not None else session_options())
