"""PyTorch backend: the checkpoint loaded through the safe loader, on CPU or CUDA, in fp32, fp16 or bf16.

Reduced precision casts the whole model (`.to(dtype)`), which measured faster than autocast on CPU and
avoids the cast kernels autocast adds on a GPU; logits are returned as float32. fp32 stays strict fp32
(TF32 off), so it matches the other backends to 1e-4.

On CUDA with a known batch size the forward pass is captured once in a CUDA graph and replayed for every
batch (the base runner pads the last batch up to that size). `compile` runs `torch.compile` first: in its
'default' mode the compiled model is then captured the same way; the modes that use CUDA graphs themselves
('reduce-overhead', 'max-autotune') are left to do so. Times come from CUDA events: H2D copy, compute, D2H.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

from ..common import INPUT_SHAPE, ToolkitError
from . import COMPILE_MODES
from .base import Runner, parse_device_index

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_MODES_WITH_OWN_GRAPHS = ("reduce-overhead", "max-autotune")
_WARMUP_BEFORE_CAPTURE = 3


class TorchRunner(Runner):
    name = "torch"

    def __init__(
        self,
        model_path,
        *,
        device,
        precision,
        batch_size=None,
        compile: str | None = None,
        cuda_graph: bool = True,
    ):
        super().__init__(model_path, device=device, precision=precision, batch_size=batch_size)
        if compile is not None and compile not in COMPILE_MODES:
            raise ToolkitError(
                f"unknown torch.compile mode {compile!r}: choose one of {', '.join(COMPILE_MODES)}"
            )
        self.compile_mode = compile
        self.use_cuda_graph = cuda_graph

    @classmethod
    def check_device(cls, device: str) -> None:
        if device.startswith("cuda"):
            if not torch.cuda.is_available():
                raise ToolkitError(
                    f"--device {device}: PyTorch sees no CUDA GPU (torch {torch.__version__}, "
                    f"built for CUDA {torch.version.cuda or 'none'})"
                )
            index = parse_device_index(device, "cuda")
            if index >= torch.cuda.device_count():
                raise ToolkitError(
                    f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) present"
                )

    @classmethod
    def supported_precisions(cls, device: str) -> tuple[str, ...]:
        if device.startswith("cuda") and not torch.cuda.is_bf16_supported():
            return ("fp32", "fp16")
        return ("fp32", "fp16", "bf16")

    @classmethod
    def precision_note(cls, device: str, precision: str) -> str:
        return f" ({torch.cuda.get_device_name(device)} has no bf16)" if precision == "bf16" else ""

    # ---- loading -------------------------------------------------------------------------------------------
    def _load(self) -> None:
        from ..model import load_model

        self.dtype = _DTYPES[self.precision]
        self.torch_device = torch.device(self.device)
        self.on_cuda = self.torch_device.type == "cuda"
        model = load_model(self.model_path).to(self.torch_device, self.dtype).eval()
        self.input_shape = (None, *INPUT_SHAPE)
        self.graph = None
        self.details = {"compile": self.compile_mode, "cuda_graph": False}
        if self.on_cuda:
            # The exportable model runs attention as plain MatMul/Softmax; on a GPU the fused kernel
            # (scaled_dot_product_attention: flash / memory-efficient) is the fast path. On CPU it measured no
            # faster, so the CPU keeps the exported graph's arithmetic.
            self.details["fused_attention"] = _enable_fused_attention(model)
            self._saved_tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
            torch.backends.cudnn.benchmark = True
            self.details["gpu"] = torch.cuda.get_device_name(self.torch_device)
        if self.compile_mode:
            model = torch.compile(model, mode=self.compile_mode, dynamic=False)
        self.model = model
        if self.on_cuda:
            self._events = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
            if self.use_cuda_graph and self.batch_size and self.compile_mode not in _MODES_WITH_OWN_GRAPHS:
                self._capture(self.batch_size)
        if self.compile_mode and self.batch_size and self.graph is None:
            # One shape, compiled now rather than in the first timed run: smaller batches are padded up
            # instead of triggering a recompilation.
            self.input_shape = (self.batch_size, *INPUT_SHAPE)
            with torch.inference_mode():  # made as `_run` makes its inputs, so the compiled guards match
                warm = torch.zeros(self.input_shape, device=self.torch_device, dtype=torch.float32)
                for _ in range(_WARMUP_BEFORE_CAPTURE):
                    self._forward(warm)
            if self.on_cuda:
                torch.cuda.synchronize(self.torch_device)

    def _forward(self, batch32: torch.Tensor) -> torch.Tensor:
        """float32 input on the model's device -> float32 logits; the casts count as compute."""
        return self.model(batch32.to(self.dtype)).float()

    def _capture(self, batch_size: int) -> None:
        """Record one forward pass at `batch_size` in a CUDA graph; from then on batches are padded to it."""
        shape = (batch_size, *INPUT_SHAPE)
        self.static_input = torch.zeros(shape, device=self.torch_device, dtype=torch.float32)
        self.host_input = torch.empty(shape, dtype=torch.float32, pin_memory=True)
        self.host_output = None
        side = torch.cuda.Stream(self.torch_device)
        side.wait_stream(torch.cuda.current_stream(self.torch_device))
        with torch.inference_mode():
            # warm-up (and compilation) on a side stream, as CUDA graph capture requires
            with torch.cuda.stream(side):
                for _ in range(_WARMUP_BEFORE_CAPTURE):
                    self._forward(self.static_input)
            torch.cuda.current_stream(self.torch_device).wait_stream(side)
            torch.cuda.synchronize(self.torch_device)
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph):
                    self.static_output = self._forward(self.static_input)
            except Exception as exc:  # e.g. an op that synchronises with the host; eager replay still works
                torch.cuda.synchronize(self.torch_device)
                print(
                    f"notice: {self.model_path}: CUDA graph capture failed ({exc}); running without it",
                    file=sys.stderr,
                )
                self.details["cuda_graph_error"] = (
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                )
                return
        self.graph = graph
        self.host_output = torch.empty(tuple(self.static_output.shape), dtype=torch.float32, pin_memory=True)
        self.input_shape = shape
        self.details["cuda_graph"] = True

    # ---- inference -----------------------------------------------------------------------------------------
    def _run(self, batch: np.ndarray) -> np.ndarray:
        if not self.on_cuda:
            with torch.inference_mode():
                start = time.perf_counter()
                logits = self._forward(torch.from_numpy(batch)).numpy()
                self.last_compute_ms = (time.perf_counter() - start) * 1e3
            return logits
        h2d_start, h2d_end, compute_end, d2h_end = self._events
        stream = torch.cuda.current_stream(self.torch_device)
        with torch.inference_mode():
            if self.graph is not None:
                self.host_input.numpy()[...] = batch  # pinned staging: the H2D copy below is a true async DMA
                h2d_start.record(stream)
                self.static_input.copy_(self.host_input, non_blocking=True)
                h2d_end.record(stream)
                self.graph.replay()
                compute_end.record(stream)
                self.host_output.copy_(self.static_output, non_blocking=True)
                d2h_end.record(stream)
                d2h_end.synchronize()
                logits = self.host_output.numpy().copy()
            else:
                h2d_start.record(stream)
                device_input = torch.from_numpy(batch).to(self.torch_device, non_blocking=False)
                h2d_end.record(stream)
                device_output = self._forward(device_input)
                compute_end.record(stream)
                logits = device_output.cpu().numpy()
                d2h_end.record(stream)
                d2h_end.synchronize()
        self.last_h2d_ms = h2d_start.elapsed_time(h2d_end)
        self.last_compute_ms = h2d_end.elapsed_time(compute_end)
        self.last_d2h_ms = compute_end.elapsed_time(d2h_end)
        return logits

    def _close(self) -> None:
        self.graph = None
        self.model = None
        for name in ("static_input", "static_output", "host_input", "host_output"):
            setattr(self, name, None)
        if getattr(self, "on_cuda", False):
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self._saved_tf32
            torch.cuda.empty_cache()


def _enable_fused_attention(model: torch.nn.Module) -> int:
    """Switch timm's attention modules to scaled_dot_product_attention; return how many were switched."""
    modules = [module for module in model.modules() if hasattr(module, "fused_attn")]
    for module in modules:
        module.fused_attn = True
    return len(modules)
