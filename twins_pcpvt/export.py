"""Export Twins-PCPVT-S to ONNX (input `input`, output `output`) and check the file against PyTorch."""

from __future__ import annotations

import io
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from twins_pcpvt.common import (
    INPUT_NAME,
    INPUT_SHAPE,
    NUM_CLASSES,
    OUTPUT_NAME,
    ToolkitError,
    UsageError,
    atomic_write_bytes,
    check_output_file,
    one_line,
    refuse_overwriting_inputs,
)

if TYPE_CHECKING:  # torch loads inside the functions that need it: the export script's --help stays fast
    from torch import nn

DEFAULT_OPSET = 11
MIN_OPSET = 9  # the oldest opset this model's operators (Erf for GELU among them) export to


def max_opset() -> int:
    """The newest opset the TorchScript-based exporter of the installed torch writes."""
    from torch.onnx import _constants

    return getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", _constants.ONNX_MAX_OPSET)


# Memory an export and its check take per image of a fixed batch (measured: ~6 MB; with room to spare).
EXPORT_BYTES_PER_IMAGE = 16 * 2**20


def check_export_memory(batch_size: int | None) -> None:
    """Refuse, before anything is allocated, a fixed batch too large for the memory left."""
    from .system import available_memory_bytes

    needed = (batch_size or 2) * EXPORT_BYTES_PER_IMAGE
    available = available_memory_bytes()
    if available is not None and needed > available:
        raise UsageError(
            f"--batch-size {batch_size} needs about {needed / 2**30:.1f} GiB to export and check, more than "
            f"the {available / 2**30:.1f} GiB of memory available: export a dynamic batch (the default)"
        )


DEFAULT_TOLERANCE = 1e-4
BATCH_AXIS = "batch"


def export_onnx_bytes(
    model: nn.Module, *, batch_size: int | None = None, opset: int = DEFAULT_OPSET, name: str = "ONNX export"
) -> bytes:
    """`model` as a serialized ONNX model that passes onnx.checker; `name` names it in errors.

    The batch axis is dynamic when `batch_size` is None, otherwise fixed to it. Attention is exported as plain
    MatMul/Softmax (fused attention is switched off for the export), which ATC, ONNX Runtime and OpenVINO run.
    """
    import onnx
    import torch

    from twins_pcpvt.model import disable_fused_attention

    if batch_size is not None and batch_size < 1:
        raise ToolkitError(f"{name}: batch size must be a positive integer, got {batch_size}")
    example = torch.zeros((batch_size or 1, *INPUT_SHAPE), dtype=torch.float32)
    dynamic_axes = None if batch_size else {INPUT_NAME: {0: BATCH_AXIS}, OUTPUT_NAME: {0: BATCH_AXIS}}
    buffer = io.BytesIO()
    was_training = model.training
    switched = disable_fused_attention(model)
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer and deprecation chatter about the TorchScript exporter
            torch.onnx.export(
                model,
                (example,),
                buffer,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,  # TorchScript exporter; the dynamo one needs onnxscript, not a dependency here
            )
    except Exception as exc:
        raise ToolkitError(f"{name}: ONNX export at opset {opset} failed: {one_line(exc)}") from exc
    finally:
        for module in switched:
            module.fused_attn = True
        model.train(was_training)
    data = buffer.getvalue()
    try:
        onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
    except Exception as exc:
        raise ToolkitError(f"{name}: the exported graph fails onnx.checker: {one_line(exc)}") from exc
    return data


def export_onnx(
    model: nn.Module, target: str | Path, *, batch_size: int | None = None, opset: int = DEFAULT_OPSET
) -> Path:
    """Write `model` as ONNX to `target` (atomically) and return the path; the file passes onnx.checker."""
    target = Path(target)
    atomic_write_bytes(target, export_onnx_bytes(model, batch_size=batch_size, opset=opset, name=str(target)))
    return target


def rejected_path(target: str | Path) -> Path:
    """Where an export that fails the comparison with PyTorch is kept for inspection."""
    target = Path(target)
    return target.with_name(f"{target.stem}.rejected{target.suffix or '.onnx'}")


def check_target(target: str | Path, source: str | Path | None = None) -> Path:
    """Fail before any slow work unless `target` (and the rejected-export path beside it) can be written as a
    regular file and is not the source checkpoint."""
    target = Path(target)
    if target.is_dir():
        raise ToolkitError(
            f"{target}: is a folder; give the ONNX file's name, e.g. {target / 'twins_dynamic.onnx'}"
        )
    if not target.parent.is_dir():
        raise ToolkitError(f"{target}: the folder {target.parent} does not exist")
    for path in (target, rejected_path(target)):
        if source is not None:
            refuse_overwriting_inputs(path, files=[source])
        check_output_file(path)
    check_output_file(target, probe=True)  # a real probe: permission bits say nothing for root or full disks
    return target


def max_abs_diff_onnx_vs_torch(
    model: nn.Module, onnx_model: str | Path | bytes, batch_size: int = 2, seed: int = 0
) -> float:
    """Run ONNX Runtime (CPU) on a file or serialized model and PyTorch on one seeded random batch;
    return the largest absolute difference."""
    import onnxruntime as ort
    import torch

    name = "the exported model" if isinstance(onnx_model, bytes) else str(onnx_model)
    batch = np.random.default_rng(seed).standard_normal((batch_size, *INPUT_SHAPE), dtype=np.float32)
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(batch)).numpy()
    source = onnx_model if isinstance(onnx_model, bytes) else str(onnx_model)
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    (actual,) = session.run([OUTPUT_NAME], {INPUT_NAME: batch})
    if actual.shape != (batch_size, NUM_CLASSES) or actual.dtype != np.float32:
        raise ToolkitError(
            f"{name}: output is {actual.dtype} {actual.shape}, expected float32 {(batch_size, NUM_CLASSES)}"
        )
    return float(np.max(np.abs(actual.astype(np.float64) - expected.astype(np.float64))))


def export_checked(
    model: nn.Module,
    target: str | Path,
    *,
    batch_size: int | None = None,
    opset: int = DEFAULT_OPSET,
    tolerance: float = DEFAULT_TOLERANCE,
    check_batch_size: int = 2,
    log: Callable[[str], None] = lambda message: None,
) -> tuple[Path, float]:
    """Export in memory, compare ONNX Runtime with PyTorch, write `target` (atomically) only if they match.

    A model that fails the comparison leaves `target` untouched, is kept for inspection beside it as
    `<stem>.rejected.onnx`, and a ToolkitError says so. Returns the path and the largest absolute difference.
    """
    target = Path(target)
    if not tolerance >= 0:  # also refuses NaN
        raise UsageError(f"tolerance must be a non-negative number, got {tolerance}")
    shape = f"batch {batch_size}" if batch_size else "dynamic batch"
    log(f"exporting ONNX (opset {opset}, {shape}) ...")
    started = time.perf_counter()
    data = export_onnx_bytes(model, batch_size=batch_size, opset=opset, name=str(target))
    log(f"exported in {time.perf_counter() - started:.1f} s")
    check_batch = batch_size or check_batch_size
    log(f"checking ONNX Runtime against PyTorch on one random batch of {check_batch} ...")
    started = time.perf_counter()
    diff = max_abs_diff_onnx_vs_torch(model, data, batch_size=check_batch)
    log(
        f"largest absolute difference {diff:.3g} (tolerance {tolerance:g}), checked in "
        f"{time.perf_counter() - started:.1f} s"
    )
    if not diff <= tolerance:  # also catches NaN
        rejected = rejected_path(target)
        atomic_write_bytes(rejected, data)
        raise ToolkitError(
            f"{target}: ONNX Runtime differs from PyTorch by {diff:.3g} (tolerance {tolerance:g}); "
            f"not written; the rejected export is kept as {rejected} for inspection"
        )
    atomic_write_bytes(target, data)
    return target, diff
