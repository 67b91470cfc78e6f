"""The class map: class folder name -> class index.

A class folder is named by its class, and its label is the class's index in the class map, by default the
1000 ILSVRC-2012 WordNet ids in sorted order (`imagenet_wnids.txt`, shipped beside this module):
`n01440764` is 0 whatever other folders are present. Another class set needs an explicit class map: one
folder name per line, line 1 is class 0.
"""

from __future__ import annotations

from pathlib import Path

from ..common import ToolkitError, quoted, read_text_file, shorten
from .manifest import LIST_MAX_LINES, LIST_READ_LIMIT

IMAGENET_WNIDS = Path(__file__).with_name("imagenet_wnids.txt")


def read_class_map(path: str | Path | None = None) -> dict[str, int]:
    """Class folder name -> class index, from a class map (one name per line, line 1 is class 0); by default
    the 1000 ILSVRC-2012 WordNet ids in sorted order."""
    path = IMAGENET_WNIDS if path is None else Path(path)
    text = read_text_file(path, "class map", limit=LIST_READ_LIMIT, max_lines=LIST_MAX_LINES)
    classes: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        name = line.strip()
        if not name or name != line.rstrip("\r") or any(char.isspace() for char in name):
            raise ToolkitError(
                f"{path}:{number}: {quoted(line)} is not a class folder name (one name per line, no blank "
                "lines, line 1 is class 0)"
            )
        if "/" in name or name.startswith("."):
            raise ToolkitError(f"{path}:{number}: {quoted(name)} cannot be a class folder name")
        if name in classes:
            raise ToolkitError(
                f"{path}:{number}: {shorten(name, 300)} is listed twice (first on line {classes[name] + 1})"
            )
        classes[name] = len(classes)
    if not classes:
        raise ToolkitError(f"{path}: the class map lists no class")
    return classes
