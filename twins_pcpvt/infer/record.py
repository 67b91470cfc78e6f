"""What a run measured (`RunRecord`): ais_bench's summary JSON plus this toolkit's fields, and the console
report.

Throughput is ais_bench's: 1000 * batch size / mean compute time in ms, the model alone. The summary also
holds the end-to-end rate of folder mode: real images per second from the first read to the last write.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from ..backends.base import PERCENTILE, Runner, time_stats

LISTED_RECOMPUTED = 10  # recomputed batches the console names; the summary holds them all


@dataclass
class RunRecord:
    """What one run measured; `summary()` turns it into ais_bench's JSON plus our fields."""

    batch_size: int
    compute_ms: list[float] = field(default_factory=list)
    h2d_ms: list[float] = field(default_factory=list)
    d2h_ms: list[float] = field(default_factory=list)
    filesinfo: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    images: int = 0
    padded: int = 0
    wall_s: float = 0.0
    recomputed: list[str] = field(default_factory=list)  # why each recomputed batch was run again

    def add(self, runner: Runner) -> None:
        self.compute_ms.append(runner.last_compute_ms)
        if runner.last_h2d_ms is not None:
            self.h2d_ms.append(runner.last_h2d_ms)
        if runner.last_d2h_ms is not None:
            self.d2h_ms.append(runner.last_d2h_ms)

    @property
    def throughput(self) -> float:
        mean = float(np.mean(self.compute_ms)) if self.compute_ms else 0.0
        return 1000.0 * self.batch_size / mean if mean else 0.0

    def summary(self, ran: dict, model: str | os.PathLike, argv: list[str]) -> dict:
        """ais_bench's summary (`args` is the command line as a list), then what ran (`Runner.describe()`) on
        which model, and this toolkit's own fields."""
        info: dict[str, object] = {"filesinfo": self.filesinfo, "args": list(argv)}
        info["NPU_compute_time"] = time_stats(self.compute_ms)
        info["H2D_latency"] = time_stats(self.h2d_ms)
        info["D2H_latency"] = time_stats(self.d2h_ms)
        info["throughput"] = self.throughput
        info["npu_compute_time_list"] = self.compute_ms
        info["pid"] = os.getpid()
        info.update(ran)
        info["model"] = str(model)
        info["batchsize"] = self.batch_size
        info["images"] = self.images
        info["padded_images"] = self.padded
        info["recomputed_batches"] = len(self.recomputed)
        info["recomputed"] = self.recomputed
        if self.wall_s:
            info["end_to_end_seconds"] = self.wall_s
            info["end_to_end_images_per_second"] = self.images / self.wall_s
        return info

    def report_lines(self, ran: dict, model: str | os.PathLike, display_all: bool = False) -> list[str]:
        """ais_bench's performance summary (H2D/D2H with `display_all`), then what ran and the end-to-end
        rate."""

        def line(label: str, times: list[float]) -> str:
            stats = time_stats(times)
            tail = stats[f"percentile({PERCENTILE}%)"]
            return (
                f"[INFO] {label} (ms): min = {stats['min']}, max = {stats['max']}, mean = {stats['mean']}, "
                f"median = {stats['median']}, percentile({PERCENTILE}%) = {tail}"
            )

        lines = ["[INFO] -----------------Performance Summary------------------"]
        if display_all:
            lines.append(line("H2D_latency", self.h2d_ms))
        lines.append(line("NPU_compute_time", self.compute_ms))
        if display_all:
            lines.append(line("D2H_latency", self.d2h_ms))
        mean = time_stats(self.compute_ms)["mean"]
        lines.append(
            f"[INFO] throughput 1000*batchsize.mean({self.batch_size})/NPU_compute_time.mean({mean}): "
            f"{self.throughput}"
        )
        lines.append("[INFO] ------------------------------------------------------")
        lines.append(
            f"[INFO] backend {ran['backend']} on {ran['device']}, precision {ran['precision']}, model {model}"
        )
        if self.wall_s:
            lines.append(
                f"[INFO] end to end: {self.images} images in {self.wall_s:.3f} s = "
                f"{self.images / self.wall_s:.2f} images/s (reading, inference and writing)"
            )
        level = "WARN" if self.recomputed else "INFO"
        lines.append(f"[{level}] batches recomputed after non-finite logits: {len(self.recomputed)}")
        lines.extend(f"[WARN]   {reason}" for reason in self.recomputed[:LISTED_RECOMPUTED])
        if len(self.recomputed) > LISTED_RECOMPUTED:
            lines.append(f"[WARN]   and {len(self.recomputed) - LISTED_RECOMPUTED} more (in the summary)")
        return lines
