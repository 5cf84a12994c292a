"""Why a pod did not run, in plain words, where an operator looks: the task log and its failure reason."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from devcluster import control_plane
from devcluster.airflow_stack import AirflowStack
from kubernetes import client

from k8s_executor import identity
from tests.e2e.conftest import Statsd, airflow_stack, assert_metrics_received, statsd_env
from tests.helpers import wait_for

pytestmark = pytest.mark.e2e

DAG, RUN = "e2e_failures", "why-1"
# The victim's pod runs here, not in the executor's own namespace (multi_namespace_mode).
SIDE_NAMESPACE = "e2e-why-side"


@pytest.fixture(scope="module")
def stack(
    cluster: control_plane.ClusterState, core: client.CoreV1Api, statsd: Statsd
) -> Iterator[AirflowStack]:
    try:
        core.create_namespace({"metadata": {"name": SIDE_NAMESPACE}})
    except client.ApiException as exc:
        if exc.status != 409:
            raise
    with airflow_stack(
        cluster,
        core,
        extra_namespaces=(SIDE_NAMESPACE,),
        AIRFLOW__KUBERNETES_EXECUTOR__UNSCHEDULABLE_POD_TIMEOUT="20",
        # The worker's token lives this long; the executor fails a pod that has not started by then.
        AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT="90",
        # Airflow's own stuck-in-queued pass (revoke and requeue) stays out of this test's way.
        AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT_CHECK_INTERVAL="3600",
        **statsd_env(statsd),
    ) as airflow:
        yield airflow


def test_each_way_a_pod_fails_is_explained_in_the_task_log_and_failure_reason(
    stack: AirflowStack, core: client.CoreV1Api
) -> None:
    stack.wait_for_dag(DAG)
    stack.trigger(DAG, RUN)
    wait_for(
        lambda: stack.task_states(DAG, RUN).get(("victim", -1), (None, 0))[0] == "running",
        "the victim task to run",
        timeout=240,
        interval=1,
    )
    [pod] = [
        p
        for p in core.list_namespaced_pod(SIDE_NAMESPACE, label_selector=f"run_id={RUN}").items
        if p.metadata.annotations["task_id"] == "victim"
    ]
    # While the task runs, the UI's log comes from the pod, found by the executor by its labels
    # in whichever watched namespace it runs.
    where = f"{SIDE_NAMESPACE}/{pod.metadata.name}"

    def running_log() -> str | None:
        text = stack.task_log(DAG, RUN, "victim")
        return text if "victim is running" in text else None

    log = wait_for(running_log, "the running pod's output in the task log", timeout=60, interval=2)
    assert f"Log of the running pod {where}" in log, log
    # A second pod with the task's labels (a copy someone made by hand): the log says so.
    # A copy made from `kubectl get -o yaml`: the same labels and annotations, but for the scheduler's
    # label (a pod of the scheduler's own it did not launch is another issue's matter).
    core.create_namespaced_pod(
        stack.namespace,
        {
            "metadata": {
                "name": "victim-copy",
                "labels": {k: v for k, v in pod.metadata.labels.items() if k != identity.SCHEDULER_LABEL},
                "annotations": pod.metadata.annotations,
            },
            "spec": {"containers": [{"name": "base", "image": "any", "command": ["sleep", "600"]}]},
        },
    )
    doubled = stack.task_log(DAG, RUN, "victim")
    assert "2 pods match this task try" in doubled and f"{stack.namespace}/victim-copy" in doubled, doubled
    core.delete_namespaced_pod("victim-copy", stack.namespace, grace_period_seconds=0)
    # Deleted at once (no grace): its worker is killed before it can report its own end, so the
    # executor's report is Airflow's only news of it. (With a grace period the worker reports
    # first; test_pod_deleted_by_hand_fails_its_task_with_the_reason covers that.)
    core.delete_namespaced_pod(pod.metadata.name, SIDE_NAMESPACE, grace_period_seconds=0)
    assert stack.wait_for_run(DAG, RUN, timeout=300) == "failed"
    assert {task for (task, _), (state, _) in stack.task_states(DAG, RUN).items() if state == "failed"} == {
        "unpullable",
        "unschedulable",
        "greedy",
        "stuck",
        "malformed",
        "victim",
    }
    expected = {
        "unpullable": ["container 'base' is ErrImagePull", 'Failed to pull image "does-not-exist:1.0"'],
        "unschedulable": ["pod was unschedulable for", "didn't match Pod's node affinity"],
        "greedy": [
            "a process of container 'base' was killed for exceeding the container's memory limit (OOMKilled)"
        ],
        "stuck": ["pod did not start within [scheduler] task_queued_timeout"],
        "malformed": [
            "task e2e_failures.malformed (run why-1, try 1): executor_config['pod_override']: "
            "spec.containers must be a list, not an integer (7)"
        ],
        "victim": ["pod was deleted while running"],
    }
    # Airflow records the executor's reason as the failure reason only when it fails the task on
    # the executor's word. The greedy task's supervisor outlives the process the OOM killer takes
    # and fails the task itself first, so its reason is in the task's log only.
    failed_by_themselves = {"greedy"}
    for task_id, words in expected.items():
        if task_id in failed_by_themselves:
            # Its try may end before the executor's note of its pod reaches its log.
            wait_for(
                lambda: all(word in stack.task_log(DAG, RUN, task_id) for word in words),  # noqa: B023
                f"the executor's reason for {task_id} in its task log",
                timeout=60,
                interval=1,
            )
        log, reason = stack.task_log(DAG, RUN, task_id), stack.failure_reasons(DAG, RUN, task_id)
        for word in words:
            assert word in log, f"{task_id}: {word!r} not in the task log:\n{log}"
            if task_id not in failed_by_themselves:
                assert word in reason, f"{task_id}: {word!r} not in the failure reason:\n{reason}"
    assert "no pod was launched for task e2e_failures.malformed" in stack.task_log(DAG, RUN, "malformed")
    # An image that cannot be pulled fails before the task starts: one new pod first
    # (pod_launch_failure_retries, default 1), whose failure is the try's.
    unpullable = stack.task_log(DAG, RUN, "unpullable")
    assert unpullable.count("failed before its task started") == 1, unpullable


def test_the_executor_reports_its_metrics_through_airflow_stats(stack: AirflowStack, statsd: Statsd) -> None:
    """Runs after the failures above: creates, deletes, gauges and timers have all happened."""
    assert_metrics_received(
        statsd,
        "pod_create.status.201",
        "pod_create.duration",
        "pods.pending",
        "pods.running",
    )
