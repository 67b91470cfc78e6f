"""Tensor files: the preprocess's raw float32 `.bin` files, and the header of NPY files, read as untrusted."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import numpy as np

from ..common import INPUT_BYTES, INPUT_SHAPE, ToolkitError, atomic_writer, one_line, quoted, shorten

TENSOR_SUFFIX = ".bin"
TENSOR_DTYPE = np.dtype("<f4")


def write_tensor_file(path: str | Path, tensor: np.ndarray) -> None:
    """Write a [3, 224, 224] tensor as raw little-endian float32, atomically."""
    tensor = np.ascontiguousarray(tensor, dtype=TENSOR_DTYPE)
    if tensor.shape != INPUT_SHAPE:
        raise ValueError(f"tensor shape {tensor.shape} is not {INPUT_SHAPE}")
    with atomic_writer(path) as handle:
        handle.write(tensor.data)


def read_tensor_file(path: str | Path) -> np.ndarray:
    """Read a preprocessed `.bin` back as float32 [3, 224, 224]; a wrong size is an error naming the file."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(INPUT_BYTES + 1)  # a larger file is refused without reading it whole
            size = os.fstat(handle.fileno()).st_size
    except OSError as exc:
        raise ToolkitError(f"{path}: cannot read tensor file ({exc.strerror or exc})") from None
    if len(data) != INPUT_BYTES:
        raise ToolkitError(f"{path}: {size:,} bytes, expected {INPUT_BYTES} (float32 {INPUT_SHAPE})")
    return np.frombuffer(data, dtype=TENSOR_DTYPE).reshape(INPUT_SHAPE).astype(np.float32)


# The header numpy writes for an array of a few dimensions takes 128 bytes; a longer one is not read.
NPY_HEADER_LIMIT = 4096
NPY_HEAD_BYTES = 12 + NPY_HEADER_LIMIT  # enough of a file to hold any header read


def npy_header(path: str | Path, head: bytes) -> tuple[np.dtype, tuple[int, ...], int]:
    """(dtype, shape, offset of the data) of an NPY file from its first bytes `head`.

    The header is untrusted: a bad magic or version, a header longer than NPY_HEADER_LIMIT, one that is not a
    dict of `descr`, `fortran_order` and `shape`, a shape that is not a tuple of sizes, a `descr` numpy cannot
    make a dtype of: each is one ToolkitError naming the file, raised before anything is allocated.
    """
    if len(head) < 10 or not head.startswith(b"\x93NUMPY"):
        raise ToolkitError(f"{path}: not an NPY file (bad magic bytes)")
    major = head[6]
    if major not in (1, 2, 3):
        raise ToolkitError(f"{path}: NPY format version {major}.{head[7]}, not one numpy writes (1, 2 or 3)")
    width = 2 if major == 1 else 4
    length = int.from_bytes(head[8 : 8 + width], "little")
    start = 8 + width + length
    if length > NPY_HEADER_LIMIT:
        raise ToolkitError(
            f"{path}: an NPY header of {length:,} bytes, more than {NPY_HEADER_LIMIT:,}: not a tensor file"
        )
    if start > len(head):
        raise ToolkitError(f"{path}: truncated NPY header ({len(head)} bytes in all)")
    try:
        text = head[8 + width : start].decode("utf-8" if major == 3 else "latin1")
        fields = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
        raise ToolkitError(
            f"{path}: unreadable NPY header ({one_line(exc, typed=True, limit=200)})"
        ) from None
    if not isinstance(fields, dict) or set(fields) != {"descr", "fortran_order", "shape"}:
        raise ToolkitError(f"{path}: unreadable NPY header {quoted(text)}")
    shape, fortran_order, descr = fields["shape"], fields["fortran_order"], fields["descr"]
    if not isinstance(shape, tuple) or not all(type(size) is int and size >= 0 for size in shape):
        raise ToolkitError(f"{path}: NPY shape {shorten(repr(shape), 100)} is not a tuple of sizes")
    if not isinstance(fortran_order, bool):
        raise ToolkitError(f"{path}: NPY fortran_order {shorten(repr(fortran_order), 100)} is not a boolean")
    try:
        dtype = np.lib.format.descr_to_dtype(descr)
    except (TypeError, ValueError, KeyError, IndexError, OverflowError, MemoryError, RecursionError):
        raise ToolkitError(f"{path}: NPY descr {shorten(repr(descr), 100)} is not a dtype") from None
    return dtype, shape, start
