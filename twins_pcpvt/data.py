"""Dataset side of the flow: reference transform, image discovery, tensor files and the preprocess manifest.

Manifest format (`<prep_dataset>/manifest.tsv`, UTF-8, tab-separated, one header line):

    stem<TAB>source<TAB>label<TAB>size<TAB>mtime_ns<TAB>transform
    ILSVRC2012_val_00000001<TAB>val/n01751748/ILSVRC2012_val_00000001.JPEG<TAB>65<TAB>109527<TAB>1354...<TAB>...

`source` is relative to `--data_path`; `label` is the class index (0-based) when the dataset layout gives one
(class folders), otherwise empty; `size` and `mtime_ns` are the source file's size and modification time, and
`transform` names the transform version that made the tensor: together the provenance that decides whether a
rerun may keep a `.bin`. Rows are in the sorted processing order. File names that are not valid UTF-8 are kept
byte for byte (Python's surrogateescape). A manifest of the first format (the first three columns) is still
read; its tensors have no provenance and are redone.

Class labels: a class folder is named by its class, and its label is the class's index in the class map, by
default the 1000 ILSVRC-2012 WordNet ids in sorted order (`imagenet_wnids.txt`, shipped with the package):
`n01440764` is 0 whatever other folders are present. A folder whose name is not in the class map (`__MACOSX`,
an old output folder, ...) is ignored with a notice and never shifts a label; names starting with a dot are
ignored silently. Another class set needs an explicit class map: one folder name per line, line 1 is class 0.

The reference transform, the one the guide's accuracy was measured with, is torchvision's `Resize(256,
bicubic) -> CenterCrop(224) -> ToTensor -> Normalize` on `PIL.Image.convert('RGB')`. It is computed here
without torch, bit for bit: the resize is the same Pillow call torchvision makes, the crop offsets use the
same arithmetic (Python's `round`, half to even), and as a pixel has only 256 values per channel,
`(value / 255 - mean) / std` in float32 is a 3 x 256 lookup table built with the same float32 operations
torch performs.

Images are untrusted input: only Pillow's JPEG and PNG decoders are used (the file's content, not its name,
picks the decoder); anything that is not a regular file is reported without being opened; the memory a decode
and the resize take is bounded from the header's size before any pixel is decoded.
"""

from __future__ import annotations

import ast
import contextlib
import errno
import multiprocessing
import os
import stat
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from .common import (
    CROP_SIZE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    INPUT_BYTES,
    INPUT_SHAPE,
    RESIZE_SIZE,
    ToolkitError,
    UsageError,
    atomic_write_bytes,
    atomic_writer,
    check_output_file,
    file_type,
    init_worker,
    lock_folder,
    mark_finished,
    mark_running,
    message_line,
    one_line,
    quoted,
    read_text_file,
    remove_temporaries,
    shorten,
    stop_pool,
    usable_cpus,
    worker_task,
)

MANIFEST_NAME = "manifest.tsv"
MANIFEST_HEADER = ("stem", "source", "label", "size", "mtime_ns", "transform")
_FIRST_MANIFEST_HEADER = MANIFEST_HEADER[:3]
# Names the transform that makes the tensors; change it whenever the tensors it makes change.
TRANSFORM_VERSION = "pil-bicubic256-crop224-imagenet-f32le.1"
IMAGE_SUFFIXES = frozenset({".jpeg", ".jpg", ".png"})  # compared lower-cased
TENSOR_SUFFIX = ".bin"
TENSOR_DTYPE = np.dtype("<f4")
IMAGENET_WNIDS = Path(__file__).with_name("imagenet_wnids.txt")
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
_NAME_ENCODING = ("utf-8", "surrogateescape")
# Manifests, label files and class maps: read whole, so bounded first. 2 million rows hold ImageNet's training
# set (1.28 million images); a manifest row takes about 150 bytes.
LIST_READ_LIMIT = 256 * 2**20
LIST_MAX_LINES = 2_000_000
# A tab and every character Python's str.splitlines() ends a line at: a name holding one cannot be a field of
# the manifest or of a label file (whose fields are split at white space), so no later stage could read it.
UNSTORABLE_IN_NAMES = "\t\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


@dataclass(frozen=True)
class ManifestRow:
    stem: str
    source: str
    label: int | None
    size: int | None = None  # of the source file, when the tensor was made
    mtime_ns: int | None = None
    transform: str | None = None

    def same_source(self, other: ManifestRow) -> bool:
        """Whether both rows describe the same source file turned into a tensor by the same transform."""
        provenance = (self.source, self.size, self.mtime_ns, self.transform)
        return None not in provenance and provenance == (
            other.source,
            other.size,
            other.mtime_ns,
            other.transform,
        )


def _manifest_field(value) -> str:
    return "" if value is None else str(value)


def write_manifest(prep_dir: str | Path, rows: list[ManifestRow], name: str = MANIFEST_NAME) -> Path:
    path = Path(prep_dir) / name
    lines = ["\t".join(MANIFEST_HEADER)]
    lines += [
        "\t".join(
            _manifest_field(value)
            for value in (row.stem, row.source, row.label, row.size, row.mtime_ns, row.transform)
        )
        for row in rows
    ]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode(*_NAME_ENCODING))
    return path


def _optional_int(text: str, *, signed: bool = False) -> int | None:
    """An empty field is None; otherwise plain ASCII digits (with a leading '-' where `signed`)."""
    if not text:
        return None
    digits = text[1:] if signed and text.startswith("-") else text
    if not (digits.isascii() and digits.isdigit()):
        raise ValueError(text)
    return int(text)


def read_manifest(path: str | Path) -> list[ManifestRow]:
    """Read a manifest file, or `manifest.tsv` inside a folder. Errors name the file and line: a malformed
    line, a label, size or mtime that is not an integer (labels and sizes are never negative), a stem listed
    twice."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    text = read_text_file(
        path, "manifest", limit=LIST_READ_LIMIT, max_lines=LIST_MAX_LINES, errors=_NAME_ENCODING[1]
    )
    # split at line feeds alone (as written), so no other character of a name can cut a row in two
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    if lines and not lines[-1]:
        lines.pop()
    header = tuple(lines[0].split("\t")) if lines else ()
    if header not in (MANIFEST_HEADER, _FIRST_MANIFEST_HEADER):
        raise ToolkitError(
            f"{path}: not a preprocess manifest (first line must be {chr(9).join(MANIFEST_HEADER)!r})"
        )
    rows = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != len(header) or not fields[0]:
            raise ToolkitError(f"{path}:{number}: malformed manifest line {quoted(line)}")
        stem, source, label, *provenance = fields + [""] * (len(MANIFEST_HEADER) - len(fields))
        if stem in first_line:
            raise ToolkitError(
                f"{path}:{number}: {shorten(stem, 300)} is listed twice (first on line {first_line[stem]})"
            )
        first_line[stem] = number
        try:
            numbers = (
                _optional_int(label),
                _optional_int(provenance[0]),
                _optional_int(provenance[1], signed=True),
            )
        except ValueError:
            raise ToolkitError(
                f"{path}:{number}: label, size or mtime is not a valid integer in {quoted(line)}"
            ) from None
        rows.append(ManifestRow(stem, source, *numbers, provenance[2] or None))
    return rows


def read_class_map(path: str | Path | None = None) -> dict[str, int]:
    """Class folder name -> class index, from a class map (one name per line, line 1 is class 0); by default
    the 1000 ILSVRC-2012 WordNet ids in sorted order."""
    path = IMAGENET_WNIDS if path is None else Path(path)
    text = read_text_file(path, "class map", limit=LIST_READ_LIMIT, max_lines=LIST_MAX_LINES)
    classes: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        name = line.strip()
        if not name or name != line.rstrip("\r") or any(char.isspace() for char in name):
            raise ToolkitError(
                f"{path}:{number}: {quoted(line)} is not a class folder name (one name per line, no blank "
                "lines, line 1 is class 0)"
            )
        if "/" in name or name.startswith("."):
            raise ToolkitError(f"{path}:{number}: {quoted(name)} cannot be a class folder name")
        if name in classes:
            raise ToolkitError(
                f"{path}:{number}: {shorten(name, 300)} is listed twice (first on line {classes[name] + 1})"
            )
        classes[name] = len(classes)
    if not classes:
        raise ToolkitError(f"{path}: the class map lists no class")
    return classes


# ----------------------------------------------------------------------------------------------------------
# The reference transform


class ImageError(ToolkitError):
    """One image could not be turned into a tensor; the message names the file and the reason."""


def _normalize_table() -> np.ndarray:
    """[3, 256] float32: channel c, value v -> (v / 255 - mean[c]) / std[c], as ToTensor + Normalize do it."""
    scaled = np.arange(256, dtype=np.float32) / np.float32(255)
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)[:, None]
    std = np.asarray(IMAGENET_STD, dtype=np.float32)[:, None]
    return ((scaled - mean) / std).astype(TENSOR_DTYPE)


_NORMALIZE_TABLE = _normalize_table()


def resized_size(width: int, height: int, shorter: int = RESIZE_SIZE) -> tuple[int, int]:
    """(width, height) after torchvision's `Resize(shorter)`: shorter side -> `shorter`, longer truncated."""
    if width <= height:
        return shorter, int(shorter * height / width)
    return int(shorter * width / height), shorter


def reference_transform(image: Image.Image) -> np.ndarray:
    """float32 [3, 224, 224] little-endian tensor of any PIL image, equal to the torchvision reference."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    size = resized_size(*image.size)
    if size != image.size:
        image = image.resize(size, Image.Resampling.BICUBIC)
    width, height = size
    # torchvision's CenterCrop offsets; the resized image is never smaller than the crop
    top = int(round((height - CROP_SIZE) / 2.0))
    left = int(round((width - CROP_SIZE) / 2.0))
    pixels = np.asarray(image)[top : top + CROP_SIZE, left : left + CROP_SIZE]
    tensor = np.empty(INPUT_SHAPE, dtype=TENSOR_DTYPE)
    for channel in range(3):
        np.take(_NORMALIZE_TABLE[channel], pixels[:, :, channel], out=tensor[channel])
    return tensor


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


# ----------------------------------------------------------------------------------------------------------
# Dataset discovery


def _visible_entries(folder: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as entries:
            return [entry for entry in entries if not entry.name.startswith(".")]
    except OSError as exc:
        raise ToolkitError(f"{folder}: cannot list folder ({exc.strerror or exc})") from None


def _is_dir(entry: os.DirEntry) -> bool:
    """Whether the entry is a folder or a link to one; a link loop or other failure is not a folder."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def _image_files(entries: Iterable[os.DirEntry]) -> list[Path]:
    """Entries named like images but folders (links, FIFOs, ... are kept: the conversion reports them)."""
    return [Path(entry.path) for entry in entries if _is_image_name(entry.name) and not _is_dir(entry)]


def _notice(message: str) -> None:
    tqdm.write(f"notice: {message_line(message)}", file=sys.stderr)


def _source_row(root: Path, path: Path, label: int | None) -> ManifestRow:
    """The manifest row of one image: provenance from `stat` (nothing is opened); None where stat fails."""
    try:
        info = os.stat(path)
        size, mtime_ns = info.st_size, info.st_mtime_ns
    except OSError:
        size = mtime_ns = None
    return ManifestRow(path.stem, path.relative_to(root).as_posix(), label, size, mtime_ns, TRANSFORM_VERSION)


def result_key(name: str) -> str:
    """The name ais_bench gives the outputs of a file: its name up to the first dot (`a.v2.bin` -> `a`, then
    `a_0.bin`). Outputs are matched to labels by this key, so no two images of a data set may share one."""
    return name.split(".", 1)[0]


def discover_images(
    data_path: str | Path,
    *,
    exclude: Path | None = None,
    class_map: str | Path | None = None,
    notice: Callable[[str], None] = _notice,
) -> list[ManifestRow]:
    """The images of an ImageNet-style folder, sorted by stem (the order ais_bench reads `.bin` files in).

    Layouts: images directly in `data_path` (flat), or in class folders `data_path/<wnid>/` (label = the
    index of the folder's name in the class map, by default the ILSVRC-2012 WordNet ids); either one may sit
    under `data_path/val/`. Folders not in the class map are ignored with a notice; names starting with a dot
    are ignored. `exclude` (the output folder) is ignored without a notice unless it is named as a class.
    Two images with the same `result_key` would get the same output name: an error naming both, raised
    before any write.
    """
    root = Path(data_path)
    if not root.exists():
        raise ToolkitError(f"{root}: data_path does not exist")
    if not root.is_dir():
        raise ToolkitError(f"{root}: data_path is not a folder")
    classes = read_class_map(class_map)
    entries = _visible_entries(root)
    base = root
    val = root / "val"
    root_classes = any(_is_dir(entry) and entry.name in classes for entry in entries)
    if val.is_dir() and not _image_files(entries) and not root_classes:
        base, entries = val, _visible_entries(val)
    excluded = os.path.realpath(exclude) if exclude is not None else None
    folders = sorted(
        (
            Path(entry.path)
            for entry in entries
            if _is_dir(entry) and (entry.name in classes or os.path.realpath(entry.path) != excluded)
        ),
        key=lambda folder: folder.name,
    )
    class_dirs = [folder for folder in folders if folder.name in classes]
    others = [folder.name for folder in folders if folder.name not in classes]
    if others:
        what = "ILSVRC-2012 WordNet ids" if class_map is None else f"classes of {class_map}"
        notice(
            f"{base}: ignored {len(others)} folder(s) that are not {what}: {', '.join(others[:5])}"
            f"{', ...' if len(others) > 5 else ''}"
            + (" (another class set needs --class-map)" if class_map is None else "")
        )
    direct_images = _image_files(entries)
    class_images = [_image_files(_visible_entries(folder)) for folder in class_dirs]
    if direct_images and any(class_images):
        with_images = next(folder for folder, images in zip(class_dirs, class_images, strict=True) if images)
        raise ToolkitError(
            f"{base}: holds both image files and class folders with images (e.g. {with_images.name}/); "
            "use either a flat folder of images or one folder per class"
        )
    if direct_images:
        found = [(path, None) for path in direct_images]
    else:
        found = [
            (path, classes[folder.name])
            for folder, images in zip(class_dirs, class_images, strict=True)
            for path in images
        ]
    if not found:
        suffixes = "/".join(sorted(IMAGE_SUFFIXES))
        raise ToolkitError(f"{root}: no images found ({suffixes}, any case, directly or in class folders)")

    by_key: dict[str, list[Path]] = {}
    for path, _ in found:
        by_key.setdefault(result_key(path.name), []).append(path)
    clashes = sorted(sorted(paths) for paths in by_key.values() if len(paths) > 1)
    if clashes:
        first = ", ".join(str(path) for path in clashes[0])
        more = f" (and {len(clashes) - 1} more such group(s))" if len(clashes) > 1 else ""
        raise ToolkitError(
            f"{root}: {first} would get the same output name{more}: ais_bench names outputs by the file name "
            "up to its first dot; rename or remove one of each"
        )
    rows = [_source_row(root, path, label) for path, label in found]
    rows.sort(key=lambda row: row.stem)
    return rows


# ----------------------------------------------------------------------------------------------------------
# The preprocess stage


@dataclass
class PreprocessSummary:
    prep_dir: Path
    written: int = 0
    skipped: int = 0  # already complete from an earlier run
    removed: int = (
        0  # tensors of an earlier run this run does not cover, deleted so no later stage reads them
    )
    failures: list[str] = field(default_factory=list)  # one message per failed image, naming the file
    seconds: float = 0.0

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def images_per_second(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        removed = f", removed {self.removed} of an earlier run" if self.removed else ""
        return (
            f"preprocess: written {self.written}, skipped {self.skipped} (already complete), "
            f"failed {self.failed}{removed}, {self.images_per_second:.1f} images/s -> {self.prep_dir}"
        )


def _convert_one(task: tuple[str, str]) -> str | None:
    """Worker body: image -> `.bin`. Returns None on success, else the error message naming the image.

    A tensor that cannot be written (full disk, read-only folder) raises: that stops the run, not one image.
    """
    source, target = task
    try:
        tensor = preprocess_image(source)
    except ImageError as exc:
        return str(exc)
    except Exception as exc:  # an unexpected failure must still come back as this image's error
        return f"{source}: {type(exc).__name__}: {exc}"
    write_tensor_file(target, tensor)
    return None


def _convert_chunk(tasks: list[tuple[str, str]]) -> list[str | None]:
    with worker_task():
        return [_convert_one(task) for task in tasks]


def _pool_context():
    # fork starts workers in milliseconds, with the modules already imported; elsewhere the platform default
    if "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context()


def _print_error(message: str) -> None:
    tqdm.write(f"error: {message_line(message)}", file=sys.stderr)


def _all_entries(folder: Path) -> list[os.DirEntry]:
    with os.scandir(folder) as entries:
        return list(entries)


def _is_complete_tensor(path: Path) -> bool:
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_size == INPUT_BYTES


def _is_tensor_name(name: str) -> bool:
    """Names a later stage reads as input tensors (ais_bench and the runner take .bin and .npy files)."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in (TENSOR_SUFFIX, ".npy")


def _previous_rows(prep_dir: Path) -> dict[str, ManifestRow]:
    """The rows of the folder's manifest from an earlier run (empty when there is none)."""
    manifest = prep_dir / MANIFEST_NAME
    if not os.path.lexists(manifest):
        return {}
    try:
        return {row.stem: row for row in read_manifest(manifest)}
    except ToolkitError as exc:
        raise ToolkitError(
            f"{exc}: it says which tensors in {prep_dir} are current; remove the folder's tensors and "
            "manifest, or choose an empty --prep_dataset"
        ) from None


def _refuse_image_folder(prep_dir: Path, root: Path, rows: list[ManifestRow]) -> None:
    """The output folder must not be the data folder or one of the folders the images are read from."""
    folders = {os.path.dirname(row.source) for row in rows}
    read_from = {os.path.realpath(root)} | {os.path.realpath(root / folder) for folder in folders}
    if os.path.realpath(prep_dir) in read_from:
        raise UsageError(
            f"{prep_dir}: prep_dataset is a folder the images are read from; choose another folder"
        )


def preprocess_dataset(
    data_path: str | Path,
    prep_dir: str | Path,
    *,
    workers: int | None = None,
    limit: int | None = None,
    progress: bool = True,
    on_error: Callable[[str], None] | None = None,
    class_map: str | Path | None = None,
    notice: Callable[[str], None] = _notice,
    command: Sequence[str] = (),
) -> PreprocessSummary:
    """Turn the images under `data_path` into `<stem>.bin` tensors plus `manifest.tsv` in `prep_dir`.

    Resumable: a `.bin` is kept (counted as skipped) only when the earlier manifest says it was made from the
    same source file (relative path, size, mtime) by the same transform version; any other is redone. Tensors
    of an earlier run that this run does not cover (`--limit`, a smaller or another data set) are deleted, so
    the folder holds exactly the tensors of this run. Tensors that no manifest of the folder lists are not
    ours: the run refuses to start. Every file is written atomically. A bad image is reported through
    `on_error` (default: one `error:` line on stderr) and listed in the summary; all others are still written.
    The folder is locked for the run and marked in progress until its final manifest is written; `command`
    is what a reader is told to rerun to resume it.
    """
    workers = usable_cpus() if workers is None else workers
    if workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}")
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be at least 1, got {limit}")
    prep_dir = Path(prep_dir)
    if os.path.lexists(prep_dir) and not prep_dir.is_dir():
        raise ToolkitError(f"{prep_dir}: prep_dataset exists and is not a folder")
    root = Path(data_path)
    rows = discover_images(root, exclude=prep_dir, class_map=class_map, notice=notice)
    _refuse_image_folder(prep_dir, root, rows)
    if limit is not None:
        rows = rows[:limit]
    summary = PreprocessSummary(prep_dir)
    report = on_error or _print_error
    for row in [row for row in rows if any(char in row.source for char in UNSTORABLE_IN_NAMES)]:
        character = next(char for char in row.source if char in UNSTORABLE_IN_NAMES)
        summary.failures.append(
            f"{root / row.source}: the name holds a tab or line break ({character!r}), which the manifest "
            "and label files cannot hold: rename the file"
        )
        report(summary.failures[-1])
        rows.remove(row)
    try:
        prep_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ToolkitError(f"{prep_dir}: cannot create the output folder ({exc.strerror or exc})") from None
    with lock_folder(prep_dir):
        _convert_into(prep_dir, root, rows, summary, workers, progress, report, notice, command)
        mark_finished(prep_dir)
    return summary


def _convert_into(
    prep_dir: Path,
    root: Path,
    rows: list[ManifestRow],
    summary: PreprocessSummary,
    workers: int,
    progress: bool,
    report: Callable[[str], None],
    notice: Callable[[str], None],
    command: Sequence[str],
) -> None:
    """The preprocess's work in its locked folder (see `preprocess_dataset`), marked in progress from its
    first change on."""
    try:
        prep_dir.mkdir(parents=True, exist_ok=True)
        existing = {entry.name: entry for entry in _all_entries(prep_dir) if _is_tensor_name(entry.name)}
    except OSError as exc:
        reason = exc.strerror or exc
        raise ToolkitError(f"{prep_dir}: cannot create or list the output folder ({reason})") from None
    check_output_file(prep_dir / MANIFEST_NAME, probe=True)
    previous = _previous_rows(prep_dir) if existing else {}

    wanted = {row.stem + TENSOR_SUFFIX: row for row in rows}

    def listed(name: str) -> bool:
        return name in wanted or (name.endswith(TENSOR_SUFFIX) and name[: -len(TENSOR_SUFFIX)] in previous)

    foreign = sorted(name for name in existing if not listed(name))
    if foreign:
        raise ToolkitError(
            f"{prep_dir}: holds {len(foreign)} tensor file(s) that its manifest does not list "
            f"(e.g. {foreign[0]}); they were not written here by the preprocess, and a later stage would "
            "read them: remove them or choose an empty --prep_dataset"
        )

    def reusable(name: str) -> bool:
        old = previous.get(name[: -len(TENSOR_SUFFIX)])
        return (
            name in existing
            and old is not None
            and wanted[name].same_source(old)
            and _is_complete_tensor(prep_dir / name)
        )

    kept = {name for name in wanted if reusable(name)}
    earlier_names = {stem + TENSOR_SUFFIX for stem in previous}
    mark_running(prep_dir, command)
    remove_temporaries(prep_dir, set(wanted) | set(existing) | earlier_names | {MANIFEST_NAME})
    try:
        for name in sorted(set(existing) - kept):
            os.unlink(existing[name].path)
            summary.removed += name not in wanted
    except OSError as exc:
        raise ToolkitError(f"{prep_dir}: cannot remove an outdated tensor ({exc.strerror or exc})") from None
    if summary.removed:
        notice(
            f"{prep_dir}: removed {summary.removed} tensor(s) of an earlier run that this run does not cover"
        )
    # Written before any tensor: every tensor in the folder is always listed, with the source it comes from.
    write_manifest(prep_dir, rows)

    def wanted_name(index: int) -> str:
        return rows[index].stem + TENSOR_SUFFIX

    pending = [index for index in range(len(rows)) if wanted_name(index) not in kept]
    summary.skipped = len(rows) - len(pending)
    tasks = [(str(root / rows[index].source), str(prep_dir / wanted_name(index))) for index in pending]
    failed: set[int] = set()

    def record(position: int, message: str | None) -> None:
        if message is None:
            summary.written += 1
        else:
            failed.add(pending[position])
            summary.failures.append(message)
            report(message)

    def write_complete_manifest() -> int:
        # Every tensor in the folder was made by this run from its row's source (outdated ones were removed
        # above), including one a stopped worker finished without reporting it.
        unfinished = {index for index in pending if not _is_complete_tensor(prep_dir / wanted_name(index))}
        complete = [row for index, row in enumerate(rows) if index not in failed | unfinished]
        write_manifest(prep_dir, complete)
        return len(complete)

    started = time.perf_counter()
    try:
        _run_tasks(tasks, min(workers, len(tasks)), progress, record)
    except BaseException as exc:
        # Stopped or failed: the manifest lists what is complete (the workers are gone, nothing is in flight).
        complete = "the"
        with contextlib.suppress(ToolkitError):
            complete = f"the {write_complete_manifest()}"
        if isinstance(exc, ToolkitError):
            raise ToolkitError(
                f"{exc}; {complete} tensors in {prep_dir} are complete: rerun the same command to resume"
            ) from None
        raise
    finally:
        summary.seconds = time.perf_counter() - started
        remove_temporaries(prep_dir, set(wanted) | {MANIFEST_NAME})
    write_complete_manifest()


def _run_tasks(
    tasks: list[tuple[str, str]], workers: int, progress: bool, record: Callable[[int, str | None], None]
) -> None:
    """Run `_convert_one` over `tasks` here or in a process pool, calling `record(position, error)`."""
    if workers <= 1:
        with tqdm(total=len(tasks), unit="img", desc="preprocess", disable=not progress) as bar:
            for position, task in enumerate(tasks):
                record(position, _convert_one(task))
                bar.update()
        return

    # Chunks amortise the inter-process round trip; small enough that the workers finish close together.
    chunk = max(1, min(16, len(tasks) // (workers * 16)))
    executor = ProcessPoolExecutor(
        workers, mp_context=_pool_context(), initializer=init_worker, initargs=(os.getpid(),)
    )
    try:
        # Workers are started by the first submit, before tqdm starts its monitor thread.
        futures = {
            executor.submit(_convert_chunk, tasks[start : start + chunk]): start
            for start in range(0, len(tasks), chunk)
        }
        with tqdm(total=len(tasks), unit="img", desc="preprocess", disable=not progress) as bar:
            for future in as_completed(futures):
                try:
                    messages = future.result()
                except BrokenProcessPool:
                    raise ToolkitError(
                        "a preprocessing worker process died (killed, or out of memory)"
                    ) from None
                start = futures[future]
                for offset, message in enumerate(messages):
                    record(start + offset, message)
                bar.update(len(messages))
    except BaseException:
        stop_pool(executor)
        raise
    executor.shutdown(wait=True)
