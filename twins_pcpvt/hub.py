"""timm's pretrained weights on the Hugging Face hub: the local cache, and whether the hub answers at all.

Only the standard library and huggingface_hub are imported, so `twins_pth2onnx.py --source timm` without a
reachable hub fails within seconds, before torch loads.
"""

from __future__ import annotations

import os
import socket
import threading
import urllib.parse

from .common import ToolkitError

TIMM_ARCH = "twins_pcpvt_small"
TIMM_TAG = "in1k"  # the one pretrained tag timm publishes for it (`--source timm`)
HUB_CONNECT_SECONDS = 3.0  # how long the hub (or the HTTPS proxy to it) may take to accept a connection
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm's hub repositories hold


def hub_unreachable(endpoint: str, timeout: float = HUB_CONNECT_SECONDS) -> str | None:
    """Why the hub at `endpoint` (through the HTTPS proxy of the environment, if any) cannot be reached within
    `timeout` seconds, name lookup included; None when it accepts a connection."""
    url = urllib.parse.urlsplit(os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy") or endpoint)
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    outcome: list[str | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as exc:
            outcome.append(f"{host}:{port}: {exc.strerror or exc}")

    probe = threading.Thread(target=connect, daemon=True)  # a name lookup has no timeout of its own
    probe.start()
    probe.join(timeout)
    return outcome[0] if outcome else f"{host}:{port}: no answer within {timeout:g} s"


def timm_weights(tag: str, repo_id: str | None = None) -> str | None:
    """The local file of timm's weights `twins_pcpvt_small.<tag>` when the Hugging Face cache holds them;
    None when the hub answers (timm may download them); else a ToolkitError saying how to pass a local
    checkpoint. Offline means HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) set, or no connection to the hub
    within HUB_CONNECT_SECONDS."""
    from huggingface_hub import constants, try_to_load_from_cache

    name = f"{TIMM_ARCH}.{tag}"
    repo_id = repo_id or f"timm/{name}"
    for filename in WEIGHT_FILES:
        path = try_to_load_from_cache(repo_id, filename)
        if isinstance(path, str):
            return path
    offline = "HF_HUB_OFFLINE is set" if constants.is_offline_mode() else hub_unreachable(constants.ENDPOINT)
    if offline:
        raise ToolkitError(
            f"timm:{tag}: could not fetch timm's weights '{name}': not in the local cache "
            f"({constants.HF_HUB_CACHE}) and the hub {constants.ENDPOINT} cannot be reached ({offline}): "
            "pass a local checkpoint with "
            "--source FILE (pcpvt_small.pth from the Twins release, or the repository's model.safetensors "
            "fetched where there is network), or set HF_ENDPOINT to a reachable mirror"
        )
    return None
