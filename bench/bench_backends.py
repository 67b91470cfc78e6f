"""Benchmark Twins-PCPVT-S on every installed backend of our runner against the peers a user would otherwise
pick:
timm eager PyTorch, plain ONNX Runtime and plain OpenVINO (default settings: bf16 on CPUs with native bf16).

One run on the current machine, interleaved so that machine noise hits every subject alike; compute-only
throughput
as ais_bench counts it. Every row says the precision that actually ran, and ours are compared with the fastest
peer
that ran the same precision. Every subject's logits are checked against a strict CPU fp32 reference at every
batch
size. Writes OUT/bench.md (table), OUT/bench.json (everything, machine included; rewritten after every batch
size, so
an interrupted run keeps what it measured) and OUT/bench.png (throughput against batch size, with the guide's
Ascend
310P figures as a reference line).

    python3 bench/bench_backends.py --batch-sizes 1,4,8,16,32 --seconds 10 --out out/bench
    python3 bench/bench_backends.py --device cuda --batch-sizes 1,8,64 \\
        --backends timm-eager,torch:fp16,torch:fp16+compile --out out/bench_gpu

Subjects (`--backends`, comma-separated `NAME[:PRECISION][+OPTION]`): onnxruntime, openvino, torch
(+compile[=MODE], +nograph) at fp32|fp16|bf16|auto, auto (what `--backend auto --precision auto` runs),
timm-eager,
onnxruntime-plain, openvino-plain. By default: every installed backend at every precision it runs natively on
the
device, auto, and the peers.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import benchmark, benchreport, endtoend  # noqa: E402
from twins_pcpvt.cli import add_flag  # noqa: E402
from twins_pcpvt.common import ToolkitError, UsageError, check_output_file, run_main  # noqa: E402
from twins_pcpvt.report import write_json  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_flag(parser, "--batch-sizes", default="1,4,8,16,32", help="comma-separated (default 1,4,8,16,32)")
    parser.add_argument(
        "--seconds",
        type=float,
        default=10.0,
        help="timed seconds per backend and batch size, at least one run per round (default 10)",
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="interleaved rounds each point is split into (default 5)"
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=1.0,
        help="warm-up seconds per backend and batch size, at least two runs (default 1)",
    )
    parser.add_argument("--out", default="out/bench", help="folder for bench.md, bench.json, bench.png")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument(
        "--backends", help="comma-separated subjects (default: everything installed, see above)"
    )
    parser.add_argument("--source", help="checkpoint to measure (default: random weights, seed 0)")
    parser.add_argument("--onnx", help="existing dynamic-batch ONNX export of --source (default: export one)")
    parser.add_argument(
        "--no-end-to-end",
        action="store_true",
        help="leave out the end-to-end subjects (benchmark_app, the infer script on a folder) and the peak",
    )
    parser.add_argument(
        "--peak-seconds",
        type=float,
        default=3.0,
        help="seconds per precision and hint measuring the machine's MatMul peak (default 3)",
    )
    add_flag(
        parser,
        "--time-limit",
        type=float,
        help="seconds for the whole run; later points are skipped (and reported) once it passes",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_main(lambda: _run(args, argv if argv is not None else sys.argv[1:]))


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    batch_sizes = benchmark.parse_batch_sizes(args.batch_sizes)
    if not args.seconds > 0 or args.warmup < 0 or args.rounds < 1 or not args.peak_seconds > 0:
        raise UsageError("--seconds and --peak-seconds must be > 0, --warmup >= 0 and --rounds >= 1")
    if args.onnx and not args.source:
        raise UsageError(
            "--onnx needs --source: the checkpoint it was exported from (the PyTorch subjects load it)"
        )
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise ToolkitError(f"{out_dir}: exists and is not a folder")
    for name in ("bench.md", "bench.json", "bench.png"):  # what write_report writes, checked before measuring
        check_output_file(out_dir / name, probe=True)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ToolkitError("--device cuda: torch sees no CUDA GPU on this machine")
    if args.backends:
        subjects = benchmark.parse_subjects(args.backends, args.device)
    else:
        subjects = benchmark.default_subjects(args.device)
    photos, photo_note = benchmark.sample_photos()

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="twins_bench_") as work:
        checkpoint, onnx = benchmark.prepare_model_files(
            args.source,
            args.onnx,
            Path(work),
            with_onnx=benchmark.needs_onnx(subjects, args.device),
            progress=progress,
        )
        settings = benchmark.Settings(
            args.device, batch_sizes, args.seconds, args.rounds, args.warmup, args.time_limit
        )
        report = benchreport.new_report(
            "python3 bench/bench_backends.py " + shlex.join(argv),
            benchreport.machine_info(args.device),
            {
                "device": args.device,
                "batch_sizes": batch_sizes,
                "seconds": args.seconds,
                "rounds": args.rounds,
                "warmup_seconds": args.warmup,
                "model": args.source or "random weights (seed 0)",
                "subjects": [f"{subject.label} {subject.precision}" for subject in subjects],
                "photos": photo_note,
            },
        )
        progress(
            f"measuring {len(subjects)} subjects at batch sizes {batch_sizes}: "
            + ", ".join(report["settings"]["subjects"])
        )

        def save(partial: dict) -> None:
            partial["targets"] = benchreport.evaluate_targets(partial["results"], args.device)
            write_json(out_dir / "bench.json", partial)

        out_dir.mkdir(parents=True, exist_ok=True)
        end_to_end = not args.no_end_to_end and args.device == "cpu" and onnx is not None
        if end_to_end:
            endtoend.measure_machine(report, checkpoint, args.peak_seconds, progress)
        benchmark.run_benchmark(subjects, settings, onnx, checkpoint, photos, report, progress, on_step=save)
        if end_to_end:
            for batch_size in batch_sizes:
                rows, failures = endtoend.measure_end_to_end(
                    onnx,
                    photos,
                    batch_size,
                    seconds=args.seconds,
                    rounds=args.rounds,
                    work_dir=Path(work),
                    progress=progress,
                )
                report["end_to_end"] += rows
                report["failures"] += failures
                endtoend.add_end_to_end_ratios(report["end_to_end"])
                save(report)
    endtoend.add_peak_fractions(report)
    report["targets"] = benchreport.evaluate_targets(report["results"], args.device)
    paths = benchreport.write_report(report, out_dir)
    print(benchreport.markdown(report))
    print("wrote " + ", ".join(str(path) for path in paths))
    if report["failures"]:
        print(
            f"error: {len(report['failures'])} point(s) not measured; see the failures in {paths[0]}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
