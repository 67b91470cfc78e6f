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

The stages live in ray_stages.py; the inputs with their outputs, the job's identity and its record in
ray_plan.py; what the actors ask of the cluster, Ray's start-up and the watch over lost nodes in
ray_cluster.py.
SIGTERM is handled as Ctrl-C: one line with the rerun hint, exit 128 + the signal number. A job that stops
before its first output leaves no folder, mark or job record.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

from ..backends import create_runner, resolve_backend
from ..common import Interrupted, ToolkitError, UsageError, remove_temporaries, usable_cpus
from ..data import write_manifest
from ..report import write_json
from .devices import actor_devices, device_entries
from .flags import check_flags, requested_batch, runner_options, settle_batch_size
from .outputs import discard_if_empty, finish_output, new_output_name
from .ray_cluster import NodesLost, NodeWatch, actor_requests, cap_cpu_copies, import_ray, start_ray
from .ray_plan import (
    JOB_RECORD,
    Item,
    abandon_if_empty,
    check_job_paths,
    image_folder,
    input_files,
    job_identity,
    open_output_folder,
    plan_items,
)
from .ray_stages import ModelStage, read_stage, write_stage
from .record import RunRecord

IMAGES_PER_READ_TASK = 16  # rounded up to whole batches, so that the model stage sees full batches
WRITER_CPUS = 0.25


def _ran_on(workers: list[dict], devices: list[str], fallback: dict) -> dict:
    """What ran, as the summary and report take a runner's description: the first model actor's, on all the
    job's devices (`fallback` when no actor ran)."""
    first = dict(workers[0]) if workers else dict(fallback)
    for key in ("host", "pid", "accelerator_ids"):
        first.pop(key, None)
    return first | {"device": ",".join(devices)}


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
                "options": runner_options(args),
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
    requested = requested_batch(args)
    if devices[0] != "cpu":
        if not Path(args.model).is_file():
            raise ToolkitError(f"{args.model}: model file not found")
        return requested or 1, None
    with create_runner(
        backend, args.model, device="cpu", precision=args.precision, batch_size=requested or 1
    ) as runner:
        static = runner.static_batch
        loaded = runner.describe()
    return settle_batch_size(args.model, static, requested), loaded


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


def _check_ray_flags(args) -> None:
    """The flag checks of the local runner, and what the ray engine needs besides."""
    check_flags(args)
    if not args.input:
        raise UsageError(
            "--engine ray runs folder inference: give --input (pure inference runs with --engine local)"
        )
    if args.output is None:
        raise UsageError("--engine ray writes one output per input: give --output")
    if args.divide_input is not None:
        raise UsageError("--divide_input: the ray engine shares the inputs among its actors itself")


def infer_command(args) -> int:
    """`twins_pcpvt_s_infer.py --engine ray`: every check first, then the Ray job, summary and report."""
    _check_ray_flags(args)
    first_device = (device_entries(args.device)[0] or "").strip() or None
    backend = resolve_backend(args.backend, args.model, first_device)
    devices = actor_devices(backend, args.device)
    made_root = not os.path.lexists(args.output)
    claimed = None if args.output_dirname else new_output_name(Path(args.output))
    dirname = args.output_dirname or claimed
    try:
        check_job_paths(args.output, dirname, images=image_folder(args.input) is not None)
        batch_size, loaded = _settle_batch_size(args, backend, devices)
        ray = import_ray()
        identity = job_identity(args, backend)
        items, images = plan_items(args.input, Path(args.output) / dirname, args.outfmt)
        inputs = input_files(items)
    except BaseException:
        if claimed:
            discard_if_empty(Path(args.output) / claimed)
            if made_root:  # the --output that new_output_name made for the claim, if left empty
                with contextlib.suppress(OSError):
                    Path(args.output).rmdir()
        raise
    folder, summary_path, job, removed = open_output_folder(args, dirname, identity, inputs)
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
        abandon_if_empty(folder, items)
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        written = sum(os.path.exists(item.output) for item in items)
        print(
            f"interrupted ({signal.Signals(signum).name}): {written} of {len(items)} outputs written to "
            f"{folder}, each complete; rerun with {resume} to continue",
            file=sys.stderr,
        )
        return 128 + signum
    except BaseException:
        abandon_if_empty(folder, items)
        raise
    progress.record.wall_s = time.perf_counter() - start if pending else 0.0
    fallback = job.get("ran") or loaded or {"backend": backend, "precision": args.precision}
    ran = _ran_on(list(progress.workers.values()), devices, fallback)
    return _finish(
        args,
        items,
        folder,
        summary_path,
        progress,
        ran,
        identity["model"],
        images=images,
        skipped=len(items) - len(pending),
    )


def _finish(args, items, folder, summary_path, progress, ran, model, *, images: bool, skipped: int) -> int:
    """After the job: every output there (or its input failed), the manifest, the summary (`ran` on `model`),
    the report."""
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
    summary = record.summary(ran, model, getattr(args, "command_line", sys.argv))
    summary.update(engine="ray", workers=list(progress.workers.values()), skipped_images=skipped)
    write_json(summary_path, summary, indent=None)
    (folder / JOB_RECORD).unlink(missing_ok=True)
    finish_output(folder)
    print("\n".join(record.report_lines(ran, model, args.display_all_summary)))
    print(f"[INFO] outputs: {folder}  summary: {summary_path}")
    if progress.failures:
        count = len(progress.failures)
        raise ToolkitError(
            f"{count} of {len(items)} inputs failed (each named above); the others are written"
        )
    return 0
