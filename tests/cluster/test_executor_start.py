"""What the executor's start leaves in a scheduler's process: the heap it started with frozen, so
that Python's full garbage collections, which hold the GIL and so Airflow's loop, go over only what
was made since; full collections made rarer, unless the operator set the collector's thresholds;
and the full collections counted from there (metrics.FullCollections)."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator

import pytest
from devcluster import control_plane

from k8s_executor import executor as executor_module
from k8s_executor import metrics
from k8s_executor.executor import KubernetesExecutor
from tests.helpers import configure_executor

pytestmark = pytest.mark.cluster


@pytest.fixture
def fresh_collector(
    cluster: control_plane.ClusterState, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """A process as Airflow's scheduler starts it: the collector as Python sets it, nothing frozen."""
    configure_executor(monkeypatch, cluster.kubeconfig, namespace)
    monkeypatch.setattr(executor_module, "_collector_set_in", None)
    thresholds = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    gc.unfreeze()
    gc.collect()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


def started(job_id: int | None) -> KubernetesExecutor:
    executor = KubernetesExecutor(parallelism=10)
    executor.job_id = job_id
    executor.start()
    return executor


@pytest.mark.usefixtures("fresh_collector")
def test_a_schedulers_executor_freezes_its_start_and_makes_full_collections_rarer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    objects = len(gc.get_objects())
    # Started outside a scheduler job (a task run through the executor, a DAG's test): left alone.
    started(None).end()
    assert (gc.get_freeze_count(), gc.get_threshold()) == (0, (700, 10, 10))

    executor = started(4242)
    try:
        # This process holds Airflow, the kubernetes client and the tests: all of it frozen.
        assert gc.get_freeze_count() >= objects
        assert len(gc.get_objects()) < objects / 10
        assert gc.get_threshold() == (700, 10, 100)
        assert metrics.FULL_COLLECTIONS.count == 0
        gc.collect()
        assert metrics.FULL_COLLECTIONS.count == 1
        assert (
            "Python's full garbage collections in this process since the executor started n=1 ("
            in executor.call_times.summary()
        )
        # What the scheduler forks (a LocalExecutor's workers, their tasks) has Python's own.
        child = os.fork()
        if child == 0:
            os._exit(0 if gc.get_threshold() == (700, 10, 10) else 1)
        assert os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) == 0
        # Once a process: another team's executor in it collects and freezes nothing more.
        freezes: list[None] = []
        monkeypatch.setattr(gc, "freeze", lambda: freezes.append(None))
        started(4242).end()
        assert freezes == []
    finally:
        executor.end()


@pytest.mark.usefixtures("fresh_collector")
def test_thresholds_the_operator_set_are_left_as_they_are() -> None:
    gc.set_threshold(5000, 20, 20)
    executor = started(4242)
    try:
        assert gc.get_threshold() == (5000, 20, 20)
        assert gc.get_freeze_count() > 0
    finally:
        executor.end()
