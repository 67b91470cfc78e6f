"""A double of OpenVINO's broken streams: chosen compiles of a process return NaN from chosen infer requests.

OpenVINO now and then compiles a model with a stream whose every request returns NaN logits, for the
whole life of that compiled model (docs/stages.md). `install(compiles, requests)` wraps the real
`Core.compile_model` of this process: the compiles numbered in `compiles` (from 1, counted per process;
`ALL` for every compile) give compiled models whose requests numbered in `requests` (from 0, in the order
they are created) write NaN into their output; everything else is the real OpenVINO.

In other processes (Ray actors, device workers) the double is installed at start-up by `site/sitecustomize.py`
when the environment holds ENV (`COMPILES:REQUESTS`, e.g. `1:1` or `all:0,1`) and PYTHONPATH holds `site/`.
"""

from __future__ import annotations

import os

import numpy as np

ENV = "TWINS_PCPVT_TEST_OV_NAN"
ALL = "all"
compiles_made = 0


class _NanRequest:
    """An infer request whose output tensor holds NaN after each run."""

    def __init__(self, real):
        self._real = real

    def _poison(self):
        self._real.get_output_tensor(0).data[...] = np.nan

    def infer(self, *args, **kwargs):
        result = self._real.infer(*args, **kwargs)
        self._poison()
        return result

    def wait(self):
        self._real.wait()
        self._poison()

    def __getattr__(self, name):
        return getattr(self._real, name)


class _BrokenCompiled:
    def __init__(self, real, requests):
        self._real, self._requests, self._made = real, requests, 0

    def create_infer_request(self):
        request = self._real.create_infer_request()
        index, self._made = self._made, self._made + 1
        return _NanRequest(request) if index in self._requests else request

    def __getattr__(self, name):
        return getattr(self._real, name)


def install(compiles, requests, patch=None) -> None:
    """Wrap `openvino.Core.compile_model` (through `patch(owner, name, value)`, e.g. pytest's
    monkeypatch.setattr; plain setattr when None)."""
    import openvino as ov

    global compiles_made
    compiles_made = 0
    real = getattr(ov.Core.compile_model, "real", ov.Core.compile_model)

    def compile_model(self, *args, **kwargs):
        global compiles_made
        compiles_made += 1
        compiled = real(self, *args, **kwargs)
        if compiles == ALL or compiles_made in compiles:
            return _BrokenCompiled(compiled, set(requests))
        return compiled

    compile_model.real = real
    (patch or setattr)(ov.Core, "compile_model", compile_model)


def install_from_env() -> None:
    text = os.environ.get(ENV)
    if not text:
        return
    compiles, _, requests = text.partition(":")
    chosen = ALL if compiles == ALL else {int(number) for number in compiles.split(",")}
    install(chosen, {int(number) for number in requests.split(",")})
