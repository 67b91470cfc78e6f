"""The ray engine against the local runner: same model, same inputs, one run, same machine.

    .venv/bin/python bench/bench_ray.py [--images 150] [--repeats 2] [--batchsize 1] [--backend onnxruntime]
                                        [--model M.onnx] [--device cpu] [--json out.json]

Exports Twins-PCPVT-S (seeded random weights unless --model; the real architecture and cost) to ONNX,
generates 2N photo-like JPEGs and preprocesses them, then runs `twins_pcpvt_s_infer.py` as a user would, each
command timed from start to exit, for N and for 2N inputs, interleaved, each `--repeats` times (the median
counts):

- tensors: `--engine local` and `--engine ray` over the `.bin` folder;
- images: the preprocess followed by `--engine local`, against `--engine ray` over the image folder (the
  transform in Ray tasks, no tensor written).

Steady-state throughput is N / (time for 2N - time for N): it leaves out what every run pays once (Python and
Ray start-up, model load, warm-up), which a job of millions of images does not notice. The ratio ray / local
of these rates is the engine's efficiency on one host; the 2N wall times are printed too. Every ray output is
checked against the local one (within 1e-4, same top-1). The load average before and after is printed, as
other processes on the machine change the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_preprocess import generate_images  # noqa: E402

from twins_pcpvt.benchreport import machine_info, machine_line  # noqa: E402
from twins_pcpvt.data import preprocess_dataset  # noqa: E402

INFER = str(ROOT / "twins_pcpvt_s_infer.py")
PREPROCESS = str(ROOT / "twins_pcpvt_s_preprocess.py")
TIME_LIMIT_S = 1800


def timed(command: list[str]) -> float:
    """Seconds `command` took from start to exit; it must succeed."""
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=TIME_LIMIT_S)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"bench_ray: failed ({done.returncode}): {' '.join(command)}\n{done.stderr[-2000:]}")
    return seconds


def linked_subset(source: Path, target: Path, names: list[str]) -> Path:
    """`target` holding hard links to the first files `names` of `source` (no copy, regular files)."""
    target.mkdir(parents=True)
    for name in names:
        os.link(source / name, target / name)
    return target


def compare(local: Path, ray: Path) -> float:
    """Largest difference of the two folders' outputs; fails unless same names, within 1e-4, same top-1."""
    names = sorted(path.name for path in local.glob("*_0.bin"))
    if names != sorted(path.name for path in ray.glob("*_0.bin")):
        raise SystemExit(f"bench_ray: {ray} and {local} hold different outputs")
    largest = 0.0
    for name in names:
        a, b = np.fromfile(local / name, "<f4"), np.fromfile(ray / name, "<f4")
        largest = max(largest, float(np.abs(a - b).max()))
        if np.argmax(a) != np.argmax(b):
            raise SystemExit(f"bench_ray: {name}: top-1 differs between the engines")
    if largest > 1e-4:
        raise SystemExit(f"bench_ray: outputs differ by {largest} (> 1e-4)")
    return largest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--images", type=int, default=150, help="N: the runs take N and 2N inputs (default 150)"
    )
    parser.add_argument(
        "--repeats", type=int, default=2, help="rounds; each time is their median (default 2)"
    )
    parser.add_argument("--batchsize", type=int, default=1)
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--device", default="cpu", help="the ray engine's --device list (default: cpu)")
    parser.add_argument("--model", help="an ONNX model (default: export the random-weight model)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_ray.") as scratch:
        work = Path(scratch)
        model = args.model
        if model is None:
            from twins_pcpvt.export import export_onnx
            from twins_pcpvt.model import load_model

            model = str(work / "twins_dynamic.onnx")
            export_onnx(load_model(None, random_init=True, seed=0), Path(model))
        images = work / "images"
        images.mkdir()
        generate_images(images, 2 * args.images)
        prep = work / "prep"
        preprocess_dataset(images, prep, progress=False)
        all_images = sorted(path.name for path in images.iterdir())
        inputs = {}
        for size in (args.images, 2 * args.images):
            chosen = all_images[:size]
            inputs[size] = {
                "images": linked_subset(images, work / f"images_{size}", chosen),
                "tensors": linked_subset(
                    prep, work / f"prep_{size}", [Path(n).stem + ".bin" for n in chosen]
                ),
            }
        common = [sys.executable, INFER, "--model", model, "--backend", args.backend, "--batchsize",
                  str(args.batchsize), "--outfmt", "BIN", "--no-progress"]  # fmt: skip
        runs: dict[str, dict[int, list[float]]] = {}
        outputs: dict[str, Path] = {}

        def run(name: str, size: int, commands: list[list[str]], output: Path) -> None:
            if output.exists():
                shutil.rmtree(output)
            runs.setdefault(name, {}).setdefault(size, []).append(sum(timed(command) for command in commands))
            outputs[name] = output

        sizes = [args.images, 2 * args.images] * args.repeats
        for size in sizes:  # interleaved: ray and local alternate
            tensors, pictures = inputs[size]["tensors"], inputs[size]["images"]
            out = work / "out"
            local = [*common, "--input", str(tensors), "--output", str(out), "--output_dirname", "local"]
            run("tensors, local", size, [local], out / "local")
            ray = [*common, "--engine", "ray", "--device", args.device, "--input", str(tensors), "--output",
                   str(out), "--output_dirname", "ray"]  # fmt: skip
            run("tensors, ray", size, [ray], out / "ray")
            prep_again = work / f"prep_again_{size}"
            shutil.rmtree(prep_again, ignore_errors=True)
            preprocess = [sys.executable, PREPROCESS, "--data_path", str(pictures), "--prep_dataset",
                          str(prep_again), "--no-progress"]  # fmt: skip
            local = [
                *common,
                "--input",
                str(prep_again),
                "--output",
                str(out),
                "--output_dirname",
                "img_local",
            ]
            run("images, preprocess + local", size, [preprocess, local], out / "img_local")
            ray = [*common, "--engine", "ray", "--device", args.device, "--input", str(pictures), "--output",
                   str(out), "--output_dirname", "img_ray"]  # fmt: skip
            run("images, ray", size, [ray], out / "img_ray")
        largest = max(
            compare(outputs["tensors, local"], outputs["tensors, ray"]),
            compare(outputs["images, preprocess + local"], outputs["images, ray"]),
        )
    load_after = os.getloadavg()
    seconds = {
        name: {size: statistics.median(times) for size, times in by_size.items()}
        for name, by_size in runs.items()
    }
    machine = machine_info()
    rates = {
        name: args.images / (times[2 * args.images] - times[args.images]) for name, times in seconds.items()
    }
    print(f"machine: {machine_line(machine)}; CPU flags: {' '.join(machine['cpu_flags'])}")
    print(f"load average (1, 5, 15 min) before: {load_before}, after: {load_after}")
    print(f"model {model if args.model else 'Twins-PCPVT-S, random weights'}, backend {args.backend}, "
          f"batch {args.batchsize}, ray --device {args.device}; N = {args.images}")  # fmt: skip
    print(f"ray outputs equal the local ones within {largest:.2g} (same top-1)\n")
    print("| inputs, engine | wall s, N | wall s, 2N | steady images/s | ray / local |")
    print("|---|---|---|---|---|")
    for name, times in seconds.items():
        kind = name.split(",")[0]
        baseline = next(rate for other, rate in rates.items() if other.startswith(kind) and "local" in other)
        ratio = f"{rates[name] / baseline:.2f}" if "ray" in name else ""
        small, large = times[args.images], times[2 * args.images]
        print(f"| {name} | {small:.1f} | {large:.1f} | {rates[name]:.2f} | {ratio} |")
    if args.json:
        report = {"command": " ".join(sys.argv), "machine": machine, "load_before": load_before,
                  "load_after": load_after, "settings": vars(args), "seconds": runs,
                  "images_per_second": rates, "largest_difference": largest}  # fmt: skip
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
