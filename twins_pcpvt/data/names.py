"""What a file name becomes downstream and what it may not hold.

An image's outputs are named by its file name up to the first dot (`result_key`), the rule ais_bench follows;
the preprocess refuses two images of one data set with the same key, the runner names its outputs by it, and
labels are matched to outputs by it.
"""

from __future__ import annotations

# A tab and every character Python's str.splitlines() ends a line at: a name holding one cannot be a field of
# the manifest or of a label file (whose fields are split at white space), so no later stage could read it.
UNSTORABLE_IN_NAMES = "\t\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


def result_key(name: str) -> str:
    """The name ais_bench gives the outputs of a file: its name up to the first dot (`a.v2.bin` -> `a`, then
    `a_0.bin`). Outputs are matched to labels by this key, so no two images of a data set may share one."""
    return name.split(".", 1)[0]
