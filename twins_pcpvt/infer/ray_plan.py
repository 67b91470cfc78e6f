"""What a Ray job will do and what it keeps for a rerun: its inputs with their outputs, its identity, the job
record in the output folder (`.ray_job.json`) and the folder's checks before any work."""

from __future__ import annotations

import json
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from ..common import ToolkitError, file_type, lock_folder, mark_running, read_regular_file, remove_temporaries
from ..data import ManifestRow, discover_images
from ..report import JSON_READ_LIMIT, write_json
from .inputs import INPUT_SUFFIXES, check_input_file, collect_input_files, input_entries
from .outputs import discard_if_empty, output_path, prepare_output, resume_command

JOB_RECORD = ".ray_job.json"


@dataclass(frozen=True)
class Item:
    source: str  # the tensor or image file
    output: str  # its output file
    row: ManifestRow | None = None  # an image's manifest row


def image_folder(spec: str) -> Path | None:
    """The folder `--input` names when it is a data set of images (one folder, no tensors), else None."""
    parts = input_entries(spec)
    if len(parts) != 1 or not Path(parts[0]).is_dir():
        return None
    folder = Path(parts[0])
    with os.scandir(folder) as entries:
        if any(Path(entry.name).suffix.lower() in INPUT_SUFFIXES and entry.is_file() for entry in entries):
            return None
    return folder


def plan_items(spec: str, folder: Path, fmt: str) -> tuple[list[Item], bool]:
    """Every input with its output path, in input order, and whether the inputs are images."""
    images = image_folder(spec)
    if images is None:
        files = collect_input_files(spec)
        for path in files:
            check_input_file(path)
        return [Item(str(path), str(output_path(folder, path, fmt))) for path in files], False
    rows = discover_images(images)
    items, seen = [], {}
    for row in rows:
        # the output the local flow gives this image: its tensor `<stem>.bin` -> `<stem up to a dot>_0.<fmt>`
        output = str(output_path(folder, Path(f"{row.stem}.bin"), fmt))
        if output in seen:
            raise ToolkitError(f"{images / row.source}: its output {output} is also that of {seen[output]}")
        seen[output] = images / row.source
        items.append(Item(str(images / row.source), output, row))
    return items, True


def job_identity(args, backend: str) -> dict:
    """What must match for a rerun to continue an unfinished job's output folder."""
    model = Path(args.model).resolve()
    stat = model.stat()
    inputs = [str(Path(part).resolve()) for part in input_entries(args.input)]
    return {
        "model": str(model),
        "model_bytes": stat.st_size,
        "model_mtime_ns": stat.st_mtime_ns,
        "backend": backend,
        "precision": args.precision,
        "outfmt": args.outfmt,
        "input": inputs,
    }


def input_files(items: list[Item]) -> dict[str, list]:
    """Output name -> [input file, size, modification time in ns]: an output holds while its input is so."""
    files = {}
    for item in items:
        try:
            stat = os.stat(item.source)
        except OSError as exc:
            raise ToolkitError(f"{item.source}: cannot read ({exc.strerror or exc})") from None
        files[Path(item.output).name] = [item.source, stat.st_size, stat.st_mtime_ns]
    return files


def open_output_folder(
    args, dirname: str, identity: dict, inputs: dict[str, list]
) -> tuple[Path, Path, dict, int | None]:
    """(output folder, summary path, the job record, how many outputs of an unfinished job were removed or
    None for a new job). An unfinished job's outputs whose input changed or is gone are removed; a new
    folder is prepared. Either way the record of the current inputs is written before anything runs."""
    removed = None
    record: dict = {"job": identity, "inputs": inputs}
    folder = Path(args.output) / dirname
    path = folder / JOB_RECORD
    command_line = getattr(args, "command_line", sys.argv)
    if path.is_file() and not folder.is_symlink():
        lock_folder(folder)  # this process is its one writer until the job ends (before the record is read)
        try:
            earlier = json.loads(read_regular_file(path, "job record", limit=JSON_READ_LIMIT))
        except (ToolkitError, ValueError, RecursionError):  # unreadable: not this job's record
            earlier = None
        if not isinstance(earlier, dict) or earlier.get("job") != identity:
            raise ToolkitError(
                f"{folder}: holds the unfinished outputs of another job (its model, inputs, backend, "
                "precision or format differ): choose another --output_dirname, or delete the folder "
                "to start over"
            )
        stale = [
            name
            for name, entry in earlier.get("inputs", {}).items()
            if inputs.get(name) != entry and Path(name).name == name
        ]
        removed = 0
        for name in stale:  # removed before the record changes, so that a kill here loses nothing
            try:
                (folder / name).unlink()
                removed += 1
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise ToolkitError(f"{folder / name}: cannot remove ({exc.strerror or exc})") from None
        if "ran" in earlier:
            record["ran"] = earlier["ran"]
        summary = Path(args.output) / f"{dirname}_summary.json"
        mark_running(folder, resume_command(command_line, folder.name))
    else:
        sources = [Path(part) for part in input_entries(args.input)]
        folder, summary = prepare_output(args.output, dirname, sources, command_line)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ToolkitError(f"{folder}: cannot create the output folder ({exc.strerror or exc})") from None
    write_json(path, record, indent=None)
    return folder, summary, record, removed


def check_job_paths(output: str, dirname: str, *, images: bool) -> None:
    """Refuse, before any work, a job whose summary, image manifest or job record would land on something
    that is not a regular file (a folder, a link, a FIFO...): the atomic writer would refuse it at the end."""
    root = Path(output)
    paths = [(root / f"{dirname}_summary.json", "summary"), (root / dirname / JOB_RECORD, "job record")]
    if images:
        paths.append((root / f"{dirname}_manifest.tsv", "image manifest"))
    for path, what in paths:
        try:
            mode = os.lstat(path).st_mode
        except (FileNotFoundError, NotADirectoryError):  # an --output that is a file: prepare_output says so
            continue
        except OSError as exc:
            raise ToolkitError(f"{path}: cannot write ({exc.strerror or exc})") from None
        if not stat.S_ISREG(mode):
            raise ToolkitError(
                f"{path}: is {file_type(mode)}, where the job writes its {what}; it is neither replaced nor "
                "written through: move it or choose another --output_dirname"
            )


def abandon_if_empty(folder: Path, items: list[Item]) -> None:
    """A job that stopped before any output exists leaves nothing: no record, no folder, no mark."""
    if any(os.path.exists(item.output) for item in items):
        return
    try:
        (folder / JOB_RECORD).unlink(missing_ok=True)
    except OSError:
        return
    remove_temporaries(folder, {Path(item.output).name for item in items} | {JOB_RECORD})
    discard_if_empty(folder)
