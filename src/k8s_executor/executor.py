"""`KubernetesExecutor`: the face Airflow's scheduler talks to.

Flow is one way: a workload (Airflow 3) or command (Airflow 2) becomes a pod
request through the adapter, a pod through `pod_building`, a create through the
launcher; the watcher's verdicts come back as results and go into the event
buffer. Bad input fails only its own task, with a message naming the field.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import queue
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from airflow.executors.base_executor import BaseExecutor
from airflow.utils.state import TaskInstanceState
from kubernetes import client

from k8s_executor import adoption, airflow_adapter, identity, metrics
from k8s_executor.executor_config import ExecutorConfigError
from k8s_executor.kube_client import core_api, describe_error, error_message, list_pods, pod_events, read_body
from k8s_executor.launching import REQUEST_ERRORS
from k8s_executor.ledger import HandedOver, NameTaken, create_obsolete, live_schedulers, relaunch
from k8s_executor.pod_building import PodBuildError, PodRequest
from k8s_executor.scheduler import AirflowKubernetesScheduler, TaskResult
from k8s_executor.settings import ExecutorSettings
from k8s_executor.state_mapping import describe_events, observe

# How often the executor asks Airflow which schedulers live, and whether creates still on their
# way are still wanted (one query each, whatever the number of pods).
LIVENESS_INTERVAL_S = 10.0
OBSOLETE_CHECK_INTERVAL_S = 2.0
# Only creates held back this long are checked: a try is reset or handed to another scheduler
# after its scheduler missed its health check (30 s by default) or its queued timeout, never in
# the seconds a burst keeps creates waiting for the rate limit, whose check would be a query of
# up to a thousand tries every 2 s for nothing.
OBSOLETE_AFTER_S = 15.0
# A pod that failed before its task started is launched again after 1, 2, 4 ... at most 60 s, and
# not when less than this is left of its try's time to start.
RELAUNCH_MAX_DELAY_S = 60.0
RELAUNCH_MIN_TIME_LEFT_S = 10.0


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

    RUNNING_POD_LOG_NOTE = "Log of the running pod {pod}"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.settings: ExecutorSettings | None = None
        self.kube_scheduler: AirflowKubernetesScheduler | None = None
        self.result_queue: queue.Queue[TaskResult | HandedOver | NameTaken] = queue.Queue()
        self.scheduler_id = ""
        # The owner label of this executor's pods; set by a LocalKubernetesExecutor to its own.
        self.owner: str | None = None
        self._next_liveness = 0.0
        self._next_obsolete_check = 0.0
        self._worker_env: dict[str, str] = {}
        # How often each try's pod was launched again: after Airflow revoked it (a task stuck in
        # queued is queued again with the same try number), after it was found obsolete, or after
        # it failed before its task started. Each new pod gets a new name (identity.pod_name), so
        # an earlier pod's end cannot be taken for the new one's.
        self._relaunches: Counter[identity.WorkloadRef] = Counter()
        # What each try's pod is built from, kept until its result, for a launch that failed.
        self._requests: dict[identity.WorkloadRef, Callable[[], PodRequest]] = {}
        self._launch_failures: Counter[identity.WorkloadRef] = Counter()
        # When each try's time to start ends (from its first launch), and when a relaunch is due.
        self._start_deadline: dict[identity.WorkloadRef, float] = {}
        self._relaunch_due: dict[identity.WorkloadRef, float] = {}
        # Notes in task logs are written (and uploaded to a remote log store) off the scheduler's
        # loop: a burst of failed launches must not hold it for a database read and an upload each.
        self._notes = ThreadPoolExecutor(max_workers=1, thread_name_prefix="task-log-notes")

    # --- lifecycle -------------------------------------------------------
    def start(self) -> None:
        # Validate everything before anything starts: no half-configured scheduler.
        team = getattr(self, "team_name", None)
        self.settings = ExecutorSettings.parse(airflow_adapter.read_settings(team=team))
        self.scheduler_id = str(self.job_id) if self.job_id is not None else uuid.uuid4().hex[:12]
        self.owner = self.owner or airflow_adapter.executor_identity(self)
        # The credential is fetched now: one that cannot be had stops the scheduler here, with a
        # message naming the file or command.
        self.kube_client = core_api(self.settings)
        self._worker_env = airflow_adapter.worker_env()
        self._defaults = airflow_adapter.pod_defaults(self.settings)
        self.kube_scheduler = AirflowKubernetesScheduler(
            self.settings,
            None,
            self.result_queue,
            self.kube_client,
            self.scheduler_id,
            # As long as Airflow waits before it hands a dead scheduler's tasks to a successor.
            unclaimed_grace_s=airflow_adapter.orphan_check_interval_s(),
            executor_id=self.owner,
        )
        self.kube_scheduler.start_watchers()
        self.log.info(
            "KubernetesExecutor started: scheduler id %s, pods labelled %s=%s, namespaces %s",
            self.scheduler_id,
            identity.OWNER_LABEL,
            self.owner,
            self.settings.watched_namespaces,
        )

    def sync(self) -> None:
        if self.kube_scheduler is None:
            return
        self.kube_scheduler.check_watchers()
        self._ask_airflow()
        self.kube_scheduler.sync()
        results: list[TaskResult] = []
        while True:
            try:
                result = self.result_queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(result, NameTaken):
                self._launch_again(result.ref)
                continue
            if isinstance(result, HandedOver):
                # Adopted by another scheduler (this one stalled past its health check, say).
                self._forget(result.ref)
                self.running.discard(airflow_adapter.to_airflow_key(result.ref))
                continue
            results.append(result)
        relaunched = self._relaunch_failed_launches(results)
        self._relaunch_due_pods()
        for result in results:
            if result.ref not in relaunched:
                self._apply(result)

    def _relaunch_failed_launches(self, results: list[TaskResult]) -> set[identity.WorkloadRef]:
        """Give a new pod to each try whose pod failed before its task started, while the try has
        launches left (pod_launch_failure_retries): one query for the batch."""
        assert self.settings is not None
        allowed = self.settings.pod_launch_failure_retries
        # Tries only: a callback has no task instance that could tell whether it started.
        candidates = [
            (r, r.ref)
            for r in results
            if isinstance(r.ref, identity.TaskRef)
            and r.state.verdict == "failed"
            and r.ref in self._requests
            and (allowed < 0 or self._launch_failures[r.ref] < allowed)
        ]
        if not candidates:
            return set()
        try:
            rows = airflow_adapter.task_instance_rows([ref for _, ref in candidates])
        except Exception:
            self.log.exception("could not read whether %d failed pods' tasks had started", len(candidates))
            return set()
        excluded = frozenset(self.settings.pod_launch_failure_excluded_container_reasons)
        relaunched: set[identity.WorkloadRef] = set()
        now = time.monotonic()
        for result, ref in candidates:
            row = rows.get((ref.dag_id, ref.task_id, ref.run_id, ref.map_index))
            if (
                row is None
                or row[0] != ref.try_number
                # Handed to another scheduler since: its pod is that scheduler's concern.
                or str(row[2]) != self.scheduler_id
                or not relaunch(result.state, row[1], excluded)
            ):
                continue
            # The try's time to start counts from its first launch: its workload token expires then.
            left_s = self._start_deadline[ref] - now
            if left_s <= RELAUNCH_MIN_TIME_LEFT_S:
                continue
            self._launch_failures[ref] += 1
            failures = self._launch_failures[ref]
            # A cause that lasts (a webhook refusing every create) is not hammered: 1, 2, 4 ... 60 s.
            delay_s = min(RELAUNCH_MAX_DELAY_S, 2.0 ** (failures - 1))
            note = (
                f"Kubernetes pod {result.pod} failed before its task started: {result.state.reason}. "
                f"Launching a new pod in {delay_s:.0f} s (failed launch {failures} of at most "
                f"{allowed if allowed >= 0 else 'unlimited'}); the task's own retries are untouched."
            )
            self.log.warning("task %s: %s", ref, note)
            self._note_in_task_log(ref, note, ends_try=False)
            metrics.incr("pods.relaunched")
            self._relaunch_due[ref] = now + delay_s
            relaunched.add(ref)
        return relaunched

    def _launch_again(self, ref: identity.WorkloadRef) -> None:
        """A new pod name for a try queued again on the same try number (a sensor rescheduled, a
        deferred task resumed) whose earlier pod still has the name."""
        if ref not in self._requests:
            return
        self._relaunches[ref] += 1
        self._start_deadline.pop(ref, None)
        self._launch(airflow_adapter.to_airflow_key(ref), self._requests[ref])

    def _relaunch_due_pods(self) -> None:
        now = time.monotonic()
        for ref, due in list(self._relaunch_due.items()):
            if due > now:
                continue
            del self._relaunch_due[ref]
            if ref not in self._requests:
                continue  # given up meanwhile
            self._relaunches[ref] += 1
            self._launch(
                airflow_adapter.to_airflow_key(ref),
                self._requests[ref],
                start_timeout_s=max(self._start_deadline[ref] - now, RELAUNCH_MIN_TIME_LEFT_S),
            )

    def _ask_airflow(self) -> None:
        """What only Airflow's database knows: which schedulers live, and which creates still on
        their way are for tries no longer this scheduler's (reset, retried, or queued by another
        scheduler since: upstream #69760). Such a create is dropped, or its pod deleted."""
        assert self.kube_scheduler is not None
        now = time.monotonic()
        if now >= self._next_liveness and self.job_id is not None:
            self._next_liveness = now + LIVENESS_INTERVAL_S
            try:
                jobs = airflow_adapter.scheduler_jobs()
            except Exception:
                self.log.exception("could not read which schedulers are alive; asking again later")
            else:
                threshold = airflow_adapter.scheduler_health_check_threshold_s()
                self.kube_scheduler.set_live_schedulers(
                    live_schedulers(jobs, datetime.datetime.now(datetime.timezone.utc), threshold)
                )
                try:
                    self.kube_scheduler.sweep()
                except Exception:
                    self.log.exception(
                        "could not sweep for the pods dead schedulers left; trying again later"
                    )
        if now < self._next_obsolete_check or self.job_id is None:
            return
        self._next_obsolete_check = now + OBSOLETE_CHECK_INTERVAL_S
        waiting = self.kube_scheduler.waiting_for_create(OBSOLETE_AFTER_S)
        if not waiting:
            return
        try:
            rows = airflow_adapter.task_instance_rows(list(waiting))
        except Exception:
            self.log.exception(
                "could not check %d creates still on their way; checking again later", len(waiting)
            )
            return
        for ref in waiting:
            row = rows.get((ref.dag_id, ref.task_id, ref.run_id, ref.map_index))
            if create_obsolete(ref, row, self.scheduler_id):
                self.log.warning(
                    "task %s.%s (run %s, try %d) is no longer this scheduler's (now %s); its pod is not launched",
                    ref.dag_id,
                    ref.task_id,
                    ref.run_id,
                    ref.try_number,
                    "gone" if row is None else f"try {row[0]}, {row[1]}, queued by {row[2]}",
                )
                self._give_up(ref)

    def _give_up(self, ref: identity.TaskRef) -> None:
        """The try is not this scheduler's any more: nothing is reported for it, its pod goes, and
        if it comes back to this scheduler its next pod has a new name."""
        assert self.kube_scheduler is not None
        key = airflow_adapter.to_airflow_key(ref)
        self.queued_tasks.pop(key, None)
        self.running.discard(key)
        self._relaunches[ref] += 1
        self._forget(ref)
        self.kube_scheduler.revoke(ref)

    def _forget(self, ref: identity.WorkloadRef) -> None:
        self._requests.pop(ref, None)
        self._launch_failures.pop(ref, None)
        self._relaunch_due.pop(ref, None)
        self._start_deadline.pop(ref, None)

    def _apply(self, result: TaskResult) -> None:
        self._forget(result.ref)
        key = airflow_adapter.to_airflow_key(result.ref)
        success, failure = airflow_adapter.end_states(result.ref)
        if result.state.verdict == "success":
            self.change_state(key, success, result.pod)
        else:
            reason = f"{result.pod}: {result.state.reason}"
            self.log.warning("%s failed in Kubernetes: %s", key, reason)
            self._note_in_task_log(result.ref, f"Kubernetes pod {reason}", ends_try=True)
            self.change_state(key, failure, reason)

    def end(self) -> None:
        """Report what has ended, let creates in flight land, and stop.

        Running pods are not waited for: they outlive the scheduler and its successor adopts
        them. Waiting would hold a stopping scheduler for as long as its longest task.
        """
        if self.kube_scheduler is None:
            return
        self.sync()
        self.kube_scheduler.launcher.shutdown(wait=True)
        self.sync()
        self._notes.shutdown(wait=True)
        self.log.info(
            "stopping with %d pods in flight, left for adoption; the watchers read %d watch events",
            len(self.kube_scheduler.in_flight()),
            self.kube_scheduler.watch_events_read,
        )
        self.terminate()

    def terminate(self) -> None:
        if self.kube_scheduler is not None:
            self.kube_scheduler.terminate()

    # --- launching -------------------------------------------------------
    def trigger_tasks(self, open_slots: int) -> None:
        batch = self.settings.worker_pods_creation_batch_size if self.settings else open_slots
        super().trigger_tasks(min(open_slots, batch))

    def _process_workloads(self, workloads: Sequence[Any]) -> None:
        for workload in workloads:
            if airflow_adapter.is_callback(workload):
                self.queued_callbacks.pop(workload.key, None)
                self.running.add(workload.key)
                self._launch(workload.key, functools.partial(self._request_from_callback, workload))
                continue
            if airflow_adapter.is_connection_test(workload):
                self.queued_connection_tests.pop(workload.key, None)
                self.running.add(workload.key)
                make = functools.partial(
                    airflow_adapter.request_from_connection_test,
                    workload,
                    self.scheduler_id,
                    self._worker_env,
                )
                # Airflow's reaper fails a test that has not ended by its timeout and a grace of
                # at least 30 s: a pod not started by then is of no use.
                self._launch(
                    workload.key, make, start_timeout_s=workload.timeout + max(30, workload.timeout // 2)
                )
                continue
            key = workload.ti.key
            self.queued_tasks.pop(key, None)
            self.running.add(key)
            self._launch(key, functools.partial(self._request_from_workload, workload))

    def _request_from_workload(self, workload: Any) -> PodRequest:
        attempt = self._relaunches[airflow_adapter.ref_of(workload.ti.key)]
        return airflow_adapter.request_from_workload(workload, self.scheduler_id, self._worker_env, attempt)

    def _request_from_callback(self, workload: Any) -> PodRequest:
        return airflow_adapter.request_from_callback(workload, self.scheduler_id, self._worker_env)

    def execute_async(
        self,
        key: Any,
        command: Any,
        queue: str | None = None,
        executor_config: Any | None = None,
    ) -> None:
        """Airflow 2's entry point: run `command` for `key` in a pod."""
        self.running.add(key)
        self._launch(key, functools.partial(self._request_from_command, key, command, executor_config))

    def _request_from_command(self, key: Any, command: Any, executor_config: Any) -> PodRequest:
        attempt = self._relaunches[airflow_adapter.ref_of(key)]
        return airflow_adapter.request_from_command(
            key, command, executor_config, self.scheduler_id, self._worker_env, attempt
        )

    def _launch(
        self, key: Any, make_request: Callable[[], PodRequest], start_timeout_s: float | None = None
    ) -> None:
        """Build the task's pod and hand it to the launcher; bad input fails this task only."""
        assert self.kube_scheduler is not None
        try:
            request = dataclasses.replace(
                make_request(),
                executor_id=self.owner or identity.DEFAULT_EXECUTOR,
                launch_id=uuid.uuid4().hex,
            )
            pod = airflow_adapter.pod_for(request, self._defaults)
            self._check_watched(pod["metadata"]["namespace"])
        except (ExecutorConfigError, PodBuildError) as exc:
            self._refuse(key, exc)
            return
        except Exception as exc:
            # An input of a shape nobody foresaw (say `pod_override={"spec": 1}`) is still the
            # task's input: it fails the task, never the scheduler loop.
            self.log.exception("building the pod of %s failed", key)
            self._refuse(key, PodBuildError(f"its pod could not be built: {type(exc).__name__}: {exc}"))
            return
        self._requests[request.ref] = make_request
        timeout_s = start_timeout_s or airflow_adapter.task_queued_timeout_s()
        self._start_deadline.setdefault(request.ref, time.monotonic() + timeout_s)
        self.kube_scheduler.run_pod_async(pod, ref=request.ref, start_timeout_s=timeout_s)

    def _check_watched(self, namespace: str) -> None:
        """A pod in a namespace no watcher sees would never report back: refuse it up front."""
        assert self.settings is not None
        watched = self.settings.watched_namespaces
        if None not in watched and namespace not in watched:
            raise PodBuildError(
                f"metadata.namespace {namespace!r} is not watched by this executor (watching "
                f"{', '.join(str(n) for n in watched)}); set [kubernetes_executor] multi_namespace_mode = True "
                f"and add it to multi_namespace_mode_namespace_list"
            )

    def _refuse(self, key: Any, exc: Exception) -> None:
        if not hasattr(key, "dag_id"):  # a callback's or a connection test's key
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
        if not isinstance(ref, identity.TaskRef):
            return  # a callback's failure reason is the callback's output in Airflow
        self._notes.submit(self._write_note, ref, text, ends_try)

    def _write_note(self, ref: identity.TaskRef, text: str, ends_try: bool) -> None:
        try:
            airflow_adapter.note_in_task_log(ref, text, ends_try)
        except Exception:
            # The reason still reaches Airflow with the state; a log folder we cannot write to, or
            # a remote store that refuses the upload, must not stop the scheduler.
            self.log.exception("could not write the failure reason to the log of %s", ref)

    @staticmethod
    def get_cli_commands() -> list[Any]:
        # Imported here: the scheduler, which imports this module, needs none of the CLI.
        from k8s_executor.commands import cli_commands

        return cli_commands()

    # --- adoption, revocation, logs ---------------------------------------
    def try_adopt_task_instances(self, tis: Sequence[Any]) -> Sequence[Any]:
        assert self.kube_scheduler is not None and self.settings is not None
        started = time.monotonic()
        airflow_adapter.load_unloaded_columns(tis)
        by_ref: dict[identity.WorkloadRef, Any] = {airflow_adapter.ref_of(ti.key): ti for ti in tis}
        # A scheduler whose loop stalled past its health check is declared dead by itself and
        # handed its own tasks: those still queued here, in flight (created or not yet) or
        # reported but not yet taken in are ours already. (Found at 5,000 tasks: thousands of
        # tries reset and launched twice.)
        queued_here = {airflow_adapter.ref_of(key) for key in self.queued_tasks}
        held = by_ref.keys() & (self.kube_scheduler.claimed() | queued_here)
        dead = {str(ti.queued_by_job_id) for ti in tis if ti.queued_by_job_id is not None}
        dead.discard(self.scheduler_id)
        wanted = [ref for ref in by_ref if ref not in held]
        try:
            orphans = self.kube_scheduler.find_orphans(wanted, dead)
        except REQUEST_ERRORS as exc:
            # Their pods cannot be found now: Airflow resets these tries and schedules them again
            # (their old pods are the disposer's), and the scheduler goes on.
            self.log.exception(
                "could not list pods to adopt %d task instances; Airflow resets them", len(wanted)
            )
            reason = adoption.unlisted_reason(dead, self.scheduler_id, describe_error(exc))
            for ref in wanted:
                self._note_in_task_log(ref, reason, ends_try=True)
            return [by_ref[ref] for ref in wanted]
        found = time.monotonic() - started
        start_timeout_s = airflow_adapter.task_queued_timeout_s()
        for orphan in orphans:
            # Pods whose task already ended (through the execution API) are taken too, only to be
            # deleted or marked done: otherwise they would stay in every watch forever.
            self.kube_scheduler.adopt(orphan, start_timeout_s)
            if orphan.ours:
                self.running.add(by_ref[orphan.ref].key)
        adopted = held | {orphan.ref for orphan in orphans if orphan.ours}
        metrics.incr("adoption.pods", len(orphans))
        took = time.monotonic() - started
        metrics.timing("adoption.duration", took)
        self.log.info(
            "adopted %d of %d task instances from schedulers %s in %.2f s (%.2f s finding their pods)",
            len(adopted),
            len(tis),
            sorted(dead),
            took,
            found,
        )
        for ref, ti in by_ref.items():
            if ref not in adopted:
                self._note_in_task_log(
                    ref, adoption.unadopted_reason(ti.state, dead, self.scheduler_id), ends_try=True
                )
        return [ti for ref, ti in by_ref.items() if ref not in adopted]

    def adopt_launched_task(self, ti: Any, last_heartbeat: Any = None, session: Any = None) -> bool:
        return not self.try_adopt_task_instances([ti])

    def revoke_task(self, *, ti: Any) -> None:
        if self.kube_scheduler is None:
            self.queued_tasks.pop(ti.key, None)
            self.running.discard(ti.key)
            return
        self._give_up(airflow_adapter.ref_of(ti.key))

    def get_task_log(self, ti: Any, try_number: int) -> tuple[list[str], list[str]]:
        messages: list[str] = []
        logs: list[str] = []
        if self.settings is None:
            # The UI's log reader holds an executor it never started: it only needs a client.
            team = getattr(self, "team_name", None)
            self.settings = ExecutorSettings.parse(airflow_adapter.read_settings(team=team))
            self.kube_client = core_api(self.settings)
        ref = airflow_adapter.ref_of(ti.key)._replace(try_number=try_number)
        selector = identity.try_selector(ref)
        pods = []
        for namespace in self.settings.watched_namespaces:
            pods.extend(list_pods(self.kube_client, namespace, label_selector=selector).items)
        pods = [p for p in pods if identity.ref_from_annotations(p.metadata.annotations) == ref]
        if not pods:
            messages.append(f"No pod found for {ref.dag_id}.{ref.task_id} try {try_number} ({selector})")
            return messages, logs
        if len(pods) > 1:
            names = ", ".join(f"{p.metadata.namespace}/{p.metadata.name}" for p in pods)
            messages.append(f"{len(pods)} pods match this task try ({names}); showing the first")
        pod = pods[0]
        where = f"{pod.metadata.namespace}/{pod.metadata.name}"
        state = self.kube_client.api_client.sanitize_for_serialization(pod)
        verdict = observe(state).state
        try:
            events = describe_events(
                pod_events(self.kube_client, pod.metadata.namespace, pod.metadata.name, pod.metadata.uid)
            )
        except client.ApiException as exc:
            events = f"(not read: {error_message(exc)})"
        if verdict.verdict == "pending":
            messages.append(f"Pod {where} has not started: {verdict.reason or 'waiting to be scheduled'}")
            if events:
                messages.append(f"Kubernetes events: {events}")
            return messages, logs
        messages.append(self.RUNNING_POD_LOG_NOTE.format(pod=where))
        try:
            response = self.kube_client.read_namespaced_pod_log(
                pod.metadata.name,
                pod.metadata.namespace,
                container="base",
                tail_lines=self.settings.running_pod_log_lines,
                _preload_content=False,
            )
        except client.ApiException as exc:
            messages.append(f"The log of pod {where} could not be read: {error_message(exc)}")
            if events:
                messages.append(f"Kubernetes events: {events}")
            return messages, logs
        logs.append(read_body(response).decode(errors="replace"))
        return messages, logs
