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

EXECUTOR_LABEL = "kubernetes_executor"
WORKER_LABEL = "airflow-worker"
DONE_LABEL = "airflow_executor_done"


class TaskRef(NamedTuple):
    """A task try; field for field the same as Airflow's TaskInstanceKey."""

    dag_id: str
    task_id: str
    run_id: str
    try_number: int = 1
    map_index: int = -1


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


def pod_name(ref: TaskRef, launch_attempt: int = 0) -> str:
    """A DNS-1123 name of at most 63 characters, the same for every create of one try.

    A try Airflow takes back (stuck in queued) and queues again keeps its try number; its
    n-th relaunch gets `r<n>` after it, so the revoked pod's end is never taken for the new one's.
    """
    suffix = f"-{_digest(ref.dag_id, ref.task_id, ref.run_id, ref.map_index, length=10)}-t{ref.try_number}"
    if launch_attempt:
        suffix += f"r{launch_attempt}"
    slug = _NAME_CHARS.sub("-", f"{ref.dag_id}-{ref.task_id}".lower()).strip("-")
    slug = slug[: LABEL_MAX - len(suffix)].rstrip("-") or "task"
    return slug + suffix


def labels(ref: TaskRef, scheduler_id: str, airflow_version: str, ti_id: str | None = None) -> dict[str, str]:
    out = {
        "dag_id": safe_label_value(ref.dag_id),
        "task_id": safe_label_value(ref.task_id),
        "run_id": safe_label_value(ref.run_id),
        "try_number": str(ref.try_number),
        EXECUTOR_LABEL: "True",
        WORKER_LABEL: safe_label_value(scheduler_id),
        "airflow_version": safe_label_value(airflow_version.replace("+", "-")),
    }
    if ref.map_index >= 0:
        out["map_index"] = str(ref.map_index)
    if ti_id:
        out["ti_id"] = safe_label_value(ti_id)
    return out


def annotations_for(ref: TaskRef, ti_id: str | None = None) -> dict[str, str]:
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


def ref_from_annotations(annotations_: dict[str, Any] | None) -> TaskRef | None:
    """The task try a pod runs, or None for a pod that is not ours."""
    a = annotations_ or {}
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
    """The label selector of a task try's pods (label values are lossy: confirm by annotations)."""
    parts = [
        f"{EXECUTOR_LABEL}=True",
        f"dag_id={safe_label_value(ref.dag_id)}",
        f"task_id={safe_label_value(ref.task_id)}",
        f"run_id={safe_label_value(ref.run_id)}",
        f"try_number={ref.try_number}",
        f"map_index={ref.map_index}" if ref.map_index >= 0 else "!map_index",
    ]
    return ",".join(parts)


def selector(scheduler_id: str | None = None) -> str:
    """Pods of this executor (of one scheduler, if given) that still await a verdict."""
    parts = [f"{EXECUTOR_LABEL}=True", f"{DONE_LABEL}!=True"]
    if scheduler_id is not None:
        parts.append(f"{WORKER_LABEL}={safe_label_value(scheduler_id)}")
    return ",".join(parts)
