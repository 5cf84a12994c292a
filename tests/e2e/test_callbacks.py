"""Executor callbacks run in pods of their own (Airflow 3's ExecuteCallback workloads).

Two DAGs miss a deadline a second after their run is queued: the first's callback writes a file,
the second's raises. Each callback runs in a pod of its own; Airflow records the first as a
success and the second as failed, with the callback's own error.
"""

from __future__ import annotations

import pytest
from devcluster import control_plane
from kubernetes import client

from k8s_executor import identity
from tests.e2e.conftest import airflow_stack
from tests.helpers import wait_for

pytestmark = pytest.mark.e2e

LIBRARY = """
from pathlib import Path


def write_marker(path: str, **context) -> None:
    Path(path).write_text("deadline missed")


def raise_error(**context) -> None:
    raise RuntimeError("the deadline callback raised on purpose")
"""

DAG = """
import datetime

from airflow.sdk import DAG, DeadlineAlert, DeadlineReference, SyncCallback, task

for dag_id, callback, kwargs in (
    ("e2e_deadline_ok", "e2e_callback_lib.write_marker", {"path": "{marker}"}),
    ("e2e_deadline_raises", "e2e_callback_lib.raise_error", {}),
):
    with DAG(
        dag_id,
        start_date=datetime.datetime(2024, 1, 1),
        schedule=None,
        catchup=False,
        deadline=DeadlineAlert(
            reference=DeadlineReference.DAGRUN_QUEUED_AT,
            interval=datetime.timedelta(seconds=1),
            callback=SyncCallback(callback, kwargs=kwargs),
        ),
    ):

        @task
        def slow() -> None:
            time.sleep(30)

        slow()
"""


def test_a_missed_deadlines_callback_runs_in_a_pod_and_its_outcome_reaches_airflow(
    cluster: control_plane.ClusterState, core: client.CoreV1Api
) -> None:
    with airflow_stack(cluster, core) as stack:
        marker = stack.home / "deadline-marker"
        (stack.dags_folder / "e2e_callback_lib.py").write_text(LIBRARY)
        (stack.dags_folder / "e2e_deadlines.py").write_text(DAG.replace("{marker}", str(marker)))
        for dag_id in ("e2e_deadline_ok", "e2e_deadline_raises"):
            stack.wait_for_dag(dag_id)
            stack.trigger(dag_id, "deadline-1")

        def callbacks() -> list[tuple[str, str, str | None]] | None:
            rows = stack.sql("SELECT data::text, state, output FROM callback WHERE type = 'executor'")
            ended = [(data, state, output) for data, state, output in rows if state in ("success", "failed")]
            return ended if len(ended) == 2 else None

        ended = wait_for(callbacks, "both callbacks to end", timeout=240, interval=2)
        by_callback = {("raise_error" in data): (state, output or "") for data, state, output in ended}
        assert by_callback[False][0] == "success", by_callback
        assert marker.read_text() == "deadline missed"
        state, output = by_callback[True]
        assert state == "failed" and "the deadline callback raised on purpose" in output, output
        # Each ran in a pod of its own, named and labelled as a callback's.
        pods = [
            p
            for p in core.list_namespaced_pod(stack.namespace).items
            if identity.CALLBACK_ANNOTATION in (p.metadata.annotations or {})
        ]
        assert len(pods) == 2, [p.metadata.name for p in pods]
        assert all("-callback-cb-" in p.metadata.name for p in pods), [p.metadata.name for p in pods]
        assert {p.metadata.annotations["dag_id"] for p in pods} == {"e2e_deadline_ok", "e2e_deadline_raises"}
