"""Pytest fixtures of the runner's tests: the real ais_bench (2024) over the aclruntime double, a model for
each
backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from aclruntime_double import missing_reason, use_generation

from .static_onnx import static_copy

OM_BATCH = 2


def installed_backends() -> list[str]:
    """available_backends() as the tests see it: with the real ais_bench importable when its sources are
    here."""
    from twins_pcpvt.backends import available_backends

    if missing_reason():
        return available_backends()
    with use_generation("v2024"):
        return available_backends()


@pytest.fixture
def ais_standin():
    """The real ais_bench 2024 Python over the aclruntime double, importable for one test; skips without
    it."""
    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    with use_generation("v2024"):
        yield


@pytest.fixture(scope="session")
def om_path(onnx_path, tmp_path_factory) -> Path:
    """The random model with a static batch of OM_BATCH, named .om: the double runs it as ONNX."""
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
