"""A task on a queue that `[sdk] queue_to_coordinator` routes to a non-Python coordinator gets the
pod template and base image that coordinator declares in `[sdk] coordinators` (its `extra`), as
the official provider reads them. The coordinator here is Airflow's ExecutableCoordinator with a
stand-in bundle; what is checked is the pod the executor launched for the queue."""

from __future__ import annotations

import json

import pytest
import yaml
from devcluster import control_plane
from kubernetes import client

from tests.e2e.conftest import airflow_stack
from tests.helpers import wait_for

pytestmark = pytest.mark.e2e

DAG = """
import datetime

from airflow.sdk import DAG, task

with DAG("e2e_coordinator", start_date=datetime.datetime(2024, 1, 1), schedule=None, catchup=False):

    @task(queue="go-queue")
    def on_coordinator_queue() -> None:
        pass

    @task
    def on_default_queue() -> None:
        pass

    on_coordinator_queue()
    on_default_queue()
"""


def test_a_task_on_a_coordinator_queue_gets_that_queues_template_and_image(
    cluster: control_plane.ClusterState, core: client.CoreV1Api, tmp_path_factory: pytest.TempPathFactory
) -> None:
    scratch = tmp_path_factory.mktemp("coordinator")
    template = scratch / "go.yaml"
    coordinators = {
        "go-sdk": {
            "classpath": "airflow.sdk.coordinators.executable.ExecutableCoordinator",
            "kwargs": {"executables_root": [str(scratch / "bundles")]},
            "extra": {
                "pod_template_file": str(template),
                "worker_container_repository": "registry.example/go-worker",
                "worker_container_tag": "1.4",
            },
        }
    }
    with airflow_stack(
        cluster,
        core,
        AIRFLOW__SDK__COORDINATORS=json.dumps(coordinators),
        AIRFLOW__SDK__QUEUE_TO_COORDINATOR=json.dumps({"go-queue": "go-sdk"}),
    ) as stack:
        # The stack's worker template, marked as the coordinator's.
        pod = yaml.safe_load(stack.pod_template().read_text())
        pod["metadata"]["labels"] = {"runtime": "go-sdk"}
        template.write_text(yaml.safe_dump(pod))
        (stack.dags_folder / "e2e_coordinator.py").write_text(DAG)
        stack.wait_for_dag("e2e_coordinator")
        stack.trigger("e2e_coordinator", "coordinator-1")

        def pods() -> dict[str, client.V1Pod] | None:
            found = {
                p.metadata.annotations["task_id"]: p
                for p in core.list_namespaced_pod(
                    stack.namespace, label_selector="run_id=coordinator-1"
                ).items
            }
            return found if len(found) == 2 else None

        launched = wait_for(pods, "both tasks' pods", timeout=240, interval=2)
        routed, plain = launched["on_coordinator_queue"], launched["on_default_queue"]
        assert routed.metadata.labels.get("runtime") == "go-sdk"
        assert (
            next(c for c in routed.spec.containers if c.name == "base").image
            == "registry.example/go-worker:1.4"
        )
        assert "runtime" not in (plain.metadata.labels or {})
        assert (
            next(c for c in plain.spec.containers if c.name == "base").image
            != "registry.example/go-worker:1.4"
        )
