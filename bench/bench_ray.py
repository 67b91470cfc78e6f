"""The ray engine against the local runner: same model, same inputs, one run, same machine.

    .venv/bin/python bench/bench_ray.py [--images 120] [--repeats 2] [--batchsize 1] [--backend onnxruntime]
                                        [--model M.onnx] [--device cpu] [--json out.json]

Exports Twins-PCPVT-S (seeded random weights unless --model; the real architecture and cost) to ONNX,
generates N photo-like JPEGs and preprocesses them, then runs `twins_pcpvt_s_infer.py` as a user would,
interleaved, `--repeats` times (medians count):

- tensors: `--engine local` and `--engine ray` over the `.bin` folder;
- images: the preprocess followed by `--engine local`, against `--engine ray` over the image folder (the
  transform in Ray tasks, no tensor written).

Two rates per run: N / wall time of the whole command(s), start-up included (Python, Ray, model load), and,
for the tensor runs, the steady rate of the outputs: outputs written after the first write / time from the
first write to the last (file modification times), which leaves out what a run pays once and a job of millions
of images does not notice. ray / local of the steady rates is the engine's efficiency on one host. Every ray
output is checked against the local one (within 1e-4, same top-1). The load average before and after is
printed, as other processes on the machine change the numbers.
"""

from __future__ import annotations

import argparse
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

from bench.benchreport import machine_info, machine_line  # noqa: E402
from twins_pcpvt.common import ToolkitError, check_output_file  # noqa: E402
from twins_pcpvt.data import preprocess_dataset  # noqa: E402
from twins_pcpvt.report import write_json  # noqa: E402

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


def steady_rate(folder: Path) -> float:
    """Outputs written after the first write, per second from the first write to the last."""
    times = sorted(path.stat().st_mtime_ns for path in folder.glob("*_0.bin"))
    first_write = [time_ns for time_ns in times if time_ns - times[0] <= 50_000_000]  # one write task's files
    span = (times[-1] - times[0]) / 1e9
    return (len(times) - len(first_write)) / span if span > 0 else 0.0


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
    if args.json:
        try:
            check_output_file(args.json, probe=True)  # before the minutes of measuring
        except ToolkitError as exc:
            parser.error(str(exc))
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
        generate_images(images, args.images)
        prep = work / "prep"
        preprocess_dataset(images, prep, progress=False)
        out = work / "out"
        prep_again = work / "prep_again"
        infer = [sys.executable, INFER, "--model", model, "--backend", args.backend, "--batchsize",
                 str(args.batchsize), "--outfmt", "BIN", "--no-progress", "--output", str(out),
                 "--output_dirname", "run"]  # fmt: skip
        ray = [*infer, "--engine", "ray", "--device", args.device]
        preprocess = [sys.executable, PREPROCESS, "--data_path", str(images), "--prep_dataset",
                      str(prep_again), "--no-progress"]  # fmt: skip
        configs = {
            "tensors, local": [[*infer, "--input", str(prep)]],
            "tensors, ray": [[*ray, "--input", str(prep)]],
            "images, preprocess + local": [preprocess, [*infer, "--input", str(prep_again)]],
            "images, ray": [[*ray, "--input", str(images)]],
        }
        walls: dict[str, list[float]] = {}
        steadies: dict[str, list[float]] = {}
        for _ in range(args.repeats):
            for name, commands in configs.items():  # interleaved: ray and local alternate
                shutil.rmtree(out, ignore_errors=True)
                shutil.rmtree(prep_again, ignore_errors=True)
                wall = sum(timed(command) for command in commands)
                walls.setdefault(name, []).append(wall)
                steadies.setdefault(name, []).append(steady_rate(out / "run"))
                print(f"{name}: {wall:.1f} s, steady {steadies[name][-1]:.2f} images/s "
                      f"(load {os.getloadavg()[0]:.1f})", file=sys.stderr, flush=True)  # fmt: skip
                shutil.copytree(out / "run", work / name, dirs_exist_ok=True)
        largest = max(
            compare(work / "tensors, local", work / "tensors, ray"),
            compare(work / "images, preprocess + local", work / "images, ray"),
        )
    load_after = os.getloadavg()
    wall = {name: statistics.median(values) for name, values in walls.items()}
    steady = {name: statistics.median(values) for name, values in steadies.items()}
    machine = machine_info()
    print(f"machine: {machine_line(machine)}; CPU flags: {' '.join(machine['cpu_flags'])}")
    print(f"load average (1, 5, 15 min) before: {load_before}, after: {load_after}")
    print(f"model {model if args.model else 'Twins-PCPVT-S, random weights'}, backend {args.backend}, "
          f"batch {args.batchsize}, ray --device {args.device}; {args.images} inputs, "
          f"{args.repeats} repeats")  # fmt: skip
    print(f"ray outputs equal the local ones within {largest:.2g} (same top-1)\n")
    print("| inputs, engine | wall s | images/s, wall | images/s, steady | ray / local: wall | steady |")
    print("|---|---|---|---|---|---|")
    for name in configs:
        tensors = name.startswith("tensors")
        local = "tensors, local" if tensors else "images, preprocess + local"
        ratio_wall = f"{wall[local] / wall[name]:.2f}" if "ray" in name else ""
        ratio_steady = f"{steady[name] / steady[local]:.2f}" if "ray" in name and tensors else ""
        rate = f"{steady[name]:.2f}" if tensors else "-"
        row = [name, f"{wall[name]:.1f}", f"{args.images / wall[name]:.2f}", rate, ratio_wall, ratio_steady]
        print("| " + " | ".join(row) + " |")
    if args.json:
        report = {"command": " ".join(sys.argv), "machine": machine, "load_before": load_before,
                  "load_after": load_after, "settings": vars(args), "wall_seconds": walls,
                  "steady_images_per_second": steadies, "largest_difference": largest}  # fmt: skip
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
