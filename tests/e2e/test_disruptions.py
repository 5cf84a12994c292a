"""A task whose pod the cluster disrupts runs again in a new pod of the same try, its retries
(none) untouched: a NoExecute taint on its node, preemption by a pod of higher priority, its node
lost. Two spot nodes of 1 CPU join the cluster for this (each with an agent of its own, so one can
be lost alone); each task's first pod fills one, and its new pod goes to the other.

Airflow 3 here; on Airflow 2, an eviction mid-run is shown by tests/e2e/test_airflow2.py (its
LocalTaskJob would fail the task on SIGTERM: the disruption guard keeps the signal from it)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
from devcluster import control_plane
from devcluster.airflow_stack import AirflowStack
from kubernetes import client

from tests.conftest import CLUSTER_DIR
from tests.e2e.conftest import airflow_stack
from tests.helpers import assert_says, wait_for

pytestmark = pytest.mark.e2e

SPOT = ("spot-a", "spot-b")
SPOT_TAINT = {"key": "pool", "value": "spot", "effect": "NoSchedule"}
HIGH = "k8s-executor-e2e-high"
RUN = "disrupted-1"


@pytest.fixture(scope="module")
def spot_nodes(cluster: control_plane.ClusterState, core: client.CoreV1Api) -> Iterator[tuple[str, ...]]:
    for name in SPOT:
        control_plane.join_node(
            CLUSTER_DIR,
            f"name={name},runtime=process,cpu=1,memory=4Gi,pods=10,label.pool=spot,taint.pool=spot:NoSchedule",
        )

    def ready() -> bool:
        nodes = {n.metadata.name: n for n in core.list_node(label_selector="pool=spot").items}
        return all(
            name in nodes
            and any(c.type == "Ready" and c.status == "True" for c in nodes[name].status.conditions or [])
            for name in SPOT
        )

    wait_for(ready, "the spot nodes to be Ready", timeout=60, interval=0.5)
    yield SPOT
    for name in SPOT:
        control_plane.leave_node(CLUSTER_DIR, name)
        with contextlib.suppress(client.ApiException):
            core.delete_node(name)


@pytest.fixture(scope="module")
def stack(
    cluster: control_plane.ClusterState, core: client.CoreV1Api, spot_nodes: tuple[str, ...]
) -> Iterator[AirflowStack]:
    with airflow_stack(cluster, core) as airflow:
        yield airflow


def first_pod_running(stack: AirflowStack, core: client.CoreV1Api, dag_id: str) -> client.V1Pod:
    stack.wait_for_dag(dag_id)
    stack.trigger(dag_id, RUN)
    # Its code runs (not only its task instance): a SIGTERM before would end the worker's start.
    wait_for(
        lambda: "work is running (first pod)" in stack.task_log(dag_id, RUN, "work"),
        f"{dag_id}'s task to run",
        timeout=240,
        interval=1,
    )
    pods = core.list_namespaced_pod(stack.namespace, label_selector=f"dag_id={dag_id}").items
    (pod,) = pods
    assert pod.spec.node_name in SPOT, pod.spec.node_name
    return pod


def relaunched_with_retries_untouched(
    stack: AirflowStack, dag_id: str, pod: client.V1Pod, cause: str
) -> None:
    assert stack.wait_for_run(dag_id, RUN, timeout=300) == "success", stack.explain_run(dag_id, RUN)
    assert stack.task_states(dag_id, RUN)[("work", -1)] == ("success", 1)
    log = stack.task_log(dag_id, RUN, "work")
    assert_says(
        log,
        f"Kubernetes pod {stack.namespace}/{pod.metadata.name} was disrupted by the cluster",
        f"DisruptionTarget {cause}",
        "disruption 1 of at most 3",
        "its retries are untouched",
        "work is running (a new pod)",
    )


def test_a_noexecute_taint_on_its_node(stack: AirflowStack, core: client.CoreV1Api) -> None:
    pod = first_pod_running(stack, core, "e2e_disrupt_taint")
    node = pod.spec.node_name
    disrupting = {"key": "k8s-executor.dev/reclaimed", "value": "now", "effect": "NoExecute"}
    core.patch_node(node, {"spec": {"taints": [SPOT_TAINT, disrupting]}})
    try:
        relaunched_with_retries_untouched(stack, "e2e_disrupt_taint", pod, "DeletionByTaintManager")
    finally:
        core.patch_node(node, {"spec": {"taints": [SPOT_TAINT]}})


def test_preemption_by_a_pod_of_higher_priority(stack: AirflowStack, core: client.CoreV1Api) -> None:
    scheduling = client.SchedulingV1Api(core.api_client)
    with contextlib.suppress(client.ApiException):
        scheduling.create_priority_class(
            client.V1PriorityClass(metadata=client.V1ObjectMeta(name=HIGH), value=1_000_000)
        )
    pod = first_pod_running(stack, core, "e2e_disrupt_preempt")
    preemptor = client.V1Pod(
        metadata=client.V1ObjectMeta(name="preemptor", namespace=stack.namespace),
        spec=client.V1PodSpec(
            priority_class_name=HIGH,
            node_selector={"kubernetes.io/hostname": pod.spec.node_name},
            tolerations=[client.V1Toleration(**SPOT_TAINT)],
            termination_grace_period_seconds=0,
            containers=[
                client.V1Container(
                    name="main",
                    image="busybox",
                    command=["sleep", "3600"],
                    resources=client.V1ResourceRequirements(requests={"cpu": "1"}),
                )
            ],
        ),
    )
    core.create_namespaced_pod(stack.namespace, preemptor)
    try:
        relaunched_with_retries_untouched(stack, "e2e_disrupt_preempt", pod, "PreemptionByScheduler")
    finally:
        core.delete_namespaced_pod("preemptor", stack.namespace, grace_period_seconds=0)


def test_its_node_lost(stack: AirflowStack, core: client.CoreV1Api) -> None:
    pod = first_pod_running(stack, core, "e2e_disrupt_node")
    # The machine goes (its agent and containers, with no last word), and its Node object is
    # deleted (by the cloud's node controller, or a person): the pod garbage collector ends it.
    control_plane.leave_node(CLUSTER_DIR, pod.spec.node_name)
    core.delete_node(pod.spec.node_name)
    relaunched_with_retries_untouched(stack, "e2e_disrupt_node", pod, "DeletionByPodGC")
