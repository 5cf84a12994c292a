"""How a task try is named in Kubernetes: pod names, labels and annotations.

A pod name is a pure function of the task try, so a create repeated after a
lost response meets 409 Conflict instead of making a second pod. Labels are
lossy (63 characters, a small alphabet), so the exact ids also live in
annotations, and a task key is always rebuilt from those.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, NamedTuple

LABEL_MAX = 63
_LABEL_OK = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_NAME_CHARS = re.compile(r"[^a-z0-9-]+")

# Which configured executor launched a pod (alias or class, and team), and which scheduler job.
# Watchers select on the first, so another executor's pods (ours under another alias or team, or
# the official provider's) are never seen, claimed, reported or deleted.
OWNER_LABEL = "airflow-k8s-executor/executor"
SCHEDULER_LABEL = "airflow-k8s-executor/scheduler"
# The official provider's labels, which this executor's pods carried before they had an owner.
# New pods do not carry them: the official provider's watcher selects `airflow-worker=<job id>`,
# which in a scheduler running both executors is the same id, and its completed-pod sweep takes
# every `kubernetes_executor=True` pod of another scheduler.
LEGACY_EXECUTOR_LABEL = "kubernetes_executor"
LEGACY_SCHEDULER_LABEL = "airflow-worker"
DONE_LABEL = "airflow_executor_done"
# The cluster of `[kubernetes_executor] clusters` a pod was launched in; none on the default
# cluster's pods (and on every pod launched before there were several clusters). Two entries that
# reach one API server with overlapping namespaces never see each other's pods.
CLUSTER_LABEL = "airflow-k8s-executor/cluster"
DEFAULT_CLUSTER = "default"
DEFAULT_EXECUTOR = "KubernetesExecutor"
# The container that runs the task; every other container of its pod (a sidecar) serves it.
BASE_CONTAINER = "base"
# A new value for each launch: a create that meets 409 tells its own pod (the answer to an earlier
# attempt was lost) from an earlier launch's pod of the same try (a sensor rescheduled, a deferred
# task resumed: queued again on the same try number).
LAUNCH_ANNOTATION = "airflow-k8s-executor/launch"


def executor_identity(name: str, team: str | None = None) -> str:
    """The owner label value of one configured executor: its alias or class name, and its team.

    Stable across restarts (the same configuration gives the same value) and distinct between
    the executors and teams of one installation.
    """
    return safe_label_value(f"{team}.{name}" if team else name)


class TaskRef(NamedTuple):
    """A task try; field for field the same as Airflow's TaskInstanceKey."""

    dag_id: str
    task_id: str
    run_id: str
    try_number: int = 1
    map_index: int = -1


class CallbackRef(NamedTuple):
    """An executor callback (a deadline alert's, say): Airflow's callback id, and the DAG run it is
    for (from its log path: names and labels only, never identity)."""

    callback_id: str
    dag_id: str = ""
    run_id: str = ""


class ConnectionTestRef(NamedTuple):
    """A connection test run on a worker: Airflow's connection test id, and the connection's id."""

    test_id: str
    connection_id: str = ""


# What a pod runs: a task try, a callback, or a connection test.
WorkloadRef = TaskRef | CallbackRef | ConnectionTestRef
CALLBACK_ANNOTATION = "callback_id"
CONNECTION_TEST_ANNOTATION = "connection_test_id"


def _digest(*parts: object, length: int) -> str:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:length]


def safe_label_value(value: object) -> str:
    """The value itself when Kubernetes accepts it as a label value, else a stable readable stand-in."""
    text = str(value)
    if len(text) <= LABEL_MAX and _LABEL_OK.match(text):
        return text
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.-")[:53].rstrip("_.-")
    return (
        f"{cleaned}-{hashlib.md5(text.encode()).hexdigest()[:9]}"
        if cleaned
        else hashlib.md5(text.encode()).hexdigest()[:9]
    )


def pod_name(ref: WorkloadRef, launch_attempt: int = 0) -> str:
    """A DNS-1123 name of at most 63 characters, the same for every create of one try (or callback).

    A try launched again on the same try number (taken back by Airflow and queued again, found
    obsolete, or its pod failed before its task started) gets `r<n>` after it for its n-th new
    pod, so an earlier pod's end is never taken for the new one's.
    """
    if isinstance(ref, CallbackRef):
        suffix = f"-cb-{_digest(ref.callback_id, length=12)}"
        words = f"{ref.dag_id}-callback"
    elif isinstance(ref, ConnectionTestRef):
        suffix = f"-ct-{_digest(ref.test_id, length=12)}"
        words = f"connection-test-{ref.connection_id}"
    else:
        suffix = (
            f"-{_digest(ref.dag_id, ref.task_id, ref.run_id, ref.map_index, length=10)}-t{ref.try_number}"
        )
        words = f"{ref.dag_id}-{ref.task_id}"
    if launch_attempt:
        suffix += f"r{launch_attempt}"
    slug = _NAME_CHARS.sub("-", words.lower()).strip("-")
    slug = slug[: LABEL_MAX - len(suffix)].rstrip("-") or "task"
    return slug + suffix


def labels(
    ref: WorkloadRef,
    scheduler_id: str,
    airflow_version: str,
    ti_id: str | None = None,
    executor_id: str = DEFAULT_EXECUTOR,
) -> dict[str, str]:
    """The labels of a workload's pod: its workload, in label-safe values, and whose it is."""
    if isinstance(ref, TaskRef):
        out = {
            "dag_id": safe_label_value(ref.dag_id),
            "task_id": safe_label_value(ref.task_id),
            "run_id": safe_label_value(ref.run_id),
            "try_number": str(ref.try_number),
        }
        if ref.map_index >= 0:
            out["map_index"] = str(ref.map_index)
        if ti_id:
            out["ti_id"] = safe_label_value(ti_id)
    else:
        out = {key: safe_label_value(value) for key, value in annotations_for(ref).items()}
    out[OWNER_LABEL] = executor_id
    out[SCHEDULER_LABEL] = safe_label_value(scheduler_id)
    out["airflow_version"] = safe_label_value(airflow_version.replace("+", "-"))
    return out


def launched_by_an_executor(pod_labels: dict[str, str] | None) -> bool:
    """Whether a pod is an executor's: one of ours (any alias or team), or a legacy one."""
    found = pod_labels or {}
    return OWNER_LABEL in found or found.get(LEGACY_EXECUTOR_LABEL) == "True"


def scheduler_of(pod_labels: dict[str, str] | None) -> str:
    """The label of the scheduler that launched a pod, new or legacy."""
    found = pod_labels or {}
    return found.get(SCHEDULER_LABEL) or found.get(LEGACY_SCHEDULER_LABEL, "")


def adopted_labels(executor_id: str, scheduler_id: str) -> dict[str, str | None]:
    """The label patch of an adopted pod: its adopter's label, which brings it into the adopter's
    watch and shows every other scheduler that a live one holds it; a legacy pod also gets its
    owner and leaves the official provider's selectors."""
    return {
        OWNER_LABEL: executor_id,
        SCHEDULER_LABEL: safe_label_value(scheduler_id),
        LEGACY_EXECUTOR_LABEL: None,
        LEGACY_SCHEDULER_LABEL: None,
    }


def annotations_for(ref: WorkloadRef, ti_id: str | None = None) -> dict[str, str]:
    if isinstance(ref, CallbackRef):
        return {CALLBACK_ANNOTATION: ref.callback_id, "dag_id": ref.dag_id, "run_id": ref.run_id}
    if isinstance(ref, ConnectionTestRef):
        return {CONNECTION_TEST_ANNOTATION: ref.test_id, "connection_id": ref.connection_id}
    out = {
        "dag_id": ref.dag_id,
        "task_id": ref.task_id,
        "run_id": ref.run_id,
        "try_number": str(ref.try_number),
        "map_index": str(ref.map_index),
    }
    if ti_id:
        out["task_instance_id"] = ti_id
    return out


def ref_from_annotations(annotations_: dict[str, Any] | None) -> WorkloadRef | None:
    """The task try (or callback) a pod runs, or None for a pod that is not ours."""
    a = annotations_ or {}
    if CALLBACK_ANNOTATION in a:
        return CallbackRef(a[CALLBACK_ANNOTATION], a.get("dag_id", ""), a.get("run_id", ""))
    if CONNECTION_TEST_ANNOTATION in a:
        return ConnectionTestRef(a[CONNECTION_TEST_ANNOTATION], a.get("connection_id", ""))
    try:
        return TaskRef(
            dag_id=a["dag_id"],
            task_id=a["task_id"],
            run_id=a["run_id"],
            try_number=int(a["try_number"]),
            map_index=int(a.get("map_index", -1)),
        )
    except (KeyError, ValueError):
        return None


def try_selector(ref: TaskRef) -> str:
    """The label selector of a task try's pods, whoever launched them (label values are lossy:
    confirm by annotations)."""
    parts = [
        f"dag_id={safe_label_value(ref.dag_id)}",
        f"task_id={safe_label_value(ref.task_id)}",
        f"run_id={safe_label_value(ref.run_id)}",
        f"try_number={ref.try_number}",
        f"map_index={ref.map_index}" if ref.map_index >= 0 else "!map_index",
    ]
    return ",".join(parts)


def executor_pods_selector(executor_id: str | None = DEFAULT_EXECUTOR) -> str:
    """The label selector of the executor's pods, finished or not: one configured executor's, or
    (`None`) every configured executor's under any alias or team. Pods launched before pods had an
    owner are `LEGACY_PODS_SELECTOR`'s."""
    return OWNER_LABEL if executor_id is None else f"{OWNER_LABEL}={executor_id}"


def cluster_selector(cluster: str) -> str:
    """The pods launched in `cluster`, as their label says (the default cluster's carry none)."""
    return f"!{CLUSTER_LABEL}" if cluster == DEFAULT_CLUSTER else f"{CLUSTER_LABEL}={cluster}"


def cluster_labels(cluster: str) -> dict[str, str]:
    return {} if cluster == DEFAULT_CLUSTER else {CLUSTER_LABEL: cluster}


def selector(executor_id: str, scheduler_id: str | None = None, cluster: str = DEFAULT_CLUSTER) -> str:
    """The pods of one configured executor in one of its clusters that still await a verdict: one
    scheduler's (what its watchers see), or every scheduler's (what adoption looks through)."""
    parts = [executor_pods_selector(executor_id), f"{DONE_LABEL}!=True", cluster_selector(cluster)]
    if scheduler_id is not None:
        parts.append(f"{SCHEDULER_LABEL}={safe_label_value(scheduler_id)}")
    return ",".join(parts)


def unclaimed_selector(executor_id: str, alive: set[str], cluster: str = DEFAULT_CLUSTER) -> str:
    """The pods of one configured executor in one of its clusters whose scheduler is none of the
    live ones (`alive` holds scheduler label values): the sweep for dead schedulers' finished pods."""
    return f"{selector(executor_id, cluster=cluster)},{SCHEDULER_LABEL} notin ({','.join(sorted(alive))})"


# Pods launched before pods had an owner, by this executor or the official provider's, finished or
# not; then those that still await a verdict: found only for the tries Airflow hands over, then
# given an owner (`adopted_labels`).
LEGACY_PODS_SELECTOR = f"{LEGACY_EXECUTOR_LABEL}=True"
LEGACY_SELECTOR = f"{LEGACY_PODS_SELECTOR},{DONE_LABEL}!=True"
