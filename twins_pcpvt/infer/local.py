"""Inference over a folder of tensors, or on generated data, with ais_bench's outputs and summary.

Folder mode: the `.bin`/`.npy` files of `--input` (folders are not searched recursively; files are taken in
natural sort order, as ais_bench takes them) are grouped `--batchsize` at a time, the last batch padded by
repeating its first file. One output per real input is written to `<output>/<name>/<input stem>_0.<fmt>`,
where <name> is `--output_dirname` or the start time `YYYY_MM_DD-HH_MM_SS` and <input stem> is the file
name up
to its first dot (as ais_bench names them), and the summary to `<output>/<name>_summary.json`. A reader thread
loads the next batches while the model runs and a writer thread saves results behind it. Every file is written
under a temporary name and renamed when complete, so an interrupted run leaves only whole files.

Pure-inference mode (no `--input`): `--loop` runs of one batch of generated data (zeros, or random bytes with
`--pure_data_type random`, as ais_bench makes them); the last output is saved as `pure_infer_data_0.<fmt>`.

Several devices (`--device 0,1`, `cuda:0,cuda:1`): one worker process per device, the inputs split between
them
and each device's outputs and summary written in ais_bench's multi-device layout (see `device_plan`).

Throughput is ais_bench's: 1000 * batch size / mean compute time in ms, the model alone. The summary also
holds the end-to-end rate of folder mode: real images per second from the first read to the last write.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import math
import multiprocessing
import os
import queue
import re
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .backends import check_model_file, check_runner, create_runner
from .backends.base import PERCENTILE, Runner, pad_batch, time_stats
from .common import (
    INPUT_BYTES,
    INPUT_SHAPE,
    NUM_CLASSES,
    RUNNING_SUFFIX,
    ToolkitError,
    UsageError,
    atomic_writer,
    beside,
    check_output_file,
    init_worker,
    lock_folder,
    mark_finished,
    mark_running,
    refuse_unfinished,
    release_folder,
    remove_temporaries,
    shorten,
    stop_pool,
    temporary_target,
    worker_task,
)
from .data import NPY_HEAD_BYTES, npy_header, result_key
from .report import write_json

INPUT_SUFFIXES = (".bin", ".npy")
OUTPUT_FORMATS = ("BIN", "NPY", "TXT")
PURE_INFER_NAME = "pure_infer_data"  # ais_bench's name for generated input
READ_AHEAD_BATCHES = 3
TIME_NAME = "%Y_%m_%d-%H_%M_%S"  # ais_bench's output folder name without --output_dirname
WRITE_BEHIND_BATCHES = 4
LISTED_RECOMPUTED = 10  # recomputed batches the console names; the summary holds them all


# ---- inputs ------------------------------------------------------------------------------------------------
def _natural_key(path: Path) -> list:
    """ais_bench's natural order: runs of ASCII digits compare as numbers, the text between them lower-cased.
    Only ASCII digits count (ais_bench's `[0-9]+`): `²1.bin` or `١٢.bin` sort as text, never as int()."""
    parts = re.split("([0-9]+)", path.name)
    return [int(part) if index % 2 else part.lower() for index, part in enumerate(parts)]


def output_stem(path: Path) -> str:
    """The name ais_bench gives an input's outputs: the file name up to its first dot (`a.b.bin` -> `a`)."""
    return result_key(path.name)


def output_path(folder: Path, source: Path, fmt: str) -> Path:
    """Where the output of input file `source` goes: `<folder>/<output stem>_0.<fmt>`."""
    return folder / f"{output_stem(source)}_0.{fmt.lower()}"


def collect_input_files(spec: str) -> list[Path]:
    """The files named by `--input`: comma-separated folders (their .bin/.npy files) and files, in order."""
    if "," in spec and os.path.lexists(spec):
        raise UsageError(
            f"--input {spec}: the name holds a comma, but --input is a comma-separated list (as in "
            "ais_bench): rename it, or link it under a name without one"
        )
    files: list[Path] = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        path = Path(item)
        if path.is_dir():
            refuse_unfinished(path)  # a preprocess still writing it, or stopped before its manifest
            found = sorted(
                (p for p in path.iterdir() if p.suffix.lower() in INPUT_SUFFIXES and p.is_file()),
                key=_natural_key,
            )
            if not found:
                raise ToolkitError(f"{path}: no .bin or .npy input files in the folder")
            files.extend(found)
        elif path.is_file():
            if path.suffix.lower() not in INPUT_SUFFIXES:
                raise ToolkitError(f"{path}: not an input tensor file (expected .bin or .npy)")
            files.append(path)
        else:
            raise ToolkitError(f"{path}: input folder or file not found")
    if not files:
        raise UsageError(f"--input {spec!r} names no folder or file")
    seen: dict[str, Path] = {}
    for path in files:
        stem = output_stem(path)
        if not stem:
            raise ToolkitError(f"{path}: the name starts with a dot, so its output would have no name")
        if stem in seen:
            raise ToolkitError(
                f"{path}: its outputs would be named {stem}_0 like those of {seen[stem]} "
                "(ais_bench names outputs after the file name up to its first dot)"
            )
        seen[stem] = path
    return files


def check_input_file(path: Path) -> None:
    """Fail, naming the file, unless it holds one whole float32 [3, 224, 224] tensor (raw .bin, or .npy)."""
    try:
        size = path.stat().st_size
        if path.suffix.lower() == ".bin":
            if size != INPUT_BYTES:
                raise ToolkitError(
                    f"{path}: {size} bytes, expected {INPUT_BYTES} "
                    "(one float32 3x224x224 tensor, as the preprocess writes)"
                )
            return
        with open(path, "rb") as handle:
            head = handle.read(NPY_HEAD_BYTES)
        dtype, shape, data_offset = npy_header(path, head)
    except OSError as exc:
        raise ToolkitError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if dtype.kind != "f" or dtype.itemsize != 4 or dtype.shape:
        raise ToolkitError(f"{path}: dtype {shorten(str(dtype), 100)}, expected float32")
    if tuple(shape) not in (INPUT_SHAPE, (1, *INPUT_SHAPE)):
        raise ToolkitError(f"{path}: shape {tuple(shape)}, expected {INPUT_SHAPE} or {(1, *INPUT_SHAPE)}")
    if size - data_offset != INPUT_BYTES:
        raise ToolkitError(
            f"{path}: truncated or padded .npy file ({size - data_offset} data bytes after the header, "
            f"{INPUT_BYTES} expected for its shape)"
        )


def read_input(path: Path, out: np.ndarray) -> None:
    """Read one input tensor into `out` (a float32 [3, 224, 224] view)."""
    if path.suffix.lower() == ".bin":
        try:
            with open(path, "rb") as handle:
                complete = handle.readinto(memoryview(out).cast("B")) == INPUT_BYTES
        except OSError as exc:
            raise ToolkitError(
                f"{path}: cannot read the tensor ({exc.strerror or exc}; did it change during the run?)"
            ) from None
        if not complete:
            raise ToolkitError(f"{path}: shorter than {INPUT_BYTES} bytes (did it change during the run?)")
        return
    try:
        out[...] = np.load(path, allow_pickle=False).reshape(INPUT_SHAPE)
    except (ValueError, OSError, EOFError) as exc:
        raise ToolkitError(f"{path}: cannot read the tensor ({exc}; did it change during the run?)") from None


def available_memory_bytes() -> int | None:
    """Memory this process may still take: MemAvailable, lowered by an address-space limit; None if
    unknown."""
    limits = []
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    limits.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            limits.append(soft)
    except (ImportError, OSError, ValueError):
        pass
    return min(limits) if limits else None


def check_batch_memory(batch_size: int, model: str | os.PathLike, buffers: int) -> None:
    """Refuse, before allocating, a batch whose `buffers` input copies do not fit in the memory left."""
    needed = batch_size * INPUT_BYTES * buffers
    available = available_memory_bytes()
    if available is not None and needed > available:
        raise ToolkitError(
            f"{model}: --batchsize {batch_size} needs {needed / 2**30:.1f} GiB for its input batches, "
            f"more than the {available / 2**30:.1f} GiB of memory available: use a smaller batch size"
        )


def pure_input(batch_size: int, data_type: str) -> np.ndarray:
    """ais_bench's generated input: the input's bytes all zero, or each a random value 0..255 (`random`)."""
    if data_type == "random":
        raw = np.random.default_rng().integers(0, 256, batch_size * INPUT_BYTES, dtype=np.uint8)
    else:
        raw = np.zeros(batch_size * INPUT_BYTES, np.uint8)
    return raw.view("<f4").reshape(batch_size, *INPUT_SHAPE)


# ---- outputs -----------------------------------------------------------------------------------------------
def write_output(path: Path, logits: np.ndarray, fmt: str) -> None:
    """Write logits as ais_bench does: raw float32, a [rows, 1000] .npy, or a line of `%f ` values per row."""
    rows = np.asarray(logits, dtype="<f4").reshape(-1, NUM_CLASSES)
    if fmt == "BIN":
        with atomic_writer(path) as handle:
            handle.write(rows.tobytes())
    elif fmt == "NPY":
        with atomic_writer(path) as handle:
            np.save(handle, rows)
    else:
        with atomic_writer(path, "w") as handle:
            for row in rows:
                handle.write("".join(f"{value:f} " for value in row.tolist()) + "\n")


# An earlier run's outputs, device folders and their summaries, and the Ray engine's record of a job; matched
# whole (fullmatch): any character in an input's name
_EARLIER_OUTPUT = re.compile(
    r".+_(0|[1-9][0-9]*)\.(bin|npy|txt)|device[0-9]+(_[0-9]+)?(_summary\.json)?|\.ray_job\.json", re.DOTALL
)


# Beside every output folder the runner makes (`.<name>` + this): only a folder with its mark is ever emptied.
# It sits outside the folder, so the folder holds exactly what ais_bench would write.
OUTPUT_MARK = ".twins_pcpvt_outputs"


def _is_earlier_output(entry: os.DirEntry) -> bool:
    """A file or device folder of an earlier run of this tool, or a temporary file a killed run left for one,
    by its name (folders: recursively)."""
    if not _EARLIER_OUTPUT.fullmatch(temporary_target(entry.name) or entry.name) or entry.is_symlink():
        return False
    if entry.is_dir():
        with os.scandir(entry.path) as inner:
            return all(_is_earlier_output(item) for item in inner)
    return entry.is_file()


def _remove_earlier_outputs(folder: Path) -> int:
    removed = 0
    for entry in list(os.scandir(folder)):
        if entry.is_dir(follow_symlinks=False):
            removed += _remove_earlier_outputs(Path(entry.path))
            os.rmdir(entry.path)
        else:
            os.unlink(entry.path)
            removed += 1
    return removed


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_output_names(output: str | None, dirname: str | None) -> None:
    """An empty `--output`, or an `--output_dirname` that is empty, a path or `.`/`..`, is a usage error."""
    if output is not None and not output:
        raise UsageError("--output '': give the folder to write into (. for this one)")
    if dirname is not None and (Path(dirname).name != dirname or dirname in ("", ".", "..")):
        raise UsageError(f"--output_dirname {dirname!r} must be a plain folder name")


def _refuse_mixing_with_inputs(folder: Path, inputs: Sequence[Path]) -> None:
    resolved = folder.resolve()
    for source in inputs:
        source_folder = source.resolve()
        if source.is_dir() and _inside(resolved, source_folder):
            raise UsageError(
                f"{folder}: the output folder is, or is inside, the input folder {source_folder}: "
                "outputs would mix with the inputs (choose another --output)"
            )
        if not source.is_dir() and source_folder.parent == resolved:
            raise UsageError(
                f"{folder}: the output folder holds the input file {source}: outputs would mix with the "
                "inputs (choose another --output_dirname)"
            )


def new_output_name(root: Path) -> str:
    """A folder name of its own for a run without --output_dirname: the start time `YYYY_MM_DD-HH_MM_SS`, or,
    when a run of the same second has taken it, the first free `<time>_<n>`. The folder is created here (its
    creation is the claim) and locked."""
    stamp = time.strftime(TIME_NAME)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ToolkitError(f"{root}: cannot create the output folder ({exc.strerror or exc})") from exc
    for index in range(10000):
        name = f"{stamp}_{index}" if index else stamp
        folder = root / name
        if os.path.lexists(root / f"{name}_summary.json") or os.path.lexists(beside(folder, RUNNING_SUFFIX)):
            continue
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        except OSError as exc:
            raise ToolkitError(f"{folder}: cannot create the output folder ({exc.strerror or exc})") from exc
        try:
            lock_folder(folder)
        except ToolkitError:  # a run given this name as --output_dirname holds it: it may use the folder
            continue
        return name
    raise ToolkitError(f"{root}: no free output folder name for {stamp}")


def resume_command(command_line: Sequence[str], name: str) -> list[str]:
    """The command that resumes or redoes a run into the folder `name`: its own, naming the folder."""
    command = [str(part) for part in command_line]
    if command and command[0].endswith(".py"):
        command.insert(0, "python3")
    if not any(part == "--output_dirname" or part.startswith("--output_dirname=") for part in command):
        command += ["--output_dirname", name]
    return command


def prepare_output(
    output: str | None, dirname: str | None, inputs: Sequence[Path] = (), command_line: Sequence[str] = ()
) -> tuple[Path | None, Path | None]:
    """(folder for the outputs, summary path), both None without `--output`; checked before anything runs.

    The folder is locked for this process (a folder another run holds is refused at once) and marked in
    progress until `finish_output`. Without `dirname` it gets a new folder of its own (`new_output_name`).
    An output folder that is, or is inside, an input folder, or that holds an input file, is refused. An
    existing output folder that this runner made (it has its OUTPUT_MARK) and that holds only the files of an
    earlier run (outputs, device folders, their summaries, temporary files of a killed run) is emptied with a
    notice; any other non-empty folder is refused. The folder is created here, with its mark, and the earlier
    run's summary is removed.
    """
    if output is None:
        if dirname is not None:
            raise UsageError("--output_dirname cannot be used alone: give --output too")
        return None, None
    root = Path(output)
    if root.exists() and not root.is_dir():
        raise ToolkitError(f"{root}: --output is a file, not a folder")
    check_output_names(output, dirname)
    _refuse_mixing_with_inputs(root / (dirname or time.strftime(TIME_NAME)), inputs)
    made_root = not root.exists()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ToolkitError(f"{root}: cannot create the output folder ({exc.strerror or exc})") from exc
    try:
        name = dirname or new_output_name(root)
        folder = root / name
        lock = lock_folder(folder)
        try:
            _refuse_mixing_with_inputs(folder, inputs)
            summary, earlier = _earlier_run(root, folder, name)
            mark_running(folder, resume_command(command_line, name))  # before anything is removed
            _remove_earlier_run(folder, summary, earlier)
            folder.mkdir(exist_ok=True)
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
            handle = os.open(output_mark(folder), flags, 0o666)
            with os.fdopen(handle, "w") as writer:
                writer.write("made --output" if made_root else "")
        except OSError as exc:
            lock.release()
            raise ToolkitError(f"{folder}: cannot create the output folder ({exc.strerror or exc})") from exc
        except BaseException:
            if dirname is None:
                discard_if_empty(folder)
            lock.release()
            raise
    except BaseException:
        if made_root:
            with contextlib.suppress(OSError):
                root.rmdir()
        raise
    return folder, summary


def _earlier_run(root: Path, folder: Path, name: str) -> tuple[Path, bool]:
    """(summary path, whether the folder holds an earlier run's files to remove); refuses anything else."""
    summary = root / f"{name}_summary.json"
    check_output_file(summary, probe=True)  # a link, FIFO... there: refused now, not after the run
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise ToolkitError(f"{folder}: the output folder path is taken by a file or a link")
    if not folder.is_dir():
        return summary, False
    with os.scandir(folder) as entries:
        contents = list(entries)
    if contents and (not output_mark(folder).is_file() or not all(map(_is_earlier_output, contents))):
        raise ToolkitError(
            f"{folder}: the output folder exists and holds files this runner did not write: "
            "choose another --output_dirname or empty it"
        )
    return summary, bool(contents)


def _remove_earlier_run(folder: Path, summary: Path, earlier: bool) -> None:
    """Remove the earlier run's outputs, then its summary, and temporary files of a killed one beside them."""
    try:
        removed = _remove_earlier_outputs(folder) if earlier else 0
        if summary.is_file():
            summary.unlink()
    except OSError as exc:
        raise ToolkitError(f"{folder}: cannot remove the earlier outputs ({exc.strerror or exc})") from exc
    remove_temporaries(folder.parent, {summary.name, beside(folder, RUNNING_SUFFIX).name})
    if earlier:
        print(f"[INFO] {folder}: removed the {removed} files of an earlier run", file=sys.stderr)


def finish_output(folder: Path | None) -> None:
    """The run's summary is written: the folder is complete (its in-progress mark goes) and released."""
    if folder is not None:
        mark_finished(folder)
        release_folder(folder)


def discard_if_empty(folder: Path | None) -> None:
    """Remove an output folder that a failed run left empty, with its marks: nothing half-made stays."""
    if folder is None:
        return
    mark = output_mark(folder)
    with contextlib.suppress(OSError):
        folder.rmdir()  # fails, and keeps everything, unless the folder is empty
        mark_finished(folder)
        release_folder(folder)
        made_root = mark.read_text() == "made --output"
        mark.unlink()
        if made_root:
            folder.parent.rmdir()  # only if empty


def output_mark(folder: Path) -> Path:
    return beside(folder, OUTPUT_MARK)


@dataclass
class RunRecord:
    """What one run measured; `summary()` turns it into ais_bench's JSON plus our fields."""

    batch_size: int
    compute_ms: list[float] = field(default_factory=list)
    h2d_ms: list[float] = field(default_factory=list)
    d2h_ms: list[float] = field(default_factory=list)
    filesinfo: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    images: int = 0
    padded: int = 0
    wall_s: float = 0.0
    recomputed: list[str] = field(default_factory=list)  # why each recomputed batch was run again

    def add(self, runner: Runner) -> None:
        self.compute_ms.append(runner.last_compute_ms)
        if runner.last_h2d_ms is not None:
            self.h2d_ms.append(runner.last_h2d_ms)
        if runner.last_d2h_ms is not None:
            self.d2h_ms.append(runner.last_d2h_ms)

    @property
    def throughput(self) -> float:
        mean = float(np.mean(self.compute_ms)) if self.compute_ms else 0.0
        return 1000.0 * self.batch_size / mean if mean else 0.0

    def summary(self, runner: Runner, argv: list[str]) -> dict:
        """ais_bench's summary (`args` is the command line as a list), then this runner's own fields."""
        info: dict[str, object] = {"filesinfo": self.filesinfo, "args": list(argv)}
        info["NPU_compute_time"] = time_stats(self.compute_ms)
        info["H2D_latency"] = time_stats(self.h2d_ms)
        info["D2H_latency"] = time_stats(self.d2h_ms)
        info["throughput"] = self.throughput
        info["npu_compute_time_list"] = self.compute_ms
        info["pid"] = os.getpid()
        info.update(runner.describe())
        info["model"] = str(runner.model_path)
        info["batchsize"] = self.batch_size
        info["images"] = self.images
        info["padded_images"] = self.padded
        info["recomputed_batches"] = len(self.recomputed)
        info["recomputed"] = self.recomputed
        if self.wall_s:
            info["end_to_end_seconds"] = self.wall_s
            info["end_to_end_images_per_second"] = self.images / self.wall_s
        return info

    def report_lines(self, runner: Runner, display_all: bool = False) -> list[str]:
        """ais_bench's performance summary (H2D/D2H with `display_all`), then what ran and the end-to-end
        rate."""

        def line(label: str, times: list[float]) -> str:
            stats = time_stats(times)
            tail = stats[f"percentile({PERCENTILE}%)"]
            return (
                f"[INFO] {label} (ms): min = {stats['min']}, max = {stats['max']}, mean = {stats['mean']}, "
                f"median = {stats['median']}, percentile({PERCENTILE}%) = {tail}"
            )

        lines = ["[INFO] -----------------Performance Summary------------------"]
        if display_all:
            lines.append(line("H2D_latency", self.h2d_ms))
        lines.append(line("NPU_compute_time", self.compute_ms))
        if display_all:
            lines.append(line("D2H_latency", self.d2h_ms))
        mean = time_stats(self.compute_ms)["mean"]
        lines.append(
            f"[INFO] throughput 1000*batchsize.mean({self.batch_size})/NPU_compute_time.mean({mean}): "
            f"{self.throughput}"
        )
        lines.append("[INFO] ------------------------------------------------------")
        ran = runner.describe()
        lines.append(
            f"[INFO] backend {ran['backend']} on {ran['device']}, precision {ran['precision']}, "
            f"model {runner.model_path}"
        )
        if self.wall_s:
            lines.append(
                f"[INFO] end to end: {self.images} images in {self.wall_s:.3f} s = "
                f"{self.images / self.wall_s:.2f} images/s (reading, inference and writing)"
            )
        level = "WARN" if self.recomputed else "INFO"
        lines.append(f"[{level}] batches recomputed after non-finite logits: {len(self.recomputed)}")
        lines.extend(f"[WARN]   {reason}" for reason in self.recomputed[:LISTED_RECOMPUTED])
        if len(self.recomputed) > LISTED_RECOMPUTED:
            lines.append(f"[WARN]   and {len(self.recomputed) - LISTED_RECOMPUTED} more (in the summary)")
        return lines


# ---- the two modes -----------------------------------------------------------------------------------------
def _batches(files: list[Path], batch_size: int) -> list[list[Path]]:
    return [files[start : start + batch_size] for start in range(0, len(files), batch_size)]


def pad_batch_names(names: Sequence, size: int) -> list:
    """The names of a batch padded by `pad_batch`: the first one repeated up to `size`."""
    return [*names, *[names[0]] * (size - len(names))]


def _read_ahead(
    groups: list[list[Path]], batch_size: int, stop: threading.Event
) -> Iterator[tuple[list[Path], np.ndarray]]:
    """Yield (files, padded batch) while a thread reads the following batches."""
    ready: queue.Queue = queue.Queue(maxsize=READ_AHEAD_BATCHES)

    def offer(item) -> bool:
        """Queue `item` unless the consumer has stopped; False when it has."""
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def reader() -> None:
        try:
            for group in groups:
                batch = np.empty((len(group), *INPUT_SHAPE), dtype=np.float32)
                for row, path in zip(batch, group, strict=True):
                    read_input(path, row)
                if not offer((group, pad_batch(batch, batch_size))):
                    return
        except BaseException as exc:  # handed to the consumer, which raises it
            offer(exc)
            return
        offer(None)

    thread = threading.Thread(target=reader, name="input-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


class _Writer:
    """Writes outputs on a thread behind the model; re-raises its first error in the caller."""

    def __init__(self, folder: Path, fmt: str):
        self.folder, self.fmt = folder, fmt
        self.pending: queue.Queue = queue.Queue(maxsize=WRITE_BEHIND_BATCHES)
        self.error: BaseException | None = None
        self.written = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="output-writer", daemon=True)
        self.thread.start()

    def path_for(self, source: Path) -> Path:
        return output_path(self.folder, source, self.fmt)

    def _loop(self) -> None:
        while True:
            item = self.pending.get()
            if item is None or self.stop.is_set():
                return
            if self.error is not None:
                continue
            try:
                for source, logits in zip(*item, strict=True):
                    write_output(self.path_for(source), logits, self.fmt)
                    self.written += 1
            except BaseException as exc:
                self.error = exc

    def put(self, files: list[Path], logits: np.ndarray) -> None:
        if self.error is not None:
            raise self.error
        self.pending.put((files, logits))

    def close(self, abandon: bool = False) -> None:
        """Wait for the queued writes (or, with `abandon`, only the one in progress) and stop the thread."""
        if abandon:
            self.stop.set()
            try:  # wakes a writer waiting for work; a full queue wakes it anyway
                self.pending.put_nowait(None)
            except queue.Full:
                pass
        else:
            self.pending.put(None)
        self.thread.join()
        if self.error is not None and not abandon:
            raise self.error


def _warm_up(runner: Runner, batch: np.ndarray, count: int, **checks) -> None:
    """`count` untimed runs on the first batch, as ais_bench warms up (`checks`: those of `Runner.infer`);
    a runner with several batches in flight runs each of its streams at least once."""
    for _ in range(count):
        runner.infer(batch, **checks)
    if count and runner.in_flight > 1:
        for _ in runner.infer_stream([(batch, checks.get("sources"))] * runner.in_flight):
            pass


def run_folder(
    runner: Runner,
    files: list[Path],
    *,
    batch_size: int,
    output_folder: Path | None,
    fmt: str = "BIN",
    loop: int = 1,
    warmup_count: int = 1,
    progress: bool = True,
) -> RunRecord:
    """Infer every file (each batch `loop` times), write an output per real input; return the measurements."""
    from tqdm import tqdm

    record = RunRecord(batch_size=batch_size, images=len(files))
    groups = _batches(files, batch_size)
    record.padded = len(groups) * batch_size - len(files)
    writer = None
    if output_folder is not None:
        output_folder.mkdir(parents=True, exist_ok=True)
        writer = _Writer(output_folder, fmt)
    stop = threading.Event()
    bar = tqdm(
        total=len(groups),
        desc="Inference array Processing",
        unit="batch",
        disable=not progress,
        file=sys.stderr,
    )
    start = time.perf_counter()

    def inputs() -> Iterator[tuple[np.ndarray, list[str]]]:
        """Each batch read ahead, with its sources; the first warms the runner up, and every batch but the
        last of its `loop` runs is run here."""
        nonlocal start
        for index, (group, batch) in enumerate(_read_ahead(groups, batch_size, stop)):
            sources = [str(path) for path in pad_batch_names(group, batch_size)]
            if index == 0:
                warm_start = time.perf_counter()
                _warm_up(runner, batch, warmup_count, sources=sources)
                start += time.perf_counter() - warm_start
            for _ in range(loop - 1):
                runner.infer(batch, sources)
                record.add(runner)
            yield batch, sources

    stream = runner.infer_stream(inputs())
    try:
        for index, (group, logits) in enumerate(zip(groups, stream, strict=True)):
            record.add(runner)
            real = logits[: len(group)]
            for offset, path in enumerate(group):
                sample = str(index * batch_size + offset)
                outfiles = [str(writer.path_for(path))] if writer else []
                record.filesinfo[sample] = {"infiles": [str(path)], "outfiles": outfiles}
            if writer:
                writer.put(group, real)
            bar.update(1)
        if writer:
            writer.close()
    except BaseException as exc:
        if writer:
            writer.close(abandon=True)
            done = f"{writer.written} of {len(files)} outputs were written to {output_folder} (each complete)"
        else:
            done = "no outputs were being saved"
        if isinstance(exc, ToolkitError):
            raise ToolkitError(f"{exc} [stopped: {done}; no summary written]") from exc
        print(
            f"{'interrupted' if isinstance(exc, KeyboardInterrupt) else 'failed'}: {done}; no summary",
            file=sys.stderr,
        )
        raise
    finally:
        stream.close()
        bar.close()
    record.wall_s = time.perf_counter() - start
    record.recomputed = list(runner.recomputed)
    return record


def run_pure(
    runner: Runner,
    *,
    batch_size: int,
    loop: int,
    warmup_count: int = 1,
    data_type: str = "zero",
    output_folder: Path | None = None,
    fmt: str = "BIN",
    progress: bool = True,
) -> RunRecord:
    """ais_bench's pure inference: `loop` runs of one generated batch after `warmup_count` warm-up runs; the
    last run's output (the whole batch) is saved as `pure_infer_data_0.<fmt>` when there is an output
    folder."""
    from tqdm import tqdm

    record = RunRecord(batch_size=batch_size)
    batch = pure_input(batch_size, data_type)
    random = data_type == "random"  # random bytes hold NaN and infinite floats: their logits may be too
    _warm_up(runner, batch, warmup_count, nonfinite_inputs=random)
    for _ in tqdm(
        range(loop), desc="Inference array Processing", unit="batch", disable=not progress, file=sys.stderr
    ):
        logits = runner.infer(batch, nonfinite_inputs=random)
        record.add(runner)
    record.recomputed = list(runner.recomputed)
    outfiles = []
    if output_folder is not None:
        output_folder.mkdir(parents=True, exist_ok=True)
        path = output_folder / f"{PURE_INFER_NAME}_0.{fmt.lower()}"
        write_output(path, logits, fmt)
        outfiles.append(str(path))
    record.filesinfo["0"] = {"infiles": [PURE_INFER_NAME], "outfiles": outfiles}
    return record


# ---- the command -------------------------------------------------------------------------------------------
# ais_bench flags that drive machinery only an NPU has (dynamic shapes of OM models, AIPP, profiling, dumps,
# power readings, its C++ pipeline): accepted by the parser, refused unless left at ais_bench's default.
NPU_ONLY_FLAGS = {
    "dymHW": None,
    "dymDims": None,
    "dymShape": None,
    "outputSize": None,
    "auto_set_dymshape_mode": False,
    "auto_set_dymdims_mode": False,
    "profiler": False,
    "dump": False,
    "acl_json_path": None,
    "dymShape_range": None,
    "aipp_config": None,
    "energy_consumption": False,
    "npu_id": 0,
    "perf": False,
    "pipeline": False,
    "profiler_rename": True,
    "dump_npy": False,
    "threads": 1,
    "run_mode": "array",
    "output_batchsize_axis": 0,
}


def check_flags(args) -> None:
    """Usage errors that need no file: combinations of flags, and the NPU-only flags (each value's range is
    the parser's, through the argument types of `cli`)."""
    if args.dymBatch and args.batchsize and args.batchsize != args.dymBatch:
        raise UsageError(f"--batchsize {args.batchsize} and --dymBatch {args.dymBatch} disagree")
    if args.backend == "trtexec":
        raise UsageError(
            "--backend trtexec is ais_bench 2024's TensorRT benchmark; here --backend names the runtime "
            "(auto, onnxruntime, openvino, torch, ais): for TensorRT use --backend onnxruntime "
            "--device tensorrt"
        )
    for name, default in NPU_ONLY_FLAGS.items():
        value = getattr(args, name, None)
        if value is not None and value != default:
            raise UsageError(
                f"--{name} {value}: an NPU feature of ais_bench that this off-Ascend runner lacks "
                "(run python3 -m ais_bench on the NPU for it)"
            )
    if args.output_dirname is not None and args.output is None:
        raise UsageError("--output_dirname cannot be used alone: give --output too")
    check_output_names(args.output, args.output_dirname)


def split_devices(device: str | None) -> list[str | None]:
    """`--device` as a list: one entry, or several for `0,1` / `cuda:0,cuda:1` (each a distinct device)."""
    if device is None or "," not in device:
        return [device]
    devices = [part.strip() for part in device.split(",")]
    numbers = [_device_number(part) for part in devices]
    if len(set(numbers)) != len(numbers):
        raise UsageError(f"--device {device}: the devices must be distinct")
    return devices


def _device_number(device: str) -> int:
    number = device.rpartition(":")[2]
    if not number.isdigit():
        raise UsageError(f"--device: {device!r} is not a numbered device (use 0,1 or cuda:0,cuda:1)")
    return int(number)


def device_plan(
    files: list[Path] | None, devices: list[str], divide_input: bool | None
) -> list[tuple[str, str, list[Path] | None]]:
    """(device, its folder name, its input files) for a multi-device run, as each ais_bench generation does
    it.

    Without --divide_input (ais_bench 2023): the files are cut into consecutive parts of ceil(n / devices) and
    device N writes `device<N>/`. With --divide_input true (2024): the first n % devices devices get one file
    more, and the i-th device N writes `device<N>_<i>/`. With --divide_input false (2024's default): every
    device runs every file, into `device<N>_<i>/`.
    """
    count = len(devices)
    numbers = [_device_number(device) for device in devices]
    if divide_input is None:
        names = [f"device{number}" for number in numbers]
    else:
        names = [f"device{number}_{index}" for index, number in enumerate(numbers)]
    if files is None or divide_input is False:
        parts = [files] * count
    elif divide_input is None:
        size = math.ceil(len(files) / count)
        parts = [files[index * size : (index + 1) * size] for index in range(count)]
    else:
        base, extra = divmod(len(files), count)
        bounds = [index * base + min(index, extra) for index in range(count + 1)]
        parts = [files[bounds[index] : bounds[index + 1]] for index in range(count)]
    if any(part is not None and not part for part in parts):
        raise UsageError(f"{len(files)} input files cannot be split over {count} devices: give fewer devices")
    return list(zip(devices, names, parts, strict=True))


def _runner_options(args) -> dict:
    options = {}
    if getattr(args, "compile", None):
        options["compile"] = args.compile
    if getattr(args, "no_cuda_graph", False):
        options["cuda_graph"] = False
    return options


def run_on_device(
    args,
    device: str | None,
    files: list[Path] | None,
    output_folder: Path | None,
    summary_path: Path | None,
    progress: bool,
) -> tuple[float, list[str]]:
    """Load the model on `device`, run the folder or pure inference, write the summary; (throughput,
    report)."""
    requested = args.batchsize or args.dymBatch or None
    runner = create_runner(
        args.backend,
        args.model,
        device=device,
        precision=args.precision,
        batch_size=requested or 1,
        **_runner_options(args),
    )
    # the folder mode keeps batches in flight on several streams where the runtime can
    runner.pipeline = files is not None and args.loop == 1
    with runner:
        static = runner.static_batch
        if static is not None and args.dymBatch:
            raise UsageError(
                f"{args.model}: --dymBatch needs a dynamic-batch model; this one takes batches of {static}"
            )
        if static is not None and requested is not None and requested != static:
            raise UsageError(
                f"{args.model}: the model takes batches of exactly {static}; --batchsize "
                f"{requested} does not fit (export a dynamic-batch model, or one for this batch)"
            )
        batch_size = requested or static or 1
        check_batch_memory(batch_size, args.model, READ_AHEAD_BATCHES + 3 if files else 2)
        if args.debug:
            print(
                f"[DEBUG] session info: {runner.describe()}, input shape {runner.input_shape}",
                file=sys.stderr,
            )
        if files is None:
            record = run_pure(
                runner,
                batch_size=batch_size,
                loop=args.loop,
                warmup_count=args.warmup_count,
                data_type=args.pure_data_type,
                output_folder=output_folder,
                fmt=args.outfmt,
                progress=progress,
            )
        else:
            record = run_folder(
                runner,
                files,
                batch_size=batch_size,
                output_folder=output_folder,
                fmt=args.outfmt,
                loop=args.loop,
                warmup_count=args.warmup_count,
                progress=progress,
            )
        summary = record.summary(runner, args.command_line)
        lines = record.report_lines(runner, args.display_all_summary)
    if summary_path is not None:
        write_json(summary_path, summary, indent=None)
    return record.throughput, lines


def _device_worker(args, device, files, output_folder, summary_path) -> tuple[float, list[str]]:
    """run_on_device in a worker process; any failure comes back as one ToolkitError line naming the
    device."""
    try:
        with worker_task():
            return run_on_device(args, device, files, output_folder, summary_path, progress=False)
    except ToolkitError as exc:
        raise ToolkitError(f"device {device}: {exc}") from None
    except Exception as exc:  # a runtime's own error type: keep its whole reason in one line
        raise ToolkitError(f"device {device}: {type(exc).__name__}: {exc}") from None


def run_devices(args, devices: list[str], files: list[Path] | None, folder: Path | None) -> int:
    """One worker process per device, each with its share of the inputs; the combined throughput at the
    end."""
    plan = device_plan(files, devices, args.divide_input)
    held = () if folder is None else (lock_folder(folder),)  # the workers hold the folder with this process
    pool = concurrent.futures.ProcessPoolExecutor(
        len(plan),
        mp_context=multiprocessing.get_context("spawn"),
        initializer=init_worker,
        initargs=(os.getpid(), *held),
    )
    try:
        futures = [
            pool.submit(
                _device_worker,
                args,
                device,
                part,
                None if folder is None else folder / name,
                None if folder is None else folder / f"{name}_summary.json",
            )
            for device, name, part in plan
        ]
        results, failures = [], []
        for (device, _, _), future in zip(plan, futures, strict=True):
            try:
                results.append((device, *future.result()))
            except ToolkitError as exc:
                failures.append(str(exc))
            except concurrent.futures.process.BrokenProcessPool as exc:
                failures.append(f"device {device}: the worker process died ({exc})")
    except BaseException:
        stop_pool(pool)
        raise
    pool.shutdown(wait=True)
    for device, _, lines in results:
        print(f"[INFO] device {device}:")
        print("\n".join(lines))
    if failures:
        raise ToolkitError("; ".join(failures))
    total = sum(throughput for _, throughput, _ in results)
    print(f"[INFO] summary throughput: {total} ({len(results)} devices: {', '.join(devices)})")
    if folder is not None:
        print(f"[INFO] outputs and summaries: {folder}")
    return 0


def infer_command(args) -> int:
    """The infer script's body: every check first, then load, run, write the summary and print the report."""
    check_flags(args)
    devices = split_devices(args.device)
    if len(devices) > 1:  # what each device's worker would check, once here: one line, not one per device
        check_model_file(args.model)
        for device in devices:
            check_runner(args.backend, args.model, device=device, precision=args.precision)
    if args.batchsize or args.dymBatch:
        check_batch_memory(args.batchsize or args.dymBatch, args.model, READ_AHEAD_BATCHES + 3)
    files = None
    if args.input:
        files = collect_input_files(args.input)
        for path in files:
            check_input_file(path)
    sources = [Path(item.strip()) for item in (args.input or "").split(",") if item.strip()]
    output_folder, summary_path = prepare_output(
        args.output, args.output_dirname, sources, getattr(args, "command_line", sys.argv)
    )
    try:
        if len(devices) > 1:
            run_devices(args, devices, files, output_folder)
            finish_output(output_folder)
            return 0
        _, lines = run_on_device(
            args, devices[0], files, output_folder, summary_path, progress=not args.no_progress
        )
    except BaseException:
        discard_if_empty(output_folder)
        raise
    finish_output(output_folder)
    print("\n".join(lines))
    if summary_path is not None:
        print(f"[INFO] outputs: {output_folder}  summary: {summary_path}")
    return 0
