"""Measure our runner's backends against the peers a user would otherwise reach for, in one interleaved run.

Subjects are named on the command line as `NAME[:PRECISION][+OPTION...]`:
- our backends: `onnxruntime`, `openvino`, `torch` (options `+compile`, `+compile=MODE`, `+nograph`), each at
  fp32, fp16, bf16 or `auto` (the backend's native reduced precision where the hardware has one), and `auto`
  (what `--backend auto --precision auto` runs for the model);
- peers (bench/peers.py): `timm-eager` (plain `timm.create_model('twins_pcpvt_small')`, default fused
  attention, inference mode), `onnxruntime-plain` (an `InferenceSession` with the CPU provider and no options)
  and `openvino-plain` (`compile_model(onnx, "CPU")` with default settings, which runs bf16 on CPUs with
  native bf16).
Every subject is a Runner and reports the precision it actually ran; ratios compare subjects that ran the same
precision.

Timing is compute only, as ais_bench counts it: each runner's `last_compute_ms`. Each batch size warms every
subject up, then runs `rounds` rounds in which every subject gets `seconds / rounds` of runs (at least one) in
a rotating order, so that slow drift of a shared machine spreads over all subjects alike. At every batch size
each subject's logits on real photo crops are compared with a strict fp32 reference computed once on the CPU
(PyTorch, fp32, no TF32).
"""

from __future__ import annotations

import contextlib
import gc
import time
from argparse import ArgumentTypeError
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from twins_pcpvt.backends import create_runner
from twins_pcpvt.backends.base import Runner, time_stats
from twins_pcpvt.cli import positive_int_list
from twins_pcpvt.common import INPUT_SHAPE, ToolkitError, UsageError, one_line
from twins_pcpvt.compare import agreement, passes, top1_text

from . import benchreport
from .peers import PEER_RUNNERS

PEERS = {
    "timm-eager": benchreport.TIMM_EAGER_LABEL,
    "onnxruntime-plain": benchreport.PLAIN_ORT_LABEL,
    "openvino-plain": benchreport.PLAIN_OPENVINO_LABEL,
}
# the precision a peer is asked for: fp32, or whatever its runtime picks by itself
PEER_PRECISION = {"timm-eager": "fp32", "onnxruntime-plain": "fp32", "openvino-plain": "default"}
REFERENCE_LABEL = "PyTorch CPU fp32"
OUR_BACKENDS = ("onnxruntime", "openvino", "torch")
TORCH_OPTIONS = ("compile", "nograph")


@dataclass
class Subject:
    """One thing to measure: a backend (ours or a peer) at one requested precision with its options."""

    name: str  # backend name, or a key of PEERS
    precision: str = "fp32"  # asked for; the precision that ran is read back from the loaded subject
    options: dict = field(default_factory=dict)
    auto: bool = False  # what `--backend auto` picks

    @property
    def kind(self) -> str:
        return "peer" if self.name in PEERS else "ours"

    @property
    def label(self) -> str:
        base = PEERS.get(self.name, self.name)
        extras = []
        if "compile" in self.options:
            mode = self.options["compile"]
            extras.append("compile" if mode == "default" else f"compile={mode}")
        if self.options.get("cuda_graph") is False:
            extras.append("no graph")
        return base + "".join(f" +{extra}" for extra in extras)

    @property
    def key(self) -> tuple:
        return (self.name, self.precision, tuple(sorted(self.options.items())))


def parse_subjects(text: str, device: str) -> list[Subject]:
    """Subjects from a comma-separated list of `NAME[:PRECISION][+OPTION...]` tokens; UsageError names a bad
    one."""
    subjects: list[Subject] = []
    for token in (part.strip() for part in text.split(",")):
        if not token:
            continue
        head, *option_tokens = token.split("+")
        name, _, precision = head.partition(":")
        if name == "auto":
            from twins_pcpvt.backends import resolve_backend

            # only the file's suffix matters to the choice: the ONNX export on a CPU, the checkpoint on a GPU
            name = resolve_backend(
                "auto", model_file_for("auto", device, Path("m.onnx"), Path("m.pth")), device
            )
            subject = Subject(name, _default_precision(name, device), auto=True)
        elif name in PEERS:
            if precision and precision != PEER_PRECISION[name]:
                what = "fp32 only" if PEER_PRECISION[name] == "fp32" else "its runtime's default precision"
                raise UsageError(f"--backends: the peer {name} runs {what}, not {precision!r}")
            subject = Subject(name, PEER_PRECISION[name], _parse_options(token, name, option_tokens))
        elif name in OUR_BACKENDS:
            from twins_pcpvt.backends import AUTO_PRECISION, PRECISIONS

            precision = precision or "fp32"
            if precision not in (AUTO_PRECISION, *PRECISIONS):
                raise UsageError(
                    f"--backends: unknown precision {precision!r} in {token!r}; "
                    f"choose one of {', '.join((*PRECISIONS, AUTO_PRECISION))}"
                )
            options = _parse_options(token, name, option_tokens)
            if precision == AUTO_PRECISION:
                precision = _default_precision(name, device)
            subject = Subject(name, precision, options)
        else:
            choices = ", ".join((*OUR_BACKENDS, "auto", *PEERS))
            raise UsageError(f"--backends: unknown backend {name!r} in {token!r}; choose from {choices}")
        _merge(subjects, subject)
    if not subjects:
        raise UsageError("--backends: no backend named")
    return subjects


def _default_precision(name: str, device: str) -> str:
    """What `--precision auto` runs for our backend `name` on `device`."""
    from twins_pcpvt.backends import runner_class

    try:
        return runner_class(name).default_precision(device)
    except ToolkitError:
        raise
    except Exception as exc:  # e.g. no GPU to ask for its capability
        raise ToolkitError(
            f"--backends: cannot tell the default precision of {name} on {device}: {exc}"
        ) from exc


def _parse_options(token: str, name: str, option_tokens: list[str]) -> dict:
    options: dict = {}
    for option in option_tokens:
        key, has_value, value = option.partition("=")
        if name != "torch" or key not in TORCH_OPTIONS or (key == "nograph" and has_value):
            raise UsageError(
                f"--backends: unknown option {option!r} in {token!r}; only torch takes "
                f"+compile[=MODE] and +nograph"
            )
        if key == "compile":
            from twins_pcpvt.backends.torch_runner import COMPILE_MODES

            options["compile"] = value if has_value else "default"
            if options["compile"] not in COMPILE_MODES:
                raise UsageError(
                    f"--backends: unknown torch.compile mode {value!r} in {token!r}; "
                    f"choose one of {', '.join(COMPILE_MODES)}"
                )
        else:
            options["cuda_graph"] = False
    return options


def _merge(subjects: list[Subject], subject: Subject) -> None:
    """Add `subject` unless the same one is listed; an `auto` duplicate only marks the listed one as auto's
    choice."""
    for existing in subjects:
        if existing.key == subject.key:
            existing.auto = existing.auto or subject.auto
            return
    subjects.append(subject)


def default_subjects(device: str) -> list[Subject]:
    """Every installed backend at every precision it runs on `device`, `auto`, and the peers that fit the
    device."""
    from twins_pcpvt.backends import available_backends, runner_class

    tokens = []
    installed = available_backends()
    for name in OUR_BACKENDS:
        if name not in installed:
            continue
        try:
            cls = runner_class(name)
            cls.check_device(device)
        except ToolkitError:
            continue
        precisions = cls.supported_precisions(device)
        if device == "cpu":
            # PyTorch emulates what the CPU lacks (slowly); measure reduced precision only where it is native
            native = {"bf16"} if native_cpu_bf16() else set()
            precisions = [p for p in precisions if p == "fp32" or p in native]
        tokens += [f"{name}:{precision}" for precision in precisions]
        if name == "torch" and device.startswith("cuda"):
            tokens += [
                f"torch:{precision}+compile" for precision in ("fp16", "bf16") if precision in precisions
            ]
    tokens.append("auto")
    tokens.append("timm-eager")
    if device == "cpu":
        tokens.append("onnxruntime-plain")
        if "openvino" in installed:
            tokens.append("openvino-plain")
    return parse_subjects(",".join(tokens), device)


def native_cpu_bf16() -> bool:
    """Whether this CPU computes bf16 natively, as the torch backend decides its default precision."""
    from twins_pcpvt.backends.torch_runner import native_cpu_bf16 as torch_sees_native_bf16

    return torch_sees_native_bf16()


def model_file_for(name: str, device: str, onnx_path: Path, checkpoint_path: Path) -> Path:
    """ONNX for the ONNX runtimes (and `auto` on CPU, as a user deploys it); the checkpoint for PyTorch."""
    if name in ("onnxruntime", "openvino", "onnxruntime-plain", "openvino-plain") or (
        name == "auto" and device == "cpu"
    ):
        return onnx_path
    return checkpoint_path


# ---- runners: ours from the registry, the peers from bench/peers.py ---------------------------------------
def open_runner(
    subject: Subject, device: str, onnx_path: Path, checkpoint_path: Path, batch_size: int | None
) -> Runner:
    """The runner of `subject`, checked but not loaded: enter it to load it."""
    model = model_file_for(subject.name, device, onnx_path, checkpoint_path)
    if subject.name in PEER_RUNNERS:
        peer_device = device if subject.name == "timm-eager" else "cpu"
        return PEER_RUNNERS[subject.name](model, device=peer_device, precision=subject.precision)
    return create_runner(
        subject.name,
        model,
        device=device,
        precision=subject.precision,
        batch_size=batch_size,
        **subject.options,
    )


def opens_per_batch_size(subject: Subject, device: str) -> bool:
    """Our runners are opened for each batch size, as the infer script opens them for its `--batchsize`: fixed
    shapes (OpenVINO's static reshape, CUDA graphs, compiled models) are part of what is measured. The peers
    run as their users write them, with a dynamic batch."""
    return subject.kind == "ours"


def result_row(
    subject: Subject, runner: Runner, batch_size: int, latencies_ms: list[float], load_seconds: float
) -> dict:
    """One measured point: what ran, the runner summary's latency statistics and ais_bench's throughput."""
    stats = time_stats(latencies_ms)
    if not stats["count"]:
        raise ValueError("no runs were timed")
    return {
        "label": subject.label,
        "backend": subject.name,
        "kind": subject.kind,
        "auto": subject.auto,
        "requested_precision": subject.precision,
        "precision": runner.precision,
        "batch_size": batch_size,
        "images_per_second": 1000.0 * batch_size / stats["mean"],
        "latency_ms": stats,
        "load_seconds": load_seconds,
        "details": {key: str(value) for key, value in runner.describe().items()},
    }


def failure_text(exc: BaseException) -> str:
    return one_line(exc, typed=True, limit=400)


# ---- the measurement ---------------------------------------------------------------------------------------
@dataclass
class Settings:
    device: str
    batch_sizes: list[int]
    seconds: float
    rounds: int
    warmup_seconds: float
    time_limit: float | None = None  # seconds for the whole run; later points are skipped once it has passed


def cpu_reference_logits(checkpoint_path: Path, photos: np.ndarray) -> np.ndarray:
    """The strict fp32 reference: the checkpoint in PyTorch on the CPU, float32 throughout (no TF32 there)."""
    import torch

    from twins_pcpvt.model import load_model

    model = load_model(checkpoint_path).float().eval()
    with torch.inference_mode():
        return model(torch.from_numpy(np.ascontiguousarray(photos, dtype=np.float32))).double().numpy()


def run_benchmark(
    subjects: list[Subject],
    settings: Settings,
    onnx_path: Path | None,
    checkpoint_path: Path,
    photos: np.ndarray,
    report: dict,
    progress: Callable[[str], None] = print,
    *,
    reference: np.ndarray | None = None,
    on_step: Callable[[dict], None] | None = None,
) -> None:
    """Measure every subject at every batch size into `report` (results, agreement, failures, ratios).

    `reference`: the strict fp32 logits of `photos` (computed from the checkpoint on the CPU when not given).
    `on_step(report)` runs after each batch size (with ratios filled in), so that a caller can save the
    partial
    report. Ctrl-C (or `timeout -s INT`) stops the measurement but keeps what was measured, marked as partial.
    """
    if reference is None:
        progress("computing the strict fp32 reference on the CPU")
        reference = cpu_reference_logits(checkpoint_path, photos)
    run = _Run(subjects, settings, onnx_path, checkpoint_path, report, progress)
    try:
        for batch_size in settings.batch_sizes:
            run.measure(batch_size, photos, reference)
            benchreport.add_ratios(report["results"])
            if on_step is not None:
                on_step(report)
    except KeyboardInterrupt:
        report["failures"].append(
            {
                "label": "all",
                "precision": "",
                "batch_size": None,
                "error": "interrupted: the points after this were not measured",
            }
        )
    finally:
        run.close()
    benchreport.add_ratios(report["results"])


class _Run:
    def __init__(self, subjects, settings: Settings, onnx_path, checkpoint_path, report: dict, progress):
        self.subjects, self.settings, self.report, self.progress = subjects, settings, report, progress
        self.onnx_path, self.checkpoint_path = onnx_path, checkpoint_path
        self.began = time.monotonic()
        self.kept_open = contextlib.ExitStack()  # the runners open for every batch size (the peers)
        self.kept: dict[int, Runner] = {}  # by subject index
        self.dropped: set[int] = set()  # subjects whose batch-independent load failed
        self.load_seconds: dict[int, float] = {}  # how long opening took (loading, compiling, capturing)

    def close(self) -> None:
        _close_all(self.kept_open)
        self.kept.clear()

    def measure(self, batch_size: int, photos: np.ndarray, reference: np.ndarray) -> None:
        """One batch size: open what it needs, check agreement on `photos` against `reference`, time,
        close."""
        per_size = contextlib.ExitStack()  # our runners, opened for this batch size
        try:
            runners = self._open_all(batch_size, per_size)
            _measure_agreement(self.subjects, runners, photos, reference, batch_size, self.report)
            batch = np.random.default_rng(batch_size).standard_normal(
                (batch_size, *INPUT_SHAPE), dtype=np.float32
            )
            self._time_all(runners, batch)
        finally:
            _close_all(per_size)
            _reset_compiled_code()

    def _open_all(self, batch_size: int, per_size: contextlib.ExitStack) -> dict[int, Runner]:
        limit = self.settings.time_limit
        runners: dict[int, Runner] = {}
        for index, subject in enumerate(self.subjects):
            if index in self.dropped:
                continue
            if limit is not None and time.monotonic() - self.began > limit:
                _fail(self.report, subject, batch_size, f"skipped: the time limit of {limit:g} s had passed")
                continue
            if index in self.kept:
                runners[index] = self.kept[index]
                continue
            per_batch = opens_per_batch_size(subject, self.settings.device)
            self.progress(
                f"loading {subject.label} {subject.precision}"
                + (f" for batch {batch_size}" if per_batch else "")
            )
            opened = time.monotonic()
            try:
                runner = open_runner(
                    subject,
                    self.settings.device,
                    self.onnx_path,
                    self.checkpoint_path,
                    batch_size if per_batch else None,
                )
                (per_size if per_batch else self.kept_open).enter_context(runner)
            except Exception as exc:  # one backend failing to load is reported and the others are measured
                _fail(self.report, subject, batch_size if per_batch else None, failure_text(exc))
                if not per_batch:
                    self.dropped.add(index)
                continue
            self.load_seconds[index] = time.monotonic() - opened  # for our CUDA runners: compilation, capture
            if not per_batch:
                self.kept[index] = runner
            runners[index] = runner
        return runners

    def _time_all(self, runners: dict[int, Runner], batch: np.ndarray) -> None:
        batch_size = len(batch)
        latencies: dict[int, list[float]] = {index: [] for index in runners}
        failed: set[int] = set()

        def run_for(index: int, seconds: float, record: bool) -> None:
            runner, runs = runners[index], 0
            deadline = time.perf_counter() + seconds
            while True:
                try:
                    runner.infer(batch)
                except Exception as exc:
                    _fail(self.report, self.subjects[index], batch_size, failure_text(exc))
                    failed.add(index)
                    return
                runs += 1
                if record:
                    latencies[index].append(runner.last_compute_ms)
                if time.perf_counter() >= deadline and runs >= (1 if record else 2):
                    return

        for index in runners:
            subject = self.subjects[index]
            self.progress(f"batch {batch_size}: warming up {subject.label} {subject.precision}")
            run_for(index, self.settings.warmup_seconds, record=False)
        order = [index for index in runners if index not in failed]
        rounds = self.settings.rounds
        for round_number in range(rounds):
            self.progress(f"batch {batch_size}: round {round_number + 1}/{rounds}")
            shift = round_number % len(order) if order else 0
            # rotating order: no subject always runs first or last
            for index in order[shift:] + order[:shift]:
                if index not in failed:
                    run_for(index, self.settings.seconds / rounds, record=True)
        for index in order:
            if index not in failed:
                subject, runner = self.subjects[index], runners[index]
                row = result_row(subject, runner, batch_size, latencies[index], self.load_seconds[index])
                self.report["results"].append(row)
                self.progress(
                    f"batch {batch_size}: {subject.label} {runner.precision}: "
                    f"{row['images_per_second']:.1f} img/s (median {row['latency_ms']['median']:.2f} ms, "
                    f"{row['latency_ms']['count']} runs)"
                )


def _measure_agreement(
    subjects, runners: dict[int, Runner], photos: np.ndarray, reference: np.ndarray, batch_size: int, report
) -> None:
    """Logits of every subject on the same real photos, in chunks of `batch_size`, against the fp32 reference.

    A subject below the bar of its precision is also a failure: its throughput is not a number to trust.
    """
    chunks = [
        np.ascontiguousarray(photos[start : start + batch_size], dtype=np.float32)
        for start in range(0, len(photos), batch_size)
    ]
    for index, runner in runners.items():
        subject = subjects[index]
        try:  # a fixed-batch runner pads a short chunk itself
            logits = np.concatenate([np.asarray(runner.infer(chunk), np.float32) for chunk in chunks])
        except Exception as exc:
            _fail(report, subject, batch_size, f"agreement check: {failure_text(exc)}")
            continue
        row = agreement(subject.label, runner.precision, REFERENCE_LABEL, logits, reference)
        row["batch_size"] = batch_size
        row["passes"] = passes(row)
        report["agreement"].append(row)
        if not row["passes"]:
            _fail(
                report,
                subject,
                batch_size,
                f"disagrees with {REFERENCE_LABEL}: worst cosine {row['cosine']:.6f}, "
                f"same top-1 {top1_text(row)}",
            )


def _close_all(stack: contextlib.ExitStack) -> None:
    """Close the runners of `stack`; a runner that fails to close never stops the others or the run."""
    with contextlib.suppress(Exception):
        stack.close()
    gc.collect()


def _fail(report: dict, subject: Subject, batch_size: int | None, error: str) -> None:
    report["failures"].append(
        {"label": subject.label, "precision": subject.precision, "batch_size": batch_size, "error": error}
    )


def _reset_compiled_code() -> None:
    """Forget torch.compile's per-model caches between batch sizes, so successive compiled runners never hit
    its
    recompilation limit (which silently falls back to eager)."""
    import sys

    dynamo = sys.modules.get("torch._dynamo")  # never imported: nothing was compiled
    if dynamo is not None:
        dynamo.reset()


# ---- inputs ------------------------------------------------------------------------------------------------
def sample_photos() -> tuple[np.ndarray, str]:
    """Real photos preprocessed as the guide does (resize 256 bicubic, crop 224, normalise): float32 [N, 3,
    224, 224].

    matplotlib ships one photo (Grace Hopper); four different crops of it give four real inputs.
    """
    from PIL import Image

    from twins_pcpvt.data import reference_transform
    from twins_pcpvt.demo import sample_photo_path

    path = sample_photo_path()
    with Image.open(path) as image:
        photo = image.convert("RGB")
    width, height = photo.size
    crops = [
        photo,
        photo.crop((0, 0, width * 3 // 4, height * 3 // 4)),
        photo.crop((width // 4, height // 4, width, height)),
        photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT).crop((width // 8, 0, width, height * 7 // 8)),
    ]
    return np.stack([reference_transform(crop) for crop in crops]).astype(np.float32), f"{path.name}, 4 crops"


def needs_onnx(subjects: list[Subject], device: str) -> bool:
    onnx = Path("model.onnx")
    return any(model_file_for(s.name, device, onnx, Path("model.pth")) == onnx for s in subjects)


def prepare_model_files(
    source: str | None, onnx: str | None, work_dir: Path, *, with_onnx: bool = True, progress=print
) -> tuple[Path, Path | None]:
    """The checkpoint and dynamic-batch ONNX the subjects load: the given files, or made from `source` (or
    random
    weights) in `work_dir`. The ONNX file is made only `with_onnx`; otherwise None is returned for it."""
    checkpoint = Path(source) if source else None
    if checkpoint is not None and not checkpoint.is_file():
        raise ToolkitError(f"{checkpoint}: checkpoint not found")
    if onnx is not None and not Path(onnx).is_file():
        raise ToolkitError(f"{onnx}: ONNX model not found")
    if checkpoint is not None and (onnx is not None or not with_onnx):
        return checkpoint, Path(onnx) if onnx else None
    import torch

    from twins_pcpvt.model import load_model

    model = load_model(str(checkpoint) if checkpoint else None, random_init=checkpoint is None, seed=0)
    if checkpoint is None:
        checkpoint = work_dir / "twins_pcpvt_small_random.pth"
        torch.save(model.state_dict(), checkpoint)
    if onnx is None and with_onnx:
        from twins_pcpvt.export import export_onnx

        progress("exporting the model to ONNX (dynamic batch)")
        onnx = export_onnx(model, work_dir / "twins_dynamic.onnx")
    return checkpoint, Path(onnx) if onnx else None


def parse_batch_sizes(text: str) -> list[int]:
    """`--batch-sizes` read by the toolkit's own list type, sorted, each once; a bad list is a UsageError."""
    try:
        sizes = positive_int_list(text)
    except ArgumentTypeError as exc:
        raise UsageError(f"--batch-sizes: {exc}") from None
    return sorted(set(sizes))
