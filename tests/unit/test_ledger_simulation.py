"""The pod ledger under seeded histories of what the API server, the launcher and Airflow do.

Each seed draws a history: creates answered late, twice (409) or refused; watch events
duplicated, interleaved across pods, lost to a 410 and made up by a relist; pods that
succeed, fail, never start, or are deleted by hand; pods that fail before their task starts
once (relaunched) or every time (past the launch budget); pods disrupted by the cluster while
their task runs, once (launched again) or every time (past `disruption_retries`), or just after
their task recorded its own end (the race a relaunch must lose); revocations; scheduler restarts with
adoption by a successor; a neighbour scheduler, alive throughout, whose pods share the watch
(Airflow's HA mode) and which may adopt a running pod of the live scheduler (a hand-over);
Airflow's database answering the ledger's questions late or not at all. The invariants are
checked as it goes and at the end:
- every try accepted is reported exactly once, with the verdict its pod earned, unless Airflow
  revoked it or (after a restart) took it back because no pod of it was ever made, or the
  neighbour adopted it;
- a try whose pods fail before its task starts is launched again while it has launches and
  time left, never past its budget, and its failure is not reported while it had both;
- a try whose pod is disrupted is launched again while it has disruptions left and its task
  instance is still queued or running with it, never past its budget and never once its task
  recorded its own end; its final failure lists every disruption before;
- no pod is disposed of twice, and none of a scheduler that still lives, but by itself;
- nothing waits for ever: once time has run past every deadline, every try has its result.
A failing seed's history is printed, and reproduces with `simulate(seed)`.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest

from k8s_executor import identity
from k8s_executor.adoption import select_orphans
from k8s_executor.ledger import (
    RELAUNCH_MIN_TIME_LEFT_S,
    Action,
    DisposalRule,
    Dispose,
    Drop,
    HandedOver,
    Launch,
    PodLedger,
    Relaunch,
    RelaunchRule,
    Requeue,
    TaskResult,
    Withdrawn,
)
from k8s_executor.shapes import PodEvent, PodSeen, Released, Resync, TaskRow
from k8s_executor.state_mapping import PodState

NAMESPACE = "ns"
START_TIMEOUT_S = 60.0
UNCLAIMED_GRACE_S = 120.0
ADOPTION_DELAY_S = 20.0
# Its label sorts after every successor's ("s<n>"), so the successor is the one that disposes of
# dead schedulers' unclaimed pods (ledger.disposer).
NEIGHBOUR = "z1"
FATES = (
    "success",
    "failure",
    "unstartable",
    "refused",
    "deleted",
    "relaunched",
    "unlaunchable",
    "disrupted",
    "overdisrupted",
    "raced",
    "cutoff",
)
LAUNCH_RETRIES = 2
DISRUPTION_RETRIES = 2
# Evicted while its task ran: the cluster's doing, its DisruptionTarget says so.
DISRUPTED = PodState(
    "failed", "pod was deleted while running: evicted", "Deleted", disruption="EvictionByEvictionAPI"
)
# Deleted by the taint manager from a node cut off from the cluster: its container's end never
# reported, its worker may run on.
CUT_OFF = PodState(
    "failed",
    "pod was deleted while running",
    "Deleted",
    disruption="DeletionByTaintManager",
    end_unseen=True,
)
PENDING = PodState("pending", "")
RUNNING = PodState("running", "")
FINAL = {"success": PodState("success", ""), "failure": PodState("failed", "exit code 1", "Error")}
# A failure before the task started: a new pod may help.
UNPULLED = PodState("failed", "could not pull image", "ErrImagePull", ran=False)


@dataclass
class Try:
    ref: identity.TaskRef
    name: str
    fate: str
    launched: bool = False
    launched_by: str = ""
    revoked: bool = False
    taken_back: bool = False
    handed: bool = False  # adopted by the live neighbour: its end is the neighbour's to report
    finished: bool = False  # its task ended in its pod (success or failure): an end not to lose
    started: bool = False  # its task runs in one of its pods (the database says `running`)
    recorded: str | None = None  # the end its task recorded itself (the database says it)
    requeues: int = 0  # disruptions after which it was put back to queued
    disrupted: bool = False  # one of its pods was disrupted
    cut_off: bool = False  # its running pod went with its container's end unseen
    unanswered: bool = False  # the database could not be read when its failed launch was asked about
    launched_at: float = 0.0
    pods: int = 0  # pods launched for it


@dataclass
class Pod:
    name: str
    ref: identity.TaskRef
    scheduler: str
    state: PodState = PENDING
    rv: int = 0
    # Adopted from a live scheduler by the neighbour: out of that scheduler's watch (its selector
    # names the scheduler), so none of its news reaches it any more.
    stolen: bool = False


@dataclass
class Scheduler:
    id: str
    ledger: PodLedger
    # The launcher's answers not yet read: pod name, created, error, name taken by an earlier pod.
    acks: list[tuple[str, bool, str, bool]] = field(default_factory=list)


class Violation(AssertionError):
    pass


class World:
    def __init__(self, seed: int, ledger_class: type[PodLedger] = PodLedger) -> None:
        self.rng = random.Random(seed)
        self.ledger_class = ledger_class
        self.now = 0.0
        self.history: list[str] = []
        self.rules = DisposalRule(
            delete_worker_pods=self.rng.random() < 0.7, delete_worker_pods_on_failure=self.rng.random() < 0.5
        )
        self.tries = [
            Try(identity.TaskRef("dag", f"t{i}", "run", 1), f"pod-{i}", self.rng.choice(FATES))
            for i in range(self.rng.randint(1, 6))
        ]
        self.pods: dict[str, Pod] = {}  # what the API server holds and the watch selects
        # What the watcher sent and the scheduler has not read: events, and a relist's set of names.
        self.stream: list[PodEvent | Resync | Released] = []
        self.results: dict[identity.TaskRef, list[PodState]] = {}
        self.disposed: Counter[str] = Counter()
        self.reported_at: dict[object, float] = {}
        self.names_taken = 0
        self.dead: set[str] = set()
        self.generation = 0
        self.adopt_at: float | None = None
        self.scheduler = self._new_scheduler()
        # The neighbour's pods: they run their course, and are its own to report and dispose of.
        for i in range(self.rng.randint(0, 3)):
            pod = self.pods[f"neighbour-{i}"] = Pod(
                f"neighbour-{i}", identity.TaskRef("dag", f"n{i}", "run", 1), NEIGHBOUR
            )
            self._send(pod, PENDING)

    # --- the scheduler ------------------------------------------------------------------------
    def _new_scheduler(self) -> Scheduler:
        self.generation += 1
        ledger = self.ledger_class(
            f"s{self.generation}",
            self.rules,
            clock=lambda: self.now,
            unclaimed_grace_s=UNCLAIMED_GRACE_S,
            relaunch=RelaunchRule(LAUNCH_RETRIES),
            disruption_retries=DISRUPTION_RETRIES,
        )
        # Airflow holds alive the scheduler that runs and the neighbour, and no other.
        ledger.schedulers_alive({f"s{self.generation}", NEIGHBOUR})
        return Scheduler(f"s{self.generation}", ledger)

    def carry_out(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, TaskResult):
                self.note(f"  -> report {action.ref.task_id} {action.state.verdict}")
                self.results.setdefault(action.ref, []).append(action.state)
                self.reported_at.setdefault(action.ref, self.now)
                continue
            if isinstance(action, HandedOver):
                t = self._by_ref(action.ref)
                if not t.handed:
                    raise Violation(f"{action.ref.task_id} handed over, yet no other scheduler adopted it")
                self.note(f"  -> handed over {action.ref.task_id}")
                continue
            if isinstance(action, Relaunch):
                self.note(f"  -> relaunch {action.ref.task_id} at {action.at:.1f} ({action.failures})")
                if action.failures > LAUNCH_RETRIES:
                    raise Violation(f"{action.ref.task_id} relaunched past its budget")
                continue
            if isinstance(action, Launch):
                self._launch_pod(self._by_ref(action.ref), action.start_timeout_s)
                continue
            if isinstance(action, Requeue):
                self._requeue(action)
                continue
            if isinstance(action, Withdrawn):
                t = self._by_ref(action.ref)
                if not (t.revoked or t.taken_back):
                    raise Violation(f"{t.name} withdrawn while it was still this scheduler's")
                self.note(f"  -> withdrawn {t.name}")
                continue
            if isinstance(action, Drop):
                # The create may have landed already (here it always has): its pod is then late.
                self.note(f"  -> drop the create of {action.name}")
                continue
            self.note(f"  -> dispose {action.name} delete={action.delete} ({action.why})")
            self.disposed[action.name] += 1
            pod = self.pods.get(action.name)
            if pod is None:
                continue
            if pod.scheduler not in self.dead and pod.scheduler != self.scheduler.id:
                raise Violation(f"{action.name} of live scheduler {pod.scheduler} disposed of by another")
            # Deleted, or labelled done and so out of the watch's selector: gone either way.
            self._gone(pod)

    def _requeue(self, action: Requeue) -> None:
        """The executor's compare-and-set: the task instance back to queued if it still is what
        the ledger was told."""
        t = self._by_ref(action.ref)
        if action.disruption > DISRUPTION_RETRIES:
            raise Violation(f"{t.name} requeued for disruption {action.disruption}, past its budget")
        if t.recorded:
            raise Violation(f"{t.name} requeued although its task recorded {t.recorded}")
        if t.cut_off and action.ti_state == "running":
            raise Violation(f"{t.name} requeued while its worker may still run (its end unseen)")
        row = self._row(t)
        ok = row is not None and row.state == action.ti_state and row.queued_by == self.scheduler.id
        self.note(f"  -> requeue {t.name} from {action.ti_state}: {ok}")
        if ok:
            t.started, t.requeues = False, t.requeues + 1
        self.carry_out(self.scheduler.ledger.requeued(action.ref, t.name if ok else None))

    def _gone(self, pod: Pod) -> None:
        del self.pods[pod.name]
        state = pod.state if pod.state.terminal else PodState("failed", "pod was deleted")
        self._send(pod, state, deleted=True)

    def _send(self, pod: Pod, state: PodState, deleted: bool = False) -> None:
        pod.rv += 1
        if pod.stolen:
            return
        self.stream.append(
            PodEvent(NAMESPACE, pod.name, pod.ref, pod.scheduler, state, str(pod.rv), deleted=deleted)
        )

    def note(self, line: str) -> None:
        self.history.append(f"{self.now:7.1f} {line}")

    # --- steps --------------------------------------------------------------------------------
    def step(self) -> None:
        # Time never stands still between two things happening (a relist is stamped before it is sent).
        self.now += 0.001
        choices = ["launch", "ack", "progress", "deliver", "deliver", "deliver", "time", "relist", "revoke"]
        choices += ["database", "database"]
        if self.rng.random() < 0.04:
            choices.append("restart")
        if self.rng.random() < 0.1:
            choices.append("steal")
        getattr(self, f"_{self.rng.choice(choices)}")()
        if self.adopt_at is not None and self.now >= self.adopt_at:
            self._adopt()

    def _launch(self) -> None:
        waiting = [t for t in self.tries if not t.launched]
        if not waiting:
            return
        t = self.rng.choice(waiting)
        t.launched, t.launched_by, t.launched_at = True, self.scheduler.id, self.now
        self.note(f"launch {t.name} ({t.fate})")
        self._launch_pod(t, START_TIMEOUT_S)

    def _launch_pod(self, t: Try, timeout_s: float) -> None:
        """The shell's launch: a pod named after the try and its attempt, created (or refused)."""
        attempt = self.scheduler.ledger.attempt(t.ref)
        name = t.name if attempt == 0 else f"{t.name}-a{attempt}"
        t.pods += 1
        if t.pods > 1:
            self.note(f"  launch {name} again")
        if t.pods > 1 + LAUNCH_RETRIES + t.requeues:
            raise Violation(f"{t.name} launched {t.pods} times, past its budget")
        self.scheduler.ledger.launching(t.ref, NAMESPACE, name, timeout_s, payload=t.name)
        if t.fate == "refused":
            self.scheduler.acks.append((name, False, "pods is forbidden: exceeded quota", False))
            return
        if attempt == 0 and self.rng.random() < 0.05:
            # An earlier launch's pod of the same try (queued again on its try number) holds the
            # name: 409, and this launch counts for nothing.
            t.pods -= 1
            self.scheduler.acks.append((name, False, "pods already exists", True))
            return
        pod = self.pods[name] = Pod(name, t.ref, self.scheduler.id)
        self._send(pod, PENDING)
        self.scheduler.acks.append((name, True, "", False))
        if self.rng.random() < 0.2:  # the create was retried and met 409: answered twice
            self.scheduler.acks.append((name, True, "", False))

    def _ack(self) -> None:
        if self.scheduler.acks:
            name, ok, error, taken = self.scheduler.acks.pop(self.rng.randrange(len(self.scheduler.acks)))
            self.note(f"ack {name} ok={ok}{' name taken' if taken else ''}")
            if taken:
                self.names_taken += 1
            self.carry_out(self.scheduler.ledger.launched(NAMESPACE, name, ok, error, name_taken=taken))

    def _progress(self) -> None:
        moving = [p for p in self.pods.values() if not p.state.terminal]
        if not moving:
            return
        pod = self.rng.choice(moving)
        if pod.scheduler == NEIGHBOUR:
            pod.state = RUNNING if pod.state.verdict == "pending" else FINAL["success"]
            self.note(f"{pod.name} {pod.state.verdict}")
            self._send(pod, pod.state)
            return
        t = self._by_ref(pod.ref)
        if t.fate == "unstartable":
            return
        if pod.state.verdict == "pending" and (
            t.fate == "unlaunchable" or (t.fate == "relaunched" and pod.name == t.name)
        ):
            pod.state = UNPULLED  # its task never starts in this pod
            self.note(f"{pod.name} failed before its task started")
            self._send(pod, UNPULLED)
            return
        if pod.state.verdict == "pending":
            t.started = True
            pod.state = RUNNING
            self.note(f"{pod.name} running")
            self._send(pod, RUNNING)
        elif t.fate == "cutoff" and not t.disrupted:
            t.disrupted = t.cut_off = True
            pod.state = CUT_OFF
            self.note(f"{pod.name} deleted with its node cut off")
            self._send(pod, CUT_OFF)
        elif t.fate == "overdisrupted" or (t.fate in ("disrupted", "raced") and not t.disrupted):
            t.disrupted = True
            if t.fate == "raced":
                # Its task ended and said so through the API just before the eviction's SIGKILL.
                t.recorded = "success"
            pod.state = DISRUPTED
            self.note(f"{pod.name} disrupted{' after its task recorded success' if t.recorded else ''}")
            self._send(pod, DISRUPTED)
        elif t.fate == "deleted":
            # Its task did not end: a successor that finds no pod hands it back to Airflow to run again.
            self.note(f"{pod.name} deleted by hand")
            self._gone(pod)
        else:
            pod.state = FINAL["failure" if t.fate == "failure" else "success"]
            t.finished = True
            self.note(f"{pod.name} {pod.state.verdict}")
            self._send(pod, pod.state)

    def _deliver(self) -> None:
        if not self.stream:
            return
        # Events of one pod keep their order (one watch stream); pods interleave. A relist's
        # names come after the pods it listed, before what the watch sent after it.
        first: dict[str, int] = {}
        for i, e in enumerate(self.stream):
            if isinstance(e, Resync):
                first.setdefault("", i)
                break
            first.setdefault(e.name, i)
        event = self.stream.pop(self.rng.choice(list(first.values())))
        if isinstance(event, Released):
            self.note(f"released {event.name}")
            self.carry_out(self.scheduler.ledger.released(event.namespace, event.name))
            return
        if isinstance(event, Resync):
            self.note(
                f"relist of {self.now - event.listed_at:.3f} s ago: {sorted(n for _, n in event.names)}"
            )
            self.carry_out(self.scheduler.ledger.resynced(event))
            return
        self.note(f"event {event.name} {event.state.verdict}{' deleted' if event.deleted else ''}")
        self.carry_out(self.scheduler.ledger.observed(event))
        if self.rng.random() < 0.1:
            self.note(f"event {event.name} again")
            self.carry_out(self.scheduler.ledger.observed(event))

    def _time(self) -> None:
        jump = self.rng.choice((1.0, 5.0, 30.0, 70.0))
        if jump >= START_TIMEOUT_S / 2:
            # Over half a minute every pod that can start does, and the watch and the launcher
            # are heard: a try fails for not starting only when its pod truly cannot.
            # (A pod launched again meanwhile, under a new name, starts too, and so does one a
            # database answer launched.)
            while True:
                self._hear_everything()
                self._database()
                startable = [
                    p
                    for p in self.pods.values()
                    if p.scheduler != NEIGHBOUR
                    and p.state.verdict == "pending"
                    and self._by_ref(p.ref).fate != "unstartable"
                ]
                if not (startable or self.stream or self.scheduler.acks):
                    break
                for pod in startable:
                    self._progress_pod(pod)
        self.now += jump
        self.note("tick")
        self._tick()

    def _tick(self) -> None:
        """Time passes for the ledger, which must then have decided everything that was due: its
        indexes (`tick` looks only at what they say is due) agree with a walk over all it holds."""
        ledger = self.scheduler.ledger
        self.carry_out(ledger.tick())
        left = [
            f"pod {e.name} unstarted past its deadline"
            for e in ledger.pods.values()
            if not e.settled
            and self.now >= e.deadline
            and (e.last_state is None or e.last_state.verdict == "pending")
        ]
        for t in ledger.tries.values():
            if t.relaunch_at is not None and self.now >= t.relaunch_at:
                left.append(f"{t.ref}'s relaunch")
            elif (
                t.held is not None
                and not t.held_as_disruption
                and t.deadline - self.now <= RELAUNCH_MIN_TIME_LEFT_S
            ):
                left.append(f"{t.ref}'s held failure, its time to start over")
        if left:
            raise Violation(f"tick at {self.now} left what was due: {left}")

    def _hear_everything(self) -> None:
        while self.stream or self.scheduler.acks:
            self._ack()
            self._deliver()

    def _progress_pod(self, pod: Pod) -> None:
        t = self._by_ref(pod.ref)
        if t.fate == "unlaunchable" or (t.fate == "relaunched" and pod.name == t.name):
            pod.state = UNPULLED
            self.note(f"{pod.name} failed before its task started")
            self._send(pod, UNPULLED)
            return
        t.started = True
        pod.state = RUNNING
        self.note(f"{pod.name} running")
        self._send(pod, RUNNING)

    def _database(self) -> None:
        """Airflow's database answers what the ledger asks (or, now and then, cannot be read)."""
        questions = self.scheduler.ledger.questions()
        asked = questions.started | questions.obsolete
        if not asked:
            return
        if self.rng.random() < 0.2:
            # The executor cannot tell whether those tasks started: their failures stand.
            self.note(f"database not read for {sorted(r.task_id for r in asked)}")
            for ref in questions.started:
                self._by_ref(ref).unanswered = True
            self.carry_out(self.scheduler.ledger.unanswerable(questions.started))
            return
        rows = {ref: self._row(self._by_ref(ref)) for ref in asked}
        self.note(f"database answers {sorted((r.task_id, row and row.state) for r, row in rows.items())}")
        self.carry_out(self.scheduler.ledger.answered(rows))

    def _row(self, t: Try) -> TaskRow | None:
        """Its task instance as the database holds it now."""
        if t.revoked or t.taken_back:
            return TaskRow(1, "scheduled", None)
        if t.handed:
            return TaskRow(1, "running", NEIGHBOUR)
        return TaskRow(1, t.recorded or ("running" if t.started else "queued"), t.launched_by)

    def _steal(self) -> None:
        """The neighbour adopts a running pod of the live scheduler (which it took for dead)."""
        running = [
            p
            for p in self.pods.values()
            if p.scheduler == self.scheduler.id
            and p.state == RUNNING
            and p.ref in self._unreported_refs()
            # Airflow hands a try over after its scheduler missed heartbeats for half a minute and
            # more: by then that scheduler had read its pod's create and start.
            and (entry := self.scheduler.ledger.pods.get((NAMESPACE, p.name))) is not None
            and entry.last_state == RUNNING
        ]
        if not running:
            return
        pod = self.rng.choice(running)
        t = self._by_ref(pod.ref)
        t.handed = True
        pod.scheduler, pod.stolen = NEIGHBOUR, True
        self.note(f"{pod.name} adopted by {NEIGHBOUR}")
        # It leaves this scheduler's watch: the watcher reads it as it is now, held elsewhere.
        self.stream.append(Released(NAMESPACE, pod.name, NEIGHBOUR))

    def _relist(self) -> None:
        """A 410: what the stream still held is lost. The watcher lists this scheduler's pods
        (each pod's state as listed, then the set of names, in that order on the one queue), then
        the pods other schedulers hold; the scheduler reads them when it comes to them, maybe
        after the launcher's answers that came since (another queue)."""
        self.note(f"410: {len(self.stream)} events lost, relist")
        self.stream.clear()
        listed_at = self.now
        for pod in list(self.pods.values()):
            self._send(pod, pod.state)
        own = frozenset((NAMESPACE, p.name) for p in self.pods.values() if p.scheduler == self.scheduler.id)
        elsewhere = frozenset((NAMESPACE, p.name) for p in self.pods.values()) - own
        self.stream.append(Resync(NAMESPACE, own, listed_at, "0", elsewhere))

    def _revoke(self) -> None:
        stuck = [t for t in self._unreported() if t.launched_by == self.scheduler.id]
        if stuck and self.rng.random() < 0.3:
            t = self.rng.choice(stuck)
            t.revoked = True
            self.note(f"revoke {t.name}")
            self.carry_out(self.scheduler.ledger.revoke(t.ref))

    def _restart(self) -> None:
        """The scheduler dies (its launcher's answers with it); a successor starts and lists."""
        self.dead.add(self.scheduler.id)
        self.note(f"scheduler {self.scheduler.id} killed")
        self.scheduler = self._new_scheduler()
        self.stream.clear()
        self._relist()
        # Airflow adopts once the dead scheduler's heartbeat is old enough: at once, if it already is.
        self.adopt_at = self.now + self.rng.choice((0.0, ADOPTION_DELAY_S))

    def _adopt(self) -> None:
        """Airflow hands the dead schedulers' unfinished tries to the successor."""
        self.adopt_at = None
        # The successor may or may not have read what its watchers sent so far (Airflow adopts in
        # its first loop, maybe before the first list is read).
        while self.stream and self.rng.random() < 0.7:
            self._deliver()
        handed = [t for t in self._unreported() if t.launched_by in self.dead]
        ledger = self.scheduler.ledger
        # Claimed at once, off Airflow's loop the pods are looked for.
        ledger.awaiting_adoption([t.ref for t in handed])
        if not {t.ref for t in handed} <= ledger.claimed():
            raise Violation("tries handed over are not claimed while their pods are looked for")
        # The successor lists the executor's pods, every scheduler's.
        listed = [PodSeen(NAMESPACE, p.name, p.ref, p.scheduler, p.state) for p in self.pods.values()]
        orphans = select_orphans(listed, [t.ref for t in handed], self.dead)
        # The list's outcome reaches the ledger a loop turn or more later.
        while self.stream and self.rng.random() < 0.5:
            self._deliver()
        orphans = ledger.adoptable(orphans)
        self.note(f"adopt {sorted(o.name for o in orphans)}")
        for orphan in orphans:
            self.carry_out(self.scheduler.ledger.adopt(orphan, START_TIMEOUT_S))
            if orphan.state.terminal:
                continue
            # Relabelled into the successor's watch: it appears there, or is found gone.
            pod = self.pods.get(orphan.name)
            if pod is None:
                self.carry_out(self.scheduler.ledger.relabelled(NAMESPACE, orphan.name, found=False))
            else:
                pod.scheduler = self.scheduler.id
                self._send(pod, pod.state)
                self.carry_out(self.scheduler.ledger.relabelled(NAMESPACE, orphan.name, found=True))
        unfound = set(ledger.unfound([t.ref for t in handed]))
        for t in handed:
            if t.ref in unfound:
                # Airflow takes a try back whose pod is not found: reset and scheduled again.
                t.taken_back = True
                self.note(f"{t.name} taken back by Airflow (no pod found)")
                if t.finished:
                    raise Violation(
                        f"{t.name} finished but its pod was gone before adoption: its end is lost"
                    )

    def _unreported(self) -> list[Try]:
        """Tries launched whose end Airflow still waits for from the schedulers this world runs."""
        return [
            t
            for t in self.tries
            if t.launched and not (t.revoked or t.taken_back or t.handed) and t.ref not in self.results
        ]

    def _unreported_refs(self) -> set[identity.TaskRef]:
        return {t.ref for t in self._unreported()}

    def _by_ref(self, ref: object) -> Try:
        return next(t for t in self.tries if t.ref == ref)

    # --- the end ------------------------------------------------------------------------------
    def settle(self) -> None:
        """Let everything happen that is still to happen, then let time run past every deadline."""
        for t in self.tries:
            while not t.launched:
                self._launch()
        if self.adopt_at is not None:
            self.now = max(self.now, self.adopt_at)
            self._adopt()
        for _ in range(200):
            self._ack()
            self._progress()
            self._deliver()
            self._database()
            if self.rng.random() < 0.1:
                self.now += 1.0
                self._tick()
        for _ in range(3):
            self.now += max(START_TIMEOUT_S, UNCLAIMED_GRACE_S) + 1
            self.note("tick (the end)")
            self._tick()
            while self.stream or self.scheduler.acks:
                self._ack()
                self._deliver()

    def check(self, final: bool = True) -> None:
        ledger = self.scheduler.ledger
        held = {r for r, t in ledger.tries.items() if t.held is not None and isinstance(r, identity.TaskRef)}
        if ledger.holding() != held:
            raise Violation(f"the ledger holds failures of {sorted(held)}, and asks about {ledger.holding()}")
        for older_than_s in (0.0, 15.0):
            waiting = {
                e.ref
                for e in ledger.pods.values()
                if isinstance(e.ref, identity.TaskRef)
                and not (e.created or e.settled)
                and e.launched_at <= self.now - older_than_s
            }
            if ledger.waiting_for_create(older_than_s) != waiting:
                raise Violation(f"creates waiting {older_than_s} s: {waiting}, not as the ledger says")
        for name, count in self.disposed.items():
            if count > 1:
                raise Violation(f"{name} disposed of {count} times")
        left = sorted(p.name for p in self.pods.values() if p.scheduler != NEIGHBOUR)
        if final and left:
            raise Violation(f"pods left behind, never disposed of: {left}")
        for t in self.tries:
            got = self.results.get(t.ref, [])
            if len(got) > 1:
                raise Violation(f"{t.name} reported {len(got)} times: {got}")
            if t.handed and got:
                raise Violation(f"{t.name} reported here after the neighbour adopted it")
            if t.revoked or t.taken_back or t.handed or not (final or got):
                continue
            if not got:
                raise Violation(f"{t.name} ({t.fate}) never reported")
            expected = "success" if t.fate in ("success", "relaunched", "disrupted") else "failed"
            # A disruption is the try's end when its pod was a predecessor's (adopted: nothing to
            # build a new pod from) or the database could not be read.
            disruption_ends_it = t.launched_by in self.dead or t.unanswered
            if got[0].verdict == expected:
                if (
                    t.fate == "overdisrupted"
                    and not disruption_ends_it
                    and (
                        t.requeues != DISRUPTION_RETRIES
                        or f"after {DISRUPTION_RETRIES} disruption(s)" not in got[0].reason
                    )
                ):
                    raise Violation(f"{t.name} failed after {t.requeues} disruptions: {got[0].reason}")
                continue
            if t.fate == "disrupted" and got[0].disruption and disruption_ends_it:
                continue
            # A try relaunched may run out of its time to start: then, and only then, it fails.
            out_of_time = t.launched_at + START_TIMEOUT_S - RELAUNCH_MIN_TIME_LEFT_S
            if (
                t.fate == "relaunched"
                and got[0].cause in ("ErrImagePull", "StartTimeout")
                and (self.reported_at[t.ref] >= out_of_time or t.launched_by in self.dead or t.unanswered)
            ):
                continue
            raise Violation(f"{t.name} ({t.fate}) reported {got[0].verdict}: {got[0].reason}")
        for t in self.tries:
            got = self.results.get(t.ref, [])
            if (
                t.fate == "unlaunchable"
                and got
                and got[0].cause == "ErrImagePull"
                and t.pods < 1 + LAUNCH_RETRIES
            ):
                out_of_time = t.launched_at + START_TIMEOUT_S - RELAUNCH_MIN_TIME_LEFT_S
                if (
                    self.reported_at[t.ref] < out_of_time
                    and t.launched_by not in self.dead
                    and not t.unanswered
                ):
                    raise Violation(f"{t.name} failed after {t.pods} pods, with launches and time left")


def simulate(seed: int, steps: int = 40, ledger_class: type[PodLedger] = PodLedger) -> World:
    world = World(seed, ledger_class)
    try:
        for _ in range(steps):
            world.step()
            world.check(final=False)
        world.settle()
        world.check()
    except Violation as violation:
        history = "\n".join(world.history)
        raise Violation(f"seed {seed}: {violation}\nrules: {world.rules}\nhistory:\n{history}") from None
    return world


SEEDS = 10_000


def test_ten_thousand_seeded_histories_keep_every_invariant() -> None:
    started = time.monotonic()
    outcomes: Counter[str] = Counter()
    for seed in range(SEEDS):
        world = simulate(seed)
        outcomes.update(t.fate for t in world.tries)
        outcomes["restarts"] += len(world.dead)
        outcomes["pods launched again"] += sum(max(t.pods - 1, 0) for t in world.tries)
        outcomes["handed over"] += sum(t.handed for t in world.tries)
        outcomes["names taken"] += world.names_taken
    took = time.monotonic() - started
    print(f"\n{SEEDS} seeds in {took:.1f} s; tries by fate and restarts: {dict(outcomes)}")
    # The histories cover every kind of fate and restarts, not a corner of them.
    assert all(outcomes[f] > SEEDS // 10 for f in FATES) and outcomes["restarts"] > SEEDS // 10
    assert outcomes["pods launched again"] > SEEDS // 10 and outcomes["handed over"] > SEEDS // 100
    assert outcomes["names taken"] > SEEDS // 100


class ForgetsHeldFailures(PodLedger):
    """A broken index: a held failure is not in what `tick` and `questions` look at."""

    def _conclude(self, result: TaskResult) -> list[Action]:
        actions = super()._conclude(result)
        self._timed.pop(result.ref, None)
        return actions


def test_the_simulation_catches_an_index_that_misses_what_is_due() -> None:
    with pytest.raises(Violation, match=r"asks about|held failure"):
        for seed in range(SEEDS):
            simulate(seed, ledger_class=ForgetsHeldFailures)


def test_a_pod_seen_pending_again_after_its_deadline_fails_at_the_next_tick() -> None:
    """The histories never take a running pod back to pending; `tick` must still see it."""
    now = [0.0]
    ledger = PodLedger("s1", DisposalRule(), clock=lambda: now[0])
    ref = identity.TaskRef("dag", "t", "run", 1)
    ledger.launching(ref, NAMESPACE, "pod", START_TIMEOUT_S, payload="build")
    ledger.launched(NAMESPACE, "pod", ok=True)

    def seen(state: PodState) -> list[Action]:
        return ledger.observed(PodEvent(NAMESPACE, "pod", ref, "s1", state))

    assert seen(RUNNING) == []
    now[0] = START_TIMEOUT_S + 1
    assert ledger.tick() == []  # running at its deadline: left alone
    assert seen(PENDING) == []
    results = [a for a in ledger.tick() if isinstance(a, TaskResult)]
    assert [(r.state.verdict, r.state.cause) for r in results] == [("failed", "StartTimeout")]


class DisposesWithoutGrace(PodLedger):
    """A broken rule: another scheduler's finished pod disposed of at once, not after the grace."""

    def tick(self) -> list[TaskResult | Dispose]:
        self.unclaimed_grace_s = 0.0
        return super().tick()


def test_the_simulation_catches_a_broken_rule() -> None:
    with pytest.raises(Violation, match="its end is lost"):
        for seed in range(SEEDS):
            simulate(seed, ledger_class=DisposesWithoutGrace)


class IgnoresWhoLives(PodLedger):
    """A broken rule: another scheduler's finished pod disposed of after the grace, alive or not."""

    def schedulers_alive(self, labels: set[str]) -> None:
        super().schedulers_alive(set())


def test_the_simulation_catches_disposal_of_a_live_neighbours_pod() -> None:
    with pytest.raises(Violation, match=f"of live scheduler {NEIGHBOUR} disposed of by another"):
        for seed in range(SEEDS):
            simulate(seed, ledger_class=IgnoresWhoLives)


class ReleasesWhatItJustAdopted(PodLedger):
    """A broken rule: a pod missing from a relist while another scheduler held it is handed over,
    even one this scheduler adopted (relabelled) after the list was taken."""

    def resynced(self, resync: Resync) -> list[Action]:
        actions: list[Action] = []
        for key, entry in list(self.pods.items()):
            if entry.visible and not entry.settled and key in resync.elsewhere - resync.names:
                actions += self.released(*key)
        return actions + super().resynced(resync)


def test_the_simulation_catches_a_handover_of_a_pod_adopted_after_the_relist() -> None:
    with pytest.raises(Violation, match="handed over, yet no other scheduler adopted it"):
        for seed in range(SEEDS):
            simulate(seed, ledger_class=ReleasesWhatItJustAdopted)


class RelaunchesWithoutEnd(PodLedger):
    """A broken rule: a failed launch is retried whatever the budget says."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.relaunch_rule = RelaunchRule(-1)


def test_the_simulation_catches_relaunches_past_the_budget() -> None:
    with pytest.raises(Violation, match="past its budget"):
        for seed in range(SEEDS):
            simulate(seed, ledger_class=RelaunchesWithoutEnd)


class NeverRelaunches(PodLedger):
    """A broken rule: a failure before the task started is reported at once, launches left or not."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.relaunch_rule = RelaunchRule(0)


def test_the_simulation_catches_a_launch_failure_reported_with_launches_left() -> None:
    with pytest.raises(Violation, match=r"reported failed|with launches and time left"):
        for seed in range(SEEDS):
            simulate(seed, ledger_class=NeverRelaunches)


class NeverRequeues(PodLedger):
    """A broken rule: a disruption is the try's end, as any failure."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.disruption_retries = 0


def test_the_simulation_catches_a_disruption_that_spends_the_try() -> None:
    with pytest.raises(Violation, match=r"\(disrupted\) reported failed|failed after 0 disruptions"):
        for seed in range(SEEDS):
            simulate(seed, ledger_class=NeverRequeues)


class RequeuesWithoutEnd(PodLedger):
    """A broken rule: a disrupted try is launched again whatever its budget."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.disruption_retries = 1_000


def test_the_simulation_catches_requeues_past_the_budget() -> None:
    with pytest.raises(Violation, match="past its budget"):
        for seed in range(SEEDS):
            simulate(seed, ledger_class=RequeuesWithoutEnd)


class TrustsThePodOverTheDatabase(PodLedger):
    """A broken rule: a disrupted try is requeued even when its task recorded its own end."""

    def answered(self, rows: Mapping[identity.TaskRef, TaskRow | None]) -> list[Action]:
        return super().answered(
            {
                ref: row._replace(state="running") if row and row.state == "success" else row
                for ref, row in rows.items()
            }
        )


def test_the_simulation_catches_a_requeue_of_a_task_that_recorded_its_end() -> None:
    with pytest.raises(Violation, match="requeued although its task recorded success"):
        for seed in range(SEEDS):
            simulate(seed, ledger_class=TrustsThePodOverTheDatabase)


def test_the_simulation_catches_a_requeue_while_the_old_worker_may_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import k8s_executor.ledger as ledger_module

    # A broken rule: a disrupted running try is requeued whether its container was seen to end.
    monkeypatch.setattr(
        ledger_module, "requeue_from", lambda state, ti_state: ti_state in ("queued", "running")
    )
    with pytest.raises(Violation, match="requeued while its worker may still run"):
        for seed in range(SEEDS):
            simulate(seed)
