"""Connection tests requested through the API server run in pods (Airflow 3.3's TestConnection
workloads): from where tasks run, with the result reported to the API."""

from __future__ import annotations

import socket
import uuid
from typing import Any

import pytest
from devcluster import control_plane
from devcluster.airflow_stack import AirflowStack
from kubernetes import client

from k8s_executor import identity
from tests.e2e.conftest import airflow_stack
from tests.helpers import wait_for

pytestmark = pytest.mark.e2e


def enqueue(stack: AirflowStack, port: int, password: str = "airflow") -> str:
    connection_id = f"pg_{uuid.uuid4().hex[:6]}"
    answer = stack.rest(
        "/api/v2/connections/enqueue-test",
        {
            "connection_id": connection_id,
            "conn_type": "postgres",
            "host": "127.0.0.1",
            "port": port,
            "login": "airflow",
            "password": password,
            "schema": "airflow",
        },
    )
    token: str = answer["token"]
    return token


def result(stack: AirflowStack, token: str) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        answer: dict[str, Any] = stack.rest(
            "/api/v2/connections/enqueue-test", headers={"Airflow-Connection-Test-Token": token}
        )
        return answer if answer["state"] in ("success", "failed") else None

    return wait_for(ended, "the connection test's result", timeout=180, interval=2)


def test_connection_tests_run_in_pods_and_their_results_reach_the_api(
    cluster: control_plane.ClusterState, core: client.CoreV1Api
) -> None:
    # A port that accepts and then says nothing: the test's own timeout ends it.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    # Bound and never listening: connections are refused, and no other process can take the port.
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    try:
        with airflow_stack(
            cluster,
            core,
            AIRFLOW__CORE__TEST_CONNECTION="Enabled",
            AIRFLOW__CONNECTION_TEST__TIMEOUT="8",
        ) as stack:
            reachable = enqueue(stack, stack.pg_port)
            refused = enqueue(stack, closed_port)
            hanging = enqueue(stack, silent.getsockname()[1])
            ok = result(stack, reachable)
            assert ok["state"] == "success", ok
            bad = result(stack, refused)
            if bad["result_message"] == "Connection test failed unexpectedly: ServerResponseError":
                # The worker's own client met an answer of the execution API it did not expect (a
                # retried fetch of the test, seen on a loaded machine): Airflow's, not the pod's.
                # The same test is asked once more.
                bad = result(stack, enqueue(stack, closed_port))
            assert bad["state"] == "failed" and "refused" in (bad["result_message"] or "").lower(), bad
            slow = result(stack, hanging)
            assert slow["state"] == "failed" and "timed out" in (slow["result_message"] or ""), slow
            pods = [
                p
                for p in core.list_namespaced_pod(stack.namespace).items
                if identity.CONNECTION_TEST_ANNOTATION in (p.metadata.annotations or {})
            ]
            # Each ran in a pod of its own, where tasks run.
            assert len(pods) == 3 and all(p.metadata.name.startswith("connection-test-pg") for p in pods), [
                p.metadata.name for p in pods
            ]
    finally:
        silent.close()
        closed.close()
