"""Which failed pods get a new pod (pod_launch_failure_retries), as the official provider decides."""

from __future__ import annotations

from k8s_executor.ledger import relaunch
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
