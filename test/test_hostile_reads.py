"""Hostile inputs, class by class: every reader bounds what it reads before reading it whole. Outputs (BIN,
NPY, TXT), label files, manifests, class maps and JSON reports that are far too large, binary files given by
mistake, crafted NPY headers and nested or mistyped JSON: each is one short error line naming the file, in
bounded memory. Every run is a subprocess under a time and an address-space limit; the large files are sparse,
so they take no disk space, and larger than the address-space limit, so reading one whole fails the test."""

from __future__ import annotations

import io
import json
import os
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
from hostile import (
    GIB,
    assert_clean_failure,
    run_compare,
    run_postprocess,
    run_script,
    tiny_onnx,
    write_tensors,
)
from PIL import Image

pytestmark = pytest.mark.slow  # every case runs a script in a subprocess under limits
MEMORY = 2 * GIB
HUGE = 5 * GIB // 2  # a sparse file beyond the address-space limit: reading it whole cannot succeed
LINE_LIMIT = 2100  # an error line holds at most 2000 characters of message (common.MESSAGE_LIMIT)
STEMS = [f"ILSVRC2012_val_{index:08d}" for index in range(1, 5)]


def sparse(path: Path, size: int = HUGE, head: bytes = b"") -> Path:
    """A file of `size` bytes that starts with `head` and is zeros (a hole) after it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(head)
        handle.truncate(size)
    return path


def make_result(folder: Path, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for stem in STEMS:
        rng.standard_normal(1000).astype("<f4").tofile(folder / f"{stem}_0.bin")
    return folder


def label_file(path: Path) -> Path:
    path.write_text("".join(f"{stem}.JPEG {index}\n" for index, stem in enumerate(STEMS)))
    return path


def postprocess(result: Path, labels: Path, cwd: Path):
    return run_postprocess(result, labels, cwd / "report", cwd=cwd, memory=MEMORY)


def compare(a: Path, b: Path, cwd: Path):
    return run_compare(a, b, cwd=cwd, memory=MEMORY)


def bounded(line: str) -> str:
    assert len(line) <= LINE_LIMIT, len(line)
    return line


# ----------------------------------------------------------------------------------------------------------
# Outputs: a valid one is a few kilobytes; a file far larger is refused by its size, never read whole


def npy_head(header: bytes, version: int = 1) -> bytes:
    length = struct.pack("<H", len(header)) if version == 1 else struct.pack("<I", len(header))
    return b"\x93NUMPY" + bytes([version, 0]) + length + header


VALID_NPY = npy_head(b"{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1000), }".ljust(117) + b"\n")

OVERSIZED_OUTPUTS = {
    "txt": ("ILSVRC2012_val_00000001_0.txt", b"", "more than a text output"),
    "bin": ("ILSVRC2012_val_00000001_0.bin", b"", "bytes"),
    "npy": ("ILSVRC2012_val_00000001_0.npy", VALID_NPY, "truncated or oversized NPY file"),
}


@pytest.mark.parametrize("kind", sorted(OVERSIZED_OUTPUTS))
def test_an_oversized_output_is_refused_by_its_size(tmp_path, kind):
    name, head, reason = OVERSIZED_OUTPUTS[kind]
    result = make_result(tmp_path / "a")
    (result / "ILSVRC2012_val_00000001_0.bin").unlink()
    sparse(result / name, head=head)
    reference = make_result(tmp_path / "b")
    labels = label_file(tmp_path / "val_label.txt")
    line = assert_clean_failure(postprocess(result, labels, tmp_path), 1, name, reason)
    assert kind != "txt" or "2,684,354,560 bytes" in line
    assert_clean_failure(compare(reference, result, tmp_path), 2, name, reason)  # 2: not comparable
    assert not (tmp_path / "report").exists()


def test_a_text_output_of_many_images_is_refused_with_a_hint(tmp_path):
    result = make_result(tmp_path / "a")
    (result / "ILSVRC2012_val_00000001_0.bin").unlink()
    (result / "ILSVRC2012_val_00000001_0.txt").write_text("0.5 " * 50_000)
    labels = label_file(tmp_path / "val_label.txt")
    assert_clean_failure(postprocess(result, labels, tmp_path), 1, "50000 values", "50 images in one file")


CRAFTED_NPY_HEADERS = {
    "shape of text": (npy_head(b"{'descr': '<f4', 'fortran_order': False, 'shape': ('a',), }"), "shape"),
    "shape of floats": (npy_head(b"{'descr': '<f4', 'fortran_order': False, 'shape': (1000.0,), }"), "shape"),
    "negative shape": (npy_head(b"{'descr': '<f4', 'fortran_order': False, 'shape': (-1000,), }"), "shape"),
    "huge shape": (
        npy_head(b"{'descr': '<f4', 'fortran_order': False, 'shape': (1" + b"0" * 40 + b", 2**9), }"),
        "NPY",
    ),
    "huge size": (
        npy_head(b"{'descr': '<f4', 'fortran_order': False, 'shape': (1" + b"0" * 40 + b",), }"),
        "shape",
    ),
    "nested shape": (
        npy_head(b"{'descr': '<f4', 'fortran_order': False, 'shape': " + b"(" * 3000 + b")" * 3000 + b"}"),
        "NPY header",
    ),
    "nested list": (npy_head(b"[" * 4000), "NPY header"),
    "not a dict": (npy_head(b"[1, 2, 3]"), "NPY header"),
    "header too long": (npy_head(b" " * 65_000), "NPY header of 65,000 bytes"),
    "header past the end": (b"\x93NUMPY\x02\x00" + struct.pack("<I", 2**31) + b"{", "NPY header"),
    "version 9": (npy_head(b"{}", version=9), "version 9"),
    "object dtype": (npy_head(b"{'descr': '|O', 'fortran_order': False, 'shape': (1000,), }"), "dtype"),
    "bad descr": (npy_head(b"{'descr': '<q9', 'fortran_order': False, 'shape': (1000,), }"), "descr"),
    "nested descr": (
        npy_head(
            b"{'descr': " + b"[('a', " * 95 + b"'<f4'" + b")]" * 95 + b", 'fortran_order': False, "
            b"'shape': (1000,), }"
        ),
        "dtype",
    ),
    "fortran_order of text": (
        npy_head(b"{'descr': '<f4', 'fortran_order': 'yes', 'shape': (1000,), }"),
        "fortran_order",
    ),
}


@pytest.fixture
def crafted_npy(tmp_path, request):
    head, reason = CRAFTED_NPY_HEADERS[request.param]
    return head + b"\0" * 4000, reason


@pytest.mark.parametrize("crafted_npy", sorted(CRAFTED_NPY_HEADERS), indirect=True)
def test_a_crafted_npy_output_header_is_one_line(tmp_path, crafted_npy):
    data, reason = crafted_npy
    result = make_result(tmp_path / "a")
    (result / "ILSVRC2012_val_00000002_0.bin").unlink()
    (result / "ILSVRC2012_val_00000002_0.npy").write_bytes(data)
    labels = label_file(tmp_path / "val_label.txt")
    bounded(assert_clean_failure(postprocess(result, labels, tmp_path), 1, "_00000002_0.npy", reason))
    # compare's exit status 1 means "the outputs differ": a file it cannot read is 2
    assert_clean_failure(compare(make_result(tmp_path / "b"), result, tmp_path), 2, "_00000002_0.npy", reason)


@pytest.mark.parametrize("crafted_npy", sorted(CRAFTED_NPY_HEADERS), indirect=True)
def test_a_crafted_npy_input_header_stops_the_runner_before_inference(tmp_path, crafted_npy):
    data, reason = crafted_npy
    inputs = write_tensors(tmp_path / "prep", [f"{stem}.bin" for stem in STEMS[1:]])
    (inputs / "ILSVRC2012_val_00000001.npy").write_bytes(data)
    outcome = run_script(
        "twins_pcpvt_s_infer.py",
        "--model",
        tiny_onnx(tmp_path / "tiny.onnx"),
        "--backend",
        "onnxruntime",
        "--input",
        inputs,
        "--output",
        tmp_path / "out",
        cwd=tmp_path,
        memory=MEMORY,
        timeout=120,
    )
    assert_clean_failure(outcome, 1, "ILSVRC2012_val_00000001.npy", reason)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------------------
# Label files, manifests and class maps: the wrong file given by mistake is refused before it is split


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(buffer, "PNG")
    return buffer.getvalue()


def tar_bytes(member: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        archive.add(member, arcname=member.name)
    return buffer.getvalue()


WRONG_LABEL_FILES = {
    "zeros": (lambda folder: b"\0" * (20 * 2**20), "binary file"),
    "image": (lambda folder: png_bytes(), "binary file"),
    "tarball": (lambda folder: tar_bytes(label_file(folder / "inside.txt")), "binary file"),
    "latin-1": (lambda folder: "ILSVRC2012_val_00000001.JPEG 1\ncaf\xe9.JPEG 2\n".encode("latin-1"), "UTF-8"),
    "one huge line": (lambda folder: b"x" * (5 * 2**20), "5,242,880 characters"),
    "a huge name twice": (lambda folder: (b"n" * 2**20 + b".JPEG 1\n") * 2, "listed twice"),
    "millions of lines": (lambda folder: b"\n" * 2_100_000, "2,100,000 lines"),
}


@pytest.mark.parametrize("kind", sorted(WRONG_LABEL_FILES))
def test_the_wrong_label_file_is_one_short_line(tmp_path, kind):
    make, reason = WRONG_LABEL_FILES[kind]
    labels = tmp_path / "val_label.txt"
    labels.write_bytes(make(tmp_path))
    outcome = postprocess(make_result(tmp_path / "a"), labels, tmp_path)
    bounded(assert_clean_failure(outcome, 1, str(labels), reason))
    assert not (tmp_path / "report").exists()


def test_a_label_file_larger_than_any_is_refused_unread(tmp_path):
    labels = sparse(tmp_path / "val_label.txt", head=b"ILSVRC2012_val_00000001.JPEG 1\n")
    outcome = postprocess(make_result(tmp_path / "a"), labels, tmp_path)
    assert_clean_failure(outcome, 1, "val_label.txt", "2,684,354,560 bytes", "more than a label file")


MANIFEST_HEADER = b"stem\tsource\tlabel\tsize\tmtime_ns\ttransform\n"
WRONG_MANIFESTS = {
    "zeros": (b"\0" * (20 * 2**20), "binary file"),
    "one huge line": (MANIFEST_HEADER + b"y" * (3 * 2**20) + b"\n", "3,145,728 characters"),
    "a huge label": (MANIFEST_HEADER + b"a\tb\t" + b"7" * 2**20 + b"x\t1\t1\tt\n", "not a valid integer"),
    "a huge stem twice": ((MANIFEST_HEADER + (b"s" * 2**20 + b"\tb\t1\t1\t1\tt\n") * 2), "listed twice"),
}


@pytest.mark.parametrize("kind", sorted(WRONG_MANIFESTS))
def test_the_wrong_manifest_is_one_short_line(tmp_path, kind):
    content, reason = WRONG_MANIFESTS[kind]
    prep = tmp_path / "prep"
    prep.mkdir()
    (prep / "manifest.tsv").write_bytes(content)
    outcome = postprocess(make_result(tmp_path / "a"), prep, tmp_path)
    bounded(assert_clean_failure(outcome, 1, "manifest.tsv", reason))
    assert not (tmp_path / "report").exists()


def test_an_image_given_as_the_class_map_is_one_line(tmp_path):
    data = tmp_path / "data" / "n01440764"
    data.mkdir(parents=True)
    (data / "a.png").write_bytes(png_bytes())
    (tmp_path / "classes.png").write_bytes(png_bytes())
    outcome = run_script(
        "twins_pcpvt_s_preprocess.py",
        "--data_path",
        tmp_path / "data",
        "--prep_dataset",
        tmp_path / "prep",
        "--class-map",
        tmp_path / "classes.png",
        cwd=tmp_path,
        memory=MEMORY,
        timeout=120,
    )
    bounded(assert_clean_failure(outcome, 1, "classes.png", "not a class map: a binary file"))
    assert not (tmp_path / "prep").exists()


# ----------------------------------------------------------------------------------------------------------
# JSON reports read by the summary table: size, nesting, missing keys and wrong types


def eval_folder(root: Path, result: object, perf: object) -> Path:
    folder = root / "eval" / "bs1"
    folder.mkdir(parents=True)
    for name, document in (("result.json", result), ("perf_summary.json", perf)):
        target = folder / name
        if isinstance(document, bytes):
            target.write_bytes(document)
        elif isinstance(document, int):
            sparse(target, document, head=b'{"top1": 0.5, ')
        else:
            target.write_text(json.dumps(document))
    return root / "eval"


GOOD_RESULT = {"top1": 0.5, "top5": 0.75, "images": 4}
GOOD_PERF = {"throughput": 12.5, "backend": "onnxruntime", "device": "cpu", "precision": "fp32"}
BAD_REPORTS = {
    "nested 100,000 deep": (b"[" * 100_000, GOOD_PERF, "result.json", "nested too deeply"),
    "larger than any report": (HUGE, GOOD_PERF, "result.json", "2,684,354,560 bytes"),
    "an array": ([1, 2], GOOD_PERF, "result.json", "not a JSON report"),
    "truncated": (b'{"top1": 0.5', GOOD_PERF, "result.json", "cannot read JSON"),
    "missing top5": ({"top1": 0.5, "images": 4}, GOOD_PERF, "result.json", "no 'top5' field"),
    "top1 as text": ({**GOOD_RESULT, "top1": "81%"}, GOOD_PERF, "result.json", "'top1' is '\"81%\"'"),
    "images as a number": ({**GOOD_RESULT, "images": 4.5}, GOOD_PERF, "result.json", "not an integer"),
    "top5 as true": ({**GOOD_RESULT, "top5": True}, GOOD_PERF, "result.json", "not a finite number"),
    "throughput null": (GOOD_RESULT, {**GOOD_PERF, "throughput": None}, "perf_summary.json", "'throughput'"),
    "throughput NaN": (GOOD_RESULT, b'{"throughput": NaN}', "perf_summary.json", "not a finite number"),
    "backend a number": (GOOD_RESULT, {**GOOD_PERF, "backend": 5}, "perf_summary.json", "not a string"),
    "perf a list of lists": (GOOD_RESULT, [[1]] * 3, "perf_summary.json", "array of 3 entries"),
}


@pytest.mark.parametrize("case", sorted(BAD_REPORTS))
def test_a_bad_report_in_the_summary_table_is_one_line(tmp_path, case):
    result, perf, name, reason = BAD_REPORTS[case]
    folder = eval_folder(tmp_path, result, perf)
    outcome = run_script(
        "-m twins_pcpvt.evaltable", folder, "--batch-sizes", "1", cwd=tmp_path, memory=MEMORY, timeout=120
    )
    bounded(assert_clean_failure(outcome, 1, name, reason))
    assert sorted(os.listdir(folder)) == ["bs1"]  # no table written


def test_good_reports_still_make_the_table(tmp_path):
    folder = eval_folder(tmp_path, GOOD_RESULT, GOOD_PERF)
    outcome = run_script(
        "-m twins_pcpvt.evaltable", folder, "--batch-sizes", "1", cwd=tmp_path, memory=MEMORY
    )
    assert outcome.returncode == 0, outcome.stderr
    assert "| 1 | 50.00 | 75.00 | 12.5 | onnxruntime | cpu | fp32 |" in outcome.stdout
