"""Run the real ais_bench Python sources (both generations) over the `aclruntime` test double in
`aclruntime/`.

The sources sit outside the repository, in `../shared/upstream/ais_bench/v2023` and `v2024` relative to the
repository root; where they are absent (a clone on its own) the tests that need them skip with one line saying
so. `environment()` gives a subprocess what it needs to run `python3 -m ais_bench`; `use_generation()`
makes one
generation importable in this process (ais_bench of both generations shares one package name, so the
modules of
the other are forgotten first).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from pathlib import Path

DOUBLE = Path(__file__).resolve().parent
ROOT = DOUBLE.parents[1]
UPSTREAM = ROOT.parent / "shared" / "upstream" / "ais_bench"
GENERATIONS = ("v2023", "v2024")


def missing_reason() -> str | None:
    """Why the real ais_bench sources cannot be used here, or None when both generations are present."""
    for generation in GENERATIONS:
        if not (UPSTREAM / generation / "ais_bench" / "infer" / "interface.py").is_file():
            return (
                f"the real ais_bench sources are not at {UPSTREAM / generation} (a clone without ../shared)"
            )
    return None


def environment(generation: str) -> dict[str, str]:
    """os.environ plus what a subprocess needs to import that generation's ais_bench and the double."""
    paths = [str(UPSTREAM / generation), str(DOUBLE), str(ROOT)]
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(paths),
        "ACLRUNTIME_DOUBLE_GENERATION": generation[1:],
        "PYTHONWARNINGS": "ignore",
    }


def _forget_modules() -> None:
    for name in list(sys.modules):
        if name.split(".")[0] in ("ais_bench", "aclruntime") or name.endswith(".ais_runner"):
            del sys.modules[name]
    importlib.invalidate_caches()


@contextlib.contextmanager
def use_generation(generation: str):
    """That generation's ais_bench and the double importable in this process, for the duration of the
    block."""
    saved_path, saved_env = list(sys.path), os.environ.get("ACLRUNTIME_DOUBLE_GENERATION")
    _forget_modules()
    sys.path[:0] = [str(UPSTREAM / generation), str(DOUBLE)]
    os.environ["ACLRUNTIME_DOUBLE_GENERATION"] = generation[1:]
    try:
        yield
    finally:
        sys.path[:] = saved_path
        if saved_env is None:
            os.environ.pop("ACLRUNTIME_DOUBLE_GENERATION", None)
        else:
            os.environ["ACLRUNTIME_DOUBLE_GENERATION"] = saved_env
        _forget_modules()
