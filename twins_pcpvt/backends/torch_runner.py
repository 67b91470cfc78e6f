"""PyTorch backend: the checkpoint loaded through the safe loader, on CPU or CUDA, in fp32, fp16 or bf16.

Reduced precision casts the whole model (`.to(dtype)`), which measured faster than autocast on CPU and
avoids the cast kernels autocast adds on a GPU; logits are returned as float32. fp32 stays strict fp32
(TF32 off), so it matches the other backends to 1e-4.

On CUDA with a known batch size the forward pass is captured once in a CUDA graph and replayed for every
batch (the base runner pads the last batch up to that size). `compile` runs `torch.compile` first: in its
'default' mode the compiled model is then captured the same way; the modes that use CUDA graphs themselves
('reduce-overhead', 'max-autotune') are left to do so. Times come from CUDA events: H2D copy, compute, D2H.
Every CUDA step (loading, capture, replay, copies) runs with the runner's device made current: a graph
captured
while another device is current records nothing, and its replays would return stale outputs.

Strict fp32 (TF32 off) and cuDNN autotuning are process-wide PyTorch settings: they are held while any CUDA
runner is open and PyTorch's own settings come back when the last one closes (or fails to load), whatever
the order of closing.
"""

from __future__ import annotations

import contextlib
import sys
import time

import numpy as np
import torch

from ..common import INPUT_SHAPE, ToolkitError, one_line
from . import COMPILE_MODES
from .base import Runner, parse_device_index

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_MODES_WITH_OWN_GRAPHS = ("reduce-overhead", "max-autotune")
_WARMUP_BEFORE_CAPTURE = 3
# Tensor cores (fp16) from compute capability 7.0, native bf16 from 8.0 (Ampere)
_FP16_CAPABILITY, _BF16_CAPABILITY = (7, 0), (8, 0)


def native_cpu_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX), as PyTorch's CPU kernels detect it."""
    checks = (
        getattr(torch.cpu, "_is_avx512_bf16_supported", None),
        getattr(torch.cpu, "_is_amx_tile_supported", None),
    )
    return any(check is not None and check() for check in checks)


def cuda_capability(device: str) -> tuple[int, int]:
    """Compute capability of the device named `device` (`cuda:N`), not of whichever device is current."""
    return tuple(torch.cuda.get_device_capability(parse_device_index(device, "cuda")))


class _CudaMathSettings:
    """PyTorch's process-wide GPU math settings, held strict (TF32 off) and autotuned while any runner needs
    them.

    The first holder saves the settings found; the last one to release puts them back, so runners may close in
    any order (and a runner whose load failed releases too).
    """

    def __init__(self):
        self.holders = 0
        self.saved: tuple[bool, bool, bool] | None = None

    @staticmethod
    def read() -> tuple[bool, bool, bool]:
        backends = torch.backends
        return backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32, backends.cudnn.benchmark

    @staticmethod
    def write(matmul_tf32: bool, cudnn_tf32: bool, cudnn_benchmark: bool) -> None:
        backends = torch.backends
        backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32 = matmul_tf32, cudnn_tf32
        backends.cudnn.benchmark = cudnn_benchmark

    def acquire(self) -> None:
        if self.holders == 0:
            self.saved = self.read()
            self.write(False, False, True)
        self.holders += 1

    def release(self) -> None:
        self.holders -= 1
        if self.holders == 0:
            self.write(*self.saved)
            self.saved = None


CUDA_MATH = _CudaMathSettings()


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
        if device.startswith("cuda") and cuda_capability(device) < _BF16_CAPABILITY:
            return ("fp32", "fp16")
        return ("fp32", "fp16", "bf16")

    @classmethod
    def default_precision(cls, device: str) -> str:
        if device.startswith("cuda"):
            return "fp16" if cuda_capability(device) >= _FP16_CAPABILITY else "fp32"
        return "bf16" if native_cpu_bf16() else "fp32"

    @classmethod
    def precision_note(cls, device: str, precision: str) -> str:
        if precision == "bf16" and device.startswith("cuda"):
            major, minor = cuda_capability(device)
            return f" ({torch.cuda.get_device_name(device)}, compute capability {major}.{minor}, has no bf16)"
        return ""

    # ---- loading -------------------------------------------------------------------------------------------
    def _on_device(self):
        """The runner's CUDA device made current for the block (nothing to do on the CPU)."""
        return torch.cuda.device(self.cuda_index) if self.on_cuda else contextlib.nullcontext()

    def _load(self) -> None:
        self.dtype = _DTYPES[self.precision]
        self.torch_device = torch.device(self.device)
        self.on_cuda = self.torch_device.type == "cuda"
        self.cuda_index = parse_device_index(self.device, "cuda") if self.on_cuda else None
        self.graph = None
        self.holds_cuda_math = False
        with self._on_device():
            self._load_on_device()

    def _load_on_device(self) -> None:
        from ..model import load_model

        if self.on_cuda:
            CUDA_MATH.acquire()
            self.holds_cuda_math = True
        model = load_model(self.model_path).to(self.torch_device, self.dtype).eval()
        self.input_shape = (None, *INPUT_SHAPE)
        self.details = {"compile": self.compile_mode, "cuda_graph": False}
        if self.on_cuda:
            # The exportable model runs attention as plain MatMul/Softmax; on a GPU the fused kernel
            # (scaled_dot_product_attention: flash / memory-efficient) is the fast path. On CPU it measured no
            # faster, so the CPU keeps the exported graph's arithmetic.
            self.details["fused_attention"] = _enable_fused_attention(model)
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
        with self._on_device():
            self._capture_on_device(batch_size)

    def _capture_on_device(self, batch_size: int) -> None:
        shape = (batch_size, *INPUT_SHAPE)
        self.static_input = torch.zeros(shape, device=self.torch_device, dtype=torch.float32)
        self.host_input = _pinned(shape)
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
                reason = self.details["cuda_graph_error"] = one_line(exc)
                print(
                    f"notice: {self.model_path}: CUDA graph capture failed ({reason}); running without it",
                    file=sys.stderr,
                )
                return
        self.graph = graph
        self.host_output = _pinned(tuple(self.static_output.shape))
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
        with self._on_device():
            return self._run_on_device(batch)

    def _run_on_device(self, batch: np.ndarray) -> np.ndarray:
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
        for name in ("graph", "model", "static_input", "static_output", "host_input", "host_output"):
            setattr(self, name, None)
        if getattr(self, "holds_cuda_math", False):
            self.holds_cuda_math = False
            CUDA_MATH.release()
        if getattr(self, "on_cuda", False):
            with self._on_device():
                torch.cuda.empty_cache()


def _pinned(shape: tuple[int, ...]) -> torch.Tensor:
    """Page-locked host memory, so that copies to and from the GPU are asynchronous DMA."""
    return torch.empty(shape, dtype=torch.float32, pin_memory=True)


def _enable_fused_attention(model: torch.nn.Module) -> int:
    """Switch timm's attention modules to scaled_dot_product_attention; return how many were switched."""
    modules = [module for module in model.modules() if hasattr(module, "fused_attn")]
    for module in modules:
        module.fused_attn = True
    return len(modules)
