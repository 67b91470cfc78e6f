"""Hostile numbers, class by class: NaN and infinity. Compare never counts an output holding NaN or Inf as
agreeing (top-1, top-5, A's top-1 in B's top 5), whatever the format it came in; every JSON the toolkit writes
is strict JSON (RFC 8259): a non-finite figure is null, and `<key>_not_finite` beside it says what it was.
Script runs are subprocesses under a time and an address-space limit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hostile import GIB, run_script

from twins_pcpvt.compare import agreement
from twins_pcpvt.report import write_json

MEMORY = 2 * GIB


def strict(text: str):
    """Parse as strict JSON: NaN, Infinity and -Infinity are not JSON."""

    def refuse(name: str):
        raise AssertionError(f"not strict JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def write(folder: Path, stem: str, scores: np.ndarray, fmt: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}_0.{fmt}"
    if fmt == "bin":
        scores.astype("<f4").tofile(path)
    elif fmt == "npy":
        np.save(path, scores.astype(np.float32)[None])
    else:
        path.write_text(" ".join(f"{value:f}" for value in scores.tolist()) + "\n")


def compare(a: Path, b: Path, cwd: Path):
    return run_script(
        "twins_pcpvt_s_compare.py", a, b, "--json", cwd / "c.json", cwd=cwd, memory=MEMORY, timeout=120
    )


def scores(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(1000).astype(np.float32)


def spoiled(values: np.ndarray, bad: float, where: str) -> np.ndarray:
    values = values.copy()
    if where == "all":
        values[:] = bad
    else:
        values[[3, 500]] = bad
    return values


CASES = [
    ("nan", "all", "all"),  # two all-NaN outputs: the same argmax, the same "top 5"
    ("nan", "some", "some"),
    ("inf", "some", "some"),  # the same +inf entries on both sides: the same top-1
    ("-inf", "all", "all"),
    ("nan", "some", "none"),  # one side only
]


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["bin", "npy", "txt"])
@pytest.mark.parametrize("value, where_a, where_b", CASES)
def test_outputs_with_nan_or_inf_never_agree(tmp_path, fmt, value, where_a, where_b):
    bad = float(value)
    stems = [f"img{index}" for index in range(4)]
    for index, stem in enumerate(stems):
        base = scores(index)
        if index < 2:  # two spoiled outputs, two good identical ones
            write(tmp_path / "a", stem, base if where_a == "none" else spoiled(base, bad, where_a), fmt)
            write(tmp_path / "b", stem, base if where_b == "none" else spoiled(base, bad, where_b), fmt)
        else:
            write(tmp_path / "a", stem, base, fmt)
            write(tmp_path / "b", stem, base, fmt)
    outcome = compare(tmp_path / "a", tmp_path / "b", tmp_path)
    assert outcome.returncode == 1 and "Traceback" not in outcome.stderr, outcome.stderr  # 1: they differ
    assert "top-1 agreement 50.00%, top-5 agreement (same set) 50.00%" in outcome.stdout, outcome.stdout
    assert "A's top-1 in B's top-5 50.00%" in outcome.stdout
    report = strict((tmp_path / "c.json").read_text())
    summary = report["summary"]
    assert (summary["top1_agreement"], summary["top5_agreement"], summary["top1_a_in_top5_b"]) == (0.5,) * 3
    assert summary["not_finite"] == 2 and summary["failed"] == 2 and report["passed"] is False
    spoilt = [record for record in report["outputs"] if record["stem"] in stems[:2]]
    for record in spoilt:
        assert record["finite"] is False and record["cosine"] is None and record["passed"] is False
        assert not record["top1_agree"] and not record["top5_agree"] and not record["top1_a_in_top5_b"]


def test_every_json_written_is_strict_and_says_why_a_figure_is_null(tmp_path):
    document = {
        "cosine": float("nan"),
        "rate": float("inf"),
        "floor": -float("inf"),
        "fine": 1.5,
        "nested": {"rows": [1.0, float("nan"), 2.0], "deeper": [{"x": float("inf")}]},
        "count": 3,
    }
    for indent in (2, None):
        path = write_json(tmp_path / f"report{indent}.json", document, indent=indent)
        written = strict(path.read_text())
        assert written["cosine"] is None and written["cosine_not_finite"] == "NaN"
        assert written["rate"] is None and written["rate_not_finite"] == "Infinity"
        assert written["floor"] is None and written["floor_not_finite"] == "-Infinity"
        assert written["fine"] == 1.5 and "fine_not_finite" not in written and written["count"] == 3
        assert written["nested"]["rows"] == [1.0, None, 2.0]
        assert written["nested"]["rows_not_finite"] == [None, "NaN", None]
        assert written["nested"]["deeper"] == [{"x": None, "x_not_finite": "Infinity"}]
    assert document["cosine"] != document["cosine"]  # the caller's document is left as it was


def test_the_agreement_check_with_nan_logits_writes_strict_json(tmp_path):
    reference = np.random.default_rng(0).standard_normal((3, 1000))
    logits = reference.copy()
    logits[1, 7] = np.nan
    row = agreement("onnxruntime", "fp16", "onnxruntime fp32", logits, reference)
    written = strict(write_json(tmp_path / "agreement.json", {"agreement": row}).read_text())["agreement"]
    assert written["cosine"] is None and written["cosine_not_finite"] == "NaN"
    assert written["max_abs_diff"] is None and written["nonfinite_values"] == 1
