"""ais_bench's outputs of a run, and the output folder they go to.

Names: one output per input, `<folder>/<input stem>_0.<fmt>`, where the stem is the input's file name up to
its first dot (as ais_bench names them); the folder is `--output_dirname` or the start time
`YYYY_MM_DD-HH_MM_SS` (`new_output_name`), and the summary goes beside it as `<name>_summary.json`. Each
output is written under a temporary name and renamed when complete, so an interrupted run leaves only whole
files.

Ownership: `prepare_output` locks the folder for this process, marks it in progress until `finish_output`,
and empties it only when this toolkit made it (its OUTPUT_MARK beside it) and it holds nothing but an
earlier run's files; `discard_if_empty` takes back what a failed run made.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..common import (
    NUM_CLASSES,
    RUNNING_SUFFIX,
    ToolkitError,
    UsageError,
    atomic_writer,
    beside,
    check_output_file,
    lock_folder,
    mark_finished,
    mark_running,
    release_folder,
    remove_temporaries,
    temporary_target,
)
from ..data import result_key

OUTPUT_FORMATS = ("BIN", "NPY", "TXT")
PURE_INFER_NAME = "pure_infer_data"  # ais_bench's name for generated input
TIME_NAME = "%Y_%m_%d-%H_%M_%S"  # ais_bench's output folder name without --output_dirname


def output_stem(path: Path) -> str:
    """The name ais_bench gives an input's outputs: the file name up to its first dot (`a.b.bin` -> `a`)."""
    return result_key(path.name)


def output_path(folder: Path, source: Path, fmt: str) -> Path:
    """Where the output of input file `source` goes: `<folder>/<output stem>_0.<fmt>`."""
    return folder / f"{output_stem(source)}_0.{fmt.lower()}"


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
