"""The ray engine (`--engine ray`) on a local Ray cluster: the local runner's results, exactly-once outputs
under killed actors, writers, jobs and nodes, signals, and its checks.

Every job runs in its own process group with a time limit, so a hang fails the test and leaves no Ray process
behind. The tests that start Ray are skipped where Ray is not installed (requirements-dev.txt installs it).
Faults come from test doubles of the engine's stages and a two-node cluster (ray_faults.py).
"""

from __future__ import annotations

import importlib.util
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ray_faults import FAULT_ENV, Fault

import twins_pcpvt_s_infer as infer_script
import twins_pcpvt_s_postprocess as postprocess_script
import twins_pcpvt_s_preprocess as preprocess_script
from twins_pcpvt.common import OUTPUT_BYTES, ToolkitError, UsageError, unfinished
from twins_pcpvt.data import read_manifest
from twins_pcpvt.infer.devices import actor_devices
from twins_pcpvt.infer.outputs import OUTPUT_MARK
from twins_pcpvt.infer.ray_cluster import actor_requests, cap_cpu_copies, shortfall
from twins_pcpvt.infer.ray_plan import JOB_RECORD

ROOT = Path(__file__).resolve().parents[1]
FAULTS = Path(__file__).with_name("ray_faults.py")
JOB_TIME_LIMIT_S = 300  # a local cluster starts in seconds, slower on a busy machine; a hang fails
needs_ray = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None,
    reason='Ray is not installed (pip install "ray[data]"; requirements-dev.txt installs it)',
)


def start_engine(
    *argv, env: dict | None = None, script: Path = ROOT / "twins_pcpvt_s_infer.py"
) -> subprocess.Popen:
    """The ray engine in its own process group; `script` FAULTS runs it with the stage doubles."""
    command = [sys.executable, str(script), "--engine", "ray", *map(str, argv)]
    path = os.pathsep.join([str(ROOT), str(FAULTS.parent)])  # Ray's workers import the doubles from there
    environment = os.environ | {"PYTHONPATH": path} | (env or {})
    return subprocess.Popen(
        [*command, "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
        start_new_session=True,  # its own process group: Ray's processes go with it
    )


def kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_engine(*argv, env: dict | None = None, script: Path = ROOT / "twins_pcpvt_s_infer.py"):
    """Run the ray engine to its end within JOB_TIME_LIMIT_S; whatever it left running is killed."""
    process = start_engine(*argv, env=env, script=script)
    try:
        out, err = process.communicate(timeout=JOB_TIME_LIMIT_S)
    except subprocess.TimeoutExpired:
        kill_group(process)
        out, err = process.communicate()
        pytest.fail(f"the ray engine did not finish in {JOB_TIME_LIMIT_S} s\n{err[-3000:]}")
    finally:
        kill_group(process)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def run_local(*argv) -> int:
    return infer_script.main([*map(str, argv), "--no-progress"])


def outputs(folder: Path) -> dict[str, np.ndarray]:
    return {path.name: np.fromfile(path, dtype="<f4") for path in sorted(folder.glob("*_0.bin"))}


def assert_exactly(folder: Path, stems: list[str]) -> None:
    """The folder holds one complete output per stem and nothing else (no temporary, no job record)."""
    assert sorted(path.name for path in folder.iterdir()) == sorted(f"{stem}_0.bin" for stem in stems)
    assert all(path.stat().st_size == OUTPUT_BYTES for path in folder.iterdir())


def fault_fired(marker: Path) -> int:
    """The pid the killed process wrote into the marker; that process is gone."""
    pid = int(marker.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    return pid


def group_alive(pgid: int) -> list[str]:
    """The command names of the live (not zombie) processes of a process group."""
    alive = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat_file.read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        state, _parent, group = text[text.rindex(")") + 2 :].split()[:3]  # "pid (name) state ppid pgrp ..."
        if state != "Z" and int(group) == pgid:
            alive.append(name)
    return alive


def assert_group_ends(pgid: int, within_s: float = 60) -> None:
    """Every process the engine started (its process group) is gone within `within_s`."""
    deadline = time.monotonic() + within_s
    while group_alive(pgid):
        assert time.monotonic() < deadline, f"still running: {group_alive(pgid)}"
        time.sleep(0.2)


def wait_for(condition, process: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + JOB_TIME_LIMIT_S
    while not condition():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{what} did not happen in time"
        time.sleep(0.05)


def free_port() -> int:
    """A port nothing listens on (bound and closed again)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def seven_inputs(tmp_path_factory):
    """Seven random tensors: (folder, stems)."""
    folder = tmp_path_factory.mktemp("ray_inputs") / "prep"
    folder.mkdir()
    rng = np.random.default_rng(3)
    stems = [f"ILSVRC2012_val_{index:08d}" for index in range(1, 8)]
    for stem in stems:
        rng.standard_normal((3, 224, 224), dtype=np.float32).tofile(folder / f"{stem}.bin")
    return folder, stems


@pytest.fixture(scope="module")
def undisturbed(onnx_path, seven_inputs, tmp_path_factory) -> dict[str, np.ndarray]:
    """The ray engine's outputs of the seven inputs at batch size 2, with no fault."""
    folder, stems = seven_inputs
    output = tmp_path_factory.mktemp("ray_undisturbed")
    done = run_engine(
        "--model", onnx_path, "--backend", "onnxruntime", "--input", folder, "--output", output,
        "--output_dirname", "run", "--batchsize", 2,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert_exactly(output / "run", stems)
    return outputs(output / "run")


# ---- checks that need no cluster ---------------------------------------------------------------------------
def test_actor_requests_leave_the_read_stage_a_cpu():
    for cpus in (1, 2, 3, 8):
        for count in (1, 2, 3, 5):
            requests = actor_requests(["cpu"] * count, {"CPU": float(cpus)})
            assert 0 <= requests["num_cpus"] <= 1
            assert requests["num_cpus"] * count <= cpus - 1
    assert actor_requests(["cpu", "cpu"], {"CPU": 2.0}) == {"num_cpus": 0.5}
    assert actor_requests(["cuda:0", "cuda:1"], {"CPU": 8.0, "GPU": 2.0}) == {"num_cpus": 1.0, "num_gpus": 1}
    assert actor_requests(["npu:0"], {"CPU": 4.0, "NPU": 8.0}) == {"num_cpus": 1.0, "resources": {"NPU": 1}}
    with pytest.raises(ToolkitError, match="has 1 GPU, 2 needed"):
        actor_requests(["cuda:0", "cuda:1"], {"CPU": 8.0, "GPU": 1.0})
    with pytest.raises(ToolkitError, match="read stage needs at least one"):
        actor_requests(["cpu"], {"CPU": 0.0})


def test_device_lists():
    assert actor_devices("onnxruntime", None) == ["cpu"]
    assert actor_devices("onnxruntime", "cpu,cpu,cpu") == ["cpu"] * 3
    assert actor_devices("onnxruntime", "cuda:0,cuda:1") == ["cuda:0", "cuda:1"]
    assert actor_devices("ais", "0,1") == ["npu:0", "npu:1"]
    with pytest.raises(UsageError, match="one kind of device"):
        actor_devices("onnxruntime", "cpu,cuda:0")
    with pytest.raises(UsageError, match="named once"):
        actor_devices("ais", "1,1")


def test_a_fault_fires_once(tmp_path):
    fault = Fault("model", 2, str(tmp_path / "marker"))
    assert not fault.fires("model", 1) and not fault.fires("writer", 2)
    assert fault.fires("model", 2)
    assert int((tmp_path / "marker").read_text()) == os.getpid()
    assert not fault.fires("model", 2)


def test_cpu_copies_are_at_most_one_per_cpu(capsys):
    assert cap_cpu_copies(["cpu"] * 8, {"CPU": 2.0}) == ["cpu", "cpu"]
    assert capsys.readouterr().err == (
        "[INFO] --device asks for 8 CPU model copies; the Ray cluster has 2 CPUs: running 2, one per CPU\n"
    )
    assert cap_cpu_copies(["cpu"] * 3, {"CPU": 0.5}) == ["cpu"]
    assert "running 1" in capsys.readouterr().err
    for devices, cluster in (
        (["cpu", "cpu"], {"CPU": 2.0}),
        (["cpu"], {"CPU": 0.0}),
        (["cuda:0", "cuda:1", "cuda:2"], {"CPU": 1.0, "GPU": 3.0}),  # GPUs and NPUs are counted by Ray
    ):
        assert cap_cpu_copies(devices, cluster) == devices
    assert capsys.readouterr().err == ""


def test_nodes_left_are_checked_against_the_plan():
    """After nodes are lost, what is left must hold the model actors as planned, beside a CPU for reads."""
    one = actor_requests(["cpu"], {"CPU": 3.0})
    assert one["num_cpus"] == 1.0
    assert shortfall(["cpu"], one, {"CPU": 2.0}) is None
    assert shortfall(["cpu"], one, {"CPU": 1.0}) == (
        "the 1 CPUs left cannot hold 1 model copies of 1 CPU each beside the read stage"
    )
    two = actor_requests(["cpu", "cpu"], {"CPU": 5.0})
    assert shortfall(["cpu", "cpu"], two, {"CPU": 3.0}) is None
    assert "the 2 CPUs left cannot hold 2 model copies" in shortfall(["cpu", "cpu"], two, {"CPU": 2.0})
    half = actor_requests(["cpu", "cpu"], {"CPU": 2.0})
    assert shortfall(["cpu", "cpu"], half, {"CPU": 2.0}) is None
    assert "read stage needs at least one" in shortfall(["cpu", "cpu"], half, {"CPU": 0.0})
    gpus = actor_requests(["cuda:0", "cuda:1"], {"CPU": 8.0, "GPU": 2.0})
    assert shortfall(["cuda:0", "cuda:1"], gpus, {"CPU": 4.0, "GPU": 2.0}) is None
    assert "has 1 GPU, 2 needed" in shortfall(["cuda:0", "cuda:1"], gpus, {"CPU": 8.0, "GPU": 1.0})
    assert "cannot hold 2 model copies" in shortfall(["cuda:0", "cuda:1"], gpus, {"CPU": 2.0, "GPU": 2.0})


def make_in_the_way(path: Path, kind: str) -> str:
    """Put a `kind` of thing at `path`; returns how the refusal names it."""
    if kind == "folder":
        path.mkdir()
        return "a folder"
    if kind == "FIFO":
        os.mkfifo(path)
        return "a FIFO (named pipe)"
    target = path.parent / "target.json"
    if kind == "link to a file":
        target.write_text("kept\n")
    path.symlink_to(target)  # else a dangling link
    return "a symbolic link"


JOB_PATHS = [
    ("run_manifest.tsv", "image manifest"),
    ("run_summary.json", "summary"),
    ("run/.ray_job.json", "job record"),
]


@pytest.mark.parametrize("kind", ["folder", "link to a file", "dangling link", "FIFO"])
@pytest.mark.parametrize(("where", "what"), JOB_PATHS)
def test_the_job_paths_are_checked_before_any_work(kind, where, what, tmp_path, capsys):
    """The summary, the image manifest and the job record must be free for regular files: anything else
    there is one line before the model is loaded (here it does not exist); nothing is written or replaced."""
    images = tmp_path / "val"
    images.mkdir()
    (images / "ILSVRC2012_val_00000001.JPEG").write_bytes(b"never read")
    output = tmp_path / "out"
    (output / "run").mkdir(parents=True)
    named = make_in_the_way(output / where, kind)
    before = sorted((path, path.is_symlink()) for path in tmp_path.rglob("*"))
    code = run_local("--model", tmp_path / "missing.onnx", "--backend", "onnxruntime", "--engine", "ray",
                     "--input", images, "--output", output, "--output_dirname", "run")  # fmt: skip
    assert code == 1
    assert capsys.readouterr().err.splitlines() == [
        f"error: {output / where}: is {named}, where the job writes its {what}; it is neither replaced nor "
        "written through: move it or choose another --output_dirname"
    ]
    assert sorted((path, path.is_symlink()) for path in tmp_path.rglob("*")) == before
    if kind == "link to a file":
        assert (output / where).parent.joinpath("target.json").read_text() == "kept\n"


@pytest.mark.slow
@needs_ray
@pytest.mark.parametrize("failure", ["no cluster at --ray-address", "too few GPUs in the cluster"])
def test_a_failed_ray_start_leaves_nothing(failure, onnx_path, make_bin_folder, tmp_path, capsys):
    """Ray does not start, or starts without what the job needs: one line, and no folder, mark or job record,
    so that a local run into the same folder is not refused."""
    folder, stems, _ = make_bin_folder(2)
    flags = ["--ray-address", f"127.0.0.1:{free_port()}"] if "address" in failure else ["--device", "cuda:0"]
    for output in (tmp_path / "new", tmp_path / "there"):  # --output made by the job, or there before
        if output.name == "there":
            output.mkdir()
        job = ("--model", onnx_path, "--backend", "onnxruntime", "--input", folder, "--output", output,
               "--output_dirname", "run")  # fmt: skip
        capsys.readouterr()
        assert run_local(*job, "--engine", "ray", *flags) == 1
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and ("nothing answers there" in errors[0] or "0 GPU, 1 needed" in errors[0])
        assert (not output.exists()) if output.name == "new" else not any(output.iterdir())
        assert run_local(*job) == 0
        assert_exactly(output / "run", stems)
        assert sorted(path.name for path in output.iterdir()) == [
            f".run{OUTPUT_MARK}",
            "run",
            "run_summary.json",
        ]


@pytest.mark.slow
def test_missing_ray_is_one_line(onnx_path, seven_inputs, tmp_path):
    blocker = tmp_path / "no_ray" / "ray"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError(\"No module named 'ray'\")\n")
    folder, _ = seven_inputs
    done = subprocess.run(
        [sys.executable, str(ROOT / "twins_pcpvt_s_infer.py"), "--engine", "ray", "--model", str(onnx_path),
         "--input", str(folder), "--output", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120,
        env=os.environ | {"PYTHONPATH": os.pathsep.join([str(blocker.parent), str(ROOT)])},
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: --engine ray needs Ray Data, which is not installed (No module named 'ray'): "
        'pip install "ray[data]"'
    ]
    assert not (tmp_path / "out").exists()


def test_usage_errors(onnx_path, seven_inputs, tmp_path, capsys):
    folder, _ = seven_inputs
    model = ("--model", onnx_path, "--backend", "onnxruntime")
    assert run_local(*model, "--engine", "ray", "--output", tmp_path) == 2
    assert "give --input" in capsys.readouterr().err
    assert run_local(*model, "--engine", "ray", "--input", folder) == 2
    assert "give --output" in capsys.readouterr().err
    assert run_local(*model, "--input", folder, "--ray-address", "auto") == 2
    assert "--ray-address needs --engine ray" in capsys.readouterr().err
    common = (*model, "--engine", "ray", "--input", folder, "--output", tmp_path)
    assert run_local(*common, "--device", "cpu,cuda:0") == 2
    assert "one kind of device" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_a_model_that_cannot_load_fails_before_the_job(seven_inputs, tmp_path, capsys):
    folder, _ = seven_inputs
    bad = tmp_path / "bad.onnx"
    bad.write_text("not a model")
    code = run_local("--model", bad, "--backend", "onnxruntime", "--engine", "ray", "--input", folder,
                     "--output", tmp_path / "out")  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {bad}: ONNX Runtime cannot load the model")
    assert not (tmp_path / "out").exists()


def test_a_worker_error_comes_back_as_its_one_line():
    from twins_pcpvt.infer.ray_engine import _failure

    remote = RuntimeError(
        "The actor died because of an error raised in its creation task\nTraceback (most recent call last):\n"
        '  File "x.py", line 1, in f\ntwins_pcpvt.common.ToolkitError: m.onnx: cannot load the model (bad)\n'
    )
    assert _failure(remote) == "m.onnx: cannot load the model (bad)"
    assert _failure(ValueError("first\nlast")) == "ValueError: last"


def interrupted_job(onnx_path, folder: Path, output: Path, monkeypatch) -> tuple:
    """The engine's output folder `output/job` as a job killed after writing every output leaves it: the job
    record of the engine itself, the outputs the local runner gives. Ray refuses to start from then on."""
    from twins_pcpvt.infer import ray_engine

    job = ("--model", onnx_path, "--backend", "onnxruntime", "--engine", "ray", "--input", folder,
           "--output", output, "--output_dirname", "job")  # fmt: skip
    assert run_local(*job[:4], "--input", folder, "--output", output, "--output_dirname", "local") == 0
    local = outputs(output / "local")

    def killed_after_writing(ray, args, pending, items, run_folder, *rest, **plan):
        for name, values in local.items():
            (run_folder / name).write_bytes(values.tobytes())
        raise ToolkitError("the cluster went away in this test")

    def refuse(ray, address):
        raise ToolkitError("no cluster in this test")

    monkeypatch.setattr(ray_engine, "_run_on_ray", killed_after_writing)
    assert run_local(*job) == 1
    assert (output / "job" / JOB_RECORD).is_file()
    monkeypatch.undo()
    monkeypatch.setattr(ray_engine, "start_ray", refuse)
    return job, local


@pytest.mark.slow
@needs_ray
def test_a_rerun_with_nothing_to_infer_drops_outputs_of_gone_inputs(
    onnx_path, make_bin_folder, tmp_path, monkeypatch, capsys
):
    """Fewer inputs since the job was killed: their outputs go, no cluster starts, the precision is kept."""
    folder, stems, _ = make_bin_folder(3)
    job, local = interrupted_job(onnx_path, folder, tmp_path / "out", monkeypatch)
    (folder / f"{stems[2]}.bin").unlink()
    capsys.readouterr()
    assert run_local(*job) == 0
    assert "0 of 2 inputs to infer" in capsys.readouterr().err
    run = tmp_path / "out" / "job"
    assert not (run / JOB_RECORD).exists()
    assert sorted(outputs(run)) == [f"{stem}_0.bin" for stem in stems[:2]]
    assert all(np.array_equal(values, local[name]) for name, values in outputs(run).items())
    summary = json.loads((tmp_path / "out" / "job_summary.json").read_text())
    assert (summary["precision"], summary["skipped_images"], len(summary["filesinfo"])) == ("fp32", 2, 2)


@pytest.mark.slow
@needs_ray
def test_a_rerun_removes_the_output_of_a_changed_input(
    onnx_path, make_bin_folder, tmp_path, monkeypatch, capsys
):
    """An input preprocessed again under its name: its output is removed and pending (Ray refused here)."""
    folder, stems, _ = make_bin_folder(3)
    job, _ = interrupted_job(onnx_path, folder, tmp_path / "out", monkeypatch)
    changed = folder / f"{stems[1]}.bin"
    np.random.default_rng(9).standard_normal((3, 224, 224), dtype=np.float32).tofile(changed)
    os.utime(changed, ns=(time.time_ns(), changed.stat().st_mtime_ns + 10**9))
    capsys.readouterr()
    assert run_local(*job) == 1
    err = capsys.readouterr().err
    assert "1 of 3 inputs to infer" in err and "removed 1 outputs whose input changed or is gone" in err
    run = tmp_path / "out" / "job"
    assert (run / JOB_RECORD).is_file()
    assert sorted(outputs(run)) == [f"{stems[0]}_0.bin", f"{stems[2]}_0.bin"]


# ---- jobs on a local cluster -------------------------------------------------------------------------------
@needs_ray
@pytest.mark.slow
def test_two_actors_match_the_local_runner(onnx_path, seven_inputs, tmp_path):
    """Two CPU actors at batch 4 against the local runner at batch 1: within 1e-4, same top-1."""
    folder, stems = seven_inputs
    model = ("--model", onnx_path, "--backend", "onnxruntime")
    assert run_local(*model, "--input", folder, "--output", tmp_path, "--output_dirname", "local",
                     "--batchsize", 1) == 0  # fmt: skip
    done = run_engine(
        "--model", onnx_path, "--backend", "onnxruntime", "--input", folder, "--output", tmp_path,
        "--output_dirname", "ray", "--batchsize", 4, "--device", "cpu,cpu",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert_exactly(tmp_path / "ray", stems)
    local, ray = outputs(tmp_path / "local"), outputs(tmp_path / "ray")
    assert local.keys() == ray.keys()
    for name in local:
        assert float(np.abs(local[name] - ray[name]).max()) <= 1e-4
        assert int(np.argmax(local[name])) == int(np.argmax(ray[name]))
    summary = json.loads((tmp_path / "ray_summary.json").read_text())
    assert (summary["engine"], summary["backend"], summary["device"]) == ("ray", "onnxruntime", "cpu,cpu")
    assert (summary["images"], summary["skipped_images"], summary["batchsize"]) == (7, 0, 4)
    assert summary["NPU_compute_time"]["count"] == 2 and summary["padded_images"] == 1
    assert summary["throughput"] == pytest.approx(1000 * 4 / summary["NPU_compute_time"]["mean"])
    assert summary["filesinfo"]["6"] == {
        "infiles": [str(folder / f"{stems[6]}.bin")],
        "outfiles": [str(tmp_path / "ray" / f"{stems[6]}_0.bin")],
    }
    assert 1 <= len(summary["workers"]) <= 2
    assert not (tmp_path / "ray_manifest.tsv").exists()  # tensors come with the preprocess's manifest


@needs_ray
@pytest.mark.slow
def test_images_in_give_the_preprocess_and_local_runner_results(onnx_path, tmp_path):
    """A folder of images: the transform runs in Ray tasks, no tensor is written, the manifest is; a bad image
    is named and left out; the postprocess reads the outputs with that manifest."""
    from matplotlib import cbook
    from PIL import Image

    photo = Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")
    data = tmp_path / "val"
    variants = {
        "n01440764/ILSVRC2012_val_00000001.JPEG": photo,
        "n01440764/ILSVRC2012_val_00000002.png": photo.rotate(90, expand=True),
        "n01443537/ILSVRC2012_val_00000003.JPEG": photo.resize((300, 200)),
        "n01443537/ILSVRC2012_val_00000004.JPEG": photo.crop((50, 80, 400, 500)),
    }
    for name, image in variants.items():
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        image.save(data / name)
    (data / "n01443537/ILSVRC2012_val_00000005.JPEG").write_bytes(b"not an image")
    before = sorted(path.relative_to(data) for path in data.rglob("*"))

    assert preprocess_script.main(["--data_path", str(data), "--prep_dataset", str(tmp_path / "prep"),
                                   "--no-progress"]) == 1  # fmt: skip
    assert run_local("--model", onnx_path, "--backend", "onnxruntime", "--input", tmp_path / "prep",
                     "--output", tmp_path, "--output_dirname", "local", "--batchsize", 2) == 0  # fmt: skip
    done = run_engine(
        "--model", onnx_path, "--backend", "onnxruntime", "--input", data, "--output", tmp_path,
        "--output_dirname", "ray", "--batchsize", 2,
    )  # fmt: skip
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and "ILSVRC2012_val_00000005.JPEG" in errors[0]
    assert errors[1].startswith("error: 1 of 5 inputs failed")
    assert sorted(path.relative_to(data) for path in data.rglob("*")) == before  # no tensor written there

    stems = [f"ILSVRC2012_val_{index:08d}" for index in range(1, 5)]
    assert_exactly(tmp_path / "ray", stems)
    local, ray = outputs(tmp_path / "local"), outputs(tmp_path / "ray")
    for name in local:
        assert float(np.abs(local[name] - ray[name]).max()) <= 1e-4
    manifest = read_manifest(tmp_path / "ray_manifest.tsv")
    assert [(row.stem, row.source, row.label) for row in manifest] == [
        (row.stem, row.source, row.label) for row in read_manifest(tmp_path / "prep")
    ]
    assert [row.label for row in manifest] == [0, 0, 1, 1]

    assert postprocess_script.main([
        "--folder-davinci-target", str(tmp_path / "ray"),
        "--annotation-file-path", str(tmp_path / "ray_manifest.tsv"),
        "--result-json-path", str(tmp_path), "--json-file-name", "result.json",
    ]) == 0  # fmt: skip
    result = json.loads((tmp_path / "result.json").read_text())
    assert {"key": "Number of images", "value": "4"} in result["value"]


@needs_ray
@pytest.mark.slow
def test_a_model_actor_killed_after_its_second_batch(onnx_path, seven_inputs, undisturbed, tmp_path):
    folder, stems = seven_inputs
    marker = tmp_path / "killed"
    done = run_engine(
        "--model", onnx_path, "--backend", "onnxruntime", "--input", folder, "--output", tmp_path,
        "--output_dirname", "run", "--batchsize", 2,
        env={FAULT_ENV: f"model:2:{marker}"}, script=FAULTS,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    killed = fault_fired(marker)
    summary = json.loads((tmp_path / "run_summary.json").read_text())
    assert killed not in [worker["pid"] for worker in summary["workers"]]  # a restarted actor finished
    assert_exactly(tmp_path / "run", stems)
    after = outputs(tmp_path / "run")
    assert after.keys() == undisturbed.keys()
    assert all(np.array_equal(after[name], undisturbed[name]) for name in after)
    assert summary["images"] == 7 and summary["NPU_compute_time"]["count"] == 4


@needs_ray
@pytest.mark.slow
def test_a_writer_killed_in_the_middle_of_a_batch(onnx_path, seven_inputs, undisturbed, tmp_path):
    folder, stems = seven_inputs
    marker = tmp_path / "killed"
    done = run_engine(
        "--model", onnx_path, "--backend", "onnxruntime", "--input", folder, "--output", tmp_path,
        "--output_dirname", "run", "--batchsize", 2,
        env={FAULT_ENV: f"writer:1:{marker}"}, script=FAULTS,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    fault_fired(marker)
    assert_exactly(tmp_path / "run", stems)  # the half-written temporary is gone
    after = outputs(tmp_path / "run")
    assert after.keys() == undisturbed.keys()
    assert all(np.array_equal(after[name], undisturbed[name]) for name in after)


@needs_ray
@pytest.mark.slow
def test_a_rerun_after_the_whole_job_was_killed_does_only_the_missing_inputs(
    onnx_path, make_bin_folder, tmp_path
):
    folder, stems, _ = make_bin_folder(32)  # two read tasks of 16
    job = ("--model", onnx_path, "--backend", "onnxruntime", "--input", folder, "--output", tmp_path,
           "--output_dirname", "run", "--batchsize", 4)  # fmt: skip
    first = start_engine(*job)
    run = tmp_path / "run"
    deadline = time.monotonic() + JOB_TIME_LIMIT_S
    try:
        while not any(run.glob("*_0.bin")):
            assert first.poll() is None, first.communicate()[1]
            assert time.monotonic() < deadline, "no output appeared in time"
            time.sleep(0.02)
    finally:
        kill_group(first)
        first.communicate()
    kept = {path.name for path in run.glob("*_0.bin")}
    assert 0 < len(kept) < len(stems), "the job was killed too late to leave work undone"
    assert (run / JOB_RECORD).is_file()
    assert "unfinished" in (unfinished(run) or "")  # no reader takes it for a result

    other = run_engine(*job, "--outfmt", "NPY")
    assert other.returncode == 1 and "unfinished outputs of another job" in other.stderr

    done = run_engine(*job)
    assert done.returncode == 0, done.stderr
    assert "continuing an unfinished job" in done.stderr
    summary = json.loads((tmp_path / "run_summary.json").read_text())
    assert (summary["skipped_images"], summary["images"]) == (len(kept), len(stems) - len(kept))
    assert len(summary["filesinfo"]) == len(stems)
    assert_exactly(run, stems)
    assert unfinished(run) is None
    assert run_local(*job[:-3], "local", "--batchsize", 4) == 0
    local, ray = outputs(tmp_path / "local"), outputs(run)
    assert local.keys() == ray.keys()
    assert all(float(np.abs(local[name] - ray[name]).max()) <= 1e-4 for name in local)


@needs_ray
@pytest.mark.slow
def test_a_rerun_infers_a_changed_input_again(onnx_path, make_bin_folder, tmp_path, monkeypatch):
    """The changed input's output is the local runner's of its new content; the others stay."""
    folder, stems, _ = make_bin_folder(3)
    job, before = interrupted_job(onnx_path, folder, tmp_path / "out", monkeypatch)
    monkeypatch.undo()
    changed = folder / f"{stems[1]}.bin"
    np.random.default_rng(9).standard_normal((3, 224, 224), dtype=np.float32).tofile(changed)
    os.utime(changed, ns=(time.time_ns(), changed.stat().st_mtime_ns + 10**9))
    done = run_engine(*(arg for arg in job if arg not in ("--engine", "ray")))
    assert done.returncode == 0, done.stderr
    assert "1 of 3 inputs to infer" in done.stderr
    assert (
        run_local(*job[:4], "--input", folder, "--output", tmp_path / "out", "--output_dirname", "now") == 0
    )
    now, run = outputs(tmp_path / "out" / "now"), outputs(tmp_path / "out" / "job")
    assert sorted(run) == sorted(now) and not (tmp_path / "out" / "job" / JOB_RECORD).exists()
    assert all(float(np.abs(now[name] - run[name]).max()) <= 1e-4 for name in now)
    assert float(np.abs(before[f"{stems[1]}_0.bin"] - run[f"{stems[1]}_0.bin"]).max()) > 1e-2
    summary = json.loads((tmp_path / "out" / "job_summary.json").read_text())
    assert (summary["precision"], summary["images"], summary["skipped_images"]) == ("fp32", 1, 2)


@needs_ray
@pytest.mark.slow
def test_joining_an_existing_cluster(onnx_path, seven_inputs, undisturbed, tmp_path):
    """`--ray-address` joins a running cluster (here one a helper process holds) and leaves it running."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import ray, sys, time\n"
         "context = ray.init(address='local', include_dashboard=False)\n"
         "print(context.address_info['gcs_address'], flush=True)\n"
         "sys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        start_new_session=True, env=os.environ | {"RAY_AUTH_MODE": "token"},
    )  # fmt: skip
    try:
        ready, _, _ = select.select([holder.stdout], [], [], JOB_TIME_LIMIT_S)
        address = holder.stdout.readline().strip() if ready else ""
        assert address, "the helper did not start a cluster in time"
        folder, stems = seven_inputs
        done = run_engine(
            "--model", onnx_path, "--backend", "onnxruntime", "--input", folder, "--output", tmp_path,
            "--output_dirname", "run", "--batchsize", 2, "--ray-address", address,
            env={"RAY_AUTH_MODE": "token"},  # the token Ray keeps in ~/.ray/auth_token
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert_exactly(tmp_path / "run", stems)
        after = outputs(tmp_path / "run")
        assert all(np.array_equal(after[name], undisturbed[name]) for name in undisturbed)
        assert holder.poll() is None
    finally:
        kill_group(holder)
        holder.communicate()


@needs_ray
@pytest.mark.slow
def test_cpu_copies_beyond_the_cluster_cpus_are_not_started(onnx_path, seven_inputs, undisturbed, tmp_path):
    folder, stems = seven_inputs
    asked = 4 * (os.cpu_count() or 1)
    done = run_engine(
        "--model", onnx_path, "--backend", "onnxruntime", "--input", folder, "--output", tmp_path,
        "--output_dirname", "run", "--batchsize", 2, "--device", ",".join(["cpu"] * asked),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    notice = next(line for line in done.stderr.splitlines() if "CPU model copies" in line)
    ran = int(notice.split("running ")[1].split(",")[0])
    assert notice.startswith(
        f"[INFO] --device asks for {asked} CPU model copies; the Ray cluster has {ran} CPUs"
    )
    assert 1 <= ran < asked
    summary = json.loads((tmp_path / "run_summary.json").read_text())
    assert summary["device"] == ",".join(["cpu"] * ran) and len(summary["workers"]) <= ran
    assert_exactly(tmp_path / "run", stems)
    assert all(
        np.array_equal(values, undisturbed[name]) for name, values in outputs(tmp_path / "run").items()
    )


# ---- signals: SIGTERM as Ctrl-C, at several instants -------------------------------------------------------
def stderr_lines_after(process: subprocess.Popen, prefix: str) -> list[str]:
    """Read the engine's stderr until a line starts with `prefix`; the lines read (its stderr stays open)."""
    lines: list[str] = []
    deadline = time.monotonic() + JOB_TIME_LIMIT_S
    while not lines or not lines[-1].startswith(prefix):
        ready, _, _ = select.select([process.stderr], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"no line starting {prefix!r} in time: {lines}"
        line = process.stderr.readline()
        assert line, f"the engine ended first: {lines}"
        lines.append(line.rstrip("\n"))
    return lines


@needs_ray
@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "instant"),
    [("SIGTERM", "during Ray's start-up"), ("SIGTERM", "mid-job"), ("SIGINT", "mid-job")],
)
def test_a_signal_stops_the_job_in_one_line_and_the_rerun_continues(
    name, instant, onnx_path, make_bin_folder, tmp_path
):
    folder, stems, _ = make_bin_folder(32)  # two read tasks of 16: the first one's outputs come first
    job = ("--model", onnx_path, "--backend", "onnxruntime", "--input", folder, "--output", tmp_path / "out",
           "--output_dirname", "run", "--batchsize", 4)  # fmt: skip
    run = tmp_path / "out" / "run"
    engine = start_engine(*job)
    try:
        lines = stderr_lines_after(engine, "[INFO] ray engine: 32 of 32 inputs to infer")
        if instant == "mid-job":
            wait_for(lambda: any(run.glob("*_0.bin")), engine, "a first output")
        else:
            time.sleep(1.0)  # the model was loaded before that line; Ray starts now
        os.kill(engine.pid, getattr(signal, name))
        engine.wait(timeout=JOB_TIME_LIMIT_S)
        rest = engine.stderr.read()  # through the buffer the lines above were read from
        assert_group_ends(engine.pid)
    finally:
        kill_group(engine)
    written = len(list(run.glob("*_0.bin")))
    after = [line for line in lines[1:] + rest.splitlines() if "logging.cc" not in line]  # Ray's start line
    assert engine.returncode == 128 + getattr(signal, name), (lines, rest)
    assert after == [
        f"interrupted ({name}): {written} of 32 outputs written to {run}, each complete; rerun with "
        "--output_dirname run to continue"
    ]
    if instant == "mid-job":
        assert 0 < written < 32 and (run / JOB_RECORD).is_file()
    else:  # stopped before any output: no folder, no mark, no record
        assert written == 0 and not (tmp_path / "out").exists()
    if (name, instant) != ("SIGTERM", "mid-job"):
        return  # one rerun shows the folder continues (each rerun costs a cluster start)
    done = run_engine(*job)
    assert done.returncode == 0, done.stderr
    assert_exactly(run, stems)
    assert run_local(*job[:-3], "local", "--batchsize", 4) == 0
    local, ray = outputs(tmp_path / "out" / "local"), outputs(run)
    assert local.keys() == ray.keys()
    assert all(float(np.abs(local[name] - ray[name]).max()) <= 1e-4 for name in local)


# ---- a node lost mid-job, on a cluster of two nodes --------------------------------------------------------
class TwoNodes:
    """A head node and a worker node on this host (Ray's own ray.cluster_utils.Cluster, in a holder process
    of ray_faults.py), driven one command a line."""

    def __init__(self, head_cpus: int, worker_cpus: int, log: Path):
        self.log = log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, str(FAULTS), "--cluster", str(head_cpus), str(worker_cpus)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, start_new_session=True,
            env=os.environ | {"RAY_AUTH_MODE": "token", "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        self.address = self.answer()

    def answer(self) -> str:
        ready, _, _ = select.select([self.process.stdout], [], [], JOB_TIME_LIMIT_S)
        line = self.process.stdout.readline().strip() if ready else ""
        assert line, f"the cluster holder did not answer in time (see {self.log.name})"
        return line

    def ask(self, command: str) -> str:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self.answer()

    def close(self) -> None:
        kill_group(self.process)
        self.process.communicate()
        self.log.close()


def lose_the_model_node(cluster: TwoNodes, job: tuple, run: Path) -> tuple[subprocess.CompletedProcess, int]:
    """Run `job` on the cluster with its model actor on the worker node, and remove that node once the first
    outputs are written: (the finished job, how many outputs there were when the node went)."""
    assert cluster.ask("hold") == "held"  # the head's CPUs are taken: the model actor starts on the worker
    engine = start_engine(*job, "--ray-address", cluster.address, env={"RAY_AUTH_MODE": "token"})
    try:
        wait_for(
            lambda: json.loads(cluster.ask("where"))["worker"] > 0, engine, "a model actor on the worker"
        )
        assert cluster.ask("release") == "released"
        wait_for(lambda: any(run.glob("*_0.bin")), engine, "a first output")
        before = len(list(run.glob("*_0.bin")))
        assert cluster.ask("remove") == "removed"
        out, err = engine.communicate(timeout=JOB_TIME_LIMIT_S)
    except subprocess.TimeoutExpired:
        kill_group(engine)
        pytest.fail(f"the job did not end in {JOB_TIME_LIMIT_S} s after its node was removed")
    finally:
        kill_group(engine)
    return subprocess.CompletedProcess(engine.args, engine.returncode, out, err), before


@needs_ray
@pytest.mark.slow
@pytest.mark.parametrize(
    ("head_cpus", "outcome"), [(2, "ends"), (1, "stops")], ids=["the rest holds the job", "too little left"]
)
def test_a_node_lost_mid_job(head_cpus, outcome, onnx_path, make_bin_folder, tmp_path):
    """The worker node holding the model actor is removed mid-job. With a head that can hold the actor and a
    read task, Ray moves the work there and the job ends with every output; with a head of one CPU (which
    the restarted actor would take from the read stage for ever), the job stops in one line naming what to
    rerun, and the rerun, planned for the one node left, completes. Either way every output equals the
    undisturbed run's (the local runner's at the same batch size, which the engine's equals bit for bit)."""
    folder, stems, _ = make_bin_folder(40)  # three read tasks of 16, 16 and 8
    job = ("--model", onnx_path, "--backend", "onnxruntime", "--input", folder, "--output", tmp_path,
           "--output_dirname", "run", "--batchsize", 2)  # fmt: skip
    run = tmp_path / "run"
    cluster = TwoNodes(head_cpus, 3, tmp_path / "cluster.log")
    try:
        done, before = lose_the_model_node(cluster, job, run)
        assert 0 < before < len(stems), "the node was removed too late to leave work undone"
        if outcome == "stops":
            written = len(list(run.glob("*_0.bin")))
            assert done.returncode == 1, done.stderr
            assert [line for line in done.stderr.splitlines() if line.startswith("error:")] == [
                "error: the Ray job stopped: the Ray cluster lost 1 node(s) mid-job: the 1 CPUs left cannot "
                "hold 1 model copies of 1 CPU each beside the read stage [stopped: "
                f"{written} of 40 outputs are in {run}, each complete; rerun with --output_dirname run to "
                "continue]"
            ]
            assert "Traceback" not in done.stderr and (run / JOB_RECORD).is_file()
            done = run_engine(*job, "--ray-address", cluster.address, env={"RAY_AUTH_MODE": "token"})
        assert done.returncode == 0, done.stderr
    finally:
        cluster.close()
    assert_exactly(run, stems)
    assert run_local(*job[:-3], "local", "--batchsize", 2) == 0
    local, ray = outputs(tmp_path / "local"), outputs(run)
    assert local.keys() == ray.keys()
    assert all(np.array_equal(local[name], ray[name]) for name in local)
