"""Hostile inputs to the postprocess and the compare (twins_pcpvt_s_postprocess.py, twins_pcpvt_s_compare.py),
class by class: report paths that are inputs, folders or special files; broken disks; nonsense thresholds.
Every run is a subprocess under a time and an address-space limit."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from hostile import (
    GIB,
    assert_clean_failure,
    bound_socket,
    files_left,
    full_disk,
    read_only_folder,
    run_script,
)

POSTPROCESS = "twins_pcpvt_s_postprocess.py"
COMPARE = "twins_pcpvt_s_compare.py"
pytestmark = pytest.mark.slow  # every case runs a script in a subprocess under limits
MEMORY = 2 * GIB
STEMS = [f"ILSVRC2012_val_{index:08d}" for index in range(1, 7)]


def make_result(root: Path, name: str = "result", seed: int = 0) -> Path:
    """An ais_bench-style result: `root/name/infer/<stem>_0.bin` plus `infer_summary.json` beside it."""
    folder = root / name / "infer"
    folder.mkdir(parents=True)
    logits = np.random.default_rng(seed).standard_normal((len(STEMS), 1000)).astype("<f4")
    for stem, row in zip(STEMS, logits, strict=True):
        row.tofile(folder / f"{stem}_0.bin")
    (root / name / "infer_summary.json").write_text(json.dumps({"throughput": 1.0}))
    return root / name


@pytest.fixture
def setup(tmp_path):
    result = make_result(tmp_path)
    labels = tmp_path / "val_label.txt"
    labels.write_text("".join(f"{stem}.JPEG {index}\n" for index, stem in enumerate(STEMS)))
    return tmp_path, result, labels


def postprocess(result: Path, labels: Path, folder: Path, name: str, *, cwd: Path, **options):
    return run_script(
        POSTPROCESS,
        "--folder-davinci-target",
        result,
        "--annotation-file-path",
        labels,
        "--result-json-path",
        folder,
        "--json-file-name",
        name,
        cwd=cwd,
        memory=MEMORY,
        timeout=120,
        **options,
    )


def compare(a: Path, b: Path, *extra, cwd: Path, **options):
    return run_script(COMPARE, a, b, *extra, cwd=cwd, memory=MEMORY, timeout=120, **options)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(path): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


# ----------------------------------------------------------------------------------------------------------
# 3. The postprocess never writes over one of its inputs


@pytest.mark.parametrize(
    "where, name",
    [
        ("labels", "val_label.txt"),  # the label file itself
        ("output", "ILSVRC2012_val_00000001_0.bin"),  # an output
        ("output", "result.json"),  # anything inside the output folder
        ("result", "infer_summary.json"),  # the run's summary
    ],
)
def test_the_result_json_never_replaces_an_input(setup, where, name):
    tmp_path, result, labels = setup
    folder = {"labels": labels.parent, "output": result / "infer", "result": result}[where]
    before = snapshot(tmp_path)
    outcome = postprocess(result, labels, folder, name, cwd=tmp_path)
    assert_clean_failure(outcome, 2, name, "input")
    assert snapshot(tmp_path) == before


def test_the_result_json_never_replaces_the_manifest(setup):
    tmp_path, result, _ = setup
    prep = tmp_path / "prep"
    prep.mkdir()
    manifest = prep / "manifest.tsv"
    manifest.write_text(
        "stem\tsource\tlabel\tsize\tmtime_ns\ttransform\n"
        + "".join(f"{stem}\tn/{stem}.JPEG\t{index}\t1\t1\tt\n" for index, stem in enumerate(STEMS))
    )
    before = manifest.read_bytes()
    for annotation in (prep, manifest):
        outcome = postprocess(result, annotation, prep, "manifest.tsv", cwd=tmp_path)
        assert_clean_failure(outcome, 2, "manifest.tsv", "input")
    assert manifest.read_bytes() == before


MANIFEST_HEADER = "stem\tsource\tlabel\tsize\tmtime_ns\ttransform\n"


@pytest.mark.parametrize(
    "bad_row, reason",
    [
        ("ILSVRC2012_val_00000001\tx.JPEG\t-1\t1\t1\tt\n", "not a valid integer"),
        ("ILSVRC2012_val_00000001\tx.JPEG\t1e3\t1\t1\tt\n", "not a valid integer"),
        ("ILSVRC2012_val_00000001\tx.JPEG\t\u0663\t1\t1\tt\n", "not a valid integer"),
        ("ILSVRC2012_val_00000002\tx.JPEG\t5\t1\t1\tt\n", "listed twice"),
        ("ILSVRC2012_val_00000001\tx.JPEG\t5\n", "malformed manifest line"),
        ("ILSVRC2012_val_00000001\tx.JPEG\t1000\t1\t1\tt\n", "does not exist"),
    ],
)
def test_a_tampered_manifest_is_named_by_line(setup, bad_row, reason):
    tmp_path, result, _ = setup
    manifest = tmp_path / "manifest.tsv"
    rows = "".join(f"{stem}\tn/{stem}.JPEG\t{index}\t1\t1\tt\n" for index, stem in enumerate(STEMS[1:], 1))
    manifest.write_text(MANIFEST_HEADER + bad_row + rows)
    outcome = postprocess(result, manifest, tmp_path / "out", "result.json", cwd=tmp_path)
    assert_clean_failure(outcome, 1, str(manifest), reason)
    assert not (tmp_path / "out" / "result.json").exists()


def test_the_result_json_through_a_link_to_an_input_is_refused(setup):
    tmp_path, result, labels = setup
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "result.json").symlink_to(labels)
    before = labels.read_bytes()
    outcome = postprocess(result, labels, tmp_path / "out", "result.json", cwd=tmp_path)
    assert outcome.returncode in (1, 2)
    assert_clean_failure(outcome, outcome.returncode, "result.json")
    assert labels.read_bytes() == before and (tmp_path / "out" / "result.json").is_symlink()


# ----------------------------------------------------------------------------------------------------------
# 4 and 7. Report paths that are not regular files; unwritable folders


@pytest.mark.parametrize("kind", ["folder", "fifo", "symlink", "device", "socket"])
def test_a_result_json_path_that_is_not_a_regular_file_is_refused(setup, kind):
    tmp_path, result, labels = setup
    out = tmp_path / "out"
    out.mkdir()
    target = out / "result.json"
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    if kind == "folder":
        target.mkdir()
    elif kind == "fifo":
        os.mkfifo(target)
    elif kind == "symlink":
        target.symlink_to(victim)
    elif kind == "device":
        if os.geteuid() != 0:
            pytest.skip("making a device node needs root")
        os.mknod(target, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    else:
        bound_socket(target)
    outcome = postprocess(result, labels, out, "result.json", cwd=tmp_path)
    reason = {
        "folder": "a folder",
        "fifo": "FIFO",
        "symlink": "symbolic link",
        "device": "device",
        "socket": "socket",
    }[kind]
    assert_clean_failure(outcome, 1, str(target), reason)
    assert victim.read_text() == "precious"
    assert not stat.S_ISREG(os.lstat(target).st_mode)


def test_a_read_only_result_folder_is_one_line(setup):
    tmp_path, result, labels = setup
    out = tmp_path / "out"
    prefix = read_only_folder(out)
    try:
        outcome = postprocess(result, labels, out, "result.json", cwd=tmp_path, prefix=prefix)
    finally:
        out.chmod(0o755)
    assert_clean_failure(outcome, 1, "result.json", "Permission denied")
    assert os.listdir(out) == []


def test_a_result_folder_under_a_file_is_one_line(setup):
    tmp_path, result, labels = setup
    (tmp_path / "plain").write_text("a file")
    outcome = postprocess(result, labels, tmp_path / "plain" / "sub", "result.json", cwd=tmp_path)
    line = assert_clean_failure(outcome, 1, "result.json", "cannot write")
    assert "Not a directory" in line or "not a folder" in line


def test_a_full_disk_is_one_line_and_leaves_no_partial_file(setup):
    tmp_path, result, labels = setup
    out = tmp_path / "small"
    prefix, file_limit = full_disk(out, fill=True, fallback_bytes=64)
    outcome = postprocess(
        result, labels, out, "result.json", cwd=tmp_path, prefix=prefix, file_bytes=file_limit
    )
    line = assert_clean_failure(outcome, 1, "result.json", "cannot write")
    assert "No space left on device" in line or "File too large" in line
    assert files_left(outcome, out) == []


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_the_result_json_takes_the_umask_mode(setup, umask, mode):
    tmp_path, result, labels = setup
    old = os.umask(umask)
    try:
        outcome = postprocess(result, labels, tmp_path / "out", "result.json", cwd=tmp_path)
    finally:
        os.umask(old)
    assert outcome.returncode == 0, outcome.stderr
    assert stat.S_IMODE((tmp_path / "out" / "result.json").stat().st_mode) == mode


# ----------------------------------------------------------------------------------------------------------
# 3. compare's --json never replaces a result; 7. thresholds must be numbers in range


@pytest.mark.parametrize(
    "target",
    ["a/infer/ILSVRC2012_val_00000001_0.bin", "a/infer/compare.json", "b/infer_summary.json", "b/infer"],
)
def test_the_comparison_json_never_replaces_a_result(tmp_path, target):
    a, b = make_result(tmp_path, "a"), make_result(tmp_path, "b", seed=1)
    before = snapshot(tmp_path)
    outcome = compare(a, b, "--json", tmp_path / target, cwd=tmp_path)
    assert outcome.returncode == 2, outcome.stderr
    assert_clean_failure(outcome, 2, target.split("/")[-1])
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_a_comparison_json_path_that_is_not_a_regular_file_is_refused(tmp_path, kind):
    a, b = make_result(tmp_path, "a"), make_result(tmp_path, "b")
    target = tmp_path / "compare.json"
    target.mkdir() if kind == "folder" else os.mkfifo(target)
    outcome = compare(a, b, "--json", target, cwd=tmp_path)
    assert_clean_failure(outcome, 2, str(target), "FIFO" if kind == "fifo" else "folder")
    assert not stat.S_ISREG(os.lstat(target).st_mode)


def test_the_comparison_json_beside_the_results_is_written(tmp_path):
    a, b = make_result(tmp_path, "a"), make_result(tmp_path, "b")
    outcome = compare(a, b, "--json", tmp_path / "a" / "compare.json", cwd=tmp_path)
    assert outcome.returncode == 0, outcome.stderr
    assert json.loads((tmp_path / "a" / "compare.json").read_text())["passed"] is True


@pytest.mark.parametrize(
    "flags",
    [
        ("--atol", "nan"),
        ("--atol", "-1"),
        ("--atol", "-inf"),
        ("--min-cosine", "nan"),
        ("--min-cosine", "1.5"),
        ("--min-cosine", "-2"),
        ("--worst", "-3"),
    ],
)
def test_thresholds_out_of_range_are_usage_errors(tmp_path, flags):
    a, b = make_result(tmp_path, "a"), make_result(tmp_path, "b")
    outcome = compare(a, b, *flags, "--json", tmp_path / "c.json", cwd=tmp_path)
    assert_clean_failure(outcome, 2, flags[0])
    assert not (tmp_path / "c.json").exists()


def test_a_comparison_json_on_a_full_disk_is_one_line(tmp_path):
    a, b = make_result(tmp_path, "a"), make_result(tmp_path, "b")
    out = tmp_path / "small"
    prefix, file_limit = full_disk(out, fill=True, fallback_bytes=64)
    outcome = compare(a, b, "--json", out / "c.json", cwd=tmp_path, prefix=prefix, file_bytes=file_limit)
    line = assert_clean_failure(outcome, 2, "c.json", "cannot write")
    assert "No space left on device" in line or "File too large" in line
    assert files_left(outcome, out) == []


def test_a_comparison_json_in_a_read_only_folder_is_refused_before_reading(tmp_path):
    a, b = make_result(tmp_path, "a"), make_result(tmp_path, "b")
    out = tmp_path / "ro"
    prefix = read_only_folder(out)
    try:
        outcome = compare(a, b, "--json", out / "c.json", cwd=tmp_path, prefix=prefix)
    finally:
        out.chmod(0o755)
    assert_clean_failure(outcome, 2, "c.json", "Permission denied")
    assert "overall:" not in outcome.stdout  # refused before the results were read


# ----------------------------------------------------------------------------------------------------------
# 1. Labels meet outputs by the name ais_bench gives outputs: the file name up to its first dot


@pytest.mark.parametrize("names", [["a.v2", "b.v2"], ["a.v2.final", "b"], ["x.y.z", "x_y"]])
def test_image_names_with_dots_are_scored_by_the_output_name(tmp_path, names):
    folder = tmp_path / "result" / "infer"
    folder.mkdir(parents=True)
    for index, name in enumerate(names):
        row = np.zeros(1000, dtype="<f4")
        row[index + 7] = 1.0
        row.tofile(folder / f"{name.split('.')[0]}_0.bin")
    labels = tmp_path / "val_label.txt"
    labels.write_text("".join(f"{name}.JPEG {index + 7}\n" for index, name in enumerate(names)))
    result = postprocess(tmp_path / "result", labels, tmp_path, "result.json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    document = json.loads((tmp_path / "result.json").read_text())
    values = {entry["key"]: entry["value"] for entry in document["value"]}
    assert values["Number of images"] == str(len(names))
    assert values["Top1 accuracy"] == "100.0%"


@pytest.mark.parametrize(
    "lines",
    [
        ["a.x.JPEG 1", "a.y.JPEG 2"],
        ["a.JPEG 1", "a.tar.JPEG 1"],
        ["val/a.b.JPEG 3", "other/a.c.JPEG 4"],
    ],
)
def test_label_entries_that_would_share_an_output_name_are_refused(setup, lines):
    tmp_path, result, _ = setup
    labels = tmp_path / "clash_label.txt"
    labels.write_text("\n".join(lines) + "\n")
    outcome = postprocess(result, labels, tmp_path, "result.json", cwd=tmp_path)
    assert_clean_failure(outcome, 1, "clash_label.txt:2", "same output name")
    assert not (tmp_path / "result.json").exists()
