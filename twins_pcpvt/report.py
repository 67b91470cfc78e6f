"""Reports of the toolkit: the guide's result.json (plus plain numeric fields), JSON files in general.

result.json keeps the layout the guide's postprocess wrote, so existing tooling still reads it:

    {"title": "Overall statistical evaluation",
     "value": [{"key": "Number of images", "value": "50000"}, {"key": "Number of classes", "value": "1000"},
               {"key": "Top1 accuracy", "value": "81.22%"}, ... {"key": "Top5 accuracy", "value": "95.64%"}],
     "top1": 0.81224, ... "top5": 0.95638, "images": 50000, "classes": 1000,
     "labels_without_output": 0, "output_folder": "...", "annotation": "..."}

`top1`..`top5` are fractions (not percentages, not rounded); the strings in `value` are percentages written as
the guide's postprocess writes them, `str(round(acc * 100, 2)) + '%'`: "81.22%", but "50.0%" and "100.0%".
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .common import ToolkitError, atomic_writer, read_regular_file

if TYPE_CHECKING:  # only named in annotations: the scorer pulls in the readers and the image stack
    from .metrics import Accuracy

RESULT_TITLE = "Overall statistical evaluation"


def percent_text(fraction: float) -> str:
    """A fraction as the guide's postprocess writes it: `str(round(acc * 100, 2)) + '%'` ('81.22%',
    '50.0%')."""
    return str(round(fraction * 100, 2)) + "%"


def result_json(
    accuracy: Accuracy, *, output_folder: str | os.PathLike, annotation: str | os.PathLike
) -> dict:
    """The result.json document for one scored result."""
    ks = sorted(accuracy.correct)
    value = [
        {"key": "Number of images", "value": str(accuracy.images)},
        {"key": "Number of classes", "value": str(accuracy.classes)},
    ]
    value += [{"key": f"Top{k} accuracy", "value": percent_text(accuracy.fraction(k))} for k in ks]
    document: dict = {"title": RESULT_TITLE, "value": value}
    document.update({f"top{k}": accuracy.fraction(k) for k in ks})
    document.update(
        images=accuracy.images,
        classes=accuracy.classes,
        labels_without_output=accuracy.labels_without_output,
        output_folder=str(output_folder),
        annotation=str(annotation),
    )
    return document


def summary_line(accuracy: Accuracy) -> str:
    """One line for the console: top-1 and top-5 with counts."""
    parts = [f"top-{k} {100 * accuracy.fraction(k):.2f}%" for k in (1, 5) if k in accuracy.correct]
    return f"{', '.join(parts)} on {accuracy.images} images ({accuracy.classes} classes)"


def write_json(path: str | os.PathLike, document: dict, *, indent: int | None = 2) -> Path:
    """Write `document` as JSON, atomically; the parent folder is created when missing.

    `indent=None` writes one line with the C encoder, several times faster for large documents.
    """
    path = Path(path)
    text = json.dumps(document, indent=indent)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ToolkitError(f"{path}: cannot create the folder {path.parent} ({exc.strerror or exc})") from exc
    with atomic_writer(path, "w") as handle:  # refuses non-regular targets; errors name the file
        handle.write(text + "\n")
    return path


def read_json(path: str | os.PathLike) -> dict:
    """Read a JSON report written by the toolkit (result.json, comparison or benchmark reports)."""
    path = Path(path)
    data = read_regular_file(path, "JSON report")  # a FIFO or device in its place never blocks the reader
    try:
        return json.loads(data.decode("utf-8"))
    except ValueError as exc:
        raise ToolkitError(f"{path}: cannot read JSON ({exc})") from exc
