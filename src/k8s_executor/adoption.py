"""Taking over the pods of a scheduler that died.

Airflow hands a new scheduler the task instances queued by a dead one. Their
pods still carry the dead scheduler's id; adoption relabels each pod whose
annotations name one of those task tries, so this scheduler's watcher reports
it, whether it still runs or has already finished. One list per namespace, one
patch per adopted pod.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kubernetes import client

from k8s_executor import identity


@dataclass(frozen=True)
class Orphan:
    ref: identity.TaskRef
    namespace: str
    name: str


def find_orphans(
    api: client.CoreV1Api, namespaces: Iterable[str | None], dead_scheduler_ids: Iterable[str]
) -> list[Orphan]:
    """Pods of the given schedulers that still await a verdict."""
    ids = sorted({identity.safe_label_value(i) for i in dead_scheduler_ids})
    if not ids:
        return []
    selector = (
        f"{identity.EXECUTOR_LABEL}=True,{identity.DONE_LABEL}!=True,"
        f"{identity.WORKER_LABEL} in ({','.join(ids)})"
    )
    orphans = []
    for namespace in namespaces:
        if namespace:
            response = api.list_namespaced_pod(namespace, label_selector=selector, _preload_content=False)
        else:
            response = api.list_pod_for_all_namespaces(label_selector=selector, _preload_content=False)
        for pod in json.loads(response.data)["items"]:
            meta: dict[str, Any] = pod["metadata"]
            ref = identity.ref_from_annotations(meta.get("annotations"))
            if ref is not None:
                orphans.append(Orphan(ref, meta["namespace"], meta["name"]))
    return orphans
