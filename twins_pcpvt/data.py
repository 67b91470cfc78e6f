"""Dataset side of the flow: the reference transform, image discovery, tensor files and the preprocess manifest.

Manifest format (`<prep_dataset>/manifest.tsv`, UTF-8, tab-separated, one header line):

    stem<TAB>source<TAB>label
    ILSVRC2012_val_00000001<TAB>val/n01751748/ILSVRC2012_val_00000001.JPEG<TAB>65

`source` is relative to `--data_path`; `label` is the class index (0-based) when the dataset layout gives one
(class folders), otherwise empty. Rows are in the sorted processing order.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from .common import ToolkitError, atomic_writer

MANIFEST_NAME = "manifest.tsv"
MANIFEST_HEADER = ("stem", "source", "label")


@dataclass(frozen=True)
class ManifestRow:
    stem: str
    source: str
    label: int | None


def write_manifest(prep_dir: str | Path, rows: list[ManifestRow]) -> Path:
    path = Path(prep_dir) / MANIFEST_NAME
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(MANIFEST_HEADER)
    for row in rows:
        writer.writerow((row.stem, row.source, "" if row.label is None else row.label))
    with atomic_writer(path, "w") as handle:
        handle.write(buffer.getvalue())
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
