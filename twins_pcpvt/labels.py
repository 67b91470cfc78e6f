"""The labels results are scored on: a `val_label.txt`-style label file or a preprocess manifest.

A label file holds `<image file name> <class index>` per line (`ILSVRC2012_val_00000001.JPEG 65`); a manifest
gives the label of each image that came from a class folder. Either way an image's label is matched to its
outputs by the output-name rule (`data.result_key`): two entries with the same output name are an error naming
both lines.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .common import ToolkitError, quoted, read_text_file, shorten
from .data import LIST_MAX_LINES, LIST_READ_LIMIT, MANIFEST_HEADER, MANIFEST_NAME, read_manifest, result_key


@dataclass(frozen=True)
class LabelSet:
    """Ground-truth class index (0-based) per image stem, with the line each came from for error messages."""

    source: Path
    labels: dict[str, int]
    lines: dict[str, int]

    def where(self, stem: str) -> str:
        return f"{self.source}:{self.lines[stem]}"


def _file_name(entry: str) -> str:
    """The file name a label file's entry names, without the folders before it (`/` or `\\`)."""
    return entry.replace("\\", "/").rsplit("/", 1)[-1]


def _clash(origin: str, name: str, first_name: str, first_line: int) -> ToolkitError:
    same = name == first_name
    key = shorten(result_key(_file_name(name)), 300)
    name, first_name = shorten(name, 300), shorten(first_name, 300)
    if same:
        return ToolkitError(f"{origin}: {name} is listed twice (first on line {first_line})")
    return ToolkitError(
        f"{origin}: {name} gets the same output name {key!r} as {first_name} on line "
        f"{first_line} (ais_bench names outputs by the file name up to its first dot)"
    )


def _read_label_file(path: Path) -> LabelSet:
    text = read_text_file(path, "label file", limit=LIST_READ_LIMIT, max_lines=LIST_MAX_LINES)
    labels: dict[str, int] = {}
    lines: dict[str, int] = {}
    names: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not (fields[1].isascii() and fields[1].isdigit()):
            raise ToolkitError(
                f"{path}:{number}: malformed label line {quoted(line)} "
                "(expected '<image file name> <class index>', e.g. 'ILSVRC2012_val_00000001.JPEG 65')"
            )
        stem = result_key(_file_name(fields[0]))
        if stem in labels:
            raise _clash(f"{path}:{number}", fields[0], names[stem], lines[stem])
        names[stem] = fields[0]
        labels[stem] = int(fields[1])
        lines[stem] = number
    if not labels:
        raise ToolkitError(f"{path}: no labels in the file")
    return LabelSet(path, labels, lines)


def _read_manifest_labels(path: Path) -> LabelSet:
    rows = read_manifest(path)
    labels: dict[str, int] = {}
    lines: dict[str, int] = {}
    stems: dict[str, str] = {}
    for number, row in enumerate(rows, start=2):
        key = result_key(row.stem)
        if key in lines:
            raise _clash(f"{path}:{number}", row.stem, stems[key], lines[key])
        lines[key], stems[key] = number, row.stem
        if row.label is not None:
            labels[key] = row.label
    if not labels:
        raise ToolkitError(
            f"{path}: the manifest holds no labels (the images were not in class folders): "
            "pass val_label.txt as --annotation-file-path"
        )
    return LabelSet(path, labels, lines)


def read_labels(path: str | os.PathLike) -> LabelSet:
    """Labels from a `val_label.txt`-style file (`<image name> <class>` per line), a preprocess manifest, or a
    preprocess folder holding `manifest.tsv`. A manifest is recognised by its header line, whatever its
    name."""
    path = Path(path)
    if path.is_dir():
        manifest = path / MANIFEST_NAME
        if not manifest.is_file():
            raise ToolkitError(
                f"{path}: a folder without {MANIFEST_NAME}; pass a label file such as val_label.txt "
                "or the preprocess output folder"
            )
        return _read_manifest_labels(manifest)
    if not path.is_file():
        raise ToolkitError(f"{path}: no such label file")
    try:
        with open(path, "rb") as handle:
            first_line = handle.readline(4096).decode("utf-8", errors="replace").rstrip("\r\n")
    except OSError as exc:
        raise ToolkitError(f"{path}: cannot read the label file ({exc.strerror or exc})") from exc
    if tuple(first_line.split("\t"))[:3] == MANIFEST_HEADER[:3]:  # three columns before provenance
        return _read_manifest_labels(path)
    return _read_label_file(path)
