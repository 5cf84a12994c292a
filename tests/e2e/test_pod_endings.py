"""How a pod's end becomes its task's: by its `base` container, whatever a sidecar does; judged
when its containers end, not when its deletion starts; with the cluster's own words when the
cluster ended it (DisruptionTarget), and with no such words when a person did."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from devcluster import control_plane
from devcluster.airflow_stack import AirflowStack
from kubernetes import client

from k8s_executor import identity
from tests.e2e.conftest import airflow_stack
from tests.helpers import assert_says, wait_for

pytestmark = pytest.mark.e2e

DAG, RUN = "e2e_endings", "endings-1"


@pytest.fixture(scope="module")
def stack(cluster: control_plane.ClusterState, core: client.CoreV1Api) -> Iterator[AirflowStack]:
    # Finished pods are kept (marked done), as the e2e stacks keep them.
    with airflow_stack(cluster, core) as airflow:
        yield airflow


def pod_of(
    core: client.CoreV1Api, stack: AirflowStack, task_id: str, running: bool = False
) -> client.V1Pod | None:
    pods = core.list_namespaced_pod(stack.namespace, label_selector=f"run_id={RUN}").items
    return next(
        (
            p
            for p in pods
            if p.metadata.annotations.get("task_id") == task_id
            and not (running and (p.status.phase != "Running" or p.metadata.deletion_timestamp))
        ),
        None,
    )


def state_of(stack: AirflowStack, task_id: str) -> str | None:
    return stack.task_states(DAG, RUN).get((task_id, -1), (None, 0))[0]


def test_pods_end_as_their_task_did(stack: AirflowStack, core: client.CoreV1Api) -> None:
    stack.wait_for_dag(DAG)
    stack.trigger(DAG, RUN)
    for task_id in ("finishes_in_grace", "evicted", "evicted_twice", "bash_evicted"):
        code_running(stack, task_id)

    # Deleted with a grace period longer than the task has left: the task finishes inside it, and
    # its success stands.
    graceful = pod_of(core, stack, "finishes_in_grace")
    assert graceful is not None
    core.delete_namespaced_pod(graceful.metadata.name, stack.namespace, grace_period_seconds=60)

    # Evicted through the Eviction API (a drain): the API server marks it DisruptionTarget first.
    # Its task (retries=0) is launched again in a new pod, and succeeds there.
    victim = pod_of(core, stack, "evicted")
    assert victim is not None
    evict(core, victim)
    # A Bash task, whose on_kill would fail it when told to stop: the disruption guard keeps
    # SIGTERM from it, and it too succeeds in a new pod of the same try.
    bash_victim = pod_of(core, stack, "bash_evicted")
    assert bash_victim is not None
    evict(core, bash_victim)
    # Disrupted twice with its own disruption_retries of 1: the second disruption fails it.
    first_of_two = pod_of(core, stack, "evicted_twice")
    assert first_of_two is not None
    evict(core, first_of_two)
    second_of_two = wait_for(
        lambda: (
            (p := pod_of(core, stack, "evicted_twice", running=True)) is not None
            and p.metadata.name != first_of_two.metadata.name
            and p
        ),
        "evicted_twice's new pod to run",
        timeout=120,
        interval=1,
    )
    wait_for(
        lambda: stack.task_log(DAG, RUN, "evicted_twice").count("evicted_twice is running") >= 2,
        "evicted_twice's code to run in its new pod",
        timeout=120,
        interval=1,
    )
    evict(core, second_of_two)
    assert stack.wait_for_run(DAG, RUN, timeout=300) == "failed", stack.explain_run(DAG, RUN)
    states = {task: state for (task, _), (state, _) in stack.task_states(DAG, RUN).items()}
    assert states == {
        "sidecar_ok": "success",
        "native_sidecar_ok": "success",
        "sidecar_fails": "failed",
        "finishes_in_grace": "success",
        "evicted": "success",
        "evicted_twice": "failed",
        "bash_evicted": "success",
    }, stack.explain_run(DAG, RUN)
    assert "finished inside the grace period" in stack.task_log(DAG, RUN, "finishes_in_grace")

    # The same try, its retries untouched; its log says which pod the cluster ended, how, and that
    # the task was launched again.
    assert stack.task_states(DAG, RUN)[("evicted", -1)][1] == 1
    evicted_log = stack.task_log(DAG, RUN, "evicted")
    assert_says(
        evicted_log,
        f"Kubernetes pod {stack.namespace}/{victim.metadata.name} was disrupted by the cluster",
        "evicted through the Eviction API",
        "DisruptionTarget EvictionByEvictionAPI",
        "disruption 1 of at most 3",
        "its retries are untouched",
        "evicted is running (a new pod)",
    )
    assert stack.task_states(DAG, RUN)[("bash_evicted", -1)][1] == 1
    bash_log = stack.task_log(DAG, RUN, "bash_evicted")
    assert_says(
        bash_log,
        f"Kubernetes pod {stack.namespace}/{bash_victim.metadata.name} was disrupted by the cluster",
        "disruption 1 of at most 3",
        "bash_evicted is running (a new pod)",
    )

    said = f"after 1 disruption(s) of this try's earlier pods, each launched again (disruption_retries 1): (1) pod {stack.namespace}/{first_of_two.metadata.name}"
    wait_for(
        lambda: said in stack.task_log(DAG, RUN, "evicted_twice"),
        "evicted_twice's failure, with its first disruption, in its log",
        timeout=60,
        interval=1,
    )
    assert stack.task_log(DAG, RUN, "evicted_twice").count("DisruptionTarget EvictionByEvictionAPI") >= 2


def code_running(stack: AirflowStack, task_id: str) -> None:
    wait_for(lambda: state_of(stack, task_id) == "running", f"{task_id} to run", timeout=240, interval=1)
    # Running in the database is not yet running its code: the worker first loads the DAG, and a
    # SIGTERM then ends it before its handler is set (Airflow's own behaviour).
    wait_for(
        lambda: f"{task_id} is running" in stack.task_log(DAG, RUN, task_id),
        f"{task_id}'s code to run",
        timeout=120,
        interval=1,
    )


def evict(core: client.CoreV1Api, pod: client.V1Pod) -> None:
    core.create_namespaced_pod_eviction(
        pod.metadata.name,
        pod.metadata.namespace,
        client.V1Eviction(
            metadata=client.V1ObjectMeta(name=pod.metadata.name, namespace=pod.metadata.namespace),
            delete_options=client.V1DeleteOptions(grace_period_seconds=1),
        ),
    )


def test_a_pod_whose_sidecar_outlives_its_task_does_not_run_on(
    stack: AirflowStack, core: client.CoreV1Api
) -> None:
    """Runs after the run above, where pods are kept (delete_worker_pods = False): each sidecar pod
    is marked done and stopped, nothing in it runs on. (A deleted pod's sidecar goes with it: the
    Airflow 2 suite runs with pods deleted.)"""
    for task_id in ("sidecar_ok", "native_sidecar_ok", "sidecar_fails"):

        def stopped(t: str = task_id) -> client.V1Pod | None:
            pod = pod_of(core, stack, t)
            assert pod is not None, f"{t}'s pod was not kept"
            statuses = (pod.status.container_statuses or []) + (pod.status.init_container_statuses or [])
            return pod if all(s.state.terminated for s in statuses) else None

        pod = wait_for(stopped, f"{task_id}'s pod to stop", timeout=60, interval=1)
        assert pod.status.phase in ("Failed", "Succeeded"), pod.status
        assert pod.metadata.labels.get(identity.DONE_LABEL) == "True"
    # A regular sidecar is stopped by the executor, through the pod's active deadline.
    assert pod_of(core, stack, "sidecar_ok").status.reason == "DeadlineExceeded"
    # Its end came from its task, not from its stop.
    assert stack.task_states(DAG, RUN)[("sidecar_ok", -1)][0] == "success"
    assert "ValueError" in stack.task_log(DAG, RUN, "sidecar_fails")
