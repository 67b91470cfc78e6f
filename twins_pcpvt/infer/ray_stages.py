"""The three stages of a Ray job, run in Ray's workers: read (CPU tasks), model (one actor per device), write
(CPU tasks). Batches travel between them as dicts of numpy columns; a row whose input failed carries its error
message and no tensor, and the first row of each model batch carries the batch's measurements."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np

from ..backends import create_runner
from ..backends.base import pad_batch
from ..common import INPUT_SHAPE, NUM_CLASSES, ToolkitError, UsageError
from ..data import preprocess_image
from .inputs import pad_batch_names, read_input
from .outputs import write_output


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
