"""The benchmark's outputs: machine description, latency statistics, ratios, targets, bench.md, bench.json,
bench.png.

A report is one plain dict (it is what bench.json holds):

    {"schema": ..., "created": ..., "command": ..., "machine": {...}, "settings": {...},
     "results": [{"label", "backend", "requested_precision", "precision" (what ran), "kind", "auto",
                  "batch_size", "images_per_second", "latency_ms": (the runner summary's statistics: "min",
                  "max", "mean", "median", "percentile(99%)", "count"),
                  "ratio_vs_best_peer_same_precision", "best_peer_same_precision", "ratio_vs_plain_openvino",
                  "ratio_vs_plain_onnxruntime", "ratio_vs_timm_eager"}, ...],
     "agreement": [{"label", "precision", "batch_size", "reference", "cosine", "max_abs_diff", "top1_agrees",
                    "nonfinite_values", "passes"}, ...],
     "failures": [{"label", "batch_size", "error"}, ...], "targets": [...], "reference_ascend_310p": {...}}

Throughput follows ais_bench: 1000 * batch size / mean compute time in ms.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
from importlib import metadata
from pathlib import Path
from typing import NamedTuple

from twins_pcpvt.backends.base import PERCENTILE
from twins_pcpvt.common import ToolkitError, atomic_writer, usable_cpus
from twins_pcpvt.compare import top1_text
from twins_pcpvt.report import write_json

SCHEMA = "twins-pcpvt-bench/3"  # 3: end_to_end rows, the peak and each row's fraction of it
TAIL = f"percentile({PERCENTILE}%)"
# The guide's Ascend 310P OM throughput (img/s) by batch size: the reference line of the plot.
ASCEND_310P_REFERENCE = {1: 307, 4: 458, 8: 602, 16: 613, 32: 555}
PLAIN_ORT_LABEL = "onnxruntime plain"
PLAIN_OPENVINO_LABEL = "openvino plain"
TIMM_EAGER_LABEL = "timm eager"
LIBRARIES = (
    "numpy",
    "torch",
    "torchvision",
    "timm",
    "onnx",
    "onnxruntime",
    "openvino",
    "triton",
    "matplotlib",
)
CPU_FLAGS_OF_INTEREST = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "amx_bf16",
    "amx_tile",
    "avx512_fp16",
)


def machine_info(device: str = "cpu") -> dict:
    """What the numbers were measured on: CPU model and cores, memory, GPU (when torch sees one), library
    versions."""
    cpu_model, flags = _cpu_model_and_flags()
    info = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "cpu_flags": [flag for flag in CPU_FLAGS_OF_INTEREST if flag in flags],
        "memory_gib": _memory_gib(),
        "device": device,
        "gpu": _gpu_name(),
        "libraries": {name: _version(name) for name in LIBRARIES if _version(name)},
    }
    return info


def cpu_model() -> str:
    return _cpu_model_and_flags()[0]


def _cpu_model_and_flags() -> tuple[str, set[str]]:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor() or "unknown", set()
    model = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    flags = re.search(r"^flags\s*:\s*(.+)$", text, re.MULTILINE)
    return (model.group(1).strip() if model else platform.processor() or "unknown"), set(
        flags.group(1).split() if flags else ()
    )


def _memory_gib() -> float | None:
    try:
        text = Path("/proc/meminfo").read_text(encoding="utf-8")
    except OSError:
        return None
    match = re.search(r"^MemTotal:\s*(\d+) kB", text, re.MULTILINE)
    return round(int(match.group(1)) / 2**20, 1) if match else None


def _gpu_name() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    memory = props.total_memory / 2**30
    return f"{props.name} ({memory:.0f} GiB, {props.multi_processor_count} SMs, CUDA {torch.version.cuda})"


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def machine_line(machine: dict) -> str:
    """One line naming the machine, for table captions and plot titles."""
    cores = machine["usable_cpus"]
    text = f"{machine['cpu_model']}, {cores} core{'s' if cores != 1 else ''}"
    if machine.get("device") == "cuda" and machine.get("gpu"):
        text = f"{machine['gpu']}; host {text}"
    return text


def add_ratios(results: list[dict]) -> None:
    """Give each result its throughput over peers' at the same batch size (None where the peer is missing).

    - over the fastest peer that ran the same precision (what a user of that precision would otherwise get);
    - over plain OpenVINO as it runs by default (whatever precision it picked on this CPU);
    - over plain ONNX Runtime fp32 and timm eager fp32.
    """
    for key, label, precision in (
        ("ratio_vs_plain_onnxruntime", PLAIN_ORT_LABEL, "fp32"),
        ("ratio_vs_timm_eager", TIMM_EAGER_LABEL, "fp32"),
        ("ratio_vs_plain_openvino", PLAIN_OPENVINO_LABEL, None),
    ):
        baseline = {
            row["batch_size"]: row["images_per_second"]
            for row in results
            if row["label"] == label and precision in (None, row["precision"])
        }
        for row in results:
            base = baseline.get(row["batch_size"])
            row[key] = row["images_per_second"] / base if base else None
    for row in results:
        peers = [
            peer
            for peer in results
            if peer.get("kind") == "peer"
            and peer["batch_size"] == row["batch_size"]
            and peer["precision"] == row["precision"]
        ]
        best = max(peers, key=lambda peer: peer["images_per_second"], default=None)
        row["best_peer_same_precision"] = best["label"] if best else None
        row["ratio_vs_best_peer_same_precision"] = (
            row["images_per_second"] / best["images_per_second"] if best else None
        )


class Target(NamedTuple):
    """A ratio target: the best of `who` ('auto': what `--backend auto --precision auto` runs, or 'ours') at
    one
    of `precisions` (None: each precision that ran, judged apart) and `batch_size` on `device`, divided by the
    peer named by `ratio_key`, must reach `minimum`."""

    description: str
    device: str
    who: str
    precisions: tuple[str, ...] | None
    batch_size: int
    ratio_key: str
    minimum: float


_VS_ORT, _VS_TIMM, _VS_OV = "ratio_vs_plain_onnxruntime", "ratio_vs_timm_eager", "ratio_vs_plain_openvino"
_VS_PEER = "ratio_vs_best_peer_same_precision"
TARGETS = (
    Target("ours >= 1.0x the best peer at equal precision, batch 1", "cpu", "ours", None, 1, _VS_PEER, 1.0),
    Target("ours >= 1.0x the best peer at equal precision, batch 8", "cpu", "ours", None, 8, _VS_PEER, 1.0),
    Target(
        "ours default >= 1.0x plain OpenVINO default, batch 1",
        "cpu",
        "auto",
        ("fp32", "bf16", "fp16"),
        1,
        _VS_OV,
        1.0,
    ),
    Target(
        "ours default >= 1.0x plain OpenVINO default, batch 8",
        "cpu",
        "auto",
        ("fp32", "bf16", "fp16"),
        8,
        _VS_OV,
        1.0,
    ),
    Target("ours fp32 >= 1.3x plain ONNX Runtime, batch 1", "cpu", "ours", ("fp32",), 1, _VS_ORT, 1.3),
    Target("ours fp32 >= 1.1x plain ONNX Runtime, batch 8", "cpu", "ours", ("fp32",), 8, _VS_ORT, 1.1),
    Target("ours fp32 >= 2x timm eager, batch 1", "cpu", "ours", ("fp32",), 1, _VS_TIMM, 2.0),
    Target("ours bf16 >= 2x plain ONNX Runtime, batch 1", "cpu", "ours", ("bf16",), 1, _VS_ORT, 2.0),
    Target(
        "ours fp16/bf16 >= 6x timm eager fp32, batch 1", "cuda", "ours", ("fp16", "bf16"), 1, _VS_TIMM, 6.0
    ),
    Target(
        "ours fp16/bf16 >= 5x timm eager fp32, batch 64", "cuda", "ours", ("fp16", "bf16"), 64, _VS_TIMM, 5.0
    ),
)


def evaluate_targets(results: list[dict], device: str) -> list[dict]:
    """The targets that this run can answer: the best qualifying result, its ratio, and whether it is met."""
    verdicts = []
    for target in TARGETS:
        if target.device != device:
            continue
        candidates = [
            row
            for row in results
            if row["batch_size"] == target.batch_size
            and (target.precisions is None or row["precision"] in target.precisions)
            and row.get(target.ratio_key) is not None
            and (row.get("auto") if target.who == "auto" else row.get("kind") == "ours")
        ]
        groups = sorted({row["precision"] for row in candidates}) if target.precisions is None else [None]
        for precision in groups:
            group = [row for row in candidates if precision in (None, row["precision"])]
            if not group:
                continue
            best = max(group, key=lambda row: row[target.ratio_key])
            against = f" against {best['best_peer_same_precision']}" if target.ratio_key == _VS_PEER else ""
            verdicts.append(
                {
                    "target": target.description + (f" ({precision})" if precision else ""),
                    "best": f"{best['label']} {best['precision']}{against}",
                    "ratio": best[target.ratio_key],
                    "minimum": target.minimum,
                    "met": best[target.ratio_key] >= target.minimum,
                }
            )
    return verdicts


def new_report(command: str, machine: dict, settings: dict) -> dict:
    return {
        "schema": SCHEMA,
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": command,
        "machine": machine,
        "settings": settings,
        "results": [],
        "agreement": [],
        "failures": [],
        "targets": [],
        "end_to_end": [],
        "peak": {},
        "flops_per_image": None,
        "reference_ascend_310p": {str(k): v for k, v in ASCEND_310P_REFERENCE.items()},
    }


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


# Settings of a subject worth a glance in the table (all of them are in bench.json).
_SETUP_KEYS = (
    "compile",
    "cuda_graph",
    "cuda_graph_error",
    "fused_attn",
    "torch_threads",
    "intra_op_threads",
    "inference_num_threads",
    "num_streams",
)


def setup_note(details: dict, load_seconds: float | None = None) -> str:
    notes = [f"{key}={details[key]}" for key in _SETUP_KEYS if details.get(key) not in (None, "None")]
    if load_seconds is not None:
        notes.append(f"load {load_seconds:.1f} s")
    return ", ".join(notes)


def markdown(report: dict) -> str:
    """bench.md: the machine and command, the results table, agreement with fp32, targets, failures."""
    machine = report["machine"]
    libs = ", ".join(f"{name} {version}" for name, version in machine["libraries"].items())
    flags = " ".join(machine["cpu_flags"]) or "none of " + " ".join(CPU_FLAGS_OF_INTEREST)
    settings = report["settings"]
    lines = [
        "# Twins-PCPVT-S benchmark",
        "",
        f"- Machine: {machine_line(machine)}; {machine['memory_gib']} GiB memory; CPU flags: {flags}",
        f"- Software: Python {machine['python']}; {libs}",
        f"- Command: `{report['command']}`",
        f"- Created: {report['created']}; model: {settings['model']}; device: {settings['device']}; "
        f"{settings['seconds']:g} s per point in {settings['rounds']} interleaved rounds after warm-up",
        "- Throughput is compute only, as ais_bench counts it: 1000 x batch size / mean latency (ms).",
        "",
        "- precision: what ran, read back from the runtime (plain OpenVINO picks its own; `(auto)` "
        "marks what "
        "`--backend auto --precision auto` runs). x peer: over the fastest peer that ran the same precision.",
        "",
        "| backend | precision | batch | img/s | latency median ms | latency p99 ms | runs | x peer "
        "same precision | x plain OpenVINO | x plain ORT | x timm eager | setup | of peak |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in sorted(report["results"], key=lambda row: (row["batch_size"], -row["images_per_second"])):
        lat = row["latency_ms"]
        label = row["label"] + (" (auto)" if row.get("auto") else "")
        lines.append(
            f"| {label} | {row['precision']} | {row['batch_size']} | {_fmt(row['images_per_second'])} | "
            f"{_fmt(lat['median'], 2)} | {_fmt(lat[TAIL], 2)} | {lat['count']} | "
            f"{_fmt(row.get('ratio_vs_best_peer_same_precision'), 2)} | "
            f"{_fmt(row.get('ratio_vs_plain_openvino'), 2)} | "
            f"{_fmt(row.get('ratio_vs_plain_onnxruntime'), 2)} | "
            f"{_fmt(row.get('ratio_vs_timm_eager'), 2)} | "
            f"{setup_note(row.get('details', {}), row.get('load_seconds'))} | "
            f"{'-' if row.get('fraction_of_peak') is None else format(row['fraction_of_peak'], '.0%')} |"
        )
    lines += _end_to_end_lines(report)
    if report["agreement"]:
        lines += [
            "",
            f"Agreement with the strict fp32 reference on {report['agreement'][0]['images']} real "
            f"photo crop(s) "
            f"({settings.get('photos', 'sample photo')}) at every batch size: worst per-image cosine of the "
            "logits (NaN when any logit is not finite), same top-1 (required where the reference "
            "leads clearly).",
            "",
            "| backend | precision | batch | reference | cosine | max abs diff | same top-1 | ok |",
            "|---|---|---:|---|---:|---:|---:|---|",
        ]
        for row in sorted(report["agreement"], key=lambda row: (row.get("batch_size") or 0, row["label"])):
            lines.append(
                f"| {row['label']} | {row['precision']} | {row.get('batch_size', '-')} | "
                f"{row['reference']} | "
                f"{row['cosine']:.6f} | {row['max_abs_diff']:.3g} | {top1_text(row)} | "
                f"{'yes' if row.get('passes') else 'NO'} |"
            )
    if report["targets"]:
        lines += ["", "| target | best | ratio | met |", "|---|---|---:|---|"]
        for row in report["targets"]:
            lines.append(
                f"| {row['target']} | {row['best']} | {row['ratio']:.2f} | {'yes' if row['met'] else 'NO'} |"
            )
    if report["failures"]:
        lines += ["", "Failures (not measured):", ""]
        for row in report["failures"]:
            where = f" at batch {row['batch_size']}" if row.get("batch_size") else ""
            lines.append(f"- {row['label']}{where}: {row['error']}")
    return "\n".join(lines) + "\n"


def _end_to_end_lines(report: dict) -> list[str]:
    """The machine's peak and the end-to-end table: benchmark_app against our folder run, with each row's
    fraction of the peak at the precision it ran."""
    lines = []
    if report.get("peak"):
        peaks = ", ".join(
            f"{precision} {peak['gflops']:.0f} GFLOP/s ({peak['hint']}, {peak['streams']} stream(s))"
            for precision, peak in report["peak"].items()
        )
        flops = report.get("flops_per_image")
        lines += [
            "",
            f"Machine peak, measured in this run by OpenVINO (a chain of square MatMuls, all cores): {peaks}."
            + (f" The model: {flops / 1e9:.2f} GFLOP per image (PyTorch's FLOP counter)." if flops else ""),
        ]
    rows = report.get("end_to_end") or []
    if not rows:
        return lines
    lines += [
        "",
        "End to end, each subject a process of its own, interleaved in rounds: benchmark_app's `Throughput` "
        "(default `-hint throughput`, and `-hint latency`) against the infer script on a folder of tensors "
        "(reading, inference and writing every output: the summary's `end_to_end_images_per_second`; the "
        "guide's compute-only `throughput` beside it).",
        "",
        "| subject | precision | batch | img/s | x benchmark_app | GFLOP/s | of peak | "
        "ais_bench throughput | rounds img/s | setup |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for row in sorted(rows, key=lambda row: (row["batch_size"], -row["images_per_second"])):
        details = row.get("details", {})
        setup = ", ".join(
            f"{key}={details[key]}"
            for key in ("performance_hint", "streams", "in_flight", "mode")
            if details.get(key) is not None
        )
        fraction = row.get("fraction_of_peak")
        lines.append(
            f"| {row['label']} | {row['precision']} | {row['batch_size']} | "
            f"{_fmt(row['images_per_second'])} | {_fmt(row.get('ratio_vs_benchmark_app'), 2)} | "
            f"{_fmt(row.get('gflops_per_second'), 0)} | {'-' if fraction is None else f'{fraction:.0%}'} | "
            f"{_fmt(details.get('ais_bench_throughput'))} | "
            f"{' / '.join(f'{rate:.1f}' for rate in row['rounds'])} | {setup} |"
        )
    return lines


def plot_throughput(report: dict, path: Path) -> None:
    """bench.png: img/s against batch size (log-log) per backend and precision, the guide's Ascend 310P as
    reference."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    series: dict[str, list[tuple[int, float]]] = {}
    for row in report["results"]:
        name = f"{row['label']}{' (auto)' if row.get('auto') else ''} {row['precision']}"
        series.setdefault(name, []).append((row["batch_size"], row["images_per_second"]))
    figure, axes = plt.subplots(figsize=(9, 5.5), dpi=110)
    for name, points in sorted(series.items()):
        points.sort()
        peer = name.startswith((PLAIN_ORT_LABEL, PLAIN_OPENVINO_LABEL, TIMM_EAGER_LABEL))
        axes.plot(*zip(*points, strict=True), marker="o", linestyle="--" if peer else "-", label=name)
    reference = sorted(ASCEND_310P_REFERENCE.items())
    axes.plot(
        *zip(*reference, strict=True),
        color="black",
        linestyle=":",
        marker="s",
        label="Ascend 310P OM (the guide)",
    )
    axes.set_xscale("log", base=2)
    axes.set_yscale("log")  # CPU, NPU and GPU figures differ by orders of magnitude
    batch_sizes = sorted({row["batch_size"] for row in report["results"]} | set(ASCEND_310P_REFERENCE))
    axes.set_xticks(batch_sizes, [str(size) for size in batch_sizes])
    axes.set_xlabel("batch size")
    axes.set_ylabel("images / s (compute only)")
    axes.set_title(f"Twins-PCPVT-S throughput\n{machine_line(report['machine'])}", fontsize=10)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7, loc="best")
    figure.tight_layout()
    with atomic_writer(path, "wb") as handle:
        figure.savefig(handle, format="png")
    plt.close(figure)


def write_report(report: dict, out_dir: Path) -> list[Path]:
    """Write bench.md, bench.json and bench.png into `out_dir` (each atomically); return their paths."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        md_path, json_path, png_path = out_dir / "bench.md", out_dir / "bench.json", out_dir / "bench.png"
        write_json(json_path, report)
        with atomic_writer(md_path, "w") as handle:
            handle.write(markdown(report))
        plot_throughput(report, png_path)
    except OSError as exc:
        raise ToolkitError(f"{out_dir}: cannot write the benchmark report ({exc.strerror or exc})") from exc
    return [md_path, json_path, png_path]
