"""Stage 1 (twins_pcpvt_s_preprocess.py): reference tensors, layouts, resume, atomic writes, bad input."""

from __future__ import annotations

import io
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from twins_pcpvt.common import IMAGENET_MEAN, IMAGENET_STD, INPUT_BYTES, INPUT_SHAPE
from twins_pcpvt.data import (
    ManifestRow,
    discover_images,
    preprocess_dataset,
    preprocess_image,
    read_manifest,
    read_tensor_file,
    reference_transform,
)

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "twins_pcpvt_s_preprocess.py"


# ----------------------------------------------------------------------------------------------------------
# helpers


def image_bytes(mode: str, size: tuple[int, int], fmt: str, seed: int = 0, **save_options) -> bytes:
    """A smooth random image of `mode` and `size` (width, height) encoded as `fmt`."""
    rng = np.random.default_rng(seed)
    width, height = size
    coarse = rng.integers(0, 256, (max(2, height // 8), max(2, width // 8), 3), dtype=np.uint8)
    rgb = Image.fromarray(coarse, "RGB").resize((width, height), Image.Resampling.BILINEAR)
    noise = rng.integers(-12, 13, (height, width, 3))
    rgb = Image.fromarray(np.clip(np.asarray(rgb, dtype=np.int16) + noise, 0, 255).astype(np.uint8), "RGB")
    if mode == "I;16":
        image = Image.fromarray((np.asarray(rgb.convert("L"), dtype=np.uint16) * 257).astype(np.uint16))
        assert image.mode == "I;16"
    elif mode == "P":
        image = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    elif mode == "RGBA":
        image = rgb.convert("RGBA")
        image.putalpha(Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8), "L"))
    else:
        image = rgb.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save_options)
    return buffer.getvalue()


def labelled(rows: list[ManifestRow]) -> list[tuple]:
    """(stem, source, label) of manifest rows, without the provenance columns."""
    return [(row.stem, row.source, row.label) for row in rows]


def write_image(path: Path, mode="RGB", size=(120, 90), fmt="JPEG", seed=0, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "JPEG":
        options.setdefault("quality", 90)
    path.write_bytes(image_bytes(mode, size, fmt, seed, **options))
    return path


def torchvision_reference(path: Path) -> np.ndarray:
    """The guide's transform written with torchvision, on `Image.open(path).convert('RGB')`."""
    from torchvision import transforms

    pipeline = transforms.Compose(
        [
            transforms.Resize(256, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    with Image.open(path) as image:
        return pipeline(image.convert("RGB")).numpy()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height 8-bit grey pixels but holds only a few bytes of pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def run_cli(*args: str, cwd: Path, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*prefix, sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def tree_snapshot(folder: Path, skip: Path) -> dict[str, tuple[int, int]]:
    """path -> (size, mtime_ns) of everything under `folder` except the `skip` subtree."""
    snapshot = {}
    for path in sorted(folder.rglob("*")):
        if path == skip or skip in path.parents:
            continue
        info = path.lstat()
        snapshot[str(path.relative_to(folder))] = (info.st_size if path.is_file() else -1, info.st_mtime_ns)
    return snapshot


def bins_of(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.glob("*.bin"))}


# ----------------------------------------------------------------------------------------------------------
# the transform equals torchvision's


EQUALITY_CASES = {
    # name: (mode, (width, height), format, save options)
    "rgb_landscape.JPEG": ("RGB", (500, 375), "JPEG", {}),
    "rgb_portrait.jpg": ("RGB", (333, 500), "JPEG", {}),
    "progressive.JPEG": ("RGB", (400, 300), "JPEG", {"progressive": True}),
    "grey_L.JPEG": ("L", (300, 260), "JPEG", {}),
    "cmyk.JPEG": ("CMYK", (280, 300), "JPEG", {}),
    "rgba.png": ("RGBA", (320, 240), "PNG", {}),
    "palette_P.png": ("P", (260, 300), "PNG", {}),
    "sixteen_bit_I16.png": ("I;16", (300, 270), "PNG", {}),
    "bilevel_1.png": ("1", (270, 300), "PNG", {}),
    "png_bytes_named.JPEG": ("RGB", (300, 280), "PNG", {}),
    "small_50x30.JPEG": ("RGB", (50, 30), "JPEG", {}),
    "tiny_7x5.png": ("RGB", (7, 5), "PNG", {}),
    "exact_224.JPEG": ("RGB", (224, 224), "JPEG", {}),
    "exact_256.png": ("RGB", (256, 256), "PNG", {}),
    "wide_1200x40.JPEG": ("RGB", (1200, 40), "JPEG", {}),
    "tall_30x900.png": ("RGB", (30, 900), "PNG", {}),
    # (height - 224) / 2 = 16.5 and 17.5: torchvision's round() goes half to even, 16 and 18
    "odd_crop_256x257.png": ("RGB", (256, 257), "PNG", {}),
    "odd_crop_259x256.png": ("RGB", (259, 256), "PNG", {}),
}


@pytest.fixture(scope="module")
def mode_zoo(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("zoo")
    for seed, (name, (mode, size, fmt, options)) in enumerate(EQUALITY_CASES.items()):
        write_image(folder / name, mode, size, fmt, seed=seed, **options)
    return folder


@pytest.mark.parametrize("name", sorted(EQUALITY_CASES))
def test_transform_equals_torchvision(mode_zoo, name):
    path = mode_zoo / name
    expected_mode = EQUALITY_CASES[name][0]
    with Image.open(path) as image:
        assert image.mode == expected_mode  # the file really holds the mode this case claims to cover
    ours = preprocess_image(path)
    reference = torchvision_reference(path)
    assert ours.shape == INPUT_SHAPE and ours.dtype == np.float32
    assert reference.shape == INPUT_SHAPE
    assert float(np.abs(ours - reference).max()) <= 1e-6


def test_reference_transform_accepts_image_objects_of_any_mode():
    image = Image.open(io.BytesIO(image_bytes("LA", (90, 120), "PNG")))
    tensor = reference_transform(image)
    expected = reference_transform(image.convert("RGB"))
    assert np.array_equal(tensor, expected)


def test_cli_output_equals_torchvision_and_workers_agree(mode_zoo, tmp_path):
    one = run_cli("--data_path", str(mode_zoo), "--prep_dataset", "one", "--workers", "1", cwd=tmp_path)
    two = run_cli("--data_path", str(mode_zoo), "--prep_dataset", "two", "--workers", "2", cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    written = bins_of(tmp_path / "one")
    assert written == bins_of(tmp_path / "two")
    assert len(written) == len(EQUALITY_CASES)
    for name in EQUALITY_CASES:
        data = written[Path(name).stem + ".bin"]
        assert len(data) == INPUT_BYTES
        tensor = np.frombuffer(data, dtype="<f4").reshape(INPUT_SHAPE)
        assert float(np.abs(tensor - torchvision_reference(mode_zoo / name)).max()) <= 1e-6
        assert np.array_equal(read_tensor_file(tmp_path / "one" / (Path(name).stem + ".bin")), tensor)


# ----------------------------------------------------------------------------------------------------------
# layouts, order, manifest, limit


def test_guide_command_flat_folder(tmp_path):
    data = tmp_path / "imagenet"
    stems = [f"ILSVRC2012_val_{index:08d}" for index in (3, 1, 2)]
    for seed, stem in enumerate(stems):
        write_image(data / f"{stem}.JPEG", seed=seed)
    (data / "val_label.txt").write_text("ILSVRC2012_val_00000001.JPEG 65\n")  # not an image: ignored

    result = run_cli("--data_path", str(data), "--prep_dataset", "./prep_dataset", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    prep = tmp_path / "prep_dataset"
    assert sorted(os.listdir(prep)) == sorted([f"{stem}.bin" for stem in stems] + ["manifest.tsv"])
    assert all((prep / f"{stem}.bin").stat().st_size == INPUT_BYTES for stem in stems)
    assert labelled(read_manifest(prep)) == [(stem, f"{stem}.JPEG", None) for stem in sorted(stems)]
    last_line = result.stdout.strip().splitlines()[-1]
    assert "written 3" in last_line and "skipped 0" in last_line and "failed 0" in last_line
    assert "images/s" in last_line


def test_flat_folder_under_val(tmp_path):
    data = tmp_path / "imagenet"
    write_image(data / "val" / "b.JPEG", seed=1)
    write_image(data / "val" / "a.JPEG", seed=2)
    (data / "val_label.txt").write_text("a.JPEG 1\nb.JPEG 2\n")
    assert labelled(discover_images(data)) == [("a", "val/a.JPEG", None), ("b", "val/b.JPEG", None)]


def test_class_folders_labels_and_mixed_extensions(tmp_path):
    data = tmp_path / "imagenet"
    val = data / "val"
    write_image(val / "n01440764" / "ILSVRC2012_val_00000293.JPEG", seed=1)
    write_image(val / "n01440764" / "ILSVRC2012_val_00002138.jpg", seed=2)
    (val / "n01443537").mkdir(parents=True)  # a class folder without images keeps its index
    write_image(val / "n01484850" / "ILSVRC2012_val_00000001.PNG", fmt="PNG", seed=3)
    write_image(val / "n01484850" / "ILSVRC2012_val_00000100.Jpeg", seed=4)
    (val / "n01484850" / "notes.txt").write_text("not an image")
    write_image(val / "n01484850" / "._ILSVRC2012_val_00000005.JPEG", seed=5)  # hidden: ignored
    (data / "train").mkdir()

    result = run_cli("--data_path", str(data), "--prep_dataset", "./prep_dataset", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert labelled(read_manifest(tmp_path / "prep_dataset")) == [
        ("ILSVRC2012_val_00000001", "val/n01484850/ILSVRC2012_val_00000001.PNG", 2),
        ("ILSVRC2012_val_00000100", "val/n01484850/ILSVRC2012_val_00000100.Jpeg", 2),
        ("ILSVRC2012_val_00000293", "val/n01440764/ILSVRC2012_val_00000293.JPEG", 0),
        ("ILSVRC2012_val_00002138", "val/n01440764/ILSVRC2012_val_00002138.jpg", 0),
    ]
    assert len(bins_of(tmp_path / "prep_dataset")) == 4


def test_class_folders_without_val_level(tmp_path):
    write_image(tmp_path / "data" / "n01443537" / "x.JPEG", seed=1)
    write_image(tmp_path / "data" / "n01440764" / "y.JPEG", seed=2)
    assert labelled(discover_images(tmp_path / "data")) == [
        ("x", "n01443537/x.JPEG", 1),
        ("y", "n01440764/y.JPEG", 0),
    ]


def test_class_folders_beside_a_val_folder_are_read_and_val_is_named(tmp_path):
    write_image(tmp_path / "data" / "n01443537" / "x.JPEG", seed=1)
    write_image(tmp_path / "data" / "n01440764" / "y.JPEG", seed=2)
    write_image(tmp_path / "data" / "val" / "z.JPEG", seed=3)
    notices = []
    rows = discover_images(tmp_path / "data", notice=notices.append)
    assert labelled(rows) == [("x", "n01443537/x.JPEG", 1), ("y", "n01440764/y.JPEG", 0)]
    assert len(notices) == 1 and "ignored 1 folder(s)" in notices[0] and "val" in notices[0]


def test_output_folder_inside_data_path_is_not_a_class(tmp_path):
    data = tmp_path / "data"
    write_image(data / "n01440764" / "x.JPEG", seed=1)
    write_image(data / "prep" / "stale.JPEG", seed=2)
    notices = []
    rows = discover_images(data, exclude=data / "prep", notice=notices.append)
    assert labelled(rows) == [("x", "n01440764/x.JPEG", 0)]
    assert notices == []


def test_limit_takes_first_images_in_sorted_order(tmp_path):
    data = tmp_path / "data"
    for seed, name in enumerate(["e", "a", "d", "b", "c"]):
        write_image(data / f"{name}.JPEG", size=(40, 30), seed=seed)
    summary = preprocess_dataset(data, tmp_path / "prep", workers=1, limit=3, progress=False)
    assert summary.written == 3 and summary.failed == 0
    assert sorted(bins_of(tmp_path / "prep")) == ["a.bin", "b.bin", "c.bin"]
    assert [row.stem for row in read_manifest(tmp_path / "prep")] == ["a", "b", "c"]


def test_mixed_flat_and_class_layout_is_an_error(tmp_path):
    data = tmp_path / "data"
    write_image(data / "a.JPEG")
    write_image(data / "n01440764" / "b.JPEG")
    result = run_cli("--data_path", str(data), "--prep_dataset", "prep", cwd=tmp_path)
    assert result.returncode == 1
    assert str(data) in result.stderr and "class folders" in result.stderr
    assert not (tmp_path / "prep").exists()


# ----------------------------------------------------------------------------------------------------------
# resume and atomic writes


def test_rerun_skips_complete_and_redoes_incomplete_outputs(tmp_path):
    data = tmp_path / "data"
    for index in range(5):
        write_image(data / f"img{index}.JPEG", size=(60, 50), seed=index)
    prep = tmp_path / "prep"
    first = preprocess_dataset(data, prep, workers=2, progress=False)
    assert (first.written, first.skipped, first.failed) == (5, 0, 0)
    original = bins_of(prep)

    (prep / "img1.bin").write_bytes(original["img1.bin"][:1000])  # short file from an older, broken tool
    (prep / "img3.bin").unlink()
    stale = prep / ".img2.bin.abc12345.tmp"  # what a killed run of ours leaves
    stale.write_bytes(b"partial")
    keep = prep / ".keep"
    keep.write_text("not ours")

    second = preprocess_dataset(data, prep, workers=2, progress=False)

    assert (second.written, second.skipped, second.failed) == (2, 3, 0)
    assert bins_of(prep) == original
    assert not stale.exists()
    assert keep.exists()
    assert "written 2, skipped 3 (already complete), failed 0" in second.line()


def test_killed_run_never_leaves_a_short_bin(tmp_path):
    data = tmp_path / "data"
    for index in range(40):
        write_image(data / f"img{index:03d}.png", size=(320, 240), fmt="PNG", seed=index, compress_level=0)
    prep = tmp_path / "prep"
    process = subprocess.Popen(
        [
            sys.executable,
            str(SCRIPT),
            "--data_path",
            str(data),
            "--prep_dataset",
            str(prep),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not any(prep.glob("*.bin")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()

    for path in prep.glob("*.bin"):
        assert path.stat().st_size == INPUT_BYTES, f"{path} is short"
    rerun = run_cli("--data_path", str(data), "--prep_dataset", str(prep), cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert len(bins_of(prep)) == 40
    assert all(len(blob) == INPUT_BYTES for blob in bins_of(prep).values())
    assert not [name for name in os.listdir(prep) if name.endswith(".tmp")]


# ----------------------------------------------------------------------------------------------------------
# bad inputs


def test_bad_images_are_named_and_good_ones_still_written(tmp_path):
    data = tmp_path / "data"
    good = [write_image(data / f"good{index}.JPEG", seed=index) for index in range(3)]
    jpeg = image_bytes("RGB", (200, 150), "JPEG", quality=90)
    bad_reasons = {
        "truncated.JPEG": (jpeg[: len(jpeg) // 2], "truncated"),
        "zero.JPEG": (b"", "empty file"),
        "text.jpg": (b"this is a text file, not a picture\n", "not an image"),
        # 100 M pixels: over Image.MAX_IMAGE_PIXELS, where Pillow itself only warns
        "bomb_warn.png": (png_header_only(10_000, 10_000), "decompression bomb"),
        "bomb_error.png": (png_header_only(20_000, 20_000), "decompression bomb"),
    }
    for name, (content, _) in bad_reasons.items():
        (data / name).write_bytes(content)
    before = tree_snapshot(tmp_path, skip=tmp_path / "prep_dataset")

    result = run_cli(
        "--data_path", str(data), "--prep_dataset", "./prep_dataset", "--workers", "2", cwd=tmp_path
    )

    assert result.returncode == 1
    error_lines = [line for line in result.stderr.splitlines() if "error:" in line]
    for name, (_, reason) in bad_reasons.items():
        lines = [line for line in error_lines if str(data / name) in line]
        assert len(lines) == 1, (name, result.stderr)
        assert reason in lines[0], lines[0]
    assert len(error_lines) == len(bad_reasons)
    assert "failed 5" in result.stdout and "written 3" in result.stdout
    prep = tmp_path / "prep_dataset"
    assert sorted(os.listdir(prep)) == sorted([f"{path.stem}.bin" for path in good] + ["manifest.tsv"])
    assert [row.stem for row in read_manifest(prep)] == ["good0", "good1", "good2"]
    assert tree_snapshot(tmp_path, skip=prep) == before  # nothing written outside prep_dataset


def _permission_denying_prefix(locked: Path) -> tuple[str, ...]:
    """A command prefix under which `locked` (mode 000) cannot be read; skips when there is none."""
    if os.geteuid() != 0:
        return ()
    # root reads mode-000 files through CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH: run the script without them
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root and setpriv is missing: cannot make a file unreadable to the script")
    prefix = (setpriv, "--inh-caps", "-all", "--bounding-set", "-dac_override,-dac_read_search", "--")
    probe = subprocess.run(
        [*prefix, sys.executable, "-c", f"open({str(locked)!r}, 'rb')"], capture_output=True
    )
    if probe.returncode == 0 or b"PermissionError" not in probe.stderr:
        pytest.skip(f"running as root, and dropping file-permission capabilities failed: {probe.stderr!r}")
    return prefix


def test_unreadable_file_is_named(tmp_path):
    data = tmp_path / "data"
    write_image(data / "good.JPEG")
    locked = write_image(data / "locked.JPEG", seed=1)
    locked.chmod(0)
    try:
        prefix = _permission_denying_prefix(locked)
        result = run_cli("--data_path", str(data), "--prep_dataset", "prep", cwd=tmp_path, prefix=prefix)
    finally:
        locked.chmod(0o644)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if str(locked) in line]
    assert len(lines) == 1 and "Permission denied" in lines[0], result.stderr
    assert sorted(bins_of(tmp_path / "prep")) == ["good.bin"]


def test_same_stem_in_two_class_folders_fails_before_writing(tmp_path):
    data = tmp_path / "data"
    first = write_image(data / "n01440764" / "ILSVRC2012_val_00000007.JPEG", seed=1)
    second = write_image(data / "n01443537" / "ILSVRC2012_val_00000007.png", fmt="PNG", seed=2)
    write_image(data / "n01443537" / "other.JPEG", seed=3)
    result = run_cli("--data_path", str(data), "--prep_dataset", "./prep_dataset", cwd=tmp_path)
    assert result.returncode == 1
    assert str(first) in result.stderr and str(second) in result.stderr
    assert not (tmp_path / "prep_dataset").exists()


def test_missing_data_path(tmp_path):
    result = run_cli("--data_path", str(tmp_path / "nowhere"), "--prep_dataset", "prep", cwd=tmp_path)
    assert result.returncode == 1
    assert str(tmp_path / "nowhere") in result.stderr and "does not exist" in result.stderr
    assert not (tmp_path / "prep").exists()


def test_empty_data_path(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no pictures here")
    result = run_cli("--data_path", str(tmp_path / "empty"), "--prep_dataset", "prep", cwd=tmp_path)
    assert result.returncode == 1
    assert str(tmp_path / "empty") in result.stderr and "no images" in result.stderr
    assert not (tmp_path / "prep").exists()


def test_prep_dataset_that_is_a_file(tmp_path):
    write_image(tmp_path / "data" / "a.JPEG")
    target = tmp_path / "prep_dataset"
    target.write_text("precious")
    result = run_cli("--data_path", str(tmp_path / "data"), "--prep_dataset", "./prep_dataset", cwd=tmp_path)
    assert result.returncode == 1
    assert "prep_dataset" in result.stderr and "not a folder" in result.stderr
    assert target.read_text() == "precious"
    assert sorted(os.listdir(tmp_path)) == ["data", "prep_dataset"]


@pytest.mark.parametrize("flag", ["--workers", "--limit"])
def test_non_positive_counts_are_usage_errors(tmp_path, flag):
    write_image(tmp_path / "data" / "a.JPEG")
    result = run_cli("--data_path", "data", "--prep_dataset", "prep", flag, "0", cwd=tmp_path)
    assert result.returncode == 2 and flag in result.stderr
    assert not (tmp_path / "prep").exists()
