"""The Ray cluster of a job of the ray engine: Ray's start-up (signals held while it runs), what the model
actors ask of the cluster, and a watch over the cluster's nodes while the job runs."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from ..common import Interrupted, ToolkitError

RAY_INSTALL = 'pip install "ray[data]"'
DEVICE_RESOURCES = {"cpu": None, "cuda": "GPU", "tensorrt": "GPU", "npu": "NPU"}
NODE_POLL_S = 1.0  # how often the driver looks for lost nodes
HOLD_S = 10  # how long a signal waits for Ray's start-up to finish
PROBE_S = 10.0  # how long the driver waits for a --ray-address to answer


def import_ray():
    """Ray with Ray Data, imported on first use; a missing install is one line naming what to install."""
    try:
        import ray
        import ray.data  # noqa: F401 - checks the [data] extra
    except ImportError as exc:
        raise ToolkitError(
            f"--engine ray needs Ray Data, which is not installed ({exc}): {RAY_INSTALL}"
        ) from None
    return ray


# ---- start-up -------------------------------------------------------------------------------------------
@contextlib.contextmanager
def signals_held(ray) -> Iterator[list[int]]:
    """SIGINT and SIGTERM wait until the block ends (the list it gives holds them), where Ray starts: a
    ray.init stopped half-way leaves some of Ray's processes running. A second signal, or HOLD_S seconds
    after the first, stops it at once.

    ray.init replaces the SIGTERM handler (with sys.exit) and Ray's C++ side then installs one that prints a
    stack dump; both are kept off: the handlers the command had (SIGTERM as Ctrl-C) are back afterwards."""
    held: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield held
        return
    lock = threading.Lock()
    ended = False

    def again(signum: int) -> None:  # the second signal, when the start-up takes too long after the first
        with lock:
            if not ended:
                signal.pthread_kill(threading.main_thread().ident, signum)

    def hold(signum, frame) -> None:
        if held:
            raise KeyboardInterrupt if signum == signal.SIGINT else Interrupted(signum)
        held.append(signum)
        timer = threading.Timer(HOLD_S, again, (signum,))
        timer.daemon = True
        timer.start()

    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    for signum, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(signum, hold)
    utils = getattr(getattr(ray, "_private", None), "utils", None)
    ray_handler = getattr(utils, "set_sigterm_handler", None)
    if ray_handler is not None:
        utils.set_sigterm_handler = lambda handler: None
    try:
        yield held
    finally:
        with lock:
            ended = True
        if ray_handler is not None:
            utils.set_sigterm_handler = ray_handler
        for signum, handler in previous.items():
            if handler is not None:
                signal.signal(signum, handler)


def start_ray(ray, address: str | None) -> None:
    package_root = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
    options: dict = {
        "address": address or "local",
        "log_to_driver": False,
        "logging_level": logging.ERROR,
        "runtime_env": {"env_vars": {"PYTHONPATH": path}},
    }
    if not address:
        options["include_dashboard"] = False
    elif re.fullmatch(r"[^:/\s]+:\d+", address):  # Ray waits forever for a cluster that is not there
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=PROBE_S).close()
        except OSError as exc:
            raise ToolkitError(
                f"cannot join the Ray cluster at {address}: nothing answers there ({exc.strerror or exc})"
            ) from None
    # Ray's C++ side logs an error line on every run, about actor arguments kept in the object store
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    with signals_held(ray) as held:
        try:
            ray.init(**options)
        except Exception as exc:
            shutdown_quietly(ray)
            hint = ""
            if address and "RAY_AUTH_MODE" not in os.environ:
                hint = " (a cluster with token authentication needs RAY_AUTH_MODE=token and its token)"
            where = f"join the Ray cluster at {address}" if address else "start Ray"
            raise ToolkitError(f"cannot {where}: {exc}{hint}") from None
        except BaseException:  # a second signal during the start-up
            shutdown_quietly(ray)
            raise
    if held:  # a signal came during the start-up: now Ray stops cleanly
        shutdown_quietly(ray)
        raise KeyboardInterrupt if held[0] == signal.SIGINT else Interrupted(held[0])
    data_logger = logging.getLogger("ray.data")
    data_logger.setLevel(logging.WARNING)
    for handler in data_logger.handlers:  # a failed job is reported in one line by the engine itself
        if getattr(handler, "stream", None) is sys.stderr:
            handler.addFilter(lambda record: record.levelno < logging.ERROR)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled"
    ray.data.DataContext.get_current().enable_progress_bars = False  # the job has its own


def shutdown_quietly(ray) -> None:
    """Stop what a failed or interrupted start-up of Ray left running."""
    try:
        ray.shutdown()
    except Exception:  # noqa: S110 - nothing more to stop
        pass


# ---- resources and nodes ---------------------------------------------------------------------------------
def actor_requests(devices: list[str], cluster: dict) -> dict:
    """Ray resources per model actor; the actors together leave the read stage at least one CPU."""
    cpus = float(cluster.get("CPU", 0))
    if cpus < 1:
        raise ToolkitError(f"the Ray cluster has {cpus:g} CPUs: the read stage needs at least one")
    requests: dict = {"num_cpus": min(1.0, math.floor((cpus - 1) / len(devices) * 100) / 100)}
    resource = DEVICE_RESOURCES[devices[0].partition(":")[0]]
    if resource is not None:
        have = float(cluster.get(resource, 0))
        if have < len(devices):
            raise ToolkitError(
                f"--device {','.join(devices)}: the Ray cluster has {have:g} {resource}, "
                f"{len(devices)} needed"
            )
        if resource == "GPU":
            requests["num_gpus"] = 1
        else:
            requests["resources"] = {resource: 1}
    return requests


def cap_cpu_copies(devices: list[str], cluster: dict) -> list[str]:
    """At most one `cpu` model copy per CPU of the cluster (at least one); a notice says when fewer run.
    Each copy's backend uses every core of its host: more copies only share the cores and the memory."""
    cpus = max(1, math.floor(float(cluster.get("CPU", 0))))
    if devices[0] != "cpu" or len(devices) <= cpus:
        return devices
    print(
        f"[INFO] --device asks for {len(devices)} CPU model copies; the Ray cluster has {cpus} CPUs: "
        f"running {cpus}, one per CPU",
        file=sys.stderr,
    )
    return devices[:cpus]


def shortfall(devices: list[str], requests: dict, resources: dict) -> str | None:
    """Why nodes with these total `resources` cannot hold the job's model actors (each asking for `requests`)
    beside the read stage, as it was planned; None when they can."""
    try:
        now = actor_requests(devices, resources)
    except ToolkitError as exc:
        return str(exc)
    if now["num_cpus"] < requests["num_cpus"]:
        return (
            f"the {float(resources.get('CPU', 0)):g} CPUs left cannot hold {len(devices)} model copies of "
            f"{requests['num_cpus']:g} CPU each beside the read stage"
        )
    return None


class NodesLost(BaseException):
    """Raised in the main thread when the cluster lost nodes that the job cannot do without. A BaseException,
    like KeyboardInterrupt, so that no `except Exception` inside Ray Data's iterator takes it."""


class NodeWatch:
    """While the job runs, a thread looks at the cluster's nodes every NODE_POLL_S seconds. When nodes are
    lost and the nodes left cannot hold the model actors beside the read stage (Ray would then wait for them
    forever), it stops the job: a SIGUSR1 to the main thread raises NodesLost there. Only from the main
    thread (signal handlers live there); elsewhere nothing is watched."""

    def __init__(self, ray, devices: list[str], requests: dict):
        self.ray, self.devices, self.requests = ray, devices, requests
        self.reason: str | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()  # the signal is sent only while the job runs
        self._previous = None

    def _alive(self) -> dict[str, dict]:
        return {node["NodeID"]: node.get("Resources", {}) for node in self.ray.nodes() if node.get("Alive")}

    def _watch(self, known: dict[str, dict]) -> None:
        while not self._stop.wait(NODE_POLL_S):
            try:
                alive = self._alive()
            except Exception:  # noqa: S112 - the cluster's state is read again at the next poll
                continue
            lost = known.keys() - alive.keys()
            known = alive
            if not lost:
                continue
            total: dict[str, float] = {}
            for resources in alive.values():
                for name, amount in resources.items():
                    total[name] = total.get(name, 0.0) + float(amount)
            reason = shortfall(self.devices, self.requests, total)
            if reason is None:
                continue
            with self._lock:
                if not self._stop.is_set():
                    self.reason = f"the Ray cluster lost {len(lost)} node(s) mid-job: {reason}"
                    signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)
            return

    def _raise(self, signum, frame) -> None:
        if self.reason is not None and not self._stop.is_set():
            raise NodesLost(self.reason)

    def __enter__(self) -> NodeWatch:
        if threading.current_thread() is threading.main_thread():
            known = self._alive()
            self._previous = signal.signal(signal.SIGUSR1, self._raise)
            threading.Thread(target=self._watch, args=(known,), name="ray-node-watch", daemon=True).start()
        return self

    def __exit__(self, *exc_info) -> None:
        # not joined: with the cluster gone, its call for the node table can wait a minute for Ray to give up
        with self._lock:
            self._stop.set()
        if self._previous is not None and self.reason is None:  # else the signal may still be on its way
            signal.signal(signal.SIGUSR1, self._previous)
