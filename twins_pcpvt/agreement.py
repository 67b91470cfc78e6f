"""How closely a reduced-precision run follows fp32: worst per-image cosine of the logits and top-1 agreement.

It runs the same model on the same preprocessed tensors at the precision a run chose (`auto`: the hardware's
native reduced precision where there is one) and at fp32, and reports the agreement in one line:

    python3 -m twins_pcpvt.agreement --model twins_dynamic.onnx --input prep_dataset [--precision auto]
        [--backend auto] [--device cpu] [--images 16] [--json agreement.json]

The comparison and its bars are `compare.agreement`'s. A NaN or infinite logit never hides behind a good
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
from .common import ToolkitError, run_main
from .compare import agreement, agreement_line, passes


def _logits(backend: str, model: str, device: str | None, precision: str, inputs: np.ndarray, batch: int):
    from .backends import create_runner

    runner = create_runner(backend, model, device=device, precision=precision, batch_size=batch)
    with runner:
        outputs = [runner.infer(inputs[start : start + batch]) for start in range(0, len(inputs), batch)]
        return runner.name, runner.precision, np.concatenate(outputs)


def check_precision(args) -> int:
    from .data import read_tensor_file
    from .report import write_json

    folder = Path(args.input)
    if not folder.is_dir():
        raise ToolkitError(f"{folder}: input folder not found")
    files = sorted(folder.glob("*.bin"))[: args.images]
    if not files:
        raise ToolkitError(f"{folder}: no .bin tensors to compare on")
    inputs = np.stack([read_tensor_file(path) for path in files])
    device = args.device.split(",")[0] if args.device else None  # of a multi-device run, the first device
    name, ran, logits = _logits(args.backend, args.model, device, args.precision, inputs, args.batchsize)
    if ran == "fp32":
        print(f"[INFO] precision agreement: {name} ran fp32, the reference itself; nothing to compare")
        row = None
    else:
        _, _, reference = _logits(name, args.model, device, "fp32", inputs, args.batchsize)
        row = agreement(name, ran, f"{name} fp32", logits, reference)
        print(f"[INFO] precision agreement: {agreement_line(row)}")
    if args.json:
        write_json(args.json, {"model": str(args.model), "ran": ran, "agreement": row})
    return 0 if row is None or passes(row) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(__doc__, "python3 -m twins_pcpvt.agreement")
    parser.add_argument("--model", required=True, help=".onnx, .xml or checkpoint")
    parser.add_argument("--input", required=True, help="folder of preprocessed .bin tensors")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--device", default=None)
    parser.add_argument(
        "--precision", default="auto", help="the precision to check against fp32 (default auto)"
    )
    parser.add_argument(
        "--images", type=positive_int, default=16, metavar="N", help="the first N tensors (default 16)"
    )
    parser.add_argument("--batchsize", type=positive_int, default=1, metavar="N")
    parser.add_argument("--json", help="also write the result here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_main(lambda: check_precision(args))


if __name__ == "__main__":
    sys.exit(main())
