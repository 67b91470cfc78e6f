"""Compare two inference results output by output (cosine, absolute difference, top-1 and top-5 agreement).

    python3 twins_pcpvt_s_compare.py RESULT_A RESULT_B [--preset fp32|fp16|bf16|om] [--atol X]
        [--min-cosine C] [--json OUT] [--worst N] [--allow-missing]
    python3 twins_pcpvt_s_compare.py ./result_onnx ./result_om --json compare.json

Each RESULT is an output folder of ais_bench or of twins_pcpvt_s_infer.py, or the folder above it; outputs may
be BIN, NPY or TXT, in any mix. Outputs are matched by input stem.

The bar is read from what ran: each result's summary records its precision (twins_pcpvt_s_infer.py's
`precision`; ais_bench's own summary names an .om model: om), and the pair is held to the bar of the lower
of the two (fp32 > fp16 > bf16 > om; fp32's where no summary says). --preset, --atol and --min-cosine override
it. The verdict names the bar and both precisions.

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
    run_main,
)
from twins_pcpvt.compare import choose_thresholds, compare_outputs, comparison_json, format_report
from twins_pcpvt.report import write_json
from twins_pcpvt.results import load_outputs, run_inputs, run_precision
from twins_pcpvt.thresholds import BARS, bars_text


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
        choices=list(BARS),
        help=f"the bar of this precision ({bars_text()}); default: the bar of the lower precision the two "
        "summaries record, fp32's where neither records one",
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
        try:
            if args.json:
                check_output_file(args.json, probe=True)
                for result in (args.result_a, args.result_b):
                    files, folders = run_inputs(result)
                    refuse_overwriting_inputs(args.json, files=files, folders=folders)
            result_a = load_outputs(args.result_a, allow_nonfinite=True)
            result_b = load_outputs(args.result_b, allow_nonfinite=True)
            thresholds = choose_thresholds(
                run_precision(result_a.parts),
                run_precision(result_b.parts),
                preset=args.preset,
                atol=args.atol,
                min_cosine=args.min_cosine,
            )
            for note in result_a.notes + result_b.notes:
                print(f"note: {note}", file=sys.stderr)
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
