"""Where the time of the compiled model goes: OpenVINO's per-layer counters (`PERF_COUNT`), summed by layer
type and kernel over timed runs, as the runner compiles the model (one batch size, one precision).

    python3 bench/profile_openvino.py --onnx model.onnx --batch-size 1 --precision bf16 --out out/profile

Prints the layer types by share of the total and writes OUT/profile.json. Matrix multiplication
(`FullyConnected`, `MatMul`, convolutions and the fused attention `Subgraph`) is the model's arithmetic; the
rest (normalisation, transposes, reorders, element-wise) is what a change of the graph or layout could save.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import benchreport  # noqa: E402
from twins_pcpvt.cli import positive_int  # noqa: E402
from twins_pcpvt.common import INPUT_SHAPE, ToolkitError, run_main  # noqa: E402
from twins_pcpvt.report import write_json  # noqa: E402

ARITHMETIC = ("FullyConnected", "MatMul", "Convolution", "GroupConvolution", "Subgraph (attention)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--onnx", required=True, help="the dynamic-batch ONNX export")
    parser.add_argument("--batch-size", type=positive_int, default=1, help="batch size (default 1)")
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--runs", type=positive_int, default=20, help="timed runs after 3 warm-up runs")
    parser.add_argument("--out", default="out/profile", help="folder for profile.json")
    return parser


def profile(onnx: Path, batch_size: int, precision: str, runs: int) -> dict:
    """Milliseconds per run by (layer type, kernel), with each one's share; one stream, all threads."""
    import openvino as ov

    from twins_pcpvt.backends.openvino_runner import read_model

    core = ov.Core()
    model = read_model(onnx)
    model.reshape({model.inputs[0].get_any_name(): [batch_size, *INPUT_SHAPE]})
    hint = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}[precision]
    config = {"PERF_COUNT": True, "INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"}
    compiled = core.compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    # a fused Subgraph holds either attention (MatMul, Softmax, MatMul) or element-wise layers (residual adds)
    attention = {
        op.get_friendly_name()
        for op in compiled.get_runtime_model().get_ordered_ops()
        if "originalLayersNames" in op.get_rt_info()
        and "MatMul" in op.get_rt_info()["originalLayersNames"].astype(str)
    }
    batch = np.random.default_rng(0).standard_normal((batch_size, *INPUT_SHAPE), dtype=np.float32)
    for _ in range(3):
        request.infer({0: batch})
    totals: collections.Counter = collections.Counter()
    for _ in range(runs):
        request.infer({0: batch})
        for layer in request.profiling_info:
            kind = layer.node_type
            if kind == "Subgraph":
                kind += " (attention)" if layer.node_name in attention else " (element-wise)"
            totals[(kind, layer.exec_type)] += layer.real_time.total_seconds() * 1e3 / runs
    total = sum(totals.values())
    layers = [
        {
            "type": node_type,
            "kernel": kernel,
            "ms": ms,
            "share": ms / total if total else 0.0,
            "arithmetic": node_type in ARITHMETIC,
        }
        for (node_type, kernel), ms in totals.most_common()
        if ms > 0
    ]
    outside = sum(layer["ms"] for layer in layers if not layer["arithmetic"])
    return {
        "batch_size": batch_size,
        "precision": precision,
        "runs": runs,
        "total_ms": total,
        "outside_arithmetic_ms": outside,
        "outside_arithmetic_share": outside / total if total else 0.0,
        "layers": layers,
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_main(lambda: _run(args))


def _run(args) -> int:
    onnx = Path(args.onnx)
    if not onnx.is_file():
        raise ToolkitError(f"{onnx}: ONNX model not found")
    result = profile(onnx, args.batch_size, args.precision, args.runs)
    result["machine"] = benchreport.machine_info()
    for layer in result["layers"][:15]:
        mark = "" if layer["arithmetic"] else "  <- outside matrix multiplication"
        print(f"{layer['type']:26s} {layer['kernel']:26s} {layer['ms']:8.2f} ms {layer['share']:6.1%}{mark}")
    print(
        f"total {result['total_ms']:.2f} ms per batch of {args.batch_size}; outside matrix multiplication "
        f"{result['outside_arithmetic_ms']:.2f} ms ({result['outside_arithmetic_share']:.1%})"
    )
    print(f"wrote {write_json(Path(args.out) / 'profile.json', result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
