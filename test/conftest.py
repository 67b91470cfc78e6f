"""Shared fixtures: one random-init Twins-PCPVT-S, its checkpoint and its dynamic ONNX export, built once per
run."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The runner tests' fixtures (the real ais_bench over the aclruntime double, static models), registered here.
from standins.fixtures import (  # noqa: E402, F401
    ais_standin,
    model_files,
    om_path,
    static_onnx_path,
    torch_logits,
)


@pytest.fixture(scope="session")
def twins_model():
    """Seeded random-weight Twins-PCPVT-S in eval mode (fused attention off, as exported)."""
    from twins_pcpvt.model import load_model

    return load_model(None, random_init=True, seed=0)


@pytest.fixture(scope="session")
def checkpoint_path(twins_model, tmp_path_factory) -> Path:
    """The random model's weights saved as a bare state dict `.pth`."""
    import torch

    path = tmp_path_factory.mktemp("ckpt") / "pcpvt_small.pth"
    torch.save(twins_model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def onnx_path(twins_model, tmp_path_factory) -> Path:
    """The random model exported to ONNX with a dynamic batch axis."""
    from twins_pcpvt.export import export_onnx

    path = tmp_path_factory.mktemp("onnx") / "twins_dynamic.onnx"
    export_onnx(twins_model, path)
    return path


@pytest.fixture
def make_bin_folder(tmp_path):
    """Write `count` random preprocessed tensors as `<stem>.bin` into a new folder; return (folder, stems,
    array)."""

    def make(count: int, name: str = "prep", seed: int = 0):
        folder = tmp_path / name
        folder.mkdir()
        rng = np.random.default_rng(seed)
        batch = rng.standard_normal((count, 3, 224, 224), dtype=np.float32)
        stems = [f"ILSVRC2012_val_{i + 1:08d}" for i in range(count)]
        for stem, tensor in zip(stems, batch, strict=True):
            tensor.astype("<f4").tofile(folder / f"{stem}.bin")
        return folder, stems, batch

    return make
