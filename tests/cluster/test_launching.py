"""The launcher against the real API server: quota refusals retried, duplicates impossible, 422 final."""

from __future__ import annotations

import os
import signal
import time

import pytest
from devcluster import control_plane
from kubernetes import client

from k8s_executor.identity import TaskRef
from k8s_executor.launching import Launcher, LauncherProcess
from k8s_executor.pod_building import PodDefaults, PodRequest, build_pod
from k8s_executor.shapes import LaunchResult
from tests.conftest import CLUSTER_DIR, admin_settings
from tests.helpers import wait_for

pytestmark = pytest.mark.cluster


def pod_for(namespace: str, task: str, **override: object) -> dict:
    request = PodRequest(
        ref=TaskRef("launch", task, "run"),
        command=["sh", "-c", "sleep 1"],
        scheduler_id="t",
        airflow_version="3.3.2",
    )
    pod = build_pod(request, PodDefaults(namespace, None, None, "busybox"))
    pod["spec"].update(override)
    return pod


def results(launcher: Launcher, count: int, timeout: float = 60) -> list[LaunchResult]:
    out: list[LaunchResult] = []
    deadline = time.monotonic() + timeout
    while len(out) < count and time.monotonic() < deadline:
        try:
            out.append(launcher.results.get(timeout=0.5))
        except Exception:
            continue
    return out


def test_quota_refusal_is_retried_until_there_is_room(core: client.CoreV1Api, namespace: str) -> None:
    core.create_namespaced_resource_quota(
        namespace, {"metadata": {"name": "q"}, "spec": {"hard": {"pods": "1"}}}
    )
    wait_for(lambda: core.read_namespaced_resource_quota("q", namespace).status.hard, "quota status")
    core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": "blocker"},
            "spec": {"containers": [{"name": "c", "image": "b", "command": ["sleep", "60"]}]},
        },
    )
    launcher = Launcher(core, concurrency=2, qps=50, burst=50, max_retries=-1)
    launcher.create(pod_for(namespace, "queued"), time.monotonic() + 60)
    time.sleep(2)
    assert launcher.results.empty(), "a quota refusal must not fail the task"
    core.delete_namespaced_pod("blocker", namespace, grace_period_seconds=0)
    [result] = results(launcher, 1)
    assert result.ok and result.attempts > 1


def test_repeated_create_of_a_try_meets_409_and_counts_as_created(
    core: client.CoreV1Api, namespace: str
) -> None:
    launcher = Launcher(core, concurrency=2, qps=50, burst=50, max_retries=3)
    pod = pod_for(namespace, "twice")
    launcher.create(pod, time.monotonic() + 30)
    launcher.create(pod, time.monotonic() + 30)
    outcome = results(launcher, 2)
    assert all(r.ok for r in outcome) and sorted(r.already_existed for r in outcome) == [False, True]
    assert len(core.list_namespaced_pod(namespace).items) == 1


def test_invalid_pod_fails_once_with_the_api_servers_words(core: client.CoreV1Api, namespace: str) -> None:
    launcher = Launcher(core, concurrency=1, qps=50, burst=50, max_retries=5)
    launcher.create(pod_for(namespace, "bad", restartPolicy="Sometimes"), time.monotonic() + 30)
    [result] = results(launcher, 1)
    assert not result.ok and result.attempts == 1
    assert "restartPolicy" in result.error and "Unsupported value" in result.error


def test_an_api_server_that_is_down_is_waited_for_not_counted_as_a_refusal(
    core: client.CoreV1Api, namespace: str
) -> None:
    launcher = Launcher(core, concurrency=1, qps=50, burst=50, max_retries=0)
    control_plane.stop_component(CLUSTER_DIR, "kube-apiserver")
    try:
        launcher.create(pod_for(namespace, "patient"), time.monotonic() + 120)
        time.sleep(4)
        assert launcher.results.empty(), "an API server that is down must not fail the task"
    finally:
        control_plane.restart_component(CLUSTER_DIR, "kube-apiserver")
    [result] = results(launcher, 1)
    assert result.ok and result.attempts > 1


def test_launcher_process_that_dies_is_restarted_and_resends_unanswered_creates(
    cluster: control_plane.ClusterState, core: client.CoreV1Api, namespace: str
) -> None:
    launcher = LauncherProcess(admin_settings(cluster), concurrency=2, qps=50, burst=50, max_retries=3)
    try:
        launcher.create(pod_for(namespace, "answered"), time.monotonic() + 60)
        [first] = results(launcher, 1)
        assert first.ok
        os.kill(launcher.process.pid, signal.SIGKILL)
        launcher.process.join(timeout=10)
        # Sent to a process that is gone: only the restart can deliver them.
        for task in ("resent-1", "resent-2"):
            launcher.create(pod_for(namespace, task), time.monotonic() + 60)
        launcher.check()
        assert launcher.restarts == 1
        resent = results(launcher, 2)
        assert sorted((r.name, r.ok) for r in resent) == sorted(
            (pod_for(namespace, t)["metadata"]["name"], True) for t in ("resent-1", "resent-2")
        )
        names = sorted(p.metadata.name for p in core.list_namespaced_pod(namespace).items)
        assert names == sorted(
            pod_for(namespace, t)["metadata"]["name"] for t in ("answered", "resent-1", "resent-2")
        )
    finally:
        launcher.shutdown(wait=True)
    assert not launcher.process.is_alive()


def test_launcher_process_shut_down_with_wait_delivers_every_result(
    cluster: control_plane.ClusterState, namespace: str
) -> None:
    launcher = LauncherProcess(admin_settings(cluster), concurrency=4, qps=100, burst=100, max_retries=3)
    for i in range(20):
        launcher.create(pod_for(namespace, f"t{i}"), time.monotonic() + 60)
    launcher.shutdown(wait=True)
    delivered = []
    while not launcher.results.empty():
        delivered.append(launcher.results.get_nowait())
    assert len(delivered) == 20 and all(r.ok for r in delivered)


def test_a_launcher_process_sent_nothing_is_stopped_without_being_waited_for(
    cluster: control_plane.ClusterState,
) -> None:
    untouched = LauncherProcess(admin_settings(cluster), concurrency=2, qps=50, burst=50, max_retries=3)
    untouched.shutdown(wait=True)
    assert not untouched.process.is_alive()
    # Killed (or never started), not asked to stop: asked, it would start up first and exit 0.
    assert untouched.process.popen is None or untouched.process.exitcode == -signal.SIGKILL

    # The control: a process sent anything, even a request that needs no API call, is asked.
    used = LauncherProcess(admin_settings(cluster), concurrency=2, qps=50, burst=50, max_retries=3)
    used.drop("default", "no-such-pod")
    used.shutdown(wait=True)
    assert not used.process.is_alive()
    assert used.process.exitcode == 0, used.process.how_it_ended


def test_a_create_that_meets_an_earlier_launchs_pod_is_told_apart_from_its_own(
    core: client.CoreV1Api, namespace: str
) -> None:
    # A rescheduled sensor is queued again on the same try number: its earlier pod, kept after its
    # end, has the name. A create whose own first attempt landed meets its own pod instead.
    def launch(launch_id: str) -> dict:
        request = PodRequest(
            ref=TaskRef("launch", "sensor", "run"),
            command=["sh", "-c", "sleep 1"],
            scheduler_id="t",
            airflow_version="3.3.2",
            launch_id=launch_id,
        )
        return build_pod(request, PodDefaults(namespace, None, None, "busybox"))

    launcher = Launcher(core, concurrency=2, qps=50, burst=50, max_retries=0)
    try:
        launcher.create(launch("first"), time.monotonic() + 60)
        launcher.create(launch("first"), time.monotonic() + 60)  # the same launch, sent again
        launcher.create(launch("second"), time.monotonic() + 60)
        outcomes = sorted((r.ok, r.already_existed, r.name_taken) for r in results(launcher, 3))
        assert outcomes == [(False, False, True), (True, False, False), (True, True, False)], outcomes
    finally:
        launcher.shutdown(wait=False)
