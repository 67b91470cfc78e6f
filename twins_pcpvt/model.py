"""Build Twins-PCPVT-Small as its weights were trained; load checkpoints without running pickled code."""

from __future__ import annotations

import argparse
import io
import pickletools
import re
import sys
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from twins_pcpvt.common import ToolkitError, UsageError, one_line
from twins_pcpvt.hub import TIMM_ARCH, TIMM_TAG, timm_weights

ARCH = TIMM_ARCH
DEFAULT_TIMM_TAG = TIMM_TAG

# Types real training checkpoints hold besides tensors: the weights-only unpickler may rebuild these and
# nothing else. argparse.Namespace is the original repository's `args`; numpy entries rebuild numpy scalars.
try:
    from numpy._core.multiarray import scalar as _numpy_scalar  # numpy >= 2
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import scalar as _numpy_scalar
_SAFE_CHECKPOINT_GLOBALS: list = [
    argparse.Namespace,
    _numpy_scalar,
    np.dtype,
    *{type(np.dtype(name)) for name in ("float16", "float32", "float64", "int32", "int64", "bool")},
]

# Where training scripts put the weights inside a checkpoint dict, in the order they are looked up.
_STATE_DICT_KEYS = ("model", "state_dict", "model_state_dict", "module", "net")
# Prefixes added by DistributedDataParallel/DataParallel and by torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_SHOW_KEYS = 5


def build_model() -> nn.Module:
    """timm's Twins-PCPVT-Small in eval mode, fused attention off (plain MatMul/Softmax)."""
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
    """Read the model weights from a PyTorch pickle (zip or legacy format) or a safetensors file, in usual
    wrappings. The file's content decides which it is, not its suffix.

    Pickles are read with torch's weights-only unpickler, which rebuilds tensors, containers, plain values and
    the allow-listed types above but calls nothing else; a checkpoint that needs more is refused with the
    type named, unless `allow_unsafe_pickle` says the file is trusted. The sizes inside a zip checkpoint are
    checked before anything is decompressed.
    """
    path = Path(path)
    if not path.exists():
        raise ToolkitError(f"{path}: checkpoint not found")
    if not path.is_file():
        raise ToolkitError(f"{path}: not a file")
    if _looks_like_safetensors(path):
        content = _read_safetensors(path)
    else:
        if zipfile.is_zipfile(path):
            check_zip_sizes(path)
        content = _read_pickle(path, allow_unsafe_pickle)
    return _unwrap_state_dict(content, path)


def _looks_like_safetensors(path: Path) -> bool:
    # A safetensors file starts with the length of its JSON header (little-endian u64) followed by '{'.
    with open(path, "rb") as handle:
        head = handle.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < 100_000_000


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types for every kind of damage
        raise ToolkitError(f"{path}: not a readable safetensors file ({one_line(exc, limit=300)})") from exc


# Bounds on what a zip checkpoint may expand to. PyTorch stores its members uncompressed; weights compress
# poorly, so a member that expands more than MAX_ZIP_RATIO times is a zip bomb, not a checkpoint.
MAX_ZIP_RATIO = 100
MAX_CHECKPOINT_BYTES = 4 * 2**30


def check_zip_sizes(path: str | Path) -> None:
    """Refuse, from the zip directory alone, a checkpoint whose members would expand beyond the bounds or
    whose directory claims more data than the file holds (overlapping members)."""
    path = Path(path)
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ToolkitError(f"{path}: damaged PyTorch zip archive ({one_line(exc, limit=300)})") from None
    for member in members:
        if member.header_offset + member.compress_size > size:
            raise ToolkitError(
                f"{path}: the zip member {member.filename} claims {member.compress_size} bytes beyond the "
                "end of the file: damaged or crafted archive, refused before loading"
            )
        if member.file_size > MAX_ZIP_RATIO * max(member.compress_size, 1):
            raise ToolkitError(
                f"{path}: the zip member {member.filename} would expand from {member.compress_size} to "
                f"{member.file_size} bytes (more than {MAX_ZIP_RATIO}:1): refused as a possible zip bomb "
                "before loading"
            )
    stored = sum(member.compress_size for member in members)
    expanded = sum(member.file_size for member in members)
    if stored > size:
        raise ToolkitError(
            f"{path}: the zip directory claims {stored} bytes of members in a {size}-byte file (overlapping "
            "members): refused as a possible zip bomb before loading"
        )
    if expanded > MAX_CHECKPOINT_BYTES:
        raise ToolkitError(
            f"{path}: the checkpoint would expand to {expanded / 2**30:.1f} GiB, more than the "
            f"{MAX_CHECKPOINT_BYTES / 2**30:.0f} GiB a Twins-PCPVT-S checkpoint can need: refused before "
            "loading"
        )


def _read_pickle(path: Path, allow_unsafe_pickle: bool):
    if allow_unsafe_pickle:
        print(
            f"warning: {path}: loading with full pickle (--allow-unsafe-pickle): "
            "any code inside this file runs now; use this only for files you trust",
            file=sys.stderr,
        )
        try:
            with open(path, "rb") as handle:
                return torch.load(handle, map_location="cpu", weights_only=False)
        except Exception as exc:
            reason = one_line(exc, limit=300)
            raise ToolkitError(f"{path}: not a readable PyTorch checkpoint ({reason})") from exc
    try:
        with torch.serialization.safe_globals(_SAFE_CHECKPOINT_GLOBALS), warnings.catch_warnings():
            # torch warns about pickle protocols here; real failures raise and are reported below
            warnings.simplefilter("ignore")
            # a file object, not a path: torch.load picks a reader by the suffix, the content decides here
            with open(path, "rb") as handle:
                return torch.load(handle, map_location="cpu", weights_only=True)
    except Exception as exc:
        refused = _refused_global(exc, path)
        if refused:
            raise ToolkitError(
                f"{path}: refused to load: the checkpoint contains `{refused}`, which is neither a tensor "
                "nor one of the plain types a checkpoint needs, and unpickling it could run code. "
                "If you trust this file, pass --allow-unsafe-pickle"
            ) from exc
        raise ToolkitError(f"{path}: {_why_unreadable(path, exc)}") from exc


def _why_unreadable(path: Path, exc: Exception) -> str:
    with open(path, "rb") as handle:
        head = handle.read(2)
    detail = _first_sentence(exc)
    if zipfile.is_zipfile(path):
        return f"damaged PyTorch zip archive ({detail})"
    if head.startswith(b"PK"):
        return "damaged or truncated PyTorch zip archive (its table of contents is missing)"
    if head[:1] == b"\x80":  # pickle protocol 2+ marker, which torch's legacy format starts with
        return f"damaged, truncated or unsupported pickle ({detail})"
    return "not a PyTorch checkpoint (neither a zip archive, a pickle nor a safetensors file)"


def _first_sentence(exc: Exception) -> str:
    """The useful part of a torch.load error, without its advice about weights_only, which does not apply."""
    text = " ".join(str(exc).split())
    match = re.search(r"WeightsUnpickler error: (.*?)(?: Check the documentation|$)", text)
    if match:
        text = match.group(1)
    text = re.split(r"(?<=[a-z])\. ", text, maxsplit=1)[0].rstrip(".")
    return text if len(text) <= 200 else text[:197] + "..."


def _refused_global(exc: Exception, path: Path) -> str | None:
    """Name what the weights-only unpickler refused: from its message, else from a scan of the pickle."""
    text = str(exc)
    if "Weights only load failed" not in text:
        return None
    match = re.search(r"GLOBAL ([\w.]+)", text)
    if match:
        return match.group(1)
    suspicious = [name for name in _pickle_globals(path) if not name.startswith(_PICKLE_GLOBALS_OF_TORCH)]
    return ", ".join(dict.fromkeys(suspicious)) or None


# Globals every torch-saved checkpoint references; anything else in a refused file is what made it unsafe.
_PICKLE_GLOBALS_OF_TORCH = (
    "torch.",
    "collections.OrderedDict",
    "argparse.Namespace",
    "numpy.dtype",
    "numpy._core.multiarray.scalar",
    "numpy.core.multiarray.scalar",
    "_codecs.encode",
)


def _pickle_globals(path: Path) -> list[str]:
    """The `module.name` globals a pickle (or a torch zip's data.pkl) refers to, read without unpickling."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            members = [name for name in archive.namelist() if name.endswith("data.pkl")]
            data = archive.read(members[0]) if members else b""
    else:
        data = path.read_bytes()
    names: list[str] = []
    strings: list[str] = []  # string constants in the order they were pushed; STACK_GLOBAL takes the last two
    memo: dict[int, str | None] = {}
    stream = io.BytesIO(data)
    while stream.tell() < len(data):  # legacy torch files hold several pickles in a row
        top: str | None = None  # the string the previous opcode left on top of the stack, if any
        try:
            for opcode, argument, _ in pickletools.genops(stream):
                pushed = None
                if opcode.name == "GLOBAL":
                    names.append(str(argument).replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(f"{strings[-2]}.{strings[-1]}")
                elif "UNICODE" in opcode.name or opcode.name.endswith("STRING"):
                    pushed = str(argument)
                    strings.append(pushed)
                elif opcode.name == "MEMOIZE":
                    memo[len(memo)] = top
                    pushed = top
                elif opcode.name in ("BINPUT", "LONG_BINPUT", "PUT"):
                    memo[int(argument)] = top
                    pushed = top
                elif opcode.name in ("BINGET", "LONG_BINGET", "GET"):
                    pushed = memo.get(int(argument))
                    if pushed is not None:
                        strings.append(pushed)
                top = pushed
        except Exception:  # damaged or not a pickle: what was found so far is all there is
            break
    return names


def _find_weights(content, depth: int = 0) -> Mapping | None:
    """The first mapping of tensors reachable from `content` through the usual keys, three levels deep."""
    if isinstance(content, nn.Module):
        content = content.state_dict()
    if not isinstance(content, Mapping):
        return None
    if content and all(isinstance(value, torch.Tensor) for value in content.values()):
        return content
    if depth < 3:
        for key in _STATE_DICT_KEYS:
            found = _find_weights(content[key], depth + 1) if key in content else None
            if found is not None:
                return found
    return None


def _unwrap_state_dict(content, path: Path) -> dict[str, torch.Tensor]:
    """Find the weights in a checkpoint (bare, or under 'model'/'state_dict'/...); strip wrapper prefixes."""
    weights = _find_weights(content)
    if weights is None:
        if not isinstance(content, (Mapping, nn.Module)):
            raise ToolkitError(f"{path}: holds a {type(content).__name__}, not a state dict of weights")
        keys = ", ".join(repr(key) for key in list(content)[:8]) if isinstance(content, Mapping) else ""
        raise ToolkitError(
            f"{path}: no model weights found: the checkpoint's entries are {keys or 'none'}; expected "
            f"tensors, or weights under one of {', '.join(repr(key) for key in _STATE_DICT_KEYS)}"
        )
    state = {str(key): value for key, value in weights.items()}
    for prefix in _WRAPPER_PREFIXES:
        if state and all(key.startswith(prefix) for key in state):
            state = {key[len(prefix) :]: value for key, value in state.items()}
    return state


def _tensor_problem(tensor: torch.Tensor) -> str | None:
    """Why `tensor` cannot be a model weight, or None: weights are dense, floating point and hold data."""
    if tensor.layout != torch.strided:
        return f"a sparse tensor ({str(tensor.layout).replace('torch.', '')})"
    if tensor.is_quantized:
        return f"a quantized tensor ({tensor.dtype})"
    if tensor.is_complex():
        return f"a complex tensor ({tensor.dtype})"
    if not tensor.is_floating_point():
        return f"a tensor of dtype {str(tensor.dtype).replace('torch.', '')}, not floating point"
    if tensor.is_meta:
        return "a meta tensor without data"
    return None


def _check_weight_tensors(state: Mapping[str, torch.Tensor], path: str | Path) -> None:
    problems = [(key, _tensor_problem(tensor)) for key, tensor in state.items()]
    problems = [(key, problem) for key, problem in problems if problem]
    if problems:
        key, problem = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ToolkitError(
            f"{path}: weight {key!r} is {problem}{more}: model weights must be dense floating-point tensors"
        )


def check_state_dict_fits(model: nn.Module, state: Mapping[str, torch.Tensor], origin: str | Path) -> None:
    """Fail, naming the first offending keys and their count, unless `state` fits `model` key and shape and
    every weight is a dense floating-point tensor."""
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
        for what, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("wrong shapes", wrong_shapes),
        )
        if items
    ]
    if problems:
        raise ToolkitError(
            f"{origin}: weights do not fit {ARCH} ({len(expected)} tensors): " + "; ".join(problems)
        )
    _check_weight_tensors(state, origin)


def load_model(
    source: str | Path | None,
    *,
    random_init: bool = False,
    seed: int = 0,
    allow_unsafe_pickle: bool = False,
) -> nn.Module:
    """Twins-PCPVT-Small in eval mode; weights from a checkpoint, 'timm' / 'timm:<tag>', or random init."""
    if random_init:
        print(
            f"notice: random weights (seed {seed}) instead of a checkpoint: "
            "outputs are meaningless as predictions",
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
    """timm's pretrained weights: from the local Hugging Face cache when there (read as a checkpoint file is,
    no network), else downloaded by timm once the hub is known to answer; offline (`hub.timm_weights`) it is
    one line saying how to pass a local checkpoint."""
    import timm
    from timm.layers import set_layer_config

    name = f"{ARCH}.{tag}"
    known = timm.list_pretrained(f"{ARCH}.*")
    if name not in known:
        raise UsageError(f"timm has no pretrained weights '{name}'; known: {', '.join(known) or 'none'}")
    cached = timm_weights(tag, timm.models.get_pretrained_cfg(name).hf_hub_id)
    if cached is not None:
        print(f"timm's weights '{name}' from the local cache: {cached}", flush=True)
        state = load_state_dict(cached)
        model = build_model()
        check_state_dict_fits(model, state, cached)
        model.load_state_dict(state, strict=True)
        return model.eval()
    try:
        with set_layer_config(exportable=True):
            model = timm.create_model(name, pretrained=True)
    except Exception as exc:  # network, hub and cache failures all surface here with their own types
        raise ToolkitError(
            f"timm:{tag}: could not fetch timm's pretrained weights '{name}' ({one_line(exc, limit=300)}); "
            "without network access, copy the checkpoint here from elsewhere and pass its path with --source"
        ) from exc
    disable_fused_attention(model)
    return model.eval()
