"""Airflow 2.10/2.11: the specification's examples as pods, and queue routing (run by `./dev test-airflow2`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from devcluster import control_plane
from devcluster.airflow_stack import AirflowStack
from kubernetes import client

from tests.e2e.conftest import airflow_stack, assert_adapter_queries_answer
from tests.e2e.test_local_kubernetes_executor import POD_TASKS, check_restart_mid_run, pod_tasks
from tests.helpers import assert_says, wait_for

pytestmark = pytest.mark.e2e

SPEC_NAMESPACES = ("custom-namespace", "gpu-namespace")


@pytest.fixture(scope="module")
def spec_resources(core: client.CoreV1Api) -> None:
    """What the specification's example expects to exist: its namespaces, secret and volume claim."""
    for ns in SPEC_NAMESPACES:
        try:
            core.create_namespace({"metadata": {"name": ns}})
        except client.ApiException as exc:
            if exc.status != 409:
                raise
    wait_for(lambda: core.list_namespaced_service_account("custom-namespace").items, "service account")
    wait_for(lambda: core.list_namespaced_service_account("gpu-namespace").items, "service account")
    for create in (
        lambda: core.create_namespaced_secret(
            "custom-namespace", {"metadata": {"name": "database-secret"}, "stringData": {"password": "pw"}}
        ),
        lambda: core.create_persistent_volume(
            {
                "metadata": {"name": "data-pv"},
                "spec": {
                    "capacity": {"storage": "1Gi"},
                    "accessModes": ["ReadWriteOnce"],
                    "hostPath": {"path": "/tmp/k8s-executor-data-pv"},
                    "storageClassName": "",
                    "claimRef": {"namespace": "custom-namespace", "name": "data-pvc"},
                },
            }
        ),
        lambda: core.create_namespaced_persistent_volume_claim(
            "custom-namespace",
            {
                "metadata": {"name": "data-pvc"},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": "1Gi"}},
                    "storageClassName": "",
                    "volumeName": "data-pv",
                },
            },
        ),
    ):
        try:
            create()
        except client.ApiException as exc:
            if exc.status != 409:
                raise


@pytest.fixture(scope="module")
def spec_stack(
    cluster: control_plane.ClusterState, core: client.CoreV1Api, spec_resources: None
) -> Iterator[AirflowStack]:
    with airflow_stack(
        cluster,
        core,
        extra_namespaces=SPEC_NAMESPACES,
    ) as airflow:
        yield airflow


def test_specification_examples_run_as_pods_with_every_field(
    spec_stack: AirflowStack, core: client.CoreV1Api
) -> None:
    # Every task runs under KubernetesExecutor; queue names do not matter to it.
    spec_stack.wait_for_dag("kubernetes_executor_example")
    spec_stack.trigger("kubernetes_executor_example", "spec-1")
    assert spec_stack.wait_for_run("kubernetes_executor_example", "spec-1") == "success"
    assert {
        t: s for (t, _), (s, _) in spec_stack.task_states("kubernetes_executor_example", "spec-1").items()
    } == {
        "kubernetes_task": "success",
        "local_task": "success",
        "k8s_task": "success",
        "gpu_task": "success",
    }
    pods = {}
    for ns in (spec_stack.namespace, *SPEC_NAMESPACES):
        for pod in core.list_namespaced_pod(ns, label_selector="run_id=spec-1").items:
            pods[pod.metadata.annotations["task_id"]] = pod
    assert set(pods) == {"kubernetes_task", "local_task", "k8s_task", "gpu_task"}
    assert_adapter_queries_answer(spec_stack, "kubernetes_executor_example", "spec-1")

    k8s_pod = pods["kubernetes_task"]
    base = next(c for c in k8s_pod.spec.containers if c.name == "base")
    assert k8s_pod.metadata.namespace == "custom-namespace"
    assert base.image == "custom-image:latest"
    assert base.resources.requests == {"memory": "1Gi", "cpu": "500m"}
    assert base.resources.limits == {"memory": "2Gi", "cpu": "1"}
    assert k8s_pod.metadata.labels["team"] == "data-engineering"
    assert k8s_pod.metadata.annotations["monitoring"] == "enabled"
    env = {e.name: e for e in base.env}
    assert env["CUSTOM_VAR"].value == "custom_value"
    assert env["DB_PASSWORD"].value_from.secret_key_ref.name == "database-secret"
    assert [
        v.persistent_volume_claim.claim_name for v in k8s_pod.spec.volumes if v.name == "data-volume"
    ] == ["data-pvc"]
    assert [m.mount_path for m in base.volume_mounts if m.name == "data-volume"] == ["/data"]
    assert k8s_pod.spec.node_selector == {"disktype": "ssd"}
    terms = k8s_pod.spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution
    assert terms.node_selector_terms[0].match_expressions[0].key == "kubernetes.io/arch"
    assert "compute-type" in [t.key for t in k8s_pod.spec.tolerations]

    gpu_pod = pods["gpu_task"]
    assert gpu_pod.metadata.namespace == "gpu-namespace"
    assert gpu_pod.spec.node_selector == {"accelerator": "nvidia-gpu"}
    assert gpu_pod.spec.node_name == "devgpu-1"
    assert next(c for c in gpu_pod.spec.containers if c.name == "base").resources.limits == {
        "nvidia.com/gpu": "1"
    }
    assert "nvidia.com/gpu" in [t.key for t in gpu_pod.spec.tolerations]


@pytest.fixture(scope="module")
def hybrid2(cluster: control_plane.ClusterState, core: client.CoreV1Api) -> Iterator[AirflowStack]:
    with airflow_stack(
        cluster,
        core,
        executor="k8s_executor.LocalKubernetesExecutor",
        AIRFLOW__LOCAL_KUBERNETES_EXECUTOR__KUBERNETES_QUEUE="k8s-custom",
    ) as airflow:
        yield airflow


def test_queue_routing_and_restart_on_airflow2(hybrid2: AirflowStack, core: client.CoreV1Api) -> None:
    hybrid2.wait_for_dag("e2e_routing")
    hybrid2.trigger("e2e_routing", "route2-1")
    assert hybrid2.wait_for_run("e2e_routing", "route2-1") == "success"
    assert set(pod_tasks(core, hybrid2, "route2-1")) == POD_TASKS

    check_restart_mid_run(hybrid2, core, "route2-kill")


@pytest.fixture(scope="module")
def endings2(cluster: control_plane.ClusterState, core: client.CoreV1Api) -> Iterator[AirflowStack]:
    with airflow_stack(cluster, core, AIRFLOW__KUBERNETES_EXECUTOR__DELETE_WORKER_PODS="True") as airflow:
        yield airflow


def test_a_sidecar_neither_holds_its_task_nor_keeps_its_pod_running_on_airflow2(
    endings2: AirflowStack, core: client.CoreV1Api
) -> None:
    """The task's end is its base container's: a sidecar does not hold it, and its pod is gone
    (deleted with the successful tries' pods) or, where kept, stopped: nothing runs on."""
    endings2.wait_for_dag("e2e_endings")
    endings2.trigger("e2e_endings", "endings2-1")
    assert endings2.wait_for_run("e2e_endings", "endings2-1", timeout=300) == "failed"
    states = {
        task: state for (task, _), (state, _) in endings2.task_states("e2e_endings", "endings2-1").items()
    }
    assert states == {"sidecar_ok": "success", "native_sidecar_ok": "success", "sidecar_fails": "failed"}

    def running_on() -> list[str]:
        pods = core.list_namespaced_pod(endings2.namespace, label_selector="run_id=endings2-1").items
        return [
            p.metadata.name
            for p in pods
            if not all(
                s.state.terminated
                for s in (p.status.container_statuses or []) + (p.status.init_container_statuses or [])
            )
        ]

    try:
        wait_for(lambda: not running_on(), "every pod of the run to be gone or stopped", timeout=60)
    except AssertionError:
        # What each pod still running looks like, for whoever reads the failure.
        pods = core.list_namespaced_pod(endings2.namespace, label_selector="run_id=endings2-1").items
        raise AssertionError(
            [(p.metadata.name, p.metadata.labels, p.spec.active_deadline_seconds, p.status) for p in pods]
        ) from None

    def kept() -> set[str]:
        remaining = core.list_namespaced_pod(endings2.namespace, label_selector="run_id=endings2-1").items
        return {p.metadata.annotations["task_id"] for p in remaining}

    # A successful try's pod is deleted: once its containers have stopped, its object goes when the
    # node has confirmed their end, a moment later. Only the failed try's pod is kept.
    wait_for(lambda: kept() <= {"sidecar_fails"}, "the successful tries' pods deleted", timeout=60)


def test_a_task_evicted_while_it_runs_succeeds_in_a_new_pod_of_the_same_try_on_airflow2(
    endings2: AirflowStack, core: client.CoreV1Api
) -> None:
    """LocalTaskJob fails its task on SIGTERM, whatever the operator; the disruption guard keeps the
    signal from it when the cluster disrupted the pod, so the executor launches the same try
    again and its retries (none) are untouched."""
    dag_id, run_id = "e2e_evicted", "evicted2-1"
    endings2.wait_for_dag(dag_id)
    endings2.trigger(dag_id, run_id)
    wait_for(
        lambda: "evicted is running (first pod)" in endings2.log_file(dag_id, run_id, "evicted"),
        "the task's code to run",
        timeout=240,
        interval=1,
    )
    (pod,) = core.list_namespaced_pod(endings2.namespace, label_selector=f"dag_id={dag_id}").items
    core.create_namespaced_pod_eviction(
        pod.metadata.name,
        endings2.namespace,
        client.V1Eviction(metadata=client.V1ObjectMeta(name=pod.metadata.name, namespace=endings2.namespace)),
    )
    assert endings2.wait_for_run(dag_id, run_id, timeout=300) == "success", endings2.explain_run(
        dag_id, run_id
    )
    assert endings2.task_states(dag_id, run_id)[("evicted", -1)] == ("success", 1)
    log = endings2.log_file(dag_id, run_id, "evicted")
    assert_says(
        log,
        f"Kubernetes pod {endings2.namespace}/{pod.metadata.name} was disrupted by the cluster",
        "DisruptionTarget EvictionByEvictionAPI",
        "disruption 1 of at most 3",
        "its retries are untouched",
        "evicted is running (a new pod)",
    )
