"""Stage 1: turn ImageNet val images into the model's input tensors, one `<stem>.bin` per image.

    python3 twins_pcpvt_s_preprocess.py --data_path ${datasets_path} --prep_dataset ./prep_dataset

data_path holds the images flat or in class folders (`<wnid>/`), either one optionally under `val/`;
`.JPEG`, `.jpg`, `.jpeg` and `.png` in any case, decoded as JPEG or PNG by content. The label of a class
folder is the index of its WordNet id among the 1000 ILSVRC-2012 ids (sorted); other folders are ignored with
a notice; --class_map names another class set. Each image becomes 602,112 bytes of little-endian float32
[3, 224, 224] (resize 256 bicubic, center crop 224, ImageNet mean/std, equal to torchvision's pipeline), and
prep_dataset/manifest.tsv lists stem, source path, class label and the source's size and mtime. A rerun keeps
the tensors whose source is unchanged and removes those this run does not cover. Bad images are reported one
line each, all others are still written, and the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from twins_pcpvt.common import run_main, usable_cpus  # noqa: E402
from twins_pcpvt.data import preprocess_dataset  # noqa: E402


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_path", required=True,
                        help="folder of the original images (flat, val/, or class folders)")
    parser.add_argument("--prep_dataset", required=True, help="output folder for <stem>.bin and manifest.tsv")
    parser.add_argument("--workers", type=positive_int, default=None,
                        help=f"worker processes (default: all cores, here {usable_cpus()})")
    parser.add_argument("--limit", type=positive_int, default=None,
                        help="process only the first N images in sorted order")
    parser.add_argument("--class_map", metavar="FILE",
                        help="class folder names, one per line, line 1 is class 0 "
                        "(default: the 1000 ILSVRC-2012 WordNet ids, sorted)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def run() -> int:
        summary = preprocess_dataset(args.data_path, args.prep_dataset, workers=args.workers,
                                     limit=args.limit, progress=not args.no_progress,
                                     class_map=args.class_map)
        print(summary.line(), flush=True)
        return 1 if summary.failed else 0

    return run_main(run)


if __name__ == "__main__":
    raise SystemExit(main())
