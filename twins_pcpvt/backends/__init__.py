"""Registry of inference backends: their names, model files and devices, and lazy loading of their runtimes.

Each backend lives in its own module, which imports its runtime at the top; this registry imports a module
only when that backend is asked for, so a missing optional runtime costs nothing until then and is reported
in one line that names what to install.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from ..common import ToolkitError, UsageError
from .base import AUTO_PRECISION, GPU_INSTALL, PRECISIONS, Runner, pad_batch

__all__ = [
    "AUTO_PRECISION",
    "BACKENDS",
    "COMPILE_MODES",
    "PRECISIONS",
    "Runner",
    "available_backends",
    "create_runner",
    "default_precision",
    "normalize_device",
    "pad_batch",
    "resolve_backend",
]


@dataclass(frozen=True)
class Backend:
    name: str
    module: str  # module of this package that holds the runner class
    class_name: str
    packages: tuple[str, ...]  # importable names the runtime needs
    install: str  # what to tell a user who lacks them
    suffixes: tuple[str, ...]  # model files it reads
    device_kinds: tuple[str, ...]


BACKENDS: dict[str, Backend] = {
    backend.name: backend
    for backend in (
        Backend(
            "onnxruntime",
            "ort_runner",
            "OnnxRuntimeRunner",
            ("onnxruntime",),
            "pip install -r requirements.txt (for --device cuda/tensorrt: " + GPU_INSTALL + ")",
            (".onnx",),
            ("cpu", "cuda", "tensorrt"),
        ),
        Backend(
            "openvino",
            "openvino_runner",
            "OpenVinoRunner",
            ("openvino",),
            "pip install openvino",
            (".onnx", ".xml"),
            ("cpu",),
        ),
        Backend(
            "torch",
            "torch_runner",
            "TorchRunner",
            ("torch", "timm"),
            "pip install torch timm",
            (".pth", ".pt", ".safetensors"),
            ("cpu", "cuda"),
        ),
        Backend(
            "ais",
            "ais_runner",
            "AisRunner",
            ("ais_bench",),
            "install CANN and ais_bench's aclruntime and ais_bench wheels "
            "(https://gitee.com/ascend/tools/tree/master/ais-bench_workload/tool/ais_infer)",
            (".om",),
            ("npu",),
        ),
    )
}
BACKEND_CHOICES = ("auto", *BACKENDS)
# torch.compile modes the torch backend accepts
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def _is_installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def available_backends() -> list[str]:
    """Names of the backends whose runtimes are installed (not whether a device for them is present)."""
    return [name for name, backend in BACKENDS.items() if all(map(_is_installed, backend.packages))]


def _device_kind(device: str) -> str:
    return device.partition(":")[0]


def normalize_device(backend: str, device: str | int | None) -> str:
    """The device string a backend runs on: `cpu`, `cuda:N`, `tensorrt:N` or `npu:N`; None means its default.

    ais_bench's `--device` is an NPU number, so a bare number means `npu:N` (the ais backend only).
    """
    info = BACKENDS[backend]
    if device is None or device == "":
        return "npu:0" if backend == "ais" else "cpu"
    text = str(device).strip().lower()
    if text.isdigit():
        text = f"npu:{text}"
    kind, _, index = text.partition(":")
    if (
        kind not in ("cpu", "cuda", "tensorrt", "npu")
        or (index and not index.isdigit())
        or (kind == "cpu" and index)
    ):
        raise UsageError(
            f"unknown device {device!r}: use cpu, cuda[:N], tensorrt[:N] (onnxruntime) or an NPU number"
        )
    if kind not in info.device_kinds:
        raise UsageError(
            f"the {backend} backend runs on {', '.join(info.device_kinds)}, not on {device!r}"
            + ("; a bare number is an NPU id for the ais backend" if str(device).strip().isdigit() else "")
        )
    if kind == "cpu":
        return "cpu"
    return f"{kind}:{int(index or 0)}"


def resolve_backend(backend: str, model_path: str | Path, device: str | int | None = None) -> str:
    """The backend that runs `model_path` on `device`: `backend` itself after checks, or auto's choice.

    auto: `.om` -> ais; `.pth`/`.pt`/`.safetensors` -> torch; `.onnx` on CPU -> OpenVINO when installed (the
    fastest CPU runtime measured for this model), else ONNX Runtime; `.onnx` on a GPU -> ONNX Runtime with
    onnxruntime-gpu.
    """
    if backend not in BACKEND_CHOICES:
        raise UsageError(f"unknown backend {backend!r}: choose one of {', '.join(BACKEND_CHOICES)}")
    suffix = Path(model_path).suffix.lower()
    if backend != "auto":
        if suffix not in BACKENDS[backend].suffixes:
            raise UsageError(
                f"{model_path}: the {backend} backend reads {'/'.join(BACKENDS[backend].suffixes)} files, "
                f"not {suffix or 'files without a suffix'}"
            )
        return backend
    kind = _device_kind(str(device).lower()) if device not in (None, "") else None
    if suffix == ".om":
        return "ais"
    if suffix in BACKENDS["torch"].suffixes:
        return "torch"
    if suffix == ".xml":
        return "openvino"
    if suffix == ".onnx":
        if kind in (None, "cpu"):
            return "openvino" if "openvino" in available_backends() else "onnxruntime"
        if kind in ("cuda", "tensorrt"):
            if not _is_installed("onnxruntime"):
                raise ToolkitError(
                    f"{model_path}: running .onnx on {device} needs onnxruntime-gpu: {GPU_INSTALL}; or run "
                    "the .pth checkpoint with --backend torch"
                )
            # whether its GPU providers are present is checked when the runner is created
            return "onnxruntime"
        hint = " (a bare number is an NPU id, for .om models)" if str(device).strip().isdigit() else ""
        raise UsageError(
            f"device {device!r} cannot run an .onnx model{hint}: use cpu, cuda[:N] or tensorrt[:N]"
        )
    known = sorted({s for b in BACKENDS.values() for s in b.suffixes})
    raise UsageError(
        f"{model_path}: cannot tell the backend from the suffix {suffix or '(none)'!r}; "
        f"expected one of {', '.join(known)}, or name one with --backend"
    )


def runner_class(backend: str) -> type[Runner]:
    """Import a backend's module (and its runtime); a missing runtime is one line naming what to install."""
    info = BACKENDS[backend]
    for package in info.packages:
        if not _is_installed(package):
            raise ToolkitError(
                f"the {backend} backend needs the Python package '{package}', "
                f"which is not installed: {info.install}"
            )
    try:
        module = importlib.import_module(f"{__name__}.{info.module}")
    except ImportError as exc:
        raise ToolkitError(
            f"the {backend} backend could not import its runtime ({exc}): {info.install}"
        ) from exc
    return getattr(module, info.class_name)


def default_precision(backend: str, model_path: str | Path, device: str | int | None = None) -> str:
    """The precision `--precision auto` runs for this backend choice, model file and device."""
    name = resolve_backend(backend, model_path, device)
    device = normalize_device(name, device)
    cls = runner_class(name)
    cls.check_device(device)
    return cls.default_precision(device)


def create_runner(
    backend: str,
    model_path: str | Path,
    *,
    device: str | int | None = None,
    precision: str = "fp32",
    batch_size: int | None = None,
    **options,
) -> Runner:
    """A runner for `model_path`, checked but not loaded: use it as a context manager.

    `device` None is the backend's default (CPU; NPU 0 for ais). `precision` "auto" is the backend's native
    reduced precision on that device where it has one, else fp32 (`Runner.default_precision`); the runner's
    `precision` names what runs. `batch_size` is the batch the caller will pass, which lets fixed-shape
    runners (static models, CUDA graphs) prepare for it. `options` are
    backend-specific (torch: `compile`, `cuda_graph`). Every check here runs before the model is loaded.
    """
    name = resolve_backend(backend, model_path, device)
    model_path = check_model_file(model_path)
    cls, device, precision = check_runner(
        name, model_path, device=device, precision=precision, batch_size=batch_size
    )
    return cls(model_path, device=device, precision=precision, batch_size=batch_size, **options)


def check_model_file(model_path: str | Path) -> Path:
    model_path = Path(model_path)
    if not model_path.exists():
        raise ToolkitError(f"{model_path}: model file not found")
    if not model_path.is_file():
        raise ToolkitError(f"{model_path}: not a file")
    return model_path


def check_runner(
    backend: str,
    model_path: str | Path,
    *,
    device: str | int | None = None,
    precision: str = "fp32",
    batch_size: int | None = None,
) -> tuple[type[Runner], str, str]:
    """Every check `create_runner` makes that needs no model file (the model may not exist yet): the backend
    for its name, its runtime installed, the device and the precision it can run. Returns (runner class,
    device, precision that will run)."""
    name = resolve_backend(backend, model_path, device)
    device = normalize_device(name, device)
    if precision not in (AUTO_PRECISION, *PRECISIONS):
        raise UsageError(
            f"unknown precision {precision!r}: choose one of {', '.join((AUTO_PRECISION, *PRECISIONS))}"
        )
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise UsageError(f"batch size must be a positive integer, got {batch_size!r}")
    cls = runner_class(name)
    cls.check_device(device)
    if precision == AUTO_PRECISION:
        precision = cls.default_precision(device)
    supported = cls.supported_precisions(device)
    if precision not in supported:
        raise UsageError(
            f"the {name} backend on {device} runs {', '.join(supported) or 'no precision'}, "
            f"not {precision}{cls.precision_note(device, precision)}"
        )
    return cls, device, precision
