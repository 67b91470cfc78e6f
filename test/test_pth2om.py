"""test/pth2om.sh: the real export with --onnx-only, and the ATC path against stand-in `atc` and `npu-smi`.

CANN is not installed here. The stand-ins record their arguments and working folder and write the .om file,
so the script's argument assembly, chip detection, set_env.sh handling and error paths run for real;
ATC itself does not.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from standins.static_onnx import onnx_batch_size

from twins_pcpvt.export import max_abs_diff_onnx_vs_torch

ROOT = Path(__file__).resolve().parents[1]
PTH2OM = ROOT / "test" / "pth2om.sh"

NPU_SMI_INFO = """\
+-------------------+-----------------+------------------------------------------------------+
| NPU     Name      | Health          | Power(W)     Temp(C)           Hugepages-Usage(page) |
| Chip    Device    | Bus-Id          | AICore(%)    Memory-Usage(MB)                        |
+===================+=================+======================================================+
| 0       310P3     | OK              | 15.8         42                0    / 0              |
| 0       0         | 0000:82:00.0    | 0            1074 / 21534                            |
+===================+=================+======================================================+
| 1       310P3     | OK              | 15.4         43                0    / 0              |
| 0       1         | 0000:89:00.0    | 0            1070 / 21534                            |
+===================+=================+======================================================+
"""

# Records one call per line block: the working folder, then each argument; writes <--output>.om like ATC does.
FAKE_ATC = """\
#!/usr/bin/env bash
set -eu
{ echo "cwd=$PWD"; printf 'arg=%s\\n' "$@"; echo "end"; } >> "$FAKE_LOG"
output=""
for arg in "$@"; do
    case "$arg" in
        --output=*) output="${arg#--output=}" ;;
        --input_shape=input:${FAKE_ATC_FAIL_BS:-none},*) exit 3 ;;
    esac
done
printf 'fake om\\n' > "$output.om"
"""

FAKE_NPU_SMI = """\
#!/usr/bin/env bash
echo "npu-smi $*" >> "$FAKE_LOG"
cat "$FAKE_NPU_SMI_OUTPUT"
"""


def system_path() -> str:
    """A PATH with the basic tools and without any atc or npu-smi of the host."""
    folders = ["/usr/bin", "/bin"]
    return os.pathsep.join(folder for folder in folders if Path(folder).is_dir())


@pytest.fixture
def stand_ins(tmp_path):
    """A folder with fake `atc` and `npu-smi`, and the environment that puts it first on PATH."""
    tools = tmp_path / "fake_cann" / "bin"
    tools.mkdir(parents=True)
    for name, text in (("atc", FAKE_ATC), ("npu-smi", FAKE_NPU_SMI)):
        (tools / name).write_text(text)
        (tools / name).chmod(0o755)
    info = tmp_path / "npu_smi_info.txt"
    info.write_text(NPU_SMI_INFO)
    log = tmp_path / "calls.log"
    env = {key: value for key, value in os.environ.items() if not key.startswith("ASCEND")}
    env.update(
        PATH=f"{tools}{os.pathsep}{system_path()}",
        FAKE_LOG=str(log),
        FAKE_NPU_SMI_OUTPUT=str(info),
        PYTHON=sys.executable,
    )
    return tools, env, log


def run_pth2om(*args: str, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(PTH2OM), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300
    )


def atc_calls(log: Path) -> list[list[str]]:
    calls, current = [], []
    for line in log.read_text().splitlines() if log.exists() else []:
        if line == "end":
            calls.append(current)
            current = []
        elif line.startswith(("cwd=", "arg=")):
            current.append(line)
    return calls


@pytest.mark.slow
def test_onnx_only_exports_a_checked_dynamic_file(twins_model, checkpoint_path, tmp_path):
    """The guide's flow up to the ONNX file, from a checkpoint named relative to the working folder."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(checkpoint_path, work / "pcpvt_small.pth")
    env = {**os.environ, "PYTHON": sys.executable}
    result = run_pth2om(
        "--source",
        "pcpvt_small.pth",
        "--batch-sizes",
        "1,4,8,16,32",
        "--output-dir",
        "out",
        "--onnx-only",
        env=env,
        cwd=work,
    )
    assert result.returncode == 0, result.stderr
    onnx_file = work / "out" / "twins_dynamic.onnx"
    assert f"wrote {onnx_file} (" in result.stdout and "check passed" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == f"done (--onnx-only): {onnx_file}"
    assert sorted(p.name for p in onnx_file.parent.iterdir()) == ["twins_dynamic.onnx"]
    assert onnx_batch_size(onnx_file) is None
    assert max_abs_diff_onnx_vs_torch(twins_model, onnx_file, batch_size=3, seed=7) <= 1e-4


def test_atc_runs_once_per_batch_size_with_the_chip_from_npu_smi(onnx_path, stand_ins, tmp_path):
    _, env, log = stand_ins
    out = tmp_path / "om"
    result = run_pth2om(
        "--onnx", str(onnx_path), "--batch-sizes", "1,4,16", "--output-dir", str(out), env=env, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "chip from npu-smi: Ascend310P3" in result.stdout
    assert "npu-smi info" in log.read_text()
    precision_file = ROOT / "op_precision.ini"
    assert precision_file.read_text() == "Gelu=high_performance\n"
    expected = [
        [
            f"cwd={out}",
            "arg=--framework=5",
            f"arg=--model={onnx_path}",
            f"arg=--output={out}/twins_bs{bs}",
            "arg=--input_format=NCHW",
            f"arg=--input_shape=input:{bs},3,224,224",
            "arg=--soc_version=Ascend310P3",
            f"arg=--op_precision_mode={precision_file}",
            "arg=--log=error",
        ]
        for bs in (1, 4, 16)
    ]
    assert atc_calls(log) == expected
    assert sorted(p.name for p in out.iterdir()) == ["twins_bs1.om", "twins_bs16.om", "twins_bs4.om"]
    assert result.stdout.strip().splitlines()[-1] == f"done: 3 OM file(s) in {out} for Ascend310P3"


def test_soc_version_flag_skips_npu_smi(onnx_path, stand_ins, tmp_path):
    _, env, log = stand_ins
    result = run_pth2om(
        "--onnx",
        str(onnx_path),
        "--batch-sizes",
        "8",
        "--soc-version",
        "Ascend910B3",
        "--output-dir",
        str(tmp_path / "om"),
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    (call,) = atc_calls(log)
    assert "arg=--soc_version=Ascend910B3" in call and "arg=--input_shape=input:8,3,224,224" in call
    assert "npu-smi" not in log.read_text()


def test_toolkit_environment_script_is_sourced(onnx_path, stand_ins, tmp_path):
    """atc is not on PATH until $ASCEND_TOOLKIT_HOME/set_env.sh puts it there, as CANN's own script does."""
    tools, env, log = stand_ins
    toolkit = tmp_path / "ascend-toolkit"
    toolkit.mkdir()
    (toolkit / "set_env.sh").write_text(
        f'export PATH="{tools}:$PATH"\nexport ASCEND_OPP_PATH="{toolkit}/opp"\n'
        'echo "$UNSET_VARIABLE_SEEN_BY_SET_ENV" >/dev/null\n'
    )
    env = {**env, "PATH": system_path(), "ASCEND_TOOLKIT_HOME": str(toolkit)}
    result = run_pth2om(
        "--onnx",
        str(onnx_path),
        "--batch-sizes",
        "1",
        "--output-dir",
        str(tmp_path / "om"),
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert f"sourcing {toolkit}/set_env.sh" in result.stdout
    assert len(atc_calls(log)) == 1 and (tmp_path / "om" / "twins_bs1.om").is_file()


def test_without_atc_it_stops_after_the_onnx_file(onnx_path, stand_ins, tmp_path):
    _, env, log = stand_ins
    env = {**env, "PATH": system_path()}
    out = tmp_path / "om"
    result = run_pth2om("--onnx", str(onnx_path), "--output-dir", str(out), env=env, cwd=tmp_path)
    assert result.returncode == 1
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("error: atc") and str(onnx_path) in error and "--onnx-only" in error
    assert onnx_path.is_file() and list(out.iterdir()) == []


def test_a_failing_atc_run_stops_with_its_batch_size(onnx_path, stand_ins, tmp_path):
    _, env, log = stand_ins
    out = tmp_path / "om"
    result = run_pth2om(
        "--onnx",
        str(onnx_path),
        "--batch-sizes",
        "1,4,8",
        "--soc-version",
        "Ascend310P3",
        "--output-dir",
        str(out),
        env={**env, "FAKE_ATC_FAIL_BS": "4"},
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert "atc failed for batch size 4" in result.stderr
    assert len(atc_calls(log)) == 2 and sorted(p.name for p in out.iterdir()) == ["twins_bs1.om"]


def test_unreadable_npu_smi_output_asks_for_soc_version(onnx_path, stand_ins, tmp_path):
    _, env, _ = stand_ins
    Path(env["FAKE_NPU_SMI_OUTPUT"]).write_text("dcmi module initialize failed. ret is -8005\n")
    result = run_pth2om("--onnx", str(onnx_path), "--output-dir", str(tmp_path / "om"), env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert "could not read the chip name" in result.stderr and "--soc-version" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--random-init", "--batch-sizes", "1,four"], "'four' is not a positive integer"),
        (["--random-init", "--batch-sizes", "0"], "'0' is not a positive integer"),
        (["--batch-sizes", "1"], "--source is required"),
        (["--random-init", "--frobnicate"], "unknown argument '--frobnicate'"),
        (["--source"], "--source needs a value"),
    ],
)
def test_bad_usage(args, message, stand_ins, tmp_path):
    _, env, log = stand_ins
    result = run_pth2om(*args, env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert list(tmp_path.glob("*.onnx")) == [] and not log.exists()


def test_missing_onnx_file(stand_ins, tmp_path):
    _, env, _ = stand_ins
    result = run_pth2om("--onnx", str(tmp_path / "none.onnx"), env=env, cwd=tmp_path)
    assert result.returncode == 1 and f"{tmp_path / 'none.onnx'}: ONNX file not found" in result.stderr


def test_help():
    result = subprocess.run(["bash", str(PTH2OM), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("usage: bash test/pth2om.sh")


@pytest.mark.parametrize(
    "setup, message",
    [
        ("no_atc", "error: atc (CANN's model compiler) not found on PATH"),
        ("no_npu_smi", "error: npu-smi not found, so the chip is unknown; pass --soc-version"),
        ("unreadable_npu_smi", "could not read the chip name from 'npu-smi info'; pass --soc-version"),
        ("no_checkpoint", "error: --source missing.pth: checkpoint file not found"),
    ],
)
def test_every_check_runs_before_the_export(setup, message, checkpoint_path, stand_ins, tmp_path):
    """What stops the OM step is found before the export runs: no ONNX file, no atc call, one line."""
    tools, env, log = stand_ins
    if setup == "no_atc":
        (tools / "atc").unlink()
    elif setup == "no_npu_smi":
        (tools / "npu-smi").unlink()
    elif setup == "unreadable_npu_smi":
        Path(env["FAKE_NPU_SMI_OUTPUT"]).write_text("dcmi module initialize failed. ret is -8005\n")
    source = "missing.pth" if setup == "no_checkpoint" else str(checkpoint_path)
    out = tmp_path / "om"
    result = run_pth2om("--source", source, "--output-dir", str(out), env=env, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    (line,) = result.stderr.splitlines()
    assert message in line
    if setup == "no_atc":
        assert f"{out / 'twins_dynamic.onnx'} cannot be compiled" in line and "--onnx-only" in line
    assert "loading" not in result.stdout and not list(tmp_path.rglob("*.onnx")) and atc_calls(log) == []
