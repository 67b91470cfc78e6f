"""Finding the images of a data set and their labels.

Layouts: images directly in `--data_path` (flat), or in class folders named by their class (the label is
the folder's index in the class map, see `classes`); either one may sit under `val/`. A folder whose name is
not in the class map (`__MACOSX`, an old output folder, ...) is ignored with a notice and never shifts a
label; names starting with a dot are ignored silently.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from tqdm import tqdm

from ..common import ToolkitError, message_line
from .classes import read_class_map
from .manifest import ManifestRow
from .names import result_key
from .transform import TRANSFORM_VERSION

IMAGE_SUFFIXES = frozenset({".jpeg", ".jpg", ".png"})  # compared lower-cased


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


def print_notice(message: str) -> None:
    tqdm.write(f"notice: {message_line(message)}", file=sys.stderr)


def _source_row(root: Path, path: Path, label: int | None) -> ManifestRow:
    """The manifest row of one image: provenance from `stat` (nothing is opened); None where stat fails."""
    try:
        info = os.stat(path)
        size, mtime_ns = info.st_size, info.st_mtime_ns
    except OSError:
        size = mtime_ns = None
    return ManifestRow(path.stem, path.relative_to(root).as_posix(), label, size, mtime_ns, TRANSFORM_VERSION)


def discover_images(
    data_path: str | Path,
    *,
    exclude: Path | None = None,
    class_map: str | Path | None = None,
    notice: Callable[[str], None] = print_notice,
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
    class_dirs = _class_folders(base, entries, classes, exclude, class_map, notice)
    found = _labelled_images(root, base, entries, class_dirs, classes)
    _refuse_shared_output_names(root, found)
    rows = [_source_row(root, path, label) for path, label in found]
    rows.sort(key=lambda row: row.stem)
    return rows


def _class_folders(
    base: Path,
    entries: list[os.DirEntry],
    classes: dict[str, int],
    exclude: Path | None,
    class_map: str | Path | None,
    notice: Callable[[str], None],
) -> list[Path]:
    """The folders among `entries` named by a class, sorted; the others but `exclude` are told to `notice`."""
    excluded = os.path.realpath(exclude) if exclude is not None else None
    folders = sorted(
        (
            Path(entry.path)
            for entry in entries
            if _is_dir(entry) and (entry.name in classes or os.path.realpath(entry.path) != excluded)
        ),
        key=lambda folder: folder.name,
    )
    others = [folder.name for folder in folders if folder.name not in classes]
    if others:
        what = "ILSVRC-2012 WordNet ids" if class_map is None else f"classes of {class_map}"
        notice(
            f"{base}: ignored {len(others)} folder(s) that are not {what}: {', '.join(others[:5])}"
            f"{', ...' if len(others) > 5 else ''}"
            + (" (another class set needs --class-map)" if class_map is None else "")
        )
    return [folder for folder in folders if folder.name in classes]


def _labelled_images(
    root: Path,
    base: Path,
    entries: list[os.DirEntry],
    class_dirs: list[Path],
    classes: dict[str, int],
) -> list[tuple[Path, int | None]]:
    """(image, label) of a flat folder (no labels) or of class folders; a folder holding both is an error."""
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
    return found


def _refuse_shared_output_names(root: Path, found: list[tuple[Path, int | None]]) -> None:
    """Two images whose outputs would get the same name (`result_key`) are an error naming both."""
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
