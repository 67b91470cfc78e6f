"""The input tensors of a run: the files `--input` names, each checked before the run, and read into batches.

Folders are not searched recursively; their `.bin`/`.npy` files are taken in natural sort order, as ais_bench
takes them. Pure inference (no `--input`) runs on generated data instead (`pure_input`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..common import INPUT_BYTES, INPUT_SHAPE, ToolkitError, UsageError, refuse_unfinished, shorten
from ..data import NPY_HEAD_BYTES, npy_header
from .outputs import output_stem

INPUT_SUFFIXES = (".bin", ".npy")


def input_entries(spec: str | None) -> list[str]:
    """The entries of a comma-separated `--input` (folders and files), blanks dropped."""
    return [part.strip() for part in (spec or "").split(",") if part.strip()]


def pad_batch_names(names: Sequence, size: int) -> list:
    """The names of a batch padded by `pad_batch`: the first one repeated up to `size`."""
    return [*names, *[names[0]] * (size - len(names))]


def _natural_key(path: Path) -> list:
    """ais_bench's natural order: runs of ASCII digits compare as numbers, the text between them lower-cased.
    Only ASCII digits count (ais_bench's `[0-9]+`): `²1.bin` or `١٢.bin` sort as text, never as int()."""
    parts = re.split("([0-9]+)", path.name)
    return [int(part) if index % 2 else part.lower() for index, part in enumerate(parts)]


def collect_input_files(spec: str) -> list[Path]:
    """The files named by `--input`: comma-separated folders (their .bin/.npy files) and files, in order."""
    if "," in spec and os.path.lexists(spec):
        raise UsageError(
            f"--input {spec}: the name holds a comma, but --input is a comma-separated list (as in "
            "ais_bench): rename it, or link it under a name without one"
        )
    files: list[Path] = []
    for item in input_entries(spec):
        path = Path(item)
        if path.is_dir():
            refuse_unfinished(path)  # a preprocess still writing it, or stopped before its manifest
            found = sorted(
                (p for p in path.iterdir() if p.suffix.lower() in INPUT_SUFFIXES and p.is_file()),
                key=_natural_key,
            )
            if not found:
                raise ToolkitError(f"{path}: no .bin or .npy input files in the folder")
            files.extend(found)
        elif path.is_file():
            if path.suffix.lower() not in INPUT_SUFFIXES:
                raise ToolkitError(f"{path}: not an input tensor file (expected .bin or .npy)")
            files.append(path)
        else:
            raise ToolkitError(f"{path}: input folder or file not found")
    if not files:
        raise UsageError(f"--input {spec!r} names no folder or file")
    seen: dict[str, Path] = {}
    for path in files:
        stem = output_stem(path)
        if not stem:
            raise ToolkitError(f"{path}: the name starts with a dot, so its output would have no name")
        if stem in seen:
            raise ToolkitError(
                f"{path}: its outputs would be named {stem}_0 like those of {seen[stem]} "
                "(ais_bench names outputs after the file name up to its first dot)"
            )
        seen[stem] = path
    return files


def check_input_file(path: Path) -> None:
    """Fail, naming the file, unless it holds one whole float32 [3, 224, 224] tensor (raw .bin, or .npy)."""
    try:
        size = path.stat().st_size
        if path.suffix.lower() == ".bin":
            if size != INPUT_BYTES:
                raise ToolkitError(
                    f"{path}: {size} bytes, expected {INPUT_BYTES} "
                    "(one float32 3x224x224 tensor, as the preprocess writes)"
                )
            return
        with open(path, "rb") as handle:
            head = handle.read(NPY_HEAD_BYTES)
        dtype, shape, data_offset = npy_header(path, head)
    except OSError as exc:
        raise ToolkitError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if dtype.kind != "f" or dtype.itemsize != 4 or dtype.shape:
        raise ToolkitError(f"{path}: dtype {shorten(str(dtype), 100)}, expected float32")
    if tuple(shape) not in (INPUT_SHAPE, (1, *INPUT_SHAPE)):
        raise ToolkitError(f"{path}: shape {tuple(shape)}, expected {INPUT_SHAPE} or {(1, *INPUT_SHAPE)}")
    if size - data_offset != INPUT_BYTES:
        raise ToolkitError(
            f"{path}: truncated or padded .npy file ({size - data_offset} data bytes after the header, "
            f"{INPUT_BYTES} expected for its shape)"
        )


def read_input(path: Path, out: np.ndarray) -> None:
    """Read one input tensor into `out` (a float32 [3, 224, 224] view)."""
    if path.suffix.lower() == ".bin":
        try:
            with open(path, "rb") as handle:
                complete = handle.readinto(memoryview(out).cast("B")) == INPUT_BYTES
        except OSError as exc:
            raise ToolkitError(
                f"{path}: cannot read the tensor ({exc.strerror or exc}; did it change during the run?)"
            ) from None
        if not complete:
            raise ToolkitError(f"{path}: shorter than {INPUT_BYTES} bytes (did it change during the run?)")
        return
    try:
        out[...] = np.load(path, allow_pickle=False).reshape(INPUT_SHAPE)
    except (ValueError, OSError, EOFError) as exc:
        raise ToolkitError(f"{path}: cannot read the tensor ({exc}; did it change during the run?)") from None


def pure_input(batch_size: int, data_type: str) -> np.ndarray:
    """ais_bench's generated input: the input's bytes all zero, or each a random value 0..255 (`random`)."""
    if data_type == "random":
        raw = np.random.default_rng().integers(0, 256, batch_size * INPUT_BYTES, dtype=np.uint8)
    else:
        raw = np.zeros(batch_size * INPUT_BYTES, np.uint8)
    return raw.view("<f4").reshape(batch_size, *INPUT_SHAPE)
