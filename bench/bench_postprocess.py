"""Postprocess speed on an ImageNet-val-sized result: twins_pcpvt_s_postprocess.py end to end against a
per-file loop.

    .venv/bin/python bench/bench_postprocess.py [--count 50000] [--format bin|npy|txt] [--repeats 3]

Generates COUNT outputs in ais_bench's layout (`result/<timestamp>/<stem>_0.<fmt>`, written by our runner's
writer) and a val_label.txt in a temporary folder, then times, in interleaved rounds, (1) the per-image loop
the Model Zoo's postprocess scripts use (read one file, argsort it, check its top-5; in this process, so
without start-up costs) and (2) the guide's postprocess command, run as a fresh process each time (start-up,
imports, listing, reading, scoring and writing result.json included). Files are read from the page cache after
the first round: the numbers measure the work of the scripts, not the disk. Prints the medians and whether
both ways agree; exit status 1 if not.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.benchreport import cpu_model  # noqa: E402
from twins_pcpvt.common import usable_cpus  # noqa: E402
from twins_pcpvt.infer.outputs import write_output  # noqa: E402


def per_file_loop(folder: Path, labels: dict[str, int], fmt: str) -> tuple[float, float]:
    """Top-1 and top-5 the one-image-at-a-time way: one read and one full argsort per output."""
    top1 = top5 = 0
    paths = sorted(folder.glob(f"*_0.{fmt}"))
    for path in paths:
        if fmt == "bin":
            scores = np.fromfile(path, dtype=np.float32)
        elif fmt == "npy":
            scores = np.load(path).reshape(-1)
        else:
            scores = np.loadtxt(path, dtype=np.float32)
        best = np.argsort(-scores)[:5]
        label = labels[path.name[: -len(f"_0.{fmt}")]]
        top1 += int(best[0] == label)
        top5 += int(label in best)
    return top1 / len(paths), top5 / len(paths)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=50000, help="generated outputs (default 50000)")
    parser.add_argument(
        "--format", choices=("bin", "npy", "txt"), default="bin", help="output format (default bin)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the median is reported")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench_postprocess_") as scratch:
        scratch = Path(scratch)
        rng = np.random.default_rng(0)
        stems = [f"ILSVRC2012_val_{index + 1:08d}" for index in range(args.count)]
        labels = rng.integers(0, 1000, args.count)
        logits = rng.standard_normal((args.count, 1000), dtype=np.float32)
        logits[np.arange(args.count), labels] += rng.uniform(0, 4, args.count).astype(np.float32)
        started = time.perf_counter()
        folder = scratch / "result" / "2024_01_02-03_04_05"
        folder.mkdir(parents=True)
        for stem, scores in zip(stems, logits, strict=True):
            write_output(folder / f"{stem}_0.{args.format}", scores, args.format.upper())
        generated = time.perf_counter() - started
        label_file = scratch / "val_label.txt"
        label_file.write_text(
            "".join(f"{stem}.JPEG {label}\n" for stem, label in zip(stems, labels, strict=True))
        )
        command = [
            sys.executable,
            str(ROOT / "twins_pcpvt_s_postprocess.py"),
            "--folder-davinci-target",
            str(scratch / "result"),
            "--annotation-file-path",
            str(label_file),
            "--result-json-path",
            str(scratch),
            "--json-file-name",
            "result.json",
        ]
        label_map = dict(zip(stems, labels.tolist(), strict=True))

        seconds: dict[str, list[float]] = {"per-file loop": [], "twins_pcpvt_s_postprocess.py": []}
        for _ in range(args.repeats):
            started = time.perf_counter()
            reference = per_file_loop(folder, label_map, args.format)
            seconds["per-file loop"].append(time.perf_counter() - started)
            started = time.perf_counter()
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            seconds["twins_pcpvt_s_postprocess.py"].append(time.perf_counter() - started)
        result = json.loads((scratch / "result.json").read_text())
        agree = abs(result["top1"] - reference[0]) < 1e-12 and abs(result["top5"] - reference[1]) < 1e-12

        print(
            f"{args.count} {args.format.upper()} outputs (generated in {generated:.1f} s); "
            f"{args.repeats} interleaved rounds, median"
        )
        print(
            f"machine: {cpu_model()}, {usable_cpus()} usable CPUs, load average {os.getloadavg()[0]:.2f}; "
            f"Python {platform.python_version()}, NumPy {np.__version__}"
        )
        print()
        print(f"| {'way':<32} | {'seconds':>8} | {'outputs/s':>10} |")
        print(f"|{'-' * 34}|{'-' * 9}:|{'-' * 11}:|")
        for name, times in seconds.items():
            median = statistics.median(times)
            print(f"| {name:<32} | {median:>8.2f} | {args.count / median:>10.0f} |")
        print()
        print(
            f"top-1 {100 * result['top1']:.2f}%, top-5 {100 * result['top5']:.2f}%: "
            + ("both ways agree" if agree else f"DISAGREE with the per-file loop {reference}")
        )
    return 0 if agree else 1


if __name__ == "__main__":
    raise SystemExit(main())
