"""What this machine leaves a run: the memory available, and whether a batch's input copies fit in it."""

from __future__ import annotations

import os

from .common import INPUT_BYTES, ToolkitError


def available_memory_bytes() -> int | None:
    """Memory this process may still take (None if unknown): MemAvailable, lowered by an address-space
    limit."""
    limits = []
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    limits.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            limits.append(soft)
    except (ImportError, OSError, ValueError):
        pass
    return min(limits) if limits else None


def check_batch_memory(batch_size: int, model: str | os.PathLike, buffers: int) -> None:
    """Refuse, before allocating, a batch whose `buffers` input copies do not fit in the memory left."""
    needed = batch_size * INPUT_BYTES * buffers
    available = available_memory_bytes()
    if available is not None and needed > available:
        raise ToolkitError(
            f"{model}: --batchsize {batch_size} needs {needed / 2**30:.1f} GiB for its input batches, "
            f"more than the {available / 2**30:.1f} GiB of memory available: use a smaller batch size"
        )
