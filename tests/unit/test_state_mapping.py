import datetime

from k8s_executor.state_mapping import PodState, describe_events, pod_state, with_events

NOW = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.timezone.utc)
FATAL = {"ErrImagePull", "CreateContainerConfigError"}


def pod(phase: str, containers: list | None = None, **status) -> dict:
    return {
        "metadata": {"name": "p"},
        "status": {"phase": phase, "containerStatuses": containers or [], **status},
    }


def terminated(code: int, reason: str, message: str | None = None) -> dict:
    state = {"exitCode": code, "reason": reason}
    if message:
        state["message"] = message
    return {"name": "base", "state": {"terminated": state}}


def test_success_and_running() -> None:
    assert pod_state(pod("Succeeded")).verdict == "success"
    assert pod_state(pod("Running")).verdict == "running"
    assert pod_state(pod("Pending")).verdict == "pending"


def test_exit_code_and_oom_are_named() -> None:
    failed = pod_state(pod("Failed", [terminated(3, "Error")]))
    assert failed.verdict == "failed" and "exited with code 3" in failed.reason
    oom = pod_state(pod("Failed", [terminated(137, "OOMKilled")]))
    assert "memory limit (OOMKilled)" in oom.reason


def test_evicted_and_reasonless_failures_never_say_none() -> None:
    evicted = pod_state(pod("Failed", reason="Evicted", message="The node was low on resource: memory."))
    assert evicted.reason == "pod was evicted: The node was low on resource: memory."
    bare = pod_state(pod("Failed"))
    assert "None" not in bare.reason and bare.verdict == "failed"


def test_deleted_before_finishing_fails_with_reason() -> None:
    gone = pod_state(pod("Running"), deleted=True)
    assert gone.verdict == "failed" and "deleted while running" in gone.reason
    finished_then_deleted = pod_state(pod("Succeeded"), deleted=True)
    assert finished_then_deleted.verdict == "success"


def test_fatal_waiting_reason_fails_fast_with_message() -> None:
    waiting = {"name": "base", "state": {"waiting": {"reason": "ErrImagePull", "message": 'pull "x" failed'}}}
    state = pod_state(pod("Pending", [waiting]), fatal_waiting_reasons=FATAL)
    assert state.verdict == "failed" and "ErrImagePull" in state.reason and 'pull "x" failed' in state.reason
    backoff = {"name": "base", "state": {"waiting": {"reason": "ContainerCreating"}}}
    assert pod_state(pod("Pending", [backoff]), fatal_waiting_reasons=FATAL).verdict == "pending"


def test_unschedulable_fails_only_after_the_timeout() -> None:
    cond = {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector.",
        "lastTransitionTime": "2026-01-01T11:58:00Z",
    }
    early = pod_state(pod("Pending", conditions=[cond]), unschedulable_timeout_s=300, now=NOW)
    assert early.verdict == "pending" and "unschedulable" in early.reason
    late = pod_state(pod("Pending", conditions=[cond]), unschedulable_timeout_s=60, now=NOW)
    assert (
        late.verdict == "failed"
        and "unschedulable for 120s" in late.reason
        and "node affinity" in late.reason
    )


def event(kind: str, reason: str, message: str, at: str, count: int = 1) -> dict:
    return {"type": kind, "reason": reason, "message": message, "lastTimestamp": at, "count": count}


def test_events_keep_warnings_and_killing_oldest_first_and_merge_repeats() -> None:
    events = [
        event("Warning", "BackOff", 'Back-off pulling image "nope:1"', "2026-01-01T12:00:09Z", 3),
        event("Normal", "Scheduled", "Successfully assigned ns/p to devnode-1", "2026-01-01T12:00:00Z"),
        event("Warning", "Failed", 'Failed to pull image "nope:1": not found', "2026-01-01T12:00:02Z"),
        event("Warning", "BackOff", 'Back-off pulling image "nope:1"', "2026-01-01T12:00:05Z"),
        event("Normal", "Killing", "Stopping container base", "2026-01-01T12:00:10Z"),
    ]
    assert describe_events(events) == (
        'Failed: Failed to pull image "nope:1": not found; '
        'BackOff: Back-off pulling image "nope:1" (x4); '
        "Killing: Stopping container base"
    )


def test_only_the_last_five_explanations_are_kept() -> None:
    events = [event("Warning", f"R{i}", "m", f"2026-01-01T12:00:0{i}Z") for i in range(8)]
    assert describe_events(events).split("; ")[0] == "R3: m"


def test_events_are_added_to_failures_only() -> None:
    events = [event("Warning", "FailedScheduling", "0/3 nodes are available", "2026-01-01T12:00:00Z")]
    failed = with_events(PodState("failed", "pod was unschedulable for 300s"), events)
    assert (
        failed.reason == "pod was unschedulable for 300s [events: FailedScheduling: 0/3 nodes are available]"
    )
    assert with_events(PodState("success"), events) == PodState("success")
    assert with_events(PodState("failed", "x"), []) == PodState("failed", "x")


def test_events_that_repeat_the_reason_are_left_out() -> None:
    said = PodState("failed", "pod was unschedulable for 300s: 0/3 nodes are available")
    events = [event("Warning", "FailedScheduling", "0/3 nodes are available", "2026-01-01T12:00:00Z")]
    assert with_events(said, events) == said


def test_each_failure_names_its_cause_in_kubernetes_words() -> None:
    waiting = {"name": "base", "state": {"waiting": {"reason": "ErrImagePull"}}}
    assert pod_state(pod("Pending", [waiting]), fatal_waiting_reasons=FATAL).cause == "ErrImagePull"
    assert pod_state(pod("Failed", [terminated(1, "Error")])).cause == "Error"
    assert pod_state(pod("Failed", [terminated(137, "OOMKilled")])).cause == "OOMKilled"
    assert pod_state(pod("Failed", reason="Evicted")).cause == "Evicted"
    assert pod_state(pod("Pending"), deleted=True).cause == "Deleted"
    # Events appended to a failure keep its cause.
    failed = PodState("failed", "x", "ErrImagePull")
    assert (
        with_events(failed, [{"type": "Warning", "reason": "Failed", "message": "y"}]).cause == "ErrImagePull"
    )
