"""Inference in this process (`--engine local`) over a folder of tensors, or on generated data.

Folder mode: the files of `--input` are grouped `--batchsize` at a time, the last batch padded by repeating
its first file; one output per real input and the summary are written as `outputs` names them. A reader
thread loads the next batches while the model runs and a writer thread saves results behind it.

Pure-inference mode (no `--input`): `--loop` runs of one batch of generated data (zeros, or random bytes with
`--pure_data_type random`, as ais_bench makes them); the last output is saved as `pure_infer_data_0.<fmt>`.

Several devices (`--device 0,1`, `cuda:0,cuda:1`): one worker process per device, the inputs split between
them and each device's outputs and summary written in ais_bench's multi-device layout (`devices.device_plan`).
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import queue
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..backends import check_model_file, check_runner, create_runner
from ..backends.base import Runner, pad_batch
from ..common import INPUT_SHAPE, ToolkitError, init_worker, lock_folder, stop_pool, worker_task
from ..report import write_json
from ..system import check_batch_memory
from .devices import device_plan, split_devices
from .flags import check_flags, requested_batch, runner_options, settle_batch_size
from .inputs import (
    check_input_file,
    collect_input_files,
    input_entries,
    pad_batch_names,
    pure_input,
    read_input,
)
from .outputs import (
    PURE_INFER_NAME,
    discard_if_empty,
    finish_output,
    output_path,
    prepare_output,
    write_output,
)
from .record import RunRecord

READ_AHEAD_BATCHES = 3
WRITE_BEHIND_BATCHES = 4


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


def _stopped(exc: BaseException, writer: _Writer | None, total: int, output_folder: Path | None) -> None:
    """A folder run stopped by `exc`: the writer abandoned, and what was written said (a ToolkitError is
    raised again with it; anything else is said on stderr, for the caller to raise)."""
    if writer:
        writer.close(abandon=True)
        done = f"{writer.written} of {total} outputs were written to {output_folder} (each complete)"
    else:
        done = "no outputs were being saved"
    if isinstance(exc, ToolkitError):
        raise ToolkitError(f"{exc} [stopped: {done}; no summary written]") from exc
    what = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
    print(f"{what}: {done}; no summary", file=sys.stderr)


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
        _stopped(exc, writer, len(files), output_folder)
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
    requested = requested_batch(args)
    runner = create_runner(
        args.backend,
        args.model,
        device=device,
        precision=args.precision,
        batch_size=requested or 1,
        **runner_options(args),
    )
    # the folder mode keeps batches in flight on several streams where the runtime can
    runner.pipeline = files is not None and args.loop == 1
    with runner:
        batch_size = settle_batch_size(args.model, runner.static_batch, requested, dym_batch=args.dymBatch)
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
        summary = record.summary(runner.describe(), runner.model_path, args.command_line)
        lines = record.report_lines(runner.describe(), runner.model_path, args.display_all_summary)
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
    if requested_batch(args):
        check_batch_memory(requested_batch(args), args.model, READ_AHEAD_BATCHES + 3)
    files = None
    if args.input:
        files = collect_input_files(args.input)
        for path in files:
            check_input_file(path)
    sources = [Path(item) for item in input_entries(args.input)]
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
