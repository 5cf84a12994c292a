"""Pods the official provider's executor launched are found by this executor's adoption (docs/migration.md)."""

from __future__ import annotations

import pytest
from kubernetes import client

from k8s_executor import adoption, identity
from tests.helpers import wait_for

pytestmark = pytest.mark.cluster


def test_a_pod_built_by_the_official_provider_is_adopted(core: client.CoreV1Api, namespace: str) -> None:
    pod_generator = pytest.importorskip("airflow.providers.cncf.kubernetes.pod_generator")
    base = client.V1Pod(
        spec=client.V1PodSpec(
            restart_policy="Never",
            containers=[client.V1Container(name="base", image="busybox", command=["sh", "-c", "sleep 30"])],
        )
    )
    pod = pod_generator.PodGenerator.construct_pod(
        dag_id="etl",
        task_id="load",
        pod_id="etl-load-abcdefgh",
        try_number=2,
        kube_image="busybox",
        date=None,
        args=[],
        pod_override_object=None,
        base_worker_pod=base,
        namespace=namespace,
        scheduler_job_id="41",
        run_id="manual__2026-01-01",
        map_index=3,
    )
    core.create_namespaced_pod(namespace, pod)
    # The watcher's selector sees it, so what happens to it after adoption is reported.
    wait_for(
        lambda: core.list_namespaced_pod(namespace, label_selector=identity.selector()).items,
        "the pod under the watcher's selector",
    )
    ref = identity.TaskRef("etl", "load", "manual__2026-01-01", 2, 3)
    [orphan] = adoption.find_orphans(core, [namespace], [ref], ["41"])
    assert (orphan.ref, orphan.name, orphan.ours) == (ref, "etl-load-abcdefgh", True)
    # Found by its task try whichever scheduler's label it carries (it keeps it through adoptions).
    [again] = adoption.find_orphans(core, [namespace], [ref], [])
    assert again.ours
    # A dead scheduler's pod whose task Airflow did not hand over: taken only to be disposed of.
    [leftover] = adoption.find_orphans(core, [namespace], [], ["41"])
    assert not leftover.ours
    assert adoption.find_orphans(core, [namespace], [], ["42"]) == []
