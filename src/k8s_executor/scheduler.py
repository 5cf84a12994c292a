"""`AirflowKubernetesScheduler`: the executor's memory of its pods.

It owns the launcher and the watchers, and holds one record per pod it is
responsible for. Everything that happens to a pod comes back through the
watcher queue and is turned here into at most one result per task try, which
the executor hands to Airflow. That one record per pod is the only state: no
second map has to agree with it.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import time
from dataclasses import dataclass
from typing import Any

from airflow.utils.log.logging_mixin import LoggingMixin
from kubernetes import client

from k8s_executor import adoption, identity, metrics, processes
from k8s_executor.adoption import Orphan, Sighting
from k8s_executor.launching import DeleteResult, LauncherProcess
from k8s_executor.resource_version import ResourceVersion
from k8s_executor.settings import ExecutorSettings
from k8s_executor.state_mapping import PodState
from k8s_executor.watching import Bookmark, PodEvent, PodWatch, Resync, watch_in_child


class KubernetesJobWatcher(multiprocessing.Process, LoggingMixin):
    """The process watching one namespace's pods (or all namespaces') for the scheduler.

    What runs in the process is `watching.PodWatch`; the process is started light (see
    processes.py), so it imports neither Airflow nor this module. `kube_config` keeps the
    specification's name but holds the settings: the process builds its own client and keeps
    its credential fresh (credentials.py), since a loaded `Configuration`'s credential refresh
    cannot cross a process boundary.
    """

    def __init__(
        self,
        namespace: str | None,
        multi_namespace_mode: bool,
        watcher_queue: Any,
        resource_version: str | None,
        worker_uuid: str,
        kube_config: ExecutorSettings,
        fatal_waiting_reasons: frozenset[str] = frozenset(),
        unschedulable_timeout_s: float = 300.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.namespace = namespace
        self.multi_namespace_mode = multi_namespace_mode
        self.watcher_queue = watcher_queue
        self.resource_version = resource_version
        self.worker_uuid = worker_uuid
        if not isinstance(kube_config, ExecutorSettings):
            raise TypeError(
                "KubernetesJobWatcher takes the executor's settings as kube_config: its process "
                "builds its own client from them"
            )
        self.kube_config = kube_config
        self.fatal_waiting_reasons = fatal_waiting_reasons
        self.unschedulable_timeout_s = unschedulable_timeout_s

    def _watch_options(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "watcher_queue": self.watcher_queue,
            "resource_version": self.resource_version,
            "settings": self.kube_config,
            "fatal_waiting_reasons": self.fatal_waiting_reasons,
            "unschedulable_timeout_s": self.unschedulable_timeout_s,
        }

    @staticmethod
    def _Popen(process_obj: Any) -> Any:
        child = processes.ChildProcess(
            target=watch_in_child,
            args=(processes.log_level(),),
            kwargs=process_obj._watch_options(),
            name=process_obj.name,
            daemon=process_obj.daemon,
        )
        return child._Popen(child)

    def run(self) -> None:
        # A started watcher runs `watching.watch_in_child`; this is the same loop, in this
        # process, for a caller that runs a watcher itself.
        self._run()

    def _run(self) -> None:
        PodWatch(**self._watch_options()).run()


@dataclass
class TrackedPod:
    ref: identity.TaskRef
    namespace: str
    name: str
    deadline: float
    created: bool = False
    created_at: float = 0.0
    last_state: PodState | None = None
    finished: bool = False
    # False for pods taken over only to be cleaned up: their task is no longer Airflow's concern.
    report: bool = True


@dataclass(frozen=True)
class TaskResult:
    ref: identity.TaskRef
    state: PodState
    pod: str


class AirflowKubernetesScheduler(LoggingMixin):
    """The specification's signature; `kube_config` holds the settings each helper process
    builds its own client from (see `KubernetesJobWatcher`), `kube_client` is this process's."""

    def __init__(
        self,
        kube_config: ExecutorSettings,
        task_queue: queue.Queue[Any] | None,
        result_queue: queue.Queue[TaskResult],
        kube_client: client.CoreV1Api,
        worker_uuid: str,
        unclaimed_grace_s: float = 300.0,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        self.task_queue = task_queue
        self.result_queue = result_queue
        self.kube_client = kube_client
        self.worker_uuid = worker_uuid
        self.settings = kube_config
        self.pods: dict[tuple[str, str], TrackedPod] = {}
        self.fatal_waiting_reasons = frozenset(self.settings.worker_pod_pending_fatal_container_state_reasons)
        # Pods of other schedulers as the watchers last saw them: what adoption takes over.
        self.others: dict[tuple[str, str], Sighting] = {}
        # Those of them that have finished, with when they were first seen finished. A live
        # owner disposes of its pods within seconds; one still unclaimed after the grace has no
        # owner left (its tasks ended before any successor adopted them), so it is disposed of
        # here. Never reported: its task is not this scheduler's.
        self.unclaimed: dict[tuple[str, str], float] = {}
        self.unclaimed_grace_s = unclaimed_grace_s
        self.launcher = LauncherProcess(
            self.settings,
            concurrency=self.settings.creation_concurrency,
            qps=self.settings.api_qps,
            burst=self.settings.api_burst,
            max_retries=self.settings.task_publish_max_retries,
            request_args=self.settings.kube_client_request_args,
            delete_options=self.settings.delete_option_kwargs,
        )
        self._mp = multiprocessing.get_context("spawn")
        self.watcher_queue: Any = self._mp.Queue()
        self.watchers: dict[str | None, KubernetesJobWatcher] = {}
        self.watcher_restarts = 0
        self.listed: set[str | None] = set()

    # --- watchers --------------------------------------------------------
    def start_watchers(self) -> None:
        for namespace in self.settings.watched_namespaces:
            self._start_watcher(namespace)

    def _start_watcher(self, namespace: str | None) -> None:
        watcher = KubernetesJobWatcher(
            namespace=namespace,
            multi_namespace_mode=self.settings.multi_namespace_mode,
            watcher_queue=self.watcher_queue,
            resource_version=ResourceVersion().get_resource_version(namespace),
            worker_uuid=self.worker_uuid,
            kube_config=self.settings,
            fatal_waiting_reasons=self.fatal_waiting_reasons,
            unschedulable_timeout_s=self.settings.unschedulable_pod_timeout,
            daemon=True,
        )
        watcher.start()
        self.watchers[namespace] = watcher

    def check_watchers(self) -> None:
        """Restart a dead watcher from the last resourceVersion seen, not from the beginning."""
        for namespace, watcher in list(self.watchers.items()):
            if not watcher.is_alive():
                self.log.error("watcher of %s died (exit code %s); restarting", namespace, watcher.exitcode)
                self.watcher_restarts += 1
                metrics.incr("watcher.restarts")
                self._start_watcher(namespace)

    # --- launching -------------------------------------------------------
    def run_pod_async(self, pod: dict[str, Any], ref: identity.TaskRef | None = None, **kwargs: Any) -> None:
        """Create `pod` in the background; its outcome comes back through `sync`."""
        if not isinstance(pod, dict):
            pod = self.kube_client.api_client.sanitize_for_serialization(pod)
        meta = pod["metadata"]
        ref = ref or identity.ref_from_annotations(meta.get("annotations"))
        if ref is None:
            raise ValueError(f"pod {meta.get('name')!r} carries no task annotations")
        deadline = kwargs.get("deadline") or time.monotonic() + 600
        self.pods[(meta["namespace"], meta["name"])] = TrackedPod(
            ref, meta["namespace"], meta["name"], deadline
        )
        self.launcher.create(pod, deadline)

    def find_orphans(
        self, tries: list[identity.TaskRef], dead_scheduler_ids: set[str], wait_s: float = 120.0
    ) -> list[Orphan]:
        """The pods of `tries` and of the dead schedulers, as the watchers know them.

        A new scheduler is handed its orphans right after it starts: its watchers' first lists
        are waited for, rather than listing the same pods a second time at the same moment.
        Watchers that have not listed within `wait_s` (an API server refusing lists, say) are
        not waited for longer: the pods are listed directly.
        """
        deadline = time.monotonic() + wait_s
        while not (self.watchers and self.watchers.keys() <= self.listed):
            if time.monotonic() >= deadline:
                self.log.warning(
                    "the watchers have not listed their pods in %.0f s; adoption lists them itself", wait_s
                )
                sightings = adoption.list_sightings(
                    self.kube_client,
                    self.settings.watched_namespaces,
                    self.fatal_waiting_reasons,
                    self.settings.unschedulable_pod_timeout,
                )
                return adoption.select_orphans(sightings, tries, dead_scheduler_ids)
            time.sleep(0.05)
            self._drain_watchers()
        # What the watchers saw up to this moment, not what they saw when the queue was last read.
        self._drain_watchers()
        return adoption.select_orphans(self.others.values(), tries, dead_scheduler_ids)

    def adopt(self, orphan: Orphan, deadline: float) -> None:
        """Take responsibility for a pod that already exists, judged as last seen."""
        key = (orphan.namespace, orphan.name)
        self.others.pop(key, None)
        self.unclaimed.pop(key, None)
        pod = self.pods[key] = TrackedPod(
            orphan.ref, *key, deadline, created=True, created_at=time.time(), report=orphan.ours
        )
        pod.last_state = orphan.state
        if orphan.state.terminal:
            self._report(pod, orphan.state)

    def revoke(self, ref: identity.TaskRef) -> None:
        """Airflow took the task back: its pod goes, and nothing more is reported for it."""
        for pod in self.pods.values():
            if pod.ref == ref and not pod.finished:
                pod.finished, pod.report = True, False
                if pod.created:
                    self.delete_pod(pod.name, pod.namespace)

    def delete_pod(self, pod_name: str, namespace: str) -> None:
        self.launcher.delete(namespace, pod_name)

    def patch_pod_executor_done(self, pod_name: str, namespace: str) -> None:
        self.launcher.patch_labels(namespace, pod_name, {identity.DONE_LABEL: "True"})

    def _make_safe_pod_id(self, safe_dag_id: str, safe_task_id: str, safe_run_id: str) -> str:
        return identity.pod_name(identity.TaskRef(safe_dag_id, safe_task_id, safe_run_id))

    # --- results ---------------------------------------------------------
    def sync(self) -> None:
        self.launcher.check()
        self._drain_launches()
        self._drain_watchers()
        self._expire_unstarted()
        self._dispose_unclaimed()
        verdicts = [
            p.last_state.verdict for p in self.pods.values() if p.created and not p.finished and p.last_state
        ]
        metrics.gauge("pods.pending", verdicts.count("pending"))
        metrics.gauge("pods.running", verdicts.count("running"))

    def _report(self, pod: TrackedPod, state: PodState, never_started: bool = False) -> None:
        if pod.finished:
            return
        pod.finished = True
        pod.last_state = state
        if pod.report:
            self.result_queue.put(TaskResult(pod.ref, state, f"{pod.namespace}/{pod.name}"))
        if pod.created:
            self._dispose(pod.namespace, pod.name, state, never_started)

    def _dispose(self, namespace: str, name: str, state: PodState, never_started: bool = False) -> None:
        """Delete a finished pod, or keep it for inspection, per the settings: once per pod.

        A pod that never started holds its node's resources for nothing: with
        `delete_worker_pods` it goes, whatever `delete_worker_pods_on_failure` says.
        """
        settings = self.settings
        if settings.delete_worker_pods and (
            state.verdict == "success" or settings.delete_worker_pods_on_failure or never_started
        ):
            self.delete_pod(name, namespace)
        else:
            # Kept for inspection, but out of every watch and adoption from now on.
            self.patch_pod_executor_done(name, namespace)

    def _drain_launches(self) -> None:
        while True:
            try:
                result = self.launcher.results.get_nowait()
            except queue.Empty:
                return
            # The launcher process has no Airflow to send metrics with: they are sent from here.
            if isinstance(result, DeleteResult):
                metrics.http_outcome("pod_delete", result.status)
                continue
            metrics.timing("pod_create.duration", result.duration_s)
            metrics.http_outcome("pod_create", result.status)
            pod = self.pods.get((result.namespace, result.name))
            if pod is None:
                continue
            if result.ok and pod.finished and not pod.created:
                self._remove_late(pod)
            elif result.ok:
                pod.created, pod.created_at = True, time.time()
            else:
                self._report(
                    pod, PodState("failed", f"pod {result.name} could not be created: {result.error}")
                )

    def _drain_watchers(self) -> None:
        while True:
            try:
                message = self.watcher_queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(message, PodEvent):
                ResourceVersion().set_resource_version(
                    message.resource_version, self._watch_key(message.namespace)
                )
                self._on_event(message)
            elif isinstance(message, Resync):
                if message.namespace in self.listed:
                    metrics.incr("watcher.relists")
                self.listed.add(message.namespace)
                ResourceVersion().set_resource_version(message.resource_version, message.namespace)
                self._on_resync(message)
            elif isinstance(message, Bookmark):
                ResourceVersion().set_resource_version(message.resource_version, message.namespace)
            elif isinstance(message, logging.LogRecord):
                processes.log_in_parent(message)

    def _watch_key(self, namespace: str) -> str | None:
        return namespace if namespace in self.watchers else None

    def _on_event(self, event: PodEvent) -> None:
        pod = self.pods.get((event.namespace, event.name))
        if pod is None:
            # A pod of ours we did not launch in this process: launched by our previous
            # incarnation with the same id.
            if event.ref is None:
                return
            if event.scheduler_id != identity.safe_label_value(self.worker_uuid):
                self._note_other(event)
                return
            pod = TrackedPod(event.ref, event.namespace, event.name, time.monotonic() + 600, created=True)
            self.pods[(event.namespace, event.name)] = pod
        if pod.finished:
            if event.deleted:
                self.pods.pop((event.namespace, event.name), None)
            elif not pod.created:
                self._remove_late(pod)
            return
        pod.created = True
        pod.last_state = event.state
        if event.state.terminal:
            self._report(pod, event.state)

    def _remove_late(self, pod: TrackedPod) -> None:
        """A pod that appeared after its try was settled: its task expired or was revoked while
        the create was on its way, or the create's answer was lost. Its try is over: it goes."""
        pod.created = True
        self.log.warning(
            "pod %s/%s appeared after its task was settled; deleting it", pod.namespace, pod.name
        )
        self.delete_pod(pod.name, pod.namespace)

    def _note_other(self, event: PodEvent) -> None:
        assert event.ref is not None
        key = (event.namespace, event.name)
        if event.deleted:
            self.others.pop(key, None)
            self.unclaimed.pop(key, None)
            return
        self.others[key] = Sighting(event.ref, event.namespace, event.name, event.scheduler_id, event.state)
        if not event.state.terminal:
            self.unclaimed.pop(key, None)
        else:
            self.unclaimed.setdefault(key, time.monotonic())

    def _dispose_unclaimed(self) -> None:
        now = time.monotonic()
        for key, since in list(self.unclaimed.items()):
            if now - since >= self.unclaimed_grace_s:
                del self.unclaimed[key]
                seen = self.others.pop(key)
                self.log.info("pod %s/%s finished with no scheduler left to claim it; disposing", *key)
                metrics.incr("unclaimed_pods.disposed")
                self._dispose(*key, seen.state)

    def _on_resync(self, resync: Resync) -> None:
        for key in list(self.others):
            if (resync.namespace is None or key[0] == resync.namespace) and key not in resync.names:
                del self.others[key]
                self.unclaimed.pop(key, None)
        for key, pod in list(self.pods.items()):
            in_scope = resync.namespace is None or pod.namespace == resync.namespace
            if (
                in_scope
                and not pod.finished
                and pod.created
                and pod.created_at < resync.listed_at
                and key not in resync.names
            ):
                self._report(pod, PodState("failed", "pod disappeared while the watch was interrupted"))
            if pod.finished and key not in resync.names and in_scope:
                del self.pods[key]

    def _expire_unstarted(self) -> None:
        now = time.monotonic()
        for pod in self.pods.values():
            if pod.finished or now < pod.deadline:
                continue
            if pod.last_state is None or pod.last_state.verdict == "pending":
                why = f" ({pod.last_state.reason})" if pod.last_state and pod.last_state.reason else ""
                self._report(
                    pod,
                    PodState(
                        "failed",
                        "pod did not start within [scheduler] task_queued_timeout, after which its "
                        f"workload token is no longer valid{why}",
                    ),
                    never_started=True,
                )

    def claimed(self) -> set[identity.TaskRef]:
        """The task tries whose outcome is this scheduler's to report: still awaited, or reported
        and perhaps not yet taken in by Airflow (a pod is tracked until it is gone)."""
        return {p.ref for p in self.pods.values() if p.report}

    def in_flight(self) -> set[identity.TaskRef]:
        """The task tries whose pods this scheduler launched or adopted and still awaits."""
        return {p.ref for p in self.pods.values() if not p.finished}

    def terminate(self) -> None:
        for watcher in self.watchers.values():
            if watcher.is_alive():
                watcher.terminate()
        for watcher in self.watchers.values():
            watcher.join(timeout=5)
            if watcher.is_alive():
                watcher.kill()
                watcher.join(timeout=5)
        self.launcher.shutdown(wait=False)
