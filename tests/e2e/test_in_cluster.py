"""Airflow installed into the cluster from deploy/in-cluster/: the scheduler is a pod, its executor
reaches the API server with the pod's own ServiceAccount token (`in_cluster = True`, the default)
and only the shipped Role."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from devcluster import control_plane, in_cluster
from devcluster.in_cluster import InClusterAirflow
from kubernetes import client

from tests.e2e.conftest import DAGS
from tests.helpers import wait_for

pytestmark = pytest.mark.e2e
DAG = "e2e_credentials"


@pytest.fixture(scope="module")
def installed(cluster: control_plane.ClusterState) -> Iterator[InClusterAirflow]:
    home = Path(tempfile.mkdtemp(prefix="k8s-executor-in-cluster-"))
    home.chmod(0o755)
    airflow = InClusterAirflow(home=home, cluster=cluster, namespace=f"incluster-{uuid.uuid4().hex[:6]}")
    with in_cluster.installed(airflow, DAGS / f"{DAG}.py", DAG) as ready:
        yield ready


def test_the_scheduler_runs_as_a_pod_with_its_service_account(
    core: client.CoreV1Api, installed: InClusterAirflow
) -> None:
    [scheduler] = core.list_namespaced_pod(installed.namespace, label_selector="component=scheduler").items
    assert scheduler.spec.service_account_name == "airflow-scheduler"
    assert any(v.projected for v in scheduler.spec.volumes), "no ServiceAccount token volume"
    cfg = core.read_namespaced_config_map("airflow-config", installed.namespace).data["airflow.cfg"]
    assert "in_cluster" not in cfg.split("[kubernetes_executor]")[1].replace("# in_cluster", "")
    assert "config_file" not in cfg

    run_id = f"in-cluster-{uuid.uuid4().hex[:6]}"

    def workers() -> list[client.V1Pod]:
        return core.list_namespaced_pod(installed.namespace, label_selector=f"run_id={run_id}").items

    installed.trigger(DAG, run_id)
    # Worker pods are made from the template the scheduler reads from its mounted config map.
    first = wait_for(workers, "the first worker pod", timeout=240, interval=0.5)[0]
    assert {"config", "dags", "logs"} <= {v.name for v in first.spec.volumes}
    installed.wait_for_run(DAG, run_id, timeout=600)
    states = installed.task_states(DAG, run_id)
    expected = {("work", i): ("failed" if i == 19 else "success", 1) for i in range(20)}
    assert states == expected, (
        f"{installed.explain_run(DAG, run_id)}\n{installed.component_log('scheduler')[-5000:]}"
    )
    assert "task 19 fails on purpose" in installed.task_log(DAG, run_id, "work", map_index=19)
    # Nothing left behind: every pod deleted, or kept for inspection and marked done.
    wait_for(
        lambda: all(p.metadata.labels.get("airflow_executor_done") == "True" for p in workers()),
        "every finished pod disposed of",
        timeout=120,
    )
    assert "KubernetesExecutor started" in installed.component_log("scheduler")
