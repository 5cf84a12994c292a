"""deploy/in-cluster/ on the real node: the scheduler, the API server and the DAG processor as pods
of the image built from deploy/Dockerfile, the scheduler's executor reaching the API server with the
pod's own projected ServiceAccount token and the shipped Role; its workers real containers too."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from devcluster import control_plane, image, in_cluster, real_node
from devcluster.in_cluster import RealNodeInClusterAirflow
from kubernetes import client

from tests.helpers import wait_for
from tests.realnode.conftest import REAL_CLUSTER_DIR, REAL_NODE

pytestmark = pytest.mark.realnode
DAG = "in_cluster_real"


@pytest.fixture(scope="module")
def installed(real_cluster: control_plane.ClusterState) -> Iterator[RealNodeInClusterAirflow]:
    _, project = image.build_images(say=print)
    image.import_into_containerd(project.archive, str(real_node.layout(REAL_CLUSTER_DIR, REAL_NODE).socket))
    home = Path(tempfile.mkdtemp(prefix="k8s-executor-in-cluster-real-"))
    home.chmod(0o755)
    airflow = RealNodeInClusterAirflow(
        home=home, cluster=real_cluster, namespace=f"incluster-{uuid.uuid4().hex[:6]}", image=project.name
    )
    with in_cluster.installed(airflow, Path(__file__).parent / "dags_in_cluster" / f"{DAG}.py", DAG) as ready:
        yield ready


def test_the_scheduler_pod_from_the_built_image_runs_a_dag_on_the_real_node(
    real_core: client.CoreV1Api, installed: RealNodeInClusterAirflow
) -> None:
    pods = real_core.list_namespaced_pod(installed.namespace).items
    [scheduler] = [p for p in pods if p.metadata.labels.get("component") == "scheduler"]
    assert scheduler.spec.node_name == REAL_NODE
    assert scheduler.spec.containers[0].image == image.PROJECT_IMAGE
    assert scheduler.status.container_statuses[0].container_id.startswith("containerd://")
    assert scheduler.spec.service_account_name == "airflow-scheduler"
    assert any(v.projected for v in scheduler.spec.volumes), "no projected ServiceAccount token"

    run_id = f"real-{uuid.uuid4().hex[:6]}"
    installed.trigger(DAG, run_id)
    installed.wait_for_run(DAG, run_id, timeout=600)
    states = installed.task_states(DAG, run_id)
    expected = {("work", i): ("failed" if i == 2 else "success", 1) for i in range(3)}
    assert states == expected, (
        f"{installed.explain_run(DAG, run_id)}\n{installed.component_log('scheduler')[-5000:]}"
    )
    workers = real_core.list_namespaced_pod(installed.namespace, label_selector=f"run_id={run_id}").items
    assert {w.spec.node_name for w in workers} == {REAL_NODE}
    assert all(w.status.container_statuses[0].container_id.startswith("containerd://") for w in workers)
    assert "task 2 fails on purpose" in installed.task_log(DAG, run_id, "work", map_index=2)
    assert "as uid 50000" in installed.task_log(DAG, run_id, "work", map_index=0)
    wait_for(
        lambda: "KubernetesExecutor started" in installed.component_log("scheduler"),
        "the scheduler's executor to have started",
        timeout=30,
    )
