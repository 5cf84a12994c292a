"""The executor's pod keeper against the real API server: each pod's end reported once, its pod
deleted once, and nothing lost when the watcher dies or the watch history is gone."""

from __future__ import annotations

import multiprocessing
import queue
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from devcluster import control_plane
from kubernetes import client

from k8s_executor import identity
from k8s_executor.identity import TaskRef
from k8s_executor.kube_client import json_lines
from k8s_executor.ledger import HandedOver
from k8s_executor.pod_building import PodDefaults, PodRequest, build_pod
from k8s_executor.scheduler import AirflowKubernetesScheduler, KubernetesJobWatcher, TaskResult
from k8s_executor.shapes import PodEvent, Resync
from tests.conftest import CLUSTER_DIR, admin_settings
from tests.helpers import RecordedStats, audit_entries, wait_for, wait_for_pod_phase

pytestmark = pytest.mark.cluster


def launch(keeper: AirflowKubernetesScheduler, namespace: str, task: str, script: str) -> str:
    ref = TaskRef("keeper", task, "run")
    request = PodRequest(ref=ref, command=["sh", "-c", script], scheduler_id="t1", airflow_version="3.3.2")
    pod = build_pod(request, PodDefaults(namespace, None, None, "busybox"))
    keeper.run_pod_async(pod, ref=ref, start_timeout_s=120)
    name: str = pod["metadata"]["name"]
    return name


def results(
    keeper: AirflowKubernetesScheduler, count: int, timeout: float = 90
) -> list[TaskResult | HandedOver]:
    """The next `count` ends: results from the result queue, hand-overs from what sync returns."""
    out: list[TaskResult | HandedOver] = []
    deadline = time.monotonic() + timeout
    while len(out) < count and time.monotonic() < deadline:
        keeper.check_watchers()
        out += [action for action in keeper.sync() if isinstance(action, HandedOver)]
        try:
            out.append(keeper.result_queue.get(timeout=0.2))
        except queue.Empty:
            continue
    return out


def settle(keeper: AirflowKubernetesScheduler, seconds: float) -> list[TaskResult]:
    """Keep syncing for a while; whatever is reported meanwhile."""
    extra: list[TaskResult] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        keeper.sync()
        while not keeper.result_queue.empty():
            extra.append(keeper.result_queue.get())
        time.sleep(0.2)
    return extra


def executor_deletes(core: client.CoreV1Api, log: Path, namespace: str, name: str) -> int:
    """Deletes of `name` the executor sent, per the API server's audit log."""
    return sum(
        1
        for e in audit_entries(core, log, namespace)
        if e["verb"] == "delete"
        and e.get("stage") == "ResponseComplete"
        and (e.get("objectRef") or {}).get("name") == name
        and e.get("userAgent", "").startswith("airflow-k8s-executor/")
    )


def test_a_pod_that_ends_is_reported_once_and_deleted_once(
    cluster: control_plane.ClusterState,
    core: client.CoreV1Api,
    namespace: str,
    scheduler: AirflowKubernetesScheduler,
) -> None:
    scheduler.start_watchers()
    name = launch(scheduler, namespace, "ok", "echo done")
    [result] = results(scheduler, 1)
    assert (result.ref.task_id, result.state.verdict) == ("ok", "success")
    wait_for(lambda: not core.list_namespaced_pod(namespace).items, "the finished pod to be deleted")
    assert settle(scheduler, 3) == []
    assert executor_deletes(core, control_plane.audit_log(cluster), namespace, name) == 1


def test_a_watcher_that_dies_is_restarted_where_it_stopped(
    cluster: control_plane.ClusterState,
    core: client.CoreV1Api,
    namespace: str,
    scheduler: AirflowKubernetesScheduler,
) -> None:
    scheduler.start_watchers()
    name = launch(scheduler, namespace, "slow", "sleep 4")
    wait_for(
        lambda: (scheduler.sync(), scheduler.ledger.pods[(namespace, name)].last_state)[1],
        "the pod's first state",
    )
    scheduler.watchers[namespace].kill()
    wait_for_pod_phase(core, namespace, name, ("Succeeded",))
    [result] = results(scheduler, 1)
    assert result.state.verdict == "success"
    assert scheduler.watcher_restarts == 1
    assert settle(scheduler, 2) == []
    # Resumed from the last resourceVersion it had passed on, not from a fresh list: the watcher's
    # own list (this scheduler's pods) was made once, at its first start. (Each list is followed by
    # one of the pods other schedulers hold, PodWatch._held_elsewhere, which this does not count.)
    own = f"{identity.SCHEDULER_LABEL}={identity.safe_label_value(scheduler.worker_uuid)}"
    lists = [
        e
        for e in audit_entries(core, control_plane.audit_log(cluster), namespace)
        if e["verb"] == "list"
        and e.get("stage") == "ResponseComplete"
        and own in urllib.parse.unquote(e["requestURI"])
    ]
    assert len(lists) == 1, [e["requestURI"] for e in lists]


def test_a_launcher_that_dies_is_restarted_and_counted(
    namespace: str, scheduler: AirflowKubernetesScheduler, monkeypatch: pytest.MonkeyPatch
) -> None:
    from k8s_executor import metrics

    recorded = RecordedStats()
    monkeypatch.setattr(metrics, "stats", lambda: recorded)
    scheduler.start_watchers()
    scheduler.launcher.process.kill()
    scheduler.launcher.process.join(timeout=10)
    wait_for(lambda: (scheduler.sync(), scheduler.launcher.restarts)[1] == 1, "the launcher's restart")
    assert recorded.counts["k8s_executor.launcher.restarts"] == 1
    # The new launcher creates: a pod launched after the restart runs.
    launch(scheduler, namespace, "after", "echo done")
    [result] = results(scheduler, 1)
    assert result.state.verdict == "success"


def test_the_specifications_watcher_process_sends_its_namespaces_pods(
    cluster: control_plane.ClusterState, core: client.CoreV1Api, namespace: str
) -> None:
    # Started as a caller would, with multiprocessing's default start method.
    messages: Any = multiprocessing.Queue()
    watcher = KubernetesJobWatcher(
        namespace=namespace,
        multi_namespace_mode=False,
        watcher_queue=messages,
        resource_version=None,
        worker_uuid="t1",
        kube_config=admin_settings(cluster, namespace=namespace),
        daemon=True,
    )
    watcher.start()
    try:
        resync = messages.get(timeout=60)
        assert isinstance(resync, Resync) and resync.namespace == namespace and resync.names == frozenset()
        ref = TaskRef("spec", "watched", "run")
        request = PodRequest(ref=ref, command=["true"], scheduler_id="t1", airflow_version="3.3.2")
        core.create_namespaced_pod(
            namespace, build_pod(request, PodDefaults(namespace, None, None, "busybox"))
        )

        def pod_event() -> PodEvent | None:
            message = messages.get(timeout=30)
            return message if isinstance(message, PodEvent) else None

        event = wait_for(pod_event, "a pod event")
        assert (event.ref, event.scheduler_id) == (ref, "t1")
    finally:
        watcher.kill()
        watcher.join(10)


def running_pod_unwatched(
    core: client.CoreV1Api, namespace: str, scheduler: AirflowKubernetesScheduler, task: str
) -> str:
    """A running pod of `task` the ledger knows, its watcher killed: what follows is unseen."""
    scheduler.start_watchers()
    name = launch(scheduler, namespace, task, "sleep 300")
    wait_for_pod_phase(core, namespace, name, ("Running",))
    wait_for(
        lambda: (scheduler.sync(), scheduler.ledger.pods[(namespace, name)].last_state)[1], "the pod's state"
    )
    scheduler.watchers[namespace].kill()
    return name


def test_a_pod_gone_while_the_watch_history_was_lost_fails_its_task(
    core: client.CoreV1Api, namespace: str, scheduler: AirflowKubernetesScheduler
) -> None:
    name = running_pod_unwatched(core, namespace, scheduler, "lost")
    core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
    wait_for(lambda: not core.list_namespaced_pod(namespace).items, "the pod to be gone")
    # The history that held its deletion is compacted away and the watch cache dropped with a
    # restart, so the restarted watcher's resourceVersion is gone (410): it must relist.
    control_plane.compact_etcd(CLUSTER_DIR)
    control_plane.restart_component(CLUSTER_DIR, "kube-apiserver")
    [result] = results(scheduler, 1, timeout=120)
    assert result.state.verdict == "failed"
    assert result.state.reason == "pod disappeared while the watch was interrupted"


def test_a_pod_adopted_by_another_scheduler_while_the_watch_history_was_lost_is_handed_over(
    core: client.CoreV1Api, namespace: str, scheduler: AirflowKubernetesScheduler
) -> None:
    """Found by `python -m chaos` (seed 1717): a peer adopted (relabelled) a live scheduler's pods
    it took for dead, while that scheduler's watch met a 410; its relist no longer selected them,
    and it failed their tries as vanished and deleted them under their new holder."""
    name = running_pod_unwatched(core, namespace, scheduler, "adopted")
    core.patch_namespaced_pod(name, namespace, {"metadata": {"labels": {identity.SCHEDULER_LABEL: "t2"}}})
    control_plane.compact_etcd(CLUSTER_DIR)
    control_plane.restart_component(CLUSTER_DIR, "kube-apiserver")
    [result] = results(scheduler, 1, timeout=120)
    assert isinstance(result, HandedOver) and result.ref.task_id == "adopted", result
    # Its pod is its new holder's to dispose of.
    assert not settle(scheduler, 3)
    assert core.read_namespaced_pod(name, namespace).metadata.deletion_timestamp is None


def test_the_watcher_tells_each_verdict_once(
    core: client.CoreV1Api, namespace: str, scheduler: AirflowKubernetesScheduler
) -> None:
    since = core.list_namespaced_pod(namespace).metadata.resource_version
    scheduler.start_watchers()
    wait_for(lambda: (scheduler.sync(), namespace in scheduler.listed)[1], "the watcher's first list")
    name = launch(scheduler, namespace, "told", "sleep 2")
    wait_for_pod_phase(core, namespace, name, ("Succeeded",))
    # From here the scheduler is not synced, so it neither reads the queue nor deletes the pod.
    core.delete_namespaced_pod(name, namespace)
    told: list[tuple[str, bool]] = []

    def deletion_told() -> bool:
        while not scheduler.watcher_queue.empty():
            message = scheduler.watcher_queue.get()
            if isinstance(message, PodEvent) and message.name == name:
                told.append((message.state.verdict, message.deleted))
        return bool(told) and told[-1][1]

    wait_for(deletion_told, "the pod's deletion to be told", timeout=60)
    assert told == [("pending", False), ("running", False), ("success", False), ("success", True)]
    # What the API server sent meanwhile, replayed from before the pod: more than was told.
    sent = [
        event
        for event in json_lines(
            core.list_namespaced_pod(
                namespace, watch=True, resource_version=since, timeout_seconds=2, _preload_content=False
            )
        )
        if event["object"]["metadata"].get("name") == name
    ]
    assert len(sent) > len(told)


def test_a_pod_another_scheduler_adopts_leaves_this_one_without_a_report_or_a_delete(
    cluster: control_plane.ClusterState,
    core: client.CoreV1Api,
    namespace: str,
    scheduler: AirflowKubernetesScheduler,
) -> None:
    scheduler.start_watchers()
    name = launch(scheduler, namespace, "adopted", "sleep 30")
    wait_for_pod_phase(core, namespace, name, ("Running",))
    wait_for(
        lambda: (scheduler.sync(), scheduler.ledger.pods[(namespace, name)].last_state)[1], "the pod's state"
    )
    # Another scheduler's adoption: its label on the pod, which leaves this scheduler's watch.
    core.patch_namespaced_pod(name, namespace, {"metadata": {"labels": {identity.SCHEDULER_LABEL: "t2"}}})
    told: list[object] = []
    wait_for(
        lambda: (told.extend(scheduler.sync()), (namespace, name) not in scheduler.ledger.pods)[1],
        "the hand-over",
    )
    # The executor is told to forget the try (a hand-over is what sync returns, not a result), and
    # nothing is reported for it.
    assert told == [HandedOver(TaskRef("keeper", "adopted", "run"))]
    assert settle(scheduler, 3) == []
    assert core.read_namespaced_pod(name, namespace).status.phase == "Running"
    assert executor_deletes(core, control_plane.audit_log(cluster), namespace, name) == 0
