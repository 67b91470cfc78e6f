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
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .common import ToolkitError, atomic_writer, quoted, read_regular_file

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


NOT_FINITE_SUFFIX = "_not_finite"  # beside a figure written as null: "NaN", "Infinity" or "-Infinity"
# The largest JSON report read (result.json, summaries, step lists): the summary of a run over ImageNet's
# 50,000 validation images takes about 10 MB.
JSON_READ_LIMIT = 64 * 2**20


def _strict(value):
    """(value with every NaN and infinity replaced by None, what each replaced one was): for a float its
    name ("NaN", "Infinity", "-Infinity"), for a list a list of those (None where nothing was replaced), None
    when nothing was. A dict names its own replaced entries beside them, under `<key>_not_finite`."""
    if isinstance(value, float):
        return (value, None) if math.isfinite(value) else (None, json.dumps(value))
    if isinstance(value, dict):
        clean = {}
        for key, item in value.items():
            clean[key], why = _strict(item)
            if why is not None:
                clean[f"{key}{NOT_FINITE_SUFFIX}"] = why
        return clean, None
    if isinstance(value, (list, tuple)):
        pairs = [_strict(item) for item in value]
        whys = [why for _, why in pairs]
        return [item for item, _ in pairs], (whys if any(why is not None for why in whys) else None)
    return value, None


def write_json(path: str | os.PathLike, document: dict, *, indent: int | None = 2) -> Path:
    """Write `document` as strict JSON (RFC 8259), atomically; the parent folder is created when missing.

    A NaN or infinite figure is written as null, and the dict holding it names what it was under
    `<key>_not_finite` ("NaN", "Infinity", "-Infinity"; for a list of figures, a list of those). `indent=None`
    writes one line with the C encoder, several times faster for large documents.
    """
    path = Path(path)
    try:
        text = json.dumps(document, indent=indent, allow_nan=False)
    except ValueError:  # only non-finite floats fail: walk the document once to replace them
        text = json.dumps(_strict(document)[0], indent=indent, allow_nan=False)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ToolkitError(f"{path}: cannot create the folder {path.parent} ({exc.strerror or exc})") from exc
    with atomic_writer(path, "w") as handle:  # refuses non-regular targets; errors name the file
        handle.write(text + "\n")
    return path


def read_json(path: str | os.PathLike) -> dict:
    """Read a JSON report (result.json, a summary, a comparison or benchmark report): a JSON object of at
    most JSON_READ_LIMIT bytes. Too large, too deeply nested, not JSON or not an object: one error naming
    the file."""
    path = Path(path)
    # a FIFO or device in its place never blocks the reader; a file given by mistake is refused by its size
    data = read_regular_file(path, "JSON report", limit=JSON_READ_LIMIT)
    try:
        document = json.loads(data.decode("utf-8"))
    except RecursionError:
        raise ToolkitError(f"{path}: cannot read JSON (nested too deeply for a report)") from None
    except ValueError as exc:
        raise ToolkitError(f"{path}: cannot read JSON ({exc})") from None
    if not isinstance(document, dict):
        found = _described(document) if isinstance(document, list) else f"the value {_described(document)}"
        raise ToolkitError(f"{path}: not a JSON report (an object {{...}} expected, found {found})")
    return document


_REQUIRED = object()


def _described(value) -> str:
    if isinstance(value, (dict, list)):
        return f"a JSON {'object' if isinstance(value, dict) else 'array'} of {len(value):,} entries"
    return quoted(json.dumps(value), 60)


def json_field(path: str | os.PathLike, document: dict, key: str, kind: str = "number", default=_REQUIRED):
    """`document[key]` of a report read by `read_json`, checked: `kind` "number" (finite, not a boolean),
    "integer" or "text"; `default` when the key is missing (without one, a missing key is an error). A
    missing key or a value of another kind is one error naming the report and the field."""
    if key not in document:
        if default is _REQUIRED:
            raise ToolkitError(f"{path}: no {key!r} field")
        return default
    value = document[key]
    if kind == "text":
        ok = isinstance(value, str)
    else:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (kind == "number" or isinstance(value, int))
    if not ok:
        wanted = {"number": "a finite number", "integer": "an integer", "text": "a string"}[kind]
        raise ToolkitError(f"{path}: field {key!r} is {_described(value)}, not {wanted}")
    return value
