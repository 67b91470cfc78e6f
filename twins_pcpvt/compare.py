"""Compare two inference results output by output: do two backends, or an OM and its ONNX, agree?

Outputs are matched by input stem. Per output: cosine similarity of the two score vectors, largest and mean
absolute difference, top-1 agreement (same highest class) and top-5 agreement (the same set of five highest
classes, order ignored); A's top-1 being among B's top five is reported beside it. An output passes when its
cosine similarity and its largest absolute difference are within the thresholds and both sides are finite.

TXT outputs hold `%f` decimals (6 places): read back, a value lies within 1e-6 of the float32 it was written
from (half a unit of the 6th decimal for the printing, at most as much again for rounding the decimal back to
float32). The absolute threshold is widened by that much for each TXT side of an output. The cosine needs no
widening: the rounding error of 1000 scores has a norm of at most ~3e-5, which moves the cosine by less than
1e-8 for any score vector of norm above 0.3 (a trained model's are in the tens).

The bar: the row of `thresholds.BARS` for the lower precision of the two runs, as their summaries record it
(`choose_thresholds`); `--preset`, `--atol` and `--min-cosine` override it. The same per-output statistics
judge a run against a reference on a few images (`agreement`): the worst image's cosine against the bar of its
precision and the same top-1 where the reference leads clearly; the precision check (`python3 -m
twins_pcpvt.agreement`), the benchmarks and the device check use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .common import ROWS_PER_PASS, ToolkitError
from .thresholds import BARS, TIE_FACTOR, bar_of, lowest

if TYPE_CHECKING:  # only named in annotations: importing the readers would pull in the image stack
    from .results import OutputSet

TXT_RESOLUTION = 1e-6
TOP_K = 5


@dataclass(frozen=True)
class Thresholds:
    atol: float  # largest absolute difference allowed within one output (inf: not checked)
    min_cosine: float  # smallest cosine similarity allowed for one output (-1: not checked)
    bar: str = "fp32"  # the precision of the bar these values start from
    chosen_by: str = ""  # why that bar, in words ("--preset om", "the lower precision of the two runs")
    precisions: tuple[str | None, str | None] = (None, None)  # what A and B ran, from their summaries


# The compare presets: the bars of `thresholds.BARS`, by precision.
PRESETS = {name: Thresholds(atol=bar.atol, min_cosine=bar.min_cosine, bar=name) for name, bar in BARS.items()}


def choose_thresholds(
    precision_a: str | None,
    precision_b: str | None,
    *,
    preset: str | None = None,
    atol: float | None = None,
    min_cosine: float | None = None,
) -> Thresholds:
    """The bar of `preset`, else of the lower of the two precisions that ran (None: not recorded), else
    fp32's (the strictest); `atol` and `min_cosine` override its values."""
    if preset is not None:
        name, chosen_by = preset, f"--preset {preset}"
    else:
        name = lowest(precision_a, precision_b)
        if name is None:
            name, chosen_by = "fp32", "no summary records a precision: the strictest bar (see --preset)"
        elif precision_a in BARS and precision_b in BARS:
            chosen_by = "the lower precision of the two runs"
        else:
            chosen_by = "the precision one summary records (the other records none)"
    given = (("--atol", atol), ("--min-cosine", min_cosine))
    overrides = [flag for flag, value in given if value is not None]
    if overrides:
        chosen_by += f", with {' and '.join(overrides)} as given"
    return Thresholds(
        atol=BARS[name].atol if atol is None else atol,
        min_cosine=BARS[name].min_cosine if min_cosine is None else min_cosine,
        bar=name,
        chosen_by=chosen_by,
        precisions=(precision_a, precision_b),
    )


def _ran(side: str, precision: str | None) -> str:
    return f"{side} ran {precision}" if precision else f"{side}'s precision is not recorded"


def bar_text(thresholds: Thresholds, *, why: bool = True) -> str:
    """'the bf16 bar (the lower precision of the two runs: A ran bf16, B ran fp32)'; without `why`, 'the
    bf16 bar; A ran bf16, B ran fp32'."""
    a, b = thresholds.precisions
    ran = f"{_ran('A', a)}, {_ran('B', b)}"
    return (
        f"the {thresholds.bar} bar ({thresholds.chosen_by}: {ran})"
        if why
        else f"the {thresholds.bar} bar; {ran}"
    )


@dataclass
class Comparison:
    """Per-output statistics of two results over their common stems, and the stems only one side has."""

    folder_a: str  # the folder read, or the folders of a split run
    folder_b: str
    thresholds: Thresholds
    stems: list[str]
    files_a: list[str]
    files_b: list[str]
    cosine: np.ndarray  # float64 [n]; NaN where an output is not finite
    max_abs: np.ndarray
    mean_abs: np.ndarray
    atol: np.ndarray  # the absolute threshold each output was held to, TXT resolution included
    top1_a: np.ndarray
    top1_b: np.ndarray
    top1_same: np.ndarray  # bool: the same highest class, both outputs finite
    top5_same: np.ndarray  # bool: the same five highest classes, both outputs finite
    top1_a_in_top5_b: np.ndarray
    finite: np.ndarray
    passed: np.ndarray
    only_in_a: list[str]
    only_in_b: list[str]
    allow_missing: bool = False  # whether stems on one side only are acceptable (a subset run on one side)

    @property
    def ok(self) -> bool:
        """Every compared output passed, and no stem is one-sided unless that is allowed."""
        return bool(self.passed.all()) and (self.allow_missing or not (self.only_in_a or self.only_in_b))

    def worst(self, count: int) -> list[int]:
        """Indices of the `count` worst outputs: failures first, then lowest cosine, then largest |a-b|."""
        cosine = np.where(np.isnan(self.cosine), -np.inf, self.cosine)
        max_abs = np.where(np.isnan(self.max_abs), np.inf, self.max_abs)
        order = np.lexsort((-max_abs, cosine, self.passed))
        return [int(index) for index in order[:count]]

    def summary(self) -> dict:
        count = len(self.stems)
        finite = self.finite
        return {
            "compared": count,
            "passed": int(self.passed.sum()),
            "failed": int(count - self.passed.sum()),
            "not_finite": int(count - finite.sum()),
            "only_in_a": len(self.only_in_a),
            "only_in_b": len(self.only_in_b),
            "cosine_min": float(self.cosine[finite].min()) if finite.any() else None,
            "cosine_mean": float(self.cosine[finite].mean()) if finite.any() else None,
            "max_abs_diff": float(self.max_abs[finite].max()) if finite.any() else None,
            "mean_abs_diff": float(self.mean_abs[finite].mean()) if finite.any() else None,
            "top1_agreement": float(self.top1_same.mean()),
            "top5_agreement": float(self.top5_same.mean()),
            "top1_a_in_top5_b": float(self.top1_a_in_top5_b.mean()),
        }

    def records(self, indices: list[int] | None = None) -> list[dict]:
        """One JSON-ready dict per output (all, or those at `indices`); NaN and inf become None, and
        `finite` says whether both outputs were finite."""
        rows = np.arange(len(self.stems)) if indices is None else np.asarray(indices, dtype=np.int64)

        def column(values: np.ndarray) -> list:
            return [value if math.isfinite(value) else None for value in values[rows].tolist()]

        columns = {
            "stem": [self.stems[row] for row in rows.tolist()],
            "file_a": [self.files_a[row] for row in rows.tolist()],
            "file_b": [self.files_b[row] for row in rows.tolist()],
            "cosine": column(self.cosine),
            "max_abs_diff": column(self.max_abs),
            "mean_abs_diff": column(self.mean_abs),
            "atol": column(self.atol),
            "top1_a": self.top1_a[rows].tolist(),
            "top1_b": self.top1_b[rows].tolist(),
            "top1_agree": self.top1_same[rows].tolist(),
            "top5_agree": self.top5_same[rows].tolist(),
            "top1_a_in_top5_b": self.top1_a_in_top5_b[rows].tolist(),
            "finite": self.finite[rows].tolist(),
            "passed": self.passed[rows].tolist(),
        }
        return [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]


def _top_k(rows: np.ndarray) -> np.ndarray:
    """The TOP_K highest classes of each row as a sorted index set (their order is not compared)."""
    return np.sort(np.argpartition(rows, -TOP_K, axis=1)[:, -TOP_K:], axis=1)


_COLUMNS = (
    ("cosine", np.float64),
    ("max_abs", np.float64),
    ("mean_abs", np.float64),
    ("top1_a", np.int64),
    ("top1_b", np.int64),
    ("top1_same", bool),
    ("top5_same", bool),
    ("top1_a_in_top5_b", bool),
    ("finite", bool),
)


def row_statistics(scores_a: np.ndarray, scores_b: np.ndarray) -> dict[str, np.ndarray]:
    """Per row of two score matrices [n, classes] (the `_COLUMNS`): cosine, largest and mean |a-b| (NaN where
    either row is not finite), both top-1 classes (NaN ranked lowest), the same top-1, the same top-5 set, A's
    top-1 among B's top 5 (never true where either row is not finite: NaN never agrees), and whether both rows
    are finite. Two all-zero rows have cosine 1, one all-zero row 0."""
    ok = np.isfinite(scores_a).all(axis=1) & np.isfinite(scores_b).all(axis=1)
    if not ok.all():  # rank NaN lowest; the statistics of these rows are masked below
        scores_a = np.where(np.isnan(scores_a), -np.inf, scores_a)
        scores_b = np.where(np.isnan(scores_b), -np.inf, scores_b)
    rows_a, rows_b = scores_a.astype(np.float64), scores_b.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        norms = np.linalg.norm(rows_a, axis=1) * np.linalg.norm(rows_b, axis=1)
        dots = np.einsum("ij,ij->i", rows_a, rows_b)
        both_zero = ~rows_a.any(axis=1) & ~rows_b.any(axis=1)
        cos = np.where(norms > 0, dots / norms, np.where(both_zero, 1.0, 0.0))
        diff = np.abs(rows_a - rows_b)
    top_a, top_b = _top_k(scores_a), _top_k(scores_b)
    best_a, best_b = scores_a.argmax(axis=1), scores_b.argmax(axis=1)
    return {
        "cosine": np.where(ok, np.clip(cos, -1.0, 1.0), np.nan),
        "max_abs": np.where(ok, diff.max(axis=1), np.nan),
        "mean_abs": np.where(ok, diff.mean(axis=1), np.nan),
        "top1_a": best_a,
        "top1_b": best_b,
        "top1_same": ok & (best_a == best_b),
        "top5_same": ok & (top_a == top_b).all(axis=1),
        "top1_a_in_top5_b": ok & (top_b == best_a[:, None]).any(axis=1),
        "finite": ok,
    }


def compare_outputs(
    a: OutputSet, b: OutputSet, thresholds: Thresholds, *, allow_missing: bool = False
) -> Comparison:
    """Compare the outputs both results have; the stems only one side has are listed, not compared."""
    if a.classes != b.classes:
        raise ToolkitError(
            f"{b.folder}: outputs of {b.classes} classes cannot be compared with the {a.classes} "
            f"classes of {a.folder}"
        )
    index_b = {stem: row for row, stem in enumerate(b.stems)}
    common_a = [row for row, stem in enumerate(a.stems) if stem in index_b]
    if not common_a:
        raise ToolkitError(
            f"{a.folder} and {b.folder} have no image in common (no output stem appears in both)"
        )
    common_b = [index_b[a.stems[row]] for row in common_a]
    stems = [a.stems[row] for row in common_a]
    common = set(stems)
    count = len(stems)

    columns = {name: np.empty(count, dtype) for name, dtype in _COLUMNS}
    for start in range(0, count, ROWS_PER_PASS):
        part = slice(start, start + ROWS_PER_PASS)
        for name, values in row_statistics(a.logits[common_a[part]], b.logits[common_b[part]]).items():
            columns[name][part] = values
    cosine, max_abs, finite = columns["cosine"], columns["max_abs"], columns["finite"]

    txt_sides = np.array([a.formats[row] == "txt" for row in common_a], np.int64) + np.array(
        [b.formats[row] == "txt" for row in common_b], np.int64
    )
    atol = thresholds.atol + TXT_RESOLUTION * txt_sides
    passed = finite & (cosine >= thresholds.min_cosine) & (max_abs <= atol)
    return Comparison(
        folder_a=a.where,
        folder_b=b.where,
        thresholds=thresholds,
        stems=stems,
        files_a=[a.paths[row] for row in common_a],
        files_b=[b.paths[row] for row in common_b],
        atol=atol,
        passed=passed,
        **columns,
        only_in_a=[stem for stem in a.stems if stem not in common],
        only_in_b=[stem for stem in b.stems if stem not in common],
        allow_missing=allow_missing,
    )


def _fmt(value: float, spec: str) -> str:
    return "nan" if value is None or np.isnan(value) else format(value, spec)


def format_report(comparison: Comparison, *, worst: int = 10, listed: int = 10) -> str:
    """The printed table: the worst outputs, the aggregated statistics, the one-sided stems, the verdict."""
    c = comparison
    s = c.summary()
    lines = [
        f"A: {c.folder_a}",
        f"B: {c.folder_b}",
        f"thresholds: cosine >= {c.thresholds.min_cosine:g}, max |a-b| <= {c.thresholds.atol:g}"
        f" (+{TXT_RESOLUTION:g} per TXT side): {bar_text(c.thresholds)}",
        "",
    ]
    shown = c.worst(worst)
    if shown:
        width = max(len("stem"), *(len(c.stems[index]) for index in shown))
        lines.append(f"worst {len(shown)} of {s['compared']} outputs:")
        lines.append(
            f"{'stem':<{width}}  {'cosine':>12}  {'max|a-b|':>9}  {'mean|a-b|':>9}  "
            f"{'top1 A':>6}  {'top1 B':>6}  {'top5':>4}  result"
        )
        for index in shown:
            lines.append(
                f"{c.stems[index]:<{width}}  {_fmt(c.cosine[index], '12.10f')}  "
                f"{_fmt(c.max_abs[index], '9.3g')}  {_fmt(c.mean_abs[index], '9.3g')}  "
                f"{c.top1_a[index]:>6}  {c.top1_b[index]:>6}  "
                f"{'same' if c.top5_same[index] else 'diff':>4}  {'pass' if c.passed[index] else 'FAIL'}"
            )
        lines.append("")
    lines.append(
        f"overall: {s['compared']} compared, {s['passed']} passed, {s['failed']} failed"
        + (f" ({s['not_finite']} with NaN or Inf)" if s["not_finite"] else "")
    )
    if s["cosine_min"] is not None:
        lines.append(
            f"  cosine min {s['cosine_min']:.10f}, mean {s['cosine_mean']:.10f}; "
            f"max |a-b| {s['max_abs_diff']:.3g}, mean |a-b| {s['mean_abs_diff']:.3g}"
        )
    lines.append(
        f"  top-1 agreement {100 * s['top1_agreement']:.2f}%, top-5 agreement (same set) "
        f"{100 * s['top5_agreement']:.2f}%, A's top-1 in B's top-5 {100 * s['top1_a_in_top5_b']:.2f}%"
    )
    for side, stems in (("A", c.only_in_a), ("B", c.only_in_b)):
        if stems:
            more = f" ... and {len(stems) - listed} more" if len(stems) > listed else ""
            lines.append(f"only in {side} ({len(stems)}): {', '.join(stems[:listed])}{more}")
    if c.ok:
        verdict = "PASS: every output is within the thresholds"
    elif c.passed.all():
        verdict = "FAIL: some images have an output on one side only (--allow-missing accepts that)"
    else:
        verdict = f"FAIL: {s['failed']} of {s['compared']} outputs are outside the thresholds"
    lines.append(f"{verdict} ({bar_text(c.thresholds, why=False)})")
    return "\n".join(lines) + "\n"


def comparison_json(comparison: Comparison, *, worst: int = 10) -> dict:
    """The JSON report: thresholds, summary, verdict, the worst outputs, every output, one-sided stems."""
    c = comparison
    atol = c.thresholds.atol
    return {
        "a": str(c.folder_a),
        "b": str(c.folder_b),
        "thresholds": {
            "atol": atol if np.isfinite(atol) else None,
            "min_cosine": c.thresholds.min_cosine,
            "txt_resolution": TXT_RESOLUTION,
            "allow_missing": c.allow_missing,
            "bar": c.thresholds.bar,
            "chosen_by": c.thresholds.chosen_by,
            "precision_a": c.thresholds.precisions[0],
            "precision_b": c.thresholds.precisions[1],
        },
        "passed": c.ok,
        "summary": c.summary(),
        "worst": c.records(c.worst(worst)),
        "only_in_a": c.only_in_a,
        "only_in_b": c.only_in_b,
        "outputs": c.records(),
    }


# ---- a run against a reference on a few images: the worst image against the bar of the run's precision -----


def agreement(
    label: str, precision: str, reference_label: str, logits: np.ndarray, reference: np.ndarray
) -> dict:
    """One run's logits against a reference's on the same images (`row_statistics`): the worst image decides.

    `cosine` is the lowest per-image cosine, NaN when any image's is NaN (np.min propagates it).
    """
    logits = np.asarray(logits, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if logits.shape != reference.shape:
        raise ValueError(f"{label}: logits {logits.shape} and reference {reference.shape} differ in shape")
    rows = row_statistics(logits, reference)
    images = len(logits)
    finite = bool(np.isfinite(logits).all())
    same = rows["top1_a"] == rows["top1_b"]
    leading = np.sort(reference, axis=1)[:, ::-1] if reference.size else np.zeros((0, 2))
    epsilon = bar_of(precision).epsilon
    decided = leading[:, 0] - leading[:, 1] > TIE_FACTOR * epsilon * np.abs(reference).max(
        axis=1, initial=0.0
    )
    return {
        "label": label,
        "precision": precision,
        "reference": reference_label,
        "images": images,
        "cosine": float(np.min(rows["cosine"])) if images else float("nan"),
        "max_abs_diff": float(np.max(rows["max_abs"])) if images and finite else float("nan"),
        "top1_agrees": int(np.sum(same)) if finite else 0,
        "top1_decided": int(np.sum(decided)),
        "top1_agrees_decided": int(np.sum(same & decided)) if finite else 0,
        "nonfinite_values": int(np.size(logits) - np.isfinite(logits).sum()),
    }


def passes(row: dict) -> bool:
    """Whether an agreement row meets the bar of its precision (NaN never does)."""
    minimum = bar_of(row["precision"]).min_cosine
    return bool(row["cosine"] >= minimum and row["top1_agrees_decided"] == row["top1_decided"])


def top1_text(row: dict) -> str:
    """'4/4', or '3/4 (2/2 with a clear lead)' when near-ties are left out of the requirement."""
    text = f"{row['top1_agrees']}/{row['images']}"
    if row["top1_decided"] < row["images"]:
        text += f" ({row['top1_agrees_decided']}/{row['top1_decided']} with a clear lead)"
    return text


def agreement_line(row: dict) -> str:
    """An agreement row in one line, with its verdict."""
    verdict = "ok" if passes(row) else "BELOW THE BAR"
    return (
        f"{row['label']} {row['precision']} against {row['reference']} on {row['images']} image(s): "
        f"worst cosine {row['cosine']:.6f} (bar {bar_of(row['precision']).min_cosine:g}), "
        f"same top-1 {top1_text(row)}, max abs diff {row['max_abs_diff']:.3g}: {verdict}"
    )
