"""Runtime faults are never results: a non-finite logit from a finite input is recomputed once after a fresh
build where the backend has one (OpenVINO), else stops in one line naming the inputs; a non-finite input is
named as the cause. Every backend and every path (local, devices, Ray, the agreement check) goes through the
one check in `Runner.infer`.

The doubles: `_StreamRunner` (no runtime; chosen rows of chosen builds return NaN) and `standins/ov_faults.py`
(the real OpenVINO, chosen compiles returning NaN from chosen infer requests, in this process or, through
`standins/site/`, in the processes a run starts).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from standins import ov_faults

import twins_pcpvt.agreement as agreement
import twins_pcpvt_s_infer as infer_script
from twins_pcpvt.backends.base import Runner
from twins_pcpvt.common import NUM_CLASSES, ToolkitError, UsageError
from twins_pcpvt.infer.local import run_folder, run_pure
from twins_pcpvt.infer.record import RunRecord

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "test" / "standins" / "site"
POISONED_CLASS = 7  # the class whose head bias is NaN in the poisoned models
RUN_TIME_LIMIT_S = 300


class _StreamRunner(Runner):
    """A runner without a runtime: logits are each row's mean; the rows in `nan_rows` of the builds in
    `broken_builds` (from 1; None: every build) are NaN, like a broken OpenVINO stream."""

    name = "double"

    def __init__(self, *, broken_builds=(1,), nan_rows=(2, 3), rebuilds=True, nan_batches=None):
        super().__init__("model.double", device="cpu", precision="fp32")
        self.broken_builds, self.nan_rows, self.rebuilds = broken_builds, nan_rows, rebuilds
        self.nan_batches = nan_batches  # only these calls of _run (from 1) are broken; None: all of them
        self.builds, self.calls = 0, 0

    def _load(self):
        self.builds += 1
        self.input_shape = (None, 3, 224, 224)

    def _run(self, batch):
        self.calls += 1
        self.last_compute_ms = 1.0
        logits = np.repeat(batch.reshape(len(batch), -1).mean(axis=1, keepdims=True), NUM_CLASSES, axis=1)
        broken = self.broken_builds is None or self.builds in self.broken_builds
        if broken and (self.nan_batches is None or self.calls in self.nan_batches):
            logits[[row for row in self.nan_rows if row < len(batch)]] = np.nan
        return logits

    def _rebuild(self):
        if not self.rebuilds:
            return None
        self._load()
        return "a fresh compile"

    def _close(self):
        pass


def finite_batch(count: int) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((count, 3, 224, 224), dtype=np.float32)


NAMES = [f"prep/img{index}.bin" for index in range(4)]


# ---- the check itself --------------------------------------------------------------------------------------
def test_a_broken_build_is_rebuilt_and_the_batch_recomputed_once():
    with _StreamRunner() as runner:
        logits = runner.infer(finite_batch(4), NAMES)
        assert np.isfinite(logits).all() and runner.builds == 2 and runner.calls == 2
        (reason,) = runner.recomputed
        assert "prep/img2.bin, prep/img3.bin" in reason and "prep/img0.bin" not in reason
        assert "recomputed after a fresh compile: finite" in reason
        runner.infer(finite_batch(4), NAMES)  # the rebuilt model is fine: nothing more recomputed
        assert len(runner.recomputed) == 1 and runner.calls == 3


def test_a_fault_that_survives_the_rebuild_stops_naming_its_inputs():
    with _StreamRunner(broken_builds=None) as runner, pytest.raises(ToolkitError) as caught:
        runner.infer(finite_batch(4), NAMES)
    message = str(caught.value)
    assert "\n" not in message and "model.double" in message
    assert "non-finite logits for the finite inputs prep/img2.bin, prep/img3.bin" in message
    assert "also after a fresh compile" in message and "not a result" in message
    assert runner.builds == 2 and not runner.recomputed


def test_a_backend_that_cannot_rebuild_stops_at_the_first_fault():
    with _StreamRunner(rebuilds=False) as runner, pytest.raises(ToolkitError) as caught:
        runner.infer(finite_batch(4), NAMES)
    assert "prep/img2.bin, prep/img3.bin: a fault of the runtime or the model" in str(caught.value)
    assert runner.calls == 1 and runner.builds == 1


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_a_nonfinite_input_is_named_as_the_cause_not_the_runtime(value):
    batch = finite_batch(4)
    batch[1, 2, 100, 7] = value
    with _StreamRunner(broken_builds=()) as runner, pytest.raises(ToolkitError) as caught:
        runner.infer(batch, NAMES)  # a sound model: the input alone spoils its row's mean
    message = str(caught.value)
    assert message.startswith("prep/img1.bin: the input holds 1 NaN or infinite values")
    assert "the input is the cause, not the runtime" in message
    assert runner.builds == 1 and not runner.recomputed  # no rebuild for a bad input


def test_random_pure_data_may_be_nonfinite_but_its_finite_rows_are_still_checked():
    batch = finite_batch(4)
    batch[0, 0, 0, 0] = np.nan
    with _StreamRunner(broken_builds=()) as runner:  # row 0's mean is NaN: its logits too
        logits = runner.infer(batch, nonfinite_inputs=True)
        assert np.isnan(logits[0]).all() and np.isfinite(logits[1:]).all() and not runner.recomputed
    with _StreamRunner(nan_rows=(3,)) as runner:
        logits = runner.infer(batch, nonfinite_inputs=True)
        assert np.isfinite(logits[3]).all()
        assert runner.recomputed == [
            "double (fp32) returned non-finite logits for the finite inputs row 3 of the batch; "
            "recomputed after a fresh compile: finite"
        ]


def test_names_are_bounded_and_a_padding_row_names_the_first_input():
    class Static(_StreamRunner):
        def _load(self):
            super()._load()
            self.input_shape = (4, 3, 224, 224)

    with Static(broken_builds=None, nan_rows=(1, 3)) as runner, pytest.raises(ToolkitError) as caught:
        runner.infer(finite_batch(2), NAMES[:2])  # padded to 4: row 3 repeats row 0
    assert "finite inputs prep/img1.bin, prep/img0.bin, also after" in str(caught.value)
    many = [f"f{index}.bin" for index in range(12)]
    runner = _StreamRunner(broken_builds=None, nan_rows=range(12))
    with runner, pytest.raises(ToolkitError) as caught:
        runner.infer(finite_batch(12), many)
    assert "f0.bin, f1.bin, f2.bin, f3.bin, f4.bin, f5.bin, f6.bin, f7.bin and 4 more," in str(caught.value)


# ---- counted in the run's summary and console --------------------------------------------------------------
def test_the_folder_run_counts_recomputed_batches_in_its_summary_and_console(make_bin_folder, tmp_path):
    folder, stems, _ = make_bin_folder(6)
    files = sorted(folder.iterdir())
    with _StreamRunner(nan_batches={3}, nan_rows=(1,)) as runner:  # the warm-up and batch 1 run first
        record = run_folder(
            runner, files, batch_size=2, output_folder=tmp_path / "out", warmup_count=1, progress=False
        )
        summary = record.summary(runner.describe(), runner.model_path, ["infer"])
        lines = record.report_lines(runner.describe(), runner.model_path)
    assert summary["recomputed_batches"] == 1
    (reason,) = summary["recomputed"]
    assert str(files[3]) in reason and str(files[2]) not in reason
    assert "[WARN] batches recomputed after non-finite logits: 1" in lines
    assert f"[WARN]   {reason}" in lines
    outputs = [np.fromfile(tmp_path / "out" / f"{stem}_0.bin", "<f4") for stem in stems]
    assert all(np.isfinite(output).all() for output in outputs)


def test_a_run_without_faults_says_none_were_recomputed():
    with _StreamRunner(broken_builds=()) as runner:
        record = run_pure(runner, batch_size=2, loop=3, progress=False)
        ran, model = runner.describe(), runner.model_path
        assert record.summary(ran, model, [])["recomputed_batches"] == 0
        assert "[INFO] batches recomputed after non-finite logits: 0" in record.report_lines(ran, model)


def test_console_lists_at_most_ten_reasons_and_the_summary_all():
    record = RunRecord(batch_size=1, recomputed=[f"reason {index}" for index in range(12)])
    with _StreamRunner(broken_builds=()) as runner:
        lines = record.report_lines(runner.describe(), runner.model_path)
        assert len(record.summary(runner.describe(), runner.model_path, [])["recomputed"]) == 12
    assert "[WARN]   reason 9" in lines and "[WARN]   reason 10" not in lines
    assert "[WARN]   and 2 more (in the summary)" in lines


# ---- real runtimes -----------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def poisoned_models(onnx_path, checkpoint_path, tmp_path_factory):
    """The random model with one NaN in its head's bias (every image's logit POISONED_CLASS is NaN): a model
    fault, as each backend reads it ({backend: model file})."""
    import onnx
    import torch
    from onnx import numpy_helper
    from standins.fixtures import OM_BATCH
    from standins.static_onnx import static_copy

    folder = tmp_path_factory.mktemp("poisoned")
    model = onnx.load(str(onnx_path))
    (bias,) = (tensor for tensor in model.graph.initializer if tensor.name == "head.bias")
    values = numpy_helper.to_array(bias).copy()
    values[POISONED_CLASS] = np.nan
    bias.CopyFrom(numpy_helper.from_array(values, "head.bias"))
    onnx.save(model, str(folder / "poisoned.onnx"))
    state = torch.load(checkpoint_path, weights_only=True)
    state["head.bias"][POISONED_CLASS] = float("nan")
    torch.save(state, folder / "poisoned.pth")
    om = static_copy(folder / "poisoned.onnx", folder / f"poisoned_bs{OM_BATCH}.om", OM_BATCH)
    return {
        "onnxruntime": folder / "poisoned.onnx",
        "openvino": folder / "poisoned.onnx",
        "torch": folder / "poisoned.pth",
        "ais": om,
    }


def infer(*argv) -> int:
    return infer_script.main([*map(str, argv), "--no-progress"])


def one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("error")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "torch", "ais"])
def test_every_backend_stops_on_a_model_fault_naming_the_inputs(
    backend, poisoned_models, make_bin_folder, tmp_path, capsys, request
):
    if backend == "ais":
        request.getfixturevalue("ais_standin")
    folder, stems, _ = make_bin_folder(3)
    argv = ["--model", poisoned_models[backend], "--backend", backend, "--input", folder]
    argv += ["--output", tmp_path / "out", "--output_dirname", "x", "--batchsize", 2]
    assert infer(*argv) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "returned non-finite logits for the finite inputs" in line and "not a result" in line
    assert f"{folder / stems[0]}.bin, {folder / stems[1]}.bin" in line
    assert ("also after a fresh compile" in line) == (backend == "openvino")
    assert not (tmp_path / "out" / "x_summary.json").exists()
    assert not list((tmp_path / "out").rglob("*_0.bin"))


@pytest.mark.slow
def test_one_nan_pixel_in_an_input_file_is_named_as_the_cause(onnx_path, make_bin_folder, tmp_path, capsys):
    folder, stems, batch = make_bin_folder(3)
    batch[2, 1, 50, 60] = np.nan
    batch[2].astype("<f4").tofile(folder / f"{stems[2]}.bin")
    argv = ["--model", onnx_path, "--backend", "onnxruntime", "--input", folder, "--batchsize", 2]
    assert infer(*argv, "--output", tmp_path / "out", "--output_dirname", "x") == 1
    line = one_error_line(capsys.readouterr().err)
    assert f"{folder / stems[2]}.bin: the input holds 1 NaN or infinite values" in line
    assert "the input is the cause" in line and "of 3 outputs were written" in line


OV_FP32_BATCH4 = ["--backend", "openvino", "--precision", "fp32", "--batchsize", 4]


@pytest.mark.slow
def test_openvino_broken_stream_is_compiled_afresh_and_the_run_says_so(
    onnx_path, make_bin_folder, torch_logits, tmp_path, capsys, monkeypatch
):
    folder, stems, batch = make_bin_folder(6)
    ov_faults.install({1}, {0, 1}, patch=monkeypatch.setattr)  # the first compile's requests give NaN
    argv = ["--model", onnx_path, *OV_FP32_BATCH4, "--input", folder, "--output", tmp_path / "out"]
    assert infer(*argv, "--output_dirname", "x") == 0
    out = capsys.readouterr().out
    assert ov_faults.compiles_made == 2
    outputs = np.stack([np.fromfile(tmp_path / "out" / "x" / f"{stem}_0.bin", "<f4") for stem in stems])
    assert float(np.abs(outputs - torch_logits(batch)).max()) <= 1e-4
    summary = json.loads((tmp_path / "out" / "x_summary.json").read_text())
    assert summary["recomputed_batches"] == 1
    (reason,) = summary["recomputed"]
    assert reason.startswith("OpenVINO (fp32) returned non-finite logits for the finite inputs")
    assert ", ".join(str(folder / f"{stem}.bin") for stem in stems[:4]) in reason  # the warm-up batch
    assert "[WARN] batches recomputed after non-finite logits: 1" in out and reason in out


@pytest.mark.slow
def test_openvino_fault_that_a_fresh_compile_keeps_stops_naming_the_inputs(
    onnx_path, make_bin_folder, tmp_path, capsys, monkeypatch
):
    folder, stems, _ = make_bin_folder(5)
    ov_faults.install(ov_faults.ALL, {0, 1}, patch=monkeypatch.setattr)
    argv = ["--model", onnx_path, *OV_FP32_BATCH4, "--input", folder, "--output", tmp_path / "out"]
    assert infer(*argv, "--output_dirname", "x") == 1
    line = one_error_line(capsys.readouterr().err)
    assert "also after a fresh compile: a fault of the runtime or the model, not a result" in line
    named = ", ".join(str(folder / f"{stem}.bin") for stem in stems[:4])
    assert f"inputs {named}, also" in line and "0 of 5 outputs were written" in line
    assert not list((tmp_path / "out").rglob("*_0.bin"))


@pytest.mark.slow
def test_the_agreement_check_recomputes_and_stops_like_the_runner(
    onnx_path, make_bin_folder, capsys, monkeypatch
):
    folder, stems, _ = make_bin_folder(4)
    argv = ["--model", str(onnx_path), "--input", str(folder), "--backend", "openvino", "--batchsize", "2"]
    ov_faults.install({1}, {0, 1}, patch=monkeypatch.setattr)
    assert agreement.main([*argv, "--runtimes", "openvino,onnxruntime"]) == 0
    captured = capsys.readouterr()
    assert "[WARN] openvino fp32: OpenVINO (fp32) returned non-finite logits" in captured.err
    assert "openvino fp32: the reference" in captured.out
    ov_faults.install(ov_faults.ALL, {0, 1}, patch=monkeypatch.setattr)
    assert agreement.main(argv) == 1
    line = one_error_line(capsys.readouterr().err)
    assert f"{folder / stems[0]}.bin, {folder / stems[1]}.bin, also after a fresh compile" in line


@pytest.mark.slow
def test_every_device_worker_stops_on_a_model_fault_naming_the_inputs(
    poisoned_models, make_bin_folder, tmp_path, capsys, ais_standin
):
    folder, stems, _ = make_bin_folder(4)
    argv = ["--model", poisoned_models["ais"], "--input", folder, "--output", tmp_path / "out"]
    assert infer(*argv, "--output_dirname", "x", "--device", "0,1", "--batchsize", 2) == 1
    line = one_error_line(capsys.readouterr().err)
    assert line.count("returned non-finite logits for the finite inputs") == 2
    for device, first in (("0", 0), ("1", 2)):
        assert f"device {device}: " in line and f"{folder / stems[first]}.bin" in line
    assert not list((tmp_path / "out").rglob("*_0.bin"))


def _ray_engine(model, folder, output, nan: str) -> subprocess.CompletedProcess:
    from test_ray import run_engine

    env = {
        ov_faults.ENV: nan,
        "PYTHONPATH": os.pathsep.join([str(SITE), str(ROOT)]),
    }
    return run_engine(
        "--model", model, *OV_FP32_BATCH4[:4], "--batchsize", 2, "--input", folder,
        "--output", output, "--output_dirname", "run", env=env,
    )  # fmt: skip


@pytest.mark.slow
def test_ray_actors_recompile_a_broken_stream_and_stop_on_a_lasting_fault(
    onnx_path, make_bin_folder, torch_logits, tmp_path
):
    pytest.importorskip("ray")
    folder, stems, batch = make_bin_folder(5)
    # every process's first compile is broken: the engine's own load check in the driver, and each actor's
    done = _ray_engine(onnx_path, folder, tmp_path / "ok", "1:0,1")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "ok" / "run_summary.json").read_text())
    assert summary["recomputed_batches"] == 1 and "OpenVINO (fp32)" in summary["recomputed"][0]
    assert "[WARN] batches recomputed after non-finite logits: 1" in done.stdout
    outputs = np.stack([np.fromfile(tmp_path / "ok" / "run" / f"{stem}_0.bin", "<f4") for stem in stems])
    assert float(np.abs(outputs - torch_logits(batch)).max()) <= 1e-4

    done = _ray_engine(onnx_path, folder, tmp_path / "bad", "all:0")
    assert done.returncode == 1
    line = one_error_line(done.stderr)
    assert "the Ray job failed: " in line and "also after a fresh compile" in line
    assert str(folder / f"{stems[0]}.bin") in line
    assert not list((tmp_path / "bad").rglob("*_0.bin"))


def test_the_site_double_is_installed_only_when_asked():
    code = "import openvino as ov, sys; sys.stdout.write(ov.Core.compile_model.__module__)"
    env = os.environ | {"PYTHONPATH": str(SITE)}
    plain = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    doubled = subprocess.run(
        [sys.executable, "-c", code], env=env | {ov_faults.ENV: "1:0"}, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert plain.stdout != "ov_faults" and doubled.stdout == "ov_faults", doubled.stderr


# ---- bench/ov_streams.py: counting broken compiles ---------------------------------------------------------
def test_ov_streams_configurations_parse_and_bad_ones_are_usage_errors():
    from bench import ov_streams

    spec = ov_streams.parse_config("tput2-f32-b4")
    assert (spec["requests"], spec["chunk"], spec["config"]["NUM_STREAMS"]) == (2, 2, 2)
    assert ov_streams.parse_config("lat1-bf16-b1")["config"]["PERFORMANCE_HINT"] == "LATENCY"
    for bad in ("tput3-f32-b4", "lat1-f64-b1", "tput2-f32-b3", "tput2-f32", "x"):
        with pytest.raises(UsageError):
            ov_streams.parse_config(bad)


@pytest.mark.slow
def test_ov_streams_counts_broken_compiles_of_fresh_processes(onnx_path, tmp_path, monkeypatch):
    from bench import ov_streams

    monkeypatch.setenv(ov_faults.ENV, "1:1")  # in each process, the first compile's second request
    monkeypatch.setenv("PYTHONPATH", str(SITE))
    out = tmp_path / "ov.json"
    argv = ["--model", str(onnx_path), "--configs", "tput2-f32-b2", "--processes", "2", "--out", str(out)]
    assert ov_streams.main(argv) == 0
    report = json.loads(out.read_text())
    assert report["errors"] == [] and report["machine"]["cpu_flags"] is not None
    assert {key: value for key, value in report["faults"]["tput2-f32-b2"].items() if key != "settings"} == {
        "processes": 2,
        "broken_first_compiles": 2,
        "later_compiles": 2,
        "broken_later_compiles": 0,
        "broken_processes_recovered_by_recompile": 2,
        "broken_requests_seen": [1],
    }
