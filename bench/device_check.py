"""Device check of the torch backend on an NVIDIA GPU (or, to try the flow, on the CPU), in a hard time limit.

At each batch size (default 1, 16, 64, 256) it opens timm eager fp32 (the peer), our torch backend at fp32,
fp16 and bf16 with CUDA-graph replay, and fp16 with torch.compile (default mode), and for each:
- agreement with a strict fp32 reference computed on the CPU, on real photo crops (Grace Hopper, preprocessed
  as the guide does, carried in bench/data): the worst cosine at or above the bar of the subject's precision
  (the toolkit's one table, twins_pcpvt/thresholds.py: 0.99999 fp32, 0.9999 fp16, 0.999 bf16), the same top-1
  on every crop whose reference top-1 leads clearly (random weights give near-ties);
- the same inputs fed again in reverse order give the same outputs (a stale CUDA graph would not);
- compute-only throughput (CUDA events), the eager and graph subjects interleaved in rounds.
The results JSON is rewritten after every step, so a run cut short keeps what it measured. torch.compile
cannot be interrupted mid-compilation, so the compiled subject runs in a child process that is killed when
the time limit comes; steps not reached are reported as such. One table is printed at the end.

Needs only `python3` with torch (CUDA build), torchvision and numpy: timm, when missing, is imported from the
wheel carried in bench/wheels; anything else missing is named in one line and the check stops. Random weights
(seed 0): no network, no checkpoint needed.

    python3 bench/device_check.py                                  # GPU: results in $OUT or out/device_check
    python3 bench/device_check.py --device cpu --batch-sizes 1,2 --seconds 0.5
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

CROPS = HERE / "data" / "grace_hopper_crops.npz"
WHEELS = HERE / "wheels"
GPU_SUBJECTS = "timm-eager,torch:fp32,torch:fp16,torch:bf16,torch:fp16+compile"
CPU_SUBJECTS = "timm-eager,torch:fp32,torch:bf16"
MARGIN_SECONDS = 5.0  # stop this long before the hard limit: writing the report and exiting
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ---- dependencies ------------------------------------------------------------------------------------------
def missing_dependencies() -> str | None:
    """None when everything imports; else one line naming what is missing. timm comes from the carried
    wheel."""
    missing = [name for name in ("numpy", "torch", "torchvision") if importlib.util.find_spec(name) is None]
    if missing:
        return (
            f"missing Python package(s) {', '.join(missing)}: install them matching the CUDA build of torch"
        )
    if importlib.util.find_spec("timm") is None:
        wheels = sorted(WHEELS.glob("timm-*-py3-none-any.whl"))
        if not wheels:
            return f"missing Python package timm and no timm wheel in {WHEELS}"
        sys.path.insert(0, str(wheels[-1]))  # a pure-Python wheel imports as it is, from the zip
        importlib.invalidate_caches()
    try:
        import timm  # noqa: F401
    except Exception as exc:  # e.g. torchvision built for another torch
        from twins_pcpvt.common import one_line

        return f"timm does not import: {one_line(exc, typed=True)}"
    return None


def photo_crops():
    """The four real photo crops, float32 [4, 3, 224, 224], normalised as the reference preprocessing does."""
    import numpy as np

    pixels = np.load(CROPS)["pixels"]  # [N, 224, 224, RGB] uint8, the crops after resize and centre crop
    scaled = pixels.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255)
    mean = np.asarray(MEAN, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(STD, dtype=np.float32).reshape(1, 3, 1, 1)
    return np.ascontiguousarray((scaled - mean) / std, dtype=np.float32)


# ---- one subject at one batch size -------------------------------------------------------------------------
def check_outputs(runner, subject, batch_size: int, photos, reference) -> dict:
    """Agreement with the reference on crops tiled to whole batches, forward and in reverse order."""
    import numpy as np

    from twins_pcpvt import compare

    rows = -(-max(batch_size, len(photos)) // batch_size) * batch_size
    crop_of_row = np.arange(rows) % len(photos)
    inputs = photos[crop_of_row]

    def run(order):
        out = np.empty((rows, reference.shape[1]), dtype=np.float64)
        for start in range(0, rows, batch_size):
            picked = order[start : start + batch_size]
            out[picked] = runner.infer(np.ascontiguousarray(inputs[picked]))
        return out

    forward = run(np.arange(rows))
    backward = run(np.arange(rows)[::-1])
    label = f"{subject.label} {subject.precision}"
    row = compare.agreement(label, runner.precision, "PyTorch CPU fp32", forward, reference[crop_of_row])
    again = compare.agreement(label, runner.precision, "forward order", backward, forward)
    return {
        **{
            key: row[key]
            for key in (
                "cosine",
                "max_abs_diff",
                "top1_agrees",
                "top1_decided",
                "top1_agrees_decided",
                "nonfinite_values",
                "images",
            )
        },
        "agrees": compare.passes(row),
        "reverse_cosine": again["cosine"],
        "reverse_same": compare.passes(again) and again["top1_agrees"] == again["images"],
    }


def time_interleaved(runners: dict, batch, seconds: float, rounds: int, warmup: float) -> dict:
    """Compute-only latencies (ms) per subject, `rounds` rounds in rotating order after a warm-up."""
    latencies = {key: [] for key in runners}
    if not runners:
        return latencies
    for runner in runners.values():
        deadline = time.perf_counter() + warmup
        runner.infer(batch)
        while time.perf_counter() < deadline:
            runner.infer(batch)
    keys = list(runners)
    for number in range(rounds):
        shift = number % len(keys)
        for key in keys[shift:] + keys[:shift]:
            deadline = time.perf_counter() + seconds / rounds
            while True:
                runners[key].infer(batch)
                latencies[key].append(runners[key].last_compute_ms)
                if time.perf_counter() >= deadline:
                    break
    return latencies


# ---- the check ---------------------------------------------------------------------------------------------
class Check:
    def __init__(self, args, out: Path, started: float):
        from bench import benchreport

        self.args, self.out, self.started = args, out, started
        self.deadline = started + args.time_limit - MARGIN_SECONDS
        self.on_gpu = args.device.startswith("cuda")
        self.report = {
            "schema": "twins-pcpvt-device-check/1",
            "command": "python3 bench/device_check.py " + " ".join(sys.argv[1:]),
            "machine": benchreport.machine_info("cuda" if self.on_gpu else "cpu"),
            "settings": {key: value for key, value in vars(args).items() if key != "worker"},
            "results": [],
            "failures": [],
            "targets": [],
            "finished": False,
            "timm_from": str(Path(importlib.import_module("timm").__file__).parent),
        }

    def save(self) -> None:
        from bench import benchreport
        from twins_pcpvt.report import write_json

        benchreport.add_ratios(self.report["results"])
        # the GPU targets (ours fp16/bf16 against timm eager fp32); a CPU try has none
        self.report["targets"] = (
            benchreport.evaluate_targets(self.report["results"], "cuda") if self.on_gpu else []
        )
        self.report["elapsed_seconds"] = round(time.monotonic() - self.started, 1)
        write_json(self.out / "device_check.json", self.report)  # atomic: never a half-written report

    def fail(self, label: str, batch_size: int | None, error: str) -> None:
        self.report["failures"].append({"label": label, "batch_size": batch_size, "error": error})
        print(
            f"FAILED {label}" + (f" at batch {batch_size}" if batch_size else "") + f": {error}", flush=True
        )
        self.save()

    def left(self) -> float:
        return self.deadline - time.monotonic()


def measure_step(check: Check, subjects, batch_size: int, checkpoint: Path, photos, reference) -> None:
    """Open the subjects for one batch size, check their outputs, time them interleaved, record, close."""
    import contextlib

    import numpy as np

    from bench import benchmark

    args = check.args
    runners, checks, load_seconds = {}, {}, {}
    with contextlib.ExitStack() as opened_runners:
        try:
            for index, subject in enumerate(subjects):
                opened = time.monotonic()
                try:
                    runner = benchmark.open_runner(subject, args.device, None, checkpoint, batch_size)
                    opened_runners.enter_context(runner)
                    load_seconds[index] = round(time.monotonic() - opened, 2)
                    checks[index] = check_outputs(runner, subject, batch_size, photos, reference)
                except Exception as exc:
                    check.fail(
                        f"{subject.label} {subject.precision}", batch_size, benchmark.failure_text(exc)
                    )
                    continue
                runners[index] = runner
            batch = photos[np.arange(batch_size) % len(photos)]
            latencies = time_interleaved(runners, batch, args.seconds, args.rounds, args.warmup)
            for index, runner in runners.items():
                subject = subjects[index]
                row = benchmark.result_row(subject, runner, batch_size, latencies[index], load_seconds[index])
                row.update(checks[index])
                check.report["results"].append(row)
                if not (row["agrees"] and row["reverse_same"]):
                    check.fail(
                        f"{subject.label} {runner.precision}",
                        batch_size,
                        f"outputs disagree: worst cosine {row['cosine']:.6f}, reverse order same: "
                        f"{row['reverse_same']}",
                    )
        finally:
            check.save()


def run_compiled(check: Check, tokens: list[str], checkpoint: Path, reference_path: Path) -> None:
    """The torch.compile subjects in a child process, killed when the time limit comes."""
    args = check.args
    steps = check.out / "compiled_steps.json"
    steps.unlink(missing_ok=True)
    env = dict(os.environ)
    env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(ROOT / "out" / "compile_cache" / "inductor"))
    env.setdefault("TRITON_CACHE_DIR", str(ROOT / "out" / "compile_cache" / "triton"))
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        str(steps),
        "--device",
        args.device,
        "--subjects",
        ",".join(tokens),
        "--batch-sizes",
        ",".join(map(str, args.batch_sizes)),
        "--seconds",
        str(args.seconds),
        "--rounds",
        str(args.rounds),
        "--warmup",
        str(args.warmup),
        "--checkpoint",
        str(checkpoint),
        "--reference",
        str(reference_path),
    ]
    print(
        f"torch.compile subjects {', '.join(tokens)} in a child process ({check.left():.0f} s left)",
        flush=True,
    )
    child = subprocess.Popen(command, env=env, start_new_session=True)
    check.report["compile_child"] = {"pid": child.pid, "killed": False}
    check.save()
    killed = False
    try:
        child.wait(timeout=max(check.left(), 0.1))
    except subprocess.TimeoutExpired:
        killed = check.report["compile_child"]["killed"] = True
    finally:  # the time limit, or this process interrupted: the child and its compile workers go too
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    done = set()
    if steps.exists():
        from twins_pcpvt.report import read_json

        for entry in read_json(steps)["steps"]:
            if "error" in entry:
                check.report["failures"].append(entry)
            else:
                check.report["results"].append(entry)
                done.add((entry["label"], entry["requested_precision"], entry["batch_size"]))
                if not (entry["agrees"] and entry["reverse_same"]):
                    check.report["failures"].append(
                        {
                            "label": f"{entry['label']} {entry['precision']}",
                            "batch_size": entry["batch_size"],
                            "error": f"outputs disagree: worst cosine {entry['cosine']:.6f}, "
                            "reverse order same: "
                            f"{entry['reverse_same']}",
                        }
                    )
    reason = (
        "the time limit came during compilation" if killed else f"child exited with status {child.returncode}"
    )
    from bench import benchmark

    for token in tokens:
        (subject,) = benchmark.parse_subjects(token, args.device)
        for batch_size in args.batch_sizes:
            if (subject.label, subject.precision, batch_size) not in done and (killed or child.returncode):
                check.report["failures"].append(
                    {
                        "label": f"{subject.label} {subject.precision}",
                        "batch_size": batch_size,
                        "error": f"not measured: {reason}",
                    }
                )
    check.save()


def worker(args) -> int:
    """Child process: each compiled subject at each batch size; the steps file is rewritten after each."""
    import numpy as np
    import torch

    from bench import benchmark
    from twins_pcpvt.report import write_json

    photos, reference = photo_crops(), np.load(args.reference)
    subjects = benchmark.parse_subjects(args.subjects, args.device)
    steps = []
    for batch_size in args.batch_sizes:
        for subject in subjects:
            opened = time.monotonic()
            try:
                with benchmark.open_runner(
                    subject, args.device, None, Path(args.checkpoint), batch_size
                ) as runner:
                    load_seconds = round(time.monotonic() - opened, 2)
                    checked = check_outputs(runner, subject, batch_size, photos, reference)
                    batch = photos[np.arange(batch_size) % len(photos)]
                    latencies = time_interleaved({0: runner}, batch, args.seconds, args.rounds, args.warmup)
                    entry = benchmark.result_row(subject, runner, batch_size, latencies[0], load_seconds)
                    entry.update(checked)
            except Exception as exc:
                entry = {
                    "label": f"{subject.label} {subject.precision}",
                    "batch_size": batch_size,
                    "error": benchmark.failure_text(exc),
                }
            steps.append(entry)
            write_json(args.worker, {"steps": steps})
        torch._dynamo.reset()  # a fresh compile per batch size, never the recompilation limit
    return 0


def table(report: dict) -> str:
    from bench import benchreport
    from twins_pcpvt.compare import top1_text

    machine = report["machine"]
    lines = [
        f"Device check: {benchreport.machine_line(machine)}; torch {machine['libraries'].get('torch')}; "
        f"{report['elapsed_seconds']:.0f} s of a {report['settings']['time_limit']:g} s limit",
        "",
        "| subject | precision | batch | img/s | x timm eager fp32 | worst cosine | same top-1 | "
        "reverse order same "
        "| load s |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for row in sorted(report["results"], key=lambda row: (row["batch_size"], row["label"], row["precision"])):
        ratio = row.get("ratio_vs_timm_eager")
        lines.append(
            f"| {row['label']} | {row['precision']} | {row['batch_size']} | "
            f"{row['images_per_second']:,.1f} | "
            f"{'-' if ratio is None else f'{ratio:.2f}'} | {row['cosine']:.6f} | "
            f"{top1_text(row)} | "
            f"{'yes' if row['reverse_same'] else 'NO'} | {row['load_seconds']:.1f} |"
        )
    for target in report["targets"]:
        lines.append(
            f"\n- {target['target']}: {target['best']} {target['ratio']:.2f}x: "
            f"{'met' if target['met'] else 'NOT met'}"
        )
    for failure in report["failures"]:
        where = f" at batch {failure['batch_size']}" if failure.get("batch_size") else ""
        lines.append(f"- FAILED {failure['label']}{where}: {failure['error']}")
    return "\n".join(lines)


def run_check(args) -> int:
    import numpy as np
    import torch

    from bench import benchmark
    from twins_pcpvt.common import ToolkitError
    from twins_pcpvt.model import load_model

    started = time.monotonic()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ToolkitError(f"--device {args.device}: torch {torch.__version__} sees no CUDA GPU")
    out = Path(args.out or os.environ.get("OUT") or ROOT / "out" / "device_check")
    out.mkdir(parents=True, exist_ok=True)
    check = Check(args, out, started)
    tokens = [token.strip() for token in args.subjects.split(",") if token.strip()]
    benchmark.parse_subjects(",".join(tokens), args.device)  # every usage error before any work
    eager = [token for token in tokens if "+compile" not in token]
    compiled = [token for token in tokens if "+compile" in token]
    subjects = benchmark.parse_subjects(",".join(eager), args.device) if eager else []
    check.save()
    with tempfile.TemporaryDirectory(prefix="twins_device_check_") as work:
        model = load_model(None, random_init=True, seed=0)
        checkpoint = Path(work) / "twins_pcpvt_small_random.pth"
        torch.save(model.state_dict(), checkpoint)
        photos = photo_crops()
        with torch.inference_mode():
            reference = model.float().eval()(torch.from_numpy(photos)).double().numpy()
        reference_path = Path(work) / "reference.npy"
        np.save(reference_path, reference)
        del model
        for position, batch_size in enumerate(args.batch_sizes if subjects else []):
            if check.left() <= 0:
                for size in args.batch_sizes[position:]:
                    check.fail("eager and graph subjects", size, "not measured: the time limit had come")
                break
            print(
                f"batch {batch_size}: {', '.join(s.label + ' ' + s.precision for s in subjects)} "
                f"({check.left():.0f} s left)",
                flush=True,
            )
            measure_step(check, subjects, batch_size, checkpoint, photos, reference)
        if compiled:
            if check.left() > 0:
                run_compiled(check, compiled, checkpoint, reference_path)
            else:
                check.fail(", ".join(compiled), None, "not measured: the time limit had come")
    check.report["finished"] = True
    check.save()
    text = table(check.report)
    (out / "device_check.md").write_text(text + "\n", encoding="utf-8")
    print(text)
    print(f"wrote {out / 'device_check.json'} and {out / 'device_check.md'}")
    return 1 if check.report["failures"] else 0


def build_parser() -> argparse.ArgumentParser:
    from twins_pcpvt.cli import add_flag

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda", help="cuda[:N] or cpu (default cuda)")
    add_flag(parser, "--batch-sizes", default="1,16,64,256", help="comma-separated (default 1,16,64,256)")
    parser.add_argument("--subjects", help=f"default on a GPU {GPU_SUBJECTS}; on the CPU {CPU_SUBJECTS}")
    parser.add_argument(
        "--seconds", type=float, default=2.0, help="timed seconds per subject and batch (default 2)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    parser.add_argument("--warmup", type=float, default=0.5, help="warm-up seconds per subject and batch")
    add_flag(
        parser,
        "--time-limit",
        type=float,
        default=290.0,
        help="hard wall-clock limit in seconds, compilation included (default 290)",
    )
    parser.add_argument("--out", help="result folder (default $OUT, else out/device_check)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--reference", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problem = missing_dependencies()
    if problem:
        print(f"device_check: {problem}", file=sys.stderr)
        return 1
    from bench import benchmark
    from twins_pcpvt.common import UsageError, run_main

    def body() -> int:
        args.batch_sizes = benchmark.parse_batch_sizes(args.batch_sizes)
        if not args.seconds > 0 or args.rounds < 1 or args.warmup < 0 or not args.time_limit > MARGIN_SECONDS:
            raise UsageError(
                f"--seconds > 0, --rounds >= 1, --warmup >= 0, --time-limit > {MARGIN_SECONDS:g}"
            )
        if args.subjects is None:
            args.subjects = CPU_SUBJECTS if args.device == "cpu" else GPU_SUBJECTS
        return worker(args) if args.worker else run_check(args)

    return run_main(body)


if __name__ == "__main__":
    raise SystemExit(main())
