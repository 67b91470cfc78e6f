"""Which OpenVINO CPU configurations compile a model that returns non-finite logits, and how fast each runs.

Faults (default): `--processes` fresh Python processes per configuration, interleaved; each compiles the
model `--compiles` times in a row (the same Core) and runs every request of each compiled model on one finite
batch. A compiled model counts as broken when any request returns a non-finite logit. The first compile of a
process is the fresh-process case; the later ones show whether a fresh compile in the same process recovers.

    python3 bench/ov_streams.py --model twins_dynamic.onnx --processes 100 --out out/ov_streams.json

Speed (`--speed`): the configurations compiled side by side in one process and timed interleaved, round after
round, on the same batch; images per second from the median batch time of each, and the time of the runner's
finiteness check (`np.isfinite(logits).all()`) on each batch's logits.

    python3 bench/ov_streams.py --model twins_dynamic.onnx --speed --configs tput2-f32-b4,lat1-f32-b4

Configurations (`--configs`): `tput2-<precision>-b<batch>` (THROUGHPUT, two streams, the batch split over two
asynchronous requests, as the runner ran a batch of 2 or more) and `lat1-<precision>-b<batch>` (LATENCY, one
stream, one request); pinning off, as in the runner. Writes a JSON report with the machine and the load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.benchreport import machine_info  # noqa: E402
from twins_pcpvt.common import INPUT_SHAPE, ToolkitError, UsageError, run_main  # noqa: E402
from twins_pcpvt.report import write_json  # noqa: E402

DEFAULT_CONFIGS = "tput2-f32-b4,lat1-f32-b4,tput2-bf16-b4"
CHILD_TIMEOUT_S = 300


def parse_config(name: str) -> dict:
    """`tput2-f32-b4` -> its OpenVINO settings, requests and images per request."""
    try:
        kind, precision, batch_text = name.split("-")
        batch = int(batch_text.removeprefix("b"))
    except ValueError:
        raise UsageError(f"--configs: {name!r} is not tput2|lat1-<f32|bf16|f16>-b<batch>") from None
    if kind not in ("tput2", "lat1") or precision not in ("f32", "bf16", "f16") or batch < 1:
        raise UsageError(f"--configs: {name!r} is not tput2|lat1-<f32|bf16|f16>-b<batch>")
    streams = 2 if kind == "tput2" else 1
    if batch % streams:
        raise UsageError(f"--configs: {name!r}: the batch must split evenly over {streams} streams")
    config = {
        "PERFORMANCE_HINT": "THROUGHPUT" if streams > 1 else "LATENCY",
        "INFERENCE_PRECISION_HINT": precision,
        "ENABLE_CPU_PINNING": False,
    }
    if streams > 1:
        config["NUM_STREAMS"] = streams
    return {"name": name, "config": config, "requests": streams, "chunk": batch // streams, "batch": batch}


def compile_config(core, model_path: str, spec: dict):
    model = core.read_model(model_path)
    model.reshape({model.inputs[0].get_any_name(): [spec["chunk"], *INPUT_SHAPE]})
    compiled = core.compile_model(model, "CPU", spec["config"])
    return compiled, [compiled.create_infer_request() for _ in range(spec["requests"])]


def run_requests(requests, batch):
    """Every request on its part of `batch`, asynchronously; the logits of each request."""
    import numpy as np

    parts = np.split(batch, len(requests))
    for request, part in zip(requests, parts, strict=True):
        request.start_async({0: part}, share_inputs=True)
    for request in requests:
        request.wait()
    return [request.get_output_tensor(0).data.copy() for request in requests]


def child(model_path: str, name: str, compiles: int) -> dict:
    """One fresh process: `compiles` compiles of one configuration, the broken requests of each."""
    import numpy as np
    import openvino as ov

    spec = parse_config(name)
    batch = np.random.default_rng(0).standard_normal((spec["batch"], *INPUT_SHAPE), dtype=np.float32)
    core = ov.Core()
    results = []
    for _ in range(compiles):
        compiled, requests = compile_config(core, model_path, spec)
        broken = set()
        for _ in range(2):  # a second run shows whether a broken request stays broken
            for index, logits in enumerate(run_requests(requests, batch)):
                if not np.isfinite(logits).all():
                    broken.add(index)
        results.append(sorted(broken))
        del requests, compiled
    return {"config": name, "pid": os.getpid(), "broken_requests": results}


def count_faults(args, configs: list[str]) -> dict:
    runs: dict[str, list] = {name: [] for name in configs}
    errors: list[str] = []
    started = time.time()
    for index in range(args.processes):
        for name in configs:
            command = [sys.executable, __file__, "--child", name, "--model", args.model]
            command += ["--compiles", str(args.compiles)]
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                errors.append(f"{name}: process {index} hung over {CHILD_TIMEOUT_S} s")
                continue
            if done.returncode:
                errors.append(f"{name}: process {index} exit {done.returncode}: {done.stderr.strip()[-300:]}")
                continue
            runs[name].append(json.loads(done.stdout.strip().splitlines()[-1])["broken_requests"])
        if args.time_limit and time.time() - started > args.time_limit:
            errors.append(f"stopped after {index + 1} processes per configuration: --time-limit reached")
            break
    table = {}
    for name, found in runs.items():
        first = [compiles[0] for compiles in found]
        later = [broken for compiles in found for broken in compiles[1:]]
        recovered = [compiles for compiles in found if compiles[0] and len(compiles) > 1 and not compiles[1]]
        table[name] = {
            "processes": len(found),
            "broken_first_compiles": sum(1 for broken in first if broken),
            "later_compiles": len(later),
            "broken_later_compiles": sum(1 for broken in later if broken),
            "broken_processes_recovered_by_recompile": len(recovered),
            "broken_requests_seen": sorted({i for compiles in found for b in compiles for i in b}),
            "settings": parse_config(name)["config"],
        }
        print(
            f"{name}: {table[name]['broken_first_compiles']} of {len(found)} fresh processes broken; "
            f"{table[name]['broken_later_compiles']} of {len(later)} later compiles; "
            f"{len(recovered)} broken processes recovered by a second compile"
        )
    return {"faults": table, "errors": errors, "seconds": time.time() - started}


def measure_speed(args, configs: list[str]) -> dict:
    import numpy as np
    import openvino as ov

    core = ov.Core()
    specs = [parse_config(name) for name in configs]
    if len({spec["batch"] for spec in specs}) != 1:
        raise UsageError("--speed compares configurations of one batch size")
    batch = np.random.default_rng(0).standard_normal((specs[0]["batch"], *INPUT_SHAPE), dtype=np.float32)
    loaded = [compile_config(core, args.model, spec) for spec in specs]
    times: dict[str, list[float]] = {spec["name"]: [] for spec in specs}
    checks: dict[str, list[float]] = {spec["name"]: [] for spec in specs}  # the runner's finiteness check
    for _, requests in loaded:
        for _ in range(3):
            run_requests(requests, batch)
    for round_index in range(args.rounds):
        order = list(zip(specs, loaded, strict=True))
        if round_index % 2:
            order.reverse()
        for spec, (_, requests) in order:
            deadline = time.perf_counter() + args.seconds
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                logits = np.concatenate(run_requests(requests, batch))
                times[spec["name"]].append((time.perf_counter() - start) * 1e3)
                start = time.perf_counter()
                np.isfinite(logits).all()
                checks[spec["name"]].append((time.perf_counter() - start) * 1e3)
    table = {}
    for spec in specs:
        values = np.asarray(times[spec["name"]])
        median = float(np.median(values))
        table[spec["name"]] = {
            "batches": int(values.size),
            "median_ms": median,
            "p90_ms": float(np.percentile(values, 90)),
            "images_per_second": 1000.0 * spec["batch"] / median,
            "finite_check_median_ms": float(np.median(checks[spec["name"]])),
            "settings": spec["config"],
        }
        print(
            f"{spec['name']}: {table[spec['name']]['images_per_second']:.2f} img/s "
            f"(median {median:.1f} ms per batch of {spec['batch']}, {values.size} batches; the finiteness "
            f"check {table[spec['name']]['finite_check_median_ms'] * 1e3:.1f} us)"
        )
    return {"speed": table, "rounds": args.rounds, "seconds_per_round": args.seconds}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="dynamic-batch ONNX (or IR) of the classifier")
    parser.add_argument(
        "--configs", default=DEFAULT_CONFIGS, help=f"comma-separated (default {DEFAULT_CONFIGS})"
    )
    parser.add_argument("--processes", type=int, default=100, help="fresh processes per configuration")
    parser.add_argument("--compiles", type=int, default=2, help="compiles in each process (default 2)")
    parser.add_argument("--time-limit", type=float, help="stop starting processes after this many seconds")
    parser.add_argument("--speed", action="store_true", help="time the configurations instead")
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds of --speed (default 6)")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per configuration and round")
    parser.add_argument("--out", help="write the JSON report here")
    parser.add_argument("--child", metavar="CONFIG", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        if args.child:
            print(json.dumps(child(args.model, args.child, args.compiles)))
            return 0
        if not Path(args.model).is_file():
            raise ToolkitError(f"{args.model}: model file not found")
        configs = [name.strip() for name in args.configs.split(",") if name.strip()]
        for name in configs:
            parse_config(name)
        load_before = os.getloadavg()
        result = measure_speed(args, configs) if args.speed else count_faults(args, configs)
        report = {
            "command": " ".join(sys.argv),
            "machine": machine_info("cpu"),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            **result,
        }
        if args.out:
            write_json(args.out, report)
        return 0

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
