"""The pod ledger: what the executor knows of its pods, and what follows from it.

Pure: it does no I/O and reads no clock of its own. Everything that happens to a
pod comes in as a call (a launch and its result, a watch event, a resync after a
relist, an adoption, a revocation, the passing of time through `tick`), and every
consequence goes out as a list of actions: a result to report to Airflow, a pod
to delete or to mark done. The scheduler's shell (scheduler.py) feeds it from the
launcher's and watchers' queues and carries the actions out; simulation tests feed
it seeded histories and check its invariants.

The rules, each in one place:
- every try accepted gets exactly one result, unless Airflow revoked it;
- a pod is disposed of (deleted, or marked done and so left out of every watch)
  once, as `delete_worker_pods` says; a pod that never started is deleted anyway;
- a pod that shows up after its try was settled is deleted;
- a pod that vanished while the watch was interrupted fails its try;
- a try whose pod has not started by its deadline fails, its pod deleted;
- another scheduler's finished pod is disposed of only once that scheduler is dead (as
  Airflow holds it: `live_schedulers`) and `unclaimed_grace_s` have passed without anyone
  claiming it (an adopter relabels what it adopts), by one live scheduler only (`disposer`),
  and it is never reported; an unfinished one is deleted after twice that grace (Airflow
  has by then handed its try to an adopter or taken it back), and only as it was last seen;
- a try Airflow no longer wants from this scheduler (revoked, or found obsolete before its
  create was answered: `create_obsolete`) gets no result, and its create is dropped.
One clock, injected: monotonic seconds, shared by every process of the machine
(the watchers stamp their relists with it).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from k8s_executor import identity
from k8s_executor.adoption import Orphan, Sighting
from k8s_executor.state_mapping import PodState
from k8s_executor.watching import PodEvent, Resync

# How long a pod of this scheduler that it did not launch in this process (its previous
# incarnation's) may stay unstarted, when nothing else sets its deadline.
DEFAULT_START_TIMEOUT_S = 600.0
# How long a settled pod that is gone is remembered, so that a late or repeated event of it is not
# taken for a pod this scheduler has never seen (pod names are never reused for another try).
FORGET_AFTER_S = 3600.0

PodKey = tuple[str, str]


@dataclass(frozen=True)
class TaskResult:
    """A try's outcome, for Airflow."""

    ref: identity.WorkloadRef
    state: PodState
    pod: str


@dataclass(frozen=True)
class Dispose:
    """Delete a pod, or (delete=False) mark it done: kept for inspection, out of every watch."""

    namespace: str
    name: str
    delete: bool
    # Why, for the log and the metrics: finished | late | revoked | unclaimed
    why: Literal["finished", "late", "revoked", "unclaimed"] = "finished"
    # Delete only the pod as it was at this resourceVersion: one changed since (relabelled by an
    # adopter, say) is left for the next look.
    resource_version: str | None = None


@dataclass(frozen=True)
class Drop:
    """Do not send (or send again) the create of this pod: its try is no longer wanted."""

    namespace: str
    name: str


@dataclass(frozen=True)
class NameTaken:
    """The try's pod name belongs to an earlier launch's pod: launch it again under a new name."""

    ref: identity.WorkloadRef


@dataclass(frozen=True)
class HandedOver:
    """The try went to another scheduler: the executor forgets it, reporting nothing."""

    ref: identity.WorkloadRef


Action = TaskResult | Dispose | Drop | HandedOver | NameTaken


def live_schedulers(
    jobs: Iterable[tuple[object, str | None, datetime.datetime | None]],
    now: datetime.datetime,
    threshold_s: float,
) -> set[str]:
    """The scheduler labels of the jobs Airflow holds alive: running, with a heartbeat younger
    than `[scheduler] scheduler_health_check_threshold` (Airflow's own test before it hands a
    scheduler's tasks to another)."""
    return {
        identity.safe_label_value(str(job_id))
        for job_id, state, heartbeat in jobs
        if state == "running" and heartbeat is not None and (now - heartbeat).total_seconds() < threshold_s
    }


def disposer(alive: set[str]) -> str | None:
    """The one live scheduler that disposes of dead schedulers' unclaimed pods: the oldest job."""
    return min(
        alive,
        key=lambda label: (not label.isdigit(), int(label) if label.isdigit() else 0, label),
        default=None,
    )


# The task instance states in which a queued try's create is still wanted: queued (the worker has
# not started), or already on its way or over (the pod ran: its events are still awaited).
_WANTED_STATES = frozenset({"queued", "running", "success", "failed", "up_for_retry", "restarting"})


# Failures after which a new pod cannot help, whatever the task instance's state: the try's time
# to start is over (its workload token expires with it).
_NOT_RELAUNCHED = frozenset({"StartTimeout"})


def relaunch(state: PodState, ti_state: str | None, excluded_causes: frozenset[str]) -> bool:
    """Whether a try whose pod failed gets a new pod instead of a failure (pod_launch_failure_retries).

    Only when its task never started: the task instance is still `queued` (a task that starts
    says `running` first), so no task code ran and no task retry is spent. Causes the operator
    excludes (by default `Error`: the container ran, and Airflow's own start failed) fail the try.
    """
    return (
        state.verdict == "failed"
        and ti_state == "queued"
        and state.cause not in excluded_causes
        and state.cause not in _NOT_RELAUNCHED
    )


def create_obsolete(
    ref: identity.TaskRef, row: tuple[int, str | None, object] | None, scheduler_id: str
) -> bool:
    """Whether a try whose create is not yet answered is no longer this scheduler's to launch.

    `row` is its task instance's (try_number, state, queued_by_job_id), None if it is gone. A
    try reset (to scheduled, or cleared), retried under a new number, or queued by another
    scheduler since is obsolete: its pod would run a task nobody waits for.
    """
    if row is None:
        return True
    try_number, state, queued_by = row
    return try_number != ref.try_number or str(queued_by) != scheduler_id or state not in _WANTED_STATES


@dataclass(frozen=True)
class DisposalRule:
    delete_worker_pods: bool = True
    delete_worker_pods_on_failure: bool = False

    def delete(self, state: PodState, never_started: bool) -> bool:
        """Whether a finished pod goes. A pod whose containers never ran goes whatever the settings
        say: kept, it would hold a node's resources for nothing, and kubelet would go on trying to
        start it (a pull that succeeds later would run the task beside its relaunched pod)."""
        never_ran = never_started or not state.ran
        return never_ran or (
            self.delete_worker_pods and (state.verdict == "success" or self.delete_worker_pods_on_failure)
        )


@dataclass
class Entry:
    """One pod this scheduler is responsible for."""

    ref: identity.WorkloadRef
    namespace: str
    name: str
    deadline: float
    launched_at: float = 0.0
    created: bool = False
    created_at: float = 0.0
    # The launcher answered the create (made, or refused for good).
    answered: bool = False
    last_state: PodState | None = None
    # The try's outcome is known (or no longer wanted): nothing more is reported for it.
    settled: bool = False
    # False for pods taken over only to be disposed of: their task is no longer Airflow's concern.
    report: bool = True
    # False for a pod adopted and being relabelled into this scheduler's watch: until the watch
    # has shown it, a relist that misses it says nothing of its fate.
    visible: bool = True

    @property
    def where(self) -> str:
        return f"{self.namespace}/{self.name}"


class PodLedger:
    def __init__(
        self,
        scheduler_id: str,
        disposal: DisposalRule,
        clock: Callable[[], float],
        unclaimed_grace_s: float = 300.0,
    ) -> None:
        self.scheduler_label = identity.safe_label_value(scheduler_id)
        self.disposal = disposal
        self.clock = clock
        self.unclaimed_grace_s = unclaimed_grace_s
        self.pods: dict[PodKey, Entry] = {}
        # Pods of other schedulers as last seen: what adoption takes over.
        self.others: dict[PodKey, Sighting] = {}
        # When each of them was first seen (unclaimed by this scheduler).
        self.unclaimed: dict[PodKey, float] = {}
        # Settled pods that are gone, with when: their events are old news.
        self.gone: dict[PodKey, float] = {}
        # The schedulers Airflow holds alive (None: not yet known, so every other one counts as
        # alive), and since when each other scheduler seen has been known dead.
        self.alive: set[str] | None = None
        self.dead_since: dict[str, float] = {}

    # --- inputs ----------------------------------------------------------------------------
    def launching(self, ref: identity.WorkloadRef, namespace: str, name: str, timeout_s: float) -> None:
        """A create is on its way; the try fails if its pod has not started within `timeout_s`."""
        now = self.clock()
        self.pods[(namespace, name)] = Entry(ref, namespace, name, now + timeout_s, launched_at=now)

    def launched(
        self, namespace: str, name: str, ok: bool, error: str = "", name_taken: bool = False
    ) -> list[Action]:
        """The launcher's answer to a create (409 for this launch's own pod counts as ok: the pod
        is there; for an earlier launch's pod of the same name, the try needs a new name)."""
        entry = self.pods.get((namespace, name))
        if entry is None:
            return []
        entry.answered = True
        if name_taken and not entry.settled:
            del self.pods[(namespace, name)]
            return [NameTaken(entry.ref)]
        if ok and entry.settled and not entry.created:
            return self._remove_late(entry)
        if ok:
            if not entry.created:  # not already seen in the watch, which counts from then
                entry.created, entry.created_at = True, self.clock()
            return []
        return self._settle(
            entry, PodState("failed", f"pod {name} could not be created: {error}", "CreateRefused")
        )

    def observed(self, event: PodEvent) -> list[Action]:
        key = (event.namespace, event.name)
        entry = self.pods.get(key)
        if entry is None:
            if event.ref is None or key in self.gone:
                return []
            if event.scheduler_id != self.scheduler_label:
                self._note_other(event)
                return []
            # Launched by this scheduler's previous incarnation, with the same id.
            entry = Entry(
                event.ref, event.namespace, event.name, self.clock() + DEFAULT_START_TIMEOUT_S, created=True
            )
            self.pods[key] = entry
        if entry.settled:
            if event.deleted:
                self._forget(key)
                return []
            return [] if entry.created else self._remove_late(entry)
        if not entry.created:
            entry.created, entry.created_at = True, self.clock()
        entry.visible = True
        entry.last_state = event.state
        return self._settle(entry, event.state) if event.state.terminal else []

    def resynced(self, resync: Resync) -> list[Action]:
        """A relist's full set of pods: what is missing from it vanished while the watch was out,
        but for what another scheduler adopted meanwhile (`elsewhere`): handed over."""
        # Other schedulers' pods are outside a watcher's list (it selects this scheduler's): what
        # is known of them comes from the sweep (`swept`), and a relist says nothing of them.
        actions: list[Action] = []
        for key, entry in list(self.pods.items()):
            if not (resync.namespace is None or entry.namespace == resync.namespace) or key in resync.names:
                continue
            if not entry.visible:
                continue
            # Only a pod in this scheduler's watch before the list began can have left it: one
            # created, or relabelled here by adoption, since then is simply not in it yet (an
            # adoption's relabelling may even be answered before the list is read).
            if not entry.settled and entry.created and entry.created_at < resync.listed_at:
                if key in resync.elsewhere:
                    # Adopted by another scheduler while the watch was out: handed over, not
                    # vanished (its new holder reports it, and disposes of its pod).
                    actions += self.released(*key)
                    continue
                actions += self._settle(
                    entry, PodState("failed", "pod disappeared while the watch was interrupted", "Vanished")
                )
            # A dropped create still on its way is kept: if it lands, its pod goes (`launched`).
            if entry.settled and (entry.created or entry.answered):
                self._forget(key)
        return actions

    def adopt(self, orphan: Orphan, timeout_s: float) -> list[Action]:
        """Take responsibility for a pod that already exists, judged as last seen (a legacy one is
        out of the watch until the shell has relabelled it: `relabelled`)."""
        key = (orphan.namespace, orphan.name)
        self.others.pop(key, None)
        self.unclaimed.pop(key, None)
        entry = self.pods[key] = Entry(
            orphan.ref,
            *key,
            self.clock() + timeout_s,
            created=True,
            created_at=self.clock(),
            report=orphan.ours,
            # Until its relabelling shows it in this scheduler's watch, a relist that misses it says
            # nothing of its fate (a finished pod is settled here and now).
            visible=orphan.state.terminal,
        )
        entry.last_state = orphan.state
        return self._settle(entry, orphan.state) if orphan.state.terminal else []

    def released(self, namespace: str, name: str) -> list[Action]:
        """Another scheduler adopted this pod: its try is that scheduler's to report and its pod to
        dispose of. Nothing is reported or disposed of here; Airflow is told the try left."""
        entry = self.pods.pop((namespace, name), None)
        if entry is None or entry.settled:
            return []
        self.gone[(namespace, name)] = self.clock()
        return [HandedOver(entry.ref)]

    def relabelling(self, namespace: str, name: str) -> bool:
        """Whether this pod was adopted and its relabelling has not landed yet."""
        entry = self.pods.get((namespace, name))
        return entry is not None and not entry.visible

    def relabelled(self, namespace: str, name: str, found: bool) -> list[Action]:
        """The answer to an adopted pod's relabelling; not found: it went before it was ours."""
        entry = self.pods.get((namespace, name))
        if entry is None or entry.visible:
            return []
        entry.visible = True
        if found:
            # In this scheduler's watch from now: a relist from now on that misses it, misses it.
            entry.created_at = self.clock()
            return []
        return self._settle(
            entry, PodState("failed", "pod disappeared before its adoption was complete", "Vanished")
        )

    def revoke(self, ref: identity.WorkloadRef) -> list[Action]:
        """The try is no longer this scheduler's (Airflow took it back, or it is obsolete): its pod
        goes, a create not yet answered is dropped, and nothing more is reported for it."""
        actions: list[Action] = []
        for entry in self.pods.values():
            if entry.ref == ref and not entry.settled:
                entry.settled, entry.report = True, False
                if entry.created:
                    actions.append(Dispose(entry.namespace, entry.name, delete=True, why="revoked"))
                else:
                    # If the create lands anyway, its pod is deleted as late (`launched`).
                    actions.append(Drop(entry.namespace, entry.name))
        return actions

    def schedulers_alive(self, labels: set[str]) -> None:
        """Which schedulers Airflow holds alive now (`live_schedulers`)."""
        self.alive = labels
        for label in labels:
            self.dead_since.pop(label, None)

    def tick(self) -> list[Action]:
        """What the passing of time decides: tries that did not start in time, unclaimed pods."""
        now = self.clock()
        actions: list[Action] = []
        for entry in self.pods.values():
            if entry.settled or now < entry.deadline:
                continue
            if entry.last_state is None or entry.last_state.verdict == "pending":
                why = f" ({entry.last_state.reason})" if entry.last_state and entry.last_state.reason else ""
                failed = PodState(
                    "failed",
                    "pod did not start within [scheduler] task_queued_timeout, after which its "
                    f"workload token is no longer valid{why}",
                    "StartTimeout",
                )
                actions += self._settle(entry, failed, never_started=True)
        for key, since in list(self.gone.items()):
            if now - since < FORGET_AFTER_S:
                break  # in the order they went
            del self.gone[key]
        for key, since in list(self.unclaimed.items()):
            owner = self.others[key].scheduler_id
            if self.alive is None or owner in self.alive:
                continue  # its scheduler lives (or may): the pod is its own to report and dispose of
            if disposer(self.alive) not in (None, self.scheduler_label):
                continue  # another live scheduler disposes of it: one delete per pod
            dead_since = self.dead_since.setdefault(owner, now)
            seen = self.others[key]
            # An unfinished pod waits out a second grace: Airflow's orphan check has then run
            # since the death, so no adopter is about to claim it; its try was taken back.
            grace = self.unclaimed_grace_s * (1 if seen.state.terminal else 2)
            if now - max(since, dead_since) >= grace:
                del self.unclaimed[key], self.others[key]
                if seen.state.terminal:
                    delete = self.disposal.delete(seen.state, never_started=False)
                    actions.append(Dispose(*key, delete=delete, why="unclaimed"))
                else:
                    actions.append(
                        Dispose(*key, delete=True, why="unclaimed", resource_version=seen.resource_version)
                    )
        return actions

    # --- what is known ---------------------------------------------------------------------
    def claimed(self) -> set[identity.WorkloadRef]:
        """Tries whose outcome is this scheduler's to report: awaited, or reported and perhaps not
        yet taken in by Airflow (a pod is kept until it is gone)."""
        return {e.ref for e in self.pods.values() if e.report}

    def in_flight(self) -> set[identity.WorkloadRef]:
        """Tries whose pods this scheduler launched or adopted and still awaits."""
        return {e.ref for e in self.pods.values() if not e.settled}

    def waiting_for_create(self, older_than_s: float) -> set[identity.TaskRef]:
        """Tries whose create has been on its way (queued in the launcher, or retried) that long."""
        cutoff = self.clock() - older_than_s
        return {
            e.ref
            for e in self.pods.values()
            if isinstance(e.ref, identity.TaskRef)
            and not (e.created or e.settled)
            and e.launched_at <= cutoff
        }

    def swept(self, sightings: Iterable[Sighting]) -> list[Action]:
        """What the sweep found of other schedulers' pods (none of them alive): they replace what
        was known, and those that finished wait out their grace in `tick`."""
        found = {(s.namespace, s.name): s for s in sightings if s.scheduler_id != self.scheduler_label}
        for key in list(self.others):
            if key not in found:
                del self.others[key]
                self.unclaimed.pop(key, None)
        for key, seen in found.items():
            if key in self.pods:
                continue  # adopted here meanwhile
            self.others[key] = seen
            self.unclaimed.setdefault(key, self.clock())
        return []

    def verdicts(self) -> list[str]:
        """The verdicts of the pods awaited, for the pending/running gauges."""
        return [
            e.last_state.verdict for e in self.pods.values() if e.created and not e.settled and e.last_state
        ]

    # --- rules -----------------------------------------------------------------------------
    def _settle(self, entry: Entry, state: PodState, never_started: bool = False) -> list[Action]:
        if entry.settled:
            return []
        entry.settled, entry.last_state = True, state
        actions: list[Action] = []
        if entry.report:
            actions.append(TaskResult(entry.ref, state, entry.where))
        if entry.created:
            actions.append(Dispose(entry.namespace, entry.name, self.disposal.delete(state, never_started)))
        return actions

    def _forget(self, key: PodKey) -> None:
        del self.pods[key]
        self.gone[key] = self.clock()

    def _remove_late(self, entry: Entry) -> list[Action]:
        """A pod that appeared after its try was settled (expired or revoked while its create was on
        its way, or the create's answer was lost): its try is over, it goes."""
        entry.created = True
        return [Dispose(entry.namespace, entry.name, delete=True, why="late")]

    def _note_other(self, event: PodEvent) -> None:
        assert event.ref is not None
        key = (event.namespace, event.name)
        if event.deleted:
            self.others.pop(key, None)
            self.unclaimed.pop(key, None)
            return
        self.others[key] = Sighting(
            event.ref, event.namespace, event.name, event.scheduler_id, event.state, event.resource_version
        )
        self.unclaimed.setdefault(key, self.clock())
