"""Inference over a folder of tensors, or on generated data, with ais_bench's outputs and summary.

Folder mode: the `.bin`/`.npy` files of `--input` (folders are not searched recursively; files are taken in
natural sort order, as ais_bench takes them) are grouped `--batchsize` at a time, the last batch padded by
repeating its first file. One output per real input is written to `<output>/<name>/<input stem>_0.<fmt>`,
where <name> is `--output_dirname` or the start time `YYYY_MM_DD-HH_MM_SS`, and the summary to
`<output>/<name>_summary.json`. A reader thread loads the next batches while the model runs and a writer
thread saves results behind it. Every file is written under a temporary name and renamed when complete, so
an interrupted run leaves only whole files.

Pure-performance mode (no `--input`): `--loop` batches of generated data after `--warmup_count` warm-ups.

Throughput is ais_bench's: 1000 * batch size / mean compute time in ms, the model alone. The summary also
holds the end-to-end rate of folder mode: real images per second from the first read to the last write.
"""

from __future__ import annotations

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

from .backends import create_runner
from .backends.base import Runner, pad_batch
from .common import INPUT_BYTES, INPUT_SHAPE, NUM_CLASSES, ToolkitError, UsageError, atomic_writer
from .report import write_json

INPUT_SUFFIXES = (".bin", ".npy")
OUTPUT_FORMATS = ("BIN", "NPY", "TXT")
PURE_INFER_NAME = "pure_infer_data"  # ais_bench's name for generated input
PERCENTILE = 99
READ_AHEAD_BATCHES = 3
WRITE_BEHIND_BATCHES = 4


# ---- inputs ------------------------------------------------------------------------------------------------
def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def collect_input_files(spec: str) -> list[Path]:
    """The files named by `--input`: comma-separated folders (their .bin/.npy files) and files, in order."""
    files: list[Path] = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        path = Path(item)
        if path.is_dir():
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
        if path.stem in seen:
            raise ToolkitError(f"{path}: same name as {seen[path.stem]}; both would write {path.stem}_0")
        seen[path.stem] = path
    return files


def check_input_file(path: Path) -> None:
    """Fail, naming the file, unless it holds one float32 [3, 224, 224] tensor (raw .bin, or .npy)."""
    try:
        if path.suffix.lower() == ".bin":
            size = path.stat().st_size
            if size != INPUT_BYTES:
                raise ToolkitError(
                    f"{path}: {size} bytes, expected {INPUT_BYTES} "
                    "(one float32 3x224x224 tensor, as the preprocess writes)"
                )
            return
        with open(path, "rb") as handle:
            try:
                version = np.lib.format.read_magic(handle)
                read_header = (
                    np.lib.format.read_array_header_1_0
                    if version == (1, 0)
                    else np.lib.format.read_array_header_2_0
                )
                shape, _, dtype = read_header(handle)
            except ValueError as exc:
                raise ToolkitError(f"{path}: not a readable .npy file ({exc})") from None
    except OSError as exc:
        raise ToolkitError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if dtype.kind != "f" or dtype.itemsize != 4:
        raise ToolkitError(f"{path}: dtype {dtype}, expected float32")
    if tuple(shape) not in (INPUT_SHAPE, (1, *INPUT_SHAPE)):
        raise ToolkitError(f"{path}: shape {tuple(shape)}, expected {INPUT_SHAPE} or {(1, *INPUT_SHAPE)}")


def read_input(path: Path, out: np.ndarray) -> None:
    """Read one input tensor into `out` (a float32 [3, 224, 224] view)."""
    if path.suffix.lower() == ".bin":
        with open(path, "rb") as handle:
            if handle.readinto(memoryview(out).cast("B")) != INPUT_BYTES:
                raise ToolkitError(
                    f"{path}: shorter than {INPUT_BYTES} bytes (did it change during the run?)"
                )
        return
    out[...] = np.load(path, allow_pickle=False).reshape(INPUT_SHAPE)


# ---- outputs -----------------------------------------------------------------------------------------------
def write_output(path: Path, logits: np.ndarray, fmt: str) -> None:
    """Write an image's logits as ais_bench does: raw float32, a [1, 1000] .npy, or a line of `%f ` values."""
    row = np.asarray(logits, dtype="<f4").reshape(1, NUM_CLASSES)
    if fmt == "BIN":
        with atomic_writer(path) as handle:
            handle.write(row.tobytes())
    elif fmt == "NPY":
        with atomic_writer(path) as handle:
            np.save(handle, row)
    else:
        with atomic_writer(path, "w") as handle:
            handle.write("".join(f"{value:f} " for value in row[0].tolist()) + "\n")


def prepare_output(output: str | None, dirname: str | None) -> tuple[Path | None, Path | None]:
    """(folder for the outputs, summary path), both None without `--output`; checked before anything runs."""
    if output is None:
        return None, None
    root = Path(output)
    if root.exists() and not root.is_dir():
        raise ToolkitError(f"{root}: --output is a file, not a folder")
    name = dirname or time.strftime("%Y_%m_%d-%H_%M_%S")
    if dirname and (Path(name).name != name or name in (".", "..")):
        raise UsageError(f"--output_dirname {dirname!r} must be a plain folder name")
    folder = root / name
    summary = root / f"{name}_summary.json"
    for path, what in ((folder, "output folder"), (summary, "summary")):
        if path.exists() and (path.is_dir() != (what == "output folder")):
            raise ToolkitError(
                f"{path}: the {what} path is taken by a {'folder' if path.is_dir() else 'file'}"
            )
    return folder, summary


# ---- timing statistics -------------------------------------------------------------------------------------
def time_stats(times_ms: Sequence[float]) -> dict[str, float]:
    """ais_bench's statistics block: min, max, mean, median, percentile(99%), count (ms)."""
    if not times_ms:
        return {
            "min": 0.0,
            "max": 0.0,
            "mean": 0.0,
            "median": 0.0,
            f"percentile({PERCENTILE}%)": 0.0,
            "count": 0,
        }
    values = np.asarray(times_ms, dtype=np.float64)
    return {
        "min": float(values.min()),
        "max": float(values.max()),
        "mean": float(values.mean()),
        "median": float(np.median(values)),
        f"percentile({PERCENTILE}%)": float(np.percentile(values, PERCENTILE)),
        "count": int(values.size),
    }


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

    def summary(self, runner: Runner, args: dict) -> dict:
        info: dict[str, object] = {"filesinfo": self.filesinfo, "args": args}
        info["NPU_compute_time"] = time_stats(self.compute_ms)
        if self.h2d_ms:
            info["H2D_latency"] = time_stats(self.h2d_ms)
        if self.d2h_ms:
            info["D2H_latency"] = time_stats(self.d2h_ms)
        info["throughput"] = self.throughput
        info["npu_compute_time_list"] = self.compute_ms
        info["pid"] = os.getpid()
        info.update(runner.describe())
        info["model"] = str(runner.model_path)
        info["batchsize"] = self.batch_size
        info["images"] = self.images
        info["padded_images"] = self.padded
        if self.wall_s:
            info["end_to_end_seconds"] = self.wall_s
            info["end_to_end_images_per_second"] = self.images / self.wall_s
        return info

    def report_lines(self, runner: Runner) -> list[str]:
        """The performance summary in ais_bench's wording, then what ran and the end-to-end rate."""

        def line(label: str, times: list[float]) -> str:
            stats = time_stats(times)
            tail = stats[f"percentile({PERCENTILE}%)"]
            return (
                f"[INFO] {label} (ms): min = {stats['min']}, max = {stats['max']}, mean = {stats['mean']}, "
                f"median = {stats['median']}, percentile({PERCENTILE}%) = {tail}"
            )

        lines = ["[INFO] -----------------Performance Summary------------------"]
        if self.h2d_ms:
            lines.append(line("H2D_latency", self.h2d_ms))
        lines.append(line("NPU_compute_time", self.compute_ms))
        if self.d2h_ms:
            lines.append(line("D2H_latency", self.d2h_ms))
        mean = time_stats(self.compute_ms)["mean"]
        lines.append(
            f"[INFO] throughput 1000*batchsize({self.batch_size})/NPU_compute_time.mean({mean}): "
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
        return lines


# ---- the two modes -----------------------------------------------------------------------------------------
def _batches(files: list[Path], batch_size: int) -> list[list[Path]]:
    return [files[start : start + batch_size] for start in range(0, len(files), batch_size)]


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
        return self.folder / f"{source.stem}_0.{self.fmt.lower()}"

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


def _warm_up(runner: Runner, batch_size: int, count: int) -> None:
    if count:
        batch = np.random.default_rng(0).standard_normal((batch_size, *INPUT_SHAPE), dtype=np.float32)
        for _ in range(count):
            runner.infer(batch)


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
    _warm_up(runner, batch_size, warmup_count)
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
    try:
        for index, (group, batch) in enumerate(_read_ahead(groups, batch_size, stop)):
            for _ in range(loop):
                logits = runner.infer(batch)
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
        bar.close()
    record.wall_s = time.perf_counter() - start
    return record


def run_pure(
    runner: Runner, *, batch_size: int, loop: int, warmup_count: int = 1, progress: bool = True
) -> RunRecord:
    """ais_bench's pure inference: `loop` runs of one generated batch after `warmup_count` warm-up runs."""
    from tqdm import tqdm

    record = RunRecord(batch_size=batch_size)
    _warm_up(runner, batch_size, warmup_count)
    batch = np.random.default_rng(1).standard_normal((batch_size, *INPUT_SHAPE), dtype=np.float32)
    for _ in tqdm(
        range(loop), desc="Inference array Processing", unit="batch", disable=not progress, file=sys.stderr
    ):
        runner.infer(batch)
        record.add(runner)
    return record


# ---- the command -------------------------------------------------------------------------------------------
def _args_for_summary(args) -> dict:
    return {
        key: (value if isinstance(value, (int, float, bool, type(None))) else str(value))
        for key, value in vars(args).items()
    }


def infer_command(args) -> int:
    """The infer script's body: every check first, then load, run, write the summary and print the report."""
    if args.loop < 1 or args.warmup_count < 0 or (args.batchsize is not None and args.batchsize < 1):
        raise UsageError("--loop and --batchsize must be >= 1, --warmup_count >= 0")
    options = {}
    if getattr(args, "compile", None):
        options["compile"] = args.compile
    if getattr(args, "no_cuda_graph", False):
        options["cuda_graph"] = False
    runner = create_runner(
        args.backend,
        args.model,
        device=args.device,
        precision=args.precision,
        batch_size=args.batchsize or 1,
        **options,
    )
    files = None
    if args.input:
        files = collect_input_files(args.input)
        for path in files:
            check_input_file(path)
    output_folder, summary_path = prepare_output(args.output, args.output_dirname)
    if files is None:
        output_folder = None  # pure inference writes the summary only
    with runner:
        static = runner.static_batch
        if static is not None and args.batchsize is not None and args.batchsize != static:
            raise UsageError(
                f"{args.model}: the model takes batches of exactly {static}; --batchsize "
                f"{args.batchsize} does not fit (export a dynamic-batch model, or one for this batch)"
            )
        batch_size = args.batchsize or static or 1
        if files is None:
            record = run_pure(
                runner,
                batch_size=batch_size,
                loop=args.loop,
                warmup_count=args.warmup_count,
                progress=not args.no_progress,
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
                progress=not args.no_progress,
            )
        summary = record.summary(runner, _args_for_summary(args))
        lines = record.report_lines(runner)
    if summary_path is not None:
        write_json(summary_path, summary, indent=None)
    print("\n".join(lines))
    if output_folder is not None:
        print(f"[INFO] outputs: {output_folder}  summary: {summary_path}")
    elif summary_path is not None:
        print(f"[INFO] summary: {summary_path}")
    return 0
