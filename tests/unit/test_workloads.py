"""Every kind of work becomes a PodRequest through one place: the owner labels and launch id set
there, the coordinator of a queue read as the official provider reads it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from k8s_executor import identity, workloads
from k8s_executor.pod_building import PodDefaults, PodRequest, build_pod

OWNER = workloads.Owner("17", "team-a.pods", {"WORKER": "env"})
DEFAULTS = PodDefaults(namespace="ns", pod_template_file=None, worker_image=None, fallback_image="img:1")


def workload_json() -> str:
    return '{"token": "..."}'


def every_kind_of_request(owner: workloads.Owner) -> list[PodRequest]:
    ti = SimpleNamespace(
        dag_id="etl", task_id="load", run_id="r1", try_number=2, map_index=-1, id="ti-1", executor_config=None
    )
    key = SimpleNamespace(dag_id="etl", task_id="load", run_id="r1", try_number=2, map_index=-1)
    return [
        workloads.request_from_workload(SimpleNamespace(ti=ti, model_dump_json=workload_json), owner),
        workloads.request_from_command(key, ["airflow", "tasks", "run"], None, owner),
        workloads.request_from_callback(
            SimpleNamespace(
                callback=SimpleNamespace(id="cb-1"),
                log_path="executor_callbacks/etl/r1/cb-1",
                model_dump_json=workload_json,
            ),
            owner,
        ),
        workloads.request_from_connection_test(
            SimpleNamespace(connection_test_id="ct-1", connection_id="db", model_dump_json=workload_json),
            owner,
        ),
    ]


def test_every_kind_of_work_gets_its_executor_s_owner_labels_and_a_launch_id_of_its_own() -> None:
    requests = every_kind_of_request(OWNER) + every_kind_of_request(OWNER)
    for request in requests:
        pod = build_pod(request, DEFAULTS)
        labels, annotations = pod["metadata"]["labels"], pod["metadata"]["annotations"]
        assert labels[identity.OWNER_LABEL] == "team-a.pods", request.ref
        assert labels[identity.SCHEDULER_LABEL] == "17", request.ref
        assert annotations[identity.LAUNCH_ANNOTATION] == request.launch_id, request.ref
        assert request.env == {"WORKER": "env"}
    # A new launch of the same try is told from the earlier one's pod by its launch id.
    assert len({request.launch_id for request in requests}) == len(requests)


def test_an_owner_with_a_launch_id_gives_that_one() -> None:
    rendered = workloads.Owner("generate-dag-yaml", "pods", {}, launch_id="rendered")
    assert {request.launch_id for request in every_kind_of_request(rendered)} == {"rendered"}


def test_a_queue_routed_to_a_coordinator_gets_the_template_and_image_its_extra_declares(monkeypatch) -> None:
    coordinator = pytest.importorskip("airflow.sdk.execution_time.coordinator")
    import json

    from k8s_executor.workloads import coordinator_choice

    monkeypatch.setenv(
        "AIRFLOW__SDK__COORDINATORS",
        json.dumps(
            {
                "go-sdk": {
                    "classpath": "airflow.sdk.coordinators.executable.ExecutableCoordinator",
                    "kwargs": {"executables_root": ["/opt/airflow/executable-bundles"]},
                    "extra": {
                        "pod_template_file": "/templates/go.yaml",
                        "worker_container_repository": "registry.example/go-worker",
                        "worker_container_tag": "1.4",
                    },
                }
            }
        ),
    )
    monkeypatch.setenv("AIRFLOW__SDK__QUEUE_TO_COORDINATOR", json.dumps({"go-queue": "go-sdk"}))
    coordinator.reset_coordinator_manager()
    try:
        assert coordinator_choice("go-queue") == ("/templates/go.yaml", "registry.example/go-worker:1.4")
        assert coordinator_choice("default") == (None, None)
        assert coordinator_choice(None) == (None, None)
    finally:
        coordinator.reset_coordinator_manager()
