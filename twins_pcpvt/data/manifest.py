"""The preprocess manifest: one row per tensor, with the provenance that decides whether a rerun may keep it.

Format (`<prep_dataset>/manifest.tsv`, UTF-8, tab-separated, one header line):

    stem<TAB>source<TAB>label<TAB>size<TAB>mtime_ns<TAB>transform
    ILSVRC2012_val_00000001<TAB>val/n01751748/ILSVRC2012_val_00000001.JPEG<TAB>65<TAB>109527<TAB>1354...<TAB>...

`source` is relative to `--data_path`; `label` is the class index (0-based) when the dataset layout gives one
(class folders), otherwise empty; `size` and `mtime_ns` are the source file's size and modification time, and
`transform` names the transform version that made the tensor: together the provenance that decides whether a
rerun may keep a `.bin`. Rows are in the sorted processing order. File names that are not valid UTF-8 are kept
byte for byte (Python's surrogateescape). A manifest of the first format (the first three columns) is still
read; its tensors have no provenance and are redone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..common import ToolkitError, atomic_write_bytes, quoted, read_text_file, shorten

MANIFEST_NAME = "manifest.tsv"
MANIFEST_HEADER = ("stem", "source", "label", "size", "mtime_ns", "transform")
_FIRST_MANIFEST_HEADER = MANIFEST_HEADER[:3]
_NAME_ENCODING = ("utf-8", "surrogateescape")
# Manifests, label files and class maps: read whole, so bounded first. 2 million rows hold ImageNet's training
# set (1.28 million images); a manifest row takes about 150 bytes.
LIST_READ_LIMIT = 256 * 2**20
LIST_MAX_LINES = 2_000_000


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
