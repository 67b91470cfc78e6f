"""Hostile inputs to the preprocess (twins_pcpvt_s_preprocess.py), class by class: what a careless user or an
attacker hands it. Every run is a subprocess under a time and an address-space limit."""

from __future__ import annotations

import io
import os
import signal
import stat
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from hostile import (
    GIB,
    ROOT,
    alive,
    assert_clean_failure,
    bound_socket,
    error_lines,
    files_left,
    full_disk,
    live_children,
    read_only_folder,
    run_preprocess,
    run_script,
)
from PIL import Image

from twins_pcpvt.common import INPUT_BYTES, ToolkitError, unfinished
from twins_pcpvt.data import (
    IMAGENET_WNIDS,
    TRANSFORM_VERSION,
    preprocess_image,
    read_class_map,
    read_manifest,
)
from twins_pcpvt.infer.inputs import collect_input_files

SCRIPT = "twins_pcpvt_s_preprocess.py"
pytestmark = pytest.mark.slow  # every case runs the preprocess in a subprocess under limits
MEMORY = 3 * GIB  # numpy, Pillow and two workers fit easily; an 18 GB resize does not


def jpeg(path: Path, size=(64, 48), seed=0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels, "RGB").save(path, "JPEG", quality=85)
    return path


def encoded(fmt: str, size=(40, 30), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, 128).save(buffer, fmt)
    return buffer.getvalue()


def preprocess(data: Path, prep: Path, *extra, cwd: Path, **options) -> subprocess.CompletedProcess:
    return run_preprocess(data, prep, *extra, cwd=cwd, memory=MEMORY, **options)


def labels_of(prep: Path) -> dict[str, int | None]:
    return {row.stem: row.label for row in read_manifest(prep)}


def tensor_names(prep: Path) -> list[str]:
    return sorted(name for name in os.listdir(prep) if name.endswith((".bin", ".npy")))


# ----------------------------------------------------------------------------------------------------------
# 1. Labels are ImageNet's labels, whatever folders are present


def test_the_shipped_class_list_is_ilsvrc_2012():
    wnids = IMAGENET_WNIDS.read_text().split()
    assert len(wnids) == len(set(wnids)) == 1000
    assert wnids == sorted(wnids)
    assert wnids[0] == "n01440764" and wnids[-1] == "n15075141"
    assert read_class_map()["n01443537"] == 1
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert "imagenet_wnids.txt" in pyproject  # shipped as package data


def test_a_subset_of_classes_keeps_imagenet_indices(tmp_path):
    data = tmp_path / "val"
    jpeg(data / "n15075141" / "last.JPEG", seed=1)
    jpeg(data / "n01443537" / "second.JPEG", seed=2)
    jpeg(data / "n04592741" / "wing.JPEG", seed=3)
    result = preprocess(data, tmp_path / "prep", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert labels_of(tmp_path / "prep") == {"last": 999, "second": 1, "wing": 908}


@pytest.mark.parametrize(
    "intruder", ["__MACOSX", "prep_dataset_old", "n0144076", "N01440764", "n01440764 copy", "cats"]
)
def test_a_folder_that_is_not_a_class_never_shifts_a_label(tmp_path, intruder):
    data = tmp_path / "val"
    jpeg(data / "n01440764" / "tench.JPEG", seed=1)
    jpeg(data / "n01443537" / "goldfish.JPEG", seed=2)
    jpeg(data / intruder / "stray.JPEG", seed=3)
    jpeg(data / ".hidden" / "secret.JPEG", seed=4)
    result = preprocess(data, tmp_path / "prep", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert labels_of(tmp_path / "prep") == {"tench": 0, "goldfish": 1}
    notices = [line for line in result.stderr.splitlines() if line.startswith("notice:")]
    assert any(intruder in line and "ignored" in line for line in notices), result.stderr
    assert ".hidden" not in result.stderr


def test_folders_of_another_class_set_need_a_class_map(tmp_path):
    data = tmp_path / "pets"
    jpeg(data / "dog" / "rex.JPEG", seed=1)
    jpeg(data / "cat" / "tom.JPEG", seed=2)
    result = preprocess(data, tmp_path / "prep", cwd=tmp_path)
    assert_clean_failure(result, 1, "no images found")
    assert "--class-map" in result.stderr
    assert not (tmp_path / "prep").exists()

    class_map = tmp_path / "classes.txt"
    class_map.write_text("dog\ncat\nbird\n")
    result = preprocess(data, tmp_path / "prep", "--class-map", class_map, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert labels_of(tmp_path / "prep") == {"rex": 0, "tom": 1}


@pytest.mark.parametrize(
    "content, reason",
    [
        ("dog\n\ncat\n", "no blank lines"),
        ("dog\ncat\ndog\n", "listed twice"),
        ("", "lists no class"),
        ("dog cat\n", "not a class folder name"),
        ("../etc\n", "cannot be a class folder name"),
    ],
)
def test_a_bad_class_map_is_refused_by_line(tmp_path, content, reason):
    jpeg(tmp_path / "pets" / "dog" / "rex.JPEG")
    class_map = tmp_path / "classes.txt"
    class_map.write_text(content)
    result = preprocess(tmp_path / "pets", tmp_path / "prep", "--class-map", class_map, cwd=tmp_path)
    assert_clean_failure(result, 1, str(class_map), reason)
    assert not (tmp_path / "prep").exists()


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_a_class_map_that_is_not_a_regular_file_is_refused_without_blocking(tmp_path, kind):
    jpeg(tmp_path / "pets" / "dog" / "rex.JPEG")
    class_map = tmp_path / "classes.txt"
    os.mkfifo(class_map) if kind == "fifo" else class_map.mkdir()
    result = preprocess(tmp_path / "pets", tmp_path / "prep", "--class-map", class_map, cwd=tmp_path)
    assert_clean_failure(result, 1, str(class_map), "class map")


@pytest.mark.parametrize(
    "names",
    [["a.x.JPEG", "a.y.JPEG"], ["a.JPEG", "a.old.jpg"], ["n01440764/p.1.png", "n01443537/p.2.JPEG"]],
)
def test_images_that_would_share_an_output_name_are_refused_before_any_write(tmp_path, names):
    data = tmp_path / "val"
    for seed, name in enumerate(names):
        jpeg(data / name, seed=seed)
    result = preprocess(data, tmp_path / "prep", cwd=tmp_path)
    assert_clean_failure(result, 1, "same output name", Path(names[0]).name)
    assert not (tmp_path / "prep").exists() or not tensor_names(tmp_path / "prep")


# ----------------------------------------------------------------------------------------------------------
# 2. Provenance: a tensor is reused only for the same source and transform; nothing stale is left


def test_a_smaller_rerun_leaves_exactly_its_own_tensors(tmp_path):
    data = tmp_path / "data"
    for index in range(6):
        jpeg(data / f"img{index}.JPEG", seed=index)
    prep = tmp_path / "prep"
    assert preprocess(data, prep, cwd=tmp_path).returncode == 0
    result = preprocess(data, prep, "--limit", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert tensor_names(prep) == ["img0.bin", "img1.bin"]
    assert [row.stem for row in read_manifest(prep)] == ["img0", "img1"]
    assert "removed 4" in result.stdout and "skipped 2" in result.stdout

    other = tmp_path / "other"
    jpeg(other / "n01440764" / "fresh.JPEG", seed=9)
    result = preprocess(other, prep, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert tensor_names(prep) == ["fresh.bin"] and labels_of(prep) == {"fresh": 0}


def test_another_data_set_with_the_same_names_is_redone(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    for index in range(3):
        jpeg(first / f"img{index}.JPEG", seed=index)
        jpeg(second / f"img{index}.JPEG", size=(50, 70), seed=10 + index)
    prep = tmp_path / "prep"
    assert preprocess(first, prep, cwd=tmp_path).returncode == 0
    result = preprocess(second, prep, cwd=tmp_path)
    assert result.returncode == 0 and "written 3" in result.stdout, result.stdout
    for index in range(3):
        expected = preprocess_image(second / f"img{index}.JPEG").tobytes()
        assert (prep / f"img{index}.bin").read_bytes() == expected


def test_a_changed_source_file_is_redone(tmp_path):
    data = tmp_path / "data"
    image = jpeg(data / "img.JPEG", seed=1)
    prep = tmp_path / "prep"
    assert preprocess(data, prep, cwd=tmp_path).returncode == 0
    jpeg(image, seed=2)
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    result = preprocess(data, prep, cwd=tmp_path)
    assert "written 1" in result.stdout, result.stdout
    assert (prep / "img.bin").read_bytes() == preprocess_image(image).tobytes()


def test_a_tensor_of_another_transform_version_is_redone(tmp_path):
    data = tmp_path / "data"
    jpeg(data / "img.JPEG")
    prep = tmp_path / "prep"
    assert preprocess(data, prep, cwd=tmp_path).returncode == 0
    manifest = prep / "manifest.tsv"
    manifest.write_text(manifest.read_text().replace(TRANSFORM_VERSION, "an-older-transform"))
    (prep / "img.bin").write_bytes(b"\0" * INPUT_BYTES)
    result = preprocess(data, prep, cwd=tmp_path)
    assert "written 1" in result.stdout, result.stdout
    assert (prep / "img.bin").read_bytes() == preprocess_image(data / "img.JPEG").tobytes()


@pytest.mark.parametrize("stranger", ["planted.bin", "ILSVRC2012_val_00000001.npy"])
def test_tensors_no_manifest_lists_are_refused(tmp_path, stranger):
    data = tmp_path / "data"
    jpeg(data / "img.JPEG")
    prep = tmp_path / "prep"
    prep.mkdir()
    (prep / stranger).write_bytes(b"\1" * INPUT_BYTES)
    result = preprocess(data, prep, cwd=tmp_path)
    assert_clean_failure(result, 1, stranger, "manifest does not list")
    assert os.listdir(prep) == [stranger]


# ----------------------------------------------------------------------------------------------------------
# 5. Untrusted images: only JPEG and PNG decoders, non-regular files never opened, memory bounded first


def _png(width: int, height: int, rows: bytes) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def png_of_size(width: int, height: int) -> bytes:
    """A real, complete grey PNG of any size, small on disk (its rows compress to almost nothing)."""
    return _png(width, height, zlib.compress(b"".join(b"\0" + bytes(width) for _ in range(height)), 9))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels and holds almost no pixel data."""
    return _png(width, height, zlib.compress(b"\0" * 64))


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\nshowpage\n"


@pytest.fixture
def spy_ghostscript(tmp_path, monkeypatch) -> Path:
    """A `gs` first on PATH that leaves a mark when anything runs it."""
    bin_dir = tmp_path / "spy_bin"
    bin_dir.mkdir()
    mark = tmp_path / "ghostscript_ran"
    for name in ("gs", "gswin64c"):
        (bin_dir / name).write_text(f"#!/bin/sh\ntouch {mark}\nexit 1\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return mark


def test_bad_images_are_each_reported_and_never_stop_the_others(tmp_path, spy_ghostscript):
    data = tmp_path / "data"
    good = [jpeg(data / f"good{index}.JPEG", seed=index).stem for index in range(3)]
    hostile = {
        "postscript.JPEG": (EPS, "not an image Pillow can read as JPEG or PNG"),
        "eps_named.png": (EPS, "not an image Pillow can read as JPEG or PNG"),
        "tiff_inside.jpg": (encoded("TIFF"), "not an image Pillow can read as JPEG or PNG (a TIFF image:"),
        "gif_inside.JPEG": (
            encoded("GIF", mode="P"),
            "not an image Pillow can read as JPEG or PNG (a GIF image:",
        ),
        "bmp_inside.png": (encoded("BMP"), "not an image Pillow can read as JPEG or PNG (a BMP image:"),
        "webp_inside.jpg": (encoded("WEBP"), "not an image Pillow can read as JPEG or PNG (a WebP image:"),
        "needle_1x90000.png": (png_of_size(1, 90000), "aspect ratio"),
        "strip_60000x2.png": (png_of_size(60000, 2), "aspect ratio"),
        "bomb_30000x30000.png": (png_header_only(30000, 30000), "decompression bomb"),
        "bomb_9500x9500.png": (png_header_only(9500, 9500), "decompression bomb"),
    }
    for name, (content, _) in hostile.items():
        (data / name).write_bytes(content)
    result = preprocess(data, tmp_path / "prep", "--workers", "2", cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    for name, (_, reason) in hostile.items():
        lines = [line for line in error_lines(result) if name in line]
        assert len(lines) == 1 and reason in lines[0], (name, result.stderr)
    assert len(error_lines(result)) == len(hostile)
    assert sorted(labels_of(tmp_path / "prep")) == good
    assert not spy_ghostscript.exists()


def test_non_regular_files_are_reported_without_being_opened(tmp_path):
    data = tmp_path / "data"
    jpeg(data / "good.JPEG")
    jpeg(tmp_path / "elsewhere.JPEG", seed=3)
    os.mkfifo(data / "fifo.JPEG")  # opening it for reading would block forever
    os.symlink("loop_b.JPEG", data / "loop_a.JPEG")
    os.symlink("loop_a.JPEG", data / "loop_b.JPEG")
    os.symlink(tmp_path / "nowhere.JPEG", data / "broken.JPEG")
    os.symlink(tmp_path / "elsewhere.JPEG", data / "linked.JPEG")  # a link to a real image is read
    server = bound_socket(data / "socket.png")
    expected = {
        "fifo.JPEG": "FIFO",
        "loop_a.JPEG": "symbolic link loop",
        "loop_b.JPEG": "symbolic link loop",
        "broken.JPEG": "broken symbolic link",
        "socket.png": "socket",
    }
    if os.geteuid() == 0:
        os.mknod(data / "device.JPEG", stat.S_IFCHR | 0o644, os.makedev(1, 5))  # /dev/zero: endless data
        expected["device.JPEG"] = "character device"
    try:
        result = preprocess(data, tmp_path / "prep", "--workers", "2", cwd=tmp_path)
    finally:
        server.close()
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    for name, reason in expected.items():
        lines = [line for line in error_lines(result) if f"/{name}:" in line]
        assert len(lines) == 1 and reason in lines[0], (name, result.stderr)
    assert len(error_lines(result)) == len(expected)
    assert sorted(labels_of(tmp_path / "prep")) == ["good", "linked"]


def test_a_file_name_that_is_not_utf8_works(tmp_path):
    data = tmp_path / "data"
    jpeg(data / "plain.JPEG")
    name = b"caf\xe9_\xff.JPEG"
    jpeg(Path(os.fsdecode(os.path.join(os.fsencode(data), name))), seed=2)
    result = preprocess(data, tmp_path / "prep", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert b"caf\xe9_\xff.bin" in os.listdir(os.fsencode(tmp_path / "prep"))
    assert len(read_manifest(tmp_path / "prep")) == 2


def test_names_the_manifest_cannot_hold_fail_alone(tmp_path):
    data = tmp_path / "data"
    jpeg(data / "good.JPEG")
    jpeg(data / "tab\there.JPEG", seed=1)
    jpeg(data / "line\nbreak.JPEG", seed=2)
    result = preprocess(data, tmp_path / "prep", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert len(error_lines(result)) == 2 and "tab or line break" in result.stderr
    assert tensor_names(tmp_path / "prep") == ["good.bin"]


# ----------------------------------------------------------------------------------------------------------
# 4 and 7. Writers: the output is never a non-regular file; full disks and read-only folders are one line


@pytest.mark.parametrize("kind", ["fifo", "symlink", "folder"])
def test_a_manifest_path_that_is_not_a_regular_file_is_refused_before_work(tmp_path, kind):
    data = tmp_path / "data"
    jpeg(data / "img.JPEG")
    prep = tmp_path / "prep"
    prep.mkdir()
    manifest = prep / "manifest.tsv"
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    {
        "fifo": lambda: os.mkfifo(manifest),
        "symlink": lambda: manifest.symlink_to(victim),
        "folder": manifest.mkdir,
    }[kind]()
    result = preprocess(data, prep, cwd=tmp_path)
    assert_clean_failure(result, 1, str(manifest))
    assert victim.read_text() == "precious"
    assert tensor_names(prep) == []


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_take_the_umask_mode(tmp_path, umask, mode):
    data = tmp_path / "data"
    jpeg(data / "img.JPEG")
    old = os.umask(umask)
    try:
        assert preprocess(data, tmp_path / "prep", cwd=tmp_path).returncode == 0
    finally:
        os.umask(old)
    for name in ("img.bin", "manifest.tsv"):
        assert stat.S_IMODE((tmp_path / "prep" / name).stat().st_mode) == mode, name


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_full_disk_is_one_line_and_leaves_no_partial_file(tmp_path, workers):
    data = tmp_path / "data"
    for index in range(8):
        jpeg(data / f"img{index}.JPEG", seed=index)
    prep = tmp_path / "prep"
    prefix, file_limit = full_disk(prep, size="700k")  # room for the manifest and one tensor, not eight
    result = preprocess(data, prep, "--workers", workers, cwd=tmp_path, prefix=prefix, file_bytes=file_limit)
    line = assert_clean_failure(result, 1, "cannot write")
    assert "No space left on device" in line or "File too large" in line
    assert not [name for name in files_left(result, prep) if name.endswith(".tmp")]


def test_a_read_only_output_folder_is_one_line(tmp_path):
    data = tmp_path / "data"
    jpeg(data / "img.JPEG")
    prep = tmp_path / "prep"
    prefix = read_only_folder(prep)
    try:
        result = preprocess(data, prep, cwd=tmp_path, prefix=prefix)
    finally:
        prep.chmod(0o755)
    assert_clean_failure(result, 1, str(prep), "Permission denied")
    assert os.listdir(prep) == []


@pytest.mark.parametrize("same", ["data", "class_folder"])
def test_the_output_folder_is_never_an_image_folder(tmp_path, same):
    data = tmp_path / "val"
    jpeg(data / "n01440764" / "tench.JPEG")
    prep = data if same == "data" else data / "n01440764"
    result = preprocess(data, prep, cwd=tmp_path)
    assert_clean_failure(result, 2, "images are read from")
    assert not list(tmp_path.rglob("*.bin"))


# ----------------------------------------------------------------------------------------------------------
# 8. Processes: a stopped preprocess leaves no worker and no partial file; the next run resumes


@pytest.fixture(scope="module")
def slow_data(tmp_path_factory) -> Path:
    """Enough large images that a run takes a few seconds on two workers."""
    data = tmp_path_factory.mktemp("slow") / "data"
    for index in range(48):
        jpeg(data / f"img{index:03d}.JPEG", size=(1600, 1200), seed=index)
    return data


def start_with_two_workers(data: Path, prep: Path) -> tuple[subprocess.Popen, list[int]]:
    """The preprocess in the background, returned once its two workers have written two tensors."""
    process = subprocess.Popen(
        [sys.executable, str(ROOT / SCRIPT), "--data_path", str(data), "--prep_dataset", str(prep)]
        + ["--workers", "2", "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    workers: list[int] = []
    while time.monotonic() < deadline and process.poll() is None:
        workers = live_children(process.pid)
        if len(workers) >= 2 and prep.is_dir() and len(list(prep.glob("*.bin"))) >= 2:
            break
        time.sleep(0.01)
    assert process.poll() is None and len(workers) >= 2, "the run ended before it could be stopped"
    return process, workers


@pytest.mark.slow
@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=["TERM", "INT", "KILL"]
)
def test_a_stopped_run_leaves_no_worker_and_no_partial_file(tmp_path, slow_data, signum):
    prep = tmp_path / "prep"
    process, workers = start_with_two_workers(slow_data, prep)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    deadline = time.monotonic() + 20
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in workers if alive(pid)], "worker processes outlived the preprocess"
    if signum != signal.SIGKILL:
        assert process.returncode == 128 + signum and "Traceback" not in stderr, stderr
    assert not [name for name in os.listdir(prep) if name.endswith(".tmp")]
    assert all(path.stat().st_size == INPUT_BYTES for path in prep.glob("*.bin"))
    done = len(list(prep.glob("*.bin")))
    listed = {row.stem + ".bin" for row in read_manifest(prep)}
    assert {path.name for path in prep.glob("*.bin")} <= listed  # every tensor has its provenance
    if signum != signal.SIGKILL:  # a stopped run lists exactly what it completed
        assert len(listed) == done
    assert "stopped before it completed" in (unfinished(prep) or "")  # and readers refuse the folder
    with pytest.raises(ToolkitError, match="unfinished.*rerun the same command"):
        collect_input_files(str(prep))
    assert_clean_failure(
        run_script("-m twins_pcpvt.agreement", "--model", "m.onnx", "--input", prep, cwd=tmp_path),
        1,
        f"{prep}: unfinished",
    )

    rerun = run_script(
        SCRIPT,
        "--data_path",
        slow_data,
        "--prep_dataset",
        prep,
        "--workers",
        "2",
        "--no-progress",
        cwd=tmp_path,
        memory=MEMORY,
        timeout=300,
    )
    assert rerun.returncode == 0, rerun.stderr
    assert f"skipped {done}" in rerun.stdout and f"written {48 - done}" in rerun.stdout, rerun.stdout
    assert len(list(prep.glob("*.bin"))) == 48 and len(read_manifest(prep)) == 48
    assert unfinished(prep) is None and collect_input_files(str(prep))


@pytest.mark.slow
def test_a_killed_worker_stops_the_run_cleanly_and_it_resumes(tmp_path, slow_data):
    prep = tmp_path / "prep"
    process, workers = start_with_two_workers(slow_data, prep)
    os.kill(workers[0], signal.SIGKILL)  # what the kernel's out-of-memory killer does
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 1 and "Traceback" not in stderr, stderr
    assert "worker process died" in stderr and "rerun the same command" in stderr
    assert not [pid for pid in workers if alive(pid)]
    assert not [name for name in os.listdir(prep) if name.endswith(".tmp")]
    assert {path.name for path in prep.glob("*.bin")} == {row.stem + ".bin" for row in read_manifest(prep)}
    rerun = run_script(
        SCRIPT,
        "--data_path",
        slow_data,
        "--prep_dataset",
        prep,
        "--no-progress",
        cwd=tmp_path,
        memory=MEMORY,
        timeout=300,
    )
    assert rerun.returncode == 0, rerun.stderr
    assert len(list(prep.glob("*.bin"))) == 48
