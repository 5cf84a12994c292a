"""Two teams in one scheduler (Airflow 3's multi-team mode): each team's executor runs its tasks
in its own namespace, from its own template, and never lists or watches the other's namespace.

Each team's executor reaches the cluster as a user of its own, allowed in its namespace only, so
the API server's audit log says which executor made each request.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import yaml
from devcluster import control_plane
from devcluster.airflow_stack import AirflowStack
from kubernetes import client

from k8s_executor import identity
from tests.e2e.conftest import airflow_stack
from tests.least_privilege import executor_kubeconfig

pytestmark = pytest.mark.e2e

TEAMS = ("team_a", "team_b")
DAG = """
import datetime
import os

from airflow.sdk import DAG, task

with DAG("e2e_{team}", start_date=datetime.datetime(2024, 1, 1), schedule=None, catchup=False):

    @task
    def whose() -> str:
        return os.environ["TEAM_TEMPLATE"]

    whose()
"""


def test_two_teams_run_in_their_own_namespaces_with_their_own_templates(
    cluster: control_plane.ClusterState, core: client.CoreV1Api
) -> None:
    suffix = uuid.uuid4().hex[:6]
    namespaces = {team: f"e2e-{team.replace('_', '-')}-{suffix}" for team in TEAMS}
    users = {team: f"{team.replace('_', '-')}-{suffix}" for team in TEAMS}
    for namespace in namespaces.values():
        core.create_namespace({"metadata": {"name": namespace}})
    scratch = Path(f"/tmp/k8s-executor-teams-{suffix}")
    scratch.mkdir()
    env = {
        "AIRFLOW__CORE__MULTI_TEAM": "True",
        "executor": "LocalExecutor;team_a=k8s_executor.KubernetesExecutor;team_b=k8s_executor.KubernetesExecutor",
        "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(
            [
                {
                    "name": f"bundle_{team}",
                    "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
                    "kwargs": {"path": str(scratch / team)},
                    "team_name": team,
                }
                for team in TEAMS
            ]
        ),
    }
    for team in TEAMS:
        prefix = f"AIRFLOW__{team.upper()}___KUBERNETES_EXECUTOR__"
        env[f"{prefix}NAMESPACE"] = namespaces[team]
        env[f"{prefix}POD_TEMPLATE_FILE"] = str(scratch / f"{team}.yaml")
        env[f"{prefix}CONFIG_FILE"] = str(
            executor_kubeconfig(cluster, core.api_client, users[team], [namespaces[team]])
        )

    def before_start(stack: AirflowStack) -> None:
        base = yaml.safe_load(stack.pod_template().read_text())
        for team in TEAMS:
            (scratch / team).mkdir()
            (scratch / team / f"e2e_{team}.py").write_text(DAG.replace("{team}", team))
            pod = json.loads(json.dumps(base))
            pod["metadata"]["labels"] = {"team": team}
            pod["spec"]["containers"][0]["env"].append({"name": "TEAM_TEMPLATE", "value": team})
            (scratch / f"{team}.yaml").write_text(yaml.safe_dump(pod))
            stack.airflow("teams", "create", team)

    try:
        with airflow_stack(cluster, core, before_start=before_start, **env) as stack:
            for team in TEAMS:
                stack.wait_for_dag(f"e2e_{team}")
                stack.trigger(f"e2e_{team}", "teams-1")
            for team in TEAMS:
                assert stack.wait_for_run(f"e2e_{team}", "teams-1", timeout=300) == "success", (
                    stack.explain_run(f"e2e_{team}", "teams-1"),
                    (stack.home / "scheduler.log").read_text(errors="replace")[-3000:],
                )
            for team, namespace in namespaces.items():
                [pod] = core.list_namespaced_pod(namespace).items
                assert pod.metadata.annotations["dag_id"] == f"e2e_{team}"
                assert pod.metadata.labels["team"] == team  # its team's template
                assert pod.metadata.labels[identity.OWNER_LABEL] == f"{team}.KubernetesExecutor"
                [(value,)] = stack.sql(
                    "SELECT value FROM xcom WHERE dag_id = %s AND run_id = 'teams-1'", f"e2e_{team}"
                )
                assert team in str(value)
            # Each team's executor made requests in its own namespace, and none anywhere else.
            audit = control_plane.audit_log(cluster).read_text(errors="replace").splitlines()
            for team, user in users.items():
                where = {
                    (entry.get("objectRef") or {}).get("namespace")
                    for entry in map(json.loads, (line for line in audit if user in line))
                    if entry["user"]["username"] == user
                }
                assert where == {namespaces[team]}, (team, where)
    finally:
        for namespace in namespaces.values():
            core.delete_namespace(namespace)
