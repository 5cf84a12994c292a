"""A try whose pod the cluster disrupted gets a new pod without spending the task's retries
(disruption_retries): the ledger's rule, and the setting's two places."""

from __future__ import annotations

import dataclasses
import json

import pytest

from k8s_executor import executor_config
from k8s_executor.executor_config import ExecutorConfigError
from k8s_executor.identity import TaskRef
from k8s_executor.ledger import DisposalRule, Launch, PodLedger, Requeue, TaskResult, disrupted, requeue_from
from k8s_executor.settings import ExecutorSettings
from k8s_executor.shapes import PodEvent, TaskRow
from k8s_executor.state_mapping import PodState, pod_state

REF = TaskRef("d", "t", "r", try_number=1)
EVICTED = PodState(
    "failed",
    "pod was deleted while running, before its task finished: container 'base' exited with code 137",
    "Deleted",
    disruption="EvictionByEvictionAPI",
)


def test_what_counts_as_a_disruption() -> None:
    assert disrupted(EVICTED)
    # kubelet's node-pressure eviction, on clusters that do not set the condition.
    assert disrupted(PodState("failed", "pod was evicted: low on memory", "Evicted"))
    # A person's deletion, the task's own failure, a success: not the cluster's doing.
    assert not disrupted(PodState("failed", "pod was deleted while running", "Deleted"))
    assert not disrupted(PodState("failed", "exited with code 1", "Error"))
    assert not disrupted(PodState("success"))


def run(ledger: PodLedger, pod: str, state: PodState) -> list[object]:
    ledger.launched("ns", pod, ok=True)
    return list(ledger.observed(PodEvent("ns", pod, REF, "7", state, "2")))


def test_a_disrupted_try_is_requeued_with_a_fresh_payload_until_its_budget_is_spent() -> None:
    ledger = PodLedger("7", DisposalRule(), clock=lambda: 0.0, disruption_retries=3)
    ledger.launching(REF, "ns", "p0", 600, payload="first", disruption_retries=1)
    assert not [a for a in run(ledger, "p0", EVICTED) if isinstance(a, TaskResult)]
    # Held: the database decides (a task that recorded its end keeps it).
    assert ledger.questions().started == {REF}
    (requeue,) = ledger.answered({REF: TaskRow(1, "running", 7)})
    assert isinstance(requeue, Requeue)
    assert (requeue.ti_state, requeue.disruption, requeue.allowed, requeue.payload) == (
        "running",
        1,
        1,
        "first",
    )
    assert requeue.cause == "EvictionByEvictionAPI"
    # The task's own budget (1) stands over the executor's (3).
    assert ledger.requeued(REF, "second") == [Launch(REF, "second", 600)]
    assert ledger.attempt(REF) == 1
    ledger.launching(REF, "ns", "p1", 600, payload="second")
    # Disrupted again, past its budget: the failure lists the disruption before it.
    (result,) = [a for a in run(ledger, "p1", EVICTED) if isinstance(a, TaskResult)]
    assert result.state.verdict == "failed"
    assert (
        "[after 1 disruption(s) of this try's earlier pods, each launched again (disruption_retries 1)"
        in (result.state.reason)
    )
    assert "(1) pod ns/p0: pod was deleted while running" in result.state.reason


@pytest.mark.parametrize(
    "row",
    [
        TaskRow(1, "success", 7),  # it finished within its grace period
        TaskRow(1, "up_for_retry", 7),  # it failed itself when told to stop
        TaskRow(2, "queued", 7),  # another try since
        TaskRow(1, "running", 8),  # another scheduler's now
        None,
    ],
)
def test_a_disruption_is_the_try_s_end_when_the_database_says_it_is_over_or_not_ours(
    row: TaskRow | None,
) -> None:
    ledger = PodLedger("7", DisposalRule(), clock=lambda: 0.0, disruption_retries=3)
    ledger.launching(REF, "ns", "p0", 600, payload="first")
    run(ledger, "p0", EVICTED)
    (result,) = ledger.answered({REF: row})
    assert isinstance(result, TaskResult) and result.state == EVICTED


def test_a_lost_compare_and_set_reports_the_disruption() -> None:
    ledger = PodLedger("7", DisposalRule(), clock=lambda: 0.0, disruption_retries=3)
    ledger.launching(REF, "ns", "p0", 600, payload="first")
    run(ledger, "p0", EVICTED)
    ledger.answered({REF: TaskRow(1, "running", 7)})
    (result,) = ledger.requeued(REF, None)
    assert isinstance(result, TaskResult) and result.state == EVICTED
    assert REF not in ledger.in_flight()


def test_the_setting_and_the_task_s_own() -> None:
    assert ExecutorSettings.parse({}).disruption_retries == 3
    assert ExecutorSettings.parse({"disruption_retries": "0"}).disruption_retries == 0
    parsed = executor_config.parse({"KubernetesExecutor": {"disruption_retries": 5, "request_cpu": "1"}})
    assert parsed.disruption_retries == 5
    assert all("disruption_retries" not in str(o) for o in parsed.overrides)
    assert executor_config.parse({"KubernetesExecutor": {"image": "x"}}).disruption_retries is None
    with pytest.raises(
        ExecutorConfigError, match=r"disruption_retries: Input should be greater than or equal to 0"
    ):
        executor_config.parse({"KubernetesExecutor": {"disruption_retries": -1}})


def test_a_running_try_whose_pod_went_unseen_is_not_run_twice() -> None:
    """The pod is gone (or overran its grace period) with its container never seen to end: its
    worker may still run on a node cut off from the cluster, and a new pod of the same try would
    share its task instance. It fails, as before; one that never started is launched again."""
    unseen = dataclasses.replace(EVICTED, end_unseen=True)
    assert requeue_from(EVICTED, "running") and requeue_from(unseen, "queued")
    assert not requeue_from(unseen, "running")
    assert not requeue_from(EVICTED, "success") and not requeue_from(EVICTED, "up_for_retry")
    ledger = PodLedger("7", DisposalRule(), clock=lambda: 0.0, disruption_retries=3)
    ledger.launching(REF, "ns", "p0", 600, payload="first")
    run(ledger, "p0", unseen)
    (result,) = ledger.answered({REF: TaskRow(1, "running", 7)})
    assert isinstance(result, TaskResult) and result.state == unseen


def test_the_watcher_marks_a_pod_gone_with_its_container_unseen() -> None:
    running_pod = {
        "metadata": {"name": "p", "namespace": "ns", "deletionTimestamp": "2026-12-02T06:00:00Z"},
        "status": {
            "phase": "Running",
            "containerStatuses": [{"name": "base", "state": {"running": {}}}],
            "conditions": [
                {"type": "DisruptionTarget", "status": "True", "reason": "DeletionByTaintManager"}
            ],
        },
    }
    gone = pod_state(running_pod, deleted=True)
    assert gone.verdict == "failed" and gone.end_unseen and disrupted(gone)
    ended = json.loads(json.dumps(running_pod))
    ended["status"]["containerStatuses"][0]["state"] = {"terminated": {"exitCode": 137, "reason": "Error"}}
    assert not pod_state(ended, deleted=True).end_unseen


def test_an_eviction_for_the_pod_s_own_limits_is_not_a_disruption() -> None:
    # Kubelet's words (pkg/kubelet/eviction/helpers.go): a new pod would meet the same limit.
    own = PodState(
        "failed",
        "pod was evicted: Pod ephemeral local storage usage exceeds the total limit of containers 1Gi.",
        "Evicted",
        disruption="TerminationByKubelet",
    )
    assert not disrupted(own)
    pressure = PodState("failed", "pod was evicted: The node was low on resource: memory.", "Evicted")
    assert disrupted(pressure)
