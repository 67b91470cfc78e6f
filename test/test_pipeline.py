"""The folder mode's batches in flight (`Runner.infer_stream`): results in input order and equal to one batch
at a time, every batch checked for non-finite logits as `infer` checks it, a broken stream rebuilt while the
other batches in flight wait, and OpenVINO's streams each given whole batches.

The double `_AsyncRunner` computes when a batch is started and hands the logits back when it is finished, so
the order of starts and finishes is observable; `standins/ov_faults.py` breaks chosen requests of the real
OpenVINO.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from standins import ov_faults

import twins_pcpvt_s_infer as infer_script
from twins_pcpvt.backends.base import Runner
from twins_pcpvt.common import NUM_CLASSES, ToolkitError, usable_cpus


class _AsyncRunner(Runner):
    """Logits are each row's mean repeated; `in_flight` batches at once; the starts numbered in
    `nan_starts` (from 1) return NaN in every row, until a rebuild when `rebuild_cures`."""

    name = "async-double"

    def __init__(self, *, in_flight=2, nan_starts=(), rebuild_cures=True):
        super().__init__("model.double", device="cpu", precision="fp32")
        self.want_in_flight, self.nan_starts, self.rebuild_cures = in_flight, set(nan_starts), rebuild_cures
        self.starts, self.events, self.builds = 0, [], 0

    def _load(self):
        self.builds += 1
        self.input_shape = (None, 3, 224, 224)
        self.in_flight = self.want_in_flight

    @staticmethod
    def _logits(batch):
        return np.repeat(batch.reshape(len(batch), -1).mean(axis=1, keepdims=True), NUM_CLASSES, axis=1)

    def _run(self, batch):
        self.last_compute_ms = 1.0
        self.events.append("run")
        return self._logits(batch)

    def _start(self, batch):
        self.starts += 1
        self.events.append(f"start{self.starts}")
        logits = self._logits(batch)
        if self.starts in self.nan_starts and (self.builds == 1 or not self.rebuild_cures):
            logits[:] = np.nan
        return self.starts, logits

    def _finish(self, handle):
        number, logits = handle
        self.events.append(f"finish{number}")
        self.last_compute_ms = float(number)
        return logits

    def _rebuild(self):
        self.events.append("rebuild")
        self._load()
        return "a fresh compile"

    def _close(self):
        pass


def batches(count: int, size: int = 2) -> list[tuple[np.ndarray, list[str]]]:
    rng = np.random.default_rng(3)
    return [
        (
            rng.standard_normal((size, 3, 224, 224), dtype=np.float32),
            [f"prep/b{index}_{row}.bin" for row in range(size)],
        )
        for index in range(count)
    ]


def test_batches_in_flight_come_back_in_order_each_with_its_own_time():
    items = batches(5)
    with _AsyncRunner(in_flight=2) as runner:
        results = []
        for logits in runner.infer_stream(items):
            results.append((logits, runner.last_compute_ms))
        assert runner.events[:4] == ["start1", "start2", "finish1", "start3"]  # two in flight at once
    for number, ((batch, _), (logits, compute_ms)) in enumerate(zip(items, results, strict=True), 1):
        np.testing.assert_array_equal(logits, _AsyncRunner._logits(batch))
        assert compute_ms == float(number)


def test_one_in_flight_is_plain_infer():
    items = batches(3)
    with _AsyncRunner(in_flight=1) as runner:
        results = list(runner.infer_stream(items))
        assert runner.events == ["run", "run", "run"]
    for (batch, _), logits in zip(items, results, strict=True):
        np.testing.assert_array_equal(logits, _AsyncRunner._logits(batch))


def test_a_broken_stream_waits_for_the_others_rebuilds_and_restarts_them():
    items = batches(4)
    with _AsyncRunner(in_flight=2, nan_starts={2}) as runner:
        results = list(runner.infer_stream(items))
        events = runner.events
        # batch 2 came back NaN: batch 3, in flight beside it, ends before the rebuild and starts again after
        at = events.index("rebuild")
        assert events[at - 2 : at] == ["finish2", "finish3"] and events[at + 1 : at + 3] == ["run", "start4"]
        (reason,) = runner.recomputed
    assert reason.startswith("async-double (fp32) returned non-finite logits for the finite inputs prep/b1_0")
    for (batch, _), logits in zip(items, results, strict=True):
        np.testing.assert_array_equal(logits, _AsyncRunner._logits(batch))


def test_a_lasting_fault_in_flight_stops_naming_the_inputs():
    with _AsyncRunner(in_flight=2, nan_starts={1}, rebuild_cures=False) as runner:
        runner._run = lambda batch: np.full((len(batch), NUM_CLASSES), np.nan, np.float32)
        with pytest.raises(ToolkitError, match=r"inputs prep/b0_0.bin, prep/b0_1.bin, also after a fresh"):
            list(runner.infer_stream(batches(3)))


def test_a_nonfinite_input_in_flight_is_named_as_the_cause():
    items = batches(2)
    items[1][0][1, 0, 0, 0] = np.nan
    with _AsyncRunner(in_flight=2) as runner:
        with pytest.raises(ToolkitError, match=r"prep/b1_1.bin: the input holds 1 NaN or infinite values"):
            list(runner.infer_stream(items))


def test_stopping_early_lets_the_batches_in_flight_end():
    with _AsyncRunner(in_flight=2) as runner:
        stream = runner.infer_stream(batches(4))
        next(stream)
        stream.close()
        assert runner.events == ["start1", "start2", "finish1", "finish2"]


# ---- the real OpenVINO -------------------------------------------------------------------------------------
def infer(*argv) -> int:
    return infer_script.main([*map(str, argv), "--no-progress"])


@pytest.mark.slow
@pytest.mark.parametrize("batch_size", [1, 3])
def test_openvino_folder_run_keeps_a_batch_per_stream_and_matches_pytorch(
    batch_size, onnx_path, make_bin_folder, torch_logits, tmp_path
):
    folder, stems, batch = make_bin_folder(7)
    argv = ["--model", onnx_path, "--backend", "openvino", "--precision", "fp32", "--input", folder]
    assert infer(*argv, "--batchsize", batch_size, "--output", tmp_path, "--output_dirname", "x") == 0
    summary = json.loads((tmp_path / "x_summary.json").read_text())
    cores = usable_cpus(physical=True)
    if cores < 2:
        pytest.skip("one core: a single stream, nothing to keep in flight beside it")
    assert summary["in_flight"] == summary["num_streams"] == cores  # a whole batch per stream, one per core
    assert summary["images_per_request"] == batch_size and summary["performance_hint"] == "THROUGHPUT"
    outputs = np.stack([np.fromfile(tmp_path / "x" / f"{stem}_0.bin", "<f4") for stem in stems])
    assert float(np.abs(outputs - torch_logits(batch)).max()) <= 1e-4
    assert len(summary["npu_compute_time_list"]) == -(-7 // batch_size)


@pytest.mark.slow
def test_openvino_broken_second_stream_is_compiled_afresh_and_no_nan_is_written(
    onnx_path, make_bin_folder, torch_logits, tmp_path, capsys, monkeypatch
):
    folder, stems, batch = make_bin_folder(5)
    ov_faults.install({1}, {1}, patch=monkeypatch.setattr)  # the first compile's second request gives NaN
    argv = ["--model", onnx_path, "--backend", "openvino", "--precision", "fp32", "--input", folder]
    assert infer(*argv, "--batchsize", 1, "--output", tmp_path, "--output_dirname", "x") == 0
    assert ov_faults.compiles_made == 2
    outputs = np.stack([np.fromfile(tmp_path / "x" / f"{stem}_0.bin", "<f4") for stem in stems])
    assert np.isfinite(outputs).all() and float(np.abs(outputs - torch_logits(batch)).max()) <= 1e-4
    summary = json.loads((tmp_path / "x_summary.json").read_text())
    assert summary["recomputed_batches"] == 1
    assert "[WARN] batches recomputed after non-finite logits: 1" in capsys.readouterr().out


@pytest.mark.slow
def test_pure_mode_and_loops_keep_one_batch_in_flight(onnx_path, make_bin_folder, tmp_path):
    folder, _, _ = make_bin_folder(2)
    argv = ["--model", onnx_path, "--backend", "openvino", "--precision", "fp32", "--batchsize", 2]
    assert infer(*argv, "--loop", 2, "--output", tmp_path, "--output_dirname", "pure") == 0
    assert json.loads((tmp_path / "pure_summary.json").read_text())["in_flight"] == 1
    assert infer(*argv, "--input", folder, "--loop", 2, "--output", tmp_path, "--output_dirname", "l") == 0
    assert json.loads((tmp_path / "l_summary.json").read_text())["in_flight"] == 1
