r"""Stage 4: score inference outputs against their labels and write top-1 .. top-5 to result.json.

    python3 twins_pcpvt_s_postprocess.py --folder-davinci-target ./result \
        --annotation-file-path /opt/npu/imageNet/val_label.txt \
        --result-json-path ./result --json-file-name result.json

--folder-davinci-target is the output folder of ais_bench or of twins_pcpvt_s_infer.py, or the folder above it
(as in the guide, where ais_bench wrote ./result/<timestamp>/); outputs may be BIN, NPY or TXT. Labels come
from val_label.txt (`ILSVRC2012_val_00000001.JPEG 65`, 0-based), or from the preprocess manifest when the
images were in class folders: pass manifest.tsv or the preprocess output folder. Outputs with 1001 classes
(background first) are scored with the labels shifted by one. The JSON report never replaces one of the inputs
(the label file, the manifest, an output or the run's summary) and is never written inside the output folder.

Exit status: 0 when result.json was written, 1 when the outputs or labels cannot be read or scored (the file
and the reason on one line; nothing is written), 2 on bad usage.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from twins_pcpvt.cli import make_parser
from twins_pcpvt.common import (
    UsageError,
    check_output_file,
    message_line,
    refuse_overwriting_inputs,
    run_main,
)
from twins_pcpvt.data import MANIFEST_NAME
from twins_pcpvt.labels import read_labels
from twins_pcpvt.metrics import score_outputs
from twins_pcpvt.report import result_json, summary_line, write_json
from twins_pcpvt.results import load_outputs, run_inputs


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(__doc__, Path(__file__).name)
    parser.add_argument(
        "--folder-davinci-target",
        required=True,
        type=Path,
        metavar="DIR",
        help="inference output folder, or its parent when that holds exactly one output folder",
    )
    parser.add_argument(
        "--annotation-file-path",
        required=True,
        type=Path,
        metavar="PATH",
        help="val_label.txt, or the preprocess manifest.tsv / preprocess output folder",
    )
    parser.add_argument(
        "--result-json-path",
        type=Path,
        default=Path("."),
        metavar="DIR",
        help="folder to write the JSON report into, created when missing (default: .)",
    )
    parser.add_argument(
        "--json-file-name",
        default="result.json",
        metavar="NAME",
        help="file name of the JSON report (default: result.json)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def run() -> int:
        name = args.json_file_name
        if not name or Path(name).name != name or name in (".", ".."):
            raise UsageError(
                f"--json-file-name must be a plain file name, got {name!r} "
                "(put the folder in --result-json-path)"
            )
        target = check_output_file(args.result_json_path / name, probe=True)
        annotation = args.annotation_file_path
        summary_files, output_folders = run_inputs(args.folder_davinci_target)
        refuse_overwriting_inputs(
            target, files=[annotation, annotation / MANIFEST_NAME, *summary_files], folders=output_folders
        )
        labels = read_labels(annotation)
        outputs = load_outputs(args.folder_davinci_target)
        for note in outputs.notes:
            print(f"note: {note}", file=sys.stderr)
        if len(outputs.parts) > 1:
            print(
                f"note: one run split over {len(outputs.parts)} time-stamp folders (each device process of "
                f"ais_bench stamps its own), read whole: {outputs.where}",
                file=sys.stderr,
            )
        first_device = Path(outputs.paths[0]).parent
        for duplicate in outputs.duplicates:
            print(
                f"note: {duplicate} is a duplicate: it holds the same images as {first_device} "
                "(every device ran every image, ais_bench 2024 without --divide_input) and gives the same "
                "scores (checked); each image is scored once",
                file=sys.stderr,
            )
        if outputs.ignored:
            count = len(outputs.ignored)
            note = f"ignored what is not an inference output ({count} file{'s' if count > 1 else ''}), e.g. "
            print(f"note: {message_line(note + outputs.ignored[0])}", file=sys.stderr)
        accuracy = score_outputs(outputs, labels)
        write_json(target, result_json(accuracy, output_folder=outputs.where, annotation=labels.source))
        if accuracy.labels_without_output:
            print(
                f"note: {accuracy.labels_without_output} of the {len(labels.labels)} labels in "
                f"{labels.source} have no output: a subset of the images was scored",
                file=sys.stderr,
            )
        print(f"{summary_line(accuracy)} from {outputs.where} -> {target}")
        return 0

    return run_main(run)


if __name__ == "__main__":
    raise SystemExit(main())
