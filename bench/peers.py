"""The peers: Twins-PCPVT-S as a user of each runtime runs it without this toolkit, behind the toolkit's
Runner contract, so that the benchmark drives our backends and the peers alike.

Timing is compute only, as our runners count it: the model call with its input in place (CUDA events on a
GPU). The peers take any batch size (dynamic batch), as their users write them.
"""

from __future__ import annotations

import contextlib
import time

import numpy as np

from twins_pcpvt.backends.base import Runner
from twins_pcpvt.common import INPUT_SHAPE

TIMM_ARCH = "twins_pcpvt_small"


class TimmEagerRunner(Runner):
    """What a PyTorch user writes: timm's model as created (fused attention on), eval, inference mode."""

    name = "timm-eager"

    def _load(self) -> None:
        import timm
        import torch

        from twins_pcpvt.model import load_state_dict

        self._torch = torch
        self._device = torch.device(self.device)
        model = timm.create_model(TIMM_ARCH, pretrained=False)
        model.load_state_dict(load_state_dict(self.model_path), strict=True)
        self._model = model.eval().to(self._device)
        self.input_shape = (None, *INPUT_SHAPE)
        fused = any(getattr(module, "fused_attn", False) for module in model.modules())
        self.details = {"fused_attn": fused, "torch_threads": torch.get_num_threads()}

    def _run(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode(), _torch_defaults(torch):
            inputs = torch.from_numpy(batch).to(self._device)
            if self._device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                logits = self._model(inputs)
                end.record()
                end.synchronize()
                self.last_compute_ms = float(start.elapsed_time(end))
            else:
                began = time.perf_counter()
                logits = self._model(inputs)
                self.last_compute_ms = (time.perf_counter() - began) * 1000.0
            return logits.float().cpu().numpy()

    def _close(self) -> None:
        self._model = None
        device = getattr(self, "_device", None)
        if device is not None and device.type == "cuda":
            self._torch.cuda.empty_cache()


@contextlib.contextmanager
def _torch_defaults(torch):
    """PyTorch's out-of-the-box GPU math settings, which our torch runner changes process-wide while it is
    loaded (TF32 off for cuDNN, cuDNN autotuning on): the peer runs as a fresh process would run it."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (matmul.allow_tf32, cudnn.allow_tf32, cudnn.benchmark)
    matmul.allow_tf32, cudnn.allow_tf32, cudnn.benchmark = False, True, False
    try:
        yield
    finally:
        matmul.allow_tf32, cudnn.allow_tf32, cudnn.benchmark = saved


class PlainOrtRunner(Runner):
    """What an ONNX Runtime user writes: a default session on the CPU provider, no options."""

    name = "onnxruntime-plain"

    def _load(self) -> None:
        import onnxruntime

        self._session = onnxruntime.InferenceSession(str(self.model_path), providers=["CPUExecutionProvider"])
        self._input_name = self._session.get_inputs()[0].name
        self.input_shape = (None, *INPUT_SHAPE)
        self.details = {"providers": ",".join(self._session.get_providers())}

    def _run(self, batch: np.ndarray) -> np.ndarray:
        began = time.perf_counter()
        logits = self._session.run(None, {self._input_name: batch})[0]
        self.last_compute_ms = (time.perf_counter() - began) * 1000.0
        return logits

    def _close(self) -> None:
        self._session = None


class PlainOpenVinoRunner(Runner):
    """What an OpenVINO user writes: `compile_model(onnx, "CPU")` with default settings and one infer request.

    On CPUs with native bf16 OpenVINO runs such a model in bf16 by itself; the precision is read back."""

    name = "openvino-plain"

    def _load(self) -> None:
        import openvino

        from twins_pcpvt.backends.openvino_runner import compiled_precision

        compiled = openvino.Core().compile_model(str(self.model_path), "CPU")
        self._request = compiled.create_infer_request()
        self.precision, hint = compiled_precision(compiled)
        self.input_shape = (None, *INPUT_SHAPE)
        self.details = {
            "inference_precision": hint,
            "performance_hint": compiled.get_property("PERFORMANCE_HINT"),
            "num_streams": compiled.get_property("NUM_STREAMS"),
            "inference_num_threads": compiled.get_property("INFERENCE_NUM_THREADS"),
        }

    def _run(self, batch: np.ndarray) -> np.ndarray:
        began = time.perf_counter()
        self._request.infer({0: batch})
        self.last_compute_ms = (time.perf_counter() - began) * 1000.0
        return self._request.get_output_tensor(0).data.copy()  # the request reuses its output memory

    def _close(self) -> None:
        self._request = None


PEER_RUNNERS: dict[str, type[Runner]] = {
    runner.name: runner for runner in (TimmEagerRunner, PlainOrtRunner, PlainOpenVinoRunner)
}
