"""The scripts' command lines: one parser factory and the argument types every script validates with.

A parser made here prints the script's whole docstring under `--help` (usage examples, exit status), and
reports a bad argument in one line, `<script>: error: <reason> (see --help)`, with exit status 2. Flags of the
toolkit's own are written in kebab-case (`--batch-size`) and added with `add_flag`, which also accepts the
snake_case spelling (`--batch_size`) without listing it; flags whose spelling the original guide or ais_bench
fixes are added with `add_argument` as they are.

Nothing here imports more than the standard library, so `--help` and usage errors answer at once.
"""

from __future__ import annotations

import argparse
import copy
import math

from .common import message_line


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The docstring as written; an option's snake_case alias is left out of the option list."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        hidden = getattr(action, "hidden_aliases", ())
        if hidden:
            action = copy.copy(action)
            action.option_strings = [name for name in action.option_strings if name not in hidden]
        return super()._format_action_invocation(action)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message_line(' '.join(message.split()))} (see --help)\n")

    def format_help(self) -> str:
        aliased = [action for action in self._actions if getattr(action, "hidden_aliases", ())]
        if aliased:
            name, alias = aliased[0].option_strings[0], aliased[0].hidden_aliases[0]
            self.epilog = f"A flag written with dashes, such as {name}, also takes underscores ({alias})."
        return super().format_help()


def make_parser(doc: str, prog: str) -> argparse.ArgumentParser:
    """The parser of the script `prog` (a file name, or `python3 -m <module>`); --help shows its module
    docstring `doc` whole."""
    return _Parser(prog=prog, description=doc.strip("\n"), formatter_class=_HelpFormatter)


def add_flag(container, name: str, *old_names: str, **kwargs) -> argparse.Action:
    """Add the kebab-case flag `name` (`--batch-size`) to a parser or group, with its snake_case spelling
    (`--batch_size`) and any `old_names` accepted as aliases that --help does not list; `kwargs` are
    add_argument's."""
    snake = "--" + name[2:].replace("-", "_")
    aliases = tuple(dict.fromkeys(alias for alias in (snake, *old_names) if alias != name))
    action = container.add_argument(name, *aliases, **kwargs)
    if aliases:
        action.hidden_aliases = aliases
    return action


# ---- argument types: each returns the value or raises ArgumentTypeError with the reason --------------------


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def positive_int(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def positive_int_list(text: str) -> list[int]:
    """Comma-separated positive integers, e.g. `1,4,8,16,32`."""
    try:
        return [positive_int(part.strip()) for part in text.split(",")]
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of positive integers such as 1,4,8 ({exc})"
        ) from None


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if math.isnan(value):
        raise argparse.ArgumentTypeError("must be a number, got nan")
    return value


def non_negative_float(text: str) -> float:
    """A number >= 0; `inf` is allowed (a threshold that is not checked)."""
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative number or inf, got {text}")
    return value


def finite_non_negative_float(text: str) -> float:
    value = _number(text)
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite non-negative number, got {text}")
    return value


def cosine(text: str) -> float:
    """A cosine similarity threshold in [-1, 1]."""
    value = _number(text)
    if not -1 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must lie in [-1, 1], got {text}")
    return value


def boolean(text: str) -> bool:
    """ais_bench's boolean values: yes/true/t/y/1 and no/false/f/n/0, any case."""
    if text.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if text.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"boolean value expected (true, 1, false, 0), got {text!r}")
