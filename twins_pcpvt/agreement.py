"""How closely a reduced-precision run follows fp32: worst per-image cosine of the logits and top-1 agreement.

As a command, it runs the same model on the same preprocessed tensors at the precision a run chose (`auto`:
the
hardware's native reduced precision where there is one) and at fp32, and reports the agreement in one line:

    python3 -m twins_pcpvt.agreement --model twins_dynamic.onnx --input prep_dataset [--precision auto]
        [--backend auto] [--device cpu] [--images 16] [--json agreement.json]

A NaN or infinite logit never hides behind a good image: the worst cosine is then NaN and the check fails.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .common import ToolkitError, UsageError, run_main

# The lowest worst-image cosine a run at each precision must reach against fp32.
MIN_COSINE = {"fp32": 0.99999, "fp16": 0.999, "bf16": 0.995}
# Same top-1 is required on every image whose reference top-1 leads the runner-up by more than the precision
# can
# move a logit (TIE_FACTOR x its machine epsilon x the image's largest logit). Random weights give near-ties
# that
# any rounding may swap; trained weights on real photos lead by far more.
EPSILON = {"fp32": 2.0**-23, "fp16": 2.0**-10, "bf16": 2.0**-7}
TIE_FACTOR = 16


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of two vectors in float64; NaN when either holds a NaN/inf or is all zeros."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("nan")
    denominator = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denominator) if denominator else float("nan")


def agreement(
    label: str, precision: str, reference_label: str, logits: np.ndarray, reference: np.ndarray
) -> dict:
    """One subject's logits against the fp32 reference's on the same inputs: the worst image decides.

    `cosine` is the lowest per-image cosine, NaN when any image's is NaN (np.min propagates it; the builtin
    min
    would keep or drop a NaN depending on where it stands).
    """
    logits = np.asarray(logits, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if logits.shape != reference.shape:
        raise ValueError(f"{label}: logits {logits.shape} and reference {reference.shape} differ in shape")
    cosines = np.array([cosine_similarity(row, ref) for row, ref in zip(logits, reference, strict=True)])
    finite = bool(np.isfinite(logits).all())
    same = logits.argmax(axis=1) == reference.argmax(axis=1)
    leading = np.sort(reference, axis=1)[:, ::-1] if reference.size else np.zeros((0, 2))
    epsilon = EPSILON.get(precision, EPSILON["fp16"])
    decided = leading[:, 0] - leading[:, 1] > TIE_FACTOR * epsilon * np.abs(reference).max(
        axis=1, initial=0.0
    )
    return {
        "label": label,
        "precision": precision,
        "reference": reference_label,
        "images": len(cosines),
        "cosine": float(np.min(cosines)) if len(cosines) else float("nan"),
        "max_abs_diff": float(np.max(np.abs(logits - reference))) if finite else float("nan"),
        "top1_agrees": int(np.sum(same)) if finite else 0,
        "top1_decided": int(np.sum(decided)),
        "top1_agrees_decided": int(np.sum(same & decided)) if finite else 0,
        "nonfinite_values": int(np.size(logits) - np.isfinite(logits).sum()),
    }


def passes(row: dict) -> bool:
    """Whether an agreement row meets the bar of its precision (NaN never does)."""
    minimum = MIN_COSINE.get(row["precision"], MIN_COSINE["fp16"])
    return bool(row["cosine"] >= minimum and row["top1_agrees_decided"] == row["top1_decided"])


def summary_line(row: dict) -> str:
    verdict = "ok" if passes(row) else "BELOW THE BAR"
    return (
        f"{row['label']} {row['precision']} against {row['reference']} on {row['images']} image(s): "
        f"worst cosine "
        f"{row['cosine']:.6f} (bar {MIN_COSINE.get(row['precision'], MIN_COSINE['fp16'])}), same top-1 "
        f"{top1_text(row)}, max abs diff {row['max_abs_diff']:.3g}: {verdict}"
    )


def top1_text(row: dict) -> str:
    """'4/4', or '3/4 (2/2 with a clear lead)' when near-ties are left out of the requirement."""
    text = f"{row['top1_agrees']}/{row['images']}"
    if row["top1_decided"] < row["images"]:
        text += f" ({row['top1_agrees_decided']}/{row['top1_decided']} with a clear lead)"
    return text


# ---- the command -------------------------------------------------------------------------------------------
def _logits(backend: str, model: str, device: str | None, precision: str, inputs: np.ndarray, batch: int):
    from .backends import create_runner

    runner = create_runner(backend, model, device=device, precision=precision, batch_size=batch)
    with runner:
        outputs = [runner.infer(inputs[start : start + batch]) for start in range(0, len(inputs), batch)]
        return runner.name, runner.precision, np.concatenate(outputs)


def check_precision(args) -> int:
    from .data import read_tensor_file
    from .report import write_json

    if args.images < 1 or args.batchsize < 1:
        raise UsageError("--images and --batchsize must be >= 1")
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
        print(f"[INFO] precision agreement: {summary_line(row)}")
    if args.json:
        write_json(args.json, {"model": str(args.model), "ran": ran, "agreement": row})
    return 0 if row is None or passes(row) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python3 -m twins_pcpvt.agreement", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--model", required=True, help=".onnx, .xml or checkpoint")
    parser.add_argument("--input", required=True, help="folder of preprocessed .bin tensors")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--device", default=None)
    parser.add_argument(
        "--precision", default="auto", help="the precision to check against fp32 (default auto)"
    )
    parser.add_argument("--images", type=int, default=16, help="the first N tensors (default 16)")
    parser.add_argument("--batchsize", type=int, default=1)
    parser.add_argument("--json", help="also write the result here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_main(lambda: check_precision(args))


if __name__ == "__main__":
    sys.exit(main())
