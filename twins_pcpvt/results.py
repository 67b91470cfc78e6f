"""Find and read inference results (ais_bench's layout, also our runner's) and the labels they are scored on.

An inference run writes one file per input image, `<input stem>_<output index>.<bin|npy|txt>`, into an output
folder `<--output>/<timestamp or --output_dirname>/`, with its summary JSON either beside that folder
(`<name>_summary.json`) or, in older ais_bench versions, inside it (`sumary.json`). A multi-device run writes
one subfolder per device into the output folder, with each device's summary beside it: `device<N>/` (ais_bench
2023, which splits the images between the devices) or `device<N>_<i>/` (ais_bench 2024, which splits them with
--divide_input and otherwise runs every image on every device). Split device folders are read as one result;
when every device folder holds the same images, the first is the result and every other device's copy is read
and checked against it (finite, cosine and largest difference within the fp32 compare preset, the difference
scaled by the scores' size): a device that disagrees is an error naming its folder and first differing file.
The output of a pure-inference run (`pure_infer_data_0.<fmt>`) is not an image's output and is ignored.

Outputs are BIN (raw little-endian float32), NPY (any float dtype, cast to float32) or TXT
(whitespace-separated decimals, `%f` in ais_bench). Each holds 1000 class scores, or 1001 for a model whose
class 0 is a background class.
"""

from __future__ import annotations

import errno
import math
import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .common import NUM_CLASSES, ToolkitError, quoted, read_text_file, shorten, usable_cpus
from .compare import PRESETS, TXT_RESOLUTION, row_statistics
from .data import (
    LIST_MAX_LINES,
    LIST_READ_LIMIT,
    MANIFEST_HEADER,
    MANIFEST_NAME,
    npy_header,
    read_manifest,
    result_key,
)

CLASS_COUNTS = (NUM_CLASSES, NUM_CLASSES + 1)
# matched whole (fullmatch), any character in the stem: whatever name an input had, its output is read
_OUTPUT_NAME = re.compile(
    r"(?P<stem>.+)_(?P<index>0|[1-9][0-9]*)\.(?P<fmt>bin|npy|txt)", re.IGNORECASE | re.DOTALL
)
_DEVICE_FOLDER = re.compile(r"^device[0-9]+(_[0-9]+)?$")
PURE_INFER_STEM = "pure_infer_data"  # ais_bench's name for the output of generated input
# Largest file read whole for the size check: 1001 float64 values plus an NPY header, with room to spare.
_READ_LIMIT = 16384
# Largest TXT output read: 1001 scores written with %f take at most 47 KB (float32's largest has 39 digits).
_TXT_READ_LIMIT = 2**20
# TXT parsing costs ~0.5 ms per file: at this many files and more it is spread over worker processes.
PARALLEL_TXT_MIN_FILES = 2000


@dataclass
class OutputSet:
    """The outputs of one inference run, one row per input image, rows in sorted stem order."""

    folder: Path
    stems: list[str]
    paths: list[str]  # plain strings: building 50,000 Path objects costs more than reading the files
    formats: list[str]  # 'bin' | 'npy' | 'txt' per row
    logits: np.ndarray  # float32 [images, classes]
    # files of the folder that are neither outputs nor JSON (summaries), reported as ignored
    ignored: list[str] = field(default_factory=list)

    @property
    def classes(self) -> int:
        return int(self.logits.shape[1])

    def as_dict(self) -> dict[str, np.ndarray]:
        return dict(zip(self.stems, self.logits, strict=True))


def _listing(folder: Path) -> list[tuple[os.DirEntry, str]]:
    """The visible entries of `folder` with their kind (`_entry_kind`)."""
    try:
        with os.scandir(folder) as entries:
            return [
                (entry, _entry_kind(folder, entry)) for entry in entries if not entry.name.startswith(".")
            ]
    except OSError as exc:
        raise ToolkitError(f"{folder}: cannot list the folder ({exc.strerror or exc})") from None


def _entry_kind(folder: Path, entry: os.DirEntry) -> str:
    """'file' or 'folder' (links followed), 'other' (a FIFO, socket, ...), or, for a link that leads nowhere
    or back up (a loop), what it is in words: such an entry is never read."""
    try:
        if entry.is_file():
            return "file"
        if entry.is_dir():
            if entry.is_symlink():
                real, above = os.path.realpath(entry.path), os.path.realpath(folder)
                if above == real or above.startswith(real.rstrip(os.sep) + os.sep):
                    return "a symbolic link to a folder above it (a loop)"
            return "folder"
    except OSError as exc:
        return "a symbolic link loop" if exc.errno == errno.ELOOP else f"unreadable ({exc.strerror or exc})"
    if entry.is_symlink() and not os.path.exists(entry.path):
        return "a broken symbolic link"
    return "other"


def _is_output(match: re.Match | None) -> bool:
    return match is not None and match["stem"] != PURE_INFER_STEM


def _output_entries(folder: Path) -> tuple[list[tuple[str, re.Match]], list[str]]:
    """(path, name match) of the files of `folder` named like outputs; the other visible files but JSON, and
    the links that lead nowhere (skipped, with why). An output that is such a link is an error."""
    outputs, others = [], []
    for entry, kind in _listing(folder):
        match = _OUTPUT_NAME.fullmatch(entry.name)
        if kind == "file":
            if _is_output(match):
                outputs.append((entry.path, match))
            elif match or not entry.name.lower().endswith(".json"):
                others.append(entry.path)
        elif kind not in ("folder", "other"):
            if _is_output(match):
                raise ToolkitError(f"{entry.path}: an output that is {kind}: it cannot be read")
            others.append(f"{entry.path} ({kind}: skipped)")
    return outputs, others


def _device_folders(folder: Path) -> list[Path]:
    try:
        entries = _listing(folder)
    except ToolkitError:
        return []
    return sorted(
        Path(entry.path)
        for entry, kind in entries
        if kind == "folder" and _DEVICE_FOLDER.fullmatch(entry.name)
    )


def _holds_outputs(folder: Path) -> bool:
    try:
        entries = _listing(folder)
    except ToolkitError:
        return False
    if any(kind == "file" and _is_output(_OUTPUT_NAME.fullmatch(entry.name)) for entry, kind in entries):
        return True
    return any(_holds_outputs(device) for device in _device_folders(folder))


def find_output_folder(path: str | os.PathLike) -> Path:
    """The output folder at `path`: `path` itself when it holds outputs, else its one subfolder that does.

    Errors when there is no such folder, or when several subfolders hold outputs (they are listed: pass one).
    """
    path = Path(path)
    if not path.exists():
        leads_nowhere = "a symbolic link that leads nowhere (broken, or a loop)"
        raise ToolkitError(f"{path}: {leads_nowhere if path.is_symlink() else 'no such folder'}")
    if not path.is_dir():
        raise ToolkitError(f"{path}: not a folder (expected an inference output folder or its parent)")
    if _holds_outputs(path):
        return path
    subfolders = sorted(Path(entry.path) for entry, kind in _listing(path) if kind == "folder")
    candidates = [sub for sub in subfolders if _holds_outputs(sub)]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise ToolkitError(
            f"{path}: no inference outputs (<input stem>_0.bin|npy|txt) in the folder or its subfolders: "
            "empty, or not an inference output folder"
        )
    listing = ", ".join(str(candidate) for candidate in candidates)
    raise ToolkitError(f"{path}: holds {len(candidates)} output folders; pass the one to read: {listing}")


def _read_head(path: str) -> bytes:
    """The first `_READ_LIMIT` bytes of `path` (all of an output of a valid size), by plain system calls."""
    try:
        handle = os.open(path, os.O_RDONLY)
        try:
            return os.read(handle, _READ_LIMIT)
        finally:
            os.close(handle)
    except OSError as exc:
        raise ToolkitError(f"{path}: cannot read ({exc.strerror or exc})") from exc


def _values_error(path: str, count: int, what: str) -> ToolkitError:
    hint = ""
    if count > 0 and count % NUM_CLASSES == 0 and count // NUM_CLASSES > 1:
        hint = (
            f" (looks like {count // NUM_CLASSES} images in one file: outputs must be split per input file)"
        )
    return ToolkitError(
        f"{path}: {what}: an output must hold {NUM_CLASSES} class scores "
        f"(or {NUM_CLASSES + 1} with a background class first){hint}"
    )


def _decode_bin(path: str, data: bytes) -> np.ndarray:
    if len(data) in (4 * count for count in CLASS_COUNTS):
        return np.frombuffer(data, "<f4")
    size = os.stat(path).st_size if len(data) == _READ_LIMIT else len(data)
    if size in (2 * count for count in CLASS_COUNTS):
        raise ToolkitError(
            f"{path}: {size} bytes, the size of {size // 2} float16 values: outputs must be "
            "float32 (convert the OM model with atc --output_type=FP32)"
        )
    if size % 4:
        raise ToolkitError(
            f"{path}: {size} bytes is not a whole number of float32 values (expected {4 * NUM_CLASSES} bytes)"
        )
    raise _values_error(path, size // 4, f"{size} bytes")


def _check_count(path: str, values: np.ndarray, what: str) -> np.ndarray:
    if values.size not in CLASS_COUNTS:
        raise _values_error(path, values.size, what)
    return values


_npy_headers: dict[bytes, tuple[np.dtype, tuple[int, ...], int]] = {}


def _decode_npy(path: str, data: bytes) -> np.ndarray:
    """Decode an NPY file's bytes; a header shared by many files is parsed once (np.load parses each)."""
    width = 2 if data[6:7] == b"\x01" else 4
    parsed = _npy_headers.get(data[: 8 + width + int.from_bytes(data[8 : 8 + width], "little")])
    if parsed is None:  # only headers that passed `npy_header` are kept
        parsed = npy_header(path, data)
        _npy_headers[data[: parsed[2]]] = parsed
    dtype, shape, start = parsed
    count = math.prod(shape)
    if dtype.kind != "f" or dtype.shape:
        raise ToolkitError(f"{path}: dtype {shorten(str(dtype), 100)}, outputs must be floating point")
    if count not in CLASS_COUNTS:
        raise _values_error(path, count, f"shape {shape}")
    payload = data[start:]
    if len(payload) != count * dtype.itemsize:
        size = os.stat(path).st_size if len(data) == _READ_LIMIT else len(data)
        raise ToolkitError(
            f"{path}: truncated or oversized NPY file (shape {shape}, {size - start:,} data bytes)"
        )
    return np.frombuffer(payload, dtype).astype(np.float32)


def _decode_txt(path: str, data: bytes) -> np.ndarray:
    try:
        values = np.array(data.split(), dtype=np.float32)
    except ValueError as exc:
        raise ToolkitError(f"{path}: not a text file of numbers ({exc})") from None
    return _check_count(path, values, f"{values.size} values")


def _read_txt(path: str) -> np.ndarray:
    try:
        with open(path, "rb") as handle:
            data = handle.read(_TXT_READ_LIMIT + 1)
            size = os.fstat(handle.fileno()).st_size
    except OSError as exc:
        raise ToolkitError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if len(data) > _TXT_READ_LIMIT:
        raise ToolkitError(
            f"{path}: {size:,} bytes, more than a text output of {NUM_CLASSES + 1} scores takes "
            f"({_TXT_READ_LIMIT:,}): not read"
        )
    return _decode_txt(path, data)


def _read_txt_chunk(paths: Sequence[str]) -> list[np.ndarray]:
    return [_read_txt(path) for path in paths]


def _read_matrix(paths: list[str], formats: list[str]) -> np.ndarray:
    """One float32 row per file; every file must hold as many class scores as the first one."""
    decoders: dict[str, Callable[[str, bytes], np.ndarray]] = {"bin": _decode_bin, "npy": _decode_npy}
    logits: np.ndarray | None = None
    first_row = 0  # the row whose class count sized the matrix, named when another row differs

    def store(row: int, values: np.ndarray) -> None:
        nonlocal logits, first_row
        if logits is None:
            logits, first_row = np.empty((len(paths), values.size), np.float32), row
        elif values.size != logits.shape[1]:
            raise ToolkitError(
                f"{paths[row]}: {values.size} class scores, but {paths[first_row]} has "
                f"{logits.shape[1]}: the outputs come from different models"
            )
        logits[row] = values

    txt_rows = []
    for row, (path, fmt) in enumerate(zip(paths, formats, strict=True)):
        if fmt == "txt":
            txt_rows.append(row)
        else:
            store(row, decoders[fmt](path, _read_head(path)))
    workers = min(usable_cpus(), 16)
    if len(txt_rows) >= PARALLEL_TXT_MIN_FILES and workers > 1:
        chunk = -(-len(txt_rows) // (workers * 4))
        parts = [txt_rows[start : start + chunk] for start in range(0, len(txt_rows), chunk)]
        with ProcessPoolExecutor(workers) as pool:
            chunks = pool.map(_read_txt_chunk, [[paths[row] for row in part] for part in parts])
            for part, values in zip(parts, chunks, strict=True):
                for row, array in zip(part, values, strict=True):
                    store(row, array)
    else:
        for row in txt_rows:
            store(row, _read_txt(paths[row]))
    assert logits is not None
    return logits


def _by_stem(files: list[tuple[str, re.Match]]) -> dict[str, tuple[str, str]]:
    """Stem -> (path, format) of output files; an output index other than 0 or a repeated stem is an error."""
    by_stem: dict[str, tuple[str, str]] = {}
    for file, match in files:
        if match["index"] != "0":
            raise ToolkitError(
                f"{file}: output index {match['index']}, but Twins-PCPVT-S has a single output (index 0)"
            )
        stem = match["stem"]
        if stem in by_stem:
            first, second = sorted((by_stem[stem][0], file))
            raise ToolkitError(f"{second}: duplicate output for {stem!r}, also in {first}")
        by_stem[stem] = (file, match["fmt"].lower())
    return by_stem


def _check_replica(device: Path, files: list[tuple[str, re.Match]], first: Path, result: OutputSet) -> None:
    """Every output of `device` must give the scores of the same image in `result` (another device's copy)."""
    by_stem = _by_stem(files)
    paths = [by_stem[stem][0] for stem in result.stems]
    formats = [by_stem[stem][1] for stem in result.stems]
    logits = _read_matrix(paths, formats)
    if logits.shape != result.logits.shape:
        raise ToolkitError(
            f"{paths[0]}: {logits.shape[1]} class scores, but {result.paths[0]} has {result.classes}"
        )
    preset = PRESETS["fp32"]
    rows = row_statistics(result.logits, logits)
    scale = np.maximum(1.0, np.abs(result.logits).max(axis=1))  # NaN rows: judged by exact equality below
    txt_sides = np.array([fmt == "txt" for fmt in result.formats]) + np.array(
        [fmt == "txt" for fmt in formats]
    )
    close = (rows["cosine"] >= preset.min_cosine) & (
        rows["max_abs"] <= preset.atol * scale + TXT_RESOLUTION * txt_sides
    )
    same = close | np.array(
        [
            not finite and np.array_equal(a, b, equal_nan=True)
            for finite, a, b in zip(rows["finite"], result.logits, logits, strict=True)
        ]
    )
    if not same.all():
        row = int(np.flatnonzero(~same)[0])
        reason = (
            "holds NaN or Inf"
            if not np.isfinite(logits[row]).all()
            else f"cosine {rows['cosine'][row]:.6f}, largest difference {rows['max_abs'][row]:.3g}"
        )
        raise ToolkitError(
            f"{device}: disagrees with {first} on the same images (every device ran every image): "
            f"{paths[row]}: {reason} against {result.paths[row]} ({int((~same).sum())} of {len(same)} differ)"
        )


def load_outputs(path: str | os.PathLike, *, allow_nonfinite: bool = False) -> OutputSet:
    """Read every output of the output folder at `path` (or of its one output subfolder) into a float32 array.

    Errors name the file: a duplicate stem (same image in two formats or two device folders), an output index
    other than 0 (the model has one output), a wrong size, mixed class counts, NaN or Inf (unless
    `allow_nonfinite`), a device's copy of the same images that differs from the first device's.
    """
    folder = find_output_folder(path)
    files, ignored = _output_entries(folder)
    devices = [(device, *_output_entries(device)) for device in _device_folders(folder)]
    stem_sets = {frozenset(match["stem"] for _, match in device_files) for _, device_files, _ in devices}
    replicas = []
    if len(devices) > 1 and not files and len(stem_sets) == 1:
        # every device ran every image (ais_bench 2024 without --divide_input): the first copy is the result
        replicas = devices[1:]
        devices = devices[:1]
    for _, device_files, device_ignored in devices:
        files += device_files
        ignored += device_ignored
    by_stem = _by_stem(files)
    if not by_stem:
        raise ToolkitError(f"{folder}: no inference outputs in the folder")
    stems = sorted(by_stem)
    paths = [by_stem[stem][0] for stem in stems]
    formats = [by_stem[stem][1] for stem in stems]
    logits = _read_matrix(paths, formats)
    if not allow_nonfinite:
        bad = np.flatnonzero(~np.isfinite(logits).all(axis=1))
        if bad.size:
            more = f" (and {bad.size - 1} other outputs)" if bad.size > 1 else ""
            raise ToolkitError(f"{paths[bad[0]]}: holds NaN or Inf{more}")
    result = OutputSet(folder, stems, paths, formats, logits)
    for device, device_files, device_ignored in replicas:
        _check_replica(device, device_files, devices[0][0], result)
        ignored += device_ignored
        ignored.append(f"{device} (same images as {devices[0][0]}; checked: the same scores)")
    result.ignored = sorted(ignored)
    return result


@dataclass(frozen=True)
class LabelSet:
    """Ground-truth class index (0-based) per image stem, with the line each came from for error messages."""

    source: Path
    labels: dict[str, int]
    lines: dict[str, int]

    def where(self, stem: str) -> str:
        return f"{self.source}:{self.lines[stem]}"


def _label_key(name: str) -> str:
    """The output name an image's outputs get (its file name up to the first dot), from a label file entry."""
    return result_key(name.replace("\\", "/").rsplit("/", 1)[-1])


def _clash(origin: str, name: str, first_name: str, first_line: int) -> ToolkitError:
    same = name == first_name
    key, name, first_name = shorten(_label_key(name), 300), shorten(name, 300), shorten(first_name, 300)
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
        stem = _label_key(fields[0])
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
