"""The executor builds new tries' pods on a thread of its own, off Airflow's loop. A try Airflow
takes back while its pod is being built must end with no pod and no report, and the same try
queued again meanwhile must get a pod of a name of its own, whose end is reported: the executor
whole, against a real API server and node."""

from __future__ import annotations

import threading
import time
from collections import Counter
from types import SimpleNamespace

import pytest
from airflow.models.taskinstancekey import TaskInstanceKey
from airflow.utils.state import TaskInstanceState
from devcluster import control_plane
from kubernetes import client

from k8s_executor.executor import KubernetesExecutor
from tests.helpers import audit_entries, configure_executor

pytestmark = pytest.mark.cluster


def task_pods(core: client.CoreV1Api, namespace: str) -> list[str]:
    return sorted(
        f"{p.metadata.annotations.get('task_id')}:{p.metadata.name}"
        for p in core.list_namespaced_pod(namespace).items
    )


def test_a_try_taken_back_while_its_pod_is_built_leaves_no_pod_and_no_report(
    cluster: control_plane.ClusterState,
    core: client.CoreV1Api,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    configure_executor(monkeypatch, cluster.kubeconfig, namespace)
    executor = KubernetesExecutor(parallelism=10)
    executor.start()
    try:
        # The builder is busy: both tries below wait behind this.
        gate = threading.Event()
        executor._builder.submit(gate.wait, 60)
        taken_back = TaskInstanceKey("builder", "taken_back", "run", 1, -1)
        queued_again = TaskInstanceKey("builder", "queued_again", "run", 1, -1)
        executor.execute_async(taken_back, ["sh", "-c", "sleep 60"])
        executor.execute_async(queued_again, ["sh", "-c", "sleep 60"])
        executor.revoke_task(ti=SimpleNamespace(key=taken_back))
        executor.revoke_task(ti=SimpleNamespace(key=queued_again))
        # Airflow queues the same try again before its first pod was built.
        executor.execute_async(queued_again, ["sh", "-c", "echo done"])
        # Handed over to this scheduler while it waits for the builder (a scheduler that took
        # itself for dead): held here already, adoption must not take it for an orphan.
        handed = SimpleNamespace(key=queued_again, state="queued", queued_by_job_id=None)
        assert executor.try_adopt_task_instances([handed]) == []
        gate.set()
        deadline = time.monotonic() + 90
        while queued_again not in executor.event_buffer and time.monotonic() < deadline:
            executor.sync()
            time.sleep(0.2)
        state, _ = executor.event_buffer[queued_again]
        assert state == TaskInstanceState.SUCCESS
        # Whatever of the first builds reached the API server is gone again.
        while task_pods(core, namespace) and time.monotonic() < deadline:
            executor.sync()
            time.sleep(0.2)
        assert task_pods(core, namespace) == []
        for _ in range(10):
            executor.sync()
            time.sleep(0.2)
        assert set(executor.event_buffer) == {queued_again}
        # The try queued again got a pod of its own name: no name was asked for twice.
        creates = Counter(
            (e.get("objectRef") or {}).get("name")
            for e in audit_entries(core, control_plane.audit_log(cluster), namespace)
            # A create retried after an overload (429, 5xx) asks for the same name again, rightly.
            if e["verb"] == "create"
            and (e.get("responseStatus") or {}).get("code", 0) not in (429, 500, 502, 503, 504)
            and e.get("stage") == "ResponseComplete"
            and "subresource" not in e.get("objectRef", {})
        )
        assert creates and max(creates.values()) == 1, creates
    finally:
        executor.end()
