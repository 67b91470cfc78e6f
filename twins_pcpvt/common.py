"""Constants of the model's interface, the toolkit's errors, safe file writes, the scripts' main wrapper."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import stat
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

INPUT_NAME = "input"
OUTPUT_NAME = "output"
NUM_CLASSES = 1000
RESIZE_SIZE = 256
CROP_SIZE = 224
INPUT_SHAPE = (3, CROP_SIZE, CROP_SIZE)
INPUT_BYTES = 3 * CROP_SIZE * CROP_SIZE * 4  # float32 CHW: 602,112 bytes per image
OUTPUT_BYTES = NUM_CLASSES * 4
ROWS_PER_PASS = 8192  # rows of [N, 1000] scores handled at once: bounds temporaries to ~8 MB each
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ToolkitError(Exception):
    """A failure the user can act on; the message names the file and the reason. Exit status 1."""


class UsageError(ToolkitError):
    """Bad command-line usage. Exit status 2."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM arrived: handled like Ctrl-C (clean-up runs), exit status 128 + the signal number."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signum)
        self.signum = signum


# ----------------------------------------------------------------------------------------------------------
# Errors and the machine

# A runtime's source location that opens its error text ("Exception from src/inference/src/cpp/core.cpp:84:")
_SOURCE_LOCATION_LINE = re.compile(r"^Exception from \S+:\d+:?$")


def one_line(exc: BaseException, *, typed: bool = False, limit: int | None = None) -> str:
    """An exception's whole message on one line: its lines joined by '; ' with white space folded, a bare
    source-location line dropped (OpenVINO opens with one and puts the cause last); the type name when the
    message is empty. `typed` prefixes the type name unless it is a ToolkitError (whose message is written
    for the user); `limit` cuts the text to that many characters."""
    lines = (" ".join(line.split()) for line in str(exc).splitlines())
    text = "; ".join(line for line in lines if line and not _SOURCE_LOCATION_LINE.match(line))
    if not text:
        text = type(exc).__name__
    elif typed and not isinstance(exc, ToolkitError):
        text = f"{type(exc).__name__}: {text}"
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."


# One error line holds at most this many characters; longer messages are cut in the middle (`shorten`).
MESSAGE_LIMIT = 2000
# Characters that would break a message across lines or drive the terminal: C0 and C1 controls (tab, line
# feed, vertical tab, form feed, the separators \x1c-\x1e, NEL \x85, ...) and the Unicode line and paragraph
# separators; `message_line` writes them as backslash escapes.
_CONTROL_ESCAPES = {code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0xA0))}
_CONTROL_ESCAPES.update({0x2028: "\\u2028", 0x2029: "\\u2029"})


def shorten(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """`text` itself when it has at most `limit` characters, else its start and end around
    `...[<length> characters]...`."""
    if len(text) <= limit:
        return text
    marker = f"...[{len(text):,} characters]..."
    keep = max(limit - len(marker), 2)
    head = keep * 3 // 4
    return text[:head] + marker + text[len(text) - (keep - head) :]


def quoted(text: str, limit: int = 100) -> str:
    """A piece of file content for an error message: its repr, cut after `limit` characters with its
    length."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text):,} characters)"


def message_line(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """A message as one bounded line of the console: control characters and line separators escaped (a file
    name holding one stays on the line), the middle cut beyond `limit` characters."""
    return shorten(text.translate(_CONTROL_ESCAPES), limit)


def usable_cpus(*, physical: bool = False) -> int:
    """CPUs this process may run on (its affinity); with `physical`, hyper-thread siblings counted once.
    At least 1."""
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    if not physical:
        return max(1, len(allowed))
    cores = set()
    for cpu in allowed:
        try:
            siblings = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list").read_text()
        except OSError:
            siblings = str(cpu)
        cores.add(siblings.strip())
    return max(1, len(cores))


# ----------------------------------------------------------------------------------------------------------
# Writing files. Every file the toolkit writes goes through `atomic_writer`: the data goes to a temporary file
# beside the target, renamed onto it only when complete. The target must be missing or a regular file: a
# folder, a device, a FIFO or a socket is refused, and so is a symbolic link (never written through, never
# replaced). New files get the mode the umask gives (0644 under umask 022).

_KINDS = (
    (stat.S_ISLNK, "a symbolic link"),
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def file_type(mode: int) -> str:
    """What a file of this `st_mode` is, in words ("a FIFO (named pipe)", ...), for error messages."""
    if stat.S_ISREG(mode):
        return "a regular file"
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _cannot_write(path: Path, exc: OSError) -> ToolkitError:
    return ToolkitError(f"{path}: cannot write ({exc.strerror or exc})")


def check_output_file(path: str | os.PathLike, *, probe: bool = False) -> Path:
    """Refuse a target that is not a regular file (or missing); with `probe`, also prove that its folder (or
    the nearest existing folder above it, which will be created) takes a new file. Returns the path."""
    path = Path(path)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise _cannot_write(path, exc) from None
    if mode is not None and not stat.S_ISREG(mode):
        kind = file_type(mode)
        advice = (
            f"links are neither written through nor replaced: give the real path {os.path.realpath(path)}"
            if stat.S_ISLNK(mode)
            else "refusing to replace it: give the path of a regular file"
        )
        raise ToolkitError(f"{path}: is {kind}; {advice}")
    if probe:
        folder = path.parent
        while not os.path.lexists(folder) and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir():
            raise ToolkitError(f"{path}: cannot write ({folder} is not a folder)")
        try:
            fd, temporary = _create_temporary(folder / path.name)
        except OSError as exc:
            raise ToolkitError(f"{path}: cannot write in {folder} ({exc.strerror or exc})") from None
        os.close(fd)
        os.unlink(temporary)
    return path


def _create_temporary(path: Path) -> tuple[int, Path]:
    """A new, empty `.<name>.<random>.tmp` beside `path`, created with mode 0666 less the umask."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    while True:
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(temporary, flags, 0o666), temporary
        except FileExistsError:
            continue


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "wb") -> Iterator:
    """Open a temporary file beside `path`; rename it onto `path` only when the block completes without error.

    Any OSError (full disk, read-only folder, ...) becomes a ToolkitError naming `path`; the temporary file is
    removed on every failure and on interruption.
    """
    path = check_output_file(path)
    temporary = None
    try:
        fd, temporary = _create_temporary(path)
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            yield handle
        check_output_file(path)  # again: something may have taken the name while the data was written
        os.replace(temporary, path)
    except BaseException as exc:
        if temporary is not None:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
        if isinstance(exc, OSError):
            raise _cannot_write(path, exc) from None
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_writer(path) as handle:
        handle.write(data)


def read_regular_file(path: str | os.PathLike, what: str = "file", *, limit: int) -> bytes:
    """The bytes of `path` if it is a regular file (links followed) of at most `limit` bytes; a FIFO, device
    or folder is refused without blocking on it, a larger file before any of it is read. Errors are
    ToolkitErrors naming the file and `what` it was read as."""
    path = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise ToolkitError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise ToolkitError(
            f"{path}: cannot read the {what}: it is {file_type(info.st_mode)}, not a regular file"
        )
    with os.fdopen(fd, "rb") as handle:
        try:
            data = handle.read(limit + 1) if info.st_size <= limit else b""
        except OSError as exc:
            raise ToolkitError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    if info.st_size > limit or len(data) > limit:
        size = f"{info.st_size:,} bytes" if info.st_size > limit else "it grew while read"
        raise ToolkitError(
            f"{path}: {size}, more than a {what} may hold ({limit:,} bytes): is it the right file?"
        )
    return data


def read_text_file(
    path: str | os.PathLike, what: str, *, limit: int, max_lines: int, errors: str = "strict"
) -> str:
    """The text of `path`, a UTF-8 file of at most `limit` bytes and `max_lines` lines (a byte-order mark is
    dropped): what a binary file given by mistake (an image, an archive, zeros) is refused as, in one line,
    before it is decoded or split. `errors` is the decoder's (surrogateescape keeps undecodable names)."""
    data = read_regular_file(path, what, limit=limit)
    zero = data.find(b"\0")
    if zero >= 0:
        raise ToolkitError(f"{path}: not a {what}: a binary file (a zero byte at offset {zero:,})")
    lines = data.count(b"\n")
    if lines > max_lines:
        raise ToolkitError(f"{path}: {lines:,} lines, more than a {what} may hold ({max_lines:,})")
    try:
        return data.decode("utf-8-sig", errors)
    except UnicodeDecodeError as exc:
        raise ToolkitError(
            f"{path}: not a {what}: not UTF-8 text (an invalid byte at offset {exc.start:,})"
        ) from None


# ----------------------------------------------------------------------------------------------------------
# Outputs never overwrite inputs


def result_inputs(output_folder: str | os.PathLike) -> tuple[list[Path], list[Path]]:
    """(files, folders) an inference result consists of: its output folder and the summary JSON beside it."""
    folder = Path(output_folder)
    return [folder.parent / f"{folder.name}_summary.json"], [folder]


def refuse_overwriting_inputs(
    target: str | os.PathLike, *, files: Iterable[str | os.PathLike] = (), folders: Iterable = ()
) -> None:
    """Refuse a target that is one of the input `files` (also through links) or lies in an input folder."""
    target = Path(target)
    real = Path(os.path.realpath(target))
    for folder in folders:
        real_folder = Path(os.path.realpath(folder))
        if real == real_folder or real_folder in real.parents:
            raise UsageError(f"{target}: lies inside the input folder {folder}: choose a path outside it")
    for file in files:
        same = real == Path(os.path.realpath(file))
        with contextlib.suppress(OSError):
            same = same or os.path.samefile(target, file)
        if same:
            raise UsageError(f"{target}: is the input file {file} itself: choose another name")


# ----------------------------------------------------------------------------------------------------------
# Scripts


def _raise_interrupted(signum: int, frame) -> None:
    raise Interrupted(signum)


def run_main(main: Callable[[], int]) -> int:
    """Run a script's main body; turn toolkit errors into one `error:` line and the documented exit status.

    SIGTERM is handled like Ctrl-C (clean-up runs, exit 143). A name that the console's encoding cannot show
    (a non-UTF-8 file name) is printed with backslash escapes instead of failing.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")
    own_handler = threading.current_thread() is threading.main_thread() and (
        signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    )
    if own_handler:
        signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        return main()
    except UsageError as exc:
        print(f"error: {message_line(str(exc))}", file=sys.stderr)
        return 2
    except ToolkitError as exc:
        print(f"error: {message_line(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        print(f"interrupted ({signal.Signals(signum).name})", file=sys.stderr)
        return 128 + signum
    finally:
        if own_handler:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
