"""Hostile names, class by class: whatever name the preprocess accepts, every later stage reads, and the other
way round. Line separators in file names are refused by the preprocess, the first stage, one line per image;
any name the runner writes an output for is read back by the postprocess and the compare; Unicode digits sort
without error; an input folder named with a comma is refused up front. (The shell wrappers' names, with a
dash or a comma, are in test_hostile_shell.py.) Every run is a subprocess under a time and an address-space
limit."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from hostile import (
    GIB,
    assert_clean_failure,
    error_lines,
    run_postprocess,
    run_preprocess,
    run_script,
    tiny_onnx,
    write_tensors,
)
from PIL import Image

from twins_pcpvt.data import read_manifest
from twins_pcpvt.infer.inputs import _natural_key

MEMORY = 3 * GIB
CLASS = "n01440764"  # ImageNet class 0

# A tab and every character Python's str.splitlines() ends a line at
LINE_BREAKS = ["\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]


def jpeg(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels, "RGB").save(path, "JPEG", quality=85)
    return path


def preprocess(data: Path, prep: Path, cwd: Path):
    return run_preprocess(data, prep, cwd=cwd, memory=MEMORY)


@pytest.mark.slow
@pytest.mark.parametrize("char", LINE_BREAKS, ids=[f"U+{ord(char):04X}" for char in LINE_BREAKS])
def test_a_name_with_a_line_separator_is_refused_by_the_preprocess_alone(tmp_path, char):
    data = tmp_path / "data" / CLASS
    jpeg(data / "good.JPEG")
    jpeg(data / f"bad{char}name.JPEG", seed=1)
    prep = tmp_path / "prep"
    for attempt in range(2):  # the rerun reads its own manifest and refuses the same image again
        outcome = preprocess(tmp_path / "data", prep, tmp_path)
        assert outcome.returncode == 1 and "Traceback" not in outcome.stderr, outcome.stderr
        lines = error_lines(outcome)  # str.splitlines(): the escaped name keeps the message on one line
        assert len(lines) == 1, (attempt, outcome.stderr)
        assert "tab or line break" in lines[0] and "badname" not in lines[0]
        assert repr(char)[1:-1] in lines[0] or f"\\x{ord(char):02x}" in lines[0]
        assert "malformed" not in outcome.stderr
        assert sorted(os.listdir(prep)) == ["good.bin", "manifest.tsv"]
        assert [row.stem for row in read_manifest(prep)] == ["good"]

    # and the manifest serves as the labels of the postprocess
    result = tmp_path / "result" / "infer"
    result.mkdir(parents=True)
    scores = np.zeros(1000, "<f4")
    scores[0] = 1.0
    scores.tofile(result / "good_0.bin")
    scored = run_postprocess(result, prep, tmp_path, cwd=tmp_path, memory=MEMORY)
    assert scored.returncode == 0, scored.stderr
    assert json.loads((tmp_path / "result.json").read_text())["top1"] == 1.0


def test_the_manifest_is_split_at_line_feeds_alone(tmp_path):
    # another writer's manifest (or an earlier version's) may hold any other character in a name
    rows = ["stem\tsource\tlabel\tsize\tmtime_ns\ttransform"]
    names = ["a\x85b", "c\u2028d", "e\x0cf", "g\x1ch"]
    rows += [f"{name}\t{name}.JPEG\t{index}\t1\t1\tt" for index, name in enumerate(names)]
    (tmp_path / "manifest.tsv").write_bytes(("\r\n".join(rows) + "\r\n").encode())
    assert [(row.stem, row.label) for row in read_manifest(tmp_path)] == [
        (name, index) for index, name in enumerate(names)
    ]


def test_unicode_digits_sort_as_text_in_the_natural_order():
    names = ["a10.bin", "\u00b21.bin", "a9.bin", "\u0661\u0662.bin", "\u2460.bin", "A2.bin", "b\u00b3.bin"]
    ordered = [path.name for path in sorted(map(Path, names), key=_natural_key)]
    assert ordered.index("A2.bin") < ordered.index("a9.bin") < ordered.index("a10.bin")
    assert sorted(ordered) == sorted(names)


ODD_INPUT_NAMES = [
    "\u00b21.bin",  # a superscript digit: str.isdigit() but not int()
    "\u0661\u0662.bin",  # Arabic-Indic digits
    "x\u2028y.bin",
    "x\x85z.bin",
    "line\nfeed.bin",
    "tab\there.bin",
    "-dash.bin",
    "sp ace.npy",
    "caf\u00e9.bin",
]


@pytest.mark.slow
def test_whatever_name_the_runner_reads_the_postprocess_and_compare_read_back(tmp_path):
    model = tiny_onnx(tmp_path / "tiny.onnx")
    inputs = write_tensors(tmp_path / "in", [name for name in ODD_INPUT_NAMES if name.endswith(".bin")])
    np.save(inputs / "sp ace.npy", np.ones((3, 224, 224), np.float32))
    for run in ("r1", "r2"):
        outcome = run_script(
            "twins_pcpvt_s_infer.py",
            "--model",
            model,
            "--backend",
            "onnxruntime",
            "--input",
            inputs,
            "--output",
            tmp_path / "out",
            "--output_dirname",
            run,
            "--outfmt",
            "TXT" if run == "r2" else "BIN",
            cwd=tmp_path,
            memory=MEMORY,
            timeout=120,
        )
        assert outcome.returncode == 0, outcome.stderr
        assert len(os.listdir(tmp_path / "out" / run)) == len(ODD_INPUT_NAMES)
    compared = run_script(
        "twins_pcpvt_s_compare.py",
        tmp_path / "out" / "r1",
        tmp_path / "out" / "r2",
        "--json",
        tmp_path / "c.json",
        cwd=tmp_path,
        memory=MEMORY,
        timeout=120,
    )
    assert compared.returncode == 0, compared.stdout + compared.stderr
    report = json.loads((tmp_path / "c.json").read_text())
    assert report["summary"]["compared"] == len(ODD_INPUT_NAMES) and not report["summary"]["failed"]
    assert "ignored" not in compared.stderr

    # a label file's fields are split at white space: names holding none are scored by one
    plain = [name for name in ODD_INPUT_NAMES if not any(char.isspace() for char in name)]
    for name in set(ODD_INPUT_NAMES) - set(plain):
        (tmp_path / "out" / "r1" / f"{name.split('.')[0]}_0.bin").unlink()
    labels = tmp_path / "val_label.txt"
    labels.write_text("".join(f"{name.split('.')[0]}.JPEG 3\n" for name in plain))
    scored = run_postprocess(tmp_path / "out" / "r1", labels, tmp_path, cwd=tmp_path, memory=MEMORY)
    assert scored.returncode == 0, scored.stderr
    assert json.loads((tmp_path / "result.json").read_text())["images"] == len(plain)


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["ev,1", "ev,1/", "a,b,c"])
def test_an_input_folder_named_with_a_comma_is_refused_up_front(tmp_path, spec):
    write_tensors(tmp_path / spec, ["a.bin"])
    outcome = run_script(
        "twins_pcpvt_s_infer.py",
        "--model",
        tiny_onnx(tmp_path / "tiny.onnx"),
        "--backend",
        "onnxruntime",
        "--input",
        spec,
        "--output",
        tmp_path / "out",
        cwd=tmp_path,
        memory=MEMORY,
        timeout=120,
    )
    assert_clean_failure(outcome, 2, "holds a comma", "comma-separated list")
    assert not (tmp_path / "out").exists()
