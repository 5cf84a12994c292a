"""Why a try never started, read where the UI reads it when no log folder is shared.

In the usual installation (the Helm chart without a shared logs volume) the API server cannot
read the scheduler's log folder, and Airflow asks the executor's `get_task_log` only while a try
runs: a finished try is read from the remote log store. The executor's note that ends a try
whose pod never started must therefore reach that store.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from devcluster import control_plane
from devcluster.airflow_stack import AirflowStack
from kubernetes import client

from tests.e2e.conftest import airflow_stack
from tests.helpers import wait_for

pytestmark = pytest.mark.e2e

DAG, RUN = "e2e_unstarted_logs", "unstarted-1"
LOG_STORE = Path(__file__).parent / "log_store"


@pytest.fixture(scope="module")
def stack(cluster: control_plane.ClusterState, core: client.CoreV1Api) -> Iterator[AirflowStack]:
    with airflow_stack(
        cluster,
        core,
        PYTHONPATH=os.pathsep.join(filter(None, [str(LOG_STORE), os.environ.get("PYTHONPATH")])),
        AIRFLOW__LOGGING__LOGGING_CONFIG_CLASS="folder_log_store.LOGGING_CONFIG",
        AIRFLOW__KUBERNETES_EXECUTOR__UNSCHEDULABLE_POD_TIMEOUT="20",
    ) as airflow:
        # The API server gets a log folder of its own: nothing the scheduler writes is visible
        # to it except through the store.
        airflow.kill_component("api-server")
        airflow.start_component(
            "api-server", env={"AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(airflow.home / "api-server-logs")}
        )
        airflow.wait_for_api()
        yield airflow


def test_the_reason_a_pod_never_started_reaches_the_ui_through_the_remote_log_store(
    stack: AirflowStack,
) -> None:
    stack.wait_for_dag(DAG)
    stack.trigger(DAG, RUN)
    assert stack.wait_for_run(DAG, RUN, timeout=300) == "failed"

    def explained() -> str | None:
        text = stack.task_log(DAG, RUN, "unschedulable")
        return text if "pod was unschedulable for" in text else None

    log = wait_for(explained, "the executor's explanation in the log the UI reads", timeout=60, interval=2)
    # The pod's events, in Kubernetes' own words, and where the API server read them from.
    assert "didn't match Pod's node affinity" in log, log
    assert "(test store)" in log, log
    # The scheduler wrote its note locally too; the API server's own folder has no such file.
    written = list((stack.home / "logs").rglob("attempt=1.log"))
    assert [p for p in written if "e2e_unstarted_logs" in str(p)], written
    assert not list((stack.home / "api-server-logs").rglob("*e2e_unstarted_logs*")), "a shared log file"
