"""`AirflowKubernetesScheduler`: the process shell around the pod ledger.

It owns the launcher and the watcher processes. What they report (create results,
pod events, relists) goes into the `PodLedger` (ledger.py), which holds one record
per pod and decides; the actions it returns are carried out here: results onto the
result queue the executor hands to Airflow, deletes and label patches to the launcher.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import time
from collections.abc import Sequence
from typing import Any

from airflow.utils.log.logging_mixin import LoggingMixin
from kubernetes import client

from k8s_executor import adoption, identity, metrics, processes
from k8s_executor.adoption import Orphan
from k8s_executor.launching import REQUEST_ERRORS, DeleteResult, LauncherProcess, PatchResult
from k8s_executor.ledger import (
    DEFAULT_START_TIMEOUT_S,
    Action,
    DisposalRule,
    Drop,
    HandedOver,
    NameTaken,
    PodLedger,
    TaskResult,
    disposer,
)
from k8s_executor.processes import Helper
from k8s_executor.settings import ExecutorSettings
from k8s_executor.watching import Bookmark, PodEvent, PodWatch, Read, Released, Resync

# Adoption and the sweep list pods directly: a failed list is tried again after these waits.
LIST_RETRY_WAITS_S = (1.0, 2.0, 4.0)


class KubernetesJobWatcher(multiprocessing.Process, LoggingMixin):
    """The specification's watcher process: `watching.PodWatch` run in a `multiprocessing.Process`.

    A compatibility entry point: the scheduler shell below starts its watchers as light helper
    processes instead (processes.py), which neither inherit nor re-import the scheduler. Started
    by a caller, this process runs with multiprocessing's start method and sends `PodEvent`,
    `Resync` and `Bookmark` messages to `watcher_queue`. `kube_config` keeps the specification's
    name but holds the settings: the process builds its own client and keeps its credential
    fresh (credentials.py), since a loaded `Configuration`'s refresh cannot cross a process.
    `multi_namespace_mode` is implied by `namespace=None` (all namespaces), and kept for the
    signature.
    """

    def __init__(
        self,
        namespace: str | None,
        multi_namespace_mode: bool,
        watcher_queue: Any,
        resource_version: str | None,
        worker_uuid: str,
        kube_config: ExecutorSettings,
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

    def run(self) -> None:
        PodWatch(
            namespace=self.namespace,
            watcher_queue=self.watcher_queue,
            resource_version=self.resource_version,
            settings=self.kube_config,
            fatal_waiting_reasons=frozenset(
                self.kube_config.worker_pod_pending_fatal_container_state_reasons
            ),
            unschedulable_timeout_s=self.kube_config.unschedulable_pod_timeout,
        ).run()


class AirflowKubernetesScheduler(LoggingMixin):
    """The shell around the pod ledger: it owns the launcher and the watchers, feeds what they
    say into the `PodLedger` (ledger.py), and carries out what the ledger decides.

    The specification's signature; `kube_config` holds the settings each helper process builds
    its own client from (see `KubernetesJobWatcher`), `kube_client` is this process's.
    """

    def __init__(
        self,
        kube_config: ExecutorSettings,
        task_queue: queue.Queue[Any] | None,
        result_queue: queue.Queue[TaskResult | HandedOver | NameTaken],
        kube_client: client.CoreV1Api,
        worker_uuid: str,
        unclaimed_grace_s: float = 300.0,
        executor_id: str = identity.DEFAULT_EXECUTOR,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        self.task_queue = task_queue
        self.result_queue = result_queue
        self.kube_client = kube_client
        self.worker_uuid = worker_uuid
        self.executor_id = executor_id
        self.settings = kube_config
        # This instance's own: two executors (teams) in one process must not share them.
        self.resource_versions: dict[str | None, str] = {}
        self.ledger = PodLedger(
            worker_uuid,
            DisposalRule(self.settings.delete_worker_pods, self.settings.delete_worker_pods_on_failure),
            # One clock for the ledger and the watchers' relist stamps: monotonic, machine-wide.
            clock=time.monotonic,
            unclaimed_grace_s=unclaimed_grace_s,
        )
        self.fatal_waiting_reasons = frozenset(self.settings.worker_pod_pending_fatal_container_state_reasons)
        self.launcher = LauncherProcess(
            self.settings,
            concurrency=self.settings.creation_concurrency,
            qps=self.settings.api_qps,
            burst=self.settings.api_burst,
            max_retries=self.settings.task_publish_max_retries,
            request_args=self.settings.kube_client_request_args,
            delete_options=self.settings.delete_option_kwargs,
        )
        # Watcher messages, put here by the threads that read the watcher processes' pipes.
        self.watcher_queue: queue.Queue[Any] = queue.Queue()
        self.watchers: dict[str | None, Helper] = {}
        self.watcher_restarts = 0
        self.watch_events_read = 0
        self.listed: set[str | None] = set()

    # --- watchers --------------------------------------------------------
    def start_watchers(self) -> None:
        for namespace in self.settings.watched_namespaces:
            self._start_watcher(namespace)

    def _start_watcher(self, namespace: str | None) -> None:
        self.watchers[namespace] = Helper(
            "k8s_executor.watching:serve",
            {
                "namespace": namespace,
                "resource_version": self.resource_versions.get(namespace),
                "executor_id": self.executor_id,
                "scheduler_id": self.worker_uuid,
                "settings": self.settings,
                "fatal_waiting_reasons": self.fatal_waiting_reasons,
                "unschedulable_timeout_s": self.settings.unschedulable_pod_timeout,
            },
            name=f"k8s-executor-watcher-{namespace or 'all'}",
            on_message=self.watcher_queue.put,
        )

    def check_watchers(self) -> None:
        """Restart a dead watcher from the last resourceVersion seen, not from the beginning."""
        for namespace, watcher in list(self.watchers.items()):
            if not watcher.is_alive():
                self.log.error("watcher of %s died (exit code %s); restarting", namespace, watcher.exitcode)
                watcher.join(timeout=1)  # its pipes and threads go with it
                self.watcher_restarts += 1
                metrics.incr("watcher.restarts")
                self._start_watcher(namespace)

    # --- launching -------------------------------------------------------
    def run_pod_async(
        self, pod: dict[str, Any], ref: identity.WorkloadRef | None = None, **kwargs: Any
    ) -> None:
        """Create `pod` in the background; its outcome comes back through `sync`.

        `start_timeout_s`: how long its pod may take to start before its try fails.
        """
        if not isinstance(pod, dict):
            pod = self.kube_client.api_client.sanitize_for_serialization(pod)
        meta = pod["metadata"]
        ref = ref or identity.ref_from_annotations(meta.get("annotations"))
        if ref is None:
            raise ValueError(f"pod {meta.get('name')!r} carries no task annotations")
        timeout_s = kwargs.get("start_timeout_s") or DEFAULT_START_TIMEOUT_S
        self.ledger.launching(ref, meta["namespace"], meta["name"], timeout_s)
        self.launcher.create(pod, time.monotonic() + timeout_s)

    def find_orphans(
        self, tries: Sequence[identity.WorkloadRef], dead_scheduler_ids: set[str]
    ) -> list[Orphan]:
        """The pods of `tries` and of the dead schedulers: one list of this executor's pods (the
        watchers see only this scheduler's), and one of legacy pods when tries are still missing."""
        sightings = self._list(identity.selector(self.executor_id))
        return self._with_legacy(adoption.select_orphans(sightings, tries, dead_scheduler_ids), tries)

    def _with_legacy(self, orphans: list[Orphan], tries: Sequence[identity.WorkloadRef]) -> list[Orphan]:
        """`orphans`, and the legacy pods of the tries not found among them (adoption.py)."""
        missing = set(tries) - {o.ref for o in orphans if o.ours}
        if not missing:
            return orphans
        return orphans + adoption.legacy_orphans(self._list(identity.LEGACY_SELECTOR), missing)

    def _list(
        self, selector: str, retry_waits_s: Sequence[float] = LIST_RETRY_WAITS_S
    ) -> list[adoption.Sighting]:
        """Pods under `selector`, listed now; a refused or broken list is tried again after each
        of `retry_waits_s`. The scheduler loop waits meanwhile, so the waits stay short."""
        waits = iter(retry_waits_s)
        while True:
            try:
                return adoption.list_sightings(
                    self.kube_client,
                    self.settings.watched_namespaces,
                    selector,
                    self.fatal_waiting_reasons,
                    self.settings.unschedulable_pod_timeout,
                )
            except REQUEST_ERRORS as exc:
                wait_s = next(waits, None)
                if wait_s is None:
                    raise
                self.log.warning(
                    "listing pods (%s) failed: %s; trying again in %.0f s", selector, exc, wait_s
                )
                time.sleep(wait_s)

    def adopt(self, orphan: Orphan, start_timeout_s: float) -> None:
        """Take responsibility for a pod that already exists, judged as last seen."""
        self._carry_out(self.ledger.adopt(orphan, start_timeout_s))
        if orphan.legacy:
            self.log.info(
                "adopting legacy pod %s/%s: giving it this executor's labels", orphan.namespace, orphan.name
            )
        if not orphan.state.terminal:
            # Claimed in the open, and so in this scheduler's watch from now on; the other live
            # schedulers see the new label and leave the pod alone.
            self._relabel(orphan.namespace, orphan.name)

    def _relabel(self, namespace: str, name: str) -> None:
        self.launcher.patch_labels(
            namespace, name, identity.adopted_labels(self.executor_id, self.worker_uuid)
        )

    def set_live_schedulers(self, labels: set[str]) -> None:
        """The schedulers Airflow holds alive: another's finished pods are never disposed of here
        while it lives (ledger.live_schedulers)."""
        self.ledger.schedulers_alive(labels)

    def sweep(self) -> None:
        """The disposer (ledger.disposer) lists the pods no live scheduler claims, for the ledger to
        dispose of those that finished once their grace is over. Pods of live schedulers are left
        out by the API server, so the list holds only what a dead scheduler left."""
        alive = self.ledger.alive
        if not alive or disposer(alive) != self.ledger.scheduler_label:
            return
        # Not tried again here: the sweep comes round again, and the loop must not wait for it.
        sightings = self._list(identity.unclaimed_selector(self.executor_id, alive), retry_waits_s=())
        self._carry_out(self.ledger.swept(sightings))

    def waiting_for_create(self, older_than_s: float) -> set[identity.TaskRef]:
        return self.ledger.waiting_for_create(older_than_s)

    def revoke(self, ref: identity.WorkloadRef) -> None:
        """Airflow took the task back: its pod goes, and nothing more is reported for it."""
        self._carry_out(self.ledger.revoke(ref))

    def delete_pod(self, pod_name: str, namespace: str) -> None:
        self.launcher.delete(namespace, pod_name)

    def patch_pod_executor_done(self, pod_name: str, namespace: str) -> None:
        self.launcher.patch_labels(namespace, pod_name, {identity.DONE_LABEL: "True"})

    def _make_safe_pod_id(self, safe_dag_id: str, safe_task_id: str, safe_run_id: str) -> str:
        """The specification's name for a try's pod name (identity.pod_name)."""
        return identity.pod_name(identity.TaskRef(safe_dag_id, safe_task_id, safe_run_id))

    # --- results ---------------------------------------------------------
    def sync(self) -> None:
        self.launcher.check()
        self._drain_launches()
        self._drain_watchers()
        self._carry_out(self.ledger.tick())
        verdicts = self.ledger.verdicts()
        metrics.gauge("pods.pending", verdicts.count("pending"))
        metrics.gauge("pods.running", verdicts.count("running"))

    def _carry_out(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, (TaskResult, HandedOver, NameTaken)):
                self.result_queue.put(action)
                continue
            if isinstance(action, Drop):
                self.log.info(
                    "dropping the create of pod %s/%s: its try is no longer wanted",
                    action.namespace,
                    action.name,
                )
                self.launcher.drop(action.namespace, action.name)
                continue
            where = (action.namespace, action.name)
            if action.why == "late":
                self.log.warning("pod %s/%s appeared after its task was settled; deleting it", *where)
            elif action.why == "unclaimed":
                self.log.info(
                    "pod %s/%s %s with no scheduler left to claim it; disposing",
                    *where,
                    "unfinished" if action.resource_version else "finished",
                )
                metrics.incr("unclaimed_pods.disposed")
            if action.delete:
                self.launcher.delete(action.namespace, action.name, action.resource_version)
            else:
                # Kept for inspection, but out of every watch and adoption from now on.
                self.patch_pod_executor_done(action.name, action.namespace)

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
            if isinstance(result, PatchResult):
                if result.status in (200, 404):
                    self._carry_out(
                        self.ledger.relabelled(result.namespace, result.name, result.status == 200)
                    )
                elif self.ledger.relabelling(result.namespace, result.name):
                    # Refused or unanswered past its retries: until it lands, the pod is in no watch.
                    self.log.warning(
                        "relabelling adopted pod %s/%s failed (HTTP %s); trying again",
                        result.namespace,
                        result.name,
                        result.status,
                    )
                    self._relabel(result.namespace, result.name)
                continue
            metrics.timing("pod_create.duration", result.duration_s)
            metrics.http_outcome("pod_create", result.status)
            self._carry_out(
                self.ledger.launched(
                    result.namespace, result.name, result.ok, result.error, result.name_taken
                )
            )

    def _drain_watchers(self) -> None:
        while True:
            try:
                message = self.watcher_queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(message, PodEvent):
                self.resource_versions[self._watch_key(message.namespace)] = message.resource_version
                self._carry_out(self.ledger.observed(message))
            elif isinstance(message, Resync):
                if message.namespace in self.listed:
                    metrics.incr("watcher.relists")
                self.listed.add(message.namespace)
                self.resource_versions[message.namespace] = message.resource_version
                self._carry_out(self.ledger.resynced(message))
            elif isinstance(message, Bookmark):
                self.resource_versions[message.namespace] = message.resource_version
            elif isinstance(message, Released):
                self.log.warning(
                    "pod %s/%s was adopted by scheduler %s; its try is that scheduler's now",
                    message.namespace,
                    message.name,
                    message.scheduler_id,
                )
                self._carry_out(self.ledger.released(message.namespace, message.name))
            elif isinstance(message, Read):
                self.watch_events_read += message.events
                metrics.incr("watcher.events", message.events)
            elif isinstance(message, logging.LogRecord):
                processes.log_in_parent(message)

    def _watch_key(self, namespace: str) -> str | None:
        return namespace if namespace in self.watchers else None

    def claimed(self) -> set[identity.WorkloadRef]:
        return self.ledger.claimed()

    def in_flight(self) -> set[identity.WorkloadRef]:
        return self.ledger.in_flight()

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
