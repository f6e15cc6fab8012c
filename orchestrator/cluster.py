"""What one trial asks Ray for, what the cluster can grow to, and how many trials run at once.

Sweeps and searches share this, so a search trial asks for the same CPUs and GPU share as a sweep
trial would (Ray 2.60 no longer hides GPUs from an actor that asked for none: a search trial that
asked for no GPU trained on cuda:0 beside every other one).

An autoscaling cluster is not what is up when the driver starts: the shipped cluster.yaml starts
with a CPU head and no GPU worker at all. Sizing trials from ``ray.cluster_resources()`` then
asked for no GPU (so the autoscaler never launched one) or refused GPU trials outright. So the
driver reads the autoscaler's node types, in this order:

1. the cluster config Ray keeps in its GCS (KubeRay and the v2 autoscaler report it there);
2. the autoscaling config the head's autoscaler was started with (``ray up``, or ``ray start
   --head --autoscaling-config``), found through the autoscaler's process when the driver runs
   on the head, as a ``ray job submit`` job does;
3. a cluster whose autoscaler has no config (a local Ray, ``ray start`` on machines you have)
   is fixed: its node types are the nodes up now.

If none can be read (a driver away from the head of an autoscaling cluster), the request is
accepted with a note: Ray holds the trials until a node that fits them joins. A request that no
known node type can ever satisfy is refused before any work (one line, exit 2).
"""

from __future__ import annotations

import dataclasses
import math
import os

import yaml

from orchestrator.cli import UserError

# Declared peak GPU memory of one trial, GiB, by profile (and method where it differs), for when
# the store has no measured peak yet (runner.py records `gpu_peak_gib` in every GPU row's extra).
# By estimate (issue 23): an HSCL or MIL-convex paper trial (ResNet-18, batch 256, two views,
# bf16) peaks at 7.5-9 GiB; a CADet paper trial (fp32, 2,048 rows of features) at about 12 GiB.
# Quick trials (a small CNN on 8x8 digits) and small ones (a quarter-width ResNet-18) use little.
GPU_FOOTPRINT_GIB = {"quick": 0.5, "small": 2.0, "paper": 9.0}
GPU_FOOTPRINT_GIB_BY_METHOD = {("paper", "cadet"): 12.0}
# choice: keep 10 % of the card for the CUDA context and the caching allocator's fragmentation.
USABLE_GPU_MEMORY = 0.9
MAX_TRIALS_PER_GPU = 8
# The shipped cluster.yaml's GPU (an A10G of a g5.xlarge) when the card cannot be seen from here.
DEFAULT_GPU_MEMORY_GIB = 24.0
# Cards Ray names in its `accelerator_type:<name>` node resource, and their memory (GiB).
GPU_MEMORY_GIB = {"T4": 16, "A10G": 24, "L4": 24, "V100": 16, "A100": 40, "H100": 80, "H200": 141, "L40S": 48}


@dataclasses.dataclass(frozen=True)
class NodeType:
    name: str
    resources: dict  # per node, e.g. {"CPU": 4, "GPU": 1}; empty: not declared (the cloud's instance decides)
    max_count: int  # nodes of this type that can be up at once

    def fits(self, bundle: dict) -> int:
        """How many ``bundle``s one node of this type holds."""
        need = {k: v for k, v in bundle.items() if v > 0}
        if not need:
            return MAX_TRIALS_PER_GPU * 64
        return min(math.floor(self.resources.get(k, 0.0) / v + 1e-9) for k, v in need.items())


@dataclasses.dataclass
class Capacity:
    """The node types the cluster has or can launch, and how that is known."""

    node_types: list[NodeType]
    source: str  # for the log line
    known: bool = True  # False: the autoscaler's node types could not be read

    def slots(self, bundle: dict) -> int:
        """Bundles the cluster holds at once when grown to its maximum."""
        return sum(t.max_count * t.fits(bundle) for t in self.node_types)

    def most(self, resource: str) -> float:
        return sum(t.max_count * t.resources.get(resource, 0.0) for t in self.node_types)

    @property
    def undeclared(self) -> list[str]:
        return [t.name for t in self.node_types if not t.resources and t.max_count > 0]


@dataclasses.dataclass(frozen=True)
class TrialRequest:
    """What one trial asks Ray for: in its own process (workers = 0) or as N DDP worker actors."""

    cpus: float  # per trial, or per worker with workers > 0
    gpus: float  # share of one GPU, per trial or per worker
    workers: int = 0

    def tune_resources(self) -> dict:
        if self.workers == 0:
            return {"cpu": self.cpus, "gpu": self.gpus}
        # The trial itself only waits on its workers: a sliver of a CPU, so that N workers of
        # 0.99 CPU each fit on N cores (1 + 1 per trial deadlocks on 2 cores).
        return {"cpu": 0.01}

    @property
    def cpus_per_worker(self) -> float:
        return self.cpus if self.workers == 0 else self.cpus * 0.99

    @property
    def placed_bundle(self) -> dict:
        """The bundle that must fit on one node: the trial itself, or one of its workers."""
        return {"CPU": self.cpus_per_worker, "GPU": self.gpus}

    def concurrent(self, capacity: Capacity) -> int:
        return capacity.slots(self.placed_bundle) // max(1, self.workers)

    def describe(self) -> str:
        each = f"{self.cpus:g} CPU, {self.gpus:g} GPU"
        return each + " per trial" if self.workers == 0 else f"{self.workers} workers of {each} per trial"


# ----------------------------------------------------------------------------------------------
# Reading what the cluster can grow to (call after ray.init)


def _from_gcs() -> list[NodeType] | None:
    import ray._private.state

    try:
        config = ray._private.state.state.get_cluster_config()
    except Exception:  # an older GCS without the key, or no permission: fall through to the next source
        return None
    if config is None or not config.node_group_configs:
        return None
    return [NodeType(g.name, {k: float(v) for k, v in g.resources.items()},
                     10**6 if g.max_count == -1 else g.max_count) for g in config.node_group_configs]


def autoscaler_config_path(gcs_address: str) -> tuple[bool, str | None]:
    """(found the head's autoscaler on this machine, the config it was started with or None)."""
    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info.get("cmdline") or []
        if not any("autoscaler" in part and part.endswith("monitor.py") for part in cmd):
            continue
        if f"--gcs-address={gcs_address}" not in cmd:
            continue
        for i, part in enumerate(cmd):
            if part.startswith("--autoscaling-config="):
                return True, os.path.expanduser(part.split("=", 1)[1])
            if part == "--autoscaling-config" and i + 1 < len(cmd):
                return True, os.path.expanduser(cmd[i + 1])
        return True, None
    return False, None


def node_types_of(config: dict) -> list[NodeType]:
    """The node types of a `ray up` / autoscaling config (a dict as in cluster.yaml)."""
    types = config.get("available_node_types") or {}
    head = config.get("head_node_type")
    cap = config.get("max_workers")
    out = []
    for name, spec in types.items():
        if name == head:  # the head itself, plus any workers of the head's type
            count = 1 + int(spec.get("max_workers") or 0)
        else:
            count = int(spec.get("max_workers", cap if cap is not None else 0) or 0)
            if cap is not None:
                count = min(count, int(cap))
        resources = {k: float(v) for k, v in (spec.get("resources") or {}).items()}
        out.append(NodeType(name, resources, count))
    return out


def _nodes_up() -> list[NodeType]:
    import ray

    return [NodeType(n["NodeID"][:12], {k: float(v) for k, v in n["Resources"].items()}, 1)
            for n in ray.nodes() if n.get("Alive")]


def read_capacity() -> Capacity:
    """What the connected Ray cluster can grow to (see the module docstring)."""
    import ray

    types = _from_gcs()
    if types:
        return Capacity(types, "the autoscaler's node types (Ray's cluster config)")
    found, path = autoscaler_config_path(ray.get_runtime_context().gcs_address)
    if found and path:
        try:
            with open(path) as f:
                types = node_types_of(yaml.safe_load(f))
        except (OSError, yaml.YAMLError, AttributeError, TypeError, ValueError):
            types = []  # unreadable: the nodes up now, with the note below
        undeclared = [t.name for t in types if not t.resources and t.max_count > 0]
        if types and not undeclared:
            return Capacity(types, f"the autoscaler's node types ({path})")
        if undeclared:  # e.g. cluster-local.yaml: Ray detects each machine's resources when it joins
            return Capacity(_nodes_up(), f"the nodes up now (node types {', '.join(undeclared)} declare no "
                                         "resources)", known=False)
    if found:
        return Capacity(_nodes_up(), "the nodes up now (no autoscaler)")
    return Capacity(_nodes_up(), "the nodes up now; the autoscaler's node types could not be read from here",
                    known=False)


# ----------------------------------------------------------------------------------------------
# GPU share per trial: from the card's memory and the trial's footprint


def trials_per_gpu(card_gib: float, footprint_gib: float) -> int:
    """Trials that fit one card with their footprint, each then capped at card / n (runner.cap_gpu_memory)."""
    return max(1, min(MAX_TRIALS_PER_GPU, math.floor(card_gib * USABLE_GPU_MEMORY / footprint_gib)))


def declared_footprint(profile: str, methods: list[str]) -> float:
    return max(GPU_FOOTPRINT_GIB_BY_METHOD.get((profile, m), GPU_FOOTPRINT_GIB.get(profile, 9.0)) for m in methods)


def card_memory_gib() -> tuple[float, str]:
    """The GPU memory of one card: a GPU on this machine, else the accelerator type Ray reports for a GPU node."""
    import ray
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return props.total_memory / 2**30, f"{props.name} on this machine"
    for node in ray.nodes():
        for key in node.get("Resources", {}):
            if key.startswith("accelerator_type:") and key.split(":", 1)[1] in GPU_MEMORY_GIB:
                name = key.split(":", 1)[1]
                return float(GPU_MEMORY_GIB[name]), f"{name} in the cluster"
    return DEFAULT_GPU_MEMORY_GIB, "assumed (no GPU up yet; --gpu-memory-gib sets it)"


def resolve(cpus: float, gpus: float | None, workers: int, max_concurrent: int | None, capacity: Capacity,
            footprint_gib: float, card_gib: float | None = None) -> tuple[TrialRequest, int, list[str]]:
    """The per-trial request and the concurrency, or a UserError no node type can ever satisfy.

    Returns (request, trials at once, notes to print)."""
    notes = []
    if gpus is None:  # by default: share a GPU when the cluster has or can launch one
        if capacity.most("GPU") > 0:
            card, where = (card_gib, "--gpu-memory-gib") if card_gib else card_memory_gib()
            per_gpu = trials_per_gpu(card, footprint_gib)
            gpus = 1.0 / per_gpu
            notes.append(f"{per_gpu} trials per GPU: {card:.0f} GiB card ({where}), {footprint_gib:g} GiB a trial "
                         f"(--gpus-per-trial overrides)")
        else:
            gpus = 0.0
    request = TrialRequest(cpus=cpus, gpus=gpus, workers=workers)
    bundle = request.placed_bundle
    if capacity.slots(bundle) == 0:
        what = " + ".join(f"{v:g} {k}" for k, v in bundle.items() if v > 0)
        if not capacity.known or capacity.undeclared:
            notes.append(f"no node up offers {what} and the cluster's node types are not known here: "
                         f"the trials wait until a node that fits joins (`ray status` shows the demand)")
        else:
            gpu_short = bundle["GPU"] > 0 and not any(t.fits({"GPU": bundle["GPU"]}) for t in capacity.node_types)
            flag = f"--gpus-per-trial {bundle['GPU']:g}" if gpu_short else f"--cpus-per-trial {cpus:g}"
            largest = max((t.resources for t in capacity.node_types), key=lambda r: (r.get("GPU", 0), r.get("CPU", 0)),
                          default={})
            raise UserError(f"{flag}: a trial needs {what} on one node, but no node of this cluster can ever offer it "
                            f"(largest: {largest or 'none'}; from {capacity.source})")
    if workers and capacity.known and not capacity.undeclared and request.concurrent(capacity) == 0:
        raise UserError(f"--workers {workers}: the cluster can never hold {workers} workers of "
                        f"{bundle['CPU']:g} CPU, {bundle['GPU']:g} GPU at once (from {capacity.source})")
    grow_to = max(1, request.concurrent(capacity))
    concurrent = max_concurrent or grow_to
    if not capacity.known and not max_concurrent:
        notes.append(f"{grow_to} at a time, from the nodes up now: --max-concurrent sets what the cluster can grow to")
    if max_concurrent and max_concurrent > grow_to and capacity.known and not capacity.undeclared:
        notes.append(f"--max-concurrent {max_concurrent}: the cluster holds at most {grow_to} such trials at once")
        concurrent = grow_to
    return request, concurrent, notes
