"""Helpers of the hostile-input catalogues (test_hostile_*.py): scripts run in a subprocess under a time limit
and an address-space limit, so a regression fails instead of hanging or exhausting the machine; full disks,
read-only folders and users without root's file permissions, made real with the kernel's own means."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30


def limited(memory_bytes: int | None, file_bytes: int | None = None):
    """A preexec_fn: cap the address space (and optionally the size of any file written)."""

    def apply() -> None:
        if memory_bytes is not None:
            resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        if file_bytes is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # over the limit, write() fails with EFBIG
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))

    return apply


def run_script(
    script: str,
    *args,
    cwd: Path,
    memory: int = 6 * GIB,
    timeout: float = 300,
    prefix: tuple[str, ...] = (),
    file_bytes: int | None = None,
) -> subprocess.CompletedProcess:
    """Run a script of the repository (`twins_*.py`, or `-m module`) with limits; output captured as text."""
    command = [
        *prefix,
        sys.executable,
        *(["-m", script[3:]] if script.startswith("-m ") else [str(ROOT / script)]),
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [*command, *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        errors="backslashreplace",
        timeout=timeout,
        env=env,
        preexec_fn=limited(memory, file_bytes),
    )


def run_preprocess(data: Path, prep: Path, *extra, cwd: Path, memory: int, **options):
    """The preprocess script from `data` into `prep` (no progress bar), under `memory`."""
    command = ("--data_path", data, "--prep_dataset", prep, "--no-progress", *extra)
    return run_script("twins_pcpvt_s_preprocess.py", *command, cwd=cwd, memory=memory, timeout=120, **options)


def run_postprocess(result: Path, labels: Path, report: Path, *, cwd: Path, memory: int):
    """The postprocess script scoring `result` against `labels` into the folder `report`, under `memory`."""
    command = ("--folder-davinci-target", result, "--annotation-file-path", labels)
    return run_script(
        "twins_pcpvt_s_postprocess.py",
        *command,
        "--result-json-path",
        report,
        cwd=cwd,
        memory=memory,
        timeout=120,
    )


def run_compare(a: Path, b: Path, *, cwd: Path, memory: int):
    return run_script("twins_pcpvt_s_compare.py", a, b, cwd=cwd, memory=memory, timeout=120)


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    """The `error: ...` lines of stderr (argparse writes its usage errors as `<prog>: error: ...`)."""
    return [
        line
        for line in result.stderr.splitlines()
        if line.startswith("error: ") or (": error: " in line and not line.startswith(" "))
    ]


def assert_clean_failure(result: subprocess.CompletedProcess, status: int, *fragments: str) -> str:
    """Exit `status`, no traceback, exactly one `error:` line holding every fragment; returns that line."""
    assert result.returncode == status, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = error_lines(result)
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


# ----------------------------------------------------------------------------------------------------------
# Kernel-made conditions


def _can_mount_tmpfs(folder: Path) -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--mount", "--", "mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)],
        capture_output=True,
        timeout=30,
    )
    return probe.returncode == 0


def full_disk(folder: Path, size: str = "64k", *, fill: bool = False, fallback_bytes: int = 64 * 1024):
    """(command prefix, file size limit) under which writing more than a little into `folder` fails.

    As root: a private mount namespace where `folder` is a `size` tmpfs (a real ENOSPC; `fill` fills it up
    first), invisible to the rest of the system; what the command leaves there is listed on stderr for
    `files_left`. Otherwise: a file size limit of `fallback_bytes` (EFBIG), the same failure path.
    """
    folder.mkdir(parents=True, exist_ok=True)
    if _can_mount_tmpfs(folder):
        filler = 'cat /dev/zero > "$folder/.filler" 2>/dev/null; ' if fill else ""
        script = (
            'folder="$1"; mount -t tmpfs -o size="$2" tmpfs "$folder" || exit 99; shift 2; '
            + filler
            + '"$@"; status=$?; '
            + 'echo "LEFT:$(ls -A "$folder" | grep -vx .filler | tr "\\n" /)" >&2; exit $status'
        )
        return ("unshare", "--mount", "--", "sh", "-c", script, "sh", str(folder), size), None
    return (), fallback_bytes


def files_left(result: subprocess.CompletedProcess, folder: Path) -> list[str]:
    """The files a command left in `folder` (for a tmpfs of `full_disk`: as listed before it vanished)."""
    for line in result.stderr.splitlines():
        if line.startswith("LEFT:"):
            return [name for name in line[5:].split("/") if name]
    return sorted(os.listdir(folder))


def without_file_permissions_of_root(probe_path: Path) -> tuple[str, ...]:
    """A command prefix under which file modes apply (root's DAC capabilities dropped); () when not root.

    Skips when running as root without a way to drop the capabilities: the case cannot be made here."""
    if os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root and setpriv is missing: file permissions cannot be enforced")
    prefix = (setpriv, "--inh-caps", "-all", "--bounding-set", "-dac_override,-dac_read_search", "--")
    probe = subprocess.run(
        [*prefix, sys.executable, "-c", f"open({str(probe_path / '.probe')!r}, 'w')"], capture_output=True
    )
    if probe.returncode == 0:
        (probe_path / ".probe").unlink()
        pytest.skip("dropping root's file-permission capabilities had no effect here")
    return prefix


def read_only_folder(folder: Path) -> tuple[str, ...]:
    """Make `folder` read-only (mode 0555); returns the prefix under which that binds (see above)."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    return without_file_permissions_of_root(folder)


def bound_socket(path: Path):
    """A UNIX socket bound at `path` (close it when done); skips when the path is too long for one."""
    import socket

    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(path))
    except OSError as exc:
        server.close()
        pytest.skip(f"cannot bind a UNIX socket at {path} ({exc})")
    return server


def live_children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (from /proc), zombies excepted."""
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            children.append(int(entry))
    return children


def alive(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# ----------------------------------------------------------------------------------------------------------
# Small real inputs


def tiny_onnx(path: Path) -> Path:
    """A real ONNX classifier of the toolkit's interface in a few kilobytes: input [N, 3, 224, 224], output
    [N, 1000] (the channel means times a fixed matrix), so the runner's tests need no export."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    weights = np.random.default_rng(0).standard_normal((3, 1000)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"]),
            helper.make_node("MatMul", ["flat", "weights"], ["output"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, ["N", 1000])],
        [numpy_helper.from_array(weights, "weights")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def write_tensors(folder: Path, names: list[str], seed: int = 0) -> Path:
    """`folder/<name>` for each name: a random preprocessed tensor (raw float32 [3, 224, 224])."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in names:
        rng.standard_normal((3, 224, 224), dtype=np.float32).astype("<f4").tofile(folder / name)
    return folder
