"""Which failed pods get a new pod (pod_launch_failure_retries), as the official provider decides."""

from __future__ import annotations

from k8s_executor.identity import TaskRef
from k8s_executor.ledger import (
    OBSOLETE_AFTER_S,
    OBSOLETE_ASKED_AT_ONCE,
    OBSOLETE_CHECK_INTERVAL_S,
    DisposalRule,
    Dispose,
    Drop,
    Launch,
    PodLedger,
    Relaunch,
    RelaunchRule,
    TaskResult,
    Withdrawn,
    relaunch,
)
from k8s_executor.shapes import PodEvent, TaskRow
from k8s_executor.state_mapping import PodState

EXCLUDED = frozenset({"Error"})


def test_a_pod_that_failed_before_its_task_started_is_launched_again() -> None:
    for cause in ("ErrImagePull", "ImagePullBackOff", "Evicted", "Deleted", "Unschedulable", "CreateRefused"):
        assert relaunch(PodState("failed", "...", cause), "queued", EXCLUDED), cause


def test_a_task_that_started_is_never_launched_again() -> None:
    # Its task instance said `running` (or ended): task code ran, Airflow's own retries decide.
    for ti_state in ("running", "failed", "success", "up_for_retry", None, "scheduled"):
        assert not relaunch(PodState("failed", "...", "Evicted"), ti_state, EXCLUDED), ti_state


def test_excluded_causes_and_a_start_that_timed_out_fail_the_try() -> None:
    assert not relaunch(PodState("failed", "exited with code 1", "Error"), "queued", EXCLUDED)
    assert relaunch(PodState("failed", "exited with code 1", "Error"), "queued", frozenset())
    assert not relaunch(PodState("failed", "did not start in time", "StartTimeout"), "queued", frozenset())
    assert not relaunch(PodState("success"), "queued", EXCLUDED)


# --- the ledger's part: a try's failed launch held, asked about, relaunched or reported ----------
NOW = [0.0]
REF = TaskRef("d", "t", "r", try_number=1)
UNPULLED = PodState("failed", "could not pull image", "ErrImagePull", ran=False)


def ledger_with_failed_launch(retries: int = 2) -> PodLedger:
    NOW[0] = 0.0
    ledger = PodLedger("7", DisposalRule(), clock=lambda: NOW[0], relaunch=RelaunchRule(retries))
    ledger.launching(REF, "ns", "p0", 600, payload="build")
    ledger.launched("ns", "p0", ok=True)
    actions = ledger.observed(PodEvent("ns", "p0", REF, "7", UNPULLED, "2"))
    # The pod goes at once; the try's failure is held until the database says whether it started.
    assert actions == [Dispose("ns", "p0", delete=True)]
    assert ledger.questions().started == {REF}
    return ledger


def test_a_failed_launch_whose_task_never_started_is_relaunched_after_a_backoff() -> None:
    ledger = ledger_with_failed_launch()
    [relaunch_] = ledger.answered({REF: TaskRow(1, "queued", "7")})
    assert isinstance(relaunch_, Relaunch) and (relaunch_.failures, relaunch_.delay_s) == (1, 1.0)
    assert ledger.tick() == []  # not before its time
    NOW[0] = 1.0
    assert ledger.tick() == [Launch(REF, "build", 599.0)]  # what is left of its time to start
    assert ledger.attempt(REF) == 1 and ledger.claimed() == {REF}


def test_a_failed_launch_whose_task_started_is_reported() -> None:
    ledger = ledger_with_failed_launch()
    [result] = ledger.answered({REF: TaskRow(1, "running", "7")})
    assert isinstance(result, TaskResult) and result.state == UNPULLED
    assert ledger.claimed() == {REF}  # reported, its pod not yet gone


def test_launches_past_the_budget_and_a_try_handed_elsewhere_are_reported() -> None:
    NOW[0] = 0.0
    ledger = PodLedger("7", DisposalRule(), clock=lambda: NOW[0], relaunch=RelaunchRule(0))
    ledger.launching(REF, "ns", "p0", 600, payload="build")
    ledger.launched("ns", "p0", ok=True)
    [result, _] = ledger.observed(PodEvent("ns", "p0", REF, "7", UNPULLED, "2"))
    assert isinstance(result, TaskResult)  # no launch left: nothing to ask, the failure stands
    assert ledger.questions().started == frozenset()
    ledger = ledger_with_failed_launch()
    [result] = ledger.answered({REF: TaskRow(1, "queued", "8")})
    assert isinstance(result, TaskResult)


def test_a_held_failure_is_reported_when_the_database_cannot_be_read() -> None:
    ledger = ledger_with_failed_launch()
    [result] = ledger.unanswerable({REF})
    assert isinstance(result, TaskResult) and result.state == UNPULLED
    assert ledger.questions().started == frozenset()


def test_a_held_failure_is_reported_when_the_database_never_answers() -> None:
    ledger = ledger_with_failed_launch()
    assert ledger.answered({}) == []  # not read: asked again
    NOW[0] = 595.0
    [result] = ledger.tick()
    assert isinstance(result, TaskResult) and result.state == UNPULLED


def test_a_revoked_try_between_two_pods_is_never_launched_or_reported() -> None:
    ledger = ledger_with_failed_launch()
    ledger.answered({REF: TaskRow(1, "queued", "7")})
    assert ledger.revoke(REF) == []
    NOW[0] = 100.0
    assert ledger.tick() == [] and ledger.claimed() == set()


def test_a_create_on_its_way_for_a_try_no_longer_this_schedulers_is_withdrawn() -> None:
    NOW[0] = 0.0
    ledger = PodLedger("7", DisposalRule(), clock=lambda: NOW[0])
    ledger.launching(REF, "ns", "p0", 600, payload="build")
    NOW[0] = 20.0
    assert ledger.questions().obsolete == {REF}
    row = TaskRow(1, "scheduled", None)
    assert ledger.answered({REF: row}) == [Drop("ns", "p0"), Withdrawn(REF, row)]


def test_an_answer_that_comes_after_the_try_was_launched_again_does_not_withdraw_the_new_create() -> None:
    # The database is read off the scheduler's loop: meanwhile Airflow took the try back and
    # queued it again on the same try number, and its new create is on its way.
    NOW[0] = 0.0
    ledger = PodLedger("7", DisposalRule(), clock=lambda: NOW[0])
    ledger.launching(REF, "ns", "p0", 600, payload="build")
    NOW[0] = 20.0
    questions = ledger.questions()
    assert questions.obsolete == {REF}
    ledger.revoke(REF)
    ledger.launching(REF, "ns", "p1", 600, payload="build")
    stale = TaskRow(1, "scheduled", None)
    assert ledger.answered({REF: stale}, questions.attempts) == []
    assert REF in ledger.in_flight()
    # Asked again, the same row now speaks of this create.
    NOW[0] = 60.0
    again = ledger.questions()
    assert ledger.answered({REF: stale}, again.attempts) == [Drop("ns", "p1"), Withdrawn(REF, stale)]


def test_a_burst_asks_about_a_thousand_waiting_creates_at_a_time_each_again_only_after_a_while() -> None:
    NOW[0] = 0.0
    ledger = PodLedger("7", DisposalRule(), clock=lambda: NOW[0])
    refs = [TaskRef("dag", "task", "run", 1, i) for i in range(OBSOLETE_ASKED_AT_ONCE + 500)]
    for i, ref in enumerate(refs):
        ledger.launching(ref, "ns", f"p{i}", 600, payload="build")
    NOW[0] = OBSOLETE_AFTER_S + 1
    assert ledger.questions().obsolete == set(refs[:OBSOLETE_ASKED_AT_ONCE])  # oldest launch first
    NOW[0] += OBSOLETE_CHECK_INTERVAL_S
    assert ledger.questions().obsolete == set(refs[OBSOLETE_ASKED_AT_ONCE:])
    NOW[0] += OBSOLETE_CHECK_INTERVAL_S
    assert ledger.questions().obsolete == set()  # every one was asked about a moment ago
    NOW[0] = 2 * OBSOLETE_AFTER_S + 2
    assert ledger.questions().obsolete == set(refs[:OBSOLETE_ASKED_AT_ONCE])
