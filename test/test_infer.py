"""twins_pcpvt_s_infer.py end to end: ais_bench's layout and summary, each backend's outputs, bad inputs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from ais_layout import read_outputs
from standins.fixtures import OM_BATCH

import twins_pcpvt_s_infer as infer_script
from twins_pcpvt.backends import available_backends
from twins_pcpvt.backends.base import Runner
from twins_pcpvt.common import NUM_CLASSES, OUTPUT_BYTES
from twins_pcpvt.infer.local import run_folder

SUMMARY_STATS = {"min", "max", "mean", "median", "percentile(99%)", "count"}


def run(*argv) -> int:
    return infer_script.main([*map(str, argv), "--no-progress"])


def every_file(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file()) if folder.exists() else []


@pytest.mark.slow
def test_seven_inputs_at_batch_four_give_seven_outputs(
    onnx_path, make_bin_folder, torch_logits, tmp_path, capsys
):
    folder, stems, batch = make_bin_folder(7)
    output = tmp_path / "result"
    assert (
        run(
            "--model",
            onnx_path,
            "--backend",
            "onnxruntime",
            "--input",
            folder,
            "--output",
            output,
            "--outfmt",
            "BIN",
            "--batchsize",
            4,
        )
        == 0
    )
    out = capsys.readouterr().out
    (result,) = [path for path in output.iterdir() if path.is_dir()]
    assert re.fullmatch(r"\d{4}_\d\d_\d\d-\d\d_\d\d_\d\d", result.name)
    names = sorted(path.name for path in result.iterdir())
    assert names == sorted(f"{stem}_0.bin" for stem in stems)
    assert all(path.stat().st_size == OUTPUT_BYTES for path in result.iterdir())
    logits = np.stack([np.fromfile(result / f"{stem}_0.bin", dtype="<f4") for stem in stems])
    assert float(np.abs(logits - torch_logits(batch)).max()) <= 1e-4

    summary = json.loads((output / f"{result.name}_summary.json").read_text())
    compute = summary["NPU_compute_time"]
    assert set(compute) == SUMMARY_STATS and compute["count"] == 2
    assert summary["throughput"] == pytest.approx(1000 * 4 / compute["mean"])
    for copies in ("H2D_latency", "D2H_latency"):  # ONNX Runtime on CPU has no copies: zeros, count 0
        assert summary[copies] == dict.fromkeys(SUMMARY_STATS, 0.0) | {"count": 0}
    assert sorted(summary["filesinfo"], key=int) == [str(i) for i in range(7)]
    assert summary["filesinfo"]["6"] == {
        "infiles": [str(folder / f"{stems[6]}.bin")],
        "outfiles": [str(result / f"{stems[6]}_0.bin")],
    }
    assert (summary["backend"], summary["device"], summary["precision"]) == ("onnxruntime", "cpu", "fp32")
    assert summary["model"] == str(onnx_path) and summary["batchsize"] == 4
    assert summary["images"] == 7 and summary["padded_images"] == 1
    assert summary["end_to_end_images_per_second"] > 0
    assert summary["args"][1:] == [
        "--model",
        str(onnx_path),
        "--backend",
        "onnxruntime",
        "--input",
        str(folder),
        "--output",
        str(output),
        "--outfmt",
        "BIN",
        "--batchsize",
        "4",
        "--no-progress",
    ]
    assert f"throughput 1000*batchsize.mean(4)/NPU_compute_time.mean({compute['mean']}): " in out


def test_npy_from_a_checkpoint_and_txt_outputs_read_back(
    checkpoint_path, onnx_path, make_bin_folder, torch_logits, tmp_path
):
    folder, stems, batch = make_bin_folder(2)
    expected = torch_logits(batch)
    for fmt, model, backend in (("NPY", checkpoint_path, "torch"), ("TXT", onnx_path, "onnxruntime")):
        output = tmp_path / fmt
        assert (
            run(
                "--model",
                model,
                "--backend",
                backend,
                "--input",
                folder,
                "--output",
                output,
                "--output_dirname",
                "run",
                "--outfmt",
                fmt.lower(),
                "--batchsize",
                2,
                "--precision",
                "fp32",
            )
            == 0
        )
        files = sorted((output / "run").iterdir())
        assert [path.name for path in files] == [f"{stem}_0.{fmt.lower()}" for stem in stems]
        summary = json.loads((output / "run_summary.json").read_text())
        assert summary["backend"] == backend and summary["precision"] == "fp32"
        read = read_outputs(output)  # the postprocess reads our outputs as it reads ais_bench's
        assert float(np.abs(np.stack([read[stem] for stem in stems]) - expected).max()) <= 1e-4
    saved = np.load(tmp_path / "NPY" / "run" / f"{stems[0]}_0.npy")
    assert saved.shape == (1, NUM_CLASSES) and saved.dtype == np.float32  # as ais_bench splits a batch
    text = (tmp_path / "TXT" / "run" / f"{stems[0]}_0.txt").read_text()
    assert text.endswith(" \n") and text.count("\n") == 1 and len(text.split()) == NUM_CLASSES
    assert re.fullmatch(r"(-?\d+\.\d{6} ){1000}\n", text)


@pytest.mark.slow
def test_auto_backend_on_onnx_and_mixed_inputs(onnx_path, make_bin_folder, torch_logits, tmp_path):
    folder, stems, batch = make_bin_folder(3)
    np.save(folder / "extra.npy", batch[0])  # .npy inputs mix with .bin ones
    loose = tmp_path / "loose.bin"
    batch[1].tofile(loose)
    output = tmp_path / "result"
    assert (
        run(
            "--model",
            onnx_path,
            "--input",
            f"{folder},{loose}",
            "--output",
            output,
            "--output_dirname",
            "auto",
            "--batchsize",
            2,
            "--precision",
            "fp32",
        )
        == 0
    )
    summary = json.loads((output / "auto_summary.json").read_text())
    fastest = "openvino" if "openvino" in available_backends() else "onnxruntime"
    assert summary["backend"] == fastest and summary["precision"] == "fp32"
    assert summary["images"] == 5 and summary["NPU_compute_time"]["count"] == 3
    read = read_outputs(output / "auto")
    assert sorted(read) == sorted([*stems, "extra", "loose"])
    got = np.stack([read[stem] for stem in [*stems, "extra", "loose"]])
    want = torch_logits(np.concatenate([batch, batch[:2]]))
    assert float(np.abs(got - want).max()) <= 1e-4


def test_om_through_the_real_ais_bench(om_path, make_bin_folder, torch_logits, tmp_path, ais_standin, capsys):
    folder, stems, batch = make_bin_folder(3)
    output = tmp_path / "result"
    assert run("--model", om_path, "--input", folder, "--output", output, "--output_dirname", "om") == 0
    summary = json.loads((output / "om_summary.json").read_text())
    assert (summary["backend"], summary["device"], summary["precision"]) == ("ais", "npu:0", "om")
    assert summary["batchsize"] == OM_BATCH and summary["NPU_compute_time"]["count"] == 2
    read = read_outputs(output / "om")
    assert float(np.abs(np.stack([read[s] for s in stems]) - torch_logits(batch)).max()) <= 1e-4
    capsys.readouterr()
    assert run("--model", om_path, "--input", folder, "--output", tmp_path / "other", "--batchsize", 4) == 2
    assert f"takes batches of exactly {OM_BATCH}; --batchsize 4" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


@pytest.mark.slow
def test_pure_inference_writes_what_ais_bench_writes(onnx_path, tmp_path, capsys):
    """Zero input by default, `pure_infer_data_0.<fmt>` holding the whole batch's output, summary beside."""
    output = tmp_path / "perf"
    argv = [
        "--model",
        onnx_path,
        "--backend",
        "onnxruntime",
        "--output",
        output,
        "--output_dirname",
        "bs2",
        "--loop",
        3,
        "--batchsize",
        2,
        "--warmup_count",
        1,
    ]
    assert run(*argv) == 0
    assert sorted(path.name for path in output.iterdir() if not path.name.startswith(".")) == [
        "bs2",
        "bs2_summary.json",
    ]
    summary = json.loads((output / "bs2_summary.json").read_text())
    saved = output / "bs2" / "pure_infer_data_0.bin"
    assert summary["filesinfo"] == {"0": {"infiles": ["pure_infer_data"], "outfiles": [str(saved)]}}
    assert summary["NPU_compute_time"]["count"] == 3
    assert summary["throughput"] == pytest.approx(2000 / summary["NPU_compute_time"]["mean"])
    out = capsys.readouterr().out
    assert "NPU_compute_time (ms): min = " in out and "H2D_latency" not in out
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (zero_logits,) = session.run(None, {"input": np.zeros((2, 3, 224, 224), np.float32)})
    assert np.allclose(np.fromfile(saved, "<f4").reshape(2, NUM_CLASSES), zero_logits, atol=1e-4)

    assert (
        run(
            *argv[:6],
            "--output_dirname",
            "rnd",
            "--batchsize",
            2,
            "--pure_data_type",
            "random",
            "--display_all_summary",
            "true",
        )
        == 0
    )
    assert "H2D_latency (ms)" in capsys.readouterr().out
    assert (output / "rnd" / "pure_infer_data_0.bin").stat().st_size == 2 * OUTPUT_BYTES


def test_output_names_follow_the_first_dot_as_ais_bench_names_them(onnx_path, tmp_path, capsys):
    folder = tmp_path / "prep"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for name in ("a.v2.bin", "b.bin"):
        rng.standard_normal((3, 224, 224), dtype=np.float32).tofile(folder / name)
    assert (
        run(
            "--model",
            onnx_path,
            "--backend",
            "onnxruntime",
            "--input",
            folder,
            "--output",
            tmp_path / "o",
            "--output_dirname",
            "x",
        )
        == 0
    )
    assert sorted(path.name for path in (tmp_path / "o" / "x").iterdir()) == ["a_0.bin", "b_0.bin"]
    rng.standard_normal((3, 224, 224), dtype=np.float32).tofile(folder / "a.v3.bin")
    assert run("--model", onnx_path, "--input", folder, "--output", tmp_path / "p") == 1
    assert "a.v3.bin: its outputs would be named a_0 like those of" in capsys.readouterr().err


def test_output_folder_is_guarded(onnx_path, make_bin_folder, tmp_path, capsys):
    """Earlier outputs of the runner are replaced with a notice; anything else, or the input folder, is
    refused."""
    folder, stems, _ = make_bin_folder(2)
    base = ["--model", onnx_path, "--backend", "onnxruntime", "--input", folder]
    output = tmp_path / "result"
    assert run(*base, "--output", output, "--output_dirname", "x", "--batchsize", 2) == 0
    (output / "x" / "ILSVRC2012_val_00000099_0.bin").write_bytes(b"\0" * OUTPUT_BYTES)  # a stale output
    capsys.readouterr()
    assert run(*base, "--output", output, "--output_dirname", "x", "--batchsize", 2) == 0
    assert "removed the 3 files of an earlier run" in capsys.readouterr().err
    assert sorted(path.name for path in (output / "x").iterdir()) == [f"{stem}_0.bin" for stem in stems]
    notes = output / "x" / "notes.txt"
    notes.write_text("mine")
    for argv, message in (
        (["--output", output, "--output_dirname", "x"], "holds files this runner did not write"),
        (["--output", folder], "is, or is inside, the input folder"),
        (["--output", folder.parent, "--output_dirname", folder.name], "is, or is inside, the input folder"),
        (["--output_dirname", "x"], "--output_dirname cannot be used alone"),
    ):
        assert run(*base, *argv) in (1, 2), argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert notes.read_text() == "mine" and sorted(p.name for p in folder.iterdir()) == [
        f"{s}.bin" for s in stems
    ]


@pytest.mark.parametrize("layout", ["files_in_output", "another_tools_results", "named_like_outputs"])
def test_a_folder_the_runner_did_not_make_is_never_emptied(
    layout, onnx_path, make_bin_folder, tmp_path, capsys
):
    folder, stems, _ = make_bin_folder(2)
    target = tmp_path / "out" / "run"
    target.mkdir(parents=True)
    if layout == "files_in_output":  # the inputs are files inside the output folder, named like outputs
        inputs = []
        for index, stem in enumerate(stems):
            moved = target / f"frame_{index + 1}.bin"
            (folder / f"{stem}.bin").rename(moved)
            inputs.append(str(moved))
        argv = ["--input", ",".join(inputs)]
        message, expected = "holds the input file", 2  # an output naming an input: bad usage (docs/cli.md)
    else:
        (target / f"{stems[0]}_0.bin").write_bytes(b"\1" * OUTPUT_BYTES)  # e.g. ais_bench's own results
        if layout == "another_tools_results":
            (tmp_path / "out" / "run_summary.json").write_text('{"throughput": 1.0}')
        argv = ["--input", str(folder)]
        message, expected = "holds files this runner did not write", 1
    before = {path.name: path.read_bytes() for path in target.iterdir()}
    summary_before = [path.read_bytes() for path in (tmp_path / "out").glob("*_summary.json")]
    status = run(
        "--model",
        onnx_path,
        "--backend",
        "onnxruntime",
        *argv,
        "--output",
        tmp_path / "out",
        "--output_dirname",
        "run",
    )
    err = capsys.readouterr().err
    assert status == expected and message in err and err.count("\n") == 1, err
    assert {path.name: path.read_bytes() for path in target.iterdir()} == before
    assert [path.read_bytes() for path in (tmp_path / "out").glob("*_summary.json")] == summary_before


def test_a_rerun_removes_the_earlier_summary_with_the_outputs(onnx_path, make_bin_folder, tmp_path, capsys):
    folder, _, _ = make_bin_folder(1)
    base = [
        "--model",
        onnx_path,
        "--backend",
        "onnxruntime",
        "--output",
        tmp_path / "o",
        "--output_dirname",
        "r",
    ]
    assert run(*base, "--input", folder) == 0
    assert (tmp_path / "o" / "r_summary.json").is_file()
    (folder / "ILSVRC2012_val_00000001.bin").unlink()
    (folder / "other.bin").write_bytes(b"\0" * 602112)
    assert run(*base, "--input", folder) == 0
    assert sorted(path.name for path in (tmp_path / "o" / "r").iterdir()) == ["other_0.bin"]


def test_an_input_that_vanishes_during_the_run_is_one_line(tmp_path):
    from twins_pcpvt.common import ToolkitError
    from twins_pcpvt.infer.inputs import read_input

    out = np.empty((3, 224, 224), np.float32)
    with pytest.raises(ToolkitError, match="gone.bin: cannot read the tensor"):
        read_input(tmp_path / "gone.bin", out)


def test_truncated_npy_and_oversized_batches_fail_in_one_line(onnx_path, make_bin_folder, tmp_path, capsys):
    folder, _, batch = make_bin_folder(1)
    whole = folder / "whole.npy"
    np.save(whole, batch[0])
    data = whole.read_bytes()
    (folder / "cut.npy").write_bytes(data[: len(data) - 100])
    assert run("--model", onnx_path, "--input", folder, "--output", tmp_path / "o") == 1
    err = capsys.readouterr().err
    assert f"{folder / 'cut.npy'}: truncated or padded .npy file" in err and err.count("\n") == 1
    (folder / "cut.npy").unlink()
    assert run("--model", onnx_path, "--input", folder, "--batchsize", 10**7) == 1
    err = capsys.readouterr().err
    assert "--batchsize 10000000 needs" in err and "of memory available" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--profiler", "true"], "--profiler True: an NPU feature of ais_bench"),
        (["--aipp_config", "a.config"], "--aipp_config a.config: an NPU feature"),
        (["--dymShape", "input:1,3,224,224"], "--dymShape input:1,3,224,224: an NPU feature"),
        (["--run_mode", "tensor"], "--run_mode tensor: an NPU feature"),
        (["--backend", "trtexec"], "--backend trtexec is ais_bench 2024's TensorRT benchmark"),
        (["--batchsize", 2, "--dymBatch", 4], "--batchsize 2 and --dymBatch 4 disagree"),
    ],
)
def test_npu_only_flags_are_refused_in_one_line(flags, message, onnx_path, capsys):
    assert run("--model", onnx_path, *flags) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_ais_bench_spellings_and_dymbatch(onnx_path, static_onnx_path, make_bin_folder, tmp_path, capsys):
    """-m -i -o -l -d, --warmup-count, --debug and --dymBatch on a dynamic-batch ONNX work as in ais_bench."""
    folder, stems, _ = make_bin_folder(3)
    output = tmp_path / "o"
    assert (
        run(
            "-m",
            onnx_path,
            "-i",
            folder,
            "-o",
            output,
            "-l",
            2,
            "-d",
            "cpu",
            "--warmup-count",
            0,
            "--dymBatch",
            2,
            "--debug",
            "true",
            "--output_dirname",
            "x",
            "--backend",
            "onnxruntime",
        )
        == 0
    )
    summary = json.loads((output / "x_summary.json").read_text())
    assert summary["batchsize"] == 2 and summary["NPU_compute_time"]["count"] == 4
    assert "[DEBUG] session info" in capsys.readouterr().err
    assert run("-m", static_onnx_path, "-i", folder, "--dymBatch", 2, "--backend", "onnxruntime") == 2
    assert "--dymBatch needs a dynamic-batch model" in capsys.readouterr().err


# ---- bad inputs: a clear error naming the file, a non-zero status, nothing written -------------------------
def _bad_npy(folder: Path, name: str, array: np.ndarray) -> Path:
    path = folder / name
    np.save(path, array)
    return path


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (
            lambda folder: (folder / "ILSVRC2012_val_00000002.bin").write_bytes(b"\0" * 1000),
            "1000 bytes, expected 602112",
        ),
        (
            lambda folder: _bad_npy(
                folder, "ILSVRC2012_val_00000009.npy", np.zeros((3, 224, 224), np.float64)
            ),
            "dtype float64, expected float32",
        ),
        (
            lambda folder: _bad_npy(
                folder, "ILSVRC2012_val_00000009.npy", np.zeros((3, 112, 112), np.float32)
            ),
            r"shape \(3, 112, 112\)",
        ),
    ],
    ids=["bin-size", "npy-dtype", "npy-shape"],
)
def test_a_bad_input_file_stops_the_run_before_inference(
    damage, reason, onnx_path, make_bin_folder, tmp_path, capsys
):
    folder, _, _ = make_bin_folder(3)
    damage(folder)
    output = tmp_path / "result"
    assert run("--model", onnx_path, "--backend", "onnxruntime", "--input", folder, "--output", output) == 1
    err = capsys.readouterr().err
    assert re.search(
        rf"error: {re.escape(str(folder))}/ILSVRC2012_val_0000000[29]\.(bin|npy): {reason}", err
    ), err
    assert every_file(output) == []


def test_usage_and_setup_errors(onnx_path, static_onnx_path, make_bin_folder, tmp_path, capsys):
    folder, _, _ = make_bin_folder(1)
    empty = tmp_path / "empty"
    empty.mkdir()
    a_file = tmp_path / "taken"
    a_file.write_text("not a folder")
    output = tmp_path / "result"
    cases = [
        (["--model", tmp_path / "missing.onnx", "--input", folder], 1, "missing.onnx: model file not found"),
        (["--model", onnx_path, "--input", empty], 1, f"{empty}: no .bin or .npy input files"),
        (
            ["--model", onnx_path, "--input", tmp_path / "nowhere"],
            1,
            "nowhere: input folder or file not found",
        ),
        (
            ["--model", onnx_path, "--backend", "onnxruntime", "--precision", "fp16", "--input", folder],
            2,
            "runs fp32, not fp16",
        ),
        (["--model", onnx_path, "--input", folder, "--output", a_file], 1, "taken: --output is a file"),
        (["--model", onnx_path, "--input", folder, "--device", "0"], 2, "a bare number is an NPU id"),
        (
            ["--model", static_onnx_path, "--backend", "onnxruntime", "--input", folder, "--batchsize", 2],
            2,
            "takes batches of exactly 4; --batchsize 2 does not fit",
        ),
        (["--model", onnx_path, "--input", folder, "--device", "cuda:0,cuda:0"], 2, "must be distinct"),
    ]
    for argv, status, message in cases:
        extra = [] if "--output" in argv else ["--output", output]
        assert run(*argv, *extra) == status, argv
        err = capsys.readouterr().err
        assert message in err, (argv, err)
    assert every_file(output) == []


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--backend", "tensorflow"], "invalid choice: 'tensorflow'"),
        (["--loop", "0"], "argument --loop/-l: must be a positive integer, got 0"),
        (["--batchsize", "-4"], "argument --batchsize: must be a positive integer, got -4"),
        (["--warmup_count", "x"], "argument --warmup_count/--warmup-count: 'x' is not an integer"),
        (["--dymBatch", "-1"], "argument --dymBatch: must not be negative, got -1"),
        (["--display_all_summary", "maybe"], "boolean value expected"),
    ],
)
def test_bad_values_are_refused_by_the_parser(onnx_path, capsys, argv, message):
    with pytest.raises(SystemExit) as caught:
        run("--model", onnx_path, *argv)
    err = capsys.readouterr().err
    assert caught.value.code == 2 and message in err and len(err.splitlines()) == 1, err


# ---- an interrupted run leaves only whole files ------------------------------------------------------------
class _InterruptedRunner(Runner):
    """Stands for a model that is stopped with Ctrl-C during its second batch."""

    name = "interrupted"

    def _load(self):
        self.input_shape = (None, 3, 224, 224)
        self.calls = 0

    def _run(self, batch):
        self.calls += 1
        if self.calls == 3:  # the warm-up run, the first batch, then Ctrl-C
            raise KeyboardInterrupt
        self.last_compute_ms = 1.0
        return np.ones((len(batch), NUM_CLASSES), dtype=np.float32)

    def _close(self):
        pass


def test_interrupted_run_leaves_only_complete_outputs(make_bin_folder, tmp_path, capsys):
    folder, stems, _ = make_bin_folder(7)
    output = tmp_path / "result" / "run"
    with _InterruptedRunner(tmp_path / "model", device="cpu", precision="fp32") as runner:
        with pytest.raises(KeyboardInterrupt):
            run_folder(
                runner,
                sorted(folder.iterdir()),
                batch_size=4,
                output_folder=output,
                fmt="BIN",
                progress=False,
            )
    written = every_file(output)
    assert [path.name for path in written] in ([], [f"{stem}_0.bin" for stem in stems[:4]])
    assert all(path.stat().st_size == OUTPUT_BYTES for path in written)  # no temporary or partial file
    assert f"interrupted: {len(written)} of 7 outputs were written" in capsys.readouterr().err
