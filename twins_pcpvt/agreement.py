r"""How closely two runs of one model agree: worst per-image cosine of the logits, top-1 agreement, speed.

Precision: the same model on the same preprocessed tensors at the precision a run chose (`auto`: the
hardware's native reduced precision where there is one) and at fp32, reported in one line:

    python3 -m twins_pcpvt.agreement --model twins_dynamic.onnx --input prep_dataset [--precision auto]
        [--backend auto] [--device cpu] [--images 16] [--json agreement.json]

Runtimes: the same weights on several runtimes at one precision (fp32 by default), each against the first
(ONNX Runtime and OpenVINO run the ONNX file, PyTorch the checkpoint it was exported from), with the speed
each measured (compute only, batch `--batchsize`):

    python3 -m twins_pcpvt.agreement --model twins_dynamic.onnx --checkpoint pcpvt_small.pth \
        --input prep_dataset --runtimes onnxruntime,openvino,torch

The comparison is `compare.agreement`'s; the bar of each precision is the toolkit's one table
(`twins_pcpvt/thresholds.py`, docs/stages.md section 5): the worst image's cosine at or above the bar, and the
same top-1 on every image where the reference leads clearly. A NaN or infinite logit never hides behind a good
image: the worst cosine is then NaN and the check fails.

Exit status: 0 when the run meets the bar (or already ran fp32), 1 when it is below the bar or fails, 2 on bad
usage.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .cli import make_parser, positive_int
from .common import (
    ToolkitError,
    UsageError,
    check_output_file,
    refuse_overwriting_inputs,
    refuse_unfinished,
    run_main,
)
from .compare import agreement, agreement_line, passes


def _run(backend: str, model: str, device: str | None, precision: str, inputs, batch: int):
    """(backend name, precision that ran, logits, images per second of compute) of one runner on `inputs`
    (their file names and tensors); a batch recomputed after non-finite logits is reported in a line."""
    from .backends import create_runner

    names, tensors = inputs
    runner = create_runner(backend, model, device=device, precision=precision, batch_size=batch)
    with runner:
        runner.infer(tensors[:batch], names[:batch])  # warm-up: first-run allocations and compilation untimed
        outputs, compute_ms = [], 0.0
        for start in range(0, len(tensors), batch):
            outputs.append(runner.infer(tensors[start : start + batch], names[start : start + batch]))
            compute_ms += runner.last_compute_ms or 0.0
        speed = 1000.0 * len(tensors) / compute_ms if compute_ms else float("nan")
        for reason in runner.recomputed:
            print(f"[WARN] {runner.name} {runner.precision}: {reason}", file=sys.stderr)
        return runner.name, runner.precision, np.concatenate(outputs), speed


def _read_inputs(args) -> tuple[list[str], np.ndarray]:
    from .data import read_tensor_file

    folder = Path(args.input)
    if not folder.is_dir():
        raise ToolkitError(f"{folder}: input folder not found")
    refuse_unfinished(folder)  # a preprocess still writing it, or stopped before its manifest
    files = sorted(folder.glob("*.bin"))[: args.images]
    if not files:
        raise ToolkitError(f"{folder}: no .bin tensors to compare on")
    return [str(path) for path in files], np.stack([read_tensor_file(path) for path in files])


def check_runtimes(args) -> int:
    """Each runtime against the first on the same inputs and weights; one line each, with its speed."""
    from .report import write_json

    if "torch" in args.runtimes and not args.checkpoint:
        raise UsageError("--runtimes with torch needs --checkpoint (the weights of the ONNX model)")
    inputs = _read_inputs(args)
    device = args.device.split(",")[0] if args.device else None
    rows, reference, ok = [], None, True
    for backend in args.runtimes:
        model = args.checkpoint if backend == "torch" else args.model
        precision = args.precision or "fp32"
        name, ran, logits, speed = _run(backend, model, device, precision, inputs, args.batchsize)
        if reference is None:
            reference = (f"{name} {ran}", logits)
            row = {"label": name, "precision": ran, "reference": None}
            line = f"{name} {ran}: the reference"
        else:
            row = agreement(name, ran, reference[0], logits, reference[1])
            ok = ok and passes(row)
            line = agreement_line(row)
        row["images_per_second"] = speed
        rows.append(row)
        print(f"[INFO] runtimes: {line}; {speed:.1f} img/s (batch {args.batchsize}, compute only)")
    if args.json:
        write_json(args.json, {"model": str(args.model), "checkpoint": args.checkpoint, "runtimes": rows})
    return 0 if ok else 1


def check_precision(args) -> int:
    from .report import write_json

    if args.json:
        check_output_file(args.json, probe=True)  # refused before the runs, not after them
    if args.runtimes:
        return check_runtimes(args)
    inputs = _read_inputs(args)
    device = args.device.split(",")[0] if args.device else None  # of a multi-device run, the first device
    precision = args.precision or "auto"
    name, ran, logits, _ = _run(args.backend, args.model, device, precision, inputs, args.batchsize)
    if ran == "fp32":
        print(f"[INFO] precision agreement: {name} ran fp32, the reference itself; nothing to compare")
        row = None
    else:
        _, _, reference, _ = _run(name, args.model, device, "fp32", inputs, args.batchsize)
        row = agreement(name, ran, f"{name} fp32", logits, reference)
        print(f"[INFO] precision agreement: {agreement_line(row)}")
    if args.json:
        write_json(args.json, {"model": str(args.model), "ran": ran, "agreement": row})
    return 0 if row is None or passes(row) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(__doc__, "python3 -m twins_pcpvt.agreement")
    parser.add_argument("--model", required=True, metavar="FILE", help=".onnx, .xml or checkpoint")
    parser.add_argument(
        "--input",
        required=True,
        metavar="DIR",
        help="folder of preprocessed .bin tensors (the first --images)",
    )
    parser.add_argument(
        "--backend",
        default="auto",
        metavar="NAME",
        help="auto|onnxruntime|openvino|torch (default auto: from the model file, as the infer script picks)",
    )
    parser.add_argument(
        "--device",
        default=None,
        metavar="DEV",
        help="cpu, cuda[:N] or tensorrt[:N]; of a list such as 0,1 the first (default cpu)",
    )
    parser.add_argument(
        "--precision",
        metavar="P",
        help="auto|fp32|fp16|bf16: the precision to check against fp32 (default auto; with --runtimes: "
        "the one precision of every runtime, default fp32)",
    )
    parser.add_argument(
        "--images", type=positive_int, default=16, metavar="N", help="the first N tensors (default 16)"
    )
    parser.add_argument(
        "--batchsize",
        type=positive_int,
        default=1,
        metavar="N",
        help="images per inference call; the speed is measured at it (default 1)",
    )
    parser.add_argument(
        "--runtimes",
        type=lambda text: [name.strip() for name in text.split(",") if name.strip()],
        metavar="LIST",
        help="compare these backends with the first instead (e.g. onnxruntime,openvino,torch)",
    )
    parser.add_argument(
        "--checkpoint", metavar="PTH", help="the weights --model was exported from, for the torch runtime"
    )
    parser.add_argument("--json", metavar="OUT", help="also write the result to this JSON file")
    return parser


def check_json_target(args) -> None:
    """--json never replaces the model, the checkpoint or a tensor of --input, and can be written."""
    if args.json:
        inputs = [path for path in (args.model, args.checkpoint) if path]
        refuse_overwriting_inputs(args.json, files=inputs, folders=[args.input])
        check_output_file(args.json, probe=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        check_json_target(args)
        return check_precision(args)

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
