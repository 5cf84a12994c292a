"""The data that crosses from the I/O shells into the pure core, in one place.

The watchers, the launcher, adoption and Airflow's database each hand the ledger
what they saw as one of these small frozen records; nothing here reads a clock,
the network or a database. Keeping them apart from the modules that produce them
lets the ledger (ledger.py) and the verdict (state_mapping.py) import only pure
code, so they run under the seeded simulation exactly as in the scheduler.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Literal, NamedTuple

from k8s_executor import identity

Verdict = Literal["pending", "running", "success", "failed"]


@dataclass(frozen=True)
class PodState:
    """The verdict on a pod's task, with the reason a person needs in plain words."""

    verdict: Verdict
    reason: str = ""
    # For a failure, its cause in Kubernetes' words: the failing container's reason (ErrImagePull,
    # Error, OOMKilled...), or the pod's (Evicted, Unschedulable, Deleted), or the executor's
    # (CreateRefused, StartTimeout, Vanished). What pod_launch_failure_excluded_container_reasons
    # is matched against.
    cause: str = ""
    # False for a failure before any container ran (an image never pulled, a pod never scheduled):
    # such a pod is deleted, never kept, since kubelet would go on trying to start it.
    ran: bool = True
    # For a pod the cluster ended (its DisruptionTarget condition): the condition's reason, such as
    # EvictionByEvictionAPI, PreemptionByScheduler, DeletionByTaintManager, DeletionByPodGC or
    # TerminationByKubelet; empty when no component of the cluster said it disrupted the pod.
    disruption: str = ""
    # The task's container has ended but another container of the pod (a sidecar) runs on: the
    # pod must be stopped, not only left, or it holds its node's resources for ever.
    lingering: bool = False
    # The pod went (or overran its grace period) with its task's container never seen to end: its
    # node's kubelet may be cut off, and the container running on there.
    end_unseen: bool = False

    @property
    def terminal(self) -> bool:
        return self.verdict in ("success", "failed")


# --- a pod seen --------------------------------------------------------------------------------
@dataclass(frozen=True)
class PodSeen:
    """One pod as the executor saw it: the try it runs (None if it names none), the scheduler that
    holds it (its label), its verdict, and the resourceVersion it was seen at."""

    namespace: str
    name: str
    ref: identity.WorkloadRef | None
    scheduler_id: str
    state: PodState
    # A delete on this sighting's word applies to the pod only if it is unchanged since.
    resource_version: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


@dataclass(frozen=True)
class PodEvent(PodSeen):
    """A watcher's news of one of this scheduler's pods; `deleted` when the object is gone."""

    deleted: bool = False


@dataclass(frozen=True)
class Orphan(PodSeen):
    """A pod adoption takes over."""

    # False for a pod of a dead scheduler whose task already ended: taken only to be disposed of.
    ours: bool = False
    # Launched before pods had an owner label: adopting it relabels it, so the watchers see it.
    legacy: bool = False


# --- what a watcher says besides pod events ----------------------------------------------------
@dataclass(frozen=True)
class Resync:
    """The full set of this scheduler's pods in `namespace` at `resource_version`, after a relist."""

    namespace: str | None
    names: frozenset[tuple[str, str]]
    listed_at: float
    resource_version: str
    # This executor's pods that another scheduler holds now (relabelled by its adoption while the
    # watch was out, so its DELETED from this watch's selector was never seen): missing from
    # `names`, yet not gone.
    elsewhere: frozenset[tuple[str, str]] = frozenset()


@dataclass(frozen=True)
class Bookmark:
    namespace: str | None
    resource_version: str


@dataclass(frozen=True)
class Released:
    """A pod of this scheduler's left its watch because another scheduler adopted it (relabelled
    it): its try is that scheduler's now, to report and dispose of."""

    namespace: str
    name: str
    scheduler_id: str


@dataclass(frozen=True)
class Read:
    """How many watch events (and listed pods) the watcher read since it last said so."""

    namespace: str | None
    events: int


# --- what the launcher answers -----------------------------------------------------------------
@dataclass(frozen=True)
class LaunchResult:
    namespace: str
    name: str
    ok: bool
    error: str = ""
    already_existed: bool = False
    # 409 for a pod of an earlier launch of the same try (identity.LAUNCH_ANNOTATION): not ours.
    name_taken: bool = False
    attempts: int = 1
    # For the scheduler's metrics: the HTTP status the create ended with, and how long it took.
    status: int = 201
    duration_s: float = 0.0


@dataclass(frozen=True)
class DeleteResult:
    namespace: str
    name: str
    status: int


@dataclass(frozen=True)
class PatchResult:
    namespace: str
    name: str
    status: int


LauncherResult = LaunchResult | DeleteResult | PatchResult


# --- what Airflow's database answers -----------------------------------------------------------
class TaskRow(NamedTuple):
    """A task instance as the database holds it now: its try, its state, who queued it."""

    try_number: int
    state: str | None
    queued_by: object


class HandedTry(NamedTuple):
    """A try Airflow handed over from a scheduler it took for dead, as its row was read: its state,
    and the scheduler that had queued it (this one's, if Airflow's hand-over was written first)."""

    ref: identity.TaskRef
    state: object
    queued_by: object


class SchedulerJob(NamedTuple):
    """A scheduler job as the database holds it: what liveness is judged from."""

    job_id: object
    state: str | None
    heartbeat: datetime.datetime | None
