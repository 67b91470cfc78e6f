"""Run a command holding a folder's lock, the one every stage takes (`common.lock_folder`):

    python3 -m twins_pcpvt.hold FOLDER COMMAND [ARG...]

The command replaces this process (same pid) with the lock's descriptor open and TWINS_PCPVT_HOLDS set to the
folder's real path, so that it and every process it starts hold the folder until the last of them ends. A
folder that another run holds is one line, exit status 1, and the command does not run.
"""

from __future__ import annotations

import os
import sys

from .common import UsageError, lock_folder, run_main

HOLDS_ENV = "TWINS_PCPVT_HOLDS"


def hold(argv: list[str]) -> int:
    if len(argv) < 2:
        raise UsageError("usage: python3 -m twins_pcpvt.hold FOLDER COMMAND [ARG...]")
    folder, command = argv[0], argv[1:]
    lock = lock_folder(folder)
    os.set_inheritable(lock.fd, True)
    os.environ[HOLDS_ENV] = os.path.realpath(folder)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        raise UsageError(f"{command[0]}: cannot run ({exc.strerror or exc})") from None


def main(argv: list[str] | None = None) -> int:
    return run_main(lambda: hold(sys.argv[1:] if argv is None else list(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
