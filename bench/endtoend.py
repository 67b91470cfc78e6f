"""End-to-end subjects of the CPU benchmark, each run as a process of its own: OpenVINO's `benchmark_app`
(the peer an OpenVINO user measures with) and our infer script on a folder of tensors; plus the model's FLOPs
per image and the machine's peak, measured by the same runtime, that every subject is reported against.

benchmark_app's figure is its own `Throughput: N FPS` (images per second over its timed loop, inputs already
in place). Ours is the folder run's end-to-end rate from its summary (`end_to_end_images_per_second`: reading
the tensors, inference and writing every output), beside the guide's compute-only ais_bench throughput.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from twins_pcpvt.common import usable_cpus

ROOT = Path(__file__).resolve().parents[1]
INFER_SCRIPT = ROOT / "twins_pcpvt_s_infer.py"
BENCHMARK_APP_ROWS = {"benchmark_app": None, "benchmark_app -hint latency": "latency"}
OURS_FOLDER_LABEL = "ours: infer script, folder (end to end)"
PEAK_SIZE = 1024  # square MatMul side: big enough for the kernels' best rate, small enough to be quick
PEAK_CHAIN = 8  # MatMuls per inference: one call runs long enough to time well


@dataclass
class Measurement:
    images: int
    seconds: float
    precision: str
    details: dict

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0


def benchmark_app_path() -> Path | None:
    """The `benchmark_app` the `openvino` wheel installs beside this interpreter, else the one on PATH."""
    beside = Path(sys.executable).with_name("benchmark_app")
    if beside.is_file():
        return beside
    found = shutil.which("benchmark_app")
    return Path(found) if found else None


def parse_benchmark_app(text: str) -> Measurement:
    """Count, duration, throughput and precision from benchmark_app's report; ValueError if one is missing."""

    def find(pattern: str) -> str:
        match = re.search(pattern, text)
        if match is None:
            raise ValueError(f"benchmark_app's report has no line matching {pattern!r}")
        return match.group(1)

    iterations = int(find(r"Count:\s+(\d+) iterations"))
    duration_ms = float(find(r"Duration:\s+([0-9.]+) ms"))
    fps = float(find(r"Throughput:\s+([0-9.]+) FPS"))
    batch = int(find(r"Model batch size:\s+(\d+)"))
    hint = find(r"INFERENCE_PRECISION_HINT: <Type: '(\w+)'>")
    precision = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(hint, hint)
    details = {
        "iterations": iterations,
        "fps": fps,
        "streams": int(find(r"NUM_STREAMS: (\d+)")),
        "mode": find(r"Start inference (a?synchronously)"),
        "performance_hint": find(r"PERFORMANCE_HINT: (\w+)"),
    }
    return Measurement(iterations * batch, duration_ms / 1000.0, precision, details)


def run_benchmark_app(onnx: Path, batch_size: int, seconds: float, hint: str | None) -> Measurement:
    app = benchmark_app_path()
    if app is None:
        raise RuntimeError("benchmark_app not found (it comes with `pip install openvino`)")
    command = [str(app), "-m", str(onnx), "-d", "CPU", "-shape", f"[{batch_size},3,224,224]"]
    command += ["-t", f"{max(1, round(seconds))}"]
    if hint:
        command += ["-hint", hint]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds * 4 + 120, check=False)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"benchmark_app exited {done.returncode}: {tail[0]}")
    return parse_benchmark_app(done.stdout)


def write_input_folder(folder: Path, photos: np.ndarray, count: int) -> Path:
    """`count` preprocessed tensors (the photo crops in turn) as the preprocess writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        photos[index % len(photos)].astype("<f4").tofile(folder / f"image_{index:05d}.bin")
    return folder


def run_folder_infer(onnx: Path, inputs: Path, output: Path, batch_size: int, backend: str) -> Measurement:
    """Our infer script on the folder `inputs` as a user runs it (default precision); its summary's rates."""
    command = [sys.executable, str(INFER_SCRIPT), "--model", str(onnx), "--input", str(inputs)]
    command += ["--output", str(output), "--output_dirname", "run", "--batchsize", str(batch_size)]
    command += ["--backend", backend, "--no-progress"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"infer script exited {done.returncode}: {tail[0]}")
    summary = json.loads((output / "run_summary.json").read_text())
    details = {
        "ais_bench_throughput": summary["throughput"],
        "in_flight": summary.get("in_flight", 1),
        "streams": summary.get("num_streams"),
        "performance_hint": summary.get("performance_hint"),
    }
    return Measurement(summary["images"], summary["end_to_end_seconds"], summary["precision"], details)


def model_flops_per_image(checkpoint: Path) -> float:
    """FLOPs of one image through the model, counted by PyTorch's FLOP counter (MatMul, convolution,
    attention)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from twins_pcpvt.model import load_model

    model = load_model(checkpoint).float().eval()
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, 224, 224))
    return float(counter.get_total_flops())


def measure_peak(precision: str, seconds: float = 3.0) -> dict:
    """GFLOP/s of a chain of square MatMuls in OpenVINO at `precision` on every core: the best of one stream
    using all threads and one stream per core, each kept busy for `seconds`."""
    import openvino as ov
    import openvino.opset13 as ops

    from twins_pcpvt.backends.openvino_runner import compiled_precision

    size = PEAK_SIZE
    weights = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    weights /= np.float32(np.sqrt(size))
    node = start = ops.parameter([size, size], np.float32, name="x")
    for _ in range(PEAK_CHAIN):
        node = ops.matmul(node, ops.constant(weights), False, False)
    model = ov.Model([node], [start], "matmul_chain")
    flops = PEAK_CHAIN * 2.0 * size**3
    hint = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}[precision]
    core = ov.Core()
    best: dict = {}
    for mode in ("LATENCY", "THROUGHPUT"):
        compiled = core.compile_model(
            model, "CPU", {"PERFORMANCE_HINT": mode, "INFERENCE_PRECISION_HINT": hint}
        )
        ran, _ = compiled_precision(compiled)
        requests = [compiled.create_infer_request() for _ in range(int(compiled.get_property("NUM_STREAMS")))]
        data = np.ones((size, size), np.float32)
        for request in requests:
            request.infer({0: data})
        runs, began = 0, time.perf_counter()
        while time.perf_counter() - began < seconds:
            for request in requests:
                request.start_async({0: data})
            for request in requests:
                request.wait()
            runs += len(requests)
        rate = runs * flops / (time.perf_counter() - began) / 1e9
        if rate > best.get("gflops", 0.0):
            best = {"gflops": rate, "hint": mode, "streams": len(requests), "precision": ran}
    return best


def end_to_end_subjects(backend: str = "openvino") -> list[tuple[str, str]]:
    """(label, kind) of the end-to-end subjects: benchmark_app's two rows (peers) and our folder run."""
    return [*((label, "peer") for label in BENCHMARK_APP_ROWS), (OURS_FOLDER_LABEL, "ours")]


def measure_end_to_end(
    onnx: Path,
    photos: np.ndarray,
    batch_size: int,
    *,
    seconds: float,
    rounds: int,
    work_dir: Path,
    progress,
    backend: str = "openvino",
) -> tuple[list[dict], list[dict]]:
    """Every end-to-end subject at `batch_size`, `rounds` rounds in a rotating order, each round giving each
    subject about `seconds / rounds`; (result rows, failures). A subject's figure pools its rounds: all the
    images it ran over all the seconds it ran them in."""
    share = seconds / rounds
    inputs = work_dir / f"e2e_inputs_bs{batch_size}"
    # enough images for one round's share at 60 img/s, in whole batches that give every stream (one per core)
    # the same number: a last batch running alone is an artifact of a short run, not of a long one
    step = batch_size * max(1, usable_cpus(physical=True))
    count = step * max(2, -(-int(share * 60) // step))
    write_input_folder(inputs, photos, count)
    subjects = end_to_end_subjects(backend)
    pooled: dict[str, list[Measurement]] = {label: [] for label, _ in subjects}
    failures: list[dict] = []
    failed: set[str] = set()
    for round_number in range(rounds):
        shift = round_number % len(subjects)
        for label, _ in subjects[shift:] + subjects[:shift]:
            if label in failed:
                continue
            progress(f"batch {batch_size}: end to end, round {round_number + 1}/{rounds}: {label}")
            try:
                if label in BENCHMARK_APP_ROWS:
                    measured = run_benchmark_app(onnx, batch_size, share, BENCHMARK_APP_ROWS[label])
                else:
                    measured = run_folder_infer(onnx, inputs, work_dir / "e2e_out", batch_size, backend)
            except (RuntimeError, ValueError, OSError, KeyError, subprocess.TimeoutExpired) as exc:
                failed.add(label)
                failures.append(
                    {"label": label, "precision": "", "batch_size": batch_size, "error": str(exc)}
                )
                continue
            pooled[label].append(measured)
    rows = []
    for label, kind in subjects:
        runs = pooled[label]
        if label in failed or not runs:
            continue
        images, elapsed = sum(run.images for run in runs), sum(run.seconds for run in runs)
        rows.append(
            {
                "label": label,
                "kind": kind,
                "batch_size": batch_size,
                "precision": runs[-1].precision,
                "images_per_second": images / elapsed,
                "rounds": [run.images_per_second for run in runs],
                "details": runs[-1].details,
            }
        )
    return rows, failures


def measure_machine(report: dict, checkpoint: Path, seconds: float, progress) -> None:
    """The model's FLOPs per image and the machine's peak at fp32 and at each reduced precision the CPU has
    natively, into `report` ("flops_per_image", "peak")."""
    from twins_pcpvt.backends.openvino_runner import OpenVinoRunner

    report["flops_per_image"] = model_flops_per_image(checkpoint)
    for precision in OpenVinoRunner.supported_precisions("cpu"):
        progress(f"measuring the machine's peak: OpenVINO MatMul at {precision}")
        report["peak"][precision] = measure_peak(precision, seconds)


def add_peak_fractions(report: dict) -> None:
    """Each row's GFLOP/s (images/s x the model's FLOPs per image) and its fraction of the measured peak at
    the precision it ran (None where no peak was measured at that precision)."""
    flops = report.get("flops_per_image")
    for row in report["results"] + report["end_to_end"]:
        peak = report["peak"].get(row["precision"], {}).get("gflops")
        row["gflops_per_second"] = row["images_per_second"] * flops / 1e9 if flops else None
        row["fraction_of_peak"] = row["gflops_per_second"] / peak if flops and peak else None


def add_end_to_end_ratios(rows: list[dict]) -> None:
    """Each row's rate over benchmark_app's default row at the same batch size and precision."""
    default = next(iter(BENCHMARK_APP_ROWS))
    for row in rows:
        peer = next(
            (
                other
                for other in rows
                if other["label"] == default
                and other["batch_size"] == row["batch_size"]
                and other["precision"] == row["precision"]
            ),
            None,
        )
        row["ratio_vs_benchmark_app"] = row["images_per_second"] / peer["images_per_second"] if peer else None
