"""Taking over the pods of a scheduler that died.

Airflow hands a new scheduler the task instances queued by a dead one. Their
pods are found by the task try their annotations name, whichever scheduler's
label they carry: a pod keeps the label of the scheduler that launched it
through any number of adoptions, since the watcher sees every executor pod and
nothing needs the label to change. So adoption is one list per namespace and
no write: the listed pod is judged at once (the list is a fresh observation),
and the watcher reports what happens to it next.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kubernetes import client

from k8s_executor import identity
from k8s_executor.kube_client import read_json


@dataclass(frozen=True)
class Orphan:
    ref: identity.TaskRef
    namespace: str
    name: str
    pod: dict[str, Any]
    # False for a pod of a dead scheduler whose task already ended: taken only to be disposed of.
    ours: bool


def find_orphans(
    api: client.CoreV1Api,
    namespaces: Iterable[str | None],
    tries: Iterable[identity.TaskRef],
    dead_scheduler_ids: Iterable[str],
) -> list[Orphan]:
    """Pods awaiting a verdict that run one of `tries`, or were launched by a dead scheduler."""
    wanted = set(tries)
    dead = {identity.safe_label_value(i) for i in dead_scheduler_ids}
    orphans = []
    for namespace in namespaces:
        if namespace:
            response = api.list_namespaced_pod(
                namespace, label_selector=identity.selector(), _preload_content=False
            )
        else:
            response = api.list_pod_for_all_namespaces(
                label_selector=identity.selector(), _preload_content=False
            )
        for pod in read_json(response)["items"]:
            meta: dict[str, Any] = pod["metadata"]
            ref = identity.ref_from_annotations(meta.get("annotations"))
            if ref is None:
                continue
            ours = ref in wanted
            if ours or (meta.get("labels") or {}).get(identity.WORKER_LABEL) in dead:
                orphans.append(Orphan(ref, meta["namespace"], meta["name"], pod, ours))
    return orphans
