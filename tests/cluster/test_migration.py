"""Pods the official provider's executor launched are found by this executor's adoption (docs/migration.md)."""

from __future__ import annotations

import pytest
from kubernetes import client

from k8s_executor import identity
from k8s_executor.scheduler import AirflowKubernetesScheduler
from tests.helpers import wait_for, wait_for_pod_phase

pytestmark = pytest.mark.cluster


def test_a_pod_built_by_the_official_provider_is_adopted(
    core: client.CoreV1Api, namespace: str, scheduler: AirflowKubernetesScheduler
) -> None:
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
    wait_for_pod_phase(core, namespace, "etl-load-abcdefgh", ("Running",))
    ref = identity.TaskRef("etl", "load", "manual__2026-01-01", 2, 3)
    # No watcher has listed: adoption lists the pods itself.
    [orphan] = scheduler.find_orphans([ref], {"41"}, wait_s=0)
    assert (orphan.ref, orphan.name, orphan.ours, orphan.state.verdict) == (
        ref,
        "etl-load-abcdefgh",
        True,
        "running",
    )

    # Served from what the watcher listed and watched, once it has listed.
    scheduler.start_watchers()
    wait_for(lambda: (scheduler.sync(), scheduler.listed == {namespace})[1], "the watcher's first list")
    assert scheduler.find_orphans([ref], {"41"}, wait_s=0) == [orphan]
    # Found by its task try whichever scheduler's label it carries (it keeps it through adoptions).
    [again] = scheduler.find_orphans([ref], set(), wait_s=0)
    assert again.ours
    # A dead scheduler's pod whose task Airflow did not hand over: taken only to be disposed of.
    [leftover] = scheduler.find_orphans([], {"41"}, wait_s=0)
    assert not leftover.ours
    assert scheduler.find_orphans([], {"42"}, wait_s=0) == []
    # The watch keeps it current: a pod gone is no longer offered.
    core.delete_namespaced_pod("etl-load-abcdefgh", namespace, grace_period_seconds=0)
    wait_for(lambda: not scheduler.find_orphans([ref], {"41"}, wait_s=0), "the deletion to be seen")
