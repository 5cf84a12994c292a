"""What the log of a try handed over with no pod says (Airflow resets such a try)."""

from __future__ import annotations

import enum

from k8s_executor.adoption import unadopted_reason, unlisted_reason


class State(str, enum.Enum):  # as Airflow's TaskInstanceState
    RUNNING = "running"
    QUEUED = "queued"


def test_a_running_try_without_a_pod_had_its_pod_deleted() -> None:
    text = unadopted_reason(State.RUNNING, {"168", "166"}, "171")
    assert text == (
        "scheduler 171 took this try over from schedulers 166, 168 and found no pod: its pod ran "
        "this try, and is gone: it was deleted while no scheduler watched it. Airflow resets the "
        "try and runs the task again."
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
        "Many Requests). Airflow resets the try and runs the task again; a pod of this try that still "
        "exists is deleted by a live scheduler's sweep."
    )
