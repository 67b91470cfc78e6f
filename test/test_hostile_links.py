"""Hostile result folders, class by class: symbolic links that lead nowhere. A link loop, a dangling link or a
link back up to a folder above is skipped with a note (postprocess and compare); an output that is such a link
cannot be read and is one error line; a result path that is one is one error line. Never an ELOOP traceback.
Every run is a subprocess under a time and an address-space limit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hostile import GIB, assert_clean_failure, run_compare, run_postprocess

pytestmark = pytest.mark.slow  # every case runs a script in a subprocess under limits
MEMORY = 2 * GIB
STEMS = [f"ILSVRC2012_val_{index:08d}" for index in range(1, 4)]


def make_result(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for index, stem in enumerate(STEMS):
        scores = np.zeros(1000, "<f4")
        scores[index] = 1.0
        scores.tofile(folder / f"{stem}_0.bin")
    return folder


def postprocess(result: Path, cwd: Path):
    labels = cwd / "val_label.txt"
    labels.write_text("".join(f"{stem}.JPEG {index}\n" for index, stem in enumerate(STEMS)))
    return run_postprocess(result, labels, cwd / "report", cwd=cwd, memory=MEMORY)


def compare(a: Path, b: Path, cwd: Path):
    return run_compare(a, b, cwd=cwd, memory=MEMORY)


def link_loop(path: Path) -> None:
    path.symlink_to(path.name)


def link_pair_loop(path: Path) -> None:
    path.symlink_to(path.name + ".other")
    path.with_name(path.name + ".other").symlink_to(path.name)


def dangling(path: Path) -> None:
    path.symlink_to("no_such_file")


def up_to_the_parent(path: Path) -> None:
    path.symlink_to("..")


def to_itself_as_folder(path: Path) -> None:
    path.symlink_to(".")


# (name of the link in the output folder, how it is made, what the note calls it)
SKIPPED = {
    "loop": ("loop", link_loop, "symbolic link loop"),
    "loop of two": ("a.bin", link_pair_loop, "symbolic link loop"),
    "dangling": ("notes.txt", dangling, "broken symbolic link"),
    "dangling json": ("x_summary.json", dangling, "broken symbolic link"),
    "device folder to its parent": ("device0", up_to_the_parent, "a folder above it"),
    "device folder to itself": ("device1_0", to_itself_as_folder, "a folder above it"),
    "folder loop": ("sub", link_loop, "symbolic link loop"),
}


@pytest.mark.parametrize("case", sorted(SKIPPED))
def test_a_link_that_leads_nowhere_is_skipped_with_a_note(tmp_path, case):
    name, make, what = SKIPPED[case]
    result = make_result(tmp_path / "a" / "infer")
    make(result / name)
    scored = postprocess(tmp_path / "a", tmp_path)
    assert scored.returncode == 0 and "Traceback" not in scored.stderr, scored.stderr
    if not name.endswith(".json"):  # JSON files (summaries) are never listed as ignored
        assert "note: ignored" in scored.stderr and what in scored.stderr, scored.stderr
    assert json.loads((tmp_path / "report" / "result.json").read_text())["images"] == len(STEMS)

    compared = compare(make_result(tmp_path / "b"), tmp_path / "a", tmp_path)
    assert compared.returncode == 0 and "Traceback" not in compared.stderr, compared.stderr
    assert "PASS" in compared.stdout and f"{len(STEMS)} compared" in compared.stdout
    if not name.endswith(".json"):
        assert "note: B: ignored" in compared.stderr and what in compared.stderr


@pytest.mark.parametrize("make, what", [(link_loop, "loop"), (dangling, "broken")], ids=["loop", "dangling"])
def test_an_output_that_is_such_a_link_is_one_error_line(tmp_path, make, what):
    result = make_result(tmp_path / "a" / "infer")
    name = "ILSVRC2012_val_00000009_0.bin"
    make(result / name)
    assert_clean_failure(postprocess(tmp_path / "a", tmp_path), 1, name, what, "cannot be read")
    assert not (tmp_path / "report").exists()
    compared = compare(make_result(tmp_path / "b"), tmp_path / "a", tmp_path)
    assert_clean_failure(compared, 2, name, what)


@pytest.mark.parametrize("make", [link_loop, dangling], ids=["loop", "dangling"])
def test_a_result_path_that_leads_nowhere_is_one_error_line(tmp_path, make):
    make(tmp_path / "result")
    assert_clean_failure(postprocess(tmp_path / "result", tmp_path), 1, "result", "leads nowhere")
    compared = compare(make_result(tmp_path / "b"), tmp_path / "result", tmp_path)
    assert_clean_failure(compared, 2, "result", "leads nowhere")


def test_a_looping_device_folder_never_hides_the_real_ones(tmp_path):
    # ais_bench 2023's split layout: device0/ and device1/ hold the images between them
    run = tmp_path / "a" / "run"
    for device, stems in (("device0", STEMS[:2]), ("device1", STEMS[2:])):
        folder = run / device
        folder.mkdir(parents=True)
        for stem in stems:
            scores = np.zeros(1000, "<f4")
            scores[STEMS.index(stem)] = 1.0
            scores.tofile(folder / f"{stem}_0.bin")
    link_loop(run / "device2")
    scored = postprocess(run, tmp_path)
    assert scored.returncode == 0, scored.stderr
    assert json.loads((tmp_path / "report" / "result.json").read_text())["images"] == len(STEMS)
