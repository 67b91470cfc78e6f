"""Soak: many fresh processes of every default inference path, beside a CPU hog and each other, counting the
outputs they write that are not finite, torn, or disagree with a strict fp32 reference beyond their
precision's bar, and the batches they recomputed after non-finite logits.

    python3 bench/soak.py --runs 10 --out out/soak/soak.json
    python3 bench/soak.py --runs 2 --paths openvino:fp32,ray --batch-sizes 4 --concurrency 3 --hogs 2

Paths (`--paths`, comma-separated; default all that this machine runs):
- `BACKEND:PRECISION`: `twins_pcpvt_s_infer.py --backend BACKEND --precision PRECISION` on the CPU; by default
  every installed CPU backend at every precision the CPU runs natively (fp32, and bf16 where the CPU has it),
  and `auto:auto`, the guide's command;
- `devices`: `--device 0,1`, one worker process per device, through the real ais_bench Python over the
  `aclruntime` test double (it computes with ONNX Runtime), where the ais_bench sources are present;
- `ray`: `--engine ray --device cpu,cpu` (two model actors), at `--precision auto`.
Each at every `--batch-sizes` size, `--runs` times, in rounds; each run a fresh process writing BIN outputs
into a folder of its own, `--concurrency` runs at a time while `--hogs` processes spin on the CPU.

The model is the tests' random-weight Twins-PCPVT-S (seed 0) and its ONNX export, made in `--work` unless
`--checkpoint` and `--onnx` are given; the inputs are four crops of matplotlib's photo and seeded noise; the
reference is the checkpoint in PyTorch fp32. A run's output is judged by `compare.agreement` against the bar
of the precision that ran. The JSON report (machine, load, every run, totals) is rewritten after every run;
one table is printed at the end. Exit status 1 when any output written was wrong or any run failed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.benchmark import cpu_reference_logits, sample_photos  # noqa: E402
from bench.benchreport import machine_info  # noqa: E402
from twins_pcpvt.cli import positive_int, positive_int_list  # noqa: E402
from twins_pcpvt.common import NUM_CLASSES, OUTPUT_BYTES, ToolkitError, UsageError, run_main  # noqa: E402
from twins_pcpvt.report import read_json, write_json  # noqa: E402

INFER = ROOT / "twins_pcpvt_s_infer.py"
SPECIAL_PATHS = ("devices", "ray")
LOAD_SAMPLE_S = 5.0


@dataclass(frozen=True)
class InferPath:
    """One way of running the infer script: its name, its flags beyond the common ones, what precision ran."""

    name: str
    flags: tuple[str, ...]
    precision: str  # the precision whose bar its outputs are held to
    model: str  # "onnx", "checkpoint" or "om"


def cpu_paths() -> list[str]:
    """Every installed CPU backend at every precision it runs natively here, the guide's auto, and the
    multi-process paths that can run here."""
    from twins_pcpvt.backends import available_backends, runner_class

    names = []
    for backend in available_backends():
        if backend == "ais":
            continue
        cls = runner_class(backend)
        native = {"fp32", cls.default_precision("cpu")}
        names += [
            f"{backend}:{precision}" for precision in cls.supported_precisions("cpu") if precision in native
        ]
    names.append("auto:auto")
    if devices_environment() is not None:
        names.append("devices")
    if _installed("ray"):
        names.append("ray")
    return names


def _installed(package: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(package) is not None


def _use_test_helpers() -> None:
    """The tests' aclruntime double and static-model helper importable (the `devices` path)."""
    if str(ROOT / "test") not in sys.path:
        sys.path.insert(0, str(ROOT / "test"))


def devices_environment() -> dict | None:
    """The environment that runs ais_bench 2024's Python over the aclruntime double, None without them."""
    _use_test_helpers()
    try:
        from aclruntime_double import environment, missing_reason
    except ImportError:
        return None
    return None if missing_reason() else environment("v2024")


def make_path(name: str, onnx: Path) -> InferPath:
    """`name` as a path of the infer script, its precision settled (auto: what the backend runs here)."""
    from twins_pcpvt.backends import default_precision

    if name == "devices":
        return InferPath(name, ("--backend", "ais", "--device", "0,1"), "fp32", "om")
    if name == "ray":
        precision = default_precision("auto", onnx, "cpu")
        return InferPath(
            name, ("--engine", "ray", "--device", "cpu,cpu", "--precision", "auto"), precision, "onnx"
        )
    backend, _, precision = name.partition(":")
    if not precision:
        raise UsageError(f"--paths: {name!r} is not BACKEND:PRECISION, devices or ray")
    model = "checkpoint" if backend == "torch" else "onnx"
    ran = default_precision(backend, onnx, "cpu") if precision == "auto" else precision
    return InferPath(name, ("--backend", backend, "--precision", precision), ran, model)


@dataclass
class Soak:
    """The state of one soak: its settings, model files, inputs, reference and the runs done so far."""

    args: argparse.Namespace
    work: Path
    models: dict[str, Path]
    inputs: Path
    stems: list[str]
    reference: np.ndarray
    report: dict
    runs: list[dict] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def prepare(args, work: Path) -> tuple[dict[str, Path], Path, list[str], np.ndarray]:
    """The model files, the input folder, its stems and the fp32 reference logits of the inputs."""
    from twins_pcpvt.export import export_onnx
    from twins_pcpvt.model import load_model

    work.mkdir(parents=True, exist_ok=True)
    checkpoint = Path(args.checkpoint) if args.checkpoint else work / "twins_random.pth"
    onnx = Path(args.onnx) if args.onnx else work / "twins_random.onnx"
    if not args.checkpoint or not args.onnx:
        import torch

        model = load_model(None, random_init=True, seed=0)
        if not args.checkpoint:
            torch.save(model.state_dict(), checkpoint)
        if not args.onnx:
            export_onnx(model, onnx)
    models = {"onnx": onnx, "checkpoint": checkpoint}
    photos, _ = sample_photos()
    noise = np.random.default_rng(0).standard_normal((max(0, args.images - len(photos)), *photos.shape[1:]))
    tensors = np.concatenate([photos, noise.astype(np.float32)])[: args.images]
    inputs = work / "inputs"
    shutil.rmtree(inputs, ignore_errors=True)
    inputs.mkdir()
    stems = [f"soak_{index:05d}" for index in range(len(tensors))]
    for stem, tensor in zip(stems, tensors, strict=True):
        tensor.astype("<f4").tofile(inputs / f"{stem}.bin")
    return models, inputs, stems, cpu_reference_logits(checkpoint, tensors)


def om_model(soak: Soak, batch: int) -> Path:
    """The ONNX export with its batch fixed to `batch`, named .om for the aclruntime double."""
    _use_test_helpers()
    from standins.static_onnx import static_copy

    return static_copy(soak.models["onnx"], soak.work / f"twins_bs{batch}.om", batch)


def run_once(soak: Soak, path: InferPath, batch: int, index: int) -> dict:
    """One fresh infer process of `path` at `batch`; what it wrote, judged against the reference."""
    from twins_pcpvt.compare import agreement, passes

    output = soak.work / "runs" / f"{index:05d}"
    shutil.rmtree(output, ignore_errors=True)
    model = om_model(soak, batch) if path.model == "om" else soak.models[path.model]
    command = [sys.executable, str(INFER), "--model", str(model), *path.flags, "--batchsize", str(batch)]
    command += ["--input", str(soak.inputs), "--output", str(output), "--output_dirname", "x"]
    command += ["--outfmt", "BIN", "--no-progress"]
    env = devices_environment() if path.name == "devices" else dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    start = time.time()
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    try:
        _, err = process.communicate(timeout=soak.args.run_timeout)
        status = process.returncode
    except subprocess.TimeoutExpired:
        status = None
        err = f"timed out after {soak.args.run_timeout} s"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # the run's own group: Ray's processes go with it
        process.communicate()
    run = {"index": index, "path": path.name, "batch": batch, "exit": status, "seconds": time.time() - start}
    if status != 0:
        run["error"] = (err.strip().splitlines() or ["(no message)"])[-1]
    written = {item.name.removesuffix("_0.bin"): item for item in output.rglob("*_0.bin")}
    wrong: list[str] = []
    nonfinite = torn = disagree = 0
    for position, stem in enumerate(soak.stems):
        if stem not in written:
            continue
        data = written[stem].read_bytes()
        if len(data) != OUTPUT_BYTES:
            torn += 1
            wrong.append(f"{written[stem]}: {len(data)} bytes")
            continue
        logits = np.frombuffer(data, "<f4").reshape(1, NUM_CLASSES)
        if not np.isfinite(logits).all():
            nonfinite += 1
            wrong.append(f"{written[stem]}: not finite")
            continue
        row = agreement(path.name, path.precision, "fp32", logits, soak.reference[position : position + 1])
        if not passes(row):
            disagree += 1
            wrong.append(f"{written[stem]}: cosine {row['cosine']:.6f}, top-1 {row['top1_agrees']}/1")
    recomputed = []
    for summary in output.rglob("*_summary.json"):
        with contextlib.suppress(ToolkitError, OSError, ValueError):
            recomputed += read_json(summary).get("recomputed", [])
    run.update(
        outputs_written=len(written),
        nonfinite_written=nonfinite,
        torn_written=torn,
        disagreeing_written=disagree,
        recomputed_batches=len(recomputed),
        recomputed=recomputed,
        wrong=wrong[:10],
    )
    if not wrong and status == 0:
        shutil.rmtree(output, ignore_errors=True)
    return run


def totals(runs: list[dict]) -> dict:
    keys = (
        "outputs_written",
        "nonfinite_written",
        "torn_written",
        "disagreeing_written",
        "recomputed_batches",
    )
    result = {"runs": len(runs), "failed_runs": sum(1 for run in runs if run["exit"] != 0)}
    result.update({key: sum(run[key] for run in runs) for key in keys})
    result["wrong_outputs_written"] = (
        result["nonfinite_written"] + result["torn_written"] + result["disagreeing_written"]
    )
    return result


def by_path(runs: list[dict]) -> dict:
    groups: dict[str, list[dict]] = {}
    for run in runs:
        groups.setdefault(f"{run['path']} b{run['batch']}", []).append(run)
    return {name: totals(group) for name, group in groups.items()}


class LoadSampler:
    """The 1-minute load average, sampled every few seconds while the soak runs."""

    def __init__(self):
        self.samples: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        while not self.stop.is_set():
            self.samples.append(os.getloadavg()[0])
            self.stop.wait(LOAD_SAMPLE_S)

    def summary(self) -> dict:
        values = self.samples or [os.getloadavg()[0]]
        return {
            "min": min(values),
            "mean": float(np.mean(values)),
            "max": max(values),
            "samples": len(values),
        }


def start_hogs(count: int) -> list[subprocess.Popen]:
    """`count` processes that each keep one core busy until killed."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def soak_command(args) -> int:
    if args.hogs < 0:
        raise UsageError("--hogs must be 0 or more")
    if bool(args.checkpoint) != bool(args.onnx):
        raise UsageError("give --checkpoint and --onnx together (the reference is computed from the first)")
    names = [name.strip() for name in args.paths.split(",") if name.strip()] if args.paths else cpu_paths()
    if "devices" in names and devices_environment() is None:
        raise ToolkitError("--paths devices needs the ais_bench sources and test/aclruntime_double")
    work = Path(args.work)
    models, inputs, stems, reference = prepare(args, work)
    paths = [make_path(name, models["onnx"]) for name in names]
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    report = {
        "command": " ".join(sys.argv),
        "machine": machine_info("cpu"),
        "settings": {
            "paths": {path.name: {"flags": path.flags, "bar_precision": path.precision} for path in paths},
            "batch_sizes": args.batch_sizes,
            "runs_per_path": args.runs,
            "images": len(stems),
            "concurrency": args.concurrency,
            "hogs": args.hogs,
            "model": "random weights, seed 0" if not args.checkpoint else str(args.checkpoint),
        },
        "load_average_before": os.getloadavg(),
    }
    soak = Soak(args, work, models, inputs, stems, reference, report)
    jobs = [(path, batch) for _ in range(args.runs) for path in paths for batch in args.batch_sizes]
    sampler = LoadSampler()
    hogs = start_hogs(args.hogs)
    started = time.time()
    skipped = 0
    try:
        with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
            futures = []
            for index, (path, batch) in enumerate(jobs):
                futures.append(pool.submit(_timed_run, soak, path, batch, index, started))
            for future in concurrent.futures.as_completed(futures):
                run = future.result()
                if run is None:
                    skipped += 1
                    continue
                with soak.lock:
                    soak.runs.append(run)
                    _write(soak, sampler, started, skipped)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
        sampler.stop.set()
    _write(soak, sampler, started, skipped)
    print_table(soak.report)
    total = soak.report["totals"]
    return 1 if total["wrong_outputs_written"] or total["failed_runs"] else 0


def _timed_run(soak: Soak, path: InferPath, batch: int, index: int, started: float) -> dict | None:
    """run_once, or None once --time-limit has passed."""
    if soak.args.time_limit and time.time() - started > soak.args.time_limit:
        return None
    return run_once(soak, path, batch, index)


def _write(soak: Soak, sampler: LoadSampler, started: float, skipped: int) -> None:
    runs = sorted(soak.runs, key=lambda run: run["index"])
    soak.report.update(
        seconds=time.time() - started,
        load_average=sampler.summary(),
        load_average_after=os.getloadavg(),
        runs_skipped_by_time_limit=skipped,
        totals=totals(runs),
        paths=by_path(runs),
        runs=runs,
    )
    if soak.args.out:
        write_json(soak.args.out, soak.report)


def print_table(report: dict) -> None:
    print(f"{'path':<24} {'runs':>5} {'failed':>6} {'outputs':>8} {'wrong':>6} {'recomputed':>10}")
    for name, row in {**report["paths"], "total": report["totals"]}.items():
        print(
            f"{name:<24} {row['runs']:>5} {row['failed_runs']:>6} {row['outputs_written']:>8} "
            f"{row['wrong_outputs_written']:>6} {row['recomputed_batches']:>10}"
        )
    for run in report["runs"]:
        if run["exit"] != 0 or run["wrong"]:
            print(
                f"run {run['index']} ({run['path']} b{run['batch']}): exit {run['exit']}: "
                f"{run.get('error', '')} {'; '.join(run['wrong'])}"
            )
    load = report["load_average"]
    print(
        f"{report['seconds']:.0f} s; load average {load['min']:.1f}-{load['max']:.1f} "
        f"(mean {load['mean']:.1f}) on {report['machine']['usable_cpus']} CPUs; "
        f"flags {' '.join(report['machine']['cpu_flags'])}"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--paths", help="comma-separated (default: every path this machine runs, see above)")
    parser.add_argument("--batch-sizes", type=positive_int_list, default=[1, 4], help="(default 1,4)")
    parser.add_argument(
        "--runs", type=positive_int, default=10, help="fresh processes per path and batch size"
    )
    parser.add_argument("--images", type=positive_int, default=8, help="inputs of each run (default 8)")
    parser.add_argument("--concurrency", type=positive_int, default=2, help="runs at a time (default 2)")
    parser.add_argument("--hogs", type=int, default=1, help="processes spinning on the CPU (default 1)")
    parser.add_argument(
        "--run-timeout", type=float, default=600.0, help="seconds before a run counts as hung"
    )
    parser.add_argument("--time-limit", type=float, help="start no run after this many seconds")
    parser.add_argument("--checkpoint", help="the model's .pth (default: random weights, seed 0)")
    parser.add_argument("--onnx", help="its dynamic-batch ONNX export (default: exported into --work)")
    parser.add_argument("--work", default="out/soak/work", help="model files, inputs and the runs' folders")
    parser.add_argument("--out", default="out/soak/soak.json", help="the JSON report")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_main(lambda: soak_command(args))


if __name__ == "__main__":
    sys.exit(main())
