"""Constants of the model's interface, the toolkit's errors, safe file writes, the scripts' main wrapper."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import re
import secrets
import shlex
import signal
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
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


_TEMPORARY = re.compile(r"^\.(?P<target>.+)\.[0-9a-f]{8}\.tmp$")


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


def temporary_target(name: str) -> str | None:
    """The file name whose temporary `atomic_writer` names `name`, else None."""
    match = _TEMPORARY.match(name)
    return match["target"] if match else None


def remove_temporaries(folder: str | os.PathLike, names: Iterable[str] | None = None) -> None:
    """Delete the temporary files that writers killed mid-write left in `folder` for one of `names` (for any
    file when `names` is None)."""
    wanted = None if names is None else set(names)
    with contextlib.suppress(OSError):
        with os.scandir(folder) as entries:
            stale = [entry.path for entry in entries if _stale(entry.name, wanted)]
        for path in stale:
            with contextlib.suppress(OSError):
                os.unlink(path)


def _stale(name: str, wanted: set[str] | None) -> bool:
    target = temporary_target(name)
    return target is not None and (wanted is None or target in wanted)


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
# One writer per folder, and nothing read before it is complete. Beside a folder a run writes (outside it, so
# the folder holds exactly what ais_bench would write) lie its lock `.<name>.twins_pcpvt_lock`, an exclusive
# flock(2) that the kernel drops when the last process holding it ends, however it ends (a dead holder's lock
# is simply taken over), and, from the start of the run until its summary is written, its in-progress mark
# `.<name>.twins_pcpvt_running` (the writer's pid and the command that resumes it). Readers refuse a folder
# with the mark: still being written while its lock is held, else left unfinished by a run that died.

LOCK_SUFFIX = ".twins_pcpvt_lock"
RUNNING_SUFFIX = ".twins_pcpvt_running"
_READER_GRACE_S = 0.5  # how long a writer waits out a reader's momentary look at the lock (see unfinished)
_held: dict[str, FolderLock] = {}  # the locks this process holds, by lock path


def beside(folder: str | os.PathLike, suffix: str) -> Path:
    """`.<folder name><suffix>` in the folder's parent: where the folder's marks and lock lie."""
    folder = Path(os.path.abspath(folder))
    return folder.parent / f".{folder.name}{suffix}"


class FolderLock:
    """The held lock of one folder. Pickled into a worker process, it gives the worker a duplicate of the
    descriptor: the folder then stays locked until the last of the processes holding it ends."""

    def __init__(self, folder: Path, fd: int, owner: bool = True):
        self.folder, self.path, self.fd, self.owner = folder, beside(folder, LOCK_SUFFIX), fd, owner

    def release(self) -> None:
        """Unlock (the lock file is removed while still held, so no other run can hold a file unlinked)."""
        if self.fd is None:
            return
        if self.owner:
            _held.pop(str(self.path), None)
            with contextlib.suppress(OSError):
                if _same_file(self.fd, self.path):
                    os.unlink(self.path)
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    def __reduce__(self):
        from multiprocessing.reduction import DupFd

        return _adopt_lock, (self.folder, DupFd(self.fd))


def _adopt_lock(folder: Path, duplicate) -> FolderLock:
    return FolderLock(folder, duplicate.detach(), owner=False)


def _same_file(fd: int, path: Path) -> bool:
    held, named = os.fstat(fd), os.stat(path, follow_symlinks=False)
    return (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)


def _holder(path: Path) -> str:
    with contextlib.suppress(OSError, ValueError, ToolkitError):
        pid = int(read_regular_file(path, "folder lock", limit=4096)[:20].split()[0])
        return f"another run (pid {pid})"
    return "another run"


def lock_folder(folder: str | os.PathLike) -> FolderLock:
    """Hold `folder` for this process (again, if it holds it already); the parent folder must exist. A folder
    held by another process is refused at once, in one line naming that process."""
    folder = Path(folder)
    path = beside(folder, LOCK_SUFFIX)
    if str(path) in _held:
        return _held[str(path)]
    deadline = time.monotonic() + _READER_GRACE_S
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            raise ToolkitError(f"{folder}: cannot create its lock {path} ({exc.strerror or exc})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if time.monotonic() < deadline:
                time.sleep(0.02)
                continue
            raise ToolkitError(
                f"{folder}: {_holder(path)} is writing this folder: wait for it to finish, or choose "
                "another folder"
            ) from None
        try:
            if _same_file(fd, path):  # else its holder removed the file in between: lock the new one
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    lock = _held[str(path)] = FolderLock(folder, fd)
    return lock


def release_folder(folder: str | os.PathLike) -> None:
    """Release this process's lock of `folder`, if it holds one."""
    lock = _held.get(str(beside(folder, LOCK_SUFFIX)))
    if lock is not None:
        lock.release()


def release_folders() -> None:
    """Release every folder lock this process still holds (a command's locks last as long as it runs)."""
    for lock in list(_held.values()):
        lock.release()


def _lock_is_held(folder: Path) -> bool:
    try:
        fd = os.open(beside(folder, LOCK_SUFFIX), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def mark_running(folder: str | os.PathLike, resume: Sequence[str] = ()) -> None:
    """Mark `folder` in progress until `mark_finished`; `resume` is the command that resumes or redoes it."""
    record = {"pid": os.getpid(), "resume": shlex.join(resume)}
    with atomic_writer(beside(folder, RUNNING_SUFFIX), "w") as handle:
        json.dump(record, handle)


def mark_finished(folder: str | os.PathLike) -> None:
    """The folder is complete (its summary is written): remove its in-progress mark."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(beside(folder, RUNNING_SUFFIX))


def unfinished(folder: str | os.PathLike) -> str | None:
    """Why `folder` is not a complete result, in one line (a run is writing it, or its run stopped before it
    finished, and how to resume), or None when it carries no in-progress mark."""
    folder = Path(folder)
    mark = beside(folder, RUNNING_SUFFIX)
    if not os.path.lexists(mark):
        return None
    record: dict = {}
    with contextlib.suppress(ToolkitError, ValueError):
        loaded = json.loads(read_regular_file(mark, "in-progress mark", limit=1 << 20))
        record = loaded if isinstance(loaded, dict) else {}
    live = _lock_is_held(folder)
    if not os.path.lexists(mark):  # it finished meanwhile
        return None
    writer = f"its run (pid {record['pid']})" if isinstance(record.get("pid"), int) else "its run"
    resume = record.get("resume") if isinstance(record.get("resume"), str) and record.get("resume") else None
    command = f": {resume}" if resume else ""
    if live:
        return f"{folder}: in progress: {writer} is still writing it; wait for it to finish"
    return (
        f"{folder}: unfinished: {writer} stopped before it completed (no summary or manifest written); "
        f"rerun the same command to resume or redo it{command}"
    )


def refuse_unfinished(folder: str | os.PathLike) -> None:
    """Raise the one-line reason when `folder` is in progress or was left unfinished (see `unfinished`)."""
    reason = unfinished(folder)
    if reason is not None:
        raise ToolkitError(reason)


# ----------------------------------------------------------------------------------------------------------
# Worker processes of a pool (`init_worker` as its initializer). A worker stops on SIGTERM: from its parent
# when the run is interrupted or fails (`stop_pool`), or from the kernel when the parent dies, even by
# SIGKILL. Within `worker_task` the signal raises Interrupted, so clean-up runs (the atomic writer removes its
# temporary file) before the worker exits (a worker that does not end within seconds is killed by
# `stop_pool`); idle, it exits at once. Ctrl-C reaches the whole process group: the parent handles it and
# stops the workers.

_working = False
_kept: tuple = ()


def _on_worker_sigterm(signum: int, frame) -> None:
    if not _working:
        os._exit(128 + signum)
    # The clean-up runs once, uninterrupted: the pool itself, the parent and the kernel may each send one.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Interrupted(signum)


def _die_with_parent(parent_pid: int) -> None:
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            pr_set_pdeathsig = 1
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent_pid:  # the parent died before the request above took effect
        os._exit(128 + signal.SIGTERM)


def init_worker(parent_pid: int, *keep) -> None:
    """A pool's initializer; `keep` is held for the worker's life (a FolderLock: it holds the folder too)."""
    global _kept
    _kept = keep
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _on_worker_sigterm)
    _die_with_parent(parent_pid)


@contextlib.contextmanager
def worker_task() -> Iterator[None]:
    """A worker's unit of work: SIGTERM inside it runs the clean-up, then the worker exits (status 143)."""
    global _working
    _working = True
    try:
        yield
    except Interrupted:
        os._exit(128 + signal.SIGTERM)
    finally:
        _working = False


def stop_pool(executor) -> None:
    """Stop a process pool now: queued work is cancelled, running tasks clean up and exit."""
    processes = list((getattr(executor, "_processes", None) or {}).values())
    for process in processes:
        with contextlib.suppress(OSError, ValueError):
            process.terminate()
    for process in processes:
        with contextlib.suppress(OSError, ValueError, AssertionError):
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join(10)
    executor.shutdown(wait=True, cancel_futures=True)


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
        release_folders()
        if own_handler:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
