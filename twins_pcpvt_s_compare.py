"""Compare two inference results output by output (cosine, absolute difference, top-1 and top-5 agreement).

    python3 twins_pcpvt_s_compare.py RESULT_A RESULT_B [--preset fp32|fp16|bf16|om] [--atol X]
        [--min-cosine C] [--json OUT] [--worst N] [--allow-missing]
    python3 twins_pcpvt_s_compare.py ./result_onnx ./result_om --preset om --json compare.json

Each RESULT is an output folder of ais_bench or of twins_pcpvt_s_infer.py, or the folder above it; outputs may
be BIN, NPY or TXT, in any mix. Outputs are matched by input stem.

Exit status: 0 when every output is within the thresholds (and both sides hold the same images, unless
--allow-missing), 1 when any is not, 2 when the results cannot be compared (bad usage, unreadable or malformed
outputs, different class counts, no image in common), as with diff(1).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from twins_pcpvt.cli import add_flag, cosine, make_parser, non_negative_float, non_negative_int
from twins_pcpvt.common import (
    ToolkitError,
    UsageError,
    check_output_file,
    message_line,
    refuse_overwriting_inputs,
    result_inputs,
    run_main,
)
from twins_pcpvt.compare import PRESETS, Thresholds, compare_outputs, comparison_json, format_report
from twins_pcpvt.report import write_json
from twins_pcpvt.results import find_output_folder, load_outputs


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(__doc__, Path(__file__).name)
    parser.add_argument(
        "result_a", type=Path, metavar="RESULT_A", help="reference result (e.g. ONNX Runtime fp32)"
    )
    parser.add_argument(
        "result_b", type=Path, metavar="RESULT_B", help="result under test (e.g. the OM model)"
    )
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="fp32",
        help="thresholds for the precision of RESULT_B against an fp32 RESULT_A: "
        + "; ".join(
            f"{name}: cosine >= {t.min_cosine:g}, max |a-b| <= {t.atol:g}" for name, t in PRESETS.items()
        )
        + " (default fp32)",
    )
    parser.add_argument(
        "--atol",
        type=non_negative_float,
        metavar="X",
        help="largest absolute difference allowed within an output (overrides the preset; inf: not checked)",
    )
    add_flag(
        parser,
        "--min-cosine",
        type=cosine,
        metavar="C",
        help="smallest cosine similarity allowed per output (overrides the preset; -1: not checked)",
    )
    parser.add_argument(
        "--json", type=Path, metavar="OUT", help="also write the full comparison to this JSON file"
    )
    parser.add_argument(
        "--worst",
        type=non_negative_int,
        default=10,
        metavar="N",
        help="outputs listed in the table (default 10)",
    )
    add_flag(
        parser,
        "--allow-missing",
        action="store_true",
        help="pass even when some images have an output on one side only (a subset run)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def run() -> int:
        preset = PRESETS[args.preset]
        thresholds = Thresholds(
            atol=preset.atol if args.atol is None else args.atol,
            min_cosine=preset.min_cosine if args.min_cosine is None else args.min_cosine,
        )
        try:
            if args.json:
                check_output_file(args.json, probe=True)
                for result in (args.result_a, args.result_b):
                    files, folders = result_inputs(find_output_folder(result))
                    refuse_overwriting_inputs(args.json, files=files, folders=folders)
            result_a = load_outputs(args.result_a, allow_nonfinite=True)
            result_b = load_outputs(args.result_b, allow_nonfinite=True)
            for side, result in (("A", result_a), ("B", result_b)):
                if result.ignored:
                    note = f"{side}: ignored what is not an inference output ({len(result.ignored)}), e.g. "
                    print(f"note: {message_line(note + result.ignored[0])}", file=sys.stderr)
            comparison = compare_outputs(result_a, result_b, thresholds, allow_missing=args.allow_missing)
            print(format_report(comparison, worst=args.worst), end="")
            if args.json:
                report = comparison_json(comparison, worst=args.worst)
                print(f"wrote {write_json(args.json, report, indent=None)}")
        except UsageError:
            raise
        except (
            ToolkitError
        ) as exc:  # exit status 1 means "the outputs differ": any trouble is 2, as with diff(1)
            raise UsageError(str(exc)) from exc
        return 0 if comparison.ok else 1

    return run_main(run)


if __name__ == "__main__":
    raise SystemExit(main())
