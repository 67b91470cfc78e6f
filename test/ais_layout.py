"""Write inference result folders the way ais_bench does (reference.md section 4), for the tests of the
readers.

Kept independent of the toolkit's own runner on purpose: the readers are tested against the documented layout.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np


def write_output(folder: Path, stem: str, values: np.ndarray, fmt: str = "bin") -> Path:
    """One output file `<stem>_0.<fmt>` holding one image's scores, as ais_bench saves a [1, C] output."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}_0.{fmt}"
    batch = np.asarray(values)[None, :]
    if fmt == "bin":
        batch.tofile(path)
    elif fmt == "npy":
        np.save(path, batch)
    elif fmt == "txt":  # ais_bench: every row as space-separated %f values, then a newline
        buffer = io.BytesIO()
        for row in batch:
            np.savetxt(buffer, np.c_[row], fmt="%f", newline=" ")
            buffer.write(b"\n")
        path.write_bytes(buffer.getvalue())
    else:
        raise ValueError(fmt)
    return path


def write_result(
    output: Path,
    stems,
    logits,
    fmt: str = "bin",
    *,
    name: str = "2024_01_02-03_04_05",
    summary: str = "beside",
) -> Path:
    """`output/<name>/<stem>_0.<fmt>` per image plus the summary JSON: `output/<name>_summary.json` ('beside',
    the current layout), `output/<name>/sumary.json` ('inside', older versions) or none. Returns the output
    folder."""
    folder = output / name
    for stem, values in zip(stems, logits, strict=True):
        write_output(folder, stem, values, fmt)
    folder.mkdir(parents=True, exist_ok=True)
    document = {
        "NPU_compute_time": {"mean": 1.0, "count": len(stems)},
        "throughput": 1000.0,
        "filesinfo": {},
        "args": {"outfmt": fmt.upper()},
    }
    if summary == "beside":
        (output / f"{name}_summary.json").write_text(json.dumps(document))
    elif summary == "inside":
        (folder / "sumary.json").write_text(json.dumps(document))
    return folder


def logits_with_ranks(labels, ranks, classes: int = 1000, seed: int = 0) -> np.ndarray:
    """Scores in which the true class of row i is exactly the ranks[i]-th highest (0: top-1). Scores are 0.01
    apart, so their order survives the 6 decimals of TXT."""
    rng = np.random.default_rng(seed)
    rows = np.empty((len(labels), classes), np.float32)
    levels = np.linspace(5.0, -5.0, classes, dtype=np.float32)
    for row, (label, rank) in enumerate(zip(labels, ranks, strict=True)):
        order = rng.permutation(classes)
        order = np.insert(order[order != label], rank, label)
        rows[row, order] = levels
    return rows
