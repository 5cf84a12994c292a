"""Every name of the specification (shared/spec/executors.md) resolves and does the job the
specification gives it, not a stub kept for the signature."""

from __future__ import annotations

import inspect
import queue

import pytest

import k8s_executor
from k8s_executor import identity
from k8s_executor.resource_version import ResourceVersion
from k8s_executor.scheduler import AirflowKubernetesScheduler, KubernetesJobWatcher, PodLaunch
from k8s_executor.settings import ExecutorSettings

SPEC_NAMES = {
    "KubernetesExecutor": ("start", "sync", "end", "terminate", "execute_async", "adopt_launched_task"),
    "LocalKubernetesExecutor": (
        "start",
        "sync",
        "end",
        "terminate",
        "execute_async",
        "has_task",
        "heartbeat",
    ),
    "KubernetesJobWatcher": ("run", "_run"),
    "AirflowKubernetesScheduler": (
        "run_pod_async",
        "delete_pod",
        "patch_pod_executor_done",
        "_make_safe_pod_id",
    ),
    "ResourceVersion": ("get_resource_version", "set_resource_version"),
}


@pytest.mark.parametrize("name", sorted(SPEC_NAMES))
def test_every_class_and_method_of_the_specification_resolves(name: str) -> None:
    cls = getattr(k8s_executor, name)
    for member in SPEC_NAMES[name]:
        assert callable(getattr(cls, member)), f"{name}.{member}"


def test_get_base_pod_from_template_resolves() -> None:
    assert callable(k8s_executor.get_base_pod_from_template)


def test_the_constructors_take_the_specifications_arguments() -> None:
    watcher = inspect.signature(KubernetesJobWatcher)
    for arg in (
        "namespace",
        "multi_namespace_mode",
        "watcher_queue",
        "resource_version",
        "worker_uuid",
        "kube_config",
    ):
        assert arg in watcher.parameters, arg
    scheduler = inspect.signature(AirflowKubernetesScheduler)
    for arg in ("kube_config", "task_queue", "result_queue", "kube_client", "worker_uuid"):
        assert arg in scheduler.parameters, arg


def test_resource_version_is_one_store_per_process_kept_per_watcher() -> None:
    """'Singleton class that manages Kubernetes resource versions': one instance, and a version set
    for one namespace (and one scheduler shell) is read back for it alone."""
    store = ResourceVersion()
    assert ResourceVersion() is store
    store.set_resource_version("41", "ns-a", owner="spec-test")
    assert ResourceVersion().get_resource_version("ns-a", owner="spec-test") == "41"
    assert store.get_resource_version("ns-b", owner="spec-test") is None
    assert store.get_resource_version("ns-a", owner="another executor") is None
    store.set_resource_version(None, "ns-a", owner="spec-test")
    assert store.get_resource_version("ns-a", owner="spec-test") is None


def test_the_watchers_arguments_decide_what_it_watches() -> None:
    settings = ExecutorSettings.parse({"namespace": "home", "in_cluster": "False"})
    one = KubernetesJobWatcher("ns-a", False, queue.Queue(), None, "7", settings, executor_id="team-a")
    assert (one.watched_namespace, one.worker_uuid, one.executor_id) == ("ns-a", "7", "team-a")
    every = KubernetesJobWatcher(None, True, queue.Queue(), "12", "7", settings)
    assert every.watched_namespace is None and every.resource_version == "12"
    default = KubernetesJobWatcher(None, False, queue.Queue(), None, "7", settings)
    assert default.watched_namespace == "home"


def test_the_scheduler_launches_what_the_task_queue_holds() -> None:
    """'task_queue: Queue of tasks to execute': the executor puts each task's built pod there,
    and the scheduler creates what it holds; 'result_queue: Queue for execution results' holds
    results only (see executor.py)."""
    assert [f.name for f in PodLaunch.__dataclass_fields__.values()] == [
        "pod",
        "ref",
        "start_timeout_s",
        "payload",
        "disruption_retries",
    ]
    source = inspect.getsource(AirflowKubernetesScheduler.launch_queued)
    assert "self.task_queue.get_nowait()" in source and "run_pod_async" in source


def test_delete_pod_is_how_the_scheduler_deletes() -> None:
    source = inspect.getsource(AirflowKubernetesScheduler._carry_out)
    assert "self.delete_pod(" in source and "launcher.delete" not in source


def test_make_safe_pod_id_is_the_pods_name() -> None:
    scheduler = AirflowKubernetesScheduler.__new__(AirflowKubernetesScheduler)
    name = scheduler._make_safe_pod_id("dag", "task", "run")
    assert name == identity.pod_name(identity.TaskRef("dag", "task", "run"))
