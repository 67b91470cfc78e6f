"""`--device` lists, parsed in one place, and how a multi-device run shares its inputs among the devices."""

from __future__ import annotations

import math
from pathlib import Path

from ..backends import normalize_device
from ..common import UsageError


def device_entries(device: str | None) -> list[str | None]:
    """`--device` as its entries: one (None when not given), or each of a comma-separated list, stripped."""
    if device is None or "," not in device:
        return [device]
    return [part.strip() for part in device.split(",")]


def split_devices(device: str | None) -> list[str | None]:
    """`--device` as a list: one entry, or several for `0,1` / `cuda:0,cuda:1` (each a distinct device)."""
    devices = device_entries(device)
    if len(devices) == 1:
        return devices
    numbers = [_device_number(part) for part in devices]
    if len(set(numbers)) != len(numbers):
        raise UsageError(f"--device {device}: the devices must be distinct")
    return devices


def actor_devices(backend: str, spec: str | None) -> list[str]:
    """Each Ray model actor's device: the `--device` list, normalized; one kind; numbered devices distinct
    (`cpu` may repeat, for more CPU workers)."""
    devices = [normalize_device(backend, (part or "").strip() or None) for part in device_entries(spec)]
    kinds = sorted({device.partition(":")[0] for device in devices})
    if len(kinds) > 1:
        raise UsageError(f"--device {spec}: one kind of device per job, not {' and '.join(kinds)}")
    numbered = [device for device in devices if device != "cpu"]
    if len(set(numbered)) != len(numbered):
        raise UsageError(f"--device {spec}: each device may be named once (repeat cpu for more CPU workers)")
    return devices


def _device_number(device: str) -> int:
    number = device.rpartition(":")[2]
    if not number.isdigit():
        raise UsageError(f"--device: {device!r} is not a numbered device (use 0,1 or cuda:0,cuda:1)")
    return int(number)


def device_plan(
    files: list[Path] | None, devices: list[str], divide_input: bool | None
) -> list[tuple[str, str, list[Path] | None]]:
    """(device, its folder name, its input files) for a multi-device run, as each ais_bench generation does
    it.

    Without --divide_input (ais_bench 2023): the files are cut into consecutive parts of ceil(n / devices) and
    device N writes `device<N>/`. With --divide_input true (2024): the first n % devices devices get one file
    more, and the i-th device N writes `device<N>_<i>/`. With --divide_input false (2024's default): every
    device runs every file, into `device<N>_<i>/`.
    """
    count = len(devices)
    numbers = [_device_number(device) for device in devices]
    if divide_input is None:
        names = [f"device{number}" for number in numbers]
    else:
        names = [f"device{number}_{index}" for index, number in enumerate(numbers)]
    if files is None or divide_input is False:
        parts = [files] * count
    elif divide_input is None:
        size = math.ceil(len(files) / count)
        parts = [files[index * size : (index + 1) * size] for index in range(count)]
    else:
        base, extra = divmod(len(files), count)
        bounds = [index * base + min(index, extra) for index in range(count + 1)]
        parts = [files[bounds[index] : bounds[index + 1]] for index in range(count)]
    if any(part is not None and not part for part in parts):
        raise UsageError(f"{len(files)} input files cannot be split over {count} devices: give fewer devices")
    return list(zip(devices, names, parts, strict=True))
