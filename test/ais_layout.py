"""Write inference result folders the way ais_bench does (docs/formats.md), for the tests of the
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


def write_devices(output: Path, stems, logits, layout: str, name: str = "2024_01_02-03_04_05") -> Path:
    """A multi-device run: '2023' splits the images over `device0/`, `device1/`; '2024-divided' over
    `device0_0/`, `device1_1/`; '2024' gives every image to both. Each with `<device>_summary.json` beside
    it."""
    half = (len(stems) + 1) // 2
    folders = ["device0", "device1"] if layout == "2023" else ["device0_0", "device1_1"]
    parts = [slice(0, len(stems))] * 2 if layout == "2024" else [slice(0, half), slice(half, None)]
    for folder, part in zip(folders, parts, strict=True):
        write_result(output / name, stems[part], logits[part], name=folder)
    return output / name


def write_result(
    output: Path,
    stems,
    logits,
    fmt: str = "bin",
    *,
    name: str = "2024_01_02-03_04_05",
    summary: str = "beside",
    args: list[str] | None = None,
) -> Path:
    """`output/<name>/<stem>_0.<fmt>` per image plus the summary JSON: `output/<name>_summary.json` ('beside',
    the current layout), `output/<name>/sumary.json` ('inside', older versions) or none; `args` is the command
    line it records. Returns the output folder."""
    folder = output / name
    for stem, values in zip(stems, logits, strict=True):
        write_output(folder, stem, values, fmt)
    folder.mkdir(parents=True, exist_ok=True)
    document = {
        "NPU_compute_time": {"mean": 1.0, "count": len(stems)},
        "throughput": 1000.0,
        "filesinfo": {},
        "H2D_latency": {"mean": 0.0, "count": 0},
        "D2H_latency": {"mean": 0.0, "count": 0},
        # the command line, as ais_bench records it
        "args": args or ["ais_bench/__main__.py", "--outfmt", fmt.upper()],
    }
    if summary == "beside":
        (output / f"{name}_summary.json").write_text(json.dumps(document))
    elif summary == "inside":
        (folder / "sumary.json").write_text(json.dumps(document))
    return folder


def write_split_run(
    output: Path,
    stems,
    logits,
    layout: str,
    stamps=("2024_06_01-10_00_00", "2024_06_01-10_00_01"),
    model="m.om",
) -> list[Path]:
    """One `--device 0,1` run that ais_bench wrote into two time-stamp folders, as its device processes do
    when they stamp their folders in different seconds: device 0's folder under `stamps[0]`, device 1's under
    `stamps[1]`. Layouts as in `write_devices`; each device summary records the run's command line."""
    half = (len(stems) + 1) // 2
    folders = ["device0", "device1"] if layout == "2023" else ["device0_0", "device1_1"]
    parts = [slice(0, len(stems))] * 2 if layout == "2024" else [slice(0, half), slice(half, None)]
    args = [
        "ais_bench/__main__.py",
        "--model",
        model,
        "--input",
        "prep",
        "--output",
        str(output),
        "--device",
        "0,1",
    ]
    if layout == "2024-divided":
        args += ["--divide_input", "true"]
    for stamp, folder, part in zip(stamps, folders, parts, strict=True):
        write_result(output / stamp, stems[part], logits[part], name=folder, args=args)
    return [output / stamp for stamp in stamps]


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


def read_outputs(folder) -> dict[str, np.ndarray]:
    """Stem (no `_0` suffix) -> float32 class scores, of the output folder at `folder` or its parent."""
    from twins_pcpvt.results import load_outputs

    return load_outputs(folder).as_dict()
