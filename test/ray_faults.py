"""Faults for the ray engine's tests, none of them in the toolkit itself.

Stage doubles: `python test/ray_faults.py <infer flags>` runs the ray engine with its model and write stages
replaced by subclasses that kill their own Ray worker once, as `TWINS_PCPVT_TEST_RAY_FAULT` says:

- `model:K:MARKER`: the first model actor to reach its K-th batch exits abruptly after computing it;
- `writer:K:MARKER`: the first write task with more than K images exits after writing K of them and half of
  the next (its temporary file stays behind).

Only the process that creates the file MARKER (it writes its pid there) exits, so a fault fires once. Ray's
workers import the doubles from this module: `test/` must be on their PYTHONPATH (the engine passes its own
PYTHONPATH to them).

A cluster of two nodes: `python test/ray_faults.py --cluster HEAD_CPUS WORKER_CPUS` starts a head node and a
worker node on this host with Ray's own `ray.cluster_utils.Cluster`, prints the address, and then takes one
command a line on stdin, answering each with one line: `hold` (a placeholder actor takes every CPU of the
head, so that the next actors start on the worker), `release`, `where` (how many model actors are alive on
the worker node, and how many elsewhere), `remove` (the worker node and everything on it is killed).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from twins_pcpvt.common import NUM_CLASSES, UsageError, atomic_writer  # noqa: E402
from twins_pcpvt.infer import ray_engine  # noqa: E402
from twins_pcpvt.infer.outputs import write_output  # noqa: E402

FAULT_ENV = "TWINS_PCPVT_TEST_RAY_FAULT"
MODEL_ACTOR = "ModelStage"


@dataclass(frozen=True)
class Fault:
    stage: str  # "model" or "writer"
    count: int
    marker: str

    @classmethod
    def from_env(cls) -> Fault | None:
        text = os.environ.get(FAULT_ENV, "")
        if not text:
            return None
        stage, _, rest = text.partition(":")
        count, _, marker = rest.partition(":")
        if stage not in ("model", "writer") or not count.isdigit() or not marker:
            raise UsageError(f"{FAULT_ENV}={text!r}: expected model:K:MARKER or writer:K:MARKER")
        return cls(stage, int(count), marker)

    def fires(self, stage: str, count: int) -> bool:
        """True once: for the first process at `stage` and `count` that creates the marker file."""
        if stage != self.stage or count != self.count:
            return False
        try:
            handle = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        os.write(handle, f"{os.getpid()}\n".encode())
        os.close(handle)
        return True


class DyingModelStage(ray_engine.ModelStage):
    """The model stage, whose process exits after computing the batch the fault names."""

    def __call__(self, batch: dict) -> dict:
        result = super().__call__(batch)
        fault = Fault.from_env()
        if fault and fault.fires("model", self.batches):
            os._exit(1)
        return result


def dying_write_stage(batch: dict, *, fmt: str) -> dict:
    """The write stage, whose process writes K outputs and dies half-way through the next one."""
    fault = Fault.from_env()
    good = np.flatnonzero(batch["error"] == "")
    if fault and len(good) > fault.count and fault.fires("writer", fault.count):
        for index in good[: fault.count]:
            write_output(Path(batch["output"][index]), batch["logits"][index], fmt)
        with atomic_writer(batch["output"][good[fault.count]]) as handle:
            handle.write(np.asarray(batch["logits"][good[fault.count]], "<f4").tobytes()[: 2 * NUM_CLASSES])
            handle.flush()
            os._exit(1)
    return ray_engine.write_stage(batch, fmt=fmt)


def hold_cluster(head_cpus: int, worker_cpus: int) -> None:
    import ray
    from ray.cluster_utils import Cluster
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": head_cpus, "include_dashboard": False}
    )
    worker = cluster.add_node(num_cpus=worker_cpus)
    cluster.wait_for_nodes()
    print(cluster.address, flush=True)
    cluster.connect()

    @ray.remote
    class Placeholder:
        def ready(self) -> bool:
            return True

    placeholder = None
    head = NodeAffinitySchedulingStrategy(cluster.head_node.node_id, soft=False)
    for line in sys.stdin:
        command = line.strip()
        if command == "hold":
            placeholder = Placeholder.options(num_cpus=head_cpus, scheduling_strategy=head).remote()
            ray.get(placeholder.ready.remote())
            answer = "held"
        elif command == "release":
            ray.kill(placeholder)
            answer = "released"
        elif command == "where":
            actors = [
                actor["Address"]["NodeID"] == worker.node_id
                for actor in ray._private.state.actors().values()
                if MODEL_ACTOR in actor["ActorClassName"] and actor["State"] == "ALIVE"
            ]
            answer = json.dumps({"worker": sum(actors), "elsewhere": len(actors) - sum(actors)})
        elif command == "remove":
            cluster.remove_node(worker)
            answer = "removed"
        else:
            answer = f"unknown command {command!r}"
        print(answer, flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--cluster"]:
        hold_cluster(int(sys.argv[2]), int(sys.argv[3]))
        raise SystemExit(0)
    import ray_faults  # this file under its module name, which Ray's workers import the doubles from

    import twins_pcpvt_s_infer

    ray_engine.ModelStage = ray_faults.DyingModelStage
    ray_engine.write_stage = ray_faults.dying_write_stage
    raise SystemExit(twins_pcpvt_s_infer.main())
