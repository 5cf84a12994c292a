"""Adoption: what the log of a try handed over with no pod says (such a try is reset), and the
ledger holding tries handed over while their pods are looked for."""

from __future__ import annotations

import enum

import pytest

from k8s_executor.adoption import dead_schedulers, still_handed, unadopted_reason, unlisted_reason
from k8s_executor.identity import TaskRef
from k8s_executor.ledger import DisposalRule, PodLedger
from k8s_executor.shapes import HandedTry, Orphan
from k8s_executor.state_mapping import PodState


class State(str, enum.Enum):  # as Airflow's TaskInstanceState
    RUNNING = "running"
    QUEUED = "queued"


def test_a_running_try_without_a_pod_had_its_pod_deleted() -> None:
    text = unadopted_reason(State.RUNNING, {"168", "166"}, "171")
    assert text == (
        "scheduler 171 took this try over from schedulers 166, 168 and found no pod: its pod ran "
        "this try, and is gone: it was deleted while no scheduler watched it. The try is reset, "
        "and Airflow runs the task again."
    )


def test_a_queued_try_without_a_pod_may_never_have_had_one() -> None:
    text = unadopted_reason("queued", {"7"}, "9")
    assert "from scheduler 7 and found no pod" in text
    assert "may have died before creating it, or it was deleted" in text
    assert "its pod ran" not in unadopted_reason(State.QUEUED, set(), "9")


def test_a_try_whose_pod_could_not_be_listed_says_what_the_api_server_answered() -> None:
    text = unlisted_reason({"4"}, "6", "429 Too Many Requests")
    assert text == (
        "scheduler 6 could not take this try over from scheduler 4: listing its pod failed (429 Too "
        "Many Requests). The try is reset, and Airflow runs the task again; a pod of this try that "
        "still exists is deleted by a live scheduler's sweep."
    )


# --- the ledger's part: tries handed over are held while their pods are looked for -------------

FOUND, GONE, TAKEN_BACK = (TaskRef("d", t, "r", try_number=1) for t in ("found", "gone", "taken_back"))
RUNNING = PodState("running")


def orphan(ref: TaskRef, ours: bool = True, state: PodState = RUNNING) -> Orphan:
    return Orphan("ns", f"pod-{ref.task_id}", ref, "4", state, "1", ours=ours)


def test_tries_handed_over_are_claimed_until_their_pods_are_found_or_not() -> None:
    ledger = PodLedger("6", DisposalRule(), clock=lambda: 0.0)
    ledger.awaiting_adoption([FOUND, GONE, TAKEN_BACK])
    # Claimed once their rows are read: a second hand-over of the same tries does not take them again.
    assert ledger.claimed() >= {FOUND, GONE, TAKEN_BACK}
    # Airflow takes one back before the list comes: its pod is not adopted, nor is it reset here.
    ledger.revoke(TAKEN_BACK)
    adoptable = ledger.adoptable([orphan(FOUND), orphan(TAKEN_BACK)])
    assert [o.ref for o in adoptable] == [FOUND]
    for o in adoptable:
        ledger.adopt(o, 600)
    assert ledger.unfound([FOUND, GONE, TAKEN_BACK]) == [GONE]
    assert ledger.claimed() == {FOUND}
    assert ledger.in_flight() == {FOUND}


def test_a_pod_already_held_is_not_adopted_again_by_a_later_list() -> None:
    ledger = PodLedger("6", DisposalRule(), clock=lambda: 0.0)
    # A dead scheduler's finished pod, taken to be disposed of by one adoption's list...
    finished = orphan(GONE, ours=False, state=PodState("success"))
    assert ledger.adoptable([finished]) == [finished]
    ledger.adopt(finished, 600)
    # ...is not taken twice when the next adoption's list still shows it.
    assert ledger.adoptable([finished]) == []


def test_a_pod_being_adopted_is_not_disposed_of_as_unclaimed() -> None:
    now = [0.0]
    ledger = PodLedger("6", DisposalRule(), clock=lambda: now[0], unclaimed_grace_s=10)
    ledger.schedulers_alive({"6"})
    running = orphan(FOUND)
    # The sweep saw the dead scheduler's pod; then Airflow handed its try here.
    ledger.swept([running])
    ledger.awaiting_adoption([FOUND])
    now[0] = 100.0
    assert ledger.tick() == []
    assert ledger.adoptable([running]) == [running]


def test_no_dead_schedulers_pod_is_disposed_of_while_a_hand_over_is_read() -> None:
    now = [0.0]
    finished = orphan(FOUND, state=PodState("success"))

    def swept_ledger() -> PodLedger:
        ledger = PodLedger("6", DisposalRule(), clock=lambda: now[0], unclaimed_grace_s=10)
        ledger.schedulers_alive({"6"})
        ledger.swept([finished])
        return ledger

    # Airflow hands tries over as the pod's grace runs out; which tries, the rows will say.
    handed, read = swept_ledger(), swept_ledger()
    handed.reading_handed_over(True)
    for now[0] in (100.0, 111.0):
        assert handed.tick() == []
        unclaimed = read.tick()
    # Without a hand-over being read, the same pod is disposed of once its grace is over.
    assert [a.why for a in unclaimed] == ["unclaimed"]
    # Read, its try handed here: it is adopted, not disposed of.
    handed.reading_handed_over(False)
    handed.awaiting_adoption([FOUND])
    assert handed.tick() == []
    assert handed.adoptable([finished]) == [finished]


def test_a_try_whose_adoption_failed_half_way_is_still_awaited_and_so_reset() -> None:
    ledger = PodLedger("6", DisposalRule(), clock=lambda: 0.0)
    ledger.awaiting_adoption([FOUND])
    # A pod the ledger cannot judge (no state: a bug elsewhere) fails its adoption part-way.
    unjudged = Orphan("ns", "pod-found", FOUND, "4", None, "1", ours=True)  # type: ignore[arg-type]
    with pytest.raises(AttributeError):
        ledger.adopt(unjudged, 600)
    assert ledger.unfound([FOUND]) == [FOUND]


def test_the_dead_schedulers_are_those_that_queued_the_tries_handed_over_but_this_one() -> None:
    def handed(queued_by: object) -> HandedTry:
        return HandedTry(TaskRef("d", "t", "r", 1), "running", queued_by)

    # Airflow writes the hand-over (queued by this scheduler, 171) in its own transaction: a row
    # read after it names this scheduler, which is not dead, and no other.
    tries = [handed(166), handed(168), handed(171), handed(None), handed(166)]
    assert dead_schedulers(tries, "171") == {"166", "168"}
    assert dead_schedulers([], "171") == set()


def test_a_row_queued_since_by_another_live_scheduler_is_no_longer_handed_here() -> None:
    def handed(task: str, queued_by: object) -> HandedTry:
        return HandedTry(TaskRef("d", task, "r", 1), "queued", queued_by)

    tries = [handed("dead", 166), handed("mine", 171), handed("retried", 170), handed("none", None)]
    assert [t.ref.task_id for t in still_handed(tries, {"170", "171"}, "171")] == ["dead", "mine", "none"]
