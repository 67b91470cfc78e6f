"""bench/bench_backends.py, its measurement loop (bench/benchmark.py), its peers (bench/peers.py) and its
report (bench/benchreport.py), tried on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench import bench_backends, benchmark, benchreport
from twins_pcpvt import compare
from twins_pcpvt.backends.base import Runner, time_stats
from twins_pcpvt.common import UsageError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ---- the script, end to end --------------------------------------------------------------------------------
def _native_default() -> str:
    from twins_pcpvt.backends.openvino_runner import OpenVinoRunner

    return OpenVinoRunner.default_precision("cpu")


@pytest.mark.slow
def test_bench_script_writes_table_json_and_plot(tmp_path, checkpoint_path, onnx_path, capsys):
    out = tmp_path / "bench"
    subjects = "auto,openvino:fp32,timm-eager,onnxruntime-plain,openvino-plain"
    status = bench_backends.main(
        [
            "--batch-sizes",
            "1,2",
            "--seconds",
            "0.3",
            "--rounds",
            "2",
            "--warmup",
            "0",
            "--backends",
            subjects,
            "--source",
            str(checkpoint_path),
            "--onnx",
            str(onnx_path),
            "--out",
            str(out),
            "--no-end-to-end",
        ]
    )
    captured = capsys.readouterr()
    assert status == 0, captured.err
    report = json.loads((out / "bench.json").read_text())

    assert report["schema"] == benchreport.SCHEMA
    machine = report["machine"]
    assert (
        machine["cpu_model"]
        and machine["usable_cpus"] >= 1
        and machine["libraries"]["numpy"] == np.__version__
    )
    assert set(machine["cpu_flags"]) <= set(benchreport.CPU_FLAGS_OF_INTEREST)
    assert report["failures"] == []
    native = _native_default()
    rows = {(row["label"], row["precision"], row["batch_size"]): row for row in report["results"]}
    # auto runs what the CPU runs natively, as plain OpenVINO does by itself; fp32 stays available by name
    assert set(rows) == {
        (label, precision, size)
        for size in (1, 2)
        for label, precision in (
            ("openvino", native),
            ("openvino", "fp32"),
            ("timm eager", "fp32"),
            ("onnxruntime plain", "fp32"),
            ("openvino plain", native),
        )
    }
    auto = rows[("openvino", native, 1)]
    assert auto["auto"] is True and auto["requested_precision"] == native
    plain_ov = rows[("openvino plain", native, 1)]
    assert plain_ov["kind"] == "peer" and plain_ov["requested_precision"] == "default"
    assert plain_ov["details"]["inference_precision"] == {"bf16": "bf16", "fp32": "f32"}[native]
    for row in rows.values():
        lat = row["latency_ms"]
        assert lat["count"] >= 2  # at least one run in each of the two rounds
        assert row["load_seconds"] > 0
        assert 0 < lat["min"] <= lat["median"] <= lat[benchreport.TAIL] <= lat["max"]
        assert row["images_per_second"] == pytest.approx(1000.0 * row["batch_size"] / lat["mean"])
        plain_ort = rows[("onnxruntime plain", "fp32", row["batch_size"])]
        assert row["ratio_vs_plain_onnxruntime"] == pytest.approx(
            row["images_per_second"] / plain_ort["images_per_second"]
        )
        # ours against the fastest peer that ran the same precision
        peers = [
            peer
            for peer in rows.values()
            if peer["kind"] == "peer"
            and peer["precision"] == row["precision"]
            and peer["batch_size"] == row["batch_size"]
        ]
        best = max(peers, key=lambda peer: peer["images_per_second"])
        assert row["best_peer_same_precision"] == best["label"]
        assert row["ratio_vs_best_peer_same_precision"] == pytest.approx(
            row["images_per_second"] / best["images_per_second"]
        )
        assert row["ratio_vs_plain_openvino"] == pytest.approx(
            row["images_per_second"]
            / rows[("openvino plain", native, row["batch_size"])]["images_per_second"]
        )
    assert (
        rows[("timm eager", "fp32", 1)]["details"]["fused_attn"] == "True"
    )  # the peer as a timm user gets it

    # every subject agrees with the strict CPU fp32 reference on the same real photos, at every batch size
    assert {(row["label"], row["batch_size"]) for row in report["agreement"]} == {
        (label, size)
        for size in (1, 2)
        for label in ("openvino", "timm eager", "onnxruntime plain", "openvino plain")
    } and len(report["agreement"]) == 10
    for row in report["agreement"]:
        assert row["reference"] == "PyTorch CPU fp32" and row["images"] == 4 and row["passes"] is True
        assert row["cosine"] > (0.99999 if row["precision"] == "fp32" else 0.995)
        assert row["top1_agrees_decided"] == row["top1_decided"] >= 1

    targets = {target["target"]: target for target in report["targets"]}
    assert f"ours >= 1.0x the best peer at equal precision, batch 1 ({native})" in targets
    assert "ours default >= 1.0x plain OpenVINO default, batch 1" in targets
    assert targets["ours default >= 1.0x plain OpenVINO default, batch 1"]["best"] == f"openvino {native}"

    table = (out / "bench.md").read_text()
    assert machine["cpu_model"] in table and "--batch-sizes 1,2" in table
    assert f"| openvino (auto) | {native} | 1 |" in table and f"| openvino plain | {native} | 1 |" in table
    assert "| runs | x peer same precision | x plain OpenVINO | x plain ORT | x timm eager | setup |" in table
    png = (out / "bench.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE) and len(png) > 10_000
    assert "wrote" in captured.out and "round 2/2" in captured.err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--batch-sizes", "0"], "--batch-sizes"),
        (["--batch-sizes", "1,x"], "--batch-sizes"),
        (["--seconds", "0"], "--seconds"),
        (["--backends", "tensorflow"], "'tensorflow'"),
        (["--backends", "torch:fp16+turbo"], "'turbo'"),
        (["--backends", "timm-eager:fp16"], "fp32 only"),
        (["--backends", "openvino-plain:fp32"], "default precision"),
        (["--onnx", "model.onnx"], "--onnx needs --source"),
    ],
)
def test_bad_usage_exits_2_before_any_work(tmp_path, capsys, argv, message):
    out = tmp_path / "bench"
    assert bench_backends.main([*argv, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_missing_checkpoint_is_named_and_nothing_is_written(tmp_path, capsys):
    out = tmp_path / "bench"
    missing = tmp_path / "nowhere.pth"
    assert bench_backends.main(["--source", str(missing), "--backends", "timm-eager", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"error: {missing}: checkpoint not found" in err
    assert not out.exists()


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    target = tmp_path / "bench.md"
    target.write_text("keep me")
    assert bench_backends.main(["--backends", "timm-eager", "--out", str(target)]) == 1
    assert f"{target}: exists and is not a folder" in capsys.readouterr().err
    assert target.read_text() == "keep me"


# ---- subjects ----------------------------------------------------------------------------------------------
def test_subjects_parse_precisions_options_and_auto():
    native = _native_default()
    subjects = benchmark.parse_subjects(
        f"openvino:{native}, auto, torch:fp16+compile, torch:bf16+compile=max-"
        "autotune-no-cudagraphs+nograph, timm-eager, openvino-plain",
        "cpu",
    )
    assert [(s.label, s.precision, s.auto) for s in subjects] == [
        (
            "openvino",
            native,
            True,
        ),  # auto: OpenVINO at the CPU's native precision; marked, not measured twice
        ("torch +compile", "fp16", False),
        ("torch +compile=max-autotune-no-cudagraphs +no graph", "bf16", False),
        ("timm eager", "fp32", False),
        ("openvino plain", "default", False),  # its precision is read back once it is compiled
    ]
    assert subjects[2].options == {"compile": "max-autotune-no-cudagraphs", "cuda_graph": False}
    assert [s.kind for s in subjects] == ["ours", "ours", "ours", "peer", "peer"]
    (fp32,) = benchmark.parse_subjects("openvino:fp32", "cpu")
    assert (fp32.precision, fp32.auto) == ("fp32", False)
    (named_auto,) = benchmark.parse_subjects("openvino:auto", "cpu")
    assert named_auto.precision == native


def test_auto_on_cuda_is_the_torch_backend_at_the_gpus_native_precision(monkeypatch):
    import torch

    from twins_pcpvt.common import ToolkitError

    capabilities = {0: (6, 1), 1: (9, 0)}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capabilities[index])
    (subject,) = benchmark.parse_subjects("auto", "cuda:1")
    assert (subject.name, subject.precision, subject.auto) == ("torch", "fp16", True)
    (old_gpu,) = benchmark.parse_subjects("auto,torch:auto", "cuda:0")  # no tensor cores: fp32
    assert (old_gpu.name, old_gpu.precision, old_gpu.auto) == ("torch", "fp32", True)
    monkeypatch.setattr(
        torch.cuda,
        "get_device_capability",
        lambda index=None: (_ for _ in ()).throw(RuntimeError("Found no NVIDIA driver on your system")),
    )
    with pytest.raises(ToolkitError, match="default precision of torch on cuda.*no NVIDIA driver"):
        benchmark.parse_subjects("auto", "cuda")


def test_torch_options_reach_the_runner_as_it_names_them(checkpoint_path):
    from twins_pcpvt.backends import create_runner

    (subject,) = benchmark.parse_subjects("torch:bf16+compile+nograph", "cpu")
    runner = create_runner(
        "torch", checkpoint_path, precision="bf16", batch_size=4, **subject.options
    )  # not loaded
    assert (runner.compile_mode, runner.use_cuda_graph, runner.batch_size) == ("default", False, 4)


@pytest.mark.parametrize(
    "text", ["", " , ", "onnxruntime+compile", "torch+nograph=1", "torch+compile=fast", "torch:fp8", "nvidia"]
)
def test_bad_subjects_are_usage_errors(text):
    with pytest.raises(UsageError, match="--backends"):
        benchmark.parse_subjects(text, "cpu")


def test_default_subjects_on_cpu_cover_installed_backends_and_peers():
    from twins_pcpvt.backends import available_backends

    labels = {(s.label, s.precision) for s in benchmark.default_subjects("cpu")}
    assert {("timm eager", "fp32"), ("onnxruntime plain", "fp32")} <= labels
    for name in ("onnxruntime", "openvino", "torch"):
        if name in available_backends():
            assert (name, "fp32") in labels
    if "openvino" in available_backends():
        assert ("openvino plain", "default") in labels
    assert not any(precision == "fp16" for _, precision in labels)
    assert (("torch", "bf16") in labels) == benchmark.native_cpu_bf16()


def test_onnx_is_exported_only_when_a_subject_reads_it():
    assert benchmark.needs_onnx(benchmark.default_subjects("cpu"), "cpu")
    assert benchmark.needs_onnx(benchmark.parse_subjects("onnxruntime-plain", "cpu"), "cpu")
    assert not benchmark.needs_onnx(benchmark.parse_subjects("torch,timm-eager", "cpu"), "cpu")


# ---- the measurement loop, with stand-in runners -----------------------------------------------------------
class FakeRunner(Runner):
    """A runner that takes `compute_ms` and returns the input's first 1000 values x `scale` as logits."""

    def __init__(self, log, label, compute_ms=2.0, fail_after=None, precision="fp32", scale=1.0):
        super().__init__("fake.onnx", device="cpu", precision=precision)
        self.log, self.label, self.compute_ms, self.fail_after = log, label, compute_ms, fail_after
        self.scale, self.calls = scale, 0

    def _load(self):
        self.input_shape = (None, 3, 224, 224)

    def _run(self, batch):
        self.calls += 1
        self.log.append(self.label)
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("device lost")
        self.last_compute_ms = self.compute_ms
        return batch.reshape(len(batch), -1)[:, :1000].astype(np.float64) * self.scale

    def _close(self):
        self.log.append(f"close {self.label}")


def _fake_run(monkeypatch, subjects, behaviour, batch_sizes=(1, 2), **settings):
    log: list[str] = []

    def fake_open(subject, device, onnx_path, checkpoint_path, batch_size):
        kwargs = behaviour.get(subject.label, {})
        if kwargs == "fail":
            raise RuntimeError(f"cannot load {subject.label}")
        return FakeRunner(log, subject.label, **kwargs)

    monkeypatch.setattr(benchmark, "open_runner", fake_open)
    report = benchreport.new_report("test", {}, {})
    values = {"seconds": 0.02, "rounds": 3, "warmup_seconds": 0.0, **settings}
    run_settings = benchmark.Settings("cpu", list(batch_sizes), **values)
    photos = np.random.default_rng(0).standard_normal((3, 3, 224, 224), dtype=np.float32)
    reference = photos.reshape(3, -1)[:, :1000].astype(np.float64)  # what FakeSession predicts at scale 1
    steps = []
    benchmark.run_benchmark(
        subjects,
        run_settings,
        Path("m.onnx"),
        Path("m.pth"),
        photos,
        report,
        progress=lambda message: log.append(message) if " round " in message else None,
        reference=reference,
        on_step=lambda partial: steps.append(len(partial["results"])),
    )
    report["steps"] = steps
    return report, log


def test_rounds_rotate_and_failures_are_reported_not_fatal(monkeypatch):
    subjects = benchmark.parse_subjects("onnxruntime-plain,timm-eager,openvino,torch:bf16", "cpu")
    behaviour = {
        "onnxruntime plain": {"compute_ms": 4.0},
        "timm eager": {"compute_ms": 8.0},
        "openvino": "fail",
        "torch": {"compute_ms": 1.0, "precision": "bf16", "scale": 1.001, "fail_after": 40},
    }
    report, log = _fake_run(monkeypatch, subjects, behaviour)
    rows = {(row["label"], row["batch_size"]): row for row in report["results"]}
    assert rows[("onnxruntime plain", 1)]["images_per_second"] == pytest.approx(250.0)
    assert rows[("timm eager", 2)]["images_per_second"] == pytest.approx(250.0)
    assert rows[("timm eager", 2)]["ratio_vs_plain_onnxruntime"] == pytest.approx(0.5)
    assert rows[("onnxruntime plain", 2)]["ratio_vs_timm_eager"] == pytest.approx(2.0)
    errors = {(row["label"], row["batch_size"]): row["error"] for row in report["failures"]}
    assert errors[("openvino", 1)] == errors[("openvino", 2)] == "RuntimeError: cannot load openvino"
    assert any(error == "RuntimeError: device lost" for error in errors.values())
    # rounds rotate: each round of batch 2 starts with another subject (torch has failed by then)
    rounds = [i for i, entry in enumerate(log) if entry.startswith("batch 2: round")]
    assert [log[i + 1] for i in rounds] == ["onnxruntime plain", "timm eager", "onnxruntime plain"]
    # our runners are opened for each batch size and closed after it; the peers once
    assert log.count("close torch") == 2 and log.count("close timm eager") == 1
    # agreement at every batch size, against the strict CPU fp32 reference, over all 3 photos in chunks
    agreement = {(row["label"], row["batch_size"]): row for row in report["agreement"]}
    assert set(agreement) == {
        (label, size) for label in ("onnxruntime plain", "timm eager", "torch") for size in (1, 2)
    }
    torch_row = agreement[("torch", 2)]
    assert torch_row["images"] == 3 and torch_row["reference"] == "PyTorch CPU fp32" and torch_row["passes"]
    assert torch_row["cosine"] == pytest.approx(1.0) and torch_row["max_abs_diff"] > 0
    # the partial report is handed out after each batch size, with what was measured so far
    assert report["steps"] == [2, 4]  # torch fails in both (after 40 runs), the two peers are measured


def test_time_limit_skips_later_points_and_says_so(monkeypatch):
    subjects = benchmark.parse_subjects("timm-eager,torch", "cpu")
    report, _ = _fake_run(monkeypatch, subjects, {}, batch_sizes=(1, 4), time_limit=0.0)
    assert report["results"] == []
    assert {row["batch_size"] for row in report["failures"]} == {1, 4}
    assert all("time limit" in row["error"] for row in report["failures"])


def test_interrupt_keeps_what_was_measured(monkeypatch):
    subjects = benchmark.parse_subjects("timm-eager", "cpu")
    sizes = []

    class Interrupting(FakeRunner):
        def _run(self, batch):
            sizes.append(len(batch))
            if len(batch) == 2:
                raise KeyboardInterrupt
            return super()._run(batch)

    monkeypatch.setattr(benchmark, "open_runner", lambda *args: Interrupting([], "timm eager"))
    report = benchreport.new_report("test", {}, {})
    settings = benchmark.Settings("cpu", [1, 2, 4], 0.01, 1, 0.0)
    photos = np.ones((1, 3, 224, 224), np.float32)
    benchmark.run_benchmark(
        subjects,
        settings,
        Path("m.onnx"),
        Path("m.pth"),
        photos,
        report,
        progress=lambda message: None,
        reference=np.ones((1, 1000)),
    )
    assert [row["batch_size"] for row in report["results"]] == [1]
    assert report["failures"][-1]["error"].startswith("interrupted")
    assert sizes[-1] == 2 and 4 not in sizes  # stopped at the first batch of 2: batch size 4 never ran


# ---- report pieces -----------------------------------------------------------------------------------------
def test_result_rows_hold_the_runner_summarys_statistics_and_ais_bench_throughput():
    (subject,) = benchmark.parse_subjects("torch:bf16", "cpu")
    with FakeRunner([], "torch", precision="bf16") as runner:
        row = benchmark.result_row(subject, runner, 8, [10.0, 20.0, 30.0, 40.0], 1.5)
    assert row["latency_ms"] == time_stats([10.0, 20.0, 30.0, 40.0])
    assert row["latency_ms"]["count"] == 4 and row["latency_ms"][benchreport.TAIL] == pytest.approx(39.7)
    assert row["images_per_second"] == pytest.approx(1000 * 8 / 25.0)
    assert (row["label"], row["precision"], row["load_seconds"]) == ("torch", "bf16", 1.5)
    assert row["details"] == {"backend": "runner", "device": "cpu", "precision": "bf16"}
    with pytest.raises(ValueError):
        benchmark.result_row(subject, runner, 1, [], 0.0)


def test_agreement_detects_a_perturbed_output():
    rng = np.random.default_rng(1)
    reference = rng.standard_normal((3, 1000))
    same = compare.agreement("a", "fp32", "ref", reference.copy(), reference)
    assert same["cosine"] == pytest.approx(1.0) and same["top1_agrees"] == 3 and same["max_abs_diff"] == 0
    perturbed = reference.copy()
    perturbed[1] = -reference[1]  # the opposite scores: the worst cosine is -1 and that image's top-1 differs
    worse = compare.agreement("b", "bf16", "ref", perturbed, reference)
    assert worse["cosine"] == pytest.approx(-1.0) and worse["top1_agrees"] == 2 and not compare.passes(worse)


def _row(label, precision, batch_size, ips, kind="ours", auto=False):
    return {
        "label": label,
        "precision": precision,
        "batch_size": batch_size,
        "images_per_second": ips,
        "kind": kind,
        "auto": auto,
    }


def test_gpu_targets_compare_best_reduced_precision_with_timm_eager():
    rows = [
        _row("timm eager", "fp32", 1, 200.0, kind="peer"),
        _row("torch", "fp16", 1, 1300.0),
        _row("torch +compile", "fp16", 1, 900.0),
        _row("torch", "fp32", 1, 5000.0),  # fp32 never counts for the reduced-precision target
        _row("timm eager", "fp32", 64, 3000.0, kind="peer"),
        _row("torch +compile", "bf16", 64, 14000.0),
    ]
    benchreport.add_ratios(rows)
    verdicts = {v["target"]: v for v in benchreport.evaluate_targets(rows, "cuda")}
    batch1 = verdicts["ours fp16/bf16 >= 6x timm eager fp32, batch 1"]
    assert (batch1["best"], batch1["ratio"], batch1["met"]) == ("torch fp16", 6.5, True)
    batch64 = verdicts["ours fp16/bf16 >= 5x timm eager fp32, batch 64"]
    assert batch64["best"] == "torch +compile bf16" and batch64["met"] is False
    assert not any("fp16/bf16" in verdict["target"] for verdict in benchreport.evaluate_targets(rows, "cpu"))


def test_markdown_and_plot_from_a_report(tmp_path):
    report = benchreport.new_report(
        "python3 bench/bench_backends.py",
        benchreport.machine_info(),
        {"device": "cpu", "seconds": 1.0, "rounds": 2, "model": "random weights (seed 0)", "photos": "p"},
    )
    for label, kind, ips in (("onnxruntime plain", "peer", 10.0), ("openvino", "ours", 15.0)):
        for batch_size in (1, 4):
            report["results"].append(
                {
                    "label": label,
                    "kind": kind,
                    "auto": kind == "ours",
                    "precision": "fp32",
                    "batch_size": batch_size,
                    "images_per_second": ips,
                    "latency_ms": time_stats([1000.0 * batch_size / ips]),
                }
            )
    benchreport.add_ratios(report["results"])
    report["targets"] = benchreport.evaluate_targets(report["results"], "cpu")
    report["failures"].append({"label": "torch", "precision": "bf16", "batch_size": 4, "error": "boom"})
    paths = benchreport.write_report(report, tmp_path / "new" / "folder")
    table = paths[0].read_text()
    assert "| openvino (auto) | fp32 | 1 | 15.0 |" in table and "| 1.50 | - | 1.50 | - |  |" in table
    assert "| ours fp32 >= 1.3x plain ONNX Runtime, batch 1 | openvino fp32 | 1.50 | yes |" in table
    assert (
        "| ours >= 1.0x the best peer at equal precision, batch 1 (fp32) | openvino fp32 against onnxruntime "
        "plain | 1.50 | yes |"
    ) in table
    assert "- torch at batch 4: boom" in table
    assert json.loads(paths[1].read_text())["results"][0]["ratio_vs_timm_eager"] is None
    assert paths[2].read_bytes().startswith(PNG_SIGNATURE)


def test_sample_photos_are_normalised_real_images():
    photos, note = benchmark.sample_photos()
    assert photos.shape == (4, 3, 224, 224) and photos.dtype == np.float32
    assert "grace_hopper" in note
    assert -3.0 < photos.mean() < 3.0 and photos.std() > 0.3
    assert not np.allclose(photos[0], photos[1])


# ---- end to end: benchmark_app as the peer, the folder run, the machine's peak -----------------------------
@pytest.mark.slow
def test_end_to_end_rows_come_from_real_benchmark_app_and_folder_runs(tmp_path, onnx_path):
    from bench import endtoend

    if endtoend.benchmark_app_path() is None:
        pytest.skip("benchmark_app is not installed (it comes with the openvino wheel)")
    photos, _ = benchmark.sample_photos()
    rows, failures = endtoend.measure_end_to_end(
        onnx_path, photos, 2, seconds=2, rounds=2, work_dir=tmp_path, progress=lambda _: None
    )
    assert failures == []
    by_label = {row["label"]: row for row in rows}
    assert set(by_label) == {*endtoend.BENCHMARK_APP_ROWS, endtoend.OURS_FOLDER_LABEL}
    native = _native_default()
    for row in rows:
        assert row["batch_size"] == 2 and len(row["rounds"]) == 2 and row["images_per_second"] > 0
        assert row["precision"] == native  # benchmark_app and ours both run the CPU's default precision
    assert by_label["benchmark_app"]["details"]["performance_hint"] == "THROUGHPUT"
    assert by_label["benchmark_app -hint latency"]["details"]["mode"] == "synchronously"
    ours = by_label[endtoend.OURS_FOLDER_LABEL]
    assert ours["details"]["ais_bench_throughput"] > 0
    endtoend.add_end_to_end_ratios(rows)
    assert by_label["benchmark_app"]["ratio_vs_benchmark_app"] == 1.0
    assert ours["ratio_vs_benchmark_app"] == pytest.approx(
        ours["images_per_second"] / by_label["benchmark_app"]["images_per_second"]
    )


def test_benchmark_app_report_missing_a_figure_is_an_error():
    from bench import endtoend

    with pytest.raises(ValueError, match="Throughput"):
        endtoend.parse_benchmark_app("[ INFO ] Count: 3 iterations\n[ INFO ] Duration: 10.0 ms\n")


@pytest.mark.slow
def test_peak_is_measured_at_each_native_precision_and_rows_get_their_fraction():
    from bench import endtoend

    peak = endtoend.measure_peak("fp32", seconds=0.3)
    assert peak["precision"] == "fp32" and peak["gflops"] > 1
    report = {
        "flops_per_image": 7.5e9,
        "peak": {"fp32": {"gflops": 150.0}},
        "results": [{"images_per_second": 10.0, "precision": "fp32"}],
        "end_to_end": [{"images_per_second": 20.0, "precision": "bf16"}],
    }
    endtoend.add_peak_fractions(report)
    assert report["results"][0]["gflops_per_second"] == pytest.approx(75.0)
    assert report["results"][0]["fraction_of_peak"] == pytest.approx(0.5)
    assert report["end_to_end"][0]["fraction_of_peak"] is None  # no bf16 peak measured


@pytest.mark.slow
def test_profile_sums_openvinos_layer_counters_by_type(onnx_path, tmp_path):
    from bench import profile_openvino

    assert profile_openvino.main(["--onnx", str(onnx_path), "--runs", "1", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "profile.json").read_text())
    types = {layer["type"] for layer in result["layers"]}
    assert {"FullyConnected", "Subgraph (attention)", "MVN"} <= types
    assert sum(layer["share"] for layer in result["layers"]) == pytest.approx(1.0)
    outside = sum(layer["ms"] for layer in result["layers"] if not layer["arithmetic"])
    assert result["outside_arithmetic_ms"] == pytest.approx(outside)
    assert profile_openvino.main(["--onnx", str(tmp_path / "missing.onnx"), "--out", str(tmp_path)]) == 1


def test_profile_of_a_file_that_is_not_a_model_is_one_line(tmp_path, capsys):
    from bench import profile_openvino

    photo = tmp_path / "photo.onnx"
    photo.write_bytes(b"\xff\xd8\xff\xe0" + bytes(2000))  # a JPEG named .onnx
    assert profile_openvino.main(["--onnx", str(photo), "--out", str(tmp_path / "p")]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and "not an ONNX model" in line
    assert not (tmp_path / "p").exists()
