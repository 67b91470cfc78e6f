"""Find and read inference results (ais_bench's layout, also our runner's); `labels` reads what they are
scored on.

An inference run writes one file per input image, `<input stem>_<output index>.<bin|npy|txt>`, into an output
folder `<--output>/<timestamp or --output_dirname>/`, with its summary JSON either beside that folder
(`<name>_summary.json`) or, in older ais_bench versions, inside it (`sumary.json`). A multi-device run writes
one subfolder per device into the output folder, with each device's summary beside it: `device<N>/` (ais_bench
2023, which splits the images between the devices) or `device<N>_<i>/` (ais_bench 2024, which splits them with
--divide_input and otherwise runs every image on every device). Split device folders are read as one result;
when every device folder holds the same images, the first is the result and every other device's copy, a
duplicate, is read and checked against it (finite, cosine and largest difference within the fp32 bar, the
difference scaled by the scores' size): a device that disagrees is an error naming its folder and first
differing file. The output of a pure-inference run (`pure_infer_data_0.<fmt>`) is not an image's output and is
ignored.

Each device process of ais_bench takes its own time stamp, so one multi-device run may land in two or more
sibling time-stamp folders, each holding some of its device folders (`split_runs`). Sibling folders whose
device summaries record the same command line, whose device folders are disjoint and together are the devices
of that command line's `--device`, and whose time stamps lie within SPLIT_RUN_SECONDS, are one run: read whole
from their parent or from any one of them. A folder holding only part of the images of a run is never read
alone.

A folder this toolkit is still writing, or whose run stopped before its summary (its in-progress mark lies
beside it, see `common.unfinished`), is refused in one line. A folder without a summary (ais_bench's own carry
no mark) is read, with a note naming the missing summary.

Outputs are BIN (raw little-endian float32), NPY (any float dtype, cast to float32) or TXT
(whitespace-separated decimals, `%f` in ais_bench). Each holds 1000 class scores, or 1001 for a model whose
class 0 is a background class.
"""

from __future__ import annotations

import datetime
import errno
import json
import math
import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .common import (
    NUM_CLASSES,
    ToolkitError,
    read_regular_file,
    refuse_unfinished,
    result_inputs,
    shorten,
    unfinished,
    usable_cpus,
)
from .compare import TXT_RESOLUTION, row_statistics
from .data import npy_header
from .thresholds import BARS, lowest

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
# ais_bench's time-stamp folder names (time.strftime("%Y_%m_%d-%H_%M_%S")).
_TIMESTAMP_FORMAT = "%Y_%m_%d-%H_%M_%S"
# Each device process of ais_bench 2024 stamps its folder after loading the model: the parts of one split run
# lie seconds apart. Two runs of the same command line are told apart by their complete sets of devices.
SPLIT_RUN_SECONDS = 120
# A summary holds a few numbers per batch run: 64 MiB is millions of batches.
SUMMARY_LIMIT = 64 * 2**20


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
    notes: list[str] = field(default_factory=list)  # e.g. a missing summary
    # device folders holding the same images as the first one (checked: the same scores), read once
    duplicates: list[str] = field(default_factory=list)
    # the folders the run lies in: [folder], or the sibling time-stamp folders of one split run
    parts: list[Path] = field(default_factory=list)

    @property
    def classes(self) -> int:
        return int(self.logits.shape[1])

    @property
    def where(self) -> str:
        """The folder read, or the folders of a split run joined by ' + '."""
        return " + ".join(str(part) for part in self.parts or [self.folder])

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
    """The output folder at `path` (the first folder of a split run)."""
    return find_output_folders(path)[0]


def find_output_folders(path: str | os.PathLike) -> list[Path]:
    """The folders of the run at `path`: `path` itself when it holds outputs, else the one subfolder that
    does, or the sibling time-stamp folders of one split run (`split_runs`). A folder that holds part of a
    run is read together with the rest of its run beside it.

    Errors when there is no such folder, when several runs lie under `path` (they are listed: pass one),
    when `path` holds part of a run whose other folders are not beside it, or when the folder is unfinished
    (in progress, or its run stopped before its summary).
    """
    path = Path(path)
    if not path.exists():
        leads_nowhere = "a symbolic link that leads nowhere (broken, or a loop)"
        raise ToolkitError(f"{path}: {leads_nowhere if path.is_symlink() else 'no such folder'}")
    if not path.is_dir():
        raise ToolkitError(f"{path}: not a folder (expected an inference output folder or its parent)")
    _refuse_unfinished(path)
    if _has_direct_outputs(path):
        return [path]
    if _holds_outputs(path):
        part = _Part.of(path)
        if not part.incomplete:
            return [path]
        here = path.absolute()  # `.` has siblings too
        runs, _ = split_runs(_output_subfolders(here.parent))
        run = next((run for run in runs if here in run), None)
        if run is None:
            raise ToolkitError(f"{path}: {part.missing_text()}, and no sibling folder holds the rest")
        return run
    runs, partial = split_runs(_output_subfolders(path))
    if len(runs) == 1 and not partial:
        return runs[0]
    if not runs and not partial:
        raise ToolkitError(
            f"{path}: no inference outputs (<input stem>_0.bin|npy|txt) in the folder or its subfolders: "
            "empty, or not an inference output folder"
        )
    split = " (one run split over {} time-stamp folders: passing any of them reads all)"
    described = [" + ".join(map(str, run)) + (split.format(len(run)) if len(run) > 1 else "") for run in runs]
    incomplete = "; ".join(f"{part.folder}: {part.missing_text()}" for part in partial)
    if not runs:
        raise ToolkitError(f"{path}: no whole run in the folder ({incomplete})")
    folders = sum(map(len, runs)) + len(partial)
    counts = f"{folders} output folders" + (f" ({len(runs)} runs)" if folders != len(runs) else "")
    text = f"{path}: holds {counts}; pass the one to read: {', '.join(described)}"
    raise ToolkitError(text + (f"; not whole runs: {incomplete}" if incomplete else ""))


def _output_subfolders(path: Path) -> list[Path]:
    """The subfolders of `path` that hold outputs; an unfinished one is refused."""
    subfolders = sorted(Path(entry.path) for entry, kind in _listing(path) if kind == "folder")
    for sub in subfolders:
        if unfinished(sub):
            refuse_unfinished(sub)
    return [sub for sub in subfolders if _holds_outputs(sub)]


def read_summary(path: Path) -> dict:
    """A summary JSON of ais_bench or of our runner, read whole only below SUMMARY_LIMIT."""
    try:
        size = os.stat(path).st_size
    except OSError as exc:
        raise ToolkitError(f"{path}: cannot read the summary ({exc.strerror or exc})") from exc
    if size > SUMMARY_LIMIT:
        raise ToolkitError(f"{path}: {size:,} bytes, more than a summary holds ({SUMMARY_LIMIT:,})")
    try:
        document = json.loads(read_regular_file(path, "summary", limit=SUMMARY_LIMIT).decode("utf-8"))
    except ValueError as exc:
        raise ToolkitError(f"{path}: not a summary JSON ({exc})") from exc
    if not isinstance(document, dict):
        raise ToolkitError(f"{path}: not a summary JSON (a {type(document).__name__}, not an object)")
    return document


def flag_value(argv, *names: str) -> str | None:
    """The value of a flag in a command line recorded as a list (ais_bench's summary `args`), else None."""
    if not isinstance(argv, list):
        return None
    for index, item in enumerate(argv):
        item = str(item)
        for name in names:
            if item == name and index + 1 < len(argv):
                return str(argv[index + 1])
            if item.startswith(name + "="):
                return item.split("=", 1)[1]
    return None


def summary_files(folder: Path) -> list[Path]:
    """The summaries of an output folder that exist: beside it, inside it (older ais_bench), and each device
    folder's beside that folder."""
    candidates = [folder.parent / f"{folder.name}_summary.json", folder / "sumary.json"]
    candidates += [folder / f"{device.name}_summary.json" for device in _device_folders(folder)]
    return [candidate for candidate in candidates if candidate.is_file()]


def _expected_devices(args, names: set[str]) -> frozenset[str] | None:
    """The device folder names a multi-device command line writes (2023: device<N>; 2024 and our runner's
    --divide_input: device<N>_<i>), from its --device list; None when it names one device or none."""
    value = flag_value(args, "--device", "-d")
    if value is None or "," not in value:
        return None
    numbers = [item.strip().rpartition(":")[2] for item in value.split(",")]
    if not all(number.isdigit() for number in numbers):
        return None
    if any("_" in name for name in names):
        return frozenset(f"device{int(number)}_{index}" for index, number in enumerate(numbers))
    return frozenset(f"device{int(number)}" for number in numbers)


@dataclass(frozen=True)
class _Part:
    """An output folder as a possible part of a multi-device run: its device folders and what its device
    summaries say about the run."""

    folder: Path
    devices: frozenset[str]
    expected: frozenset[str] | None  # every device folder of the run, where the command line says
    args: tuple | None  # the command line the device summaries record (None: none, or they differ)
    stamp: datetime.datetime | None  # the folder name read as ais_bench's time stamp
    divided: bool  # the run split its images over the devices (else every device ran every image)

    @classmethod
    def of(cls, folder: Path) -> _Part:
        devices = frozenset(device.name for device in _device_folders(folder))
        recorded = set()
        for device in devices:
            summary = folder / f"{device}_summary.json"
            args = read_summary(summary).get("args") if summary.is_file() else None
            recorded.add(tuple(map(str, args)) if isinstance(args, list) else None)
        args = recorded.pop() if len(recorded) == 1 else None
        expected = None
        if args is not None and not _has_direct_outputs(folder):
            expected = _expected_devices(list(args), set(devices))
        try:
            stamp = datetime.datetime.strptime(folder.name, _TIMESTAMP_FORMAT)
        except ValueError:
            stamp = None
        # device<N>_<i> folders split the images only with --divide_input true (ais_bench 2024, our runner)
        divide = (flag_value(list(args or ()), "--divide_input") or "").lower()
        divided = not any("_" in name for name in devices) or divide in ("1", "true", "t", "y", "yes")
        return cls(folder, devices, expected, args, stamp, divided)

    @property
    def incomplete(self) -> bool:
        """Holds only some of the device folders its command line writes."""
        return self.expected is not None and self.devices < self.expected

    def missing_text(self) -> str:
        missing = ", ".join(sorted(self.expected - self.devices)) if self.expected else ""
        return (
            f"holds only {', '.join(sorted(self.devices))} of a run over --device "
            f"{flag_value(list(self.args or ()), '--device', '-d')} (its summaries' args), which split the "
            f"images over the devices; {missing} missing"
        )


def split_runs(folders: list[Path]) -> tuple[list[list[Path]], list[_Part]]:
    """The runs among sibling output `folders`: each whole folder is a run; folders holding part of a run are
    joined, in time-stamp order, with siblings of the same command line whose device folders are disjoint,
    until their device folders are the run's and within SPLIT_RUN_SECONDS of the first. A part that joins no
    whole run is still a run when every device ran every image; else it is returned apart, as (runs, parts
    that are no whole run)."""
    runs, pending, leftover = [], [], []
    for folder in folders:
        part = None if _has_direct_outputs(folder) else _Part.of(folder)
        if part is None or not part.incomplete:
            runs.append([folder])
        elif part.stamp is None:
            (leftover if part.divided else runs).append(part if part.divided else [folder])
        else:
            pending.append(part)
    pending.sort(key=lambda part: part.stamp)
    while pending:
        first, *rest = pending
        group, devices = [first], set(first.devices)
        for part in rest:
            if devices == first.expected:
                break
            if (
                part.args == first.args
                and not devices & part.devices
                and (part.stamp - first.stamp).total_seconds() <= SPLIT_RUN_SECONDS
            ):
                group.append(part)
                devices |= part.devices
        if devices == first.expected:
            runs.append(sorted(part.folder for part in group))
            pending = [part for part in rest if part not in group]
        else:
            (leftover if first.divided else runs).append(first if first.divided else [first.folder])
            pending = rest
    runs.sort()
    return runs, leftover


def _has_direct_outputs(folder: Path) -> bool:
    """Whether `folder` itself holds an output file (it is then no part of a multi-device run); stops at the
    first one."""
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                match = _OUTPUT_NAME.match(entry.name)
                if match and match["stem"] != PURE_INFER_STEM and not entry.name.startswith("."):
                    if entry.is_file():
                        return True
    except OSError:
        return False
    return False


def run_inputs(path: str | os.PathLike) -> tuple[list[Path], list[Path]]:
    """(files, folders) the run at `path` consists of (`common.result_inputs` of each of its folders)."""
    files, folders = [], []
    for part in find_output_folders(path):
        part_files, part_folders = result_inputs(part)
        files += part_files
        folders += part_folders
    return files, folders


def run_precision(folders: list[Path]) -> str | None:
    """The precision the run in `folders` ran at, as its summaries record it: our runner's `precision`, or
    `om` for ais_bench's own (whose command line names an .om model); the lowest where devices differ; None
    where no summary says."""
    recorded = []
    for folder in folders:
        for path in summary_files(folder):
            summary = read_summary(path)
            precision = summary.get("precision")
            if precision is None:
                model = flag_value(summary.get("args"), "--model", "-m")
                precision = "om" if model is not None and model.lower().endswith(".om") else None
            if precision is not None and precision not in BARS:
                raise ToolkitError(
                    f"{path}: records the precision {precision!r}, which has no bar ({', '.join(BARS)}): "
                    "give --preset"
                )
            recorded.append(precision)
    return lowest(*recorded)


def _refuse_unfinished(folder: Path) -> None:
    """Refuse an unfinished folder; a device folder is as finished as the run folder that holds it."""
    refuse_unfinished(folder)
    if _DEVICE_FOLDER.match(folder.name):
        refuse_unfinished(Path(os.path.abspath(folder)).parent)


def _missing_summaries(folder: Path, devices: list[Path]) -> list[str]:
    """Notes naming the summaries a finished run leaves that are missing: beside the folder (inside it for
    ais_bench 2023's `sumary.json`), or beside each device folder."""
    if not devices:
        devices = [] if (folder / "sumary.json").is_file() else [Path(os.path.abspath(folder))]
    expected = [device.parent / f"{device.name}_summary.json" for device in devices]
    return [
        f"{summary}: no summary, so nothing shows that its run finished (a run that stopped early leaves "
        "only part of its outputs)"
        for summary in expected
        if not summary.is_file()
    ]


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
    preset = BARS["fp32"]
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
    """Read every output of the run at `path` (its output folder, its one output subfolder, or the folders of
    one split run: `find_output_folders`) into a float32 array.

    Errors name the file: a duplicate stem (same image in two formats or two device folders), an output index
    other than 0 (the model has one output), a wrong size, mixed class counts, NaN or Inf (unless
    `allow_nonfinite`), a device's copy of the same images that differs from the first device's.
    """
    parts = find_output_folders(path)
    folder = parts[0]
    files, ignored = _output_entries(folder)
    device_folders = sorted(
        (device for part in parts for device in _device_folders(part)), key=lambda device: device.name
    )
    notes = _missing_summaries(folder, device_folders)
    devices = [(device, *_output_entries(device)) for device in device_folders]
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
    result = OutputSet(folder, stems, paths, formats, logits, notes=notes, parts=parts)
    for device, device_files, device_ignored in replicas:
        _check_replica(device, device_files, devices[0][0], result)
        ignored += device_ignored
        result.duplicates.append(str(device))
    result.ignored = sorted(ignored)
    return result
