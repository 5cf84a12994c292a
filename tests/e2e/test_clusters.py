"""One Airflow, one executor, two development clusters (each its own control plane and node), and a
third cluster no API server answers for: tasks go to the cluster their executor_config or queue
names; the loss of one cluster's API server holds back only its own tasks; a task of the cluster
that never answers fails at its queued timeout naming the cluster; a killed scheduler's pods are
adopted in both clusters; and nothing is left behind in either."""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from devcluster import control_plane
from kubernetes import client

from tests.conftest import api_client_for
from tests.e2e.conftest import airflow_stack
from tests.helpers import audit_entries, pods_created, wait_for
from tests.least_privilege import executor_kubeconfig, grant_workers

pytestmark = pytest.mark.e2e

DAG = "e2e_clusters"
GONE_DAG = "e2e_cluster_gone"
# Short, for the task of the cluster that never answers to fail within the test; Airflow's own
# check of queued tasks is put off, so that the executor's deadline is what fails it.
QUEUED_TIMEOUT_S = 120
EAST_TASKS = {"east_by_config", "east_by_queue"}
TASKS = {"in_default", *EAST_TASKS}


@pytest.fixture(scope="module")
def east() -> Iterator[control_plane.ClusterState]:
    """The second cluster: a control plane and a node of its own."""
    directory = control_plane.default_cluster_dir("tests-east")
    state = control_plane.up(directory)
    yield state
    if not os.environ.get("K8S_EXECUTOR_KEEP_CLUSTER"):
        control_plane.down(directory)


def _pod_tasks(pods: list[str]) -> set[str]:
    # A pod's name starts with its DAG's and task's (identity.pod_name).
    return {task for task in TASKS for pod in pods if task.replace("_", "-") in pod}


def test_tasks_go_to_their_cluster_and_one_clusters_loss_holds_back_only_its_own(
    cluster: control_plane.ClusterState, core: client.CoreV1Api, east: control_plane.ClusterState
) -> None:
    east_core = client.CoreV1Api(api_client_for(east.kubeconfig))
    east_namespace = f"e2e-east-{uuid.uuid4().hex[:8]}"
    east_core.create_namespace({"metadata": {"name": east_namespace}})
    grant_workers(east_core.api_client, east_namespace)
    east_kubeconfig = executor_kubeconfig(
        east, east_core.api_client, f"airflow-{east_namespace}", [east_namespace]
    )
    # A cluster whose API server is gone: east's credentials, a port nothing listens on.
    gone_config = yaml.safe_load(east_kubeconfig.read_text())
    gone_config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{control_plane.free_port()}"
    gone_kubeconfig = east_kubeconfig.with_name("gone.kubeconfig")
    gone_kubeconfig.write_text(yaml.safe_dump(gone_config))
    clusters = {
        "east": {"config_file": str(east_kubeconfig), "namespace": east_namespace},
        "gone": {"config_file": str(gone_kubeconfig), "namespace": "gone"},
    }
    hold = Path(tempfile.mkdtemp(prefix="k8s-executor-clusters-")) / "finish"
    try:
        with airflow_stack(
            cluster,
            core,
            AIRFLOW__KUBERNETES_EXECUTOR__CLUSTERS=json.dumps(clusters),
            AIRFLOW__KUBERNETES_EXECUTOR__QUEUE_CLUSTERS=json.dumps({"east": "east"}),
            AIRFLOW__KUBERNETES_EXECUTOR__DELETE_WORKER_PODS="True",
            AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT=str(QUEUED_TIMEOUT_S),
            AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT_CHECK_INTERVAL="3600",
        ) as stack:
            stack.wait_for_dag(DAG)
            stack.wait_for_dag(GONE_DAG)

            # 0. A task of the cluster that never answers: it waits while the others run.
            stack.trigger(GONE_DAG, "gone")

            # 1. Each task runs in the cluster its executor_config or queue names.
            stack.trigger(DAG, "routed")
            assert stack.wait_for_run(DAG, "routed") == "success", stack.task_states(DAG, "routed")
            default_pods = pods_created(
                audit_entries(core, control_plane.audit_log(cluster), stack.namespace)
            )
            east_pods = pods_created(audit_entries(east_core, control_plane.audit_log(east), east_namespace))
            assert _pod_tasks(default_pods) == {"in_default"}, default_pods
            assert _pod_tasks(east_pods) == EAST_TASKS, east_pods

            # 2. East's API server is lost: only its tasks wait; the default cluster's finishes.
            control_plane.stop_component(Path(east.directory), "kube-apiserver")
            try:
                stack.trigger(DAG, "east-lost")
                wait_for(
                    lambda: (
                        stack.task_states(DAG, "east-lost").get(("in_default", -1), (None, 0))[0] == "success"
                    ),
                    "the default cluster's task to succeed while east is lost",
                    timeout=180,
                    interval=1,
                )
                states = stack.task_states(DAG, "east-lost")
                assert {task: states[(task, -1)][0] for task in EAST_TASKS} == dict.fromkeys(
                    EAST_TASKS, "queued"
                ), states
            finally:
                control_plane.restart_component(Path(east.directory), "kube-apiserver")
            # East back within their queued timeout: its tasks run, on their first try.
            assert stack.wait_for_run(DAG, "east-lost") == "success", stack.task_states(DAG, "east-lost")
            assert {state[1] for state in stack.task_states(DAG, "east-lost").values()} == {1}

            # The task of the cluster that never answered fails at its queued timeout, and says why.
            assert stack.wait_for_run(GONE_DAG, "gone") == "failed"
            reason = stack.failure_reasons(GONE_DAG, "gone", "in_gone")
            assert " in cluster gone: " in reason and "could not be created" in reason, reason

            # 3. The scheduler is killed with a pod running in each cluster; its successor adopts both.
            stack.airflow(
                "dags", "trigger", DAG, "--run-id", "adopted", "--conf", json.dumps({"hold": str(hold)})
            )

            def running_in_both() -> bool:
                here = core.list_namespaced_pod(stack.namespace, label_selector="run_id=adopted").items
                there = east_core.list_namespaced_pod(east_namespace, label_selector="run_id=adopted").items
                return [p.status.phase for p in here] == ["Running"] and [p.status.phase for p in there] == [
                    "Running",
                    "Running",
                ]

            wait_for(running_in_both, "a pod running in each cluster", timeout=300, interval=1)
            stack.kill_component("scheduler")
            stack.start_component("scheduler", name="scheduler-b")
            wait_for(
                lambda: (
                    "adopted 3 of 3 task instances"
                    in (stack.home / "scheduler-b.log").read_text(errors="replace")
                ),
                "the new scheduler to adopt the three pods",
                timeout=300,
                interval=1,
            )
            hold.touch()
            assert stack.wait_for_run(DAG, "adopted") == "success", stack.task_states(DAG, "adopted")
            # Adopted, not run again: each task on its first try.
            assert {state[1] for state in stack.task_states(DAG, "adopted").values()} == {1}

            # 4. Nothing left behind in either cluster.
            wait_for(
                lambda: (
                    not core.list_namespaced_pod(stack.namespace).items
                    and not east_core.list_namespaced_pod(east_namespace).items
                ),
                "every pod deleted in both clusters",
                timeout=180,
                interval=1,
            )
    finally:
        east_core.delete_namespace(east_namespace)
