"""The closing table of test/eval_acc_perf.sh: one row per batch size, from its result.json and its
pure-performance summary.

Reads `<output_dir>/bs<N>/result.json` (the postprocess) and `<output_dir>/bs<N>/perf_summary.json` (the
pure-performance run of ais_bench, either generation, or of our runner; after a multi-device run the
per-device summaries `perf/device*_summary.json`, whose throughputs add up), prints a Markdown table and saves
it as `eval_summary.md` and `eval_summary.json`.

    python3 -m twins_pcpvt.evaltable ./eval_output --batch-sizes 1,4,8 --note "weights: pcpvt_small.pth"

Exit status: 0 when the table was written, 1 when the output folder, a result or a summary is missing or
unreadable or a run's folder is unfinished (in progress, or stopped before its summary), 2 on bad usage.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .cli import add_flag, make_parser, positive_int_list
from .common import ToolkitError, atomic_writer, check_output_file, refuse_unfinished, run_main
from .report import json_field, read_json, write_json
from .results import flag_value

COLUMNS = ("batch size", "top-1 %", "top-5 %", "throughput img/s", "backend", "device", "precision")


def _perf_fields(path: Path, summary: dict) -> dict:
    """The fields of a performance summary the table shows, each checked (one error names a bad one)."""
    device = summary.get("device")
    return {
        "throughput": json_field(path, summary, "throughput"),
        "backend": json_field(path, summary, "backend", "text", "ais_bench"),
        "device": str(device) if device else None,
        "args": summary.get("args"),
        "precision": json_field(path, summary, "precision", "text", "om"),
    }


def read_perf(folder: Path) -> dict:
    """The pure-performance summary of one batch size; several devices' summaries combined into one."""
    refuse_unfinished(folder / "perf")
    single = folder / "perf_summary.json"
    devices = sorted((folder / "perf").glob("device*_summary.json"))
    if single.is_file() or not devices:
        return _perf_fields(single, read_json(single))
    summaries = [_perf_fields(path, read_json(path)) for path in devices]
    combined = dict(summaries[0])
    combined["throughput"] = sum(summary["throughput"] for summary in summaries)
    if combined["device"] is not None:
        combined["device"] = ",".join(summary["device"] or "?" for summary in summaries)
    return combined


def collect_rows(output_dir: Path, batch_sizes: list[int]) -> list[dict]:
    rows = []
    for batch_size in batch_sizes:
        folder = output_dir / f"bs{batch_size}"
        results = folder / "result"
        for run in sorted(results.iterdir()) if results.is_dir() else ():  # the runs result.json scored
            if run.is_dir():
                refuse_unfinished(run)
        result = folder / "result.json"
        accuracy = read_json(result)
        perf = read_perf(folder)
        rows.append(
            {
                "batch_size": batch_size,
                "top1": json_field(result, accuracy, "top1"),
                "top5": json_field(result, accuracy, "top5"),
                "images": json_field(result, accuracy, "images", "integer"),
                "throughput": perf["throughput"],
                "backend": perf["backend"],
                "device": perf["device"] or flag_value(perf["args"], "--device", "-d") or "npu 0",
                "precision": perf["precision"],
            }
        )
    return rows


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = (
            str(row["batch_size"]),
            f"{100 * row['top1']:.2f}",
            f"{100 * row['top5']:.2f}",
            f"{row['throughput']:.1f}",
            row["backend"],
            row["device"],
            row["precision"],
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def build_parser():
    parser = make_parser(__doc__, "python3 -m twins_pcpvt.evaltable")
    parser.add_argument(
        "output_dir", type=Path, metavar="OUTPUT_DIR", help="the --output-dir of test/eval_acc_perf.sh"
    )
    add_flag(
        parser,
        "--batch-sizes",
        "--batch_size",
        type=positive_int_list,
        required=True,
        metavar="LIST",
        help="comma-separated batch sizes, e.g. 1,4,8",
    )
    parser.add_argument("--note", default="", metavar="TEXT", help="a line printed and saved above the table")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        if not args.output_dir.is_dir():
            reason = "not a folder" if args.output_dir.exists() else "no such folder"
            raise ToolkitError(
                f"{args.output_dir}: {reason} (expected the output folder of eval_acc_perf.sh)"
            )
        for name in ("eval_summary.md", "eval_summary.json"):
            check_output_file(args.output_dir / name)
        rows = collect_rows(args.output_dir, args.batch_sizes)
        table = markdown_table(rows)
        text = (f"{args.note}\n\n" if args.note else "") + table
        with atomic_writer(args.output_dir / "eval_summary.md", "w") as handle:
            handle.write(text)
        write_json(args.output_dir / "eval_summary.json", {"note": args.note, "rows": rows})
        print(text, end="")
        print(f"saved {args.output_dir / 'eval_summary.md'} and {args.output_dir / 'eval_summary.json'}")
        return 0

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
