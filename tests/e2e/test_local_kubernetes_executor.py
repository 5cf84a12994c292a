"""LocalKubernetesExecutor on Airflow 3: queue routing, both sides, and a scheduler restart."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from devcluster import control_plane
from devcluster.airflow_stack import AirflowStack
from kubernetes import client

from tests.e2e.conftest import airflow_stack
from tests.helpers import wait_for

pytestmark = pytest.mark.e2e

POD_TASKS = {"on_custom_queue", "slow_pod"}
LOCAL_TASKS = {"on_kubernetes_queue", "on_default_queue", "slow_local"}


@pytest.fixture(scope="module")
def hybrid(cluster: control_plane.ClusterState, core: client.CoreV1Api) -> Iterator[AirflowStack]:
    with airflow_stack(
        cluster,
        core,
        executor="k8s_executor.LocalKubernetesExecutor",
        # A custom queue name: the `kubernetes` queue is then an ordinary local queue.
        AIRFLOW__LOCAL_KUBERNETES_EXECUTOR__KUBERNETES_QUEUE="k8s-custom",
    ) as airflow:
        yield airflow


def pod_tasks(core: client.CoreV1Api, stack: AirflowStack, run_id: str) -> dict[str, client.V1Pod]:
    pods = core.list_namespaced_pod(stack.namespace, label_selector=f"run_id={run_id}").items
    return {p.metadata.annotations["task_id"]: p for p in pods}


def test_queue_routes_tasks_to_pods_or_local_processes(hybrid: AirflowStack, core: client.CoreV1Api) -> None:
    hybrid.wait_for_dag("e2e_routing")
    hybrid.trigger("e2e_routing", "route-1")
    assert hybrid.wait_for_run("e2e_routing", "route-1") == "success"
    assert set(pod_tasks(core, hybrid, "route-1")) == POD_TASKS
    results = dict(
        hybrid.sql(
            "SELECT task_id, value FROM xcom WHERE dag_id = 'e2e_routing' AND run_id = 'route-1' AND key = 'return_value'"
        )
    )
    assert results["on_custom_queue"] == "True"
    assert results["on_kubernetes_queue"] == "local"
    assert results["on_default_queue"] == "local"


def check_restart_mid_run(stack: AirflowStack, core: client.CoreV1Api, run_id: str) -> None:
    """Kill the scheduler while the pod task runs; the new one adopts it and nothing is lost."""
    stack.trigger("e2e_routing", run_id)
    wait_for(
        lambda: (
            (p := pod_tasks(core, stack, run_id).get("slow_pod")) is not None and p.status.phase == "Running"
        ),
        "the slow pod to run",
        timeout=180,
        interval=1,
    )
    stack.kill_component("scheduler")
    stack.start_component("scheduler")
    stack.wait_for_run("e2e_routing", run_id, timeout=400)
    states = stack.task_states("e2e_routing", run_id)
    # The pod task is adopted and ends with its true state on its first try.
    assert states[("slow_pod", -1)] == ("success", 1)
    assert set(pod_tasks(core, stack, run_id)) == POD_TASKS
    # Local tasks are handled as Airflow handles them: none is lost, each ends in a final state.
    assert all(states[(t, -1)][0] in ("success", "failed") for t in LOCAL_TASKS)


def test_scheduler_restart_adopts_pods_and_loses_nothing(
    hybrid: AirflowStack, core: client.CoreV1Api
) -> None:
    check_restart_mid_run(hybrid, core, "route-kill")


def test_beside_another_executor_in_airflow3s_executor_list(
    cluster: control_plane.ClusterState, core: client.CoreV1Api
) -> None:
    with airflow_stack(
        cluster,
        core,
        executor="k8s_executor.LocalKubernetesExecutor,LocalExecutor",
        AIRFLOW__LOCAL_KUBERNETES_EXECUTOR__KUBERNETES_QUEUE="k8s-custom",
    ) as stack:
        stack.wait_for_dag("e2e_multi")
        stack.trigger("e2e_multi", "multi-1")
        assert stack.wait_for_run("e2e_multi", "multi-1") == "success"
        assert set(pod_tasks(core, stack, "multi-1")) == {"pod_task"}
        executors = dict(
            stack.sql(
                "SELECT task_id, executor FROM task_instance WHERE dag_id = 'e2e_multi' AND run_id = 'multi-1'"
            )
        )
        assert executors["other_executor_task"] == "LocalExecutor"
