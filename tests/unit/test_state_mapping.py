import datetime

from k8s_executor.state_mapping import PodState, deletion_began_first, describe_events, pod_state, with_events

NOW = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.timezone.utc)
FATAL = {"ErrImagePull", "CreateContainerConfigError"}


def pod(phase: str, containers: list | None = None, **status) -> dict:
    return {
        "metadata": {"name": "p"},
        "status": {"phase": phase, "containerStatuses": containers or [], **status},
    }


def terminated(code: int, reason: str, message: str | None = None, finished: str | None = None) -> dict:
    state: dict = {"exitCode": code, "reason": reason}
    if message:
        state["message"] = message
    if finished:
        state["finishedAt"] = finished
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


# --- the task is the base container's; deletions judged when containers end -------------------
def running(name: str = "base") -> dict:
    return {"name": name, "state": {"running": {"startedAt": "2026-01-01T11:00:00Z"}}}


def terminating(
    phase: str, containers: list, deletion: str = "2026-01-01T12:00:20Z", grace: int = 30
) -> dict:
    p = pod(phase, containers)
    p["metadata"].update(deletionTimestamp=deletion, deletionGracePeriodSeconds=grace)
    return p


def test_a_base_container_that_ended_decides_whatever_its_sidecar_does() -> None:
    done = pod_state(pod("Running", [terminated(0, "Completed"), running("proxy")]))
    assert done.verdict == "success"
    failed = pod_state(pod("Running", [terminated(2, "Error"), running("proxy")]))
    assert failed.verdict == "failed" and "'base' exited with code 2" in failed.reason
    # A sidecar that failed does not fail a task that succeeded.
    sidecar_failed = {"name": "proxy", "state": {"terminated": {"exitCode": 1, "reason": "Error"}}}
    assert pod_state(pod("Failed", [terminated(0, "Completed"), sidecar_failed])).verdict == "success"


def test_a_pod_being_deleted_is_judged_when_its_containers_end() -> None:
    # Inside its grace period its task may still finish: it runs on.
    assert pod_state(terminating("Running", [running()]), now=NOW).verdict == "running"
    # The task ended before the deletion began (at 11:59:50): its success stands, deleted or not.
    ended = terminating("Running", [terminated(0, "Completed", finished="2026-01-01T11:59:49Z")])
    assert pod_state(ended, now=NOW).verdict == "success"
    assert pod_state(ended, now=NOW, deleted=True).verdict == "success"
    # The object gone with the task unfinished: failed.
    assert pod_state(terminating("Running", [running()]), now=NOW, deleted=True).verdict == "failed"


def test_a_pod_stuck_terminating_past_its_grace_fails() -> None:
    late = NOW + datetime.timedelta(seconds=20 + 31)
    stuck = pod_state(terminating("Running", [running()]), now=late)
    assert stuck.verdict == "failed" and stuck.cause == "Deleted" and "had not ended 30 s" in stuck.reason


def test_a_deletion_with_no_disruption_target_is_told_as_a_persons_or_a_tools() -> None:
    gone = pod_state(terminating("Running", [running()]), now=NOW, deleted=True)
    assert gone.disruption == ""
    assert "deleted at 2026-01-01T11:59:50Z (grace period 30 s) with no DisruptionTarget" in gone.reason


def test_a_disruption_says_which_component_ended_the_pod_and_why() -> None:
    condition = {
        "type": "DisruptionTarget",
        "status": "True",
        "reason": "EvictionByEvictionAPI",
        "message": "Eviction API: evicting",
        "lastTransitionTime": "2026-01-01T11:59:00Z",
    }
    evicted = terminating("Running", [running()])
    evicted["status"]["conditions"] = [condition]
    state = pod_state(evicted, now=NOW, deleted=True)
    assert state.verdict == "failed" and state.disruption == "EvictionByEvictionAPI"
    assert "evicted through the Eviction API" in state.reason and "at 2026-01-01T11:59:00Z" in state.reason
    assert "DisruptionTarget EvictionByEvictionAPI: Eviction API: evicting" in state.reason
    killed = pod(
        "Failed", [terminated(143, "Error")], conditions=[dict(condition, reason="PreemptionByScheduler")]
    )
    preempted = pod_state(killed)
    assert (
        preempted.disruption == "PreemptionByScheduler" and "preempted by the scheduler" in preempted.reason
    )
    # The events added later keep the disruption.
    assert with_events(preempted, [{"type": "Warning", "reason": "X", "message": "y"}]).disruption


def test_a_pod_whose_sidecar_outlives_its_task_is_told_to_be_stopped() -> None:
    assert pod_state(pod("Running", [terminated(0, "Completed"), running("proxy")])).lingering
    # Kubelet's phase lags its containers' ends: a pod with nothing left running ends by itself
    # (stopping it would turn a success into DeadlineExceeded, as seen on the real node).
    assert not pod_state(pod("Running", [terminated(0, "Completed")])).lingering
    assert not pod_state(
        pod("Running", [terminated(0, "Completed"), terminated(0, "Completed") | {"name": "proxy"}])
    ).lingering
    native = pod("Running", [terminated(0, "Completed")], initContainerStatuses=[running("proxy")])
    assert pod_state(native).lingering
    # A sidecar not started yet would run once started.
    waiting = {"name": "proxy", "state": {"waiting": {"reason": "ContainerCreating"}}}
    assert pod_state(pod("Running", [terminated(0, "Completed"), waiting])).lingering
    assert not pod_state(pod("Succeeded", [terminated(0, "Completed")])).lingering
    assert not pod_state(
        terminating("Running", [terminated(0, "Completed"), running("proxy")]), now=NOW
    ).lingering


def test_a_task_stopped_by_its_pods_deletion_says_so() -> None:
    killed = pod_state(terminating("Running", [terminated(137, "Error")]), now=NOW, deleted=True)
    assert killed.verdict == "failed" and killed.cause == "Deleted"
    assert killed.reason.startswith(
        "pod was deleted while running, before its task finished: container 'base'"
    )
    assert "by a person or a tool" in killed.reason


def test_a_node_pressure_eviction_keeps_kubelets_words_over_the_exit_code() -> None:
    evicted = pod(
        "Failed",
        [terminated(137, "Error")],
        reason="Evicted",
        message="The node was low on resource: memory.",
    )
    state = pod_state(evicted)
    assert (state.cause, state.reason) == (
        "Evicted",
        "pod was evicted: The node was low on resource: memory.",
    )


def test_a_task_that_ends_cleanly_once_told_to_stop_was_stopped_by_the_deletion() -> None:
    """Airflow 3's task runner answers SIGTERM by failing the task itself, and its process then
    exits 0: an end after the deletion began is the deletion's, in every phase kubelet gives it."""
    for phase in ("Running", "Succeeded"):
        for finished in ("2026-01-01T11:59:50Z", "2026-01-01T11:59:55Z"):
            stopped = terminating(phase, [terminated(0, "Completed", finished=finished)])
            for deleted in (False, True):
                state = pod_state(stopped, now=NOW, deleted=deleted)
                assert state.verdict == "failed" and state.cause == "Deleted", (phase, finished)
                assert state.reason.startswith(
                    "pod was deleted while running, before its task finished: its process stopped"
                )
                assert "by a person or a tool" in state.reason
    # Kubelet ends a deletion with a delete of grace 0 at the containers' end, which moves
    # deletionTimestamp: the object alone no longer tells, an earlier look does.
    final = terminating("Succeeded", [terminated(0, "Completed", finished="2026-01-01T11:59:55Z")])
    final["metadata"].update(deletionTimestamp="2026-01-01T11:59:56Z", deletionGracePeriodSeconds=0)
    assert pod_state(final, now=NOW, deleted=True).verdict == "success"
    assert pod_state(final, now=NOW, deleted=True, deletion_seen_first=True).cause == "Deleted"
    assert deletion_began_first(terminating("Running", [running()]))
    assert not deletion_began_first(terminating("Running", [terminated(0, "Completed")]))
    assert not deletion_began_first(pod("Running", [running()]))
    # A pod that succeeded and was then deleted (by the executor, once it saw the end) succeeded.
    done = terminating("Succeeded", [terminated(0, "Completed", finished="2026-01-01T11:59:40Z")])
    assert pod_state(done, now=NOW, deleted=True).verdict == "success"


def test_a_task_process_killed_for_memory_fails_its_pod_even_when_the_container_exits_0() -> None:
    """On cgroup v1 the kernel kills the container's largest process: the task's, under Airflow's
    supervisor, which reports it and exits 0. containerd keeps the OOM in the reason (seen on the
    real node: phase Succeeded, exitCode 0, reason OOMKilled)."""
    state = pod_state(pod("Succeeded", [terminated(0, "OOMKilled")]))
    assert state.verdict == "failed" and state.cause == "OOMKilled"
    assert state.reason == (
        "a process of container 'base' was killed for exceeding the container's memory limit (OOMKilled); "
        "the container's main process then exited with code 0"
    )
    whole = pod_state(pod("Failed", [terminated(137, "OOMKilled")]))
    assert whole.reason == "container 'base' was killed for exceeding its memory limit (OOMKilled)"
