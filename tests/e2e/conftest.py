"""A real Airflow 3 (PostgreSQL, API server, DAG processor, scheduler) on the development cluster."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from devcluster import control_plane
from devcluster.airflow_stack import AirflowStack

DAGS = Path(__file__).parent / "dags"


@pytest.fixture(scope="module")
def stack(cluster: control_plane.ClusterState, core: client.CoreV1Api) -> Iterator[AirflowStack]:
    namespace = "e2e-" + Path(tempfile.mktemp()).name[-8:].lower().replace("_", "x")
    core.create_namespace({"metadata": {"name": namespace}})
    home = Path(tempfile.mkdtemp(prefix="k8s-executor-e2e-"))
    airflow = AirflowStack(
        home=home,
        cluster=cluster,
        namespace=namespace,
        # Keep finished pods (marked done) so the tests can read their specs.
        extra_env={"AIRFLOW__KUBERNETES_EXECUTOR__DELETE_WORKER_PODS": "False"},
    )
    airflow.prepare()
    for dag in DAGS.glob("*.py"):
        shutil.copy(dag, airflow.dags_folder)
    airflow.start()
    yield airflow
    airflow.stop()
    core.delete_namespace(namespace)
    # The home (logs of every Airflow component) stays for a post-mortem; it lives in /tmp.
