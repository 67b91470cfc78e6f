"""Top-k accuracy of a whole result at once: one comparison pass over the score matrix, no per-image loop."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .common import NUM_CLASSES, ROWS_PER_PASS, ToolkitError
from .labels import LabelSet
from .results import OutputSet


def true_class_rank(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """0-based rank of the true class in each row of `logits` [N, C] (0: it is the top-1 prediction).

    A tie counts against the true class: every other class scoring at least as high ranks above it, so a
    constant output (a failed run writing zeros) never scores as correct.
    """
    logits = np.asarray(logits)
    labels = np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(f"logits must be [N, C] and labels [N]; got {logits.shape} and {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= logits.shape[1]):
        raise ValueError(f"labels must lie in [0, {logits.shape[1]})")
    ranks = np.empty(labels.shape, dtype=np.int64)
    for start in range(0, labels.size, ROWS_PER_PASS):
        block = logits[start : start + ROWS_PER_PASS]
        block_labels = labels[start : start + ROWS_PER_PASS]
        true_scores = block[np.arange(block.shape[0]), block_labels]
        ranks[start : start + block.shape[0]] = (block >= true_scores[:, None]).sum(axis=1) - 1
    return ranks


def topk_correct(
    logits: np.ndarray, labels: np.ndarray, ks: Iterable[int] = (1, 2, 3, 4, 5)
) -> dict[int, int]:
    """Number of rows whose true class is among the k highest scores, for each k."""
    ranks = true_class_rank(logits, labels)
    return {k: int((ranks < k).sum()) for k in ks}


@dataclass(frozen=True)
class Accuracy:
    """Top-1 .. top-5 of one result scored against its labels."""

    images: int
    classes: int  # scores per output: 1000, or 1001 with a background class first
    correct: dict[int, int]
    labels_without_output: int  # labelled images that have no output: a subset run, reported, not an error

    def fraction(self, k: int) -> float:
        return self.correct[k] / self.images if self.images else 0.0


def score_outputs(outputs: OutputSet, labels: LabelSet, ks: Iterable[int] = (1, 2, 3, 4, 5)) -> Accuracy:
    """Score every output against the label of its stem. An output without a label, or a label outside the
    output's classes, is an error naming the file; labels without an output are only counted."""
    missing = [
        path for stem, path in zip(outputs.stems, outputs.paths, strict=True) if stem not in labels.labels
    ]
    if missing:
        more = f" (and {len(missing) - 1} more outputs without a label)" if len(missing) > 1 else ""
        raise ToolkitError(f"{missing[0]}: no label for this image in {labels.source}{more}")
    offset = 1 if outputs.classes == NUM_CLASSES + 1 else 0  # class 0 of a 1001-class model is the background
    label_array = np.fromiter(
        (labels.labels[stem] + offset for stem in outputs.stems), np.int64, count=len(outputs.stems)
    )
    out_of_range = np.flatnonzero((label_array >= outputs.classes) | (label_array < 0))
    if out_of_range.size:
        stem = outputs.stems[out_of_range[0]]
        raise ToolkitError(
            f"{labels.where(stem)}: class {labels.labels[stem]} does not exist in outputs of "
            f"{outputs.classes} classes ({outputs.paths[out_of_range[0]]})"
        )
    matched = len(outputs.stems)
    return Accuracy(
        images=matched,
        classes=outputs.classes,
        correct=topk_correct(outputs.logits, label_array, ks),
        labels_without_output=len(labels.labels) - matched,
    )
