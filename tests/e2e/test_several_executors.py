"""Several executors in one scheduler: ours, the official provider's and LocalExecutor, by alias.

Each task runs on the executor it names, and neither Kubernetes executor's requests touch the
other's pods: told apart in the API server's audit log by their user agents (the official
provider sends the client's default, this executor its own, kube_client.USER_AGENT).
"""

from __future__ import annotations

from collections import defaultdict

import pytest
from devcluster import control_plane
from kubernetes import client

from k8s_executor import identity
from tests.e2e.conftest import airflow_stack
from tests.helpers import audit_entries

pytestmark = pytest.mark.e2e

OFFICIAL = "airflow.providers.cncf.kubernetes.executors.kubernetes_executor.KubernetesExecutor"
RUN = "several-1"
DAG = """
import datetime
import os

from airflow.sdk import DAG, task

with DAG("e2e_several", start_date=datetime.datetime(2024, 1, 1), schedule=None, catchup=False):

    @task(executor="ours")
    def on_ours(i: int) -> str:
        return os.environ.get("HOSTNAME", "")

    @task(executor="official")
    def on_official(i: int) -> str:
        return os.environ.get("HOSTNAME", "")

    @task
    def on_default() -> str:
        return os.environ.get("AIRFLOW_IS_K8S_EXECUTOR_POD", "no pod")

    on_ours.expand(i=[0, 1, 2])
    on_official.expand(i=[0, 1, 2])
    on_default()
"""


def test_ours_the_official_and_local_executor_side_by_side(
    cluster: control_plane.ClusterState, core: client.CoreV1Api
) -> None:
    pytest.importorskip("airflow.providers.cncf.kubernetes")
    executors = f"LocalExecutor,ours:k8s_executor.KubernetesExecutor,official:{OFFICIAL}"
    with airflow_stack(cluster, core, executor=executors) as stack:
        (stack.dags_folder / "e2e_several.py").write_text(DAG)
        stack.wait_for_dag("e2e_several")
        stack.trigger("e2e_several", RUN)
        assert stack.wait_for_run("e2e_several", RUN, timeout=600) == "success", stack.explain_run(
            "e2e_several", RUN
        )
        pods = core.list_namespaced_pod(stack.namespace, label_selector=f"run_id={RUN}").items
        launched_by: dict[str, set[str]] = defaultdict(set)
        for pod in pods:
            labels = pod.metadata.labels
            owner = "ours" if labels.get(identity.OWNER_LABEL) == "ours" else "official"
            if owner == "official":
                assert labels.get("kubernetes_executor") == "True"
            launched_by[owner].add(pod.metadata.annotations["task_id"])
        # Each task on the executor it names; LocalExecutor's runs without a pod.
        assert dict(launched_by) == {"ours": {"on_ours"}, "official": {"on_official"}}
        assert len(pods) == 6
        ours = {p.metadata.name for p in pods if p.metadata.labels.get(identity.OWNER_LABEL) == "ours"}
        theirs = {p.metadata.name for p in pods} - ours
        touched: dict[str, set[str]] = defaultdict(set)
        for e in audit_entries(core, control_plane.audit_log(cluster), stack.namespace):
            agent = e.get("userAgent", "")
            name = (e.get("objectRef") or {}).get("name")
            if name and e.get("stage") == "ResponseComplete":
                if agent.startswith("airflow-k8s-executor/"):
                    touched["ours"].add(name)
                elif agent.startswith("OpenAPI-Generator/"):
                    touched["official"].add(name)
        assert touched["ours"] & theirs == set()
        assert touched["official"] & ours == set()
        assert ours <= touched["ours"] and theirs <= touched["official"]
