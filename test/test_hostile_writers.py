"""The one file writer every stage uses (twins_pcpvt.common.atomic_writer), against targets that are not plain
files, broken disks and odd umasks. Each write runs in a subprocess with a time limit: a writer that opened a
FIFO would block forever."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hostile import ROOT, bound_socket, files_left, full_disk, limited

WRITE = """
import sys
from twins_pcpvt.common import ToolkitError, atomic_write_bytes
try:
    atomic_write_bytes(sys.argv[1], b"x" * int(sys.argv[2]))
except ToolkitError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(1)
"""


def write(path: Path, size: int = 10, prefix: tuple[str, ...] = (), file_bytes: int | None = None):
    return subprocess.run(
        [*prefix, sys.executable, "-c", WRITE, str(path), str(size)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        preexec_fn=limited(2 * 2**30, file_bytes),
    )


def make(kind: str, path: Path, victim: Path):
    """Put a `kind` of file at `path`; returns what must keep it alive (a bound socket)."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        return bound_socket(path)
    elif kind == "char_device":
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    elif kind == "folder":
        path.mkdir()
    elif kind == "link_to_file":
        path.symlink_to(victim)
    elif kind == "dangling_link":
        path.symlink_to(victim.with_name("missing"))
    elif kind == "link_to_folder":
        path.symlink_to(victim.parent)
    elif kind == "link_loop":
        path.symlink_to(path)
    return None


@pytest.mark.parametrize(
    "kind, reason",
    [
        ("fifo", "FIFO"),
        ("socket", "socket"),
        ("char_device", "character device"),
        ("folder", "a folder"),
        ("link_to_file", "symbolic link"),
        ("dangling_link", "symbolic link"),
        ("link_to_folder", "symbolic link"),
        ("link_loop", "symbolic link"),
    ],
)
def test_a_target_that_is_not_a_regular_file_is_refused_and_kept(tmp_path, kind, reason):
    if kind == "char_device" and os.geteuid() != 0:
        pytest.skip("making a device node needs root")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    target = tmp_path / "out.json"
    keep = make(kind, target, victim)
    before = os.lstat(target)
    try:
        result = write(target)
    finally:
        if keep is not None:
            keep.close()
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert reason in result.stderr and str(target) in result.stderr
    after = os.lstat(target)
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)
    assert victim.read_text() == "precious"
    assert sorted(os.listdir(tmp_path)) == ["out.json", "victim.txt"]


def test_a_regular_file_is_replaced_whole(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    assert write(target, 5).returncode == 0
    assert target.read_bytes() == b"xxxxx"
    assert os.listdir(tmp_path) == ["out.json"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600), (0o000, 0o666)])
def test_new_and_replaced_files_take_the_umask_mode(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        for name in ("new.bin", "replaced.bin"):
            if name == "replaced.bin":
                (tmp_path / name).write_bytes(b"old")
                (tmp_path / name).chmod(0o600 if mode != 0o600 else 0o644)
            assert write(tmp_path / name).returncode == 0
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
    finally:
        os.umask(old)


def test_the_runner_outputs_take_the_umask_mode(tmp_path):
    from twins_pcpvt.infer.outputs import write_output

    old = os.umask(0o022)
    try:
        for fmt in ("BIN", "NPY", "TXT"):
            path = tmp_path / f"x_0.{fmt.lower()}"
            write_output(path, np.zeros((1, 1000), np.float32), fmt)
            assert stat.S_IMODE(path.stat().st_mode) == 0o644, fmt
    finally:
        os.umask(old)


def test_a_full_disk_is_one_line_and_leaves_no_partial_file(tmp_path):
    folder = tmp_path / "small"
    prefix, file_limit = full_disk(folder, size="64k")
    result = write(folder / "big.bin", 1_000_000, prefix=prefix, file_bytes=file_limit)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "No space left on device" in result.stderr or "File too large" in result.stderr
    assert files_left(result, folder) == []


def test_a_missing_folder_is_one_line(tmp_path):
    result = write(tmp_path / "missing" / "out.json")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "No such file or directory" in result.stderr
