"""Stage 4: result folders (every ais_bench layout, BIN/NPY/TXT), labels, top-k, result.json, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ais_layout import logits_with_ranks, read_outputs, write_devices, write_output, write_result

from twins_pcpvt import results
from twins_pcpvt.data import ManifestRow, write_manifest
from twins_pcpvt.labels import read_labels
from twins_pcpvt.metrics import topk_correct, true_class_rank
from twins_pcpvt.results import find_output_folder, load_outputs
from twins_pcpvt_s_postprocess import main

ROOT = Path(__file__).resolve().parents[1]
COUNT = 12
STEMS = [f"ILSVRC2012_val_{i + 1:08d}" for i in range(COUNT)]
LABELS = [(37 * i + 5) % 1000 for i in range(COUNT)]
RANKS = [0, 0, 0, 1, 2, 0, 4, 7, 0, 3, 30, 0]  # top-1 6/12, top-2 7, top-3 8, top-4 9, top-5 10


def expected_topk(ranks=RANKS) -> dict[int, float]:
    return {k: sum(rank < k for rank in ranks) / len(ranks) for k in range(1, 6)}


def write_val_label(path: Path, stems=STEMS, labels=LABELS) -> Path:
    path.write_text("".join(f"{stem}.JPEG {label}\n" for stem, label in zip(stems, labels, strict=True)))
    return path


@pytest.fixture
def guide_setup(tmp_path):
    """The guide's situation: ./result holds ais_bench's timestamp folder and its summary; val_label.txt."""
    write_result(tmp_path / "result", STEMS, logits_with_ranks(LABELS, RANKS))
    return tmp_path, write_val_label(tmp_path / "val_label.txt")


def run_postprocess(target, annotation, json_dir, name="result.json"):
    return main(
        [
            "--folder-davinci-target",
            str(target),
            "--annotation-file-path",
            str(annotation),
            "--result-json-path",
            str(json_dir),
            "--json-file-name",
            name,
        ]
    )


def test_guide_command_works_as_printed(guide_setup):
    workdir, labels = guide_setup
    completed = subprocess.run(
        [
            sys.executable,
            str(ROOT / "twins_pcpvt_s_postprocess.py"),
            "--folder-davinci-target",
            "./result",
            "--annotation-file-path",
            str(labels),
            "--result-json-path",
            "./result",
            "--json-file-name",
            "result.json",
        ],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert "top-1 50.00%, top-5 83.33% on 12 images" in completed.stdout
    document = json.loads((workdir / "result" / "result.json").read_text())
    expected = expected_topk()
    assert document["title"] == "Overall statistical evaluation"
    assert document["value"] == [
        {"key": "Number of images", "value": "12"},
        {"key": "Number of classes", "value": "1000"},
        *({"key": f"Top{k} accuracy", "value": str(round(expected[k] * 100, 2)) + "%"} for k in range(1, 6)),
    ]
    assert [document[f"top{k}"] for k in range(1, 6)] == pytest.approx([expected[k] for k in range(1, 6)])
    assert (document["images"], document["classes"], document["labels_without_output"]) == (12, 1000, 0)
    # a second run over the same ./result ignores the result.json it wrote there
    rerun = subprocess.run(completed.args, cwd=workdir, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr


@pytest.mark.parametrize("fmt", ["bin", "npy", "txt"])
@pytest.mark.parametrize("summary", ["beside", "inside", None])
def test_every_layout_and_format_scores_alike(tmp_path, fmt, summary):
    folder = write_result(tmp_path / "out", STEMS, logits_with_ranks(LABELS, RANKS), fmt, summary=summary)
    labels = write_val_label(tmp_path / "val_label.txt")
    for target in (tmp_path / "out", folder):  # the parent and the output folder itself
        assert run_postprocess(target, labels, tmp_path / "json") == 0
        document = json.loads((tmp_path / "json" / "result.json").read_text())
        assert [document[f"top{k}"] for k in range(1, 6)] == pytest.approx(list(expected_topk().values()))
        assert document["output_folder"] == str(folder)


def test_read_outputs_returns_float32_scores_by_stem(tmp_path):
    logits = logits_with_ranks(LABELS, RANKS)
    write_result(tmp_path / "out", STEMS, logits, "npy")
    outputs = read_outputs(tmp_path / "out")
    assert sorted(outputs) == STEMS
    assert all(values.dtype == np.float32 and values.shape == (1000,) for values in outputs.values())
    np.testing.assert_array_equal(outputs[STEMS[3]], logits[3])


def test_txt_values_round_trip_within_a_millionth(tmp_path):
    logits = np.random.default_rng(1).standard_normal((3, 1000)).astype(np.float32) * 10
    write_result(tmp_path / "out", STEMS[:3], logits, "txt")
    np.testing.assert_allclose(load_outputs(tmp_path / "out").logits, logits, rtol=0, atol=1e-6)


def test_txt_outputs_are_parsed_in_worker_processes_when_many(tmp_path, monkeypatch):
    logits = logits_with_ranks(LABELS, RANKS)
    write_result(tmp_path / "out", STEMS, logits, "txt")
    monkeypatch.setattr(results, "PARALLEL_TXT_MIN_FILES", 2)
    monkeypatch.setattr(results, "usable_cpus", lambda: 2)
    np.testing.assert_allclose(load_outputs(tmp_path / "out").logits, logits, atol=1e-6)


@pytest.mark.parametrize("dtype", ["<f2", ">f4", "<f8"])
def test_npy_outputs_of_any_float_dtype_are_read_as_float32(tmp_path, dtype):
    logits = logits_with_ranks(LABELS, RANKS)
    for stem, row in zip(STEMS, logits, strict=True):
        (tmp_path / "out").mkdir(exist_ok=True)
        np.save(tmp_path / "out" / f"{stem}_0.npy", row.astype(dtype)[None, :])
    outputs = load_outputs(tmp_path / "out")
    assert outputs.logits.dtype == np.float32
    np.testing.assert_array_equal(outputs.logits, logits.astype(dtype).astype(np.float32))


def test_mixed_formats_in_one_folder_are_read(tmp_path):
    logits = logits_with_ranks(LABELS, RANKS)
    folder = tmp_path / "out"
    for index, (stem, row) in enumerate(zip(STEMS, logits, strict=True)):
        write_output(folder, stem, row, ("bin", "npy", "txt")[index % 3])
    outputs = load_outputs(folder)
    assert outputs.formats[:3] == ["bin", "npy", "txt"]
    np.testing.assert_allclose(outputs.logits, logits, atol=1e-6)


def test_multi_device_subfolders_are_one_result(tmp_path):
    logits = logits_with_ranks(LABELS, RANKS)
    folder = tmp_path / "out" / "2024_01_02-03_04_05"
    for index, (stem, row) in enumerate(zip(STEMS, logits, strict=True)):
        write_output(folder / f"device{index % 2}", stem, row)
    assert find_output_folder(tmp_path / "out") == folder
    assert load_outputs(tmp_path / "out").stems == STEMS


@pytest.mark.parametrize("fmt", ["bin", "txt"])
def test_every_device_copy_of_the_same_images_is_checked(tmp_path, capsys, fmt):
    """ais_bench 2024 without --divide_input: the second device's copy agrees (TXT rounding included)."""
    logits = logits_with_ranks(LABELS, RANKS)
    stamp = write_devices(tmp_path / "out", STEMS, logits, "2024")
    for stem, row in zip(STEMS, logits, strict=True):  # the second copy as another format, a float apart
        (stamp / "device1_1" / f"{stem}_0.bin").unlink()
        write_output(stamp / "device1_1", stem, np.nextafter(row, np.float32(np.inf)), fmt)
    assert run_postprocess(tmp_path / "out", write_val_label(tmp_path / "val_label.txt"), tmp_path) == 0
    err = capsys.readouterr().err
    assert (
        f"note: {stamp / 'device1_1'} is a duplicate: it holds the same images as {stamp / 'device0_0'}"
        in err
    )
    assert "gives the same scores (checked)" in err and "not an inference output" not in err
    assert json.loads((tmp_path / "result.json").read_text())["images"] == COUNT


@pytest.mark.parametrize("broken", ["zeros", "nan", "perturbed", "other image"])
def test_a_device_that_disagrees_with_the_first_is_refused(tmp_path, capsys, broken):
    logits = logits_with_ranks(LABELS, RANKS)
    stamp = write_devices(tmp_path / "out", STEMS, logits, "2024")
    row = logits[3].copy()
    if broken == "zeros":
        row[:] = 0
    elif broken == "nan":
        row[7] = np.nan
    elif broken == "perturbed":  # a change the fp32 preset would catch, top-1 unchanged
        row[row.argmin()] += 0.01
    else:
        row = logits[4]
    write_output(stamp / "device1_1", STEMS[3], row)
    assert run_postprocess(tmp_path / "out", write_val_label(tmp_path / "val_label.txt"), tmp_path / "j") == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert f"{stamp / 'device1_1'}: disagrees with {stamp / 'device0_0'}" in err
    assert f"{stamp / 'device1_1' / (STEMS[3] + '_0.bin')}: " in err
    assert "1 of 12 differ" in err
    assert not (tmp_path / "j").exists()


def test_labels_from_the_preprocess_manifest(tmp_path):
    write_result(tmp_path / "out", STEMS, logits_with_ranks(LABELS, RANKS))
    prep = tmp_path / "prep"
    prep.mkdir()
    write_manifest(
        prep,
        [
            ManifestRow(stem, f"val/n{label:08d}/{stem}.JPEG", label)
            for stem, label in zip(STEMS, LABELS, strict=True)
        ],
    )
    for annotation in (prep, prep / "manifest.tsv"):
        assert run_postprocess(tmp_path / "out", annotation, tmp_path) == 0
        document = json.loads((tmp_path / "result.json").read_text())
        assert document["top1"] == pytest.approx(expected_topk()[1])


def test_manifest_without_labels_is_refused(tmp_path, capsys):
    write_result(tmp_path / "out", STEMS, logits_with_ranks(LABELS, RANKS))
    prep = tmp_path / "prep"
    prep.mkdir()
    write_manifest(prep, [ManifestRow(stem, f"{stem}.JPEG", None) for stem in STEMS])
    assert run_postprocess(tmp_path / "out", prep, tmp_path) == 1
    assert f"{prep / 'manifest.tsv'}: the manifest holds no labels" in capsys.readouterr().err
    assert not (tmp_path / "result.json").exists()


def test_1001_class_outputs_shift_labels_by_one(tmp_path):
    shifted = [label + 1 for label in LABELS]
    logits = logits_with_ranks(shifted, RANKS, classes=1001)
    write_result(tmp_path / "out", STEMS, logits)
    assert run_postprocess(tmp_path / "out", write_val_label(tmp_path / "val_label.txt"), tmp_path) == 0
    document = json.loads((tmp_path / "result.json").read_text())
    assert document["classes"] == 1001
    assert [document[f"top{k}"] for k in range(1, 6)] == pytest.approx(list(expected_topk().values()))


def test_subset_run_counts_labels_without_output(tmp_path, capsys):
    write_result(tmp_path / "out", STEMS[:5], logits_with_ranks(LABELS[:5], RANKS[:5]))
    assert run_postprocess(tmp_path / "out", write_val_label(tmp_path / "val_label.txt"), tmp_path) == 0
    document = json.loads((tmp_path / "result.json").read_text())
    assert (document["images"], document["labels_without_output"]) == (5, 7)
    assert "7 of the 12 labels" in capsys.readouterr().err


def test_stray_files_are_ignored_with_a_note(guide_setup, capsys):
    workdir, labels = guide_setup
    folder = find_output_folder(workdir / "result")
    (folder / "notes.md").write_text("not an output")
    (folder / "sumary.json").write_text("{}")
    assert run_postprocess(workdir / "result", labels, workdir) == 0
    assert (
        f"ignored what is not an inference output (1 file), e.g. {folder / 'notes.md'}"
        in capsys.readouterr().err
    )


def test_result_json_folder_is_created(guide_setup):
    workdir, labels = guide_setup
    assert run_postprocess(workdir / "result", labels, workdir / "new" / "reports", "acc.json") == 0
    assert json.loads((workdir / "new" / "reports" / "acc.json").read_text())["images"] == COUNT


def test_json_file_name_with_a_folder_is_bad_usage(guide_setup, capsys):
    workdir, labels = guide_setup
    assert run_postprocess(workdir / "result", labels, workdir, "sub/result.json") == 2
    assert "--json-file-name must be a plain file name" in capsys.readouterr().err


def test_missing_flags_are_bad_usage(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--folder-davinci-target", "./result"])
    assert exited.value.code == 2


# ----- every bad input: exit status 1, the file (or line) named, no result.json -----


def assert_refused(capsys, tmp_path, target, annotation, *fragments):
    assert run_postprocess(target, annotation, tmp_path / "json") == 1
    err = capsys.readouterr().err
    for fragment in fragments:
        assert fragment in err, err
    assert not (tmp_path / "json").exists()


def test_output_without_label(tmp_path, capsys):
    folder = write_result(tmp_path / "out", STEMS, logits_with_ranks(LABELS, RANKS))
    labels = write_val_label(tmp_path / "val_label.txt", STEMS[1:], LABELS[1:])
    assert_refused(
        capsys,
        tmp_path,
        tmp_path / "out",
        labels,
        f"{folder / (STEMS[0] + '_0.bin')}: no label for this image in {labels}",
    )


@pytest.mark.parametrize(
    "fmt, payload, reason",
    [
        ("bin", np.zeros(999, "<f4").tobytes(), "3996 bytes"),
        ("bin", np.zeros(2000, "<f4").tobytes(), "looks like 2 images in one file"),
        ("bin", np.zeros(1000, "<f2").tobytes(), "float16"),
        ("bin", b"\0" * 4001, "not a whole number of float32 values"),
        ("txt", b"1.0 2.0\n", "2 values"),
        ("txt", b"1.0 abc\n", "not a text file of numbers"),
        ("npy", None, "shape (1, 999)"),
        ("npy", "int32", "dtype int32, outputs must be floating point"),
        ("npy", "truncated", "truncated or oversized NPY file"),
        ("npy", b"not numpy at all", "not an NPY file"),
    ],
)
def test_output_of_the_wrong_size_or_content(tmp_path, capsys, fmt, payload, reason):
    folder = write_result(tmp_path / "out", STEMS, logits_with_ranks(LABELS, RANKS))
    bad = folder / f"{STEMS[4]}_0.{fmt}"
    (folder / f"{STEMS[4]}_0.bin").unlink()
    if payload is None:
        np.save(bad, np.zeros((1, 999), np.float32))
    elif payload == "int32":
        np.save(bad, np.zeros((1, 1000), np.int32))
    elif payload == "truncated":
        np.save(bad, np.zeros((1, 1000), np.float32))
        bad.write_bytes(bad.read_bytes()[:-4])
    else:
        bad.write_bytes(payload)
    assert_refused(
        capsys, tmp_path, tmp_path / "out", write_val_label(tmp_path / "val_label.txt"), f"{bad}: ", reason
    )


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_in_an_output(tmp_path, capsys, value):
    logits = logits_with_ranks(LABELS, RANKS)
    logits[6, 17] = value
    folder = write_result(tmp_path / "out", STEMS, logits, "npy")
    assert_refused(
        capsys,
        tmp_path,
        tmp_path / "out",
        write_val_label(tmp_path / "val_label.txt"),
        f"{folder / (STEMS[6] + '_0.npy')}: holds NaN or Inf",
    )


def test_duplicate_stem_in_two_formats(tmp_path, capsys):
    logits = logits_with_ranks(LABELS, RANKS)
    folder = write_result(tmp_path / "out", STEMS, logits)
    write_output(folder, STEMS[2], logits[2], "npy")
    assert_refused(
        capsys,
        tmp_path,
        tmp_path / "out",
        write_val_label(tmp_path / "val_label.txt"),
        f"{folder / (STEMS[2] + '_0.npy')}: duplicate output",
        str(folder / (STEMS[2] + "_0.bin")),
    )


def test_duplicate_stem_in_two_device_folders(tmp_path, capsys):
    logits = logits_with_ranks(LABELS, RANKS)
    folder = tmp_path / "out" / "run"
    write_result(tmp_path / "out", STEMS[:6], logits[:6], name="run/device0", summary=None)
    write_result(tmp_path / "out", STEMS[5:], logits[5:], name="run/device1", summary=None)
    assert_refused(
        capsys,
        tmp_path,
        folder,
        write_val_label(tmp_path / "val_label.txt"),
        f"{folder / 'device1' / (STEMS[5] + '_0.bin')}: duplicate output",
        str(folder / "device0" / (STEMS[5] + "_0.bin")),
    )


def test_second_output_index_is_refused(tmp_path, capsys):
    logits = logits_with_ranks(LABELS, RANKS)
    folder = write_result(tmp_path / "out", STEMS, logits)
    extra = folder / f"{STEMS[0]}_1.bin"
    logits[0].tofile(extra)
    assert_refused(
        capsys, tmp_path, folder, write_val_label(tmp_path / "val_label.txt"), f"{extra}: output index 1"
    )


def test_empty_folder(tmp_path, capsys):
    (tmp_path / "out" / "2024_01_02-03_04_05").mkdir(parents=True)
    (tmp_path / "out" / "2024_01_02-03_04_05_summary.json").write_text("{}")
    assert_refused(
        capsys,
        tmp_path,
        tmp_path / "out",
        write_val_label(tmp_path / "val_label.txt"),
        f"{tmp_path / 'out'}: no inference outputs",
    )


def test_folder_of_preprocessed_inputs_is_not_an_output_folder(tmp_path, capsys, make_bin_folder):
    prep, _, _ = make_bin_folder(2)
    assert_refused(
        capsys, tmp_path, prep, write_val_label(tmp_path / "val_label.txt"), f"{prep}: no inference outputs"
    )


def test_missing_target_folder(tmp_path, capsys):
    assert_refused(
        capsys,
        tmp_path,
        tmp_path / "nowhere",
        write_val_label(tmp_path / "val_label.txt"),
        f"{tmp_path / 'nowhere'}: no such folder",
    )


def test_parent_with_several_output_folders_lists_them(tmp_path, capsys):
    logits = logits_with_ranks(LABELS, RANKS)
    first = write_result(tmp_path / "out", STEMS, logits, name="2024_01_01-00_00_00")
    second = write_result(tmp_path / "out", STEMS, logits, name="2024_01_02-00_00_00")
    assert_refused(
        capsys,
        tmp_path,
        tmp_path / "out",
        write_val_label(tmp_path / "val_label.txt"),
        "holds 2 output folders",
        str(first),
        str(second),
    )


@pytest.mark.parametrize(
    "line, reason",
    [
        ("ILSVRC2012_val_00000004.JPEG", "malformed label line"),
        ("ILSVRC2012_val_00000004.JPEG 6 5", "malformed label line"),
        ("ILSVRC2012_val_00000004.JPEG -3", "malformed label line"),
        ("ILSVRC2012_val_00000004.JPEG cat", "malformed label line"),
        ("ILSVRC2012_val_00000001.JPEG 3", "listed twice (first on line 1)"),
    ],
)
def test_malformed_label_line(tmp_path, capsys, line, reason):
    write_result(tmp_path / "out", STEMS, logits_with_ranks(LABELS, RANKS))
    labels = write_val_label(tmp_path / "val_label.txt")
    lines = labels.read_text().splitlines()
    lines[3] = line
    labels.write_text("\n".join(lines) + "\n")
    assert_refused(capsys, tmp_path, tmp_path / "out", labels, f"{labels}:4: ", reason)


def test_label_outside_the_output_classes(tmp_path, capsys):
    write_result(tmp_path / "out", STEMS, logits_with_ranks(LABELS, RANKS))
    labels = write_val_label(tmp_path / "val_label.txt", STEMS, [1000] + LABELS[1:])
    assert_refused(capsys, tmp_path, tmp_path / "out", labels, f"{labels}:1: class 1000 does not exist")


def test_missing_label_file(tmp_path, capsys):
    write_result(tmp_path / "out", STEMS, logits_with_ranks(LABELS, RANKS))
    assert_refused(
        capsys,
        tmp_path,
        tmp_path / "out",
        tmp_path / "val_label.txt",
        f"{tmp_path / 'val_label.txt'}: no such label file",
    )


def test_read_labels_keeps_stems_and_lines(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("\ufeffa.JPEG 1\r\n\r\nval/n01/b.jpeg 2\r\nc 3\r\n")
    labels = read_labels(path)
    assert labels.labels == {"a": 1, "b": 2, "c": 3}
    assert labels.where("b") == f"{path}:3"


# ----- top-k -----


def test_topk_matches_an_independent_sort_based_count():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((500, 1000)).astype(np.float32)
    labels = rng.integers(0, 1000, 500)
    logits[np.arange(0, 500, 3), labels[::3]] += 3.0  # make some rows right
    ranks_by_sort = (np.argsort(-logits, axis=1, kind="stable") == labels[:, None]).argmax(axis=1)
    np.testing.assert_array_equal(true_class_rank(logits, labels), ranks_by_sort)
    top5 = torch.from_numpy(logits).topk(5, dim=1).indices.numpy()
    for k, hits in topk_correct(logits, labels).items():
        assert hits == (top5[:, :k] == labels[:, None]).any(axis=1).sum()


def test_ties_count_against_the_true_class():
    constant = np.zeros((2, 1000), np.float32)
    assert topk_correct(constant, np.array([0, 999]), ks=(1, 5)) == {1: 0, 5: 0}
