"""The preprocess stage: the images of a data set -> `<stem>.bin` tensors plus `manifest.tsv`, in parallel
worker processes, resumable, every file written atomically, every bad image named and the others still
written."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import stat
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from ..common import (
    INPUT_BYTES,
    ToolkitError,
    UsageError,
    check_output_file,
    init_worker,
    lock_folder,
    mark_finished,
    mark_running,
    message_line,
    remove_temporaries,
    stop_pool,
    usable_cpus,
    worker_task,
)
from .discover import discover_images, print_notice
from .images import ImageError, preprocess_image
from .manifest import MANIFEST_NAME, ManifestRow, read_manifest, write_manifest
from .names import UNSTORABLE_IN_NAMES
from .tensors import TENSOR_SUFFIX, write_tensor_file


@dataclass
class PreprocessSummary:
    prep_dir: Path
    written: int = 0
    skipped: int = 0  # already complete from an earlier run
    removed: int = (
        0  # tensors of an earlier run this run does not cover, deleted so no later stage reads them
    )
    failures: list[str] = field(default_factory=list)  # one message per failed image, naming the file
    seconds: float = 0.0

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def images_per_second(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        removed = f", removed {self.removed} of an earlier run" if self.removed else ""
        return (
            f"preprocess: written {self.written}, skipped {self.skipped} (already complete), "
            f"failed {self.failed}{removed}, {self.images_per_second:.1f} images/s -> {self.prep_dir}"
        )


def _convert_one(task: tuple[str, str]) -> str | None:
    """Worker body: image -> `.bin`. Returns None on success, else the error message naming the image.

    A tensor that cannot be written (full disk, read-only folder) raises: that stops the run, not one image.
    """
    source, target = task
    try:
        tensor = preprocess_image(source)
    except ImageError as exc:
        return str(exc)
    except Exception as exc:  # an unexpected failure must still come back as this image's error
        return f"{source}: {type(exc).__name__}: {exc}"
    write_tensor_file(target, tensor)
    return None


def _convert_chunk(tasks: list[tuple[str, str]]) -> list[str | None]:
    with worker_task():
        return [_convert_one(task) for task in tasks]


def _pool_context():
    # fork starts workers in milliseconds, with the modules already imported; elsewhere the platform default
    if "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context()


def print_error(message: str) -> None:
    tqdm.write(f"error: {message_line(message)}", file=sys.stderr)


def _all_entries(folder: Path) -> list[os.DirEntry]:
    with os.scandir(folder) as entries:
        return list(entries)


def _is_complete_tensor(path: Path) -> bool:
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_size == INPUT_BYTES


def _is_tensor_name(name: str) -> bool:
    """Names a later stage reads as input tensors (ais_bench and the runner take .bin and .npy files)."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in (TENSOR_SUFFIX, ".npy")


def _previous_rows(prep_dir: Path) -> dict[str, ManifestRow]:
    """The rows of the folder's manifest from an earlier run (empty when there is none)."""
    manifest = prep_dir / MANIFEST_NAME
    if not os.path.lexists(manifest):
        return {}
    try:
        return {row.stem: row for row in read_manifest(manifest)}
    except ToolkitError as exc:
        raise ToolkitError(
            f"{exc}: it says which tensors in {prep_dir} are current; remove the folder's tensors and "
            "manifest, or choose an empty --prep_dataset"
        ) from None


def _refuse_image_folder(prep_dir: Path, root: Path, rows: list[ManifestRow]) -> None:
    """The output folder must not be the data folder or one of the folders the images are read from."""
    folders = {os.path.dirname(row.source) for row in rows}
    read_from = {os.path.realpath(root)} | {os.path.realpath(root / folder) for folder in folders}
    if os.path.realpath(prep_dir) in read_from:
        raise UsageError(
            f"{prep_dir}: prep_dataset is a folder the images are read from; choose another folder"
        )


def _drop_unstorable_names(
    root: Path, rows: list[ManifestRow], summary: PreprocessSummary, report: Callable[[str], None]
) -> None:
    """Remove from `rows`, each as a failure, the images whose names the manifest and label files cannot
    hold."""
    for row in [row for row in rows if any(char in row.source for char in UNSTORABLE_IN_NAMES)]:
        character = next(char for char in row.source if char in UNSTORABLE_IN_NAMES)
        summary.failures.append(
            f"{root / row.source}: the name holds a tab or line break ({character!r}), which the manifest "
            "and label files cannot hold: rename the file"
        )
        report(summary.failures[-1])
        rows.remove(row)


def preprocess_dataset(
    data_path: str | Path,
    prep_dir: str | Path,
    *,
    workers: int | None = None,
    limit: int | None = None,
    progress: bool = True,
    on_error: Callable[[str], None] | None = None,
    class_map: str | Path | None = None,
    notice: Callable[[str], None] = print_notice,
    command: Sequence[str] = (),
) -> PreprocessSummary:
    """Turn the images under `data_path` into `<stem>.bin` tensors plus `manifest.tsv` in `prep_dir`.

    Resumable: a `.bin` is kept (counted as skipped) only when the earlier manifest says it was made from the
    same source file (relative path, size, mtime) by the same transform version; any other is redone. Tensors
    of an earlier run that this run does not cover (`--limit`, a smaller or another data set) are deleted, so
    the folder holds exactly the tensors of this run. Tensors that no manifest of the folder lists are not
    ours: the run refuses to start. Every file is written atomically. A bad image is reported through
    `on_error` (default: one `error:` line on stderr) and listed in the summary; all others are still written.
    The folder is locked for the run and marked in progress until its final manifest is written; `command`
    is what a reader is told to rerun to resume it.
    """
    workers = usable_cpus() if workers is None else workers
    if workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}")
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be at least 1, got {limit}")
    prep_dir = Path(prep_dir)
    if os.path.lexists(prep_dir) and not prep_dir.is_dir():
        raise ToolkitError(f"{prep_dir}: prep_dataset exists and is not a folder")
    root = Path(data_path)
    rows = discover_images(root, exclude=prep_dir, class_map=class_map, notice=notice)
    _refuse_image_folder(prep_dir, root, rows)
    if limit is not None:
        rows = rows[:limit]
    summary = PreprocessSummary(prep_dir)
    report = on_error or print_error
    _drop_unstorable_names(root, rows, summary, report)
    try:
        prep_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ToolkitError(f"{prep_dir}: cannot create the output folder ({exc.strerror or exc})") from None
    with lock_folder(prep_dir):
        _convert_into(prep_dir, root, rows, summary, workers, progress, report, notice, command)
        mark_finished(prep_dir)
    return summary


def _convert_into(
    prep_dir: Path,
    root: Path,
    rows: list[ManifestRow],
    summary: PreprocessSummary,
    workers: int,
    progress: bool,
    report: Callable[[str], None],
    notice: Callable[[str], None],
    command: Sequence[str],
) -> None:
    """The preprocess's work in its locked folder (see `preprocess_dataset`), marked in progress from its
    first change on."""
    existing = _existing_tensors(prep_dir)
    check_output_file(prep_dir / MANIFEST_NAME, probe=True)
    previous = _previous_rows(prep_dir) if existing else {}
    wanted = {row.stem + TENSOR_SUFFIX: row for row in rows}
    _refuse_foreign_tensors(prep_dir, existing, wanted, previous)
    kept = {name for name in wanted if _reusable(prep_dir, name, wanted, existing, previous)}
    earlier_names = {stem + TENSOR_SUFFIX for stem in previous}
    mark_running(prep_dir, command)
    remove_temporaries(prep_dir, set(wanted) | set(existing) | earlier_names | {MANIFEST_NAME})
    _remove_outdated(prep_dir, existing, kept, wanted, summary, notice)
    # Written before any tensor: every tensor in the folder is always listed, with the source it comes from.
    write_manifest(prep_dir, rows)
    _Conversion(prep_dir, root, rows, kept, summary, report).run(workers, progress)


def _existing_tensors(prep_dir: Path) -> dict[str, os.DirEntry]:
    """The files of the output folder a later stage would read as tensors (the folder is created first)."""
    try:
        prep_dir.mkdir(parents=True, exist_ok=True)
        return {entry.name: entry for entry in _all_entries(prep_dir) if _is_tensor_name(entry.name)}
    except OSError as exc:
        reason = exc.strerror or exc
        raise ToolkitError(f"{prep_dir}: cannot create or list the output folder ({reason})") from None


def _refuse_foreign_tensors(
    prep_dir: Path,
    existing: dict[str, os.DirEntry],
    wanted: dict[str, ManifestRow],
    previous: dict[str, ManifestRow],
) -> None:
    """Tensors that neither this run nor the folder's manifest lists were not written here: the run refuses
    to start."""

    def listed(name: str) -> bool:
        return name in wanted or (name.endswith(TENSOR_SUFFIX) and name[: -len(TENSOR_SUFFIX)] in previous)

    foreign = sorted(name for name in existing if not listed(name))
    if foreign:
        raise ToolkitError(
            f"{prep_dir}: holds {len(foreign)} tensor file(s) that its manifest does not list "
            f"(e.g. {foreign[0]}); they were not written here by the preprocess, and a later stage would "
            "read them: remove them or choose an empty --prep_dataset"
        )


def _reusable(
    prep_dir: Path,
    name: str,
    wanted: dict[str, ManifestRow],
    existing: dict[str, os.DirEntry],
    previous: dict[str, ManifestRow],
) -> bool:
    """Whether the tensor `name` of an earlier run is complete and made from the same source the same way."""
    old = previous.get(name[: -len(TENSOR_SUFFIX)])
    return (
        name in existing
        and old is not None
        and wanted[name].same_source(old)
        and _is_complete_tensor(prep_dir / name)
    )


def _remove_outdated(
    prep_dir: Path,
    existing: dict[str, os.DirEntry],
    kept: set[str],
    wanted: dict[str, ManifestRow],
    summary: PreprocessSummary,
    notice: Callable[[str], None],
) -> None:
    """Delete the tensors this run does not keep, counting those it does not cover (`summary.removed`)."""
    try:
        for name in sorted(set(existing) - kept):
            os.unlink(existing[name].path)
            summary.removed += name not in wanted
    except OSError as exc:
        raise ToolkitError(f"{prep_dir}: cannot remove an outdated tensor ({exc.strerror or exc})") from None
    if summary.removed:
        notice(
            f"{prep_dir}: removed {summary.removed} tensor(s) of an earlier run that this run does not cover"
        )


class _Conversion:
    """The tensors one run still makes (those of `rows` not in `kept`), and what came back for each."""

    def __init__(
        self,
        prep_dir: Path,
        root: Path,
        rows: list[ManifestRow],
        kept: set[str],
        summary: PreprocessSummary,
        report: Callable[[str], None],
    ) -> None:
        self.prep_dir, self.rows, self.summary, self.report = prep_dir, rows, summary, report
        self.pending = [index for index in range(len(rows)) if self.tensor_name(index) not in kept]
        summary.skipped = len(rows) - len(self.pending)
        self.tasks = [
            (str(root / rows[index].source), str(prep_dir / self.tensor_name(index)))
            for index in self.pending
        ]
        self.failed: set[int] = set()

    def tensor_name(self, index: int) -> str:
        return self.rows[index].stem + TENSOR_SUFFIX

    def record(self, position: int, message: str | None) -> None:
        if message is None:
            self.summary.written += 1
        else:
            self.failed.add(self.pending[position])
            self.summary.failures.append(message)
            self.report(message)

    def write_complete_manifest(self) -> int:
        # Every tensor in the folder was made by this run from its row's source (outdated ones were removed
        # before), including one a stopped worker finished without reporting it.
        unfinished = {
            index
            for index in self.pending
            if not _is_complete_tensor(self.prep_dir / self.tensor_name(index))
        }
        complete = [row for index, row in enumerate(self.rows) if index not in self.failed | unfinished]
        write_manifest(self.prep_dir, complete)
        return len(complete)

    def run(self, workers: int, progress: bool) -> None:
        """Make the pending tensors, then write the final manifest; stopped or failed, the manifest lists
        what is complete (the workers are gone, nothing is in flight)."""
        prep_dir = self.prep_dir
        started = time.perf_counter()
        try:
            _run_tasks(self.tasks, min(workers, len(self.tasks)), progress, self.record)
        except BaseException as exc:
            complete = "the"
            with contextlib.suppress(ToolkitError):
                complete = f"the {self.write_complete_manifest()}"
            if isinstance(exc, ToolkitError):
                raise ToolkitError(
                    f"{exc}; {complete} tensors in {prep_dir} are complete: rerun the same command to resume"
                ) from None
            raise
        finally:
            self.summary.seconds = time.perf_counter() - started
            remove_temporaries(
                prep_dir, {self.tensor_name(index) for index in range(len(self.rows))} | {MANIFEST_NAME}
            )
        self.write_complete_manifest()


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
    executor = ProcessPoolExecutor(
        workers, mp_context=_pool_context(), initializer=init_worker, initargs=(os.getpid(),)
    )
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
                        "a preprocessing worker process died (killed, or out of memory)"
                    ) from None
                start = futures[future]
                for offset, message in enumerate(messages):
                    record(start + offset, message)
                bar.update(len(messages))
    except BaseException:
        stop_pool(executor)
        raise
    executor.shutdown(wait=True)
