"""A real Airflow 3 (PostgreSQL, API server, DAG processor, scheduler) on the development cluster."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from devcluster import control_plane
from devcluster.airflow_stack import AIRFLOW_MAJOR, AirflowStack
from kubernetes import client

from tests.least_privilege import executor_kubeconfig, grant_workers

# Each Airflow line runs its own suite (`./dev test` and `./dev test-airflow2`); DAG files and tests
# written for one line do not import on the other.
DAGS = Path(__file__).parent / ("dags" if AIRFLOW_MAJOR >= 3 else "dags_airflow2")
collect_ignore = (
    ["test_airflow2.py"]
    if AIRFLOW_MAJOR >= 3
    else [
        "test_kubernetes_executor.py",
        "test_local_kubernetes_executor.py",
        "test_failure_reasons.py",
        "test_pod_endings.py",
        # Airflow 2's LocalTaskJob fails its task on SIGTERM, before the executor hears of the
        # disruption: a disruption mid-run spends a retry there (docs/workloads.md).
        "test_disruptions.py",
        "test_unstarted_logs.py",
        # Airflow 3 installations (its REST API, DAGs and components); the credential code under
        # test is the same on both lines and has no Airflow branch.
        "test_credentials.py",
        "test_in_cluster.py",
        # Airflow 3's HA, multi-executor and multi-team installations; the ownership and disposal
        # rules they exercise have no Airflow branch, and the database queries they rely on are
        # run on this line too (assert_adapter_queries_answer).
        "test_ha_schedulers.py",
        "test_several_executors.py",
        "test_teams.py",
        "test_launch_failures.py",
        "test_callbacks.py",
        "test_connection_tests.py",
        "test_coordinator_queues.py",
        # Several clusters: routing and the per-cluster shells have no Airflow branch; Airflow 2's
        # queue reaches the routing through execute_async (tests/unit/test_clusters.py).
        "test_clusters.py",
        # The corpus's DAG is an Airflow 3 DAG file; the corpus itself runs on this line in the unit
        # suite, where every message is built by the same code.
        "test_bad_input.py",
        "dags",
    ]
)
collect_ignore.append("dags_airflow2")


@contextmanager
def airflow_stack(
    cluster: control_plane.ClusterState,
    core: client.CoreV1Api,
    extra_namespaces: tuple[str, ...] = (),
    kubeconfig_for: Callable[[str], Path] | None = None,
    before_start: Callable[[AirflowStack], None] | None = None,
    **env: str,
) -> Iterator[AirflowStack]:
    """A stack in a new namespace; `kubeconfig_for(namespace)` gives the executor's kubeconfig,
    `before_start(stack)` runs between the database's migration and Airflow's start."""
    namespace = f"e2e-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": namespace}})
    # Airflow runs as the operator would run it: bound to deploy/rbac/rbac.yaml's Role in each namespace it
    # launches pods in, so a call the Role does not allow fails the suite with a 403.
    kubeconfig = (
        kubeconfig_for(namespace)
        if kubeconfig_for
        else executor_kubeconfig(
            cluster, core.api_client, f"airflow-{namespace}", (namespace, *extra_namespaces)
        )
    )
    # The workers run under the namespace's default service account, bound as deploy/rbac/worker.yaml
    # says: the disruption guard reads its own pod.
    for each in (namespace, *extra_namespaces):
        grant_workers(core.api_client, each)
    home = Path(tempfile.mkdtemp(prefix="k8s-executor-e2e-"))
    extra_env = {
        "AIRFLOW__KUBERNETES_EXECUTOR__CONFIG_FILE": str(kubeconfig),
        # Keep finished pods (marked done) so the tests can read their specs.
        "AIRFLOW__KUBERNETES_EXECUTOR__DELETE_WORKER_PODS": "False",
        **env,
    }
    if extra_namespaces:
        extra_env["AIRFLOW__KUBERNETES_EXECUTOR__MULTI_NAMESPACE_MODE"] = "True"
        extra_env["AIRFLOW__KUBERNETES_EXECUTOR__MULTI_NAMESPACE_MODE_NAMESPACE_LIST"] = ",".join(
            (namespace, *extra_namespaces)
        )
    executor = extra_env.pop("executor", "k8s_executor.KubernetesExecutor")
    airflow = AirflowStack(
        home=home, cluster=cluster, namespace=namespace, executor=executor, extra_env=extra_env
    )
    try:
        airflow.prepare()
        for dag in DAGS.glob("*.py"):
            shutil.copy(dag, airflow.dags_folder)
        if before_start:
            before_start(airflow)
        airflow.start()
        yield airflow
    finally:
        # The home (logs of every Airflow component) stays in /tmp for a post-mortem.
        airflow.stop()
        core.delete_namespace(namespace)


@pytest.fixture(scope="module")
def stack(cluster: control_plane.ClusterState, core: client.CoreV1Api) -> Iterator[AirflowStack]:
    with airflow_stack(cluster, core) as airflow:
        yield airflow


# The port of a UDP socket playing the StatsD server, and every metric line it received.
Statsd = tuple[int, list[str]]


@pytest.fixture(scope="module")
def statsd() -> Iterator[Statsd]:
    """A UDP socket playing the StatsD server: every metric line the scheduler sends."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.5)
    received: list[str] = []
    stop = threading.Event()

    def listen() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                received.extend(sock.recv(65536).decode().splitlines())

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    yield sock.getsockname()[1], received
    stop.set()
    thread.join()
    sock.close()


def statsd_env(statsd: Statsd) -> dict[str, str]:
    return {
        "AIRFLOW__METRICS__STATSD_ON": "True",
        "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
        "AIRFLOW__METRICS__STATSD_PORT": str(statsd[0]),
        "AIRFLOW__METRICS__STATSD_PREFIX": "airflow",
    }


def assert_metrics_received(statsd: Statsd, *names: str) -> None:
    received = {line.split(":", 1)[0] for line in statsd[1]}
    ours = sorted(n for n in received if "k8s_executor" in n)
    for name in names:
        assert f"airflow.k8s_executor.{name}" in received, f"{name} not received; got {ours}"


ADAPTER_QUERIES = """
import json, sys
from k8s_executor import airflow_adapter, task_instances
from k8s_executor.identity import TaskRef
from k8s_executor.ledger import live_schedulers
import datetime
refs = [TaskRef(*json.loads(sys.argv[-1])), TaskRef("no-such-dag", "t", "r")]
jobs = task_instances.scheduler_jobs()
now = datetime.datetime.now(datetime.timezone.utc)
rows = task_instances.task_instance_rows(refs)
print(json.dumps({
    "alive": sorted(live_schedulers(jobs, now, airflow_adapter.scheduler_health_check_threshold_s())),
    "rows": [[list(k), v._asdict()] for k, v in rows.items()],
}))
"""


def assert_adapter_queries_answer(stack: AirflowStack, dag_id: str, run_id: str) -> None:
    """The executor's queries of Airflow's database (task_instances.py: which schedulers live; a
    try's task instance),
    run against this line's real schema: the running scheduler, and a try as the database has it."""
    [(task_id, map_index, try_number, queued_by)] = stack.sql(
        "SELECT task_id, map_index, try_number, queued_by_job_id FROM task_instance "
        "WHERE dag_id = %s AND run_id = %s ORDER BY task_id, map_index LIMIT 1",
        dag_id,
        run_id,
    )
    ref = [dag_id, task_id, run_id, try_number, map_index]
    script = ADAPTER_QUERIES.replace("sys.argv[-1]", repr(json.dumps(ref)))
    answer = json.loads(stack.python(script).strip().splitlines()[-1])
    [(job_id,)] = stack.sql(
        "SELECT id FROM job WHERE job_type = 'SchedulerJob' AND state = 'running' ORDER BY id DESC LIMIT 1"
    )
    assert str(job_id) in answer["alive"], answer
    state = stack.sql(
        "SELECT state FROM task_instance WHERE dag_id = %s AND run_id = %s AND task_id = %s AND map_index = %s",
        dag_id,
        run_id,
        task_id,
        map_index,
    )[0][0]
    row = {"try_number": try_number, "state": state, "queued_by": queued_by}
    assert answer["rows"] == [[ref, row]], answer
