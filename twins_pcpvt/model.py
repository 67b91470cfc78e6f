"""Build Twins-PCPVT-Small as the weights were trained, and load its checkpoints without running pickled code."""

from __future__ import annotations

import argparse
import re
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from twins_pcpvt.common import ToolkitError, UsageError

ARCH = "twins_pcpvt_small"
DEFAULT_TIMM_TAG = "in1k"

# Types a real training checkpoint holds besides tensors; the weights-only unpickler may rebuild these and nothing else.
# argparse.Namespace is the original repository's `args`; the numpy entries cover metrics saved as numpy scalars.
_SAFE_CHECKPOINT_GLOBALS: list = [argparse.Namespace]
try:
    import numpy as _np

    _SAFE_CHECKPOINT_GLOBALS += [
        _np.dtype,
        *{type(_np.dtype(name)) for name in ("float16", "float32", "float64", "int32", "int64", "bool")},
    ]
    try:
        from numpy._core.multiarray import scalar as _numpy_scalar  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import scalar as _numpy_scalar
    _SAFE_CHECKPOINT_GLOBALS.append(_numpy_scalar)
except ImportError:  # pragma: no cover - numpy is a dependency of torch here
    pass

# Where training scripts put the weights inside a checkpoint dict, in the order they are looked up.
_STATE_DICT_KEYS = ("model", "state_dict", "model_state_dict", "module", "net")
# Prefixes added by DistributedDataParallel/DataParallel and by torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_SHOW_KEYS = 5


def build_model() -> nn.Module:
    """Twins-PCPVT-Small from timm with fused attention off (plain MatMul/Softmax, exportable at opset 11), eval mode."""
    import timm
    from timm.layers import set_layer_config

    with set_layer_config(exportable=True):
        model = timm.create_model(ARCH, pretrained=False)
    disable_fused_attention(model)
    return model.eval()


def disable_fused_attention(model: nn.Module) -> list[nn.Module]:
    """Switch every attention module to the plain path; return the modules that had fused attention on."""
    switched = [module for module in model.modules() if getattr(module, "fused_attn", False)]
    for module in switched:
        module.fused_attn = False
    return switched


def load_state_dict(path: str | Path, *, allow_unsafe_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Read the model weights from a `.pth`/`.pt`/`.bin` pickle or a `.safetensors` file, in any usual wrapping.

    Pickles are read with torch's weights-only unpickler, which can rebuild tensors, containers, plain values and
    the allow-listed types above but never calls anything else; a checkpoint that needs more is refused with the
    type named, unless `allow_unsafe_pickle` says the file is trusted.
    """
    path = Path(path)
    if not path.exists():
        raise ToolkitError(f"{path}: checkpoint not found")
    if not path.is_file():
        raise ToolkitError(f"{path}: not a file")
    if _looks_like_safetensors(path):
        content = _read_safetensors(path)
    else:
        content = _read_pickle(path, allow_unsafe_pickle)
    return _unwrap_state_dict(content, path)


def _looks_like_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    # A safetensors file starts with the length of its JSON header (little-endian u64) followed by '{'.
    with open(path, "rb") as handle:
        head = handle.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < 100_000_000


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types for every kind of damage
        raise ToolkitError(f"{path}: not a readable safetensors file ({exc})") from exc


def _read_pickle(path: Path, allow_unsafe_pickle: bool):
    if allow_unsafe_pickle:
        print(
            f"warning: {path}: loading with full pickle (--allow-unsafe-pickle): "
            "any code inside this file runs now; use this only for files you trust",
            file=sys.stderr,
        )
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise ToolkitError(f"{path}: not a readable PyTorch checkpoint ({_one_line(exc)})") from exc
    try:
        with torch.serialization.safe_globals(_SAFE_CHECKPOINT_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        refused = _refused_global(exc)
        if refused:
            raise ToolkitError(
                f"{path}: refused to load: the checkpoint contains `{refused}`, which is not a tensor or one of the "
                "plain types a checkpoint needs, and unpickling it could run code. If you trust this file, "
                "pass --allow-unsafe-pickle"
            ) from exc
        if zipfile.is_zipfile(path) or _is_truncated_zip(path):
            reason = "damaged or truncated PyTorch zip archive"
        else:
            reason = "not a PyTorch checkpoint"
        raise ToolkitError(f"{path}: {reason} ({_one_line(exc)})") from exc


def _refused_global(exc: Exception) -> str | None:
    """The name of the global the weights-only unpickler refused, found in its error message."""
    text = str(exc)
    if "Weights only load failed" not in text:
        return None
    match = re.search(r"(?:Unsupported global: GLOBAL|Unsupported class|Trying to call reduce for callable)\s+"
                      r"([\w.<>]+)", text)
    if match:
        return match.group(1)
    match = re.search(r"GLOBAL ([\w.]+)", text)
    return match.group(1) if match else "an object that is not allow-listed"


def _is_truncated_zip(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(4) == b"PK\x03\x04"


def _one_line(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."


def _unwrap_state_dict(content, path: Path) -> dict[str, torch.Tensor]:
    """Find the weights inside a checkpoint (bare, or under 'model'/'state_dict'/...) and strip wrapper prefixes."""
    for _ in range(3):  # a few levels: {'state_dict': {'model': ...}} has been seen
        if isinstance(content, nn.Module):
            content = content.state_dict()
        if not isinstance(content, Mapping):
            raise ToolkitError(f"{path}: holds a {type(content).__name__}, not a state dict of weights")
        if content and all(isinstance(value, torch.Tensor) for value in content.values()):
            break
        nested = next((key for key in _STATE_DICT_KEYS if key in content), None)
        if nested is None:
            keys = ", ".join(repr(key) for key in list(content)[:8])
            raise ToolkitError(
                f"{path}: no model weights found: the checkpoint's entries are {keys}; expected tensors, or weights "
                f"under one of {', '.join(repr(key) for key in _STATE_DICT_KEYS)}"
            )
        content = content[nested]
    else:
        raise ToolkitError(f"{path}: no model weights found within three levels of nesting")
    state = {str(key): value for key, value in content.items()}
    for prefix in _WRAPPER_PREFIXES:
        if state and all(key.startswith(prefix) for key in state):
            state = {key[len(prefix):]: value for key, value in state.items()}
    return state


def check_state_dict_fits(model: nn.Module, state: Mapping[str, torch.Tensor], origin: str | Path) -> None:
    """Fail, naming the first offending keys and their count, unless `state` fits `model` key for key and shape for shape."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    wrong_shapes = [
        f"{key} {tuple(state[key].shape)} != {tuple(expected[key].shape)}"
        for key in expected
        if key in state and tuple(state[key].shape) != tuple(expected[key].shape)
    ]
    problems = [
        f"{len(items)} {what}: {', '.join(items[:_SHOW_KEYS])}{', ...' if len(items) > _SHOW_KEYS else ''}"
        for what, items in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong_shapes))
        if items
    ]
    if problems:
        raise ToolkitError(f"{origin}: weights do not fit {ARCH} ({len(expected)} tensors): " + "; ".join(problems))


def load_model(
    source: str | Path | None,
    *,
    random_init: bool = False,
    seed: int = 0,
    allow_unsafe_pickle: bool = False,
) -> nn.Module:
    """Twins-PCPVT-Small in eval mode with weights from a checkpoint path, 'timm' / 'timm:<tag>', or seeded random init."""
    if random_init:
        print(
            f"notice: random weights (seed {seed}) instead of a checkpoint: outputs are meaningless as predictions",
            file=sys.stderr,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build_model()
    if source is None:
        raise UsageError("no checkpoint given: pass a checkpoint path, 'timm', or random_init=True")
    source_text = str(source)
    if source_text == "timm" or source_text.startswith("timm:"):
        return _load_timm_pretrained(source_text.partition(":")[2] or DEFAULT_TIMM_TAG)
    state = load_state_dict(source, allow_unsafe_pickle=allow_unsafe_pickle)
    model = build_model()
    check_state_dict_fits(model, state, source)
    model.load_state_dict(state, strict=True)
    return model.eval()


def _load_timm_pretrained(tag: str) -> nn.Module:
    import timm
    from timm.layers import set_layer_config

    name = f"{ARCH}.{tag}"
    known = timm.list_pretrained(f"{ARCH}.*")
    if name not in known:
        raise UsageError(f"timm has no pretrained weights '{name}'; known: {', '.join(known) or 'none'}")
    try:
        with set_layer_config(exportable=True):
            model = timm.create_model(name, pretrained=True)
    except Exception as exc:  # network, hub and cache failures all surface here with their own types
        raise ToolkitError(
            f"timm:{tag}: could not get the pretrained weights '{name}' ({_one_line(exc)}); without network access, "
            "download the checkpoint elsewhere and pass its path with --source"
        ) from exc
    disable_fused_attention(model)
    return model.eval()
