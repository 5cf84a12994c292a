"""The fault schedule: which fault, when, with what parameters, drawn from one seed.

Pure (no cluster, no clock): `draw(seed, minutes)` gives the same list for the same arguments,
whichever executor runs it, so both executors meet the same schedule. What a fault means for an
executor that lacks the part it hits is decided at injection (`for_executor`).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# In the order of the priority. Every kind appears once before any appears twice
# (each round is a seeded shuffle of them all), so a short run still meets most kinds.
KINDS: tuple[str, ...] = (
    "scheduler_kill",
    "helper_kill",
    "apiserver_restart",
    "etcd_compaction",
    "node_agent_restart",
    "pod_delete",
    "pod_force_delete",
    "apiserver_overload",
    "resource_quota",
    "postgres_restart",
    "credential_invalidated",
)

# The cluster's own disruptions (spot nodes reclaimed, drains, preemption): drawn only when asked
# for (`--faults disruptions`), so that the mixed run above keeps its schedule and its length.
DISRUPTION_KINDS: tuple[str, ...] = ("pod_evict", "node_taint", "pod_preempt", "node_delete")
ALL_KINDS = KINDS + DISRUPTION_KINDS

# The kinds that hit what all clusters share: a scheduler, PostgreSQL, and the in-cluster
# credential (the first cluster's connection). Every other kind hits one cluster: with several
# (`draw(..., clusters=...)`) each such fault names the cluster it hits (a helper kill, that
# cluster's launcher or watcher).
SHARED_KINDS: tuple[str, ...] = ("scheduler_kill", "postgres_restart", "credential_invalidated")
CLUSTER_KINDS: tuple[str, ...] = tuple(kind for kind in ALL_KINDS if kind not in SHARED_KINDS)

# The load runs this long before the first fault, so that pods exist to be hit; and no fault
# starts in the last seconds, so that the last one's effect is seen before the load stops.
WARMUP_S = 45.0
QUIET_END_S = 30.0
GAP_S = (12.0, 24.0)


@dataclass(frozen=True)
class Fault:
    at_s: float  # seconds after the load started
    kind: str
    params: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        detail = ", ".join(
            f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in self.params.items()
        )
        return f"{self.at_s:7.1f}s  {self.kind}" + (f" ({detail})" if detail else "")


def _params(kind: str, rng: random.Random) -> dict[str, Any]:
    """Each kind's parameters. Drawn for every kind in the same way whatever the executor."""
    if kind == "credential_invalidated":
        return {"scheduler": rng.randrange(2)}
    if kind == "scheduler_kill":
        return {"scheduler": rng.randrange(2), "down_s": round(rng.uniform(3, 15), 1)}
    if kind == "helper_kill":
        return {"scheduler": rng.randrange(2), "helper": rng.choice(("launcher", "watcher"))}
    if kind in ("pod_delete", "pod_force_delete", "pod_evict"):
        # Which of the running pods, as a fraction of their sorted list: the pods themselves
        # only exist at run time.
        return {"pick": round(rng.random(), 4)}
    if kind in ("apiserver_overload", "resource_quota", "node_taint", "pod_preempt", "node_delete"):
        return {"hold_s": round(rng.uniform(10, 30), 1)}
    if kind == "postgres_restart":
        return {"down_s": round(rng.uniform(1, 5), 1)}
    return {}


def draw(
    seed: int, minutes: float, kinds: tuple[str, ...] = KINDS, clusters: tuple[str, ...] = ()
) -> list[Fault]:
    """The faults of a run of `minutes` minutes of load, in order. With two `clusters` or more,
    each fault of a kind that hits one cluster names it (its `cluster` parameter), from
    `_cluster_of`: the times, kinds and other parameters are those of the one-cluster schedule."""
    rng = random.Random(seed)
    total = minutes * 60.0
    faults: list[Fault] = []
    at = WARMUP_S
    round_: list[str] = []
    while at < total - QUIET_END_S:
        if not round_:
            round_ = list(kinds)
            rng.shuffle(round_)
        kind = round_.pop(0)
        faults.append(Fault(round(at, 1), kind, _params(kind, rng)))
        at += rng.uniform(*GAP_S)
    if len(clusters) < 2:
        return faults
    cluster_of = _cluster_of(seed, kinds, clusters)
    seen: dict[str, int] = {}
    placed = []
    for fault in faults:
        if fault.kind in CLUSTER_KINDS:
            nth = seen[fault.kind] = seen.get(fault.kind, -1) + 1
            fault = Fault(fault.at_s, fault.kind, {**fault.params, "cluster": cluster_of(fault.kind, nth)})
        placed.append(fault)
    return placed


def _cluster_of(seed: int, kinds: tuple[str, ...], clusters: tuple[str, ...]) -> Callable[[str, int], str]:
    """Which cluster the `nth` fault (from 0) of `kind` hits. From a generator of its own, so the
    one-cluster schedule is unchanged: each kind starts at a cluster dealt out evenly (a seeded
    shuffle of the kinds, dealt in turn), then goes round the clusters, so that the first round
    hits each cluster with as many kinds as the others (give or take one), and each kind meets
    every cluster within as many rounds as there are clusters."""
    rng = random.Random(f"{seed}/clusters")
    dealt = [k for k in kinds if k in CLUSTER_KINDS]
    rng.shuffle(dealt)
    start = {kind: i % len(clusters) for i, kind in enumerate(dealt)}

    def cluster_of(kind: str, nth: int) -> str:
        return clusters[(start[kind] + nth) % len(clusters)]

    return cluster_of


def cluster_hit(fault: Fault) -> str | None:
    """The cluster `fault` hits (the executor's name for it), or None for what all share (a
    scheduler, PostgreSQL). A fault of a cluster's kind that names none hits the first, `default`,
    as does the credential fault: the token it takes away is the in-cluster connection's."""
    if "cluster" in fault.params:
        return str(fault.params["cluster"])
    if fault.kind in CLUSTER_KINDS or fault.kind == "credential_invalidated":
        return "default"
    return None


# The official provider has one scheduler (it does not support several) and creates its pods
# in the scheduler's own loop; its one helper process is the watcher (a multiprocessing child).
OFFICIAL_MAPPING = {
    "scheduler_kill": "its only scheduler is killed (it supports no second one)",
    "helper_kill": "its watcher process is killed (a launcher-kill too: it has no launcher process)",
    "credential_invalidated": "its only scheduler's token is invalidated",
}


def for_executor(fault: Fault, executor: str) -> tuple[Fault, str]:
    """The fault as injected into `executor`'s installation, and a note when it was mapped."""
    if executor != "official" or fault.kind not in OFFICIAL_MAPPING:
        return fault, ""
    params = dict(fault.params, scheduler=0)
    if fault.kind == "helper_kill":
        params["helper"] = "watcher"
    return Fault(fault.at_s, fault.kind, params), OFFICIAL_MAPPING[fault.kind]
