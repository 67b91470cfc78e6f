"""Preprocess throughput: the reference way (torchvision per image, one process, `tofile`) against ours.

    .venv/bin/python bench/bench_preprocess.py [--images 600] [--repeats 3] [--workers N]

Generates ImageNet-like JPEGs (mostly 500x375, some 375x500 and 500x333, quality 90) in a temporary folder,
then times, in interleaved rounds, (1) the guide's transform written with torchvision
(`Image.open().convert('RGB')`, Resize(256, bicubic), CenterCrop(224), ToTensor, Normalize, then `tofile`), as
is and with torch limited to one thread, (2) twins_pcpvt.data.preprocess_dataset with 1 worker and (3) with
all cores, each end to end (listing, decoding, transform, writing, manifest). Prints the median images/s of
each way, its ratio to the reference, and whether all outputs are byte-identical to the reference's.
CPU ms/image (this process and its workers, all cores together) is less sensitive to other load on the
machine than images/s. Exit status 1 when the outputs differ.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.benchreport import cpu_model  # noqa: E402
from twins_pcpvt.common import IMAGENET_MEAN, IMAGENET_STD, usable_cpus  # noqa: E402
from twins_pcpvt.data import discover_images, preprocess_dataset  # noqa: E402

SIZES = [(500, 375)] * 6 + [(375, 500)] * 2 + [(500, 333)] * 2  # the commonest ImageNet val shapes


def generate_images(folder: Path, count: int, seed: int = 0) -> int:
    """Write `count` photo-like JPEGs (smooth structure plus grain, quality 90); returns their total bytes."""
    rng = np.random.default_rng(seed)
    total = 0
    for index in range(count):
        width, height = SIZES[index % len(SIZES)]
        coarse = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
        smooth = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
        smooth = np.asarray(smooth, dtype=np.int16)
        grain = rng.normal(0, 12, (height, width, 3))
        pixels = np.clip(smooth + grain, 0, 255).astype(np.uint8)
        path = folder / f"ILSVRC2012_val_{index + 1:08d}.JPEG"
        Image.fromarray(pixels).save(path, "JPEG", quality=90)
        total += path.stat().st_size
    return total


def reference_way(data: Path, out: Path, torch_threads: int | None = None) -> None:
    """What the upstream script does per image: torchvision transform, then `tofile`, one process.

    `torch_threads` sets torch's intra-op threads for the run (default: torch's own choice, all cores).
    """
    import torch
    from torchvision import transforms

    pipeline = transforms.Compose(
        [
            transforms.Resize(256, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    out.mkdir()
    threads = torch.get_num_threads()
    torch.set_num_threads(torch_threads or threads)
    try:
        for path in sorted(data.iterdir()):
            with Image.open(path) as image:
                tensor = pipeline(image.convert("RGB"))
            tensor.numpy().tofile(out / f"{path.stem}.bin")
    finally:
        torch.set_num_threads(threads)


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the pool's workers, once shut down)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(function, *args) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one call."""
    cpu, wall = cpu_seconds(), time.perf_counter()
    function(*args)
    return time.perf_counter() - wall, cpu_seconds() - cpu


def compare_outputs(reference: Path, other: Path, stems: list[str]) -> tuple[bool, float]:
    identical, worst = True, 0.0
    for stem in stems:
        a = (reference / f"{stem}.bin").read_bytes()
        b = (other / f"{stem}.bin").read_bytes()
        if a != b:
            identical = False
            if len(a) == len(b):
                worst = max(worst, float(np.abs(np.frombuffer(a, "<f4") - np.frombuffer(b, "<f4")).max()))
            else:
                worst = float("inf")
    return identical, worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--images",
        type=int,
        default=600,
        help="generated images (default 600: seconds of work amortise the pool start)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the median is reported")
    parser.add_argument(
        "--workers", type=int, default=usable_cpus(), help="workers of the parallel run (default: all cores)"
    )
    args = parser.parse_args(argv)

    load_before = os.getloadavg()
    import torch  # noqa: F401 - imported before timing, as a long-running reference script would have it

    with tempfile.TemporaryDirectory(prefix="bench_preprocess_") as scratch:
        scratch = Path(scratch)
        data = scratch / "images"
        data.mkdir()
        total_bytes = generate_images(data, args.images)
        stems = [row.stem for row in discover_images(data)]
        ways = {
            "reference (torchvision, 1 process)": lambda out: reference_way(data, out),
            "reference, torch 1 thread": lambda out: reference_way(data, out, torch_threads=1),
            "ours, 1 worker": lambda out: preprocess_dataset(data, out, workers=1, progress=False),
            f"ours, {args.workers} workers": lambda out: preprocess_dataset(
                data, out, workers=args.workers, progress=False
            ),
        }
        for way in ways.values():  # warm-up: imports, first-call costs, page cache
            way(scratch / "warmup")
            shutil.rmtree(scratch / "warmup")
        seconds: dict[str, list[float]] = {name: [] for name in ways}
        cpu: dict[str, list[float]] = {name: [] for name in ways}
        outputs = {name: scratch / f"out{index}" for index, name in enumerate(ways)}
        for _ in range(args.repeats):
            for name, way in ways.items():
                shutil.rmtree(outputs[name], ignore_errors=True)
                wall, used = timed(way, outputs[name])
                seconds[name].append(wall)
                cpu[name].append(used)

        reference_name = next(iter(ways))
        rates = {name: args.images / statistics.median(times) for name, times in seconds.items()}
        print(
            f"{args.images} JPEGs, {total_bytes / args.images / 1024:.0f} KiB each on average; "
            f"{args.repeats} interleaved rounds, median"
        )
        print(
            f"machine: {cpu_model()}, {usable_cpus()} usable CPUs, load average before "
            f"{' '.join(f'{x:.2f}' for x in load_before)}; Python {platform.python_version()}"
        )
        print()
        header = ("way", "images/s", "vs reference", "CPU ms/image", "outputs")
        print("| {:<36} | {:>9} | {:>12} | {:>12} | {:<22} |".format(*header))
        print(f"|{'-' * 38}|{'-' * 10}:|{'-' * 13}:|{'-' * 13}:|{'-' * 24}|")
        all_identical = True
        for name in ways:
            if name == reference_name:
                verdict = "-"
            else:
                identical, worst = compare_outputs(outputs[reference_name], outputs[name], stems)
                all_identical &= identical
                verdict = "byte-identical" if identical else f"DIFFER (max {worst:.3g})"
            ratio = rates[name] / rates[reference_name]
            cpu_ms = 1000 * statistics.median(cpu[name]) / args.images
            print(f"| {name:<36} | {rates[name]:>9.1f} | {ratio:>11.2f}x | {cpu_ms:>12.2f} | {verdict:<22} |")
    return 0 if all_identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
