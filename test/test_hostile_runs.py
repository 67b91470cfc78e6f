"""Runs as people run them: two at once on one folder, several in the same second, and runs stopped at any
instant (SIGTERM, Ctrl-C, SIGKILL). One writer per folder (its lock), nothing read before it is complete (its
in-progress mark), no worker outliving its parent, and the same command resumes or redoes what a killed run
left. Every subprocess runs under a time limit, so a hang fails."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from aclruntime_double import environment, missing_reason
from hostile import ROOT, alive, assert_clean_failure, live_children, run_script

import twins_pcpvt_s_infer as infer_script
import twins_pcpvt_s_postprocess as postprocess_script
from twins_pcpvt import evaltable
from twins_pcpvt.common import (
    LOCK_SUFFIX,
    OUTPUT_BYTES,
    RUNNING_SUFFIX,
    ToolkitError,
    beside,
    lock_folder,
    unfinished,
)
from twins_pcpvt.results import load_outputs

INFER = ROOT / "twins_pcpvt_s_infer.py"
LIMIT_S = 300  # any one subprocess; a hang fails the test instead of stopping the suite

HOLD = """
import sys, time
from twins_pcpvt.common import lock_folder
lock_folder(sys.argv[1])
print("held", flush=True)
time.sleep(600)
"""


def python_env(**extra) -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), **extra)


@contextmanager
def holder(folder: Path):
    """Another process holding `folder`'s lock, until the block ends (it is then killed)."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True, env=python_env()
    )
    try:
        assert process.stdout.readline().strip() == "held"
        yield process
    finally:
        process.kill()
        process.wait(timeout=LIMIT_S)


def files_under(folder: Path) -> dict[str, bytes]:
    """Every file below `folder` (hidden ones too) with its bytes."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def temporaries(folder: Path) -> list[str]:
    return [str(path) for path in folder.rglob("*.tmp")]


def infer_argv(model: Path, inputs: Path, output: Path, *extra) -> list[str]:
    return [
        "--model",
        str(model),
        "--backend",
        "onnxruntime",
        "--input",
        str(inputs),
        "--output",
        str(output),
        *map(str, extra),
        "--no-progress",
    ]


def run_infer(*argv, driver: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, *(["-c", driver] if driver else [str(INFER)]), *map(str, argv)]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=LIMIT_S, env=env or python_env(), cwd=ROOT
    )


# ---- the lock ----------------------------------------------------------------------------------------------
def test_a_held_folder_is_refused_at_once_and_a_dead_holders_lock_is_taken(tmp_path):
    folder = tmp_path / "run"
    with holder(folder) as other:
        with pytest.raises(ToolkitError) as refused:
            lock_folder(folder)
        assert str(folder) in str(refused.value) and f"pid {other.pid}" in str(refused.value)
        other.kill()  # SIGKILL: its lock file stays behind, and the kernel drops the lock itself
        other.wait(timeout=LIMIT_S)
        assert beside(folder, LOCK_SUFFIX).read_text().strip() == str(other.pid)
        with lock_folder(folder):
            assert beside(folder, LOCK_SUFFIX).read_text().strip() == str(os.getpid())
    assert not beside(folder, LOCK_SUFFIX).exists()  # a released lock leaves nothing


def test_the_runner_into_a_held_folder_stops_at_once_and_touches_nothing(
    onnx_path, make_bin_folder, tmp_path, capsys
):
    folder, _, _ = make_bin_folder(2)
    output = tmp_path / "result"
    argv = infer_argv(onnx_path, folder, output, "--output_dirname", "x")
    assert infer_script.main(argv) == 0
    before = files_under(output)
    with holder(output / "x") as other:
        capsys.readouterr()
        assert infer_script.main(argv) == 1
        err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{output / 'x'}: another run (pid {other.pid})" in err, err
    after = files_under(output)
    after.pop(beside(output / "x", LOCK_SUFFIX).name)  # the dead holder's lock file, which the next run takes
    assert after == before


@pytest.mark.slow
def test_the_ray_engine_into_a_held_folder_stops_before_its_job(onnx_path, make_bin_folder, tmp_path, capsys):
    pytest.importorskip("ray.data")
    folder, _, _ = make_bin_folder(2)
    output = tmp_path / "result"
    output.mkdir()
    with holder(output / "x") as other:
        argv = infer_argv(onnx_path, folder, output, "--output_dirname", "x", "--engine", "ray")
        assert infer_script.main(argv) == 1
        err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{output / 'x'}: another run (pid {other.pid})" in err, err
    assert [path.name for path in output.iterdir()] == [beside(output / "x", LOCK_SUFFIX).name]


def test_the_preprocess_into_a_held_folder_stops_at_once(tmp_path):
    from PIL import Image

    data = tmp_path / "data"
    data.mkdir()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(data / "a.JPEG")
    prep = tmp_path / "prep"
    with holder(prep) as other:
        result = run_script(
            "twins_pcpvt_s_preprocess.py", "--data_path", data, "--prep_dataset", prep, cwd=tmp_path
        )
    assert_clean_failure(result, 1, str(prep), f"pid {other.pid}", "is writing this folder")
    assert not prep.exists()


def test_eval_acc_perf_into_a_held_output_dir_stops_at_once(tmp_path):
    output = tmp_path / "eval"
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    env = dict(os.environ, PYTHON=sys.executable)
    with holder(output) as other:
        result = subprocess.run(
            ["bash", str(ROOT / "test" / "eval_acc_perf.sh"), "--demo", "--output-dir", str(output)],
            capture_output=True,
            text=True,
            timeout=LIMIT_S,
            env=env,
        )
    assert_clean_failure(result, 1, str(output), f"pid {other.pid}")
    assert sorted(path.name for path in output.iterdir()) == ["keep.txt"] and result.stdout == ""


@pytest.mark.slow
def test_a_second_run_into_a_live_run_is_refused_and_readers_wait_for_it(
    onnx_path, make_bin_folder, tmp_path, capsys
):
    folder, stems, _ = make_bin_folder(4)
    output = tmp_path / "result"
    argv = infer_argv(onnx_path, folder, output, "--output_dirname", "x", "--loop", 10)
    first = subprocess.Popen(
        [sys.executable, str(INFER), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=python_env(),
    )
    try:
        deadline = time.monotonic() + LIMIT_S
        while not beside(output / "x", RUNNING_SUFFIX).exists() and time.monotonic() < deadline:
            assert first.poll() is None, first.communicate()
            time.sleep(0.01)
        with pytest.raises(
            ToolkitError, match=f"in progress: its run \\(pid {first.pid}\\) is still writing"
        ):
            load_outputs(output)
        assert infer_script.main(argv) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"another run (pid {first.pid}) is writing this folder" in err, err
        out, err = first.communicate(timeout=LIMIT_S)
    finally:
        first.kill()
    assert first.returncode == 0, err
    result = load_outputs(output)
    assert result.stems == stems and not result.notes
    assert json.loads((output / "x_summary.json").read_text())["pid"] == first.pid


SAME_SECOND = """
import sys, time
from twins_pcpvt.infer.outputs import TIME_NAME
real = time.strftime
time.strftime = lambda fmt, *args: "2030_01_01-00_00_00" if fmt == TIME_NAME else real(fmt, *args)
import twins_pcpvt_s_infer as script
raise SystemExit(script.main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_runs_of_the_guide_form_in_the_same_second_get_a_folder_each(onnx_path, make_bin_folder, tmp_path):
    """`--output ./result` without --output_dirname: the time-stamp folder, then the next free name."""
    folder, stems, _ = make_bin_folder(2)
    output = tmp_path / "result"
    command = [sys.executable, "-c", SAME_SECOND, *infer_argv(onnx_path, folder, output)]
    together = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=python_env())
        for _ in range(2)
    ]
    pids = []
    for process in together:
        _, err = process.communicate(timeout=LIMIT_S)
        assert process.returncode == 0, err
        pids.append(process.pid)
    after = run_infer(*command[3:], driver=SAME_SECOND)  # the same second again, after both ended
    assert after.returncode == 0, after.stderr
    names = ["2030_01_01-00_00_00", "2030_01_01-00_00_00_1", "2030_01_01-00_00_00_2"]
    assert sorted(path.name for path in output.iterdir() if path.is_dir()) == names
    writers = set()
    for name in names:
        assert load_outputs(output / name).stems == stems
        writers.add(json.loads((output / f"{name}_summary.json").read_text())["pid"])
    assert len(writers) == 3 and set(pids) <= writers
    assert not [path for path in output.iterdir() if path.name.endswith((LOCK_SUFFIX, RUNNING_SUFFIX))]


# ---- killed at any instant ---------------------------------------------------------------------------------
KILLED_RUN = """
import os, signal, sys
import twins_pcpvt.infer.local as runner
from twins_pcpvt.common import atomic_writer

def die():
    os.kill(os.getpid(), signal.SIGKILL)

instant = sys.argv.pop(1)
if instant == "before_first_output":  # the folder prepared and the model loaded
    runner.run_folder = lambda *args, **kwargs: die()
elif instant == "mid_write":  # half-way through the third output file
    written, write_output = [], runner.write_output
    def half_write(path, logits, fmt):
        written.append(path)
        if len(written) == 3:
            with atomic_writer(path) as handle:
                handle.write(logits.tobytes()[:100])
                handle.flush()
                die()
        write_output(path, logits, fmt)
    runner.write_output = half_write
else:  # half-way through the summary, every output written
    def half_summary(path, data, indent=None):
        with atomic_writer(path, "w") as handle:
            handle.write('{"filesinfo": ')
            handle.flush()
            die()
    runner.write_json = half_summary
import twins_pcpvt_s_infer as script
raise SystemExit(script.main(sys.argv[1:]))
"""


def write_labels(path: Path, stems: list[str]) -> Path:
    path.write_text("".join(f"{stem}.JPEG {index}\n" for index, stem in enumerate(stems)))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("instant", ["before_first_output", "mid_write", "mid_summary"])
def test_a_runner_killed_at_any_instant_is_refused_by_readers_and_the_same_command_redoes_it(
    instant, onnx_path, make_bin_folder, tmp_path
):
    folder, stems, _ = make_bin_folder(5)
    output = tmp_path / "result"
    labels = write_labels(tmp_path / "val_label.txt", stems)
    argv = infer_argv(onnx_path, folder, output, "--output_dirname", "x", "--batchsize", 2)
    killed = run_infer(instant, *argv, driver=KILLED_RUN)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert beside(output / "x", RUNNING_SUFFIX).is_file()
    if instant == "mid_write":
        assert len(temporaries(output / "x")) == 1  # what the rerun must remove, not refuse
    if instant == "mid_summary":
        assert len(temporaries(output)) == 1 and not (output / "x_summary.json").exists()

    report = tmp_path / "report"
    report.mkdir()
    scored = run_script(
        "twins_pcpvt_s_postprocess.py",
        "--folder-davinci-target",
        output,
        "--annotation-file-path",
        labels,
        "--result-json-path",
        report,
        cwd=tmp_path,
    )
    assert_clean_failure(scored, 1, str(output / "x"), "unfinished", "rerun the same command", "x")
    compared = run_script("twins_pcpvt_s_compare.py", output / "x", output / "x", cwd=tmp_path)
    assert_clean_failure(compared, 2, "unfinished")
    assert not list(report.iterdir())

    rerun = run_infer(*argv)
    assert rerun.returncode == 0, rerun.stderr
    assert not temporaries(output) and not beside(output / "x", RUNNING_SUFFIX).exists()
    assert sorted(path.name for path in (output / "x").iterdir()) == [f"{stem}_0.bin" for stem in stems]
    assert all(path.stat().st_size == OUTPUT_BYTES for path in (output / "x").iterdir())
    scored = ["--folder-davinci-target", str(output), "--annotation-file-path", str(labels)]
    assert postprocess_script.main([*scored, "--result-json-path", str(report)]) == 0
    assert json.loads((report / "result.json").read_text())["images"] == len(stems)


# ---- a multi-device run stopped ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def device_inputs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("devices")
    rng = np.random.default_rng(3)
    for index in range(24):
        rng.standard_normal((3, 224, 224), dtype=np.float32).tofile(folder / f"img{index:02d}.bin")
    return folder


def device_outputs(folder: Path) -> list[Path]:
    return sorted(folder.glob("device*/*_0.bin"))


@pytest.mark.slow
@pytest.mark.skipif(bool(missing_reason()), reason=missing_reason() or "")
@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=["TERM", "INT", "KILL"]
)
def test_a_stopped_multi_device_run_leaves_no_worker_and_the_same_command_redoes_it(
    signum, om_path, device_inputs, tmp_path
):
    """`--device 0,1` over the aclruntime double: SIGTERM and Ctrl-C (SIGINT to the whole process group) stop
    the workers at once, exit 143 / 130; after SIGKILL of the parent its workers stop by themselves."""
    output = tmp_path / "result"
    command = [sys.executable, str(INFER), "--model", str(om_path), "--input", str(device_inputs)]
    command += ["--output", str(output), "--output_dirname", "x", "--device", "0,1", "--loop", "3"]
    command += ["--no-progress"]
    env = environment("v2024")
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    try:
        deadline = time.monotonic() + LIMIT_S
        children: set[int] = set()
        while time.monotonic() < deadline and process.poll() is None and not device_outputs(output / "x"):
            children |= set(live_children(process.pid))
            time.sleep(0.01)
        children |= set(live_children(process.pid))
        assert process.poll() is None and len(children) >= 2, process.communicate()
        if signum == signal.SIGINT:
            os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        else:
            process.send_signal(signum)
        _, err = process.communicate(timeout=LIMIT_S)
        deadline = time.monotonic() + 60
        while any(alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [pid for pid in children if alive(pid)], "processes outlived the run"
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if signum != signal.SIGKILL:
        assert process.returncode == 128 + signum and "Traceback" not in err, err
    written = device_outputs(output / "x")
    assert 0 < len(written) < 24, "the run was not stopped mid-way"
    assert all(path.stat().st_size == OUTPUT_BYTES for path in written) and not temporaries(output)
    assert "stopped before it completed" in (unfinished(output / "x") or "")
    with pytest.raises(ToolkitError, match="unfinished"):
        load_outputs(output / "x" / "device0")
    if signum == signal.SIGKILL:
        rerun = subprocess.run(command, capture_output=True, text=True, timeout=LIMIT_S, env=env)
        assert rerun.returncode == 0, rerun.stderr
        assert len(device_outputs(output / "x")) == 24 and len(load_outputs(output).stems) == 24


# ---- readers -----------------------------------------------------------------------------------------------
MARK_AND_DIE = """
import sys
from twins_pcpvt.common import lock_folder, mark_running
lock_folder(sys.argv[1])
mark_running(sys.argv[1], ["python3", "twins_pcpvt_s_infer.py", "--output_dirname", "perf"])
"""


def test_the_closing_table_refuses_an_unfinished_run(tmp_path, capsys):
    batch = tmp_path / "bs1"
    (batch / "perf").mkdir(parents=True)
    (batch / "result.json").write_text(json.dumps({"top1": 0.5, "top5": 0.9, "images": 2}))
    (batch / "perf_summary.json").write_text(json.dumps({"throughput": 10.0}))
    died = run_infer(str(batch / "perf"), driver=MARK_AND_DIE)  # a run that died before its summary
    assert died.returncode == 0, died.stderr
    assert evaltable.main([str(tmp_path), "--batch-sizes", "1"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bs1/perf: unfinished" in err and "--output_dirname perf" in err, err
    assert not (tmp_path / "eval_summary.md").exists()
    os.unlink(beside(batch / "perf", RUNNING_SUFFIX))
    assert evaltable.main([str(tmp_path), "--batch-sizes", "1"]) == 0


def test_a_folder_without_its_summary_is_read_with_a_note(tmp_path, capsys):
    """ais_bench's own folders carry no mark: a missing summary is named, the outputs are still read."""
    stems = ["ILSVRC2012_val_00000001", "ILSVRC2012_val_00000002"]
    folder = tmp_path / "result" / "2024_01_01-00_00_00"
    folder.mkdir(parents=True)
    for index, stem in enumerate(stems):
        row = np.zeros(1000, "<f4")
        row[index] = 1
        row.tofile(folder / f"{stem}_0.bin")
    labels = write_labels(tmp_path / "val_label.txt", stems)
    argv = ["--folder-davinci-target", str(tmp_path / "result"), "--annotation-file-path", str(labels)]
    argv += ["--result-json-path", str(tmp_path)]
    assert postprocess_script.main(argv) == 0
    err = capsys.readouterr().err
    assert f"note: {folder}_summary.json: no summary" in err, err
    (folder.parent / f"{folder.name}_summary.json").write_text("{}")
    assert postprocess_script.main(argv) == 0
    assert "no summary" not in capsys.readouterr().err
