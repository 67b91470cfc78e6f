"""The Ascend path against the REAL ais_bench Python of both generations (2023: 0.0.2, 2024: 7.0.0c2), over
the
aclruntime double (ONNX Runtime underneath): our ais backend through the real InferSession,
test/eval_acc_perf.sh
driving the real `python3 -m ais_bench`, the readers on the real tool's files, and our multi-device runs.

Skips with one line where the sources are not beside the repository (../shared/upstream/ais_bench)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from aclruntime_double import GENERATIONS, environment, missing_reason, use_generation
from standins.static_onnx import static_copy

import twins_pcpvt_s_infer as infer_script
from twins_pcpvt.common import NUM_CLASSES
from twins_pcpvt.evaltable import read_perf
from twins_pcpvt.results import load_outputs

NEEDS_SOURCES = pytest.mark.skipif(bool(missing_reason()), reason=missing_reason() or "")

ROOT = Path(__file__).resolve().parents[1]
IMAGES = 5


@pytest.fixture(scope="module")
def om_dir(onnx_path, tmp_path_factory) -> Path:
    """twins_bs1.om and twins_bs4.om (static ONNX copies), with the modes the 2024 CLI accepts (0644 in
    0755)."""
    folder = tmp_path_factory.mktemp("om")
    for batch in (1, 4):
        static_copy(onnx_path, folder / f"twins_bs{batch}.om", batch).chmod(0o644)
    folder.chmod(0o755)
    return folder


@pytest.fixture(scope="module")
def prep(tmp_path_factory) -> tuple[Path, list[str], np.ndarray]:
    folder = tmp_path_factory.mktemp("prep")
    folder.chmod(0o755)
    batch = np.random.default_rng(5).standard_normal((IMAGES, 3, 224, 224), dtype=np.float32)
    stems = [f"ILSVRC2012_val_{index + 1:08d}" for index in range(IMAGES)]
    for stem, tensor in zip(stems, batch, strict=True):
        path = folder / f"{stem}.bin"
        tensor.tofile(path)
        path.chmod(0o644)
    return folder, stems, batch


@pytest.fixture(scope="module")
def reference(onnx_path):
    """fn(batch) -> ONNX Runtime's logits of the dynamic model: what every ais path must reproduce."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return lambda batch: session.run(None, {"input": batch})[0]


def ais_bench(generation: str, *argv, cwd: Path) -> subprocess.CompletedProcess:
    """The real `python3 -m ais_bench` of one generation, over the double, under umask 022 as its checks
    need."""
    return subprocess.run(
        [sys.executable, "-m", "ais_bench", *map(str, argv)],
        cwd=cwd,
        env=environment(generation),
        capture_output=True,
        text=True,
        timeout=600,
        umask=0o022,
    )


@NEEDS_SOURCES
@pytest.mark.parametrize("generation", GENERATIONS)
def test_ais_backend_through_the_real_infersession(generation, om_dir, prep, reference):
    from twins_pcpvt.backends import create_runner

    _, _, batch = prep
    with use_generation(generation):
        from ais_bench.infer import interface

        spelled = "reset_summaryinfo" if generation == "v2024" else "reset_sumaryinfo"
        assert hasattr(interface.InferSession, spelled)  # the generation really is the one named
        with create_runner("ais", om_dir / "twins_bs4.om", device="1") as runner:
            assert (runner.static_batch, runner.device, runner.precision) == (4, "npu:1", "om")
            for rows in (batch[:4], batch[:3]):  # a full batch, then one padded by the runner
                logits = runner.infer(np.ascontiguousarray(rows))
                assert logits.shape == (len(rows), NUM_CLASSES)
                assert float(np.abs(logits - reference(rows)).max()) <= 1e-4
                assert 0 < runner.last_compute_ms < 60_000
                assert runner.last_h2d_ms is not None and runner.last_d2h_ms is not None
            session = runner.session.session
        with pytest.raises(RuntimeError, match="freed"):  # closed as the real CLI closes: nothing runs after
            session.run([runner_output.name for runner_output in session.get_outputs()], [])


@NEEDS_SOURCES
@pytest.mark.slow
@pytest.mark.parametrize("generation", GENERATIONS)
def test_eval_acc_perf_drives_the_real_ais_bench(generation, om_dir, tmp_path, reference):
    """test/eval_acc_perf.sh --backend ais at batch sizes 1 and 4, `python3 -m ais_bench` being the real
    one."""
    from twins_pcpvt.demo import make_demo_dataset

    image_dir, label_file = make_demo_dataset(tmp_path / "data", count=IMAGES)
    out = tmp_path / "eval"
    env = {**environment(generation), "PYTHON": sys.executable}

    def evaluate(*extra: str) -> subprocess.CompletedProcess:
        flags = ["--datasets-path", str(image_dir), "--label-file", str(label_file), "--backend", "ais"]
        flags += ["--om-dir", str(om_dir), "--loop", "2", "--output-dir", str(out), *extra]
        return subprocess.run(
            ["bash", str(ROOT / "test" / "eval_acc_perf.sh"), *flags],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
            umask=0o022,
        )

    result = evaluate("--batch-sizes", "1,4")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert result.stdout.startswith(f"weights: the OM models in {om_dir} (twins_bs<N>.om for batch sizes 1,4")
    assert f"labels: {label_file} (--label-file)" in result.stdout
    rows = json.loads((out / "eval_summary.json").read_text())["rows"]
    assert [
        (row["batch_size"], row["images"], row["backend"], row["precision"], row["device"]) for row in rows
    ] == [(1, IMAGES, "ais_bench", "om", "0"), (4, IMAGES, "ais_bench", "om", "0")]
    assert rows[0]["top1"] == rows[1]["top1"] and all(row["throughput"] > 0 for row in rows)
    prep = out / "prep_dataset"
    stems = sorted(path.stem for path in prep.glob("*.bin"))
    tensors = np.stack([np.fromfile(prep / f"{stem}.bin", "<f4").reshape(3, 224, 224) for stem in stems])
    for batch in (1, 4):
        outputs = load_outputs(out / f"bs{batch}" / "result")  # written by the real tool, 2 padded at bs 4
        assert outputs.stems == stems
        assert float(np.abs(outputs.logits - reference(tensors)).max()) <= 1e-4
        perf = json.loads((out / f"bs{batch}" / "perf_summary.json").read_text())
        assert isinstance(perf["args"], list) and perf["NPU_compute_time"]["count"] == 2
        assert {"H2D_latency", "D2H_latency"} <= set(perf)

    # A rerun on fewer images scores those: the real ais_bench adds to an existing output folder, so the
    # first run's outputs must not survive to be scored again.
    rerun = evaluate("--batch-sizes", "1", "--limit", "2")
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-3000:]
    assert [row["images"] for row in json.loads((out / "eval_summary.json").read_text())["rows"]] == [2]
    assert len(load_outputs(out / "bs1" / "result").stems) == 2


@NEEDS_SOURCES
@pytest.mark.slow
@pytest.mark.parametrize("generation", GENERATIONS)
def test_our_summary_and_files_match_the_real_tools(generation, om_dir, prep, tmp_path):
    """Pure inference and folder inference, real tool and our runner side by side: same files, same keys."""
    folder, stems, _ = prep
    model = om_dir / "twins_bs1.om"
    real = ais_bench(
        generation,
        "--model",
        model,
        "--output",
        tmp_path / "real",
        "--output_dirname",
        "pure",
        "--loop",
        2,
        cwd=tmp_path,
    )
    assert real.returncode == 0, real.stdout[-2000:] + real.stderr[-2000:]
    with use_generation(generation):
        assert (
            infer_script.main(
                [
                    "--model",
                    str(model),
                    "--output",
                    str(tmp_path / "ours"),
                    "--output_dirname",
                    "pure",
                    "--loop",
                    "2",
                    "--no-progress",
                ]
            )
            == 0
        )
    for side in ("real", "ours"):
        assert sorted(path.name for path in (tmp_path / side / "pure").iterdir()) == ["pure_infer_data_0.bin"]
    real_summary = json.loads((tmp_path / "real" / "pure_summary.json").read_text())
    our_summary = json.loads((tmp_path / "ours" / "pure_summary.json").read_text())
    assert set(real_summary) <= set(our_summary)
    for key, value in real_summary.items():
        assert type(our_summary[key]) is type(value), key
        if isinstance(value, dict) and key != "filesinfo":
            assert set(our_summary[key]) == set(value), key
    assert our_summary["filesinfo"]["0"]["infiles"] == real_summary["filesinfo"]["0"]["infiles"]
    real_zero = np.fromfile(tmp_path / "real" / "pure" / "pure_infer_data_0.bin", "<f4")
    ours_zero = np.fromfile(tmp_path / "ours" / "pure" / "pure_infer_data_0.bin", "<f4")
    assert np.allclose(real_zero, ours_zero, atol=1e-5)  # both ran all-zero input


@NEEDS_SOURCES
@pytest.mark.slow
@pytest.mark.parametrize("generation", GENERATIONS)
def test_readers_take_the_real_multi_device_layouts(generation, om_dir, prep, tmp_path, reference):
    folder, stems, batch = prep
    real = ais_bench(
        generation,
        "--model",
        om_dir / "twins_bs1.om",
        "--input",
        folder,
        "--output",
        tmp_path / "md",
        "--output_dirname",  # without it, 2024's device processes may each take their own time-stamp folder
        "run",
        "--device",
        "0,1",
        cwd=tmp_path,
    )
    assert real.returncode == 0, real.stdout[-2000:] + real.stderr[-2000:]
    (stamp,) = (path for path in (tmp_path / "md").iterdir() if path.is_dir())
    names = sorted(path.name for path in stamp.iterdir())
    assert names == (
        ["device0", "device0_summary.json", "device1", "device1_summary.json"]
        if generation == "v2023"
        else ["device0_0", "device0_0_summary.json", "device1_1", "device1_1_summary.json"]
    )
    for where in (tmp_path / "md", stamp):  # from the parent or the timestamp folder
        outputs = load_outputs(where)
        assert outputs.stems == stems
        assert float(np.abs(outputs.logits - reference(batch)).max()) <= 1e-4


@NEEDS_SOURCES
@pytest.mark.slow
@pytest.mark.parametrize(
    ("divide", "names", "split"),
    [
        (None, ["device0", "device1"], [3, 2]),
        ("true", ["device0_0", "device1_1"], [3, 2]),
        ("false", ["device0_0", "device1_1"], [5, 5]),
    ],
)
def test_our_runner_on_devices_0_and_1(divide, names, split, om_dir, prep, tmp_path, reference, capsys):
    """One worker process per NPU (the double on the CPU), the real tools' splits and folders, readable
    back."""
    folder, stems, batch = prep
    argv = [
        "--model",
        str(om_dir / "twins_bs1.om"),
        "--input",
        str(folder),
        "--output",
        str(tmp_path / "o"),
        "--output_dirname",
        "x",
        "--device",
        "0,1",
        "--no-progress",
    ]
    with use_generation("v2024"):
        assert infer_script.main([*argv, *(["--divide_input", divide] if divide else [])]) == 0
    assert "summary throughput:" in capsys.readouterr().out
    root = tmp_path / "o" / "x"
    assert sorted(path.name for path in root.iterdir()) == sorted(
        [*names, *(f"{n}_summary.json" for n in names)]
    )
    assert [len(list((root / name).iterdir())) for name in names] == split
    for name in names:
        summary = json.loads((root / f"{name}_summary.json").read_text())
        assert summary["device"] == f"npu:{name[6]}" and summary["images"] == len(
            list((root / name).iterdir())
        )
    outputs = load_outputs(tmp_path / "o")
    assert outputs.stems == stems
    assert float(np.abs(outputs.logits - reference(batch)).max()) <= 1e-4
    if divide is None:  # the closing table adds up the devices' pure-inference throughputs
        with use_generation("v2024"):
            assert (
                infer_script.main(
                    [
                        *argv[:2],
                        "--output",
                        str(tmp_path / "bs1"),
                        "--output_dirname",
                        "perf",
                        "--device",
                        "0,1",
                        "--no-progress",
                    ]
                )
                == 0
            )
        devices = [
            json.loads(path.read_text()) for path in sorted((tmp_path / "bs1" / "perf").glob("*.json"))
        ]
        assert len(devices) == 2
        assert read_perf(tmp_path / "bs1")["throughput"] == pytest.approx(
            sum(d["throughput"] for d in devices)
        )


def test_contract_env_is_self_contained():
    """The subprocess environment names the generation's sources and the double, nothing of this process."""
    env = environment("v2023")
    assert env["ACLRUNTIME_DOUBLE_GENERATION"] == "2023"
    first = env["PYTHONPATH"].split(os.pathsep)[:2]
    assert first[0].endswith("v2023") and first[1].endswith("aclruntime_double")


@pytest.mark.parametrize("layout", ["2023", "2024-divided", "2024"])
def test_device_folders_of_both_generations_are_one_result(layout, tmp_path):
    """Written by hand in each layout (runs without the sources): split folders join, replicas count once."""
    from ais_layout import write_devices

    stems = [f"ILSVRC2012_val_{index:08d}" for index in range(1, 6)]
    logits = np.random.default_rng(2).standard_normal((5, NUM_CLASSES)).astype(np.float32)
    stamp = write_devices(tmp_path / "result", stems, logits, layout)
    for where in (tmp_path / "result", stamp):
        outputs = load_outputs(where)
        assert outputs.stems == stems and np.array_equal(outputs.logits, logits)
        assert bool(outputs.duplicates) == (layout == "2024")
        assert not any("same images as" in note for note in outputs.ignored)


def postprocess(folder: Path, labels: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "twins_pcpvt_s_postprocess.py"), "--folder-davinci-target", str(folder)]
        + ["--annotation-file-path", str(labels), "--result-json-path", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def write_labels(path: Path, stems) -> Path:
    path.write_text("".join(f"{stem}.JPEG {index}\n" for index, stem in enumerate(stems)))
    return path


@NEEDS_SOURCES
@pytest.mark.slow
@pytest.mark.parametrize("divide", ["true", None])
def test_a_real_2024_run_split_over_two_time_stamp_folders_is_scored_whole(
    divide, om_dir, prep, tmp_path, reference
):
    """ais_bench 2024 stamps each device's folder after its model load: device 1 loading 2.5 s longer (as a
    busy NPU may) puts its folder in a later second. The postprocess scores the run whole, from the parent or
    either part, and a part alone is refused when the devices split the images."""
    folder, stems, batch = prep
    divide_flags = [] if divide is None else ["--divide_input", divide]
    real = subprocess.run(
        [sys.executable, "-m", "ais_bench", "--model", str(om_dir / "twins_bs1.om"), "--input", str(folder)]
        + ["--output", str(tmp_path / "md"), "--device", "0,1", *divide_flags],
        cwd=tmp_path,
        env={**environment("v2024"), "ACLRUNTIME_DOUBLE_LOAD_SECONDS": "1:2.5"},
        capture_output=True,
        text=True,
        timeout=600,
        umask=0o022,
    )
    assert real.returncode == 0, real.stdout[-2000:] + real.stderr[-2000:]
    first, second = parts = sorted(path for path in (tmp_path / "md").iterdir() if path.is_dir())
    assert [sorted(p.name for p in part.iterdir() if p.is_dir()) for part in parts] == [
        ["device0_0"],
        ["device1_1"],
    ]
    labels = write_labels(tmp_path / "val_label.txt", stems)
    for where in (tmp_path / "md", first, second):
        result = postprocess(where, labels, tmp_path / "scored")
        assert result.returncode == 0, result.stderr
        document = json.loads((tmp_path / "scored" / "result.json").read_text())
        assert (document["images"], document["labels_without_output"]) == (IMAGES, 0)
        assert "one run split over 2 time-stamp folders (each device process" in result.stderr
        assert f"{first} + {second}" in result.stdout and document["output_folder"] == f"{first} + {second}"
        assert ("duplicate" in result.stderr) == (divide is None)
        outputs = load_outputs(where)
        assert outputs.stems == stems and float(np.abs(outputs.logits - reference(batch)).max()) <= 1e-4
    second.rename(tmp_path / "moved_away")  # the other part gone: device 0's half of the images alone
    result = postprocess(first, labels, tmp_path / "alone")
    if divide == "true":
        assert result.returncode == 1 and len(result.stderr.splitlines()) == 1, result.stderr
        assert (
            "holds only device0_0 of a run over --device 0,1" in result.stderr
            and "device1_1 missing" in result.stderr
        )
        assert not (tmp_path / "alone").exists()
    else:  # every device ran every image: one device's folder holds the whole result
        assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("layout", ["2023", "2024-divided", "2024"])
def test_one_run_split_over_sibling_time_stamp_folders_is_one_result(layout, tmp_path, monkeypatch):
    """Written by hand as ais_bench writes a split run: read whole from the parent or either part."""
    from ais_layout import write_split_run

    from twins_pcpvt.results import find_output_folders

    stems = [f"ILSVRC2012_val_{index:08d}" for index in range(1, 6)]
    logits = np.random.default_rng(3).standard_normal((5, NUM_CLASSES)).astype(np.float32)
    parts = write_split_run(tmp_path / "result", stems, logits, layout)
    for where in (tmp_path / "result", *parts):
        assert find_output_folders(where) == parts
        outputs = load_outputs(where)
        assert outputs.stems == stems and np.array_equal(outputs.logits, logits)
        assert outputs.where == f"{parts[0]} + {parts[1]}"
        assert bool(outputs.duplicates) == (layout == "2024")
    monkeypatch.chdir(parts[1])  # a part named as the current folder
    assert load_outputs(".").stems == stems and find_output_folders(".") == parts


def test_parts_of_a_run_are_never_advised_alone(tmp_path):
    """Two split runs and a whole one under one parent: the listing names each run whole; parts that make no
    whole run (other arguments, or too far apart in time) are named as such, never as a folder to pass."""
    from ais_layout import write_result, write_split_run

    from twins_pcpvt.common import ToolkitError
    from twins_pcpvt.results import SPLIT_RUN_SECONDS, find_output_folders

    stems = [f"ILSVRC2012_val_{index:08d}" for index in range(1, 5)]
    logits = np.random.default_rng(4).standard_normal((4, NUM_CLASSES)).astype(np.float32)
    out = tmp_path / "result"
    run1 = write_split_run(out, stems, logits, "2023", ("2024_06_01-10_00_00", "2024_06_01-10_00_01"))
    run2 = write_split_run(out, stems, logits, "2023", ("2024_06_01-11_00_00", "2024_06_01-11_00_03"))
    whole = write_result(out, stems, logits, name="2024_06_01-12_00_00")
    with pytest.raises(ToolkitError) as caught:
        find_output_folders(out)
    message = str(caught.value)
    assert message.startswith(f"{out}: holds 5 output folders (3 runs); pass the one to read: ")
    assert f"{run1[0]} + {run1[1]} (one run split over 2 time-stamp folders" in message
    assert f"{run2[0]} + {run2[1]} (one run split" in message and str(whole) in message
    assert "not whole runs" not in message
    assert find_output_folders(run2[1]) == run2

    far = tmp_path / "far"  # parts further apart than one run's device processes stamp their folders
    late = f"2024_06_01-10_{SPLIT_RUN_SECONDS // 60 + 1:02d}_00"
    parts = write_split_run(far, stems, logits, "2024-divided", ("2024_06_01-10_00_00", late))
    other = tmp_path / "other"  # device 0 of one command line, device 1 of another, a second apart

    shutil.rmtree(write_split_run(other, stems, logits, "2024-divided", model="a.om")[1])
    stamps = ("2024_06_01-09_59_59", "2024_06_01-10_00_01")
    shutil.rmtree(write_split_run(other, stems, logits, "2024-divided", stamps, model="b.om")[0])
    for parent, count in ((far, 2), (other, 2)):
        with pytest.raises(ToolkitError, match="no whole run in the folder") as caught:
            find_output_folders(parent)
        assert str(caught.value).count("which split the images over the devices") == count
        with pytest.raises(
            ToolkitError, match=r"holds only device0_0 of a run over --device 0,1 .* device1_1 "
        ):
            load_outputs(parts[0] if parent == far else other / "2024_06_01-10_00_00")
