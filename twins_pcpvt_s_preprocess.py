r"""Stage 1: turn ImageNet val images into the model's input tensors, one `<stem>.bin` per image.

    python3 twins_pcpvt_s_preprocess.py --data_path ${datasets_path} --prep_dataset ./prep_dataset
    python3 twins_pcpvt_s_preprocess.py --data_path ./photos --prep_dataset ./prep --class-map classes.txt \
        --limit 100 --workers 4

data_path holds the images flat or in class folders (`<wnid>/`), either one optionally under `val/`;
`.JPEG`, `.jpg`, `.jpeg` and `.png` in any case, decoded as JPEG or PNG by content. The label of a class
folder is the index of its WordNet id among the 1000 ILSVRC-2012 ids (sorted); other folders are ignored with
a notice; --class-map names another class set. Each image becomes 602,112 bytes of little-endian float32
[3, 224, 224] (resize 256 bicubic, center crop 224, ImageNet mean/std, equal to torchvision's pipeline), and
prep_dataset/manifest.tsv lists stem, source path, class label and the source's size and mtime. A rerun keeps
the tensors whose source is unchanged and removes those this run does not cover. Bad images are reported one
line each, all others are still written.

Exit status: 0 when every image was converted, 1 when any failed (each named on one line) or the run could
not start or finish, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from twins_pcpvt.cli import add_flag, make_parser, positive_int  # noqa: E402
from twins_pcpvt.common import run_main, usable_cpus  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(__doc__, Path(__file__).name)
    parser.add_argument(
        "--data_path",
        required=True,
        metavar="DIR",
        help="folder of the original images (flat, val/, or class folders)",
    )
    parser.add_argument(
        "--prep_dataset", required=True, metavar="DIR", help="output folder for <stem>.bin and manifest.tsv"
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        metavar="N",
        help=f"worker processes (default: all cores, here {usable_cpus()})",
    )
    parser.add_argument(
        "--limit",
        type=positive_int,
        default=None,
        metavar="N",
        help="process only the first N images in sorted order",
    )
    add_flag(
        parser,
        "--class-map",
        metavar="FILE",
        help="class folder names, one per line, line 1 is class 0 "
        "(default: the 1000 ILSVRC-2012 WordNet ids, sorted)",
    )
    add_flag(parser, "--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    program = sys.argv[0] if argv is None else __file__
    argv = sys.argv[1:] if argv is None else [str(arg) for arg in argv]
    args = build_parser().parse_args(argv)

    def run() -> int:
        from twins_pcpvt.data import preprocess_dataset

        summary = preprocess_dataset(
            args.data_path,
            args.prep_dataset,
            workers=args.workers,
            limit=args.limit,
            progress=not args.no_progress,
            class_map=args.class_map,
            command=["python3", program, *argv],
        )
        print(summary.line(), flush=True)
        return 1 if summary.failed else 0

    return run_main(run)


if __name__ == "__main__":
    raise SystemExit(main())
