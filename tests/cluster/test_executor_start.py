"""What the executor's start leaves in the scheduler's process: the heap it started with frozen,
so that Python's full garbage collections, which hold the GIL and so Airflow's loop, go over only
what was made since (metrics.FullCollections counts them and their seconds)."""

from __future__ import annotations

import gc

import pytest
from devcluster import control_plane

from k8s_executor import metrics
from k8s_executor.executor import KubernetesExecutor

pytestmark = pytest.mark.cluster


def test_the_heap_held_at_the_executors_start_is_frozen_and_its_collections_counted_from_there(
    cluster: control_plane.ClusterState, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for option, value in {
        "IN_CLUSTER": "False",
        "CONFIG_FILE": str(cluster.kubeconfig),
        "NAMESPACE": namespace,
        "WORKER_CONTAINER_REPOSITORY": "busybox",
    }.items():
        monkeypatch.setenv(f"AIRFLOW__KUBERNETES_EXECUTOR__{option}", value)
    gc.unfreeze()
    gc.collect()
    assert gc.get_freeze_count() == 0
    objects = len(gc.get_objects())
    executor = KubernetesExecutor(parallelism=10)
    executor.start()
    try:
        # This process holds Airflow, the kubernetes client and the tests: all of it frozen.
        assert gc.get_freeze_count() >= objects
        assert len(gc.get_objects()) < objects / 10
        assert metrics.FULL_COLLECTIONS.count == 0
        gc.collect()
        assert metrics.FULL_COLLECTIONS.count == 1
        summary = executor.call_times.summary()
        assert "Python's full garbage collections in this process since the executor started n=1 " in summary
    finally:
        executor.end()
        gc.unfreeze()
