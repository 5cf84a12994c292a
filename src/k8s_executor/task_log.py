"""The task log: the notes the executor adds to a try's log, and what it shows of a try's pod.

A pod that never ran its worker leaves no log at all, so the executor's notes are then the one
place an operator looks that says why; the log reader shows, while a try runs, its pod's state,
events and log, read from the API server. Both are here, apart from the executor's loop: notes
are written by `NoteWriter` on a thread of their own, and the reader is a function of a client,
the settings and a try.
"""

from __future__ import annotations

import datetime
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from airflow.configuration import conf
from kubernetes import client

from k8s_executor import airflow_adapter, identity
from k8s_executor.identity import BASE_CONTAINER
from k8s_executor.kube_client import error_message, list_pods, pod_events, read_body
from k8s_executor.own_cpu import OWN_CPU
from k8s_executor.settings import ExecutorSettings
from k8s_executor.state_mapping import describe_events, observe

log = logging.getLogger(__name__)

RUNNING_POD_LOG_NOTE = "Log of the running pod {pod}"


# --- notes -------------------------------------------------------------------------------
class NoteWriter:
    """Writes notes in task logs (and uploads them to a remote log store) off the scheduler's
    loop: a burst of failed launches must not hold it for a database read and an upload each."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="task-log-notes")

    def submit(self, ref: identity.WorkloadRef, text: str, ends_try: bool) -> None:
        if not isinstance(ref, identity.TaskRef):
            return  # a callback's failure reason is the callback's output in Airflow
        self._pool.submit(self._counted_write, ref, text, ends_try)

    def shutdown(self, wait: bool = True) -> None:
        """Wait for the notes submitted so far (with `wait`), and take no more."""
        self._pool.shutdown(wait=wait)

    @classmethod
    def _counted_write(cls, ref: identity.TaskRef, text: str, ends_try: bool) -> None:
        with OWN_CPU.counted():
            cls._write(ref, text, ends_try)

    @staticmethod
    def _write(ref: identity.TaskRef, text: str, ends_try: bool) -> None:
        try:
            note_in_task_log(ref, text, ends_try)
        except Exception:
            # The reason still reaches Airflow with the state; a log folder we cannot write to, or
            # a remote store that refuses the upload, must not stop the scheduler.
            log.exception("could not write the failure reason to the log of %s", ref)


def note_in_task_log(ref: identity.TaskRef, text: str, ends_try: bool) -> None:
    """Append `text` to the try's log, where the UI shows it.

    It is written where the worker would have written: the local log folder, which the API
    server reads when the folder is shared. When remote logging is configured, the note that
    ends a try is uploaded as the worker's supervisor uploads its own log at a task's end: the
    API server reads a finished try from the remote store, and asks the executor's
    `get_task_log` only while a try runs, so without the upload a try whose pod never started
    shows nothing in the usual installation (the Helm chart shares no log folder between the
    scheduler and the API server).
    """
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    folder = conf.get("logging", "base_log_folder")
    with create_session() as session:
        ti = session.scalar(
            select(TaskInstance).where(
                TaskInstance.dag_id == ref.dag_id,
                TaskInstance.task_id == ref.task_id,
                TaskInstance.run_id == ref.run_id,
                TaskInstance.map_index == ref.map_index,
            )
        )
        if ti is None:
            return
        path = Path(folder) / airflow_adapter.task_log_filename(ti, ref.try_number, folder, session)
    line = airflow_adapter.task_log_line(text, datetime.datetime.now(datetime.timezone.utc))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as log_file:
        log_file.write(line + "\n")
    remote = airflow_adapter.remote_task_log() if ends_try else None
    if remote is not None:
        remote.upload(path, ti)


# --- the log reader ----------------------------------------------------------------------
def read_pod_log(
    kube: client.CoreV1Api, settings: ExecutorSettings, ref: identity.TaskRef
) -> tuple[list[str], list[str]]:
    """What Airflow's log view shows of try `ref` while it runs: (messages, logs).

    Its pod's log (the last `running_pod_log_lines` lines); for a pod that has not started, why
    not, with its Kubernetes events; for a try without a pod, the selector that found none.
    """
    messages: list[str] = []
    logs: list[str] = []
    selector = identity.try_selector(ref)
    pods = []
    for namespace in settings.watched_namespaces:
        pods.extend(list_pods(kube, namespace, label_selector=selector).items)
    pods = [p for p in pods if identity.ref_from_annotations(p.metadata.annotations) == ref]
    if not pods:
        messages.append(f"No pod found for {ref.dag_id}.{ref.task_id} try {ref.try_number} ({selector})")
        return messages, logs
    if len(pods) > 1:
        names = ", ".join(f"{p.metadata.namespace}/{p.metadata.name}" for p in pods)
        messages.append(f"{len(pods)} pods match this task try ({names}); showing the first")
    pod = pods[0]
    where = f"{pod.metadata.namespace}/{pod.metadata.name}"
    state = kube.api_client.sanitize_for_serialization(pod)
    verdict = observe(state).state
    try:
        events = describe_events(
            pod_events(kube, pod.metadata.namespace, pod.metadata.name, pod.metadata.uid)
        )
    except client.ApiException as exc:
        events = f"(not read: {error_message(exc)})"
    if verdict.verdict == "pending":
        messages.append(f"Pod {where} has not started: {verdict.reason or 'waiting to be scheduled'}")
        if events:
            messages.append(f"Kubernetes events: {events}")
        return messages, logs
    messages.append(RUNNING_POD_LOG_NOTE.format(pod=where))
    try:
        response = kube.read_namespaced_pod_log(
            pod.metadata.name,
            pod.metadata.namespace,
            container=BASE_CONTAINER,
            tail_lines=settings.running_pod_log_lines,
            _preload_content=False,
        )
    except client.ApiException as exc:
        messages.append(f"The log of pod {where} could not be read: {error_message(exc)}")
        if events:
            messages.append(f"Kubernetes events: {events}")
        return messages, logs
    logs.append(read_body(response).decode(errors="replace"))
    return messages, logs
