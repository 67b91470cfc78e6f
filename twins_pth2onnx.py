"""Stage 2: convert a Twins-PCPVT-S checkpoint to ONNX and check the file against PyTorch.

    python3 twins_pth2onnx.py --source ./pcpvt_small.pth --target ./twins_dynamic.onnx
    python3 twins_pth2onnx.py --source ./pcpvt_small.pth --batch-size 8     # writes twins_bs8.onnx
    python3 twins_pth2onnx.py --random-init --target ./demo.onnx           # seeded random weights

The checkpoint may be a bare state dict, a training checkpoint ({'model': ...} with optimizer, args, ...),
{'state_dict': ...}, with or without `module.` prefixes, or a .safetensors file; `--source timm[:tag]` takes
timm's pretrained weights from the local Hugging Face cache, else from the hub; without either
(HF_HUB_OFFLINE, or no connection within seconds) it stops at once saying how to pass a local checkpoint.
Pickled checkpoints are read without running any code they contain. The file is written only when ONNX
Runtime matches PyTorch on a random batch.

Exit status: 0 when the file was written and passed the check, 1 when the export failed (unreadable
checkpoint, export error, check failed: nothing is written), 2 on bad usage.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from twins_pcpvt.cli import add_flag, finite_non_negative_float, make_parser, positive_int  # noqa: E402
from twins_pcpvt.common import ToolkitError, UsageError, run_main  # noqa: E402
from twins_pcpvt.export import (  # noqa: E402  (torch loads only when an export function runs)
    DEFAULT_OPSET,
    DEFAULT_TOLERANCE,
    MIN_OPSET,
    check_export_memory,
    check_target,
    export_checked,
    max_opset,
)


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(__doc__, Path(__file__).name)
    parser.add_argument(
        "--source", metavar="CKPT", help="checkpoint (.pth/.pt/.bin/.safetensors), or 'timm' / 'timm:<tag>'"
    )
    parser.add_argument(
        "--target",
        metavar="FILE",
        help="ONNX file to write (default twins_dynamic.onnx, or twins_bs<N>.onnx with --batch-size)",
    )
    add_flag(
        parser,
        "--batch-size",
        type=positive_int,
        metavar="N",
        help="fixed batch size (default: a dynamic batch axis)",
    )
    parser.add_argument(
        "--opset",
        type=int,
        metavar="N",
        default=DEFAULT_OPSET,
        help=f"ONNX opset (default {DEFAULT_OPSET}, what ATC and the Ascend model zoo use)",
    )
    parser.add_argument(
        "--tolerance",
        type=finite_non_negative_float,
        metavar="X",
        default=DEFAULT_TOLERANCE,
        help=f"largest absolute difference allowed between ONNX Runtime and PyTorch "
        f"(default {DEFAULT_TOLERANCE:g})",
    )
    add_flag(
        parser,
        "--random-init",
        action="store_true",
        help="use seeded random weights instead of a checkpoint (demos and tests only)",
    )
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="seed of --random-init (default 0)")
    add_flag(
        parser,
        "--allow-unsafe-pickle",
        action="store_true",
        help="load a pickle that holds more than weights and plain values; this runs any code "
        "inside the file: only for files you trust",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def run() -> int:
        # the checks that need no torch first: a missing or mistaken file is one line at once
        if not args.source and not args.random_init:
            raise UsageError(
                "--source is required (a checkpoint path, or 'timm'), unless --random-init is given"
            )
        source = None if args.random_init else args.source
        is_file_source = source is not None and source != "timm" and not source.startswith("timm:")
        target = Path(
            args.target
            or ("twins_dynamic.onnx" if args.batch_size is None else f"twins_bs{args.batch_size}.onnx")
        )
        if is_file_source and not Path(source).is_file():
            raise ToolkitError(
                f"{source}: checkpoint not found" if not Path(source).exists() else f"{source}: not a file"
            )
        check_target(target, source if is_file_source else None)
        if source in ("timm", "timm:in1k"):
            from twins_pcpvt.hub import TIMM_TAG, timm_weights

            timm_weights(TIMM_TAG)  # offline and not cached: one line now, before torch loads
        from twins_pcpvt.model import load_model  # torch and timm load here

        check_export_memory(args.batch_size)
        if not MIN_OPSET <= args.opset <= max_opset():
            raise UsageError(f"--opset must lie in {MIN_OPSET}..{max_opset()}, got {args.opset}")

        what = f"random weights (seed {args.seed})" if args.random_init else source
        print(f"loading {what} ...", flush=True)
        started = time.perf_counter()
        model = load_model(
            source, random_init=args.random_init, seed=args.seed, allow_unsafe_pickle=args.allow_unsafe_pickle
        )
        print(f"loaded in {time.perf_counter() - started:.1f} s", flush=True)
        path, diff = export_checked(
            model,
            target,
            batch_size=args.batch_size,
            opset=args.opset,
            tolerance=args.tolerance,
            log=lambda message: print(message, flush=True),
        )
        shape = f"batch {args.batch_size}" if args.batch_size else "dynamic batch"
        weights = f", random weights seed {args.seed}" if args.random_init else ""
        print(
            f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, opset {args.opset}, {shape}{weights}): "
            f"check passed, ONNX Runtime vs PyTorch max abs diff {diff:.3g} <= {args.tolerance:g}"
        )
        return 0

    return run_main(run)


if __name__ == "__main__":
    raise SystemExit(main())
