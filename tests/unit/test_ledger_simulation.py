"""The pod ledger under seeded histories of what the API server, the launcher and Airflow do.

Each seed draws a history: creates answered late, twice (409) or refused; watch events
duplicated, interleaved across pods, lost to a 410 and made up by a relist; pods that
succeed, fail, never start, or are deleted by hand; revocations; scheduler restarts with
adoption by a successor; a neighbour scheduler, alive throughout, whose pods share the watch
(Airflow's HA mode). The invariants are checked as it goes and at the end:
- every try accepted is reported exactly once, with the verdict its pod earned, unless Airflow
  revoked it or (after a restart) took it back because no pod of it was ever made;
- no pod is disposed of twice, and none of a scheduler that still lives, but by itself;
- nothing waits for ever: once time has run past every deadline, every try has its result.
A failing seed's history is printed, and reproduces with `simulate(seed)`.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, field

import pytest

from k8s_executor import identity
from k8s_executor.adoption import Sighting, select_orphans
from k8s_executor.ledger import Action, DisposalRule, Dispose, Drop, HandedOver, PodLedger, TaskResult
from k8s_executor.state_mapping import PodState
from k8s_executor.watching import PodEvent, Resync

NAMESPACE = "ns"
START_TIMEOUT_S = 60.0
UNCLAIMED_GRACE_S = 120.0
ADOPTION_DELAY_S = 20.0
# Its label sorts after every successor's ("s<n>"), so the successor is the one that disposes of
# dead schedulers' unclaimed pods (ledger.disposer).
NEIGHBOUR = "z1"
FATES = ("success", "failure", "unstartable", "refused", "deleted")
PENDING = PodState("pending", "")
RUNNING = PodState("running", "")
FINAL = {"success": PodState("success", ""), "failure": PodState("failed", "exit code 1")}


@dataclass
class Try:
    ref: identity.TaskRef
    name: str
    fate: str
    launched: bool = False
    launched_by: str = ""
    revoked: bool = False
    taken_back: bool = False
    finished: bool = False  # its task ended in its pod (success or failure): an end not to lose


@dataclass
class Pod:
    name: str
    ref: identity.TaskRef
    scheduler: str
    state: PodState = PENDING
    rv: int = 0


@dataclass
class Scheduler:
    id: str
    ledger: PodLedger
    acks: list[tuple[str, bool, str]] = field(default_factory=list)


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
        self.stream: list[PodEvent | Resync] = []
        self.results: dict[identity.TaskRef, list[PodState]] = {}
        self.disposed: Counter[str] = Counter()
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
            f"s{self.generation}", self.rules, clock=lambda: self.now, unclaimed_grace_s=UNCLAIMED_GRACE_S
        )
        # Airflow holds alive the scheduler that runs and the neighbour, and no other.
        ledger.schedulers_alive({f"s{self.generation}", NEIGHBOUR})
        return Scheduler(f"s{self.generation}", ledger)

    def carry_out(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, TaskResult):
                self.note(f"  -> report {action.ref.task_id} {action.state.verdict}")
                self.results.setdefault(action.ref, []).append(action.state)
                continue
            if isinstance(action, HandedOver):
                # No other scheduler here adopts this scheduler's pods: nobody would report it.
                raise Violation(f"{action.ref.task_id} handed over, yet no other scheduler adopted it")
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

    def _gone(self, pod: Pod) -> None:
        del self.pods[pod.name]
        state = pod.state if pod.state.terminal else PodState("failed", "pod was deleted")
        self._send(pod, state, deleted=True)

    def _send(self, pod: Pod, state: PodState, deleted: bool = False) -> None:
        pod.rv += 1
        self.stream.append(PodEvent(NAMESPACE, pod.name, pod.ref, pod.scheduler, state, str(pod.rv), deleted))

    def note(self, line: str) -> None:
        self.history.append(f"{self.now:7.1f} {line}")

    # --- steps --------------------------------------------------------------------------------
    def step(self) -> None:
        # Time never stands still between two things happening (a relist is stamped before it is sent).
        self.now += 0.001
        choices = ["launch", "ack", "progress", "deliver", "deliver", "deliver", "time", "relist", "revoke"]
        if self.rng.random() < 0.03:
            choices.append("restart")
        getattr(self, f"_{self.rng.choice(choices)}")()
        if self.adopt_at is not None and self.now >= self.adopt_at:
            self._adopt()

    def _launch(self) -> None:
        waiting = [t for t in self.tries if not t.launched]
        if not waiting:
            return
        t = self.rng.choice(waiting)
        t.launched, t.launched_by = True, self.scheduler.id
        self.note(f"launch {t.name} ({t.fate})")
        self.scheduler.ledger.launching(t.ref, NAMESPACE, t.name, START_TIMEOUT_S)
        if t.fate == "refused":
            self.scheduler.acks.append((t.name, False, "pods is forbidden: exceeded quota"))
            return
        pod = self.pods[t.name] = Pod(t.name, t.ref, self.scheduler.id)
        self._send(pod, PENDING)
        self.scheduler.acks.append((t.name, True, ""))
        if self.rng.random() < 0.2:  # the create was retried and met 409: answered twice
            self.scheduler.acks.append((t.name, True, ""))

    def _ack(self) -> None:
        if self.scheduler.acks:
            name, ok, error = self.scheduler.acks.pop(self.rng.randrange(len(self.scheduler.acks)))
            self.note(f"ack {name} ok={ok}")
            self.carry_out(self.scheduler.ledger.launched(NAMESPACE, name, ok, error))

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
        t = self._try(pod.name)
        if t.fate == "unstartable":
            return
        if pod.state.verdict == "pending":
            pod.state = RUNNING
            self.note(f"{pod.name} running")
            self._send(pod, RUNNING)
        elif t.fate == "deleted":
            # Its task did not end: a successor that finds no pod hands it back to Airflow to run again.
            self.note(f"{pod.name} deleted by hand")
            self._gone(pod)
        else:
            pod.state = FINAL[t.fate]
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
            for pod in list(self.pods.values()):
                if pod.scheduler == NEIGHBOUR:
                    continue
                if pod.state.verdict == "pending" and self._try(pod.name).fate != "unstartable":
                    pod.state = RUNNING
                    self.note(f"{pod.name} running")
                    self._send(pod, RUNNING)
            while self.stream or self.scheduler.acks:
                self._ack()
                self._deliver()
        self.now += jump
        self.note("tick")
        self.carry_out(self.scheduler.ledger.tick())

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
        # The successor lists the executor's pods, every scheduler's.
        listed = [Sighting(p.ref, NAMESPACE, p.name, p.scheduler, p.state) for p in self.pods.values()]
        orphans = select_orphans(listed, [t.ref for t in handed], self.dead)
        found = {o.ref for o in orphans if o.ours}
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
        for t in handed:
            if t.ref not in found:
                # Airflow takes a try back whose pod is not found: reset and scheduled again.
                t.taken_back = True
                self.note(f"{t.name} taken back by Airflow (no pod found)")
                if t.finished:
                    raise Violation(
                        f"{t.name} finished but its pod was gone before adoption: its end is lost"
                    )

    def _unreported(self) -> list[Try]:
        """Tries launched whose end Airflow still waits for."""
        return [
            t
            for t in self.tries
            if t.launched and not (t.revoked or t.taken_back) and t.ref not in self.results
        ]

    def _try(self, name: str) -> Try:
        return next(t for t in self.tries if t.name == name)

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
        for _ in range(3):
            self.now += max(START_TIMEOUT_S, UNCLAIMED_GRACE_S) + 1
            self.note("tick (the end)")
            self.carry_out(self.scheduler.ledger.tick())
            while self.stream or self.scheduler.acks:
                self._ack()
                self._deliver()

    def check(self, final: bool = True) -> None:
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
            if t.revoked or t.taken_back or not (final or got):
                continue
            if not got:
                raise Violation(f"{t.name} ({t.fate}) never reported")
            expected = "success" if t.fate == "success" else "failed"
            if got[0].verdict != expected:
                raise Violation(f"{t.name} ({t.fate}) reported {got[0].verdict}: {got[0].reason}")


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
    took = time.monotonic() - started
    print(f"\n{SEEDS} seeds in {took:.1f} s; tries by fate and restarts: {dict(outcomes)}")
    # The histories cover every kind of fate and restarts, not a corner of them.
    assert all(outcomes[f] > SEEDS // 10 for f in FATES) and outcomes["restarts"] > SEEDS // 10


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
