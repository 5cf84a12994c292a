"""Several clusters behind one executor: which cluster a task's pod goes to, and what each
cluster has of its own.

Each cluster named in `[kubernetes_executor] clusters` (and the section's own, `default`) gets a
`Cluster`: its settings, its own client and credentials, and its own `AirflowKubernetesScheduler`
with its ledger, launcher, watchers, rate limit and resourceVersions. Nothing is shared between
two clusters but Airflow's loop and the executor's errands, which never wait: a cluster that
cannot be reached holds back only the tasks routed to it.
"""

from __future__ import annotations

import queue
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubernetes import client

from k8s_executor import executor_config
from k8s_executor.executor_config import ExecutorConfigError
from k8s_executor.identity import DEFAULT_CLUSTER
from k8s_executor.pod_building import PodBuildError, PodDefaults
from k8s_executor.scheduler import AirflowKubernetesScheduler, PodLaunch
from k8s_executor.settings import ExecutorSettings


def route(
    asked: str | None, task_queue: str | None, queue_clusters: Mapping[str, str], known: Sequence[str]
) -> str:
    """The cluster a task runs in: the one its executor_config names, else the one its queue is
    routed to, else the default. A cluster not configured fails the task, naming those that are."""
    if asked is None:
        return queue_clusters.get(task_queue or "", DEFAULT_CLUSTER)
    if asked not in known:
        raise ExecutorConfigError(
            f"executor_config['cluster'] is {asked!r}, which is not one of the executor's clusters "
            f"({', '.join(known)}; [kubernetes_executor] clusters)"
        )
    return asked


def route_task(task: Any, queue_clusters: Mapping[str, str], known: Sequence[str]) -> str:
    """`route` for a task instance or a DAG's task: of its executor_config's cluster and its queue.
    A bad executor_config raises ExecutorConfigError, as at launch."""
    asked = executor_config.parse(getattr(task, "executor_config", None)).cluster
    return route(asked, getattr(task, "queue", None), queue_clusters, known)


def where(cluster: str, several: bool) -> str:
    """How a message names a cluster: only where the executor has more than one."""
    return f" in cluster {cluster}" if several else ""


SWEEP_RETRY_MAX_S = 300.0


def sweep_retry_s(failures: int) -> float:
    """How long a cluster's sweep waits after `failures` failed sweeps in a row: none after none,
    then 10 s, doubling up to five minutes, so a lost cluster is not listed at every liveness check."""
    return 0.0 if failures <= 0 else min(SWEEP_RETRY_MAX_S, 10.0 * 2 ** (failures - 1))


def check_watched(settings: ExecutorSettings, namespace: str, cluster: str, several: bool) -> None:
    """A pod in a namespace no watcher of its cluster sees would never report back: refused up
    front, naming where to add the namespace."""
    watched = settings.watched_namespaces
    if None in watched or namespace in watched:
        return
    section = f"[kubernetes_executor] clusters, cluster {cluster}:" if several else "[kubernetes_executor]"
    raise PodBuildError(
        f"metadata.namespace {namespace!r} is not watched by this executor{where(cluster, several)} "
        f"(watching {', '.join(str(n) for n in watched)}); set {section} multi_namespace_mode = True "
        "and add it to multi_namespace_mode_namespace_list"
    )


@dataclass(frozen=True)
class Cluster:
    """One cluster's part of the executor: its scheduler shell (which holds its settings, client
    and queues) and the defaults of the pods built for it."""

    scheduler: AirflowKubernetesScheduler
    defaults: PodDefaults

    @property
    def name(self) -> str:
        return self.scheduler.cluster

    @property
    def settings(self) -> ExecutorSettings:
        return self.scheduler.settings

    @property
    def kube_client(self) -> client.CoreV1Api:
        return self.scheduler.kube_client

    @property
    def task_queue(self) -> queue.Queue[PodLaunch]:
        """Pods built for this cluster, waiting for its launcher."""
        return self.scheduler.task_queue

    def where(self, several: bool) -> str:
        return where(self.name, several)
