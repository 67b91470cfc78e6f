"""The reference transform, the one the guide's accuracy was measured with.

It is torchvision's `Resize(256, bicubic) -> CenterCrop(224) -> ToTensor -> Normalize` on
`PIL.Image.convert('RGB')`, computed here without torch, bit for bit: the resize is the same Pillow call
torchvision makes, the crop offsets use the same arithmetic (Python's `round`, half to even), and as a pixel
has only 256 values per channel, `(value / 255 - mean) / std` in float32 is a 3 x 256 lookup table built with
the same float32 operations torch performs.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..common import CROP_SIZE, IMAGENET_MEAN, IMAGENET_STD, INPUT_SHAPE, RESIZE_SIZE
from .tensors import TENSOR_DTYPE

# Names the transform that makes the tensors; change it whenever the tensors it makes change.
TRANSFORM_VERSION = "pil-bicubic256-crop224-imagenet-f32le.1"


def _normalize_table() -> np.ndarray:
    """[3, 256] float32: channel c, value v -> (v / 255 - mean[c]) / std[c], as ToTensor + Normalize do it."""
    scaled = np.arange(256, dtype=np.float32) / np.float32(255)
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)[:, None]
    std = np.asarray(IMAGENET_STD, dtype=np.float32)[:, None]
    return ((scaled - mean) / std).astype(TENSOR_DTYPE)


_NORMALIZE_TABLE = _normalize_table()


def resized_size(width: int, height: int, shorter: int = RESIZE_SIZE) -> tuple[int, int]:
    """(width, height) after torchvision's `Resize(shorter)`: shorter side -> `shorter`, longer truncated."""
    if width <= height:
        return shorter, int(shorter * height / width)
    return int(shorter * width / height), shorter


def reference_transform(image: Image.Image) -> np.ndarray:
    """float32 [3, 224, 224] little-endian tensor of any PIL image, equal to the torchvision reference."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    size = resized_size(*image.size)
    if size != image.size:
        image = image.resize(size, Image.Resampling.BICUBIC)
    width, height = size
    # torchvision's CenterCrop offsets; the resized image is never smaller than the crop
    top = int(round((height - CROP_SIZE) / 2.0))
    left = int(round((width - CROP_SIZE) / 2.0))
    pixels = np.asarray(image)[top : top + CROP_SIZE, left : left + CROP_SIZE]
    tensor = np.empty(INPUT_SHAPE, dtype=TENSOR_DTYPE)
    for channel in range(3):
        np.take(_NORMALIZE_TABLE[channel], pixels[:, :, channel], out=tensor[channel])
    return tensor
