"""Untrusted image files: opening, decoding and the size checks made before decoding.

Only Pillow's JPEG and PNG decoders are used (the file's content, not its name, picks the decoder); anything
that is not a regular file is reported without being opened; the memory a decode and the resize take is
bounded from the header's size before any pixel is decoded.
"""

from __future__ import annotations

import errno
import os
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..common import RESIZE_SIZE, ToolkitError, file_type
from .transform import reference_transform, resized_size

# The only decoders used: what ImageNet and the accepted suffixes need. Never EPS (it runs Ghostscript).
IMAGE_FORMATS = ("JPEG", "PNG")
# Formats other tools save photos in, told by their first bytes, to name a refused file's format.
_OTHER_FORMATS = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"8BPS", "Photoshop PSD"),
    (b"%PDF", "PDF"),
)


def _other_format(head: bytes) -> str | None:
    """The name of a format Pillow is not asked to read, from a file's first bytes (WebP, HEIC and AVIF by
    their RIFF / ISO box headers), else None."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        return (
            "AVIF" if brand in (b"avif", b"avis") else "HEIC/HEIF" if brand[:3] in (b"hei", b"mif") else None
        )
    return next((name for magic, name in _OTHER_FORMATS if head.startswith(magic)), None)


# Pillow's own decompression-bomb limit: decoding plus the RGB copy take at most ~0.7 GB.
MAX_IMAGE_PIXELS = 89_478_485
# The short side is resized to 256: the long side becomes at most 256 * 256 (a 64 MB RGB image).
MAX_ASPECT_RATIO = 256


class ImageError(ToolkitError):
    """One image could not be turned into a tensor; the message names the file and the reason."""


def _open_regular_file(path: str | Path):
    """Open `path` for reading only if it is a regular file (links followed); anything else is refused by its
    type without being opened. O_NONBLOCK: a FIFO swapped in after the check cannot block the open."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        reason = {
            errno.ELOOP: "a symbolic link loop",
            errno.ENOENT: "missing, or a broken symbolic link",
        }.get(exc.errno, exc.strerror or str(exc))
        raise ImageError(f"{path}: cannot read image ({reason})") from None
    if not stat.S_ISREG(mode):
        raise ImageError(f"{path}: is {file_type(mode)}, not a regular file: skipped without reading it")
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise ImageError(f"{path}: cannot read image ({exc.strerror or exc})") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise ImageError(f"{path}: is {file_type(info.st_mode)}, not a regular file: skipped")
    if info.st_size == 0:
        os.close(fd)
        raise ImageError(f"{path}: empty file (0 bytes)")
    return os.fdopen(fd, "rb")


def check_image_size(path: str | Path, width: int, height: int) -> None:
    """Refuse, before decoding, an image whose decode or resize would take more memory than the bounds."""
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageError(
            f"{path}: {width} x {height} pixels, more than the {MAX_IMAGE_PIXELS:,} allowed: refused as a "
            "possible decompression bomb before decoding"
        )
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        resized = resized_size(width, height)
        gigabytes = resized[0] * resized[1] * 4 / 1e9
        raise ImageError(
            f"{path}: {width} x {height} pixels, an aspect ratio beyond {MAX_ASPECT_RATIO}:1; resizing the "
            f"short side to {RESIZE_SIZE} would make a {resized[0]} x {resized[1]} image "
            f"({gigabytes:.1f} GB): refused before decoding"
        )


def load_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image file; every failure is an ImageError naming the file and the reason.

    Only the JPEG and PNG decoders are used; the size is checked from the header before decoding.
    """
    handle = _open_regular_file(path)
    with handle:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(handle, formats=IMAGE_FORMATS)
                check_image_size(path, *image.size)
                image.load()
        except ImageError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageError(f"{path}: refused as a possible decompression bomb ({exc})") from None
        except UnidentifiedImageError:
            handle.seek(0)
            found = _other_format(handle.read(16))
            reason = (
                "unrecognised file content"
                if found is None
                else f"a {found} image: convert it to {' or '.join(IMAGE_FORMATS)}"
            )
            raise ImageError(
                f"{path}: not an image Pillow can read as {' or '.join(IMAGE_FORMATS)} ({reason}; no other "
                "decoder is used)"
            ) from None
        except MemoryError:
            raise ImageError(f"{path}: out of memory while decoding") from None
        except OSError as exc:
            raise ImageError(f"{path}: truncated or corrupt image data ({exc})") from None
        except Exception as exc:  # Pillow raises SyntaxError, ValueError, ... for malformed files
            raise ImageError(f"{path}: corrupt image ({type(exc).__name__}: {exc})") from None
    return image


def preprocess_image(path: str | Path) -> np.ndarray:
    """The reference tensor of one image file (float32 [3, 224, 224])."""
    image = load_image(path)
    try:
        return reference_transform(image)
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        raise ImageError(f"{path}: cannot convert image of mode {image.mode} ({reason})") from None
