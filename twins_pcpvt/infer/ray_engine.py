"""Folder inference sharded on Ray Data (`--engine ray`): the local runner's files, written exactly once.

The job is three streamed Ray Data stages:

1. read, CPU tasks: the `.bin`/`.npy` tensors of `--input`, or, when `--input` is a data set folder of images,
   the images through the reference transform (no tensor file is written);
2. model, an actor pool with one actor per `--device` entry: `cpu` (repeat it for more CPU workers),
   `cuda:N`/`tensorrt:N` (Ray gives each actor one GPU) or an NPU number (one unit of Ray's resource "NPU").
   Each actor pads a partial batch to its fixed batch size by repeating the first image, as the local runner
   does, and runs it `--loop` times after `--warmup_count` warm-ups on its first batch;
3. write, CPU tasks: one `<stem>_0.<fmt>` per image, named and written by the runner's own functions (under a
   temporary name, renamed when complete).

Ray restarts a killed actor and reruns a killed task, so a batch may be computed or written twice; a write
always gives the same name the same content, so the folder ends with exactly one complete file per image.
Temporary files of killed writers are removed at the start and at the end. While the job runs, its identity
(model, `--input`, backend, precision, format), each output's input file with its size and modification time,
and what ran are kept in `.ray_job.json` in the output folder: a rerun with the same `--output_dirname` after
the whole job was killed processes only the missing images. An output whose input changed since (preprocessed
again under the same name) is redone, and one whose input is gone (a smaller `--limit`) is removed; the record
is removed when the job completes. With image input, the manifest of the images whose outputs exist (as the
preprocess writes it) goes beside the summary as `<name>_manifest.tsv`.

What the actors ask of the cluster, Ray's start-up and the watch over lost nodes live in ray_cluster.py.
SIGTERM is handled as Ctrl-C: one line with the rerun hint, exit 128 + the signal number. A job that stops
before its first output leaves no folder, mark or job record.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import stat
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .backends import create_runner, normalize_device, resolve_backend
from .backends.base import pad_batch
from .common import (
    INPUT_SHAPE,
    NUM_CLASSES,
    Interrupted,
    ToolkitError,
    UsageError,
    file_type,
    lock_folder,
    mark_running,
    remove_temporaries,
    usable_cpus,
)
from .data import ManifestRow, discover_images, preprocess_image, write_manifest
from .ray_cluster import NodesLost, NodeWatch, actor_requests, cap_cpu_copies, import_ray, start_ray
from .report import write_json
from .runner import (
    INPUT_SUFFIXES,
    RunRecord,
    check_flags,
    check_input_file,
    collect_input_files,
    discard_if_empty,
    finish_output,
    new_output_name,
    output_path,
    pad_batch_names,
    prepare_output,
    read_input,
    resume_command,
    write_output,
)

JOB_RECORD = ".ray_job.json"
IMAGES_PER_READ_TASK = 16  # rounded up to whole batches, so that the model stage sees full batches
WRITER_CPUS = 0.25


# ---- the three stages (run in Ray workers) -----------------------------------------------------------------
def read_stage(batch: dict, *, images: bool) -> dict:
    """Tensors of the batch's sources; a source that fails gets zeros and its error message (else '')."""
    tensors = np.zeros((len(batch["source"]), *INPUT_SHAPE), np.float32)
    errors = []
    for row, source in zip(tensors, batch["source"], strict=True):
        try:
            if images:
                row[...] = preprocess_image(source)
            else:
                read_input(Path(source), row)
            errors.append("")
        except ToolkitError as exc:
            errors.append(str(exc))
        except Exception as exc:  # an unexpected failure is still this file's error
            errors.append(f"{source}: {type(exc).__name__}: {exc}")
    return {
        "source": batch["source"],
        "output": batch["output"],
        "error": np.array(errors),
        "tensor": tensors,
    }


class ModelStage:
    """One model on one device; called with batches of at most `batch_size` rows."""

    def __init__(self, *, model, backend, device, precision, batch_size, options, warmup_count, loop):
        import ray

        self.batch_size, self.warmup_count, self.loop = batch_size, warmup_count, loop
        self.runner = create_runner(
            backend, model, device=device, precision=precision, batch_size=batch_size, **options
        )
        self.runner.__enter__()
        static = self.runner.static_batch
        if static is not None and static != batch_size:
            raise UsageError(
                f"{model}: the model takes batches of exactly {static}: give --batchsize {static}"
            )
        accelerators = {k: v for k, v in ray.get_runtime_context().get_accelerator_ids().items() if v}
        self.worker = json.dumps(
            {"host": socket.gethostname(), "pid": os.getpid(), "accelerator_ids": accelerators}
            | self.runner.describe()
        )
        self.batches = 0

    def __call__(self, batch: dict) -> dict:
        good = batch["error"] == ""
        rows = len(good)
        logits = np.zeros((rows, NUM_CLASSES), np.float32)
        timing = np.full((rows, self.loop, 3), np.nan)  # compute, H2D, D2H ms of each run; on the first row
        head = np.zeros(rows, bool)
        padded = np.zeros(rows, np.int64)
        recomputed = np.full(rows, "")  # on the first row: the reasons of its batch's recomputations, JSON
        if good.any():
            tensors = pad_batch(np.ascontiguousarray(batch["tensor"][good]), self.batch_size)
            sources = pad_batch_names([str(source) for source in batch["source"][good]], self.batch_size)
            runner = self.runner
            known = len(runner.recomputed)
            if self.batches == 0:
                for _ in range(self.warmup_count):
                    runner.infer(tensors, sources)
            for run in range(self.loop):
                result = runner.infer(tensors, sources)
                timing[0, run] = [
                    runner.last_compute_ms,
                    np.nan if runner.last_h2d_ms is None else runner.last_h2d_ms,
                    np.nan if runner.last_d2h_ms is None else runner.last_d2h_ms,
                ]
            logits[good] = result[: int(good.sum())]
            head[0] = True
            recomputed = np.array([json.dumps(runner.recomputed[known:])] + [""] * (rows - 1))
            padded[0] = self.batch_size - int(good.sum())
        self.batches += 1
        worker = np.array([self.worker if first else "" for first in head])
        return {
            "output": batch["output"],
            "error": batch["error"],
            "logits": logits,
            "timing": timing,
            "head": head,
            "padded": padded,
            "worker": worker,
            "recomputed": recomputed,
        }

    def __del__(self):
        runner = getattr(self, "runner", None)
        if runner is not None and runner.active:
            runner.__exit__(None, None, None)


def write_stage(batch: dict, *, fmt: str) -> dict:
    """Write each good row's output; pass on everything but the logits."""
    good = batch["error"] == ""
    for output, logits in zip(batch["output"][good], batch["logits"][good], strict=True):
        write_output(Path(output), logits, fmt)
    return {
        key: batch[key] for key in ("output", "error", "timing", "head", "padded", "worker", "recomputed")
    }


# ---- the job -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Item:
    source: str  # the tensor or image file
    output: str  # its output file
    row: ManifestRow | None = None  # an image's manifest row


def image_folder(spec: str) -> Path | None:
    """The folder `--input` names when it is a data set of images (one folder, no tensors), else None."""
    parts = [part.strip() for part in spec.split(",") if part.strip()]
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


def actor_devices(backend: str, spec: str | None) -> list[str]:
    """Each model actor's device: the `--device` list, normalized; one kind; numbered devices distinct."""
    parts = [part.strip() for part in spec.split(",")] if spec else [None]
    devices = [normalize_device(backend, part or None) for part in parts]
    kinds = sorted({device.partition(":")[0] for device in devices})
    if len(kinds) > 1:
        raise UsageError(f"--device {spec}: one kind of device per job, not {' and '.join(kinds)}")
    numbered = [device for device in devices if device != "cpu"]
    if len(set(numbered)) != len(numbered):
        raise UsageError(f"--device {spec}: each device may be named once (repeat cpu for more CPU workers)")
    return devices


def job_identity(args, backend: str) -> dict:
    """What must match for a rerun to continue an unfinished job's output folder."""
    model = Path(args.model).resolve()
    stat = model.stat()
    inputs = [str(Path(part.strip()).resolve()) for part in args.input.split(",") if part.strip()]
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


def open_output_folder(args, identity: dict, inputs: dict[str, list]) -> tuple[Path, Path, dict, int | None]:
    """(output folder, summary path, the job record, how many outputs of an unfinished job were removed or
    None for a new job). An unfinished job's outputs whose input changed or is gone are removed; a new
    folder is prepared. Either way the record of the current inputs is written before anything runs."""
    removed = None
    record: dict = {"job": identity, "inputs": inputs}
    folder = Path(args.output) / args.output_dirname
    path = folder / JOB_RECORD
    command_line = getattr(args, "command_line", sys.argv)
    if path.is_file() and not folder.is_symlink():
        lock_folder(folder)  # this process is its one writer until the job ends (before the record is read)
        try:
            earlier = json.loads(path.read_text())
        except (OSError, ValueError):
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
        summary = Path(args.output) / f"{args.output_dirname}_summary.json"
        mark_running(folder, resume_command(command_line, folder.name))
    else:
        sources = [Path(part.strip()) for part in args.input.split(",") if part.strip()]
        folder, summary = prepare_output(args.output, args.output_dirname, sources, command_line)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ToolkitError(f"{folder}: cannot create the output folder ({exc.strerror or exc})") from None
    write_json(path, record, indent=None)
    return folder, summary, record, removed


class _RanOn:
    """What the summary and report need of a runner, gathered from the model actors."""

    def __init__(self, model: str, workers: list[dict], devices: list[str], fallback: dict):
        self.model_path = Path(model)
        first = dict(workers[0]) if workers else dict(fallback)
        for key in ("host", "pid", "accelerator_ids"):
            first.pop(key, None)
        self.ran = first | {"device": ",".join(devices)}

    def describe(self) -> dict:
        return self.ran


def _failure(exc: BaseException) -> str:
    """The reason of a failed Ray job on one line: the toolkit error inside it when there is one."""
    seen = exc
    while seen is not None:
        if isinstance(seen, ToolkitError):
            return str(seen)
        seen = seen.__cause__ or getattr(seen, "cause", None)
    lines = str(exc).strip().splitlines()
    for line in reversed(lines):  # an error raised in a Ray worker arrives as its traceback's text
        for kind in ("UsageError: ", "ImageError: ", "ToolkitError: "):
            if kind in line:
                return line.split(kind, 1)[1].strip()
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"


def run_job(
    ray,
    args,
    pending: list[Item],
    *,
    images: bool,
    backend: str,
    devices: list[str],
    batch_size: int,
    requests: dict,
):
    """Run the three stages over `pending`, the model actors on `devices`, each asking Ray for `requests`;
    yields each written row's (output, error, timing, ...) batches."""
    import pyarrow as pa

    # whole batches per read task, and at least as many tasks as actors when there is enough work for them
    batches = math.ceil(len(pending) / batch_size)
    per_task = batch_size * max(1, min(math.ceil(IMAGES_PER_READ_TASK / batch_size), batches // len(devices)))
    blocks = [
        pa.table(
            {
                "source": [item.source for item in pending[start : start + per_task]],
                "output": [item.output for item in pending[start : start + per_task]],
            }
        )
        for start in range(0, len(pending), per_task)
    ]
    kind = devices[0].partition(":")[0]
    options = {}
    if getattr(args, "compile", None):
        options["compile"] = args.compile
    if getattr(args, "no_cuda_graph", False):
        options["cuda_graph"] = False
    dataset = (
        ray.data.from_arrow(blocks)
        .map_batches(
            read_stage, batch_size=None, fn_kwargs={"images": images}, num_cpus=1, batch_format="numpy"
        )
        .map_batches(
            ModelStage,
            batch_size=batch_size,
            compute=ray.data.ActorPoolStrategy(size=len(devices)),
            batch_format="numpy",
            fn_constructor_kwargs={
                "model": str(Path(args.model).resolve()),
                "backend": backend,
                # Ray hides all but the actor's own accelerator: inside, it is device 0 of its kind
                "device": "cpu" if kind == "cpu" else f"{kind}:0",
                "precision": args.precision,
                "batch_size": batch_size,
                "options": options,
                "warmup_count": args.warmup_count,
                "loop": args.loop,
            },
            # Ray gives an actor that asks for less than two CPUs one OpenMP thread (PyTorch's CPU threads);
            # its backend should use the cores it finds, as in the local runner. A stage with its own runtime
            # environment is also never fused with the read stage, which must stay in CPU tasks.
            runtime_env={"env_vars": {"OMP_NUM_THREADS": str(usable_cpus(physical=True))}},
            **requests,
        )
        .map_batches(
            write_stage,
            batch_size=None,
            fn_kwargs={"fmt": args.outfmt},
            num_cpus=WRITER_CPUS,
            batch_format="numpy",
        )
    )
    return dataset.iter_batches(batch_size=None, batch_format="numpy")


class _Progress:
    """What the driver learns from the written rows: which outputs are done or failed, timings, workers."""

    def __init__(self, batch_size: int, total: int, show: bool):
        from tqdm import tqdm

        self.record = RunRecord(batch_size=batch_size)
        self.done: set[str] = set()
        self.failures: dict[str, str] = {}  # output -> why its input failed
        self.workers: dict[str, dict] = {}
        self.bar = tqdm(total=total, desc="Inference (ray)", unit="img", disable=not show, file=sys.stderr)

    def take(self, batch: dict) -> None:
        record = self.record
        for index, output in enumerate(batch["output"]):
            if output in self.done:  # a rerun batch that Ray delivered twice
                continue
            self.done.add(output)
            self.bar.update(1)
            if batch["error"][index]:
                self.failures[output] = str(batch["error"][index])
                self.bar.write(f"error: {batch['error'][index]}", file=sys.stderr)
            if batch["head"][index]:  # the first image of a batch carries the batch's measurements
                timing = batch["timing"][index]
                record.compute_ms.extend(float(value) for value in timing[:, 0])
                record.h2d_ms.extend(float(value) for value in timing[:, 1] if not np.isnan(value))
                record.d2h_ms.extend(float(value) for value in timing[:, 2] if not np.isnan(value))
                record.padded += int(batch["padded"][index])
                record.recomputed.extend(json.loads(batch["recomputed"][index]))
                worker = batch["worker"][index]
                self.workers.setdefault(worker, json.loads(worker))
        record.images = len(self.done) - len(self.failures)


def _settle_batch_size(args, backend: str, devices: list[str]) -> tuple[int, dict | None]:
    """(batch size, what the model loaded here reports or None). With CPU devices the model is loaded once
    here, so that one that cannot load fails before the job."""
    requested = args.batchsize or args.dymBatch or None
    if devices[0] != "cpu":
        if not Path(args.model).is_file():
            raise ToolkitError(f"{args.model}: model file not found")
        return requested or 1, None
    with create_runner(
        backend, args.model, device="cpu", precision=args.precision, batch_size=requested or 1
    ) as runner:
        static = runner.static_batch
        loaded = runner.describe()
    if static is not None and requested is not None and requested != static:
        raise UsageError(f"{args.model}: the model takes batches of exactly {static}, not {requested}")
    return requested or static or 1, loaded


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


def _abandon_if_empty(folder: Path, items: list[Item]) -> None:
    """A job that stopped before any output exists leaves nothing: no record, no folder, no mark."""
    if any(os.path.exists(item.output) for item in items):
        return
    try:
        (folder / JOB_RECORD).unlink(missing_ok=True)
    except OSError:
        return
    remove_temporaries(folder, {Path(item.output).name for item in items} | {JOB_RECORD})
    discard_if_empty(folder)


def _run_on_ray(ray, args, pending, items, folder, job, progress, **plan) -> list[str]:
    """Start Ray, run the job over `pending` (`plan`: images, backend, devices, batch_size), stop Ray; the
    devices that ran. A failure, or nodes lost that the job cannot do without, is one ToolkitError line that
    says what to rerun."""
    resume = f"--output_dirname {folder.name}"
    start_ray(ray, args.ray_address)
    try:
        cluster = ray.cluster_resources()
        devices = cap_cpu_copies(plan.pop("devices"), cluster)
        requests = actor_requests(devices, cluster)
        with NodeWatch(ray, devices, requests):
            for batch in run_job(ray, args, pending, devices=devices, requests=requests, **plan):
                progress.take(batch)
                if progress.workers and "ran" not in job:  # kept for a rerun that finds nothing to infer
                    job["ran"] = next(iter(progress.workers.values()))
                    write_json(folder / JOB_RECORD, job, indent=None)
    except (Exception, NodesLost) as exc:
        written = sum(os.path.exists(item.output) for item in items)
        what = f"stopped: {exc}" if isinstance(exc, NodesLost) else f"failed: {_failure(exc)}"
        raise ToolkitError(
            f"the Ray job {what} [stopped: {written} of {len(items)} outputs are in {folder}, each complete; "
            f"rerun with {resume} to continue]"
        ) from None
    finally:
        progress.bar.close()
        ray.shutdown()
    return devices


def infer_command(args) -> int:
    """`twins_pcpvt_s_infer.py --engine ray`: every check first, then the Ray job, summary and report."""
    check_flags(args)
    if not args.input:
        raise UsageError(
            "--engine ray runs folder inference: give --input (pure inference runs with --engine local)"
        )
    if args.output is None:
        raise UsageError("--engine ray writes one output per input: give --output")
    if args.divide_input is not None:
        raise UsageError("--divide_input: the ray engine shares the inputs among its actors itself")
    first_device = (args.device or "").split(",")[0].strip() or None
    backend = resolve_backend(args.backend, args.model, first_device)
    devices = actor_devices(backend, args.device)
    claimed = None if args.output_dirname else new_output_name(Path(args.output))
    args.output_dirname = args.output_dirname or claimed
    try:
        check_job_paths(args.output, args.output_dirname, images=image_folder(args.input) is not None)
        batch_size, loaded = _settle_batch_size(args, backend, devices)
        ray = import_ray()
        identity = job_identity(args, backend)
        items, images = plan_items(args.input, Path(args.output) / args.output_dirname, args.outfmt)
        inputs = input_files(items)
    except BaseException:
        if claimed:
            discard_if_empty(Path(args.output) / claimed)
        raise
    folder, summary_path, job, removed = open_output_folder(args, identity, inputs)
    resume = f"--output_dirname {folder.name}"
    try:
        remove_temporaries(folder, {Path(item.output).name for item in items})
        pending = [item for item in items if not os.path.exists(item.output)]
        if removed is None:
            state = f"; if stopped, rerun with {resume} to continue"
        else:
            state = " (continuing an unfinished job" + (
                f"; removed {removed} outputs whose input changed or is gone)" if removed else ")"
            )
        print(
            f"[INFO] ray engine: {len(pending)} of {len(items)} inputs to infer into {folder}{state}",
            file=sys.stderr,
        )
        progress = _Progress(batch_size, len(pending), not args.no_progress)
        start = time.perf_counter()
        if pending:
            plan = {"images": images, "backend": backend, "devices": devices, "batch_size": batch_size}
            devices = _run_on_ray(ray, args, pending, items, folder, job, progress, **plan)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (run_main turns it into Interrupted)
        _abandon_if_empty(folder, items)
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        written = sum(os.path.exists(item.output) for item in items)
        print(
            f"interrupted ({signal.Signals(signum).name}): {written} of {len(items)} outputs written to "
            f"{folder}, each complete; rerun with {resume} to continue",
            file=sys.stderr,
        )
        return 128 + signum
    except BaseException:
        _abandon_if_empty(folder, items)
        raise
    progress.record.wall_s = time.perf_counter() - start if pending else 0.0
    fallback = job.get("ran") or loaded or {"backend": backend, "precision": args.precision}
    ran = _RanOn(identity["model"], list(progress.workers.values()), devices, fallback)
    return _finish(
        args, items, folder, summary_path, progress, ran, images=images, skipped=len(items) - len(pending)
    )


def _finish(args, items, folder, summary_path, progress, ran, *, images: bool, skipped: int) -> int:
    """After the job: every output there (or its input failed), the manifest, the summary, the report."""
    record = progress.record
    remove_temporaries(folder, {Path(item.output).name for item in items})
    complete = [item for item in items if os.path.exists(item.output)]
    lost = [
        item for item in items if item.output not in progress.failures and not os.path.exists(item.output)
    ]
    if lost:
        raise ToolkitError(
            f"{lost[0].output}: missing after the Ray job, and {len(lost) - 1} more "
            f"[rerun with --output_dirname {folder.name}]"
        )
    positions = {item.output: index for index, item in enumerate(items)}
    record.filesinfo = {
        str(positions[item.output]): {"infiles": [item.source], "outfiles": [item.output]}
        for item in complete
    }
    if images:
        write_manifest(summary_path.parent, [item.row for item in complete], f"{folder.name}_manifest.tsv")
    summary = record.summary(ran, getattr(args, "command_line", sys.argv))
    summary.update(engine="ray", workers=list(progress.workers.values()), skipped_images=skipped)
    write_json(summary_path, summary, indent=None)
    (folder / JOB_RECORD).unlink(missing_ok=True)
    finish_output(folder)
    print("\n".join(record.report_lines(ran, args.display_all_summary)))
    print(f"[INFO] outputs: {folder}  summary: {summary_path}")
    if progress.failures:
        count = len(progress.failures)
        raise ToolkitError(
            f"{count} of {len(items)} inputs failed (each named above); the others are written"
        )
    return 0
