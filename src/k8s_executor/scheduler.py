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
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from airflow.utils.log.logging_mixin import LoggingMixin
from kubernetes import client

from k8s_executor import adoption, identity, metrics, processes
from k8s_executor.identity import DEFAULT_CLUSTER
from k8s_executor.kube_client import list_seen
from k8s_executor.launching import REQUEST_ERRORS, LauncherProcess
from k8s_executor.ledger import (
    DEFAULT_START_TIMEOUT_S,
    Action,
    DisposalRule,
    Dispose,
    Drop,
    PodLedger,
    Questions,
    RelaunchRule,
    TaskResult,
    disposer,
)
from k8s_executor.processes import Helper
from k8s_executor.resource_version import ResourceVersion
from k8s_executor.settings import ExecutorSettings
from k8s_executor.shapes import (
    Bookmark,
    DeleteResult,
    LauncherResult,
    Orphan,
    PatchResult,
    PodEvent,
    PodSeen,
    Read,
    Released,
    Resync,
    TaskRow,
)
from k8s_executor.watching import PodWatch


@dataclass(frozen=True)
class PodLaunch:
    """What the task queue holds: a task's pod, built, with what its try needs from the ledger."""

    pod: dict[str, Any]
    ref: identity.WorkloadRef
    start_timeout_s: float
    # What the pod was built from: a new pod of the same try is built from it again.
    payload: object = None
    # The task's own disruption_retries (executor_config), if it sets one.
    disruption_retries: int | None = None


@dataclass
class Incoming:
    """What the launcher answered and the watchers sent, read but not yet applied: the executor
    reads it before it takes its pod builder's outcomes (executor.py, `sync`)."""

    answers: list[LauncherResult]
    watched: list[Any]


def _drain(source: Any) -> list[Any]:
    """Everything `source` (a queue) holds now."""
    out: list[Any] = []
    while True:
        try:
            out.append(source.get_nowait())
        except queue.Empty:
            return out


# Adoption lists pods directly, off the scheduler loop (errands.py): a failed list is tried again
# after each of these waits, about a minute in all, while the tries handed over wait in the ledger.
LIST_RETRY_WAITS_S = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
# A list that has had no answer this long is broken off, and tried again as a failed one.
LIST_TIMEOUT_S = 60.0
# Nor is a list tried for longer than this in all: the tries handed over wait for every cluster's
# answer, and Airflow 3 fails a try whose heartbeat is older than its heartbeat timeout (300 s).
LIST_DEADLINE_S = 120.0
# How often the pods.pending and pods.running gauges are counted: a count goes over every pod
# awaited, which a sync in a burst of thousands cannot afford each time (Airflow's own pool gauges
# come every 5 s too).
GAUGE_INTERVAL_S = 5.0


class KubernetesJobWatcher(multiprocessing.Process, LoggingMixin):
    """The specification's watcher process: `watching.PodWatch` run in a `multiprocessing.Process`.

    A compatibility entry point: the scheduler shell below starts its watchers as light helper
    processes instead (processes.py), which neither inherit nor re-import the scheduler. Started
    by a caller, this process runs with multiprocessing's start method and sends `PodEvent`,
    `Resync` and `Bookmark` messages to `watcher_queue`. `kube_config` keeps the specification's
    name but holds the settings: the process builds its own client and keeps its credential
    fresh (credentials.py), since a loaded `Configuration`'s refresh cannot cross a process.

    The arguments decide what is watched: `namespace`, or with `multi_namespace_mode` and no
    namespace every namespace; only the pods of the executor `executor_id` (a keyword, by
    default the default executor's) that the scheduler `worker_uuid` holds; from
    `resource_version` on, or from a fresh list when it is None.
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
        self.executor_id: str = kwargs.pop("executor_id", identity.DEFAULT_EXECUTOR)
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

    @property
    def watched_namespace(self) -> str | None:
        """The namespace this watcher lists and watches; None: every namespace."""
        if self.namespace:
            return self.namespace
        return None if self.multi_namespace_mode else self.kube_config.namespace

    def run(self) -> None:
        try:
            self._run()
        except Exception:
            # The parent sees the exit code and restarts the watcher from the last resourceVersion.
            self.log.exception("watcher of %s stopped", self.watched_namespace or "all namespaces")
            raise

    def _run(self) -> None:
        PodWatch(
            namespace=self.watched_namespace,
            watcher_queue=self.watcher_queue,
            resource_version=self.resource_version,
            settings=self.kube_config,
            fatal_waiting_reasons=frozenset(
                self.kube_config.worker_pod_pending_fatal_container_state_reasons
            ),
            unschedulable_timeout_s=self.kube_config.unschedulable_pod_timeout,
            executor_id=self.executor_id,
            scheduler_id=self.worker_uuid,
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
        task_queue: queue.Queue[PodLaunch] | None,
        result_queue: queue.Queue[TaskResult],
        kube_client: client.CoreV1Api,
        worker_uuid: str,
        unclaimed_grace_s: float = 300.0,
        executor_id: str = identity.DEFAULT_EXECUTOR,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        # Which of the executor's clusters this shell speaks to ([kubernetes_executor] clusters).
        self.cluster = cluster = kube_config.cluster
        self._cluster_part = "" if cluster == DEFAULT_CLUSTER else f"{cluster}-"
        if kwargs:
            self.log.warning(
                "AirflowKubernetesScheduler: ignoring arguments it does not take: %s",
                ", ".join(sorted(kwargs)),
            )
        self._ignored: set[str] = set()
        self.task_queue: queue.Queue[PodLaunch] = task_queue if task_queue is not None else queue.Queue()
        self.result_queue = result_queue
        self.kube_client = kube_client
        # The specification's name for the id of the scheduler this shell serves.
        self.worker_uuid = self.scheduler_id = worker_uuid
        self.executor_id = executor_id
        self.settings = kube_config
        self.resource_versions = ResourceVersion()
        # This shell's own entries in that store: two executors (teams) in one process select
        # different pods, and a shell made again starts from a fresh list.
        self._rv_owner = f"{self.executor_id}/{self.scheduler_id}/{uuid.uuid4().hex}"
        self.ledger = PodLedger(
            self.scheduler_id,
            DisposalRule(self.settings.delete_worker_pods, self.settings.delete_worker_pods_on_failure),
            # One clock for the ledger and the watchers' relist stamps: monotonic, machine-wide.
            clock=time.monotonic,
            unclaimed_grace_s=unclaimed_grace_s,
            relaunch=RelaunchRule(
                self.settings.pod_launch_failure_retries,
                frozenset(self.settings.pod_launch_failure_excluded_container_reasons),
            ),
            disruption_retries=self.settings.disruption_retries,
        )
        self.fatal_waiting_reasons = frozenset(self.settings.worker_pod_pending_fatal_container_state_reasons)
        self.launcher = LauncherProcess(
            self.settings,
            name=f"k8s-executor-launcher{'-' + cluster if cluster != DEFAULT_CLUSTER else ''}",
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
        # Watchers seen dead whose last messages are still being read.
        self._dead_watchers: set[str | None] = set()
        self.watcher_restarts = 0
        self.watch_events_read = 0
        self.listed: set[str | None] = set()
        self._gauged_at = -GAUGE_INTERVAL_S

    # --- watchers --------------------------------------------------------
    def start_watchers(self) -> None:
        for namespace in self.settings.watched_namespaces:
            self._start_watcher(namespace)

    def _start_watcher(self, namespace: str | None) -> None:
        self.watchers[namespace] = Helper(
            "k8s_executor.watching:serve",
            {
                "namespace": namespace,
                "resource_version": self._resource_version(namespace),
                "executor_id": self.executor_id,
                "scheduler_id": self.scheduler_id,
                "settings": self.settings,
                "fatal_waiting_reasons": self.fatal_waiting_reasons,
                "unschedulable_timeout_s": self.settings.unschedulable_pod_timeout,
            },
            name=f"k8s-executor-watcher-{self._cluster_part}{namespace or 'all'}",
            on_message=self.watcher_queue.put,
        )

    def check_watchers(self) -> None:
        """Restart a dead watcher from the last resourceVersion seen, not from the beginning: once
        its last messages are read (their events come before its successor's), without waiting
        for them on Airflow's loop."""
        for namespace, watcher in list(self.watchers.items()):
            if watcher.is_alive():
                continue
            if namespace not in self._dead_watchers:
                self.log.error("watcher of %s died (%s); restarting", namespace, watcher.how_it_ended)
                watcher.forget()
                self._dead_watchers.add(namespace)
            if watcher.settled():
                self._dead_watchers.discard(namespace)
                self.watcher_restarts += 1
                metrics.incr("watcher.restarts", cluster=self.cluster)
                self._start_watcher(namespace)

    # --- launching -------------------------------------------------------
    def run_pod_async(
        self,
        pod: Any,
        ref: identity.WorkloadRef | None = None,
        start_timeout_s: float | None = None,
        payload: object = None,
        disruption_retries: int | None = None,
        **kwargs: Any,
    ) -> None:
        """Create `pod` (a V1Pod or its dict) in the background; its outcome comes back through
        `sync`. `start_timeout_s`: how long its pod may take to start before its try fails;
        `payload`: what it was built from, handed back by the ledger when the try needs a new pod;
        `disruption_retries`: the task's own, if it sets one."""
        if unknown := kwargs.keys() - self._ignored:
            # Said once per name: a caller passes the same arguments with every pod.
            self._ignored |= unknown
            self.log.warning(
                "run_pod_async: ignoring arguments it does not take: %s", ", ".join(sorted(unknown))
            )
        if not isinstance(pod, dict):
            pod = self.kube_client.api_client.sanitize_for_serialization(pod)
        meta = pod["metadata"]
        ref = ref or identity.ref_from_annotations(meta.get("annotations"))
        if ref is None:
            raise ValueError(f"pod {meta.get('name')!r} carries no task annotations")
        launch = PodLaunch(pod, ref, start_timeout_s or DEFAULT_START_TIMEOUT_S, payload, disruption_retries)
        self.launching(launch)
        self.send_create(launch)

    def launching(self, launch: PodLaunch) -> None:
        """The ledger holds `launch`'s try from now on: its create is on its way."""
        meta = launch.pod["metadata"]
        self.ledger.launching(
            launch.ref,
            meta["namespace"],
            meta["name"],
            launch.start_timeout_s,
            launch.payload,
            launch.disruption_retries,
        )

    def abandon(self, launch: PodLaunch) -> None:
        """`launch`'s try was given up before the ledger heard of it: its create is dropped, its pod
        deleted if it lands anyway, and nothing is reported for it."""
        meta = launch.pod["metadata"]
        self._carry_out(
            self.ledger.abandoned(launch.ref, meta["namespace"], meta["name"], launch.start_timeout_s)
        )

    def send_create(self, launch: PodLaunch) -> None:
        """Hand `launch`'s pod to the launcher. It touches nothing but the launcher, which takes
        requests from any thread: the executor's pod builder calls it, after queueing the launch
        for the loop (`launching`, or `abandon` if its try was given up meanwhile)."""
        self.launcher.create(launch.pod, time.monotonic() + launch.start_timeout_s)

    def launch_queued(self) -> None:
        """Create the pods the executor put on the task queue, in the order it put them."""
        while True:
            try:
                launch = self.task_queue.get_nowait()
            except queue.Empty:
                return
            self.run_pod_async(
                launch.pod,
                ref=launch.ref,
                start_timeout_s=launch.start_timeout_s,
                payload=launch.payload,
                disruption_retries=launch.disruption_retries,
            )

    def attempt(self, ref: identity.WorkloadRef) -> int:
        """How many pods of `ref` were launched again: its next pod's name is built with it."""
        return self.ledger.attempt(ref)

    def find_orphans(
        self, tries: Sequence[identity.WorkloadRef], dead_scheduler_ids: set[str]
    ) -> list[Orphan]:
        """The pods of `tries` and of the dead schedulers: one list of this executor's pods (the
        watchers see only this scheduler's), and one of legacy pods when tries are still missing."""
        sightings = self._list(identity.selector(self.executor_id, cluster=self.cluster))
        orphans = adoption.select_orphans(sightings, tries, dead_scheduler_ids)
        # Legacy pods were launched by an executor of one cluster: the section's own.
        return self._with_legacy(orphans, tries) if self.cluster == DEFAULT_CLUSTER else orphans

    def _with_legacy(self, orphans: list[Orphan], tries: Sequence[identity.WorkloadRef]) -> list[Orphan]:
        """`orphans`, and the legacy pods of the tries not found among them (adoption.py)."""
        missing = set(tries) - {o.ref for o in orphans if o.ours}
        if not missing:
            return orphans
        return orphans + adoption.legacy_orphans(self._list(identity.LEGACY_SELECTOR), missing)

    def _list(self, selector: str, retry_waits_s: Sequence[float] = LIST_RETRY_WAITS_S) -> list[PodSeen]:
        """Pods under `selector`, listed now and judged as listed; a refused or broken list is
        tried again after each of `retry_waits_s`. Called from errands only: it waits."""
        waits = iter(retry_waits_s)
        deadline = time.monotonic() + LIST_DEADLINE_S
        while True:
            try:
                return list_seen(
                    self.kube_client,
                    self.settings.watched_namespaces,
                    selector,
                    self.fatal_waiting_reasons,
                    self.settings.unschedulable_pod_timeout,
                    timeout_s=max(1.0, min(LIST_TIMEOUT_S, deadline - time.monotonic())),
                )
            except REQUEST_ERRORS as exc:
                wait_s = next(waits, None)
                if wait_s is None or time.monotonic() + wait_s >= deadline:
                    raise
                self.log.warning(
                    "listing pods (%s) failed: %s; trying again in %.0f s", selector, exc, wait_s
                )
                time.sleep(wait_s)

    def not_found(self, tries: Sequence[identity.WorkloadRef]) -> list[identity.WorkloadRef]:
        """Of `tries`, those the ledger still awaits, no longer held: their pods were not found."""
        return self.ledger.unfound(tries)

    def reading_handed_over(self, unread: bool) -> None:
        """Whether a hand-over's rows are being read: no dead scheduler's pod is disposed of
        meanwhile (ledger.PodLedger.reading_handed_over)."""
        self.ledger.reading_handed_over(unread)

    def await_adoption(self, tries: Sequence[identity.WorkloadRef]) -> None:
        """Tries Airflow handed over: held in the ledger while `find_orphans` looks for their pods."""
        self.ledger.awaiting_adoption(tries)

    def adopt_found(
        self, orphans: Sequence[Orphan], tries: Sequence[identity.WorkloadRef], start_timeout_s: float
    ) -> tuple[list[Orphan], list[identity.WorkloadRef]]:
        """Adopt what `find_orphans` found for `tries` (those the ledger still awaits); returns the
        pods adopted and the tries still awaited whose pods were not found, no longer held."""
        adopted: list[Orphan] = []
        for orphan in self.ledger.adoptable(orphans):
            try:
                self.adopt(orphan, start_timeout_s)
            except Exception:
                # Its try is still awaited, and so reset with the tries not found.
                self.log.exception("adopting pod %s/%s failed", orphan.namespace, orphan.name)
            else:
                adopted.append(orphan)
        return adopted, self.ledger.unfound(tries)

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
            namespace, name, identity.adopted_labels(self.executor_id, self.scheduler_id)
        )

    def set_live_schedulers(self, labels: set[str]) -> None:
        """The schedulers Airflow holds alive: another's finished pods are never disposed of here
        while it lives (ledger.live_schedulers)."""
        self.ledger.schedulers_alive(labels)

    def sweep_selector(self) -> str | None:
        """The disposer (ledger.disposer) lists the pods no live scheduler claims, for the ledger to
        dispose of those that finished once their grace is over: their selector, or None when this
        scheduler is not the disposer. Pods of live schedulers are left out by the API server, so
        the list holds only what a dead scheduler left."""
        alive = self.ledger.alive
        if not alive or disposer(alive) != self.ledger.scheduler_label:
            return None
        return identity.unclaimed_selector(self.executor_id, alive, self.cluster)

    def list_for_sweep(self, selector: str) -> list[PodSeen]:
        """The sweep's list (an errand): not tried again here, the sweep comes round again."""
        return self._list(selector, retry_waits_s=())

    def swept(self, sightings: list[PodSeen]) -> list[Action]:
        return self._carry_out(self.ledger.swept(sightings))

    def questions(self) -> Questions:
        """What the ledger needs to hear from Airflow's database now."""
        return self.ledger.questions()

    def answer(
        self, rows: dict[identity.TaskRef, TaskRow | None], attempts: Mapping[identity.TaskRef, int]
    ) -> list[Action]:
        """The database's rows for the tries `questions` named (with its `attempts`); returns what
        the executor does."""
        return self._carry_out(self.ledger.answered(rows, attempts))

    def requeued(self, ref: identity.TaskRef, payload: object | None) -> list[Action]:
        """The executor's answer to a `Requeue`: the new pod's payload, or None."""
        return self._carry_out(self.ledger.requeued(ref, payload))

    def unanswerable(self, refs: frozenset[identity.TaskRef]) -> list[Action]:
        """The database could not say whether these tries' tasks had started: their held failures
        are reported as they are."""
        return self._carry_out(self.ledger.unanswerable(refs))

    def revoke(self, ref: identity.WorkloadRef) -> None:
        """Airflow took the task back: its pod goes, and nothing more is reported for it."""
        self._carry_out(self.ledger.revoke(ref))

    def delete_pod(self, pod_name: str, namespace: str, resource_version: str | None = None) -> None:
        """Delete a pod (in the background, by the launcher); with `resource_version`, only if the
        pod is unchanged since it was seen at it."""
        self.launcher.delete(namespace, pod_name, resource_version)

    def patch_pod_executor_done(self, pod_name: str, namespace: str, stop: bool = False) -> None:
        """Mark a pod done: kept for inspection, out of every watch. With `stop`, its containers
        still running (a sidecar after its task) are ended too, by kubelet, through the pod's
        activeDeadlineSeconds (its phase becomes Failed, reason DeadlineExceeded)."""
        self.launcher.patch_labels(namespace, pod_name, {identity.DONE_LABEL: "True"}, stop=stop)

    def _make_safe_pod_id(self, safe_dag_id: str, safe_task_id: str, safe_run_id: str) -> str:
        """The specification's name for a try's pod name (identity.pod_name)."""
        return identity.pod_name(identity.TaskRef(safe_dag_id, safe_task_id, safe_run_id))

    # --- results ---------------------------------------------------------
    def sync(self, incoming: Incoming | None = None) -> list[Action]:
        """Take in what the launcher and the watchers said (`incoming`, read now if not given) and
        what time decided: results go onto the result queue; what the executor must do about its
        tries is returned."""
        self.launch_queued()
        if self.launcher.check():
            metrics.incr("launcher.restarts", cluster=self.cluster)
        incoming = incoming or self.take_incoming()
        todo = self._apply_answers(incoming.answers)
        todo += self._apply_watched(incoming.watched)
        todo += self._carry_out(self.ledger.tick())
        if (now := time.monotonic()) - self._gauged_at >= GAUGE_INTERVAL_S:
            self._gauged_at = now
            verdicts = self.ledger.verdicts()
            metrics.gauge("pods.pending", verdicts.count("pending"), cluster=self.cluster)
            metrics.gauge("pods.running", verdicts.count("running"), cluster=self.cluster)
        return todo

    def _carry_out(self, actions: list[Action]) -> list[Action]:
        """Results onto the result queue, deletes, patches and drops to the launcher; the rest
        (launches, relaunches, hand-overs, withdrawals) is the executor's, and returned."""
        todo: list[Action] = []
        for action in actions:
            if isinstance(action, TaskResult):
                self.result_queue.put(action)
                continue
            if not isinstance(action, (Dispose, Drop)):
                todo.append(action)
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
                metrics.incr("unclaimed_pods.disposed", cluster=self.cluster)
            if action.delete:
                self.delete_pod(action.name, action.namespace, action.resource_version)
            else:
                # Kept for inspection, but out of every watch and adoption from now on.
                self.patch_pod_executor_done(action.name, action.namespace, stop=action.stop)
        return todo

    def take_incoming(self) -> Incoming:
        """What the launcher and the watchers said since the last call, to be applied by `sync`."""
        return Incoming(_drain(self.launcher.results), _drain(self.watcher_queue))

    def _apply_answers(self, answers: list[LauncherResult]) -> list[Action]:
        todo: list[Action] = []
        for result in answers:
            # The launcher process has no Airflow to send metrics with: they are sent from here.
            if isinstance(result, DeleteResult):
                metrics.http_outcome("pod_delete", result.status, self.cluster)
                continue
            if isinstance(result, PatchResult):
                if result.status in (200, 404):
                    todo += self._carry_out(
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
            metrics.timing("pod_create.duration", result.duration_s, self.cluster)
            metrics.http_outcome("pod_create", result.status, self.cluster)
            todo += self._carry_out(
                self.ledger.launched(
                    result.namespace, result.name, result.ok, result.error, result.name_taken
                )
            )
        return todo

    def _apply_watched(self, watched: list[Any]) -> list[Action]:
        todo: list[Action] = []
        for message in watched:
            if isinstance(message, PodEvent):
                self._resumes_from(self._watch_key(message.namespace), message.resource_version)
                todo += self._carry_out(self.ledger.observed(message))
            elif isinstance(message, Resync):
                if message.namespace in self.listed:
                    metrics.incr("watcher.relists", cluster=self.cluster)
                self.listed.add(message.namespace)
                self._resumes_from(message.namespace, message.resource_version)
                todo += self._carry_out(self.ledger.resynced(message))
            elif isinstance(message, Bookmark):
                self._resumes_from(message.namespace, message.resource_version)
            elif isinstance(message, Released):
                self.log.warning(
                    "pod %s/%s was adopted by scheduler %s; its try is that scheduler's now",
                    message.namespace,
                    message.name,
                    message.scheduler_id,
                )
                todo += self._carry_out(self.ledger.released(message.namespace, message.name))
            elif isinstance(message, Read):
                self.watch_events_read += message.events
                metrics.incr("watcher.events", message.events, cluster=self.cluster)
            elif isinstance(message, logging.LogRecord):
                processes.log_in_parent(message)
        return todo

    def _watch_key(self, namespace: str) -> str | None:
        return namespace if namespace in self.watchers else None

    def _resource_version(self, namespace: str | None) -> str | None:
        return self.resource_versions.get_resource_version(namespace, owner=self._rv_owner)

    def _resumes_from(self, namespace: str | None, resource_version: str) -> None:
        self.resource_versions.set_resource_version(resource_version, namespace, owner=self._rv_owner)

    def claimed(self) -> set[identity.WorkloadRef]:
        return self.ledger.claimed()

    def in_flight(self) -> set[identity.WorkloadRef]:
        return self.ledger.in_flight()

    def terminate(self) -> None:
        for namespace in self.watchers:
            self.resource_versions.set_resource_version(None, namespace, owner=self._rv_owner)
        for watcher in self.watchers.values():
            if watcher.is_alive():
                watcher.terminate()
        for watcher in self.watchers.values():
            watcher.join(timeout=5)
            if watcher.is_alive():
                watcher.kill()
                watcher.join(timeout=5)
        self.launcher.shutdown(wait=False)
