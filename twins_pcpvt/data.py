"""Dataset side of the flow: the reference transform, image discovery, tensor files and the preprocess manifest.

Manifest format (`<prep_dataset>/manifest.tsv`, UTF-8, tab-separated, one header line):

    stem<TAB>source<TAB>label
    ILSVRC2012_val_00000001<TAB>val/n01751748/ILSVRC2012_val_00000001.JPEG<TAB>65

`source` is relative to `--data_path`; `label` is the class index (0-based) when the dataset layout gives one
(class folders), otherwise empty. Rows are in the sorted processing order.

The reference transform (reference.md section 3) is torchvision's `Resize(256, bicubic) -> CenterCrop(224) ->
ToTensor -> Normalize` on `PIL.Image.convert('RGB')`. It is computed here without torch, bit for bit: the
resize is the same Pillow call torchvision makes, the crop offsets use the same arithmetic (Python's `round`,
half to even), and as a pixel has only 256 values per channel, `(value / 255 - mean) / std` in float32 is a
3 x 256 lookup table built with the same float32 operations torch performs.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterable
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
    atomic_writer,
)

MANIFEST_NAME = "manifest.tsv"
MANIFEST_HEADER = ("stem", "source", "label")
IMAGE_SUFFIXES = frozenset({".jpeg", ".jpg", ".png"})  # compared lower-cased
TENSOR_SUFFIX = ".bin"
TENSOR_DTYPE = np.dtype("<f4")


@dataclass(frozen=True)
class ManifestRow:
    stem: str
    source: str
    label: int | None


def write_manifest(prep_dir: str | Path, rows: list[ManifestRow]) -> Path:
    path = Path(prep_dir) / MANIFEST_NAME
    lines = ["\t".join(MANIFEST_HEADER)]
    lines += [f"{row.stem}\t{row.source}\t{'' if row.label is None else row.label}" for row in rows]
    with atomic_writer(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


def read_manifest(path: str | Path) -> list[ManifestRow]:
    """Read a manifest file, or `manifest.tsv` inside a folder. Errors name the file and line."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ToolkitError(f"{path}: cannot read manifest ({exc.strerror or exc})") from exc
    lines = text.splitlines()
    if not lines or tuple(lines[0].split("\t")) != MANIFEST_HEADER:
        raise ToolkitError(f"{path}: not a preprocess manifest (first line must be 'stem<TAB>source<TAB>label')")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != 3 or not fields[0]:
            raise ToolkitError(f"{path}:{number}: malformed manifest line {line!r}")
        stem, source, label = fields
        try:
            rows.append(ManifestRow(stem, source, int(label) if label else None))
        except ValueError:
            raise ToolkitError(f"{path}:{number}: label {label!r} is not an integer") from None
    return rows


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


def load_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image file; every failure is an ImageError naming the file and the reason.

    Pillow only warns between MAX_IMAGE_PIXELS and twice that; here both are refused as decompression bombs.
    """
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below, after decoding
    except IsADirectoryError:
        raise ImageError(f"{path}: cannot read image (it is a folder)") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot read image ({exc.strerror or exc})") from None
    with handle:
        if os.fstat(handle.fileno()).st_size == 0:
            raise ImageError(f"{path}: empty file (0 bytes)")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(handle)
                image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageError(f"{path}: refused as a possible decompression bomb ({exc})") from None
        except UnidentifiedImageError:
            raise ImageError(f"{path}: not an image Pillow can read (unrecognised file content)") from None
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
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ToolkitError(f"{path}: cannot read tensor file ({exc.strerror or exc})") from None
    if len(data) != INPUT_BYTES:
        raise ToolkitError(f"{path}: {len(data)} bytes, expected {INPUT_BYTES} (float32 {INPUT_SHAPE})")
    return np.frombuffer(data, dtype=TENSOR_DTYPE).reshape(INPUT_SHAPE).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# Dataset discovery


def _visible_entries(folder: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as entries:
            return [entry for entry in entries if not entry.name.startswith(".")]
    except OSError as exc:
        raise ToolkitError(f"{folder}: cannot list folder ({exc.strerror or exc})") from None


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def _image_files(entries: Iterable[os.DirEntry]) -> list[Path]:
    return [Path(entry.path) for entry in entries if _is_image_name(entry.name) and not entry.is_dir()]


def discover_images(data_path: str | Path, *, exclude: Path | None = None) -> list[ManifestRow]:
    """The images of an ImageNet-style folder, sorted by stem (the order ais_bench reads `.bin` files in).

    Layouts: images directly in `data_path` (flat), or in class folders `data_path/<wnid>/` (label = position
    of the folder name among the sorted class folders); either one may sit under `data_path/val/`. Names
    starting with a dot are ignored. `exclude` is a folder never taken as a class folder (the output folder).
    Two images with the same stem would write the same `.bin`: an error naming both, raised before any write.
    """
    root = Path(data_path)
    if not root.exists():
        raise UsageError(f"{root}: data_path does not exist")
    if not root.is_dir():
        raise UsageError(f"{root}: data_path is not a folder")
    entries = _visible_entries(root)
    base = root
    val = root / "val"
    if val.is_dir() and not _image_files(entries):
        base, entries = val, _visible_entries(val)
    excluded = exclude.resolve() if exclude is not None else None
    class_dirs = sorted(
        (Path(entry.path) for entry in entries if entry.is_dir() and Path(entry.path).resolve() != excluded),
        key=lambda folder: folder.name,
    )
    direct_images = _image_files(entries)
    class_images = [_image_files(_visible_entries(folder)) for folder in class_dirs]
    if direct_images and any(class_images):
        with_images = next(folder for folder, images in zip(class_dirs, class_images) if images)
        raise ToolkitError(
            f"{base}: holds both image files and class folders with images (e.g. {with_images.name}/); "
            "use either a flat folder of images or one folder per class"
        )
    if direct_images:
        found = [(path, None) for path in direct_images]
    else:
        found = [(path, label) for label, images in enumerate(class_images) for path in images]
    if not found:
        suffixes = "/".join(sorted(IMAGE_SUFFIXES))
        raise ToolkitError(f"{root}: no images found ({suffixes}, any case, directly or in class folders)")

    by_stem: dict[str, list[Path]] = {}
    for path, _ in found:
        by_stem.setdefault(path.stem, []).append(path)
    clashes = {stem: paths for stem, paths in by_stem.items() if len(paths) > 1}
    if clashes:
        shown = sorted(clashes.items())[:10]
        lines = [f"  {stem}{TENSOR_SUFFIX}: " + ", ".join(map(str, sorted(paths))) for stem, paths in shown]
        more = f"\n  ... and {len(clashes) - len(shown)} more" if len(clashes) > len(shown) else ""
        raise ToolkitError(
            f"{root}: {len(clashes)} output name(s) would be written by more than one image "
            "(same file stem); rename or remove one of each:\n" + "\n".join(lines) + more
        )
    for path, _ in found:
        if any(char in path.name for char in "\t\n\r"):
            raise ToolkitError(f"{path}: the name holds a tab or line break, which the manifest cannot hold")

    rows = [ManifestRow(path.stem, path.relative_to(root).as_posix(), label) for path, label in found]
    rows.sort(key=lambda row: row.stem)
    return rows


# ----------------------------------------------------------------------------------------------------------
# The preprocess stage


def default_worker_count() -> int:
    """CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


@dataclass
class PreprocessSummary:
    prep_dir: Path
    written: int = 0
    skipped: int = 0  # already complete from an earlier run
    failures: list[str] = field(default_factory=list)  # one message per failed image, naming the file
    seconds: float = 0.0

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def images_per_second(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        return (
            f"preprocess: written {self.written}, skipped {self.skipped} (already complete), "
            f"failed {self.failed}, {self.images_per_second:.1f} images/s -> {self.prep_dir}"
        )


def _convert_one(task: tuple[str, str]) -> str | None:
    """Worker body: image -> `.bin`. Returns None on success, else the error message naming the file."""
    source, target = task
    try:
        tensor = preprocess_image(source)
    except ImageError as exc:
        return str(exc)
    except Exception as exc:  # an unexpected failure must still come back as this image's error
        return f"{source}: {type(exc).__name__}: {exc}"
    try:
        write_tensor_file(target, tensor)
    except OSError as exc:
        return f"{target}: cannot write ({exc.strerror or exc})"
    return None


def _convert_chunk(tasks: list[tuple[str, str]]) -> list[str | None]:
    return [_convert_one(task) for task in tasks]


def _ignore_sigint() -> None:
    # Ctrl-C is handled by the parent, which cancels queued work; running chunks finish their atomic writes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _pool_context():
    # fork starts workers in milliseconds, with the modules already imported; elsewhere the platform default
    if "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context()


def _print_error(message: str) -> None:
    tqdm.write(f"error: {message}", file=sys.stderr)


def _all_entries(folder: Path) -> list[os.DirEntry]:
    with os.scandir(folder) as entries:
        return list(entries)


def _remove_stale_temporaries(prep_dir: Path, names: set[str]) -> None:
    """Delete the temporary files an interrupted run left for one of `names` (atomic_writer's naming)."""
    for entry in _all_entries(prep_dir):
        name = entry.name
        if name.startswith(".") and name.endswith(".tmp") and name[1:-4].rsplit(".", 1)[0] in names:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)


def preprocess_dataset(
    data_path: str | Path,
    prep_dir: str | Path,
    *,
    workers: int | None = None,
    limit: int | None = None,
    progress: bool = True,
    on_error: Callable[[str], None] | None = None,
) -> PreprocessSummary:
    """Turn the images under `data_path` into `<stem>.bin` tensors plus `manifest.tsv` in `prep_dir`.

    Resumable: a `.bin` of the right size is kept (counted as skipped), any other is rewritten. Every file is
    written atomically. A bad image is reported through `on_error` (default: one `error:` line on stderr) and
    listed in the summary; all other images are still written. The manifest lists the complete tensors.
    """
    workers = default_worker_count() if workers is None else workers
    if workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}")
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be at least 1, got {limit}")
    prep_dir = Path(prep_dir)
    if prep_dir.exists() and not prep_dir.is_dir():
        raise UsageError(f"{prep_dir}: prep_dataset exists and is not a folder")
    rows = discover_images(data_path, exclude=prep_dir)
    if limit is not None:
        rows = rows[:limit]
    try:
        prep_dir.mkdir(parents=True, exist_ok=True)
        existing = {entry.name: entry for entry in _all_entries(prep_dir)}
    except OSError as exc:
        reason = exc.strerror or exc
        raise ToolkitError(f"{prep_dir}: cannot create or list the output folder ({reason})") from None

    def is_complete(name: str) -> bool:
        entry = existing.get(name)
        return entry is not None and entry.is_file() and entry.stat().st_size == INPUT_BYTES

    target_names = [row.stem + TENSOR_SUFFIX for row in rows]
    _remove_stale_temporaries(prep_dir, set(target_names) | {MANIFEST_NAME})
    pending = [index for index, name in enumerate(target_names) if not is_complete(name)]
    summary = PreprocessSummary(prep_dir, skipped=len(rows) - len(pending))
    report = on_error or _print_error
    root = Path(data_path)
    tasks = [(str(root / rows[index].source), str(prep_dir / target_names[index])) for index in pending]

    failed_indices: set[int] = set()

    def record(position: int, message: str | None) -> None:
        if message is None:
            summary.written += 1
        else:
            failed_indices.add(pending[position])
            summary.failures.append(message)
            report(message)

    started = time.perf_counter()
    try:
        _run_tasks(tasks, min(workers, len(tasks)), progress, record)
    finally:
        summary.seconds = time.perf_counter() - started
    complete = [row for index, row in enumerate(rows) if index not in failed_indices]
    write_manifest(prep_dir, complete)
    return summary


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
    executor = ProcessPoolExecutor(workers, mp_context=_pool_context(), initializer=_ignore_sigint)
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
                        "a preprocessing worker process died (killed, or out of memory); "
                        "the images already written are complete: rerun the same command to resume"
                    ) from None
                start = futures[future]
                for offset, message in enumerate(messages):
                    record(start + offset, message)
                bar.update(len(messages))
    except BaseException:
        executor.shutdown(wait=True, cancel_futures=True)
        raise
    executor.shutdown(wait=True)
