"""Pytest fixtures of the runner's tests: the ais_bench stand-in on sys.path, a model for each backend."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest

from .static_onnx import static_copy

STANDINS = Path(__file__).resolve().parent
OM_BATCH = 2


def installed_backends() -> list[str]:
    """available_backends() as the tests see it: with the ais_bench stand-in importable."""
    from twins_pcpvt.backends import available_backends

    sys.path.insert(0, str(STANDINS))
    importlib.invalidate_caches()
    try:
        return available_backends()
    finally:
        sys.path.remove(str(STANDINS))
        importlib.invalidate_caches()


@pytest.fixture
def ais_standin(monkeypatch):
    """Make the stand-in `ais_bench` importable for one test; forget it (and the ais runner) afterwards."""
    monkeypatch.syspath_prepend(str(STANDINS))
    yield
    for name in [
        name for name in sys.modules if name.split(".")[0] == "ais_bench" or name.endswith(".ais_runner")
    ]:
        del sys.modules[name]


@pytest.fixture(scope="session")
def om_path(onnx_path, tmp_path_factory) -> Path:
    """The random model with a static batch of OM_BATCH, named .om: the stand-in runs it as ONNX."""
    return static_copy(onnx_path, tmp_path_factory.mktemp("om") / f"twins_bs{OM_BATCH}.om", OM_BATCH)


@pytest.fixture(scope="session")
def static_onnx_path(onnx_path, tmp_path_factory) -> Path:
    """The random model exported with a static batch of 4."""
    return static_copy(onnx_path, tmp_path_factory.mktemp("static") / "twins_bs4.onnx", 4)


@pytest.fixture(scope="session")
def model_files(onnx_path, checkpoint_path, om_path) -> dict[str, Path]:
    """The model file each backend reads."""
    return {"onnxruntime": onnx_path, "openvino": onnx_path, "torch": checkpoint_path, "ais": om_path}


@pytest.fixture(scope="session")
def torch_logits(twins_model):
    """fn(batch) -> the stage-2 PyTorch model's fp32 logits, the reference every backend must match."""
    import torch

    def logits(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return twins_model(torch.from_numpy(np.ascontiguousarray(batch))).numpy()

    return logits
