"""Pods the official provider's executor launched are found by this executor's adoption (docs/migration.md)."""

from __future__ import annotations

import pytest
from kubernetes import client

from k8s_executor import identity
from k8s_executor.scheduler import AirflowKubernetesScheduler
from tests.cluster.test_scheduler import results
from tests.helpers import wait_for, wait_for_pod_phase

pytestmark = pytest.mark.cluster


def test_a_pod_built_by_the_official_provider_is_adopted(
    core: client.CoreV1Api, namespace: str, scheduler: AirflowKubernetesScheduler
) -> None:
    pod_generator = pytest.importorskip("airflow.providers.cncf.kubernetes.pod_generator")
    base = client.V1Pod(
        spec=client.V1PodSpec(
            restart_policy="Never",
            containers=[client.V1Container(name="base", image="busybox", command=["sh", "-c", "sleep 10"])],
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
    wait_for_pod_phase(core, namespace, "etl-load-abcdefgh", ("Running",))
    ref = identity.TaskRef("etl", "load", "manual__2026-01-01", 2, 3)
    scheduler.start_watchers()
    wait_for(lambda: (scheduler.sync(), scheduler.listed == {namespace})[1], "the watcher's first list")
    # Outside the watcher's selector (it has no owner label): found among the legacy pods, for a
    # try Airflow hands over.
    assert scheduler.find_orphans([], {"41"}) == []
    [orphan] = scheduler.find_orphans([ref], {"41"})
    assert (orphan.ref, orphan.name, orphan.ours, orphan.legacy, orphan.state.verdict) == (
        ref,
        "etl-load-abcdefgh",
        True,
        True,
        "running",
    )
    scheduler.adopt(orphan, start_timeout_s=120)
    # Relabelled: this executor's watcher sees it, the official provider's selectors no longer do.
    labels = wait_for(
        lambda: (
            (found := core.read_namespaced_pod("etl-load-abcdefgh", namespace).metadata.labels).get(
                identity.OWNER_LABEL
            )
            and found
        ),
        "the adopted pod's owner label",
    )
    assert labels[identity.OWNER_LABEL] == scheduler.executor_id and labels[identity.SCHEDULER_LABEL] == "t1"
    assert "kubernetes_executor" not in labels and "airflow-worker" not in labels
    # Its end is reported, as for a pod this executor launched.
    [result] = results(scheduler, 1, timeout=90)
    assert (result.ref, result.state.verdict) == (ref, "success")
