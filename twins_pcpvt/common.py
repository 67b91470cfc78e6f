"""Constants of the model's interface, the toolkit's error types, atomic file writes and the scripts' main wrapper."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

INPUT_NAME = "input"
OUTPUT_NAME = "output"
NUM_CLASSES = 1000
RESIZE_SIZE = 256
CROP_SIZE = 224
INPUT_SHAPE = (3, CROP_SIZE, CROP_SIZE)
INPUT_BYTES = 3 * CROP_SIZE * CROP_SIZE * 4  # float32 CHW: 602,112 bytes per image
OUTPUT_BYTES = NUM_CLASSES * 4
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ToolkitError(Exception):
    """A failure the user can act on; the message names the file and the reason. Exit status 1."""


class UsageError(ToolkitError):
    """Bad command-line usage. Exit status 2."""


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "wb") -> Iterator:
    """Open a temporary file beside `path`; rename it onto `path` only when the block completes without error."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_writer(path) as handle:
        handle.write(data)


def run_main(main: Callable[[], int]) -> int:
    """Run a script's main body; turn toolkit errors into one `error:` line and the documented exit status."""
    try:
        return main()
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ToolkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
