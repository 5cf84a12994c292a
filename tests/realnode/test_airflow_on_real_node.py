"""Airflow 3's scheduler with LocalKubernetesExecutor, its `kubernetes` queue's tasks as real
containers on the real node, from the image built from deploy/Dockerfile: the specification's forms of executor_config, and the
endings kubelet and the kernel produce, each explained in its task's log."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from devcluster import control_plane, image, real_node
from devcluster.airflow_stack import AirflowStack
from kubernetes import client

from tests.helpers import assert_says, wait_for
from tests.least_privilege import executor_kubeconfig, grant_workers
from tests.realnode.conftest import REAL_CLUSTER_DIR, REAL_NODE

pytestmark = pytest.mark.realnode
DAGS = Path(__file__).parent / "dags"
RUN = "real-1"


@pytest.fixture(scope="module")
def stack(real_cluster: control_plane.ClusterState, real_core: client.CoreV1Api) -> Iterator[AirflowStack]:
    _, project = image.build_images(say=print)
    image.import_into_containerd(project.archive, str(real_node.layout(REAL_CLUSTER_DIR, REAL_NODE).socket))
    namespace = f"real-{uuid.uuid4().hex[:8]}"
    real_core.create_namespace({"metadata": {"name": namespace}})
    kubeconfig = executor_kubeconfig(real_cluster, real_core.api_client, f"airflow-{namespace}", (namespace,))
    grant_workers(real_core.api_client, namespace)
    airflow = AirflowStack(
        home=Path(tempfile.mkdtemp(prefix="k8s-executor-real-")),
        cluster=real_cluster,
        namespace=namespace,
        executor="k8s_executor.LocalKubernetesExecutor",
        worker_image=project.name,
        extra_env={
            "AIRFLOW__KUBERNETES_EXECUTOR__CONFIG_FILE": str(kubeconfig),
            "AIRFLOW__KUBERNETES_EXECUTOR__DELETE_WORKER_PODS": "False",
        },
    )
    try:
        airflow.prepare()
        airflow.expose_api_to_pods(real_core)
        for dag in DAGS.glob("*.py"):
            shutil.copy(dag, airflow.dags_folder)
        airflow.start()
        airflow.wait_for_dag("real_node")
        airflow.trigger("real_node", RUN)
        yield airflow
    finally:
        airflow.stop()
        real_core.delete_namespace(namespace)


def state_of(stack: AirflowStack, task_id: str) -> str | None:
    return stack.task_states("real_node", RUN).get((task_id, -1), (None, 0))[0]


def ended(stack: AirflowStack, task_id: str, timeout: float = 300) -> str:
    return wait_for(
        lambda: state_of(stack, task_id) if state_of(stack, task_id) in ("success", "failed") else None,
        f"task {task_id} to end",
        timeout=timeout,
        interval=1,
    )


def pod_of(core: client.CoreV1Api, stack: AirflowStack, task_id: str) -> client.V1Pod:
    pods = core.list_namespaced_pod(stack.namespace).items
    return next(p for p in pods if p.metadata.annotations.get("task_id") == task_id)


def test_tasks_run_as_real_containers_from_the_built_image(
    stack: AirflowStack, real_core: client.CoreV1Api
) -> None:
    for task_id in ("hello", "dict_form", "override"):
        assert ended(stack, task_id) == "success", stack.task_log("real_node", RUN, task_id)
        pod = pod_of(real_core, stack, task_id)
        assert pod.spec.node_name == REAL_NODE
        assert pod.status.container_statuses[0].container_id.startswith("containerd://")
        assert pod.spec.containers[0].image == image.PROJECT_IMAGE
    # Left to kubelet, which ends the phase a moment after the task's container (a pod stopped
    # as soon as its task ended would fail with DeadlineExceeded instead).
    wait_for(
        lambda: pod_of(real_core, stack, "hello").status.phase == "Succeeded",
        "the hello pod to succeed",
        timeout=60,
    )
    log = stack.task_log("real_node", RUN, "hello")
    # The image's own user and home, as the official image has them.
    assert "uid 50000 image-home /opt/airflow" in log, log
    dict_pod = pod_of(real_core, stack, "dict_form")
    assert dict_pod.metadata.labels["team"] == "data-engineering"
    assert dict_pod.spec.containers[0].resources.limits["memory"] == "1Gi"
    assert pod_of(real_core, stack, "override").metadata.labels["overridden"] == "yes"


def log_saying(stack: AirflowStack, task_id: str, words: str, timeout: float = 90) -> str:
    """The task's log once it holds `words`: the task may record its own failure before its pod
    ends, and the executor's note comes with the pod's end."""
    return wait_for(
        lambda: (log := stack.task_log("real_node", RUN, task_id)) and words in log and log,
        f"the log of {task_id} to say {words!r}",
        timeout=timeout,
        interval=1,
    )


def test_the_default_queue_runs_here_and_the_kubernetes_queue_in_pods(
    stack: AirflowStack, real_core: client.CoreV1Api
) -> None:
    assert ended(stack, "local_task") == "success"
    assert "uid 0" in stack.task_log("real_node", RUN, "local_task")
    ran_in_pods = {
        p.metadata.annotations["task_id"] for p in real_core.list_namespaced_pod(stack.namespace).items
    }
    assert "local_task" not in ran_in_pods and "hello" in ran_in_pods


def test_a_task_over_its_memory_limit_is_oom_killed_and_says_so(stack: AirflowStack) -> None:
    # The kernel kills the task's process, the largest of the container (cgroup v1); Airflow's
    # supervisor survives it, fails the task and exits 0. The container keeps OOMKilled.
    assert ended(stack, "oom") == "failed"
    log = log_saying(stack, "oom", "killed for exceeding the container's memory limit (OOMKilled)")
    assert "a process of container 'base' was killed" in log, log


def test_a_worker_that_dies_fails_its_task_with_its_exit_code_and_last_words(stack: AirflowStack) -> None:
    assert ended(stack, "crash") == "failed"
    # The pod template asks for FallbackToLogsOnError: kubelet's termination message is the log's end.
    log = log_saying(stack, "crash", "container 'base' exited with code 137 (Error)")
    assert "the worker is going down" in log.split("container 'base' exited with code 137 (Error)")[1], log


def test_an_image_that_does_not_exist_fails_its_task_with_kubelets_words(stack: AirflowStack) -> None:
    assert ended(stack, "bad_image") == "failed"
    log = stack.task_log("real_node", RUN, "bad_image")
    assert "pod could not start: container 'base' is ErrImagePull" in log or "ImagePullBackOff" in log, log
    assert "example.invalid/does-not-exist:1" in log and "failed to resolve reference" in log, log


def test_a_failing_init_container_fails_its_task_with_the_containers_words(stack: AirflowStack) -> None:
    assert ended(stack, "init_fails") == "failed"
    log = stack.task_log("real_node", RUN, "init_fails")
    assert "container 'fetch' exited with code 7" in log, log


def test_a_graceful_deletion_reaches_the_task_and_its_on_kill(
    stack: AirflowStack, real_core: client.CoreV1Api
) -> None:
    wait_for(
        lambda: state_of(stack, "killable") == "running", "the killable task to run", timeout=300, interval=1
    )
    wait_for(
        lambda: "killable running" in stack.task_log("real_node", RUN, "killable"),
        "the task's code to start",
        timeout=120,
        interval=1,
    )
    pod = pod_of(real_core, stack, "killable")
    real_core.delete_namespaced_pod(pod.metadata.name, stack.namespace, grace_period_seconds=20)
    assert ended(stack, "killable") == "failed"
    mark = stack.home / "logs" / "on_kill"
    wait_for(mark.exists, "on_kill's mark", timeout=30)
    assert pod.metadata.name in mark.read_text()
    # The task runner fails its task itself (on_kill), so the try may end before the executor has
    # read the pod's end and noted its reason in the task's log: the note is awaited.
    said = f"{pod.metadata.name}: pod was deleted while running, before its task finished"
    wait_for(
        lambda: said in stack.task_log("real_node", RUN, "killable"),
        "the executor's note of the deletion in the task's log",
        timeout=60,
        interval=1,
    )
    log = stack.task_log("real_node", RUN, "killable")
    assert "by a person or a tool" in log


def test_a_task_evicted_by_the_cluster_runs_again_in_a_new_pod_of_the_same_try(
    stack: AirflowStack, real_core: client.CoreV1Api
) -> None:
    """Kubelet's own stop (SIGTERM through dumb-init, SIGKILL at the end of the grace period) of a
    pod evicted through the Eviction API: its Bash task (retries=0), which would fail itself on
    SIGTERM, is kept from the signal by the disruption guard, and succeeds in a new pod."""
    log_saying(stack, "evicted", "evicted running in its first pod", timeout=300)
    first = pod_of(real_core, stack, "evicted")
    real_core.create_namespaced_pod_eviction(
        first.metadata.name,
        stack.namespace,
        client.V1Eviction(
            metadata=client.V1ObjectMeta(name=first.metadata.name, namespace=stack.namespace),
            delete_options=client.V1DeleteOptions(grace_period_seconds=5),
        ),
    )
    assert ended(stack, "evicted") == "success", stack.task_log("real_node", RUN, "evicted")
    assert stack.task_states("real_node", RUN)[("evicted", -1)][1] == 1
    log = stack.task_log("real_node", RUN, "evicted")
    assert_says(
        log,
        f"Kubernetes pod {stack.namespace}/{first.metadata.name} was disrupted by the cluster",
        "DisruptionTarget EvictionByEvictionAPI",
        "disruption 1 of at most 3",
        "its retries are untouched",
        "evicted running in a new pod",
    )
