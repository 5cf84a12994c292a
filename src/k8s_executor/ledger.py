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
  create was answered: `create_obsolete`) gets no result, and its create is dropped;
- a try whose pod failed before its task started gets a new pod instead of a failure, while
  it has launches left (`RelaunchRule`), after 1, 2, 4 ... 60 s, and never when too little of
  its time to start is left; whether its task started is the database's word (`questions`,
  then `answered`), and until then its failure is held, not reported;
- a try whose pod the cluster disrupted (`disrupted`) gets a new pod instead of a failure,
  at once and with a new workload token, while it has disruptions left (`disruption_retries`)
  and its task instance is still queued or running with this try on this scheduler: then
  nothing of the task recorded its own end, and the database's state is put back to queued
  (`Requeue`, a compare-and-set the executor carries out, answered in `requeued`); a try that
  fails at last lists every disruption before;
- a try whose pod name an earlier launch's pod still holds is launched under a new name.
The ledger owns each try launched in this process (`Try`: its relaunches, its one start
deadline, how its pod is built, opaque here) as well as each pod. What the executor must
do about a try comes out as an action (`Launch`, `Relaunch`, `HandedOver`, `Withdrawn`);
results (`TaskResult`) are the only thing that goes to Airflow as an end.
One clock, injected: monotonic seconds, shared by every process of the machine
(the watchers stamp their relists with it).
"""

from __future__ import annotations

import datetime
import heapq
import itertools
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from k8s_executor import disruption_guard, identity
from k8s_executor.adoption import held_elsewhere
from k8s_executor.shapes import Orphan, PodEvent, PodSeen, PodState, Resync, SchedulerJob, TaskRow

# How long a pod of this scheduler that it did not launch in this process (its previous
# incarnation's) may stay unstarted, when nothing else sets its deadline.
DEFAULT_START_TIMEOUT_S = 600.0
# How long a settled pod that is gone is remembered, so that a late or repeated event of it is not
# taken for a pod this scheduler has never seen (pod names are never reused for another try).
FORGET_AFTER_S = 3600.0
# How often the executor asks Airflow which schedulers live, and whether creates still on their
# way are still wanted (one query each, whatever the number of pods).
LIVENESS_INTERVAL_S = 10.0
OBSOLETE_CHECK_INTERVAL_S = 2.0
# Only creates held back this long are checked: a try is reset or handed to another scheduler
# after its scheduler missed its health check (30 s by default) or its queued timeout, never in
# the seconds a burst keeps creates waiting for the rate limit. Each is asked about again only
# after as long again, and at most OBSOLETE_ASKED_AT_ONCE in one check, oldest launch first: in a
# burst of 20,000 most creates wait longer than that (a minute and a half at the median), and
# asking about every one of them every 2 s would take most of each sync (bench/RESULTS.md).
OBSOLETE_AFTER_S = 15.0
OBSOLETE_ASKED_AT_ONCE = 1000
# A pod that failed before its task started is launched again after 1, 2, 4 ... at most 60 s (a
# cause that lasts, such as a webhook refusing every create, is not hammered), and not when less
# than this is left of its try's time to start (its workload token expires with it).
RELAUNCH_MAX_DELAY_S = 60.0
RELAUNCH_MIN_TIME_LEFT_S = 10.0

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
    # Kept, but its other containers (sidecars) still run after its task's: stop them too.
    stop: bool = False


@dataclass(frozen=True)
class Drop:
    """Do not send (or send again) the create of this pod: its try is no longer wanted."""

    namespace: str
    name: str


@dataclass(frozen=True)
class Launch:
    """Build and create a new pod for the try now, from `payload` (what its first launch was
    built from), with this long to start: a relaunch come due, or a name an earlier pod holds."""

    ref: identity.WorkloadRef
    payload: object
    start_timeout_s: float


@dataclass(frozen=True)
class Relaunch:
    """The try's pod `pod` failed before its task started (`reason`): a new pod goes out `at`
    (ledger clock), after `delay_s`; it is failed launch `failures` of at most `allowed` (-1:
    unlimited). For the task's log: its own retries are untouched."""

    ref: identity.TaskRef
    pod: str
    reason: str
    at: float
    delay_s: float
    failures: int
    allowed: int


@dataclass(frozen=True)
class HandedOver:
    """The try went to another scheduler: the executor forgets it, reporting nothing."""

    ref: identity.WorkloadRef


@dataclass(frozen=True)
class Withdrawn:
    """The try is no longer this scheduler's (`now`: its task instance as the database holds it,
    None if gone): its create was dropped or its pod deleted, and nothing is reported for it."""

    ref: identity.TaskRef
    now: TaskRow | None


@dataclass(frozen=True)
class Requeue:
    """The try's pod `pod` was disrupted by the cluster (`reason`) while its task instance was
    `ti_state` (queued or running) with this try: put it back to queued, if it still is, and
    answer with a new payload (a fresh workload token) through `requeued`. It is disruption
    `disruption` of at most `allowed`; the task's own retries are untouched."""

    ref: identity.TaskRef
    pod: str
    reason: str
    ti_state: str
    disruption: int
    allowed: int
    # What the try's pods were built from (opaque here): the new one is built from it, afresh.
    payload: object
    # The DisruptionTarget reason (or Evicted: kubelet's eviction without the condition).
    cause: str


Action = TaskResult | Dispose | Drop | Launch | Relaunch | Requeue | HandedOver | Withdrawn


@dataclass(frozen=True)
class Questions:
    """What only Airflow's database can tell the ledger now: whether to ask which schedulers live,
    and the tries whose task instance rows it needs (`answered`)."""

    liveness: bool
    # Tries whose pod failed: did their task start (relaunch, or report the failure)? For a pod
    # the cluster disrupted: is its task instance still queued or running with this try (requeue)?
    started: frozenset[identity.TaskRef]
    # Tries whose create has been on its way a while: are they still this scheduler's?
    obsolete: frozenset[identity.TaskRef]
    # How many pods of each obsolete-check try were launched again when asked: an answer that
    # comes after the try was revoked and launched again speaks of the earlier create, not this one.
    attempts: Mapping[identity.TaskRef, int] = field(default_factory=dict)


def live_schedulers(
    jobs: Iterable[SchedulerJob | tuple[object, str | None, datetime.datetime | None]],
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


def disrupted(state: PodState) -> bool:
    """Whether a pod's end was the cluster's doing, not its task's: a DisruptionTarget condition
    (eviction, preemption, a NoExecute taint, its node gone, kubelet stopping it) or kubelet's
    node-pressure eviction, which older clusters report without the condition. Not kubelet's
    eviction of a pod past its own local storage limits: that is the task's doing, and would be
    again in a new pod."""
    return (
        state.verdict == "failed"
        and (bool(state.disruption) or state.cause == "Evicted")
        and not disruption_guard.own_limit_eviction(state.reason)
    )


def requeue_from(state: PodState, ti_state: str | None) -> bool:
    """Whether a disrupted try whose task instance is `ti_state` (with this try, on this scheduler)
    may be put back to queued. Only while nothing of the task recorded its own end (a task that
    succeeded, or failed by itself, keeps what it recorded): queued, or running. Running, only
    once its container was seen to end: the same try keeps its task instance's id and token, so a
    worker still running on a node cut off from the cluster (the pod gone, its end never reported)
    could write onto the new run; such a try fails, and spends a retry, as before."""
    return ti_state == "queued" or (ti_state == "running" and not state.end_unseen)


def create_obsolete(ref: identity.TaskRef, row: TaskRow | None, scheduler_id: str) -> bool:
    """Whether a try whose create is not yet answered is no longer this scheduler's to launch.

    `row` is its task instance now, None if it is gone. A try reset (to scheduled, or cleared),
    retried under a new number, or queued by another scheduler since is obsolete: its pod would
    run a task nobody waits for.
    """
    if row is None:
        return True
    return (
        row.try_number != ref.try_number
        or str(row.queued_by) != scheduler_id
        or row.state not in _WANTED_STATES
    )


@dataclass(frozen=True)
class RelaunchRule:
    """pod_launch_failure_retries (-1: unlimited) and the failure causes it excludes."""

    retries: int = 0
    excluded_causes: frozenset[str] = frozenset({"Error"})

    def allows(self, failures: int) -> bool:
        return self.retries < 0 or failures < self.retries


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
    # When its try was last asked about as perhaps no longer this scheduler's (`questions`).
    asked_at: float = float("-inf")

    @property
    def where(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass
class Try:
    """One try this process launched, from its first launch to its result (or until it is handed
    over or withdrawn): its pods come and go, its time to start does not."""

    ref: identity.WorkloadRef
    # What its pod is built from: opaque here, handed back in `Launch`.
    payload: object
    # Its time to start, as first given, and when it ends (its workload token expires then).
    timeout_s: float
    deadline: float
    launch_failures: int = 0
    relaunch_at: float | None = None
    # A failure before its task started, or a disruption, held until the database says whether
    # the task started (or, for a disruption, whether it is still queued or running).
    held: TaskResult | None = None
    # Held as a disruption (a requeue may follow), not as a failure before the task started.
    held_as_disruption: bool = False
    # How often its pods may be disrupted and launched again, and each disruption so far (its
    # pod, and the verdict's reason).
    disruption_retries: int = 0
    disruptions: list[tuple[str, str]] = field(default_factory=list)
    # A disruption whose requeue the executor is carrying out (`Requeue`, then `requeued`).
    requeuing: TaskResult | None = None


class PodLedger:
    def __init__(
        self,
        scheduler_id: str,
        disposal: DisposalRule,
        clock: Callable[[], float],
        unclaimed_grace_s: float = 300.0,
        relaunch: RelaunchRule = RelaunchRule(),
        disruption_retries: int = 0,
    ) -> None:
        self.scheduler_id = scheduler_id
        self.scheduler_label = identity.safe_label_value(scheduler_id)
        self.disposal = disposal
        self.relaunch_rule = relaunch
        self.disruption_retries = disruption_retries
        self.clock = clock
        self.unclaimed_grace_s = unclaimed_grace_s
        self.pods: dict[PodKey, Entry] = {}
        self.tries: dict[identity.WorkloadRef, Try] = {}
        # How often each try's pod was launched again (after a failed launch, a name taken, or a
        # revocation): each new pod gets a new name (identity.pod_name), so an earlier pod's end
        # cannot be taken for the new one's. Kept past the try, for a try Airflow queues again.
        self.attempts: Counter[identity.WorkloadRef] = Counter()
        self.next_liveness = 0.0
        self.next_obsolete_check = 0.0
        # Pods of other schedulers as last seen: what adoption takes over.
        self.others: dict[PodKey, PodSeen] = {}
        # When each of them was first seen (unclaimed by this scheduler).
        self.unclaimed: dict[PodKey, float] = {}
        # Settled pods that are gone, with when: their events are old news.
        self.gone: dict[PodKey, float] = {}
        # The schedulers Airflow holds alive (None: not yet known, so every other one counts as
        # alive), and since when each other scheduler seen has been known dead.
        self.alive: set[str] | None = None
        self.dead_since: dict[str, float] = {}
        # Tries Airflow handed over from dead schedulers whose pods are being looked for: claimed
        # here once their rows are read, so Airflow's loop never waits for the read or the list.
        self.adopting: set[identity.WorkloadRef] = set()
        # A hand-over whose rows are still being read: which tries it holds is not known yet, so
        # no dead scheduler's pod is disposed of meanwhile (it may be one of theirs).
        self.rows_unread = False
        # What time can decide, indexed so that `tick` and `questions` cost what is due, not what
        # is held: they run at every sync, and a walk over every pod of a 20,000-pod burst, several
        # times a sync, would be half of the sync's time in Airflow's loop (bench/RESULTS.md).
        # Unsettled pods by start deadline (a heap: an entry settled or replaced since is skipped
        # when it comes up), tries with a relaunch due or a failure held (an ordered set, pruned
        # by `tick`), and pods whose create is not yet answered, in the order they were launched.
        self._deadlines: list[tuple[float, int, Entry]] = []
        self._pushed = itertools.count()
        self._timed: dict[identity.WorkloadRef, None] = {}
        self._creating: dict[PodKey, Entry] = {}

    # --- inputs ----------------------------------------------------------------------------
    def attempt(self, ref: identity.WorkloadRef) -> int:
        """How many pods of this try were launched again: what its next pod's name is built with."""
        return self.attempts[ref]

    def launching(
        self,
        ref: identity.WorkloadRef,
        namespace: str,
        name: str,
        timeout_s: float,
        payload: object = None,
        disruption_retries: int | None = None,
    ) -> None:
        """A create is on its way; the pod fails if it has not started within `timeout_s`. The
        first launch of a try (with what it is built from, `payload`, and the task's own
        `disruption_retries` if it sets one) starts its time to start."""
        now = self.clock()
        if ref not in self.tries:
            allowed = self.disruption_retries if disruption_retries is None else disruption_retries
            self.tries[ref] = Try(ref, payload, timeout_s, now + timeout_s, disruption_retries=allowed)
        self._hold(Entry(ref, namespace, name, now + timeout_s, launched_at=now))

    def abandoned(
        self, ref: identity.WorkloadRef, namespace: str, name: str, timeout_s: float
    ) -> list[Action]:
        """A create sent for a try given up before it reached the ledger: settled from the start, so
        that nothing is reported for it and its pod is deleted as late if the create lands. The try
        itself is untouched: Airflow may have handed it back here since."""
        now = self.clock()
        self._hold(Entry(ref, namespace, name, now + timeout_s, launched_at=now, settled=True, report=False))
        return [Drop(namespace, name)]

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
            return self._launch_again(entry)
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
            if held_elsewhere(event.scheduler_id, self.scheduler_label):
                self._note_other(event)
                return []
            # Launched by this scheduler's previous incarnation, with the same id.
            entry = self._hold(
                Entry(
                    event.ref,
                    event.namespace,
                    event.name,
                    self.clock() + DEFAULT_START_TIMEOUT_S,
                    created=True,
                )
            )
        if entry.settled:
            if event.deleted:
                self._forget(key)
                return []
            return [] if entry.created else self._remove_late(entry)
        if not entry.created:
            entry.created, entry.created_at = True, self.clock()
        entry.visible = True
        entry.last_state = event.state
        if event.state.terminal:
            return self._settle(entry, event.state)
        if event.state.verdict == "pending" and self.clock() >= entry.deadline:
            # Back to pending past its deadline (its heap item may be spent): `tick` fails it.
            self._push_deadline(entry)
        return []

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

    def reading_handed_over(self, unread: bool) -> None:
        """Whether a hand-over's rows are being read: unclaimed pods wait for them (`tick`)."""
        self.rows_unread = unread

    def awaiting_adoption(self, refs: Iterable[identity.WorkloadRef]) -> None:
        """Airflow handed these tries over: they are this scheduler's while their pods are looked
        for (`adoptable`, then `unfound`)."""
        self.adopting.update(refs)

    def adoptable(self, orphans: Iterable[Orphan]) -> list[Orphan]:
        """Of the pods an adoption's list found, those to adopt now: not already held here (an
        earlier adoption's), and for a try handed over, only while it is still awaited (Airflow may
        have taken it back meanwhile)."""
        return [
            o
            for o in orphans
            if (o.namespace, o.name) not in self.pods and (not o.ours or o.ref in self.adopting)
        ]

    def unfound(self, refs: Iterable[identity.WorkloadRef]) -> list[identity.WorkloadRef]:
        """The tries of an adoption whose pods were not found (or not looked for: the list
        failed): no longer awaited here, and to be reset for Airflow to run again."""
        missing = [ref for ref in refs if ref in self.adopting]
        self.adopting.difference_update(missing)
        return missing

    def adopt(self, orphan: Orphan, timeout_s: float) -> list[Action]:
        """Take responsibility for a pod that already exists, judged as last seen (a legacy one is
        out of the watch until the shell has relabelled it: `relabelled`)."""
        assert orphan.ref is not None, "adoption selects pods by the try they run"
        key = (orphan.namespace, orphan.name)
        self.others.pop(key, None)
        self.unclaimed.pop(key, None)
        entry = Entry(
            orphan.ref,
            *key,
            self.clock() + timeout_s,
            created=True,
            created_at=self.clock(),
            report=orphan.ours,
            # Until its relabelling shows it in this scheduler's watch, a relist that misses it says
            # nothing of its fate (a finished pod is settled here and now).
            visible=orphan.state.terminal,
            last_state=orphan.state,
        )
        self._hold(entry)
        actions = self._settle(entry, orphan.state) if orphan.state.terminal else []
        # Last: a try whose adoption failed half-way is still awaited, and so reset (`unfound`).
        if orphan.ours:
            self.adopting.discard(orphan.ref)
        return actions

    def released(self, namespace: str, name: str) -> list[Action]:
        """Another scheduler adopted this pod: its try is that scheduler's to report and its pod to
        dispose of. Nothing is reported or disposed of here; Airflow is told the try left."""
        entry = self.pods.pop((namespace, name), None)
        if entry is None or entry.settled:
            return []
        self.gone[(namespace, name)] = self.clock()
        self.tries.pop(entry.ref, None)
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
            if entry.ref != ref:
                continue
            if entry.settled:
                entry.report = False  # a failure held for a relaunch, say: nothing more to claim
            else:
                entry.settled, entry.report = True, False
                if entry.created:
                    actions.append(Dispose(entry.namespace, entry.name, delete=True, why="revoked"))
                else:
                    # If the create lands anyway, its pod is deleted as late (`launched`).
                    actions.append(Drop(entry.namespace, entry.name))
        self.tries.pop(ref, None)
        self.adopting.discard(ref)
        # Queued again on the same try number, it gets a pod of a new name.
        self.attempts[ref] += 1
        return actions

    def questions(self) -> Questions:
        """What to ask Airflow's database now (then `schedulers_alive` and `answered`)."""
        now = self.clock()
        liveness = now >= self.next_liveness
        if liveness:
            self.next_liveness = now + LIVENESS_INTERVAL_S
        obsolete: frozenset[identity.TaskRef] = frozenset()
        if now >= self.next_obsolete_check:
            self.next_obsolete_check = now + OBSOLETE_CHECK_INTERVAL_S
            obsolete = self._ask_if_obsolete(now)
        return Questions(liveness, self.holding(), obsolete, {ref: self.attempts[ref] for ref in obsolete})

    def _ask_if_obsolete(self, now: float) -> frozenset[identity.TaskRef]:
        cutoff = now - OBSOLETE_AFTER_S
        asked: set[identity.TaskRef] = set()
        for entry in self._waiting(cutoff):
            if len(asked) >= OBSOLETE_ASKED_AT_ONCE:
                break
            if isinstance(entry.ref, identity.TaskRef) and entry.asked_at <= cutoff:
                entry.asked_at = now
                asked.add(entry.ref)
        return frozenset(asked)

    def holding(self) -> frozenset[identity.TaskRef]:
        """Tries whose failure (or disruption) is held until the database says whether their task
        started (or is still queued or running)."""
        return frozenset(
            ref
            for ref in self._timed
            if isinstance(ref, identity.TaskRef)
            and (t := self.tries.get(ref)) is not None
            and t.held is not None
        )

    def answered(
        self,
        rows: Mapping[identity.TaskRef, TaskRow | None],
        attempts: Mapping[identity.TaskRef, int] | None = None,
    ) -> list[Action]:
        """The database's word on tries `questions` named: a held failure becomes a relaunch or
        is reported; a create still on its way for a try no longer this scheduler's is withdrawn,
        unless the try was launched again since it was asked about (`Questions.attempts`).
        A try missing from `rows` was not read, and is asked about again."""
        actions: list[Action] = []
        waiting = self.waiting_for_create(0.0)
        for ref, row in rows.items():
            t = self.tries.get(ref)
            if t is not None and t.held is not None and t.held_as_disruption:
                actions += self._decide_requeue(t, row)
            elif t is not None and t.held is not None:
                actions += self._decide_relaunch(t, row)
            elif attempts is not None and attempts.get(ref, self.attempts[ref]) != self.attempts[ref]:
                continue
            elif ref in waiting and create_obsolete(ref, row, self.scheduler_id):
                actions += self.revoke(ref)
                actions.append(Withdrawn(ref, row))
        return actions

    def unanswerable(self, refs: Iterable[identity.TaskRef]) -> list[Action]:
        """The database could not be read: whether these tries' tasks started is not known, and a
        new pod could run a task that did. Their held failures are reported as they are."""
        actions: list[Action] = []
        for ref in refs:
            t = self.tries.get(ref)
            if t is not None and t.held is not None:
                actions.append(self._with_disruptions(t, t.held))
                del self.tries[ref]
        return actions

    def requeued(self, ref: identity.TaskRef, payload: object | None) -> list[Action]:
        """The executor's answer to `Requeue`: the task instance is queued again and its new pod is
        built from `payload`, or (None) it was no longer queued or running with this try, and the
        disruption is the try's end."""
        t = self.tries.get(ref)
        if t is None or t.requeuing is None:
            return []
        result, t.requeuing = t.requeuing, None
        if payload is None:
            del self.tries[ref]
            return [self._with_disruptions(t, result)]
        t.disruptions.append((result.pod, result.state.reason))
        t.payload = payload
        # A fresh workload token: the try has its whole time to start again.
        t.deadline = self.clock() + t.timeout_s
        self.attempts[ref] += 1
        return [Launch(ref, payload, t.timeout_s)]

    def schedulers_alive(self, labels: set[str]) -> None:
        """Which schedulers Airflow holds alive now (`live_schedulers`)."""
        self.alive = labels
        for label in labels:
            self.dead_since.pop(label, None)

    def tick(self) -> list[Action]:
        """What the passing of time decides: tries that did not start in time, unclaimed pods."""
        now = self.clock()
        actions: list[Action] = []
        for ref in list(self._timed):
            t = self.tries.get(ref)
            if t is None or (t.relaunch_at is None and t.held is None):
                del self._timed[ref]
            elif t.relaunch_at is not None and now >= t.relaunch_at:
                t.relaunch_at = None
                self.attempts[t.ref] += 1
                actions.append(Launch(t.ref, t.payload, max(t.deadline - now, RELAUNCH_MIN_TIME_LEFT_S)))
            elif (
                t.held is not None
                and not t.held_as_disruption
                and t.deadline - now <= RELAUNCH_MIN_TIME_LEFT_S
            ):
                # No answer came while a new pod could still have started: the failure stands.
                actions.append(self._with_disruptions(t, t.held))
                del self.tries[t.ref]
        while self._deadlines and self._deadlines[0][0] <= now:
            entry = heapq.heappop(self._deadlines)[2]
            if entry.settled or self.pods.get((entry.namespace, entry.name)) is not entry:
                continue
            # A pod running at its deadline is left; if it is seen pending again, `observed`
            # puts it back.
            if entry.last_state is None or entry.last_state.verdict == "pending":
                why = f" ({entry.last_state.reason})" if entry.last_state and entry.last_state.reason else ""
                failed = PodState(
                    "failed",
                    "pod did not start within [scheduler] task_queued_timeout, after which its "
                    f"workload token is no longer valid{why}",
                    "StartTimeout",
                )
                actions += self._settle(entry, failed, never_started=True)
        forgotten = []
        for key, since in self.gone.items():
            if now - since < FORGET_AFTER_S:
                break  # in the order they went
            forgotten.append(key)
        for key in forgotten:
            del self.gone[key]
        for key, since in list(self.unclaimed.items()):
            if self.rows_unread:
                break  # the pod may be a try's just handed here; decided once the rows are read
            owner = self.others[key].scheduler_id
            if self.others[key].ref in self.adopting:
                continue  # its try was handed here: its pod is being looked for, to be adopted
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
        """Tries whose outcome is this scheduler's to report: awaited (a relaunch due included), or
        reported and perhaps not yet taken in by Airflow (a pod is kept until it is gone), and
        handed over with their pods still being looked for."""
        return {e.ref for e in self.pods.values() if e.report} | self.tries.keys() | self.adopting

    def in_flight(self) -> set[identity.WorkloadRef]:
        """Tries whose pods this scheduler launched or adopted (or is looking for) and still awaits."""
        return {e.ref for e in self.pods.values() if not e.settled} | self.tries.keys() | self.adopting

    def waiting_for_create(self, older_than_s: float) -> set[identity.TaskRef]:
        """Tries whose create has been on its way (queued in the launcher, or retried) that long."""
        return {
            e.ref for e in self._waiting(self.clock() - older_than_s) if isinstance(e.ref, identity.TaskRef)
        }

    def _waiting(self, launched_by: float) -> list[Entry]:
        """The pods whose create is on its way, launched by then, oldest first (the index is
        pruned of those answered on the way)."""
        waiting: list[Entry] = []
        answered: list[PodKey] = []
        for key, e in self._creating.items():
            if e.created or e.settled or self.pods.get(key) is not e:
                answered.append(key)
            elif e.launched_at > launched_by:
                break  # in the order they were launched
            else:
                waiting.append(e)
        for key in answered:
            del self._creating[key]
        return waiting

    def swept(self, sightings: Iterable[PodSeen]) -> list[Action]:
        """What the sweep found of other schedulers' pods (none of them alive): they replace what
        was known, and those that finished wait out their grace in `tick`."""
        found = {
            s.key: s
            for s in sightings
            if s.ref is not None and held_elsewhere(s.scheduler_id, self.scheduler_label)
        }
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
            actions += self._conclude(TaskResult(entry.ref, state, entry.where))
        if entry.created:
            delete = self.disposal.delete(state, never_started)
            actions.append(Dispose(entry.namespace, entry.name, delete, stop=state.lingering and not delete))
        return actions

    def _conclude(self, result: TaskResult) -> list[Action]:
        """A pod's end is its try's, unless the try may get a new pod: then the failure is held
        until the database says whether the task started."""
        t = self.tries.get(result.ref)
        if t is not None and (self._may_requeue(t, result.state) or self._may_relaunch(t, result.state)):
            t.held, t.held_as_disruption = result, self._may_requeue(t, result.state)
            self._timed[t.ref] = None
            return []
        self.tries.pop(result.ref, None)
        return [self._with_disruptions(t, result) if t is not None else result]

    def _may_requeue(self, t: Try, state: PodState) -> bool:
        # Tries only, built here: a new pod needs what the first was built from.
        return (
            isinstance(t.ref, identity.TaskRef)
            and t.payload is not None
            and disrupted(state)
            and len(t.disruptions) < t.disruption_retries
        )

    def _decide_requeue(self, t: Try, row: TaskRow | None) -> list[Action]:
        held = t.held
        assert held is not None and isinstance(t.ref, identity.TaskRef)
        t.held = None
        if (
            row is None
            or row.try_number != t.ref.try_number
            or str(row.queued_by) != self.scheduler_id
            or not requeue_from(held.state, row.state)
        ):
            # Its task recorded its own end (it finished within its pod's grace period, or failed
            # itself when told to stop), its worker may still run, or the try is no longer this
            # scheduler's.
            del self.tries[t.ref]
            return [self._with_disruptions(t, held)]
        t.requeuing = held
        return [
            Requeue(
                t.ref,
                held.pod,
                held.state.reason,
                str(row.state),
                len(t.disruptions) + 1,
                t.disruption_retries,
                t.payload,
                held.state.disruption or held.state.cause,
            )
        ]

    @staticmethod
    def _with_disruptions(t: Try, result: TaskResult) -> TaskResult:
        """A try's failure, with each disruption its earlier pods met."""
        if not t.disruptions or result.state.verdict != "failed":
            return result
        earlier = "; ".join(f"({n}) pod {pod}: {reason}" for n, (pod, reason) in enumerate(t.disruptions, 1))
        reason = (
            f"{result.state.reason} [after {len(t.disruptions)} disruption(s) of this try's earlier "
            f"pods, each launched again (disruption_retries {t.disruption_retries}): {earlier}]"
        )
        return TaskResult(result.ref, replace(result.state, reason=reason), result.pod)

    def _may_relaunch(self, t: Try, state: PodState) -> bool:
        # Tries only: a callback or a connection test has no task instance that could say whether
        # it started. A start that timed out cannot be helped by a new pod.
        return (
            isinstance(t.ref, identity.TaskRef)
            and t.payload is not None
            and state.verdict == "failed"
            and state.cause not in self.relaunch_rule.excluded_causes
            and state.cause not in _NOT_RELAUNCHED
            and self.relaunch_rule.allows(t.launch_failures)
            and t.deadline - self.clock() > RELAUNCH_MIN_TIME_LEFT_S
        )

    def _decide_relaunch(self, t: Try, row: TaskRow | None) -> list[Action]:
        held = t.held
        assert held is not None and isinstance(t.ref, identity.TaskRef)
        t.held = None
        now = self.clock()
        if (
            row is None
            or row.try_number != t.ref.try_number
            # Handed to another scheduler since: its pod is that scheduler's concern.
            or str(row.queued_by) != self.scheduler_id
            or not relaunch(held.state, row.state, self.relaunch_rule.excluded_causes)
            or t.deadline - now <= RELAUNCH_MIN_TIME_LEFT_S
        ):
            del self.tries[t.ref]
            return [self._with_disruptions(t, held)]
        t.launch_failures += 1
        delay_s = min(RELAUNCH_MAX_DELAY_S, 2.0 ** (t.launch_failures - 1))
        t.relaunch_at = now + delay_s
        self._timed[t.ref] = None
        return [
            Relaunch(
                t.ref,
                held.pod,
                held.state.reason,
                t.relaunch_at,
                delay_s,
                t.launch_failures,
                self.relaunch_rule.retries,
            )
        ]

    def _launch_again(self, taken: Entry) -> list[Action]:
        """A new pod name for a try queued again on the same try number (a sensor rescheduled, a
        deferred task resumed) whose earlier pod still has the name; its time to start anew."""
        ref = taken.ref
        self.attempts[ref] += 1
        t = self.tries.get(ref)
        if t is None or t.payload is None:
            # Launched with nothing to build a new pod from: the try cannot go on.
            self.tries.pop(ref, None)
            reason = f"pod {taken.name} could not be created: an earlier pod of this try holds its name"
            return [TaskResult(ref, PodState("failed", reason, "CreateRefused", ran=False), taken.where)]
        t.deadline = self.clock() + t.timeout_s
        return [Launch(ref, t.payload, t.timeout_s)]

    def _hold(self, entry: Entry) -> Entry:
        """A pod this scheduler is now responsible for, in the indexes `tick` reads."""
        key = (entry.namespace, entry.name)
        self.pods[key] = entry
        if not entry.settled:
            self._push_deadline(entry)
            if not entry.created:
                # Last in launch order, even if an earlier entry of the name is still indexed.
                self._creating.pop(key, None)
                self._creating[key] = entry
        return entry

    def _push_deadline(self, entry: Entry) -> None:
        heapq.heappush(self._deadlines, (entry.deadline, next(self._pushed), entry))

    def _forget(self, key: PodKey) -> None:
        del self.pods[key]
        self.gone[key] = self.clock()

    def _remove_late(self, entry: Entry) -> list[Action]:
        """A pod that appeared after its try was settled (expired or revoked while its create was on
        its way, abandoned, or the create's answer was lost): its try is over, it goes."""
        entry.created = True
        return [Dispose(entry.namespace, entry.name, delete=True, why="late")]

    def _note_other(self, event: PodEvent) -> None:
        assert event.ref is not None
        key = (event.namespace, event.name)
        if event.deleted:
            self.others.pop(key, None)
            self.unclaimed.pop(key, None)
            return
        self.others[key] = event
        self.unclaimed.setdefault(key, self.clock())
