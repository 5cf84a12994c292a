"""`KubernetesExecutor`: the face Airflow's scheduler talks to.

Flow is one way: a workload (Airflow 3) or command (Airflow 2) becomes a pod
request through `workloads`, a pod through `pod_building`, a create through the
launcher; the watcher's verdicts come back as results and go into the event
buffer. Bad input fails only its own task, with a message naming the field.
"""

from __future__ import annotations

import datetime
import functools
import gc
import itertools
import os
import queue
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from airflow.executors.base_executor import BaseExecutor
from airflow.utils.state import TaskInstanceState

from k8s_executor import (
    adoption,
    airflow_adapter,
    clusters,
    errands,
    identity,
    metrics,
    task_instances,
    task_log,
    workloads,
)
from k8s_executor.clusters import Cluster, sweep_retry_s
from k8s_executor.executor_config import ExecutorConfigError
from k8s_executor.identity import DEFAULT_CLUSTER
from k8s_executor.kube_client import core_api, describe_error
from k8s_executor.launching import REQUEST_ERRORS
from k8s_executor.ledger import (
    Action,
    HandedOver,
    Launch,
    Questions,
    Relaunch,
    Requeue,
    Withdrawn,
    live_schedulers,
)
from k8s_executor.own_cpu import OWN_CPU
from k8s_executor.pod_building import PodBuildError, PodRequest
from k8s_executor.scheduler import AirflowKubernetesScheduler, PodLaunch, TaskResult
from k8s_executor.settings import ExecutorSettings
from k8s_executor.shapes import HandedTry, TaskRow

# A try handed over with no pod whose reset fails (the database away) is tried again this often.
RESET_RETRY_S = 5.0
RESET_ATTEMPTS = 20
# Adoption's read of the rows handed over, refused by the database, is tried again after each wait,
# then every last one.
ROW_READ_RETRY_WAITS_S = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
# What an errand's outcome leads to: actions, each with the cluster whose ledger decided it.
Todo = list[tuple[Cluster, Action]]


# A try for the builder: its key, its build's number, how its pod request is made, its start
# timeout, and its launch attempt as read on the loop (None for callbacks and connection tests,
# whose pods are named by their ids).
_BuildJob = tuple[Any, int, Callable[..., PodRequest], float | None, int | None]


@dataclass(frozen=True)
class _Built:
    """The builder's outcome for one try: its pod, created or on its way to the launcher, or the
    error that fails the task. `job` tells an outcome the executor still wants from one of a try
    given up (and perhaps queued again) while it was being built."""

    key: Any
    job: int
    cluster: Cluster | None = None
    launch: PodLaunch | None = None
    error: Exception | None = None


@dataclass
class _Adoption:
    """One hand-over from Airflow, while the rows of its task instances are read and every
    cluster's list of pods is out (`_found`)."""

    handed: int
    watch: metrics.Stopwatch
    # The clusters looked in, and those whose answer has been taken.
    clusters: set[str]
    answered: set[str] = field(default_factory=set)
    # Filled from the rows read, by the first cluster to answer (`_take_over`): the tries to adopt
    # (those not held here already), the schedulers that had queued them, and their states.
    wanted: list[identity.WorkloadRef] | None = None
    dead: set[str] = field(default_factory=set)
    states: dict[identity.WorkloadRef, Any] = field(default_factory=dict)
    # Tries Airflow took back (revoke_task) before their rows were read.
    revoked: set[identity.WorkloadRef] = field(default_factory=set)
    # The tries no cluster answered with a pod so far; None before the first answer.
    unfound: set[identity.WorkloadRef] | None = None
    errors: list[str] = field(default_factory=list)
    adopted: int = 0
    listed_s: float = 0.0


@dataclass
class _Looked:
    """What one cluster's adoption errand brings back: the tries handed over, as their rows were
    read, and the pods found for them (or why none could be listed)."""

    tries: list[HandedTry]
    orphans: list[Any] | Exception
    read_s: float
    listed_s: float


# The process whose collector was set (a scheduler's process starts one executor per team).
_collector_set_in: int | None = None
# Python's own thresholds up to 3.13 (3.14's collector is incremental, with others), and the oldest
# generation's raised: a full collection waits for 100 collections of the middle one, not 10.
_PYTHONS_THRESHOLDS = (700, 10, 10)
_SCHEDULERS_THRESHOLDS = (700, 10, 100)


def _set_the_schedulers_collector() -> int | None:
    """Python's full garbage collections in a scheduler's process: fewer, and over less.

    What the process holds once its executor starts (Airflow's modules, classes and settings, a
    few hundred thousand objects) lives as long as the process; frozen, full collections skip it
    (each would go over all of it, a few tenths of a second holding the GIL, and so Airflow's
    loop). The start-up's garbage is collected first, so that none of it is kept for good. And
    Airflow's loop holds every task instance of a run for seconds at a time, which through a burst
    of thousands sets off a full collection every few seconds; a full collection waits for 100
    collections of the middle generation instead of 10, a tenth as many with the same peak memory
    (bench/RESULTS.md). Thresholds an operator set are left as they are, and a process the
    scheduler forks gets Python's own back.

    Only in a scheduler (an executor started by a scheduler job), once: `executor.start()` also
    runs in short-lived processes (a task run through the executor, a test of a DAG)."""
    global _collector_set_in
    if _collector_set_in == os.getpid():
        return None
    _collector_set_in = os.getpid()
    gc.collect()
    gc.freeze()
    if gc.get_threshold() == _PYTHONS_THRESHOLDS:
        gc.set_threshold(*_SCHEDULERS_THRESHOLDS)
        # Not in what the scheduler forks (a LocalExecutor's workers, and the tasks they run).
        os.register_at_fork(after_in_child=lambda: gc.set_threshold(*_PYTHONS_THRESHOLDS))
    # Counted once, here: counting walks every frozen object.
    return gc.get_freeze_count()


class KubernetesExecutor(BaseExecutor):
    supports_ad_hoc_ti_run: bool = True
    # Airflow 3: executor callbacks (deadline alerts' SyncCallbacks) run in pods of their own, as
    # tasks do; their outcome is reported with the callback's states.
    supports_callbacks: bool = True
    # Airflow 3.3: connection tests run in short-lived pods, where tasks run.
    supports_connection_test: bool = True
    # One instance per team in one scheduler: settings through the team's configuration, and no
    # state shared between instances (each has its own watchers, launcher, rate limit and
    # resourceVersions, and selects only its own pods).
    supports_multi_team: bool = True
    supports_pickling: bool = False
    is_local: bool = False
    serve_logs: bool = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.settings: ExecutorSettings | None = None
        # Each cluster's own scheduler shell, client and queues ([kubernetes_executor] clusters);
        # `kube_scheduler`, `kube_client` and the queues below are the default cluster's.
        self.clusters: dict[str, Cluster] = {}
        self.kube_scheduler: AirflowKubernetesScheduler | None = None
        # New tries' pods are built and sent to the launcher on a thread of their own: building is
        # the executor's only per-task CPU work, and a burst of thousands built within Airflow's
        # call would hold its loop for a second or more. `_building` holds the tries handed to the
        # builder and not yet in a ledger, with the number of their latest build; `_built` is how
        # the outcomes come back to the loop, which alone touches the ledgers.
        self._builder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="k8s-executor-pod-builder")
        self._building: dict[Any, int] = {}
        self._to_build: list[_BuildJob] = []
        self._builder_stopped = False
        self._jobs = itertools.count(1)
        self._built: queue.SimpleQueue[_Built] = queue.SimpleQueue()
        self._queued_timeout_s = 600.0
        # Pods built and waiting for the launcher, and the tries' results waiting for Airflow.
        self.task_queue: queue.Queue[PodLaunch] = queue.Queue()
        self.result_queue: queue.Queue[TaskResult] = queue.Queue()
        self.scheduler_id = ""
        # The owner label of this executor's pods; set by a LocalKubernetesExecutor to its own.
        self.owner: str | None = None
        self._worker_env: dict[str, str] = {}
        self._notes = task_log.NoteWriter()
        # What needs the database or a pod list runs off Airflow's loop.
        self._errands = errands.Errands("k8s-executor-errands")
        # Tries handed over whose pods were not found, to be reset for Airflow to run again.
        self._to_reset: dict[identity.TaskRef, int] = {}
        # Hand-overs whose rows are still being read (`_take_over`).
        self._unread: list[_Adoption] = []
        self._reset_after = 0.0
        # How long each of Airflow's calls into the executor held its scheduler loop.
        self.call_times = metrics.CallTimes(collections=metrics.FULL_COLLECTIONS)
        # The UI's log reader's clients, by cluster.
        self._log_clients: dict[str, tuple[Any, ExecutorSettings]] = {}
        # Per cluster: sweeps failed in a row, and when the next may start.
        self._sweep_failures: dict[str, int] = {}
        self._sweep_after: dict[str, float] = {}

    # --- lifecycle -------------------------------------------------------
    def start(self) -> None:
        # Validate everything before anything starts: no half-configured scheduler.
        self.settings = airflow_adapter.load_settings(airflow_adapter.team_of(self))
        self.scheduler_id = str(self.job_id) if self.job_id is not None else uuid.uuid4().hex[:12]
        self.owner = self.owner or airflow_adapter.executor_identity(self)
        self._worker_env = airflow_adapter.worker_env()
        self._queued_timeout_s = airflow_adapter.task_queued_timeout_s()
        # Every cluster's credential is fetched now, before any helper process starts: one that
        # cannot be had stops the scheduler here, with a message naming the file or command.
        every = self.settings.cluster_settings()
        kube_clients = {name: core_api(settings) for name, settings in every.items()}
        for name, settings in every.items():
            default = name == DEFAULT_CLUSTER
            scheduler = AirflowKubernetesScheduler(
                settings,
                self.task_queue if default else queue.Queue(),
                self.result_queue if default else queue.Queue(),
                kube_clients[name],
                self.scheduler_id,
                # As long as Airflow waits before it hands a dead scheduler's tasks to a successor.
                unclaimed_grace_s=airflow_adapter.orphan_check_interval_s(),
                executor_id=self.owner,
            )
            self.clusters[name] = Cluster(scheduler, airflow_adapter.pod_defaults(settings))
        default_cluster = self.clusters[DEFAULT_CLUSTER]
        self.kube_client, self.kube_scheduler = default_cluster.kube_client, default_cluster.scheduler
        for cluster in self.clusters.values():
            cluster.scheduler.start_watchers()
        if self.job_id is not None and (frozen := _set_the_schedulers_collector()) is not None:
            self.log.info(
                "froze the %d objects this process holds (Python's full garbage collections skip them); "
                "collector thresholds %s",
                frozen,
                metrics.collector_thresholds(),
            )
        metrics.FULL_COLLECTIONS.forget()
        self.log.info(
            "KubernetesExecutor started: scheduler id %s, pods labelled %s=%s, namespaces %s",
            self.scheduler_id,
            identity.OWNER_LABEL,
            self.owner,
            "; ".join(
                f"{c.settings.watched_namespaces}{c.where(self._several)}" for c in self.clusters.values()
            ),
        )

    @property
    def _several(self) -> bool:
        return len(self.clusters) > 1

    @metrics.timed_call("heartbeat")
    def heartbeat(self) -> None:
        super().heartbeat()

    @metrics.timed_call("sync")
    def sync(self) -> None:
        # Tries accepted outside `trigger_tasks` (an Airflow 2 caller of execute_async, say).
        self._start_builds()
        # What the launchers answered and the watchers saw is read before the builder's outcomes
        # are taken, and applied after: the builder queues a launch's outcome before it sends the
        # create, so every answer or event read about a pod finds the pod in its ledger.
        incoming = {name: cluster.scheduler.take_incoming() for name, cluster in self.clusters.items()}
        self._take_built()
        todo: Todo = []
        for name, cluster in self.clusters.items():
            cluster.scheduler.check_watchers()
            todo += [(cluster, action) for action in cluster.scheduler.sync(incoming[name])]
        todo += self._errands.collect()
        if not self.clusters:
            return
        self._ask_airflow()
        self._reset_unfound()
        for cluster, action in todo:
            self._do(cluster, action)
        for cluster in self.clusters.values():
            # Relaunches just built go out now, in the sync that decided them: a revocation
            # between two heartbeats must find them in the ledger, not waiting on the task queue.
            cluster.scheduler.launch_queued()
            while True:
                try:
                    result = cluster.scheduler.result_queue.get_nowait()
                except queue.Empty:
                    break
                self._apply(cluster, result)

    def _do(self, cluster: Cluster, action: Action) -> None:
        """What a cluster's ledger decided about a try that is the executor's to carry out."""
        if isinstance(action, Launch):
            make_request = action.payload
            assert callable(make_request)
            key = airflow_adapter.to_airflow_key(action.ref)
            if not self._launch(key, make_request, action.start_timeout_s):
                # Its failure is reported: the ledger holds nothing more of it.
                cluster.scheduler.revoke(action.ref)
        elif isinstance(action, Relaunch):
            allowed = action.allowed if action.allowed >= 0 else "unlimited"
            note = (
                f"Kubernetes pod {action.pod}{cluster.where(self._several)} failed before its task "
                f"started: {action.reason}. "
                f"Launching a new pod in {action.delay_s:.0f} s (failed launch {action.failures} of "
                f"at most {allowed}); the task's own retries are untouched."
            )
            self._say_launched_again(action.ref, note, "pods.relaunched", cluster)
        elif isinstance(action, Requeue):
            self._requeue(cluster, action)
        elif isinstance(action, HandedOver):
            # Adopted by another scheduler (this one stalled past its health check, say).
            self.running.discard(airflow_adapter.to_airflow_key(action.ref))
        elif isinstance(action, Withdrawn):
            row = action.now
            self.log.warning(
                "task %s.%s (run %s, try %d) is no longer this scheduler's (now %s); its pod is not launched",
                action.ref.dag_id,
                action.ref.task_id,
                action.ref.run_id,
                action.ref.try_number,
                "gone" if row is None else f"try {row.try_number}, {row.state}, queued by {row.queued_by}",
            )
            key = airflow_adapter.to_airflow_key(action.ref)
            self.queued_tasks.pop(key, None)
            self.running.discard(key)

    def _requeue(self, cluster: Cluster, action: Requeue) -> None:
        """A try whose pod the cluster disrupted: its task instance back to queued (if nothing of
        the task recorded its end meanwhile), and a new pod with a fresh workload token. The
        database's compare-and-set is an errand; the ledger hears its outcome (`requeued`)."""
        key = airflow_adapter.to_airflow_key(action.ref)
        # Not a try Airflow took back meanwhile (its heartbeat timeout fails it through the
        # executor, whose event for it is then on its way).
        if key in self.running and key not in self.event_buffer:
            errand = functools.partial(task_instances.requeue, action.ref, action.ti_state, self.scheduler_id)
        else:
            errand = functools.partial(bool, False)
        self._errands.run(
            f"requeue {action.ref}", errand, functools.partial(self._requeue_done, cluster, action)
        )

    def _requeue_done(self, cluster: Cluster, action: Requeue, outcome: Future[bool]) -> Todo:
        try:
            requeued = outcome.result()
        except Exception:
            self.log.exception("could not put task %s back to queued after its pod's disruption", action.ref)
            requeued = False
        payload = None
        if requeued and airflow_adapter.to_airflow_key(action.ref) in self.running:
            try:
                payload = self._fresh_payload(action.payload)
            except Exception:
                # Queued again with no pod to run it: Airflow's queued timeout takes it back.
                self.log.exception("could not build the new pod of disrupted task %s", action.ref)
                return [(cluster, a) for a in cluster.scheduler.requeued(action.ref, None)]
            note = (
                f"Kubernetes pod {action.pod}{cluster.where(self._several)} was disrupted by the "
                f"cluster: {action.reason}. The task "
                f"is launched again in a new pod (disruption {action.disruption} of at most "
                f"{action.allowed}, [kubernetes_executor] disruption_retries); its retries are untouched."
            )
            self._say_launched_again(action.ref, note, f"pods.disrupted.{action.cause}", cluster)
        return [(cluster, a) for a in cluster.scheduler.requeued(action.ref, payload)]

    def _say_launched_again(self, ref: identity.TaskRef, note: str, metric: str, cluster: Cluster) -> None:
        """A try goes on in a new pod: said in the scheduler's log and the try's, and counted."""
        self.log.warning("task %s: %s", ref, note)
        self._note_in_task_log(ref, note, ends_try=False)
        metrics.incr(metric, cluster=cluster.name)

    def _fresh_payload(self, payload: object) -> object:
        """What the try's next pod is built from: on Airflow 3 its workload with a new token (the
        first may have expired while the task ran), on Airflow 2 its command as it was."""
        if isinstance(payload, functools.partial) and payload.func == self._request_from_workload:
            workload = airflow_adapter.with_fresh_token(payload.args[0], self)
            return functools.partial(self._request_from_workload, workload)
        return payload

    def _ask_airflow(self) -> None:
        """Ask what only Airflow's database knows, when the ledger asks (an errand, one at a time):
        which schedulers live, whether tries whose pods failed had started, and which creates
        still on their way are for tries no longer this scheduler's (reset, retried, or queued by
        another scheduler since: upstream #69760)."""
        if self._errands.busy("airflow"):
            return
        asked = {name: cluster.scheduler.questions() for name, cluster in self.clusters.items()}
        # Without a scheduler job (a test harness, a backfill) there is no liveness to go by.
        as_scheduler = self.job_id is not None
        liveness = as_scheduler and any(q.liveness for q in asked.values())
        refs: set[identity.TaskRef] = set()
        for questions in asked.values():
            refs |= questions.started | (questions.obsolete if as_scheduler else frozenset())
        if liveness or refs:
            self._errands.run(
                "airflow",
                functools.partial(_read_airflow, liveness, list(refs)),
                functools.partial(self._airflow_said, asked),
            )

    def _airflow_said(self, asked: Mapping[str, Questions], outcome: Future[tuple[Any, Any]]) -> Todo:
        jobs, rows = outcome.result()
        if isinstance(jobs, Exception):
            self.log.error("could not read which schedulers are alive (%s); asking again later", jobs)
        elif jobs is not None:
            threshold = airflow_adapter.scheduler_health_check_threshold_s()
            alive = live_schedulers(jobs, datetime.datetime.now(datetime.timezone.utc), threshold)
            for cluster in self.clusters.values():
                try:
                    cluster.scheduler.set_live_schedulers(alive)
                    self._sweep(cluster)
                except Exception:
                    self.log.exception("taking in the live schedulers%s failed", cluster.where(self._several))
        if isinstance(rows, Exception):
            self.log.error(
                "could not read the task instances the executor asked about (%s); their failed pods' "
                "ends are reported as they are, and obsolete creates checked again later",
                rows,
            )
        todo: Todo = []
        for name, questions in asked.items():
            cluster = self.clusters[name]
            # One cluster's trouble must not cost another cluster's ledger the actions it decided.
            try:
                if isinstance(rows, Exception):
                    # Whether a failed pod's task had started cannot be known: its failure stands.
                    actions = cluster.scheduler.unanswerable(questions.started)
                else:
                    asked_here = questions.started | questions.obsolete
                    mine = {ref: row for ref, row in (rows or {}).items() if ref in asked_here}
                    actions = cluster.scheduler.answer(mine, questions.attempts) if mine else []
            except Exception:
                self.log.exception("handling the database's answers%s failed", cluster.where(self._several))
                continue
            todo += [(cluster, action) for action in actions]
        return todo

    def _sweep(self, cluster: Cluster) -> None:
        """List the pods dead schedulers left in `cluster` (an errand), when this scheduler is the
        disposer."""
        selector = cluster.scheduler.sweep_selector()
        if selector is not None and time.monotonic() >= self._sweep_after.get(cluster.name, 0.0):
            self._errands.run(
                f"sweep {cluster.name}",
                functools.partial(cluster.scheduler.list_for_sweep, selector),
                functools.partial(self._swept, cluster),
            )

    def _swept(self, cluster: Cluster, outcome: Future[list[Any]]) -> Todo:
        failures = self._sweep_failures.get(cluster.name, 0)
        try:
            sightings = outcome.result()
        except REQUEST_ERRORS as exc:
            self._sweep_failures[cluster.name] = failures + 1
            wait_s = sweep_retry_s(failures + 1)
            self._sweep_after[cluster.name] = time.monotonic() + wait_s
            # Said at each failed try: the growing wait, not a throttle on the log, keeps a lost
            # cluster from being reported at every liveness check.
            self.log.warning(
                "could not sweep%s for the pods dead schedulers left (%s); trying again in %.0f s",
                cluster.where(self._several),
                describe_error(exc),
                wait_s,
            )
            return []
        if failures:
            self.log.info("sweeping%s works again, after %d failures", cluster.where(self._several), failures)
        self._sweep_failures.pop(cluster.name, None)
        self._sweep_after.pop(cluster.name, None)
        return [(cluster, action) for action in cluster.scheduler.swept(sightings)]

    def _give_up(self, ref: identity.TaskRef) -> None:
        """The try is not this scheduler's any more: nothing is reported for it, its pod goes, and
        if it comes back to this scheduler its next pod has a new name."""
        key = airflow_adapter.to_airflow_key(ref)
        self.queued_tasks.pop(key, None)
        self.running.discard(key)
        self._building.pop(key, None)  # its pod, once built, is dropped (`_take_built`)
        # Every cluster's ledger counts the try's launches: its next pod's name is new in each.
        for cluster in self.clusters.values():
            cluster.scheduler.revoke(ref)

    def _apply(self, cluster: Cluster, result: TaskResult) -> None:
        key = airflow_adapter.to_airflow_key(result.ref)
        success, failure = airflow_adapter.end_states(result.ref)
        if result.state.verdict == "success":
            self.change_state(key, success, result.pod)
        else:
            reason = f"{result.pod}{cluster.where(self._several)}: {result.state.reason}"
            self.log.warning("%s failed in Kubernetes: %s", key, reason)
            if result.state.disruption or result.state.cause == "Evicted":
                metrics.incr(f"pods.disrupted.{result.state.disruption or 'Evicted'}", cluster=cluster.name)
            self._note_in_task_log(result.ref, f"Kubernetes pod {reason}", ends_try=True)
            self.change_state(key, failure, reason)

    @metrics.timed_call("end")
    def end(self) -> None:
        """Report what has ended, let creates in flight land, and stop.

        Running pods are not waited for: they outlive the scheduler and its successor adopts
        them. Waiting would hold a stopping scheduler for as long as its longest task.
        """
        if not self.clusters:
            return
        # The tries accepted so far get their pods: building takes no network wait.
        self._start_builds()
        self._builder.shutdown(wait=True)
        self._builder_stopped = True
        self.sync()
        for cluster in self.clusters.values():
            try:
                cluster.scheduler.launcher.shutdown(wait=True)
            except Exception:
                self.log.exception("stopping the launcher%s failed", cluster.where(self._several))
        self.sync()
        self._notes.shutdown(wait=True)
        self._errands.shutdown()
        self.call_times.log_summary()
        self.log.info(
            "stopping with %d pods in flight, left for adoption; the watchers read %d watch events; "
            "the executor's own CPU in this process: %s",
            sum(len(c.scheduler.in_flight()) for c in self.clusters.values()),
            sum(c.scheduler.watch_events_read for c in self.clusters.values()),
            OWN_CPU.summary(),
        )
        self.terminate()

    def debug_dump(self) -> None:
        """What Airflow's scheduler logs on SIGUSR2, and the executor's own CPU so far: two dumps
        give, between them, how much of a busy scheduler's CPU is the executor's and how much
        Airflow's loop (bench/ brackets a burst with them)."""
        super().debug_dump()
        self.log.info("the executor's own CPU in this process so far: %s", OWN_CPU.summary())

    def terminate(self) -> None:
        self._builder_stopped = True
        self._builder.shutdown(wait=False, cancel_futures=True)
        for cluster in self.clusters.values():
            cluster.scheduler.terminate()

    # --- launching -------------------------------------------------------
    @metrics.timed_call("trigger_tasks")
    def trigger_tasks(self, open_slots: int) -> None:
        batch = self.settings.worker_pods_creation_batch_size if self.settings else open_slots
        super().trigger_tasks(min(open_slots, batch))
        self._start_builds()

    def _process_workloads(self, workloads: Sequence[Any]) -> None:
        for workload in workloads:
            if airflow_adapter.is_callback(workload):
                self.queued_callbacks.pop(workload.key, None)
                self.running.add(workload.key)
                self._build_later(workload.key, functools.partial(self._request_from_callback, workload))
                continue
            if airflow_adapter.is_connection_test(workload):
                self.queued_connection_tests.pop(workload.key, None)
                self.running.add(workload.key)
                make = functools.partial(self._request_from_connection_test, workload)
                # Airflow's reaper fails a test that has not ended by its timeout and a grace of
                # at least 30 s: a pod not started by then is of no use.
                self._build_later(
                    workload.key, make, start_timeout_s=workload.timeout + max(30, workload.timeout // 2)
                )
                continue
            key = workload.ti.key
            self.queued_tasks.pop(key, None)
            self.running.add(key)
            self._build_later(key, functools.partial(self._request_from_workload, workload))

    def _request_from_workload(self, workload: Any, attempt: int | None = None) -> PodRequest:
        if attempt is None:
            attempt = self._attempt(workload.ti.key)
        return workloads.request_from_workload(workload, self._owner(), attempt)

    def _request_from_callback(self, workload: Any) -> PodRequest:
        return workloads.request_from_callback(workload, self._owner())

    def _request_from_connection_test(self, workload: Any) -> PodRequest:
        return workloads.request_from_connection_test(workload, self._owner())

    @metrics.timed_call("execute_async")
    def execute_async(
        self,
        key: Any,
        command: Any,
        queue: str | None = None,
        executor_config: Any | None = None,
    ) -> None:
        """Airflow 2's entry point: run `command` for `key` in a pod."""
        self.running.add(key)
        self._build_later(
            key, functools.partial(self._request_from_command, key, command, executor_config, queue)
        )

    def _request_from_command(
        self, key: Any, command: Any, executor_config: Any, task_queue: str | None, attempt: int | None = None
    ) -> PodRequest:
        if attempt is None:
            attempt = self._attempt(key)
        return workloads.request_from_command(
            key, command, executor_config, self._owner(), attempt, queue=task_queue
        )

    def _owner(self) -> workloads.Owner:
        return workloads.Owner(self.scheduler_id, self.owner or identity.DEFAULT_EXECUTOR, self._worker_env)

    def _attempt(self, key: Any) -> int:
        ref = airflow_adapter.ref_of(key)
        return max(cluster.scheduler.attempt(ref) for cluster in self.clusters.values())

    def _cluster_for(self, request: PodRequest) -> Cluster:
        assert self.settings is not None
        name = clusters.route(
            request.executor_config.cluster, request.queue, self.settings.queue_clusters, list(self.clusters)
        )
        return self.clusters[name]

    def _build_later(
        self, key: Any, make_request: Callable[..., PodRequest], start_timeout_s: float | None = None
    ) -> None:
        """A new try: its pod is built and sent on the builder's thread (`_build_and_send`), and
        the try is held here (`_building`) until the loop takes the outcome (`_take_built`). Its
        launch attempt, which names its pod, is read now, on the loop: a try taken back and queued
        again before its first build gets a pod of another name."""
        job = next(self._jobs)
        self._building[key] = job
        attempt = self._attempt(key) if airflow_adapter.is_task_key(key) else None
        self._to_build.append((key, job, make_request, start_timeout_s, attempt))

    def _start_builds(self) -> None:
        """Hand the tries accepted in this call to the builder, as one job: built while Airflow's
        call ran, they would take the GIL from it every few milliseconds."""
        if self._to_build and not self._builder_stopped:
            self._builder.submit(self._build_and_send_all, self._to_build).add_done_callback(
                self._log_builder_failure
            )
            self._to_build = []

    def _build_and_send_all(self, jobs: list[_BuildJob]) -> None:
        with OWN_CPU.counted():
            self._build_and_send_each(jobs)

    def _build_and_send_each(self, jobs: list[_BuildJob]) -> None:
        for key, job, make_request, start_timeout_s, attempt in jobs:
            if self._builder_stopped:
                return  # terminated: the successor adopts or resets what was not launched
            try:
                self._build_and_send(key, job, make_request, start_timeout_s, attempt)
            except Exception as exc:
                # Its outcome must reach the loop all the same, or the try would wait unreported.
                self.log.exception("building the pod of %s failed", key)
                self._built.put(_Built(key, job, error=PodBuildError(f"its pod could not be built: {exc}")))

    def _log_builder_failure(self, future: Future[None]) -> None:
        if not future.cancelled() and (exc := future.exception()) is not None:
            self.log.error("the pod builder stopped on an error", exc_info=exc)

    def _build_and_send(
        self,
        key: Any,
        job: int,
        make_request: Callable[..., PodRequest],
        start_timeout_s: float | None,
        attempt: int | None,
    ) -> None:
        """On the builder's thread: the outcome is queued for the loop before the create goes to
        the launcher (see `sync` for why that order matters)."""
        try:
            cluster, launch = self._prepare(key, make_request, start_timeout_s, attempt)
        except (ExecutorConfigError, PodBuildError) as exc:
            self._built.put(_Built(key, job, error=exc))
            return
        self._built.put(_Built(key, job, cluster, launch))
        try:
            cluster.scheduler.send_create(launch)
        except Exception:
            # The loop puts the try in the ledger all the same (unless it was given up meanwhile):
            # with no create, its start timeout fails it.
            self.log.exception("handing the pod of %s to the launcher failed", key)

    def _take_built(self) -> None:
        """The builder's outcomes, on the loop: into the ledgers, or the task failed. The pod of a
        try given up while it was being built is dropped, or deleted once created, and nothing is
        reported for it; the try itself, if Airflow handed it back meanwhile, is left alone."""
        while True:
            try:
                built = self._built.get_nowait()
            except queue.Empty:
                return
            wanted = self._building.get(built.key) == built.job
            if wanted:
                del self._building[built.key]
            if built.error is not None:
                if wanted:
                    self._refuse(built.key, built.error)
                continue
            assert built.cluster is not None and built.launch is not None
            if wanted:
                built.cluster.scheduler.launching(built.launch)
            else:
                built.cluster.scheduler.abandon(built.launch)

    def _launch(
        self, key: Any, make_request: Callable[..., PodRequest], start_timeout_s: float | None = None
    ) -> bool:
        """A new pod for a try the ledger holds (a relaunch, a requeue), built on the loop and
        handed to the launcher; bad input fails this task only (False)."""
        try:
            cluster, launch = self._prepare(key, make_request, start_timeout_s)
        except (ExecutorConfigError, PodBuildError) as exc:
            self._refuse(key, exc)
            return False
        cluster.task_queue.put(launch)
        return True

    def _prepare(
        self,
        key: Any,
        make_request: Callable[..., PodRequest],
        start_timeout_s: float | None,
        attempt: int | None = None,
    ) -> tuple[Cluster, PodLaunch]:
        """The try's pod and the cluster it goes to; with `attempt`, its pod is named with that
        launch attempt rather than the ledger's count now. Bad input raises ExecutorConfigError or
        PodBuildError, naming the field."""
        try:
            request = make_request() if attempt is None else make_request(attempt=attempt)
            cluster = self._cluster_for(request)
            pod = workloads.pod_for(request, cluster.defaults)
            clusters.check_watched(
                cluster.settings, pod["metadata"]["namespace"], cluster.name, self._several
            )
        except (ExecutorConfigError, PodBuildError):
            raise
        except Exception as exc:
            # An input of a shape nobody foresaw (say `pod_override={"spec": 1}`) is still the
            # task's input: it fails the task, never the scheduler loop.
            self.log.exception("building the pod of %s failed", key)
            raise PodBuildError(f"its pod could not be built: {type(exc).__name__}: {exc}") from exc
        timeout_s = start_timeout_s or self._queued_timeout_s
        # What later pods of the try are built from: the request itself, which reads the ledger's
        # count of attempts then.
        launch = PodLaunch(
            pod, request.ref, timeout_s, make_request, request.executor_config.disruption_retries
        )
        return cluster, launch

    def _refuse(self, key: Any, exc: Exception) -> None:
        if not airflow_adapter.is_task_key(key):
            message = f"{type(key).__name__} {key.id}: {exc}"
            self.log.error("not launching %s", message)
            self.change_state(key, airflow_adapter.failure_state_of(key), message)
            return
        message = f"task {key.dag_id}.{key.task_id} (run {key.run_id}, try {key.try_number}): {exc}"
        self.log.error("not launching %s", message)
        self._note_in_task_log(
            airflow_adapter.ref_of(key), f"no pod was launched for {message}", ends_try=True
        )
        self.change_state(key, TaskInstanceState.FAILED, message)

    def _note_in_task_log(self, ref: identity.WorkloadRef, text: str, ends_try: bool) -> None:
        self._notes.submit(ref, text, ends_try)

    @staticmethod
    def get_cli_commands() -> list[Any]:
        # Imported here: the scheduler, which imports this module, needs none of the CLI.
        from k8s_executor.commands import cli_commands

        return cli_commands()

    # --- adoption, revocation, logs ---------------------------------------
    @metrics.timed_call("try_adopt_task_instances")
    def try_adopt_task_instances(self, tis: Sequence[Any]) -> Sequence[Any]:
        """Take over the task instances of dead schedulers without a request in Airflow's loop, and
        with no query but, for a large hand-over, the one that spares Airflow's own pass a query
        per row (`spare_run_reads`): their rows are read and their pods looked for in every cluster on
        errands, and each cluster adopts what it found (`_found`); a try whose pod no cluster has
        is then reset, as Airflow would have reset it. Nothing is handed back here."""
        assert self.settings is not None
        if not tis:
            return []
        watch = metrics.Stopwatch()
        handed = task_instances.handed_over(tis)
        # Before the heartbeats are held: its read would flush them, in this call.
        airflow_adapter.spare_run_reads(tis)
        for ti in tis:
            airflow_adapter.hold_heartbeat(ti)
        taking = _Adoption(len(handed), watch, set(self.clusters))
        self._unread.append(taking)
        self._tell_unread()
        # One read of the rows for every cluster. A try's pod may be in any cluster (the routing
        # may have changed since its launch): each cluster looks for all of them, on an errand of
        # its own that waits for the read.
        read = functools.partial(
            _read_rows,
            handed,
            self.scheduler_id,
            airflow_adapter.scheduler_health_check_threshold_s(),
            lambda: self._errands.stopped,
            self.log,
        )
        rows = errands.in_background("read handed over", read)
        batch = uuid.uuid4().hex
        for cluster in self.clusters.values():
            self._errands.run(
                f"adopt {cluster.name} {batch}",
                functools.partial(_look_for_pods, cluster.scheduler, rows, watch, self.scheduler_id),
                functools.partial(self._found, cluster, taking),
            )
        self.log.info(
            "taking over %d task instances from schedulers that died: reading their rows and looking "
            "for their pods",
            len(handed),
        )
        return []

    def _take_over(self, taking: _Adoption, looked: _Looked) -> None:
        """The rows read: the tries to adopt are held in every cluster's ledger until their pods
        are found. A scheduler whose loop stalled past its health check is declared dead by itself
        and handed its own tasks: those still queued here, in flight (created or not yet, or
        between two pods) or reported but not yet taken in are ours already; taking them as
        orphans would launch each a second time."""
        self._unread.remove(taking)
        queued_here = {
            airflow_adapter.ref_of(key)
            for key in itertools.chain(self.queued_tasks, self._building)
            if airflow_adapter.is_task_key(key)
        }
        claimed = set().union(*(c.scheduler.claimed() for c in self.clusters.values()))
        held = claimed | queued_here | taking.revoked
        taking.wanted = [t.ref for t in looked.tries if t.ref not in held]
        taking.dead = adoption.dead_schedulers(looked.tries, self.scheduler_id)
        taking.states = {t.ref: t.state for t in looked.tries}
        for ref in taking.wanted:
            self.running.add(airflow_adapter.to_airflow_key(ref))
        for cluster in self.clusters.values():
            cluster.scheduler.await_adoption(taking.wanted)
        self._tell_unread()
        self.log.info(
            "%d task instances handed over by schedulers %s: %d held here already, adopting the pods "
            "of %d (their rows read in %.2f s)",
            taking.handed,
            sorted(taking.dead),
            taking.handed - len(taking.wanted),
            len(taking.wanted),
            looked.read_s,
        )

    def _tell_unread(self) -> None:
        """Every ledger holds back its disposal of unclaimed pods while the rows of a hand-over are
        unread: their tries may be any dead scheduler's."""
        for cluster in self.clusters.values():
            cluster.scheduler.reading_handed_over(bool(self._unread))

    def _found(self, cluster: Cluster, taking: _Adoption, outcome: Future[_Looked]) -> Todo:
        """What one cluster's errand found: the pods of the tries its ledger still awaits are
        adopted there. Once every cluster has answered, the tries no cluster had a pod for (or
        whose pods could not be listed) go back to Airflow. Whatever fails on the way, the cluster
        counts as answered, with no pod found, so that no try stays held."""
        try:
            self._adopt_in(cluster, taking, outcome)
        finally:
            if taking.wanted is not None and cluster.name not in taking.answered:
                error = "adopting the pods found failed"
                taking.errors.append(f"cluster {cluster.name}: {error}" if self._several else error)
                unfound = cluster.scheduler.not_found(taking.wanted)
                taking.unfound = set(unfound) if taking.unfound is None else taking.unfound & set(unfound)
            taking.answered.add(cluster.name)
            if taking.wanted is not None and taking.answered >= taking.clusters:
                self._conclude_adoption(taking)
        return []

    def _adopt_in(self, cluster: Cluster, taking: _Adoption, outcome: Future[_Looked]) -> None:
        try:
            looked = outcome.result()
        except Exception as exc:
            # The read gave up: the executor is stopping. Its successor is handed these tries.
            if taking in self._unread:
                self._unread.remove(taking)
                self._tell_unread()
                self.log.warning(
                    "stopped before the rows of %d task instances handed over were read (%s)",
                    taking.handed,
                    _described(exc),
                )
            return
        if taking.wanted is None:
            self._take_over(taking, looked)
        assert taking.wanted is not None
        orphans: Sequence[Any] = []
        if isinstance(looked.orphans, Exception):
            error = _described(looked.orphans)
            taking.errors.append(f"cluster {cluster.name}: {error}" if self._several else error)
            self.log.error(
                "could not list pods%s to adopt %d task instances (%s); those with no pod found are "
                "reset for Airflow to run again",
                cluster.where(self._several),
                len(taking.wanted),
                error,
            )
        else:
            orphans = looked.orphans
        try:
            adopted, unfound = cluster.scheduler.adopt_found(orphans, taking.wanted, self._queued_timeout_s)
        except Exception as exc:
            # Its tries are not held here any more, whatever was adopted before the error.
            self.log.exception("adopting the pods found%s failed", cluster.where(self._several))
            taking.errors.append(f"{type(exc).__name__}: {exc}")
            adopted, unfound = [], cluster.scheduler.not_found(taking.wanted)
        metrics.incr("adoption.pods", len(adopted), cluster=cluster.name)
        taking.adopted += sum(1 for orphan in adopted if orphan.ours)
        taking.listed_s = max(taking.listed_s, looked.listed_s)
        # Not found here, and not adopted in a cluster that answered before.
        taking.unfound = set(unfound) if taking.unfound is None else taking.unfound & set(unfound)
        taking.answered.add(cluster.name)

    def _conclude_adoption(self, taking: _Adoption) -> None:
        """Every cluster has answered: the tries no cluster had a pod for are reset."""
        assert taking.wanted is not None
        unfound = taking.unfound or set()
        for ref in unfound:
            reason = (
                adoption.unlisted_reason(taking.dead, self.scheduler_id, "; ".join(taking.errors))
                if taking.errors
                else adoption.unadopted_reason(taking.states[ref], taking.dead, self.scheduler_id)
            )
            self._note_in_task_log(ref, reason, ends_try=True)
            self.running.discard(airflow_adapter.to_airflow_key(ref))
            if isinstance(ref, identity.TaskRef):
                self._to_reset.setdefault(ref, 0)
        metrics.timing("adoption.duration", took_s := taking.watch.seconds)
        self.log.info(
            "adopted %d of %d task instances from schedulers %s in %.2f s (their pods listed at %.2f s); "
            "%d with no pod are reset",
            taking.adopted,
            len(taking.wanted),
            sorted(taking.dead),
            took_s,
            taking.listed_s,
            len(unfound),
        )

    def _reset_unfound(self) -> None:
        """Reset the tries handed over with no pod (an errand); one that fails is tried again, a
        few seconds later each time, up to RESET_ATTEMPTS times."""
        if self._to_reset and not self._errands.busy("reset") and time.monotonic() >= self._reset_after:
            refs = sorted(self._to_reset)
            self._errands.run(
                "reset",
                functools.partial(task_instances.reset, refs, self.scheduler_id),
                functools.partial(self._reset_done, refs),
            )

    def _reset_done(
        self,
        sent: list[identity.TaskRef],
        outcome: Future[tuple[list[identity.TaskRef], dict[identity.TaskRef, str]]],
    ) -> list[Action]:
        try:
            reset, failed = outcome.result()
        except Exception as exc:
            reset, failed = [], {ref: f"{type(exc).__name__}: {exc}" for ref in sent}
        if reset:
            self.log.info(
                "reset %d task instances handed over with no pod, for Airflow to run again", len(reset)
            )
        # Only the tries this errand was sent: those handed over meanwhile wait for the next one.
        for ref in sent:
            if ref not in self._to_reset:
                continue  # taken back by Airflow meanwhile (revoke_task)
            if ref not in failed:
                del self._to_reset[ref]  # reset, or no longer this scheduler's to reset
                continue
            self._to_reset[ref] += 1
            if self._to_reset[ref] >= RESET_ATTEMPTS:
                del self._to_reset[ref]
                self.log.error(
                    "giving up resetting task %s, handed over with no pod (%s): Airflow's own timeouts "
                    "take it back",
                    ref,
                    failed[ref],
                )
        if failed:
            self.log.warning(
                "could not reset %d task instances handed over with no pod (first: %s); trying again",
                len(failed),
                next(iter(failed.values())),
            )
            self._reset_after = time.monotonic() + RESET_RETRY_S
        return []

    def adopt_launched_task(self, ti: Any, last_heartbeat: Any = None, session: Any = None) -> bool:
        return not self.try_adopt_task_instances([ti])

    @metrics.timed_call("revoke_task")
    def revoke_task(self, *, ti: Any) -> None:
        ref = airflow_adapter.ref_of(ti.key)
        self._to_reset.pop(ref, None)
        for taking in self._unread:
            taking.revoked.add(ref)
        self._give_up(ref)

    def get_task_log(self, ti: Any, try_number: int) -> tuple[list[str], list[str]]:
        if self.settings is None:
            # The UI's log reader holds an executor it never started: it only needs clients.
            self.settings = airflow_adapter.load_settings(airflow_adapter.team_of(self))
        name = self._cluster_of(ti)
        if name not in self._log_clients:
            settings = self.settings.cluster_settings()[name]
            client = self.clusters[name].kube_client if name in self.clusters else core_api(settings)
            self._log_clients[name] = (client, settings)
        kube_client, settings = self._log_clients[name]
        ref = airflow_adapter.ref_of(ti.key)._replace(try_number=try_number)
        return task_log.read_pod_log(kube_client, settings, ref)

    def _cluster_of(self, ti: Any) -> str:
        """The cluster `ti`'s pods run in, as its executor_config and queue route it now."""
        assert self.settings is not None
        known = [DEFAULT_CLUSTER, *self.settings.clusters]
        try:
            return clusters.route_task(ti, self.settings.queue_clusters, known)
        except ExecutorConfigError:
            return DEFAULT_CLUSTER  # a task that never ran: its own error is in its log already


def _read_airflow(
    liveness: bool, refs: list[identity.TaskRef]
) -> tuple[list[Any] | Exception | None, dict[identity.TaskRef, TaskRow | None] | Exception | None]:
    """The errand behind `_ask_airflow`: the scheduler jobs (if `liveness`) and the rows of `refs`
    (None for a try the database no longer holds); what could not be read, as its exception."""
    jobs: list[Any] | Exception | None = None
    rows: dict[identity.TaskRef, TaskRow | None] | Exception | None = None
    if liveness:
        try:
            jobs = list(task_instances.scheduler_jobs())
        except Exception as exc:
            jobs = exc
    if refs:
        try:
            found = task_instances.task_instance_rows(refs)
        except Exception as exc:
            rows = exc
        else:
            rows = {ref: found.get(ref) for ref in refs}
    return jobs, rows


def _described(exc: Exception) -> str:
    return describe_error(exc) if isinstance(exc, REQUEST_ERRORS) else f"{type(exc).__name__}: {exc}"


def _read_rows(
    handed: task_instances.HandedOver,
    own_id: str,
    threshold_s: float,
    stopped: Callable[[], bool],
    log: Any,
) -> list[HandedTry]:
    """The errand behind adoption's read of the rows handed over: those still this scheduler's
    (adoption.still_handed). Airflow has written the hand-over, and hands these tries to no one
    else: a database that refuses is asked again, after each of ROW_READ_RETRY_WAITS_S and then
    every last one of them, until it answers or the executor stops."""
    waits = itertools.chain(ROW_READ_RETRY_WAITS_S, itertools.repeat(ROW_READ_RETRY_WAITS_S[-1]))
    while True:
        try:
            tries = handed.read()
            if not own_id.isdigit():
                return tries  # no scheduler job (a test harness): no other scheduler either
            jobs = task_instances.scheduler_jobs()
            alive = live_schedulers(jobs, datetime.datetime.now(datetime.timezone.utc), threshold_s)
            return adoption.still_handed(tries, alive, own_id)
        except Exception as exc:
            if stopped():
                raise
            wait_s = next(waits)
            log.warning(
                "could not read the rows of %d task instances handed over (%s); trying again in %.0f s",
                len(handed),
                _described(exc),
                wait_s,
            )
            time.sleep(wait_s)


def _look_for_pods(
    scheduler: AirflowKubernetesScheduler,
    rows: Future[list[HandedTry]],
    watch: metrics.Stopwatch,
    own_id: str,
) -> _Looked:
    """The errand behind one cluster's part of an adoption: the rows handed over (read once for
    every cluster), then the pods of their tries, and of the schedulers that had queued them."""
    tries = rows.result()
    read_s = watch.seconds
    orphans: list[Any] | Exception
    try:
        orphans = scheduler.find_orphans([t.ref for t in tries], adoption.dead_schedulers(tries, own_id))
    except Exception as exc:
        orphans = exc
    return _Looked(tries, orphans, read_s, watch.seconds)
