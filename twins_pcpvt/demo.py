"""The demo's embedded default data set: a small ImageNet-val-like folder made from images that ship with
matplotlib (a real photo) plus generated pictures, in the guide's flat layout with a `val_label.txt`; with
`--weights`, also a checkpoint of seeded random weights, so every runtime (PyTorch included) runs one model.

Labels: crops of `grace_hopper.jpg` carry ImageNet class 652 ("military uniform"); generated pictures carry
arbitrary classes. Accuracy on this set says nothing about the model: it only proves the flow runs.

    python3 -m twins_pcpvt.demo ./out/demo/demo_data --count 12 [--weights ./out/demo/random_init.pth]

Exit status: 0 when the data set was written, 1 when it could not be, 2 on bad usage.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .cli import make_parser, positive_int
from .common import ToolkitError, atomic_writer, run_main

PHOTO_LABEL = 652


def sample_photo_path() -> Path:
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if not path.is_file():
        raise ToolkitError(f"{path}: matplotlib's sample photo is missing (reinstall matplotlib)")
    return path


def _photo_variant(photo: Image.Image, rng: np.random.Generator) -> Image.Image:
    width, height = photo.size
    scale = rng.uniform(0.6, 1.0)
    crop_w, crop_h = int(width * scale), int(height * scale)
    left = int(rng.integers(0, width - crop_w + 1))
    top = int(rng.integers(0, height - crop_h + 1))
    image = photo.crop((left, top, left + crop_w, top + crop_h)).resize((375, 500), Image.BICUBIC)
    return image.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else image


def _generated_picture(rng: np.random.Generator) -> Image.Image:
    width, height = 500, 375
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    colors = rng.uniform(0, 255, size=(2, 3))
    t = (x / width)[..., None]
    pixels = colors[0] * (1 - t) + colors[1] * t
    image = Image.fromarray(pixels.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, width - 50)), int(rng.integers(0, height - 50))
        size = int(rng.integers(20, 150))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        draw.ellipse((x0, y0, x0 + size, y0 + size), fill=fill)
    return image


def make_demo_dataset(root: str | Path, count: int = 12, seed: int = 0) -> tuple[Path, Path]:
    """Write `count` JPEGs into `root/val/` and their labels into `root/val_label.txt`; returns both paths."""
    root = Path(root)
    image_dir = root / "val"
    try:
        image_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ToolkitError(f"{root}: cannot make the folder {image_dir} ({exc.strerror or exc})") from None
    rng = np.random.default_rng(seed)
    photo = Image.open(sample_photo_path()).convert("RGB")
    lines = []
    for index in range(count):
        name = f"ILSVRC2012_val_{index + 1:08d}.JPEG"
        if index % 2 == 0:
            image, label = _photo_variant(photo, rng), PHOTO_LABEL
        else:
            image, label = _generated_picture(rng), int(rng.integers(0, 1000))
        with atomic_writer(image_dir / name) as handle:
            image.save(handle, format="JPEG", quality=90)
        lines.append(f"{name} {label}\n")
    label_file = root / "val_label.txt"
    with atomic_writer(label_file, "w") as handle:
        handle.writelines(lines)
    return image_dir, label_file


def write_random_weights(path: str | Path, seed: int = 0) -> None:
    """The seeded random-init model's state dict as a `.pth`, the shape of a real checkpoint."""
    import torch

    from .model import load_model

    state = load_model(None, random_init=True, seed=seed).state_dict()
    with atomic_writer(path) as handle:
        torch.save(state, handle)


def build_parser():
    parser = make_parser(__doc__, "python3 -m twins_pcpvt.demo")
    parser.add_argument("root", help="folder to create (val/ and val_label.txt go inside)")
    parser.add_argument(
        "--count", type=positive_int, default=12, metavar="N", help="number of images (default 12)"
    )
    parser.add_argument("--weights", metavar="PTH", help="also write seeded random-init weights to this file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        image_dir, label_file = make_demo_dataset(args.root, args.count)
        print(f"demo data set: {args.count} images in {image_dir}, labels in {label_file}")
        if args.weights:
            write_random_weights(args.weights)
            print(f"random-init weights (seed 0, as twins_pth2onnx.py --random-init): {args.weights}")
        return 0

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
