"""Which schedulers count as alive, and which creates on their way are no longer wanted."""

from __future__ import annotations

import datetime

from k8s_executor.identity import TaskRef
from k8s_executor.ledger import (
    DisposalRule,
    HandedOver,
    Launch,
    PodLedger,
    create_obsolete,
    disposer,
    live_schedulers,
)
from k8s_executor.shapes import PodEvent, TaskRow
from k8s_executor.state_mapping import PodState

NOW = datetime.datetime(2026, 11, 30, 12, 0, tzinfo=datetime.timezone.utc)


def ago(seconds: float) -> datetime.datetime:
    return NOW - datetime.timedelta(seconds=seconds)


def test_a_scheduler_lives_while_it_runs_and_its_heartbeat_is_younger_than_the_threshold() -> None:
    jobs = [(1, "running", ago(5)), (2, "running", ago(31)), (3, "failed", ago(1)), (4, "running", None)]
    assert live_schedulers(jobs, NOW, threshold_s=30) == {"1"}
    assert live_schedulers(jobs, NOW, threshold_s=60) == {"1", "2"}


def finished_pod_of(scheduler: str) -> PodEvent:
    return PodEvent("ns", f"pod-of-{scheduler}", TaskRef("d", "t", "r"), scheduler, PodState("success"), "1")


def test_another_schedulers_finished_pod_is_disposed_of_only_once_it_is_dead_and_the_grace_is_over() -> None:
    now = [0.0]
    ledger = PodLedger("1", DisposalRule(), clock=lambda: now[0], unclaimed_grace_s=300)
    assert ledger.observed(finished_pod_of("2")) == []
    # Not yet known who lives: nobody else's pod is touched, however long it waits.
    now[0] = 1000.0
    assert ledger.tick() == []
    ledger.schedulers_alive({"1", "2"})
    now[0] = 5000.0
    assert ledger.tick() == []
    # Its scheduler dies: the grace counts from then.
    ledger.schedulers_alive({"1"})
    assert ledger.tick() == []
    now[0] = 5299.0
    assert ledger.tick() == []
    now[0] = 5300.0
    [dispose] = ledger.tick()
    assert (dispose.name, dispose.why) == ("pod-of-2", "unclaimed")


def test_a_scheduler_that_comes_back_keeps_its_pods() -> None:
    now = [0.0]
    ledger = PodLedger("1", DisposalRule(), clock=lambda: now[0], unclaimed_grace_s=300)
    ledger.observed(finished_pod_of("2"))
    ledger.schedulers_alive({"1"})
    now[0] = 200.0
    assert ledger.tick() == []
    ledger.schedulers_alive({"1", "2"})  # its heartbeat was late, not its last
    now[0] = 10_000.0
    assert ledger.tick() == []


def test_a_create_is_obsolete_once_its_try_is_not_this_schedulers_queued_or_started_try() -> None:
    ref = TaskRef("d", "t", "r", try_number=2)
    assert not create_obsolete(ref, TaskRow(2, "queued", 7), "7")
    assert not create_obsolete(ref, TaskRow(2, "running", 7), "7")  # the pod landed and the task started
    assert create_obsolete(ref, None, "7")  # the task instance is gone
    assert create_obsolete(ref, TaskRow(2, "scheduled", None), "7")  # reset by Airflow
    assert create_obsolete(ref, TaskRow(2, None, None), "7")  # cleared
    assert create_obsolete(ref, TaskRow(3, "queued", 7), "7")  # a later try
    assert create_obsolete(ref, TaskRow(2, "queued", 8), "7")  # queued again by another scheduler


def test_one_live_scheduler_disposes_of_the_dead_ones_pods_the_oldest() -> None:
    assert disposer({"12", "9", "100"}) == "9"
    assert disposer(set()) is None
    now = [0.0]
    younger = PodLedger("12", DisposalRule(), clock=lambda: now[0], unclaimed_grace_s=300)
    older = PodLedger("9", DisposalRule(), clock=lambda: now[0], unclaimed_grace_s=300)
    for ledger in (younger, older):
        ledger.observed(finished_pod_of("2"))
        ledger.schedulers_alive({"9", "12"})
        assert ledger.tick() == []
    now[0] = 400.0
    assert younger.tick() == []
    [dispose] = older.tick()
    assert dispose.name == "pod-of-2"


def test_a_pod_whose_containers_never_ran_is_deleted_whatever_the_settings_say() -> None:
    keep_everything = DisposalRule(delete_worker_pods=False, delete_worker_pods_on_failure=False)
    unpulled = PodState("failed", "could not start: ErrImagePull", "ErrImagePull", ran=False)
    assert keep_everything.delete(unpulled, never_started=False)
    assert not keep_everything.delete(PodState("failed", "exited 1", "Error"), never_started=False)
    assert not DisposalRule().delete(PodState("failed", "exited 1", "Error"), never_started=False)
    assert DisposalRule().delete(PodState("success"), never_started=False)


def test_a_pod_another_scheduler_adopted_is_handed_over_without_a_result_or_a_disposal() -> None:
    now = [0.0]
    ledger = PodLedger("1", DisposalRule(), clock=lambda: now[0])
    ref = TaskRef("d", "t", "r")
    ledger.launching(ref, "ns", "p", 600)
    ledger.launched("ns", "p", ok=True)
    assert ledger.released("ns", "p") == [HandedOver(ref)]
    # Its later news (the watch saw it leave) is old news here.
    gone = PodEvent("ns", "p", ref, "2", PodState("failed", "deleted", "Deleted"), "9", deleted=True)
    assert ledger.observed(gone) == []
    now[0] = 10_000.0
    assert ledger.tick() == [] and ledger.claimed() == set()


def test_a_create_that_met_an_earlier_launchs_pod_is_launched_again_under_a_new_name() -> None:
    now = [0.0]
    ledger = PodLedger("1", DisposalRule(), clock=lambda: now[0])
    ref = TaskRef("d", "sensor", "r")
    ledger.launching(ref, "ns", "p", 600, payload="how to build it")
    now[0] = 100.0
    assert ledger.attempt(ref) == 0
    # Built again from what its first launch was built from, with its time to start anew.
    assert ledger.launched("ns", "p", ok=False, error="taken", name_taken=True) == [
        Launch(ref, "how to build it", 600)
    ]
    assert ledger.attempt(ref) == 1  # the next pod's name differs
    assert ledger.claimed() == {ref}  # the try is still awaited, under no pod for now


def test_a_kept_pod_whose_sidecar_outlives_its_task_is_stopped_and_a_deleted_one_is_not() -> None:
    ref = TaskRef("d", "t", "r")
    failed_with_sidecar = PodState("failed", "exit code 1", "Error", lingering=True)
    for rule, expected in (
        (DisposalRule(delete_worker_pods=True, delete_worker_pods_on_failure=False), (False, True)),
        (DisposalRule(delete_worker_pods=True, delete_worker_pods_on_failure=True), (True, False)),
    ):
        ledger = PodLedger("1", rule, clock=lambda: 0.0)
        ledger.launching(ref, "ns", "p", 600)
        ledger.launched("ns", "p", ok=True)
        [_, dispose] = ledger.observed(PodEvent("ns", "p", ref, "1", failed_with_sidecar, "3"))
        assert (dispose.delete, dispose.stop) == expected
