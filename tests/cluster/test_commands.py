"""`airflow kubernetes ...` run as an operator runs it: the `airflow` command against the real API server."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from devcluster import build, control_plane
from kubernetes import client

from k8s_executor import identity
from k8s_executor.airflow_adapter import AIRFLOW_VERSION
from tests.conftest import fresh_namespace
from tests.helpers import wait_for, wait_for_pod_phase

pytestmark = pytest.mark.cluster

DAGS = Path(__file__).parent / "dags_cli"
# Configured under an alias, which names the executor's pods (identity.executor_identity).
EXECUTOR_ALIAS = "cli-pods"
AIRFLOW = Path(sys.executable).parent / "airflow"
HOOK = """
def pod_mutation_hook(pod):
    pod.metadata.annotations["hooked-by"] = "local-settings"
"""
# Pending pods older than this are "stuck"; the young one must stay younger through both runs.
PENDING_MINUTES = 0.5


def run_airflow(
    home: Path,
    cluster: control_plane.ClusterState,
    namespace: str,
    *args: str,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    full_env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__EXECUTOR=f"{EXECUTOR_ALIAS}:k8s_executor.KubernetesExecutor",
        AIRFLOW__CORE__DAGS_FOLDER=str(DAGS),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__KUBERNETES_EXECUTOR__IN_CLUSTER="False",
        AIRFLOW__KUBERNETES_EXECUTOR__CONFIG_FILE=str(cluster.kubeconfig),
        AIRFLOW__KUBERNETES_EXECUTOR__NAMESPACE=namespace,
    )
    full_env.update(env or {})
    return subprocess.run(
        [str(AIRFLOW), "kubernetes", *args], env=full_env, capture_output=True, text=True, timeout=180
    )


def airflow(
    home: Path,
    cluster: control_plane.ClusterState,
    namespace: str,
    *args: str,
    env: dict[str, str] | None = None,
) -> str:
    done = run_airflow(home, cluster, namespace, *args, env=env)
    assert done.returncode == 0, f"airflow kubernetes {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "airflow_local_settings.py").write_text(HOOK)
    return tmp_path


def executor_pod(
    name: str, script: str, ours: bool = True, cluster: str = identity.DEFAULT_CLUSTER, **spec: Any
) -> dict[str, Any]:
    ref = identity.TaskRef("cleanup", name, "run")
    labels = {**identity.labels(ref, "cli-test", AIRFLOW_VERSION), **identity.cluster_labels(cluster)}
    return {
        "metadata": {
            "name": name,
            "labels": labels if ours else {"app": "other"},
            "annotations": identity.annotations_for(ref),
        },
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "base", "image": "busybox", "command": ["sh", "-c", script]}],
            **spec,
        },
    }


UNSCHEDULABLE = {"nodeSelector": {"no-such-node": "true"}}


def listed(output: str, verb: str) -> dict[str, str]:
    return dict(re.findall(rf"^{verb} (\S+): (.+)$", output, re.MULTILINE))


def test_cleanup_pods_deletes_what_its_dry_run_lists_and_spares_running_tasks(
    cluster: control_plane.ClusterState, core: client.CoreV1Api, namespace: str, home: Path
) -> None:
    stuck_since = time.monotonic()
    core.create_namespaced_pod(namespace, executor_pod("stuck", "true", **UNSCHEDULABLE))
    core.create_namespaced_pod(namespace, executor_pod("evicted", "true", **UNSCHEDULABLE))
    core.create_namespaced_pod(namespace, executor_pod("succeeded", "exit 0"))
    core.create_namespaced_pod(namespace, executor_pod("failed", "exit 1"))
    core.create_namespaced_pod(namespace, executor_pod("running", "sleep 600"))
    core.create_namespaced_pod(namespace, executor_pod("foreign", "exit 0", ours=False))
    # What a kubelet writes when it evicts a pod; this one is on no node, so no one overwrites it.
    core.patch_namespaced_pod_status(
        "evicted",
        namespace,
        {"status": {"phase": "Failed", "reason": "Evicted", "message": "The node was low on memory."}},
    )
    wait_for_pod_phase(core, namespace, "succeeded", ("Succeeded",))
    wait_for_pod_phase(core, namespace, "failed", ("Failed",))
    wait_for_pod_phase(core, namespace, "running", ("Running",))
    wait_for_pod_phase(core, namespace, "foreign", ("Succeeded",))
    time.sleep(max(0.0, PENDING_MINUTES * 60 + 3 - (time.monotonic() - stuck_since)))
    core.create_namespaced_pod(namespace, executor_pod("young", "true", **UNSCHEDULABLE))

    minutes = str(PENDING_MINUTES)
    dry = listed(
        airflow(home, cluster, namespace, "cleanup-pods", "--min-pending-minutes", minutes, "--dry-run"),
        "would delete",
    )
    expected = {f"{namespace}/{name}" for name in ("stuck", "evicted", "succeeded", "failed")}
    assert set(dry) == expected
    assert dry[f"{namespace}/evicted"] == "evicted"
    assert dry[f"{namespace}/succeeded"] == "succeeded"
    assert dry[f"{namespace}/failed"] == "failed"
    assert dry[f"{namespace}/stuck"].startswith("pending for ")
    assert len(core.list_namespaced_pod(namespace).items) == 7, "a dry run deletes nothing"

    deleted = listed(
        airflow(home, cluster, namespace, "cleanup-pods", "--min-pending-minutes", minutes), "deleted"
    )
    assert set(deleted) == set(dry)

    def names() -> set[str]:
        return {p.metadata.name for p in core.list_namespaced_pod(namespace).items}

    wait_for(lambda: names() == {"running", "young", "foreign"}, "only the spared pods left", timeout=90)
    assert core.read_namespaced_pod("running", namespace).status.phase == "Running"
    assert core.read_namespaced_pod("young", namespace).status.phase == "Pending"


def test_generate_dag_yaml_writes_pods_the_api_server_accepts(
    cluster: control_plane.ClusterState, namespace: str, home: Path, tmp_path: Path
) -> None:
    out = tmp_path / "yaml"
    airflow(home, cluster, namespace, "generate-dag-yaml", "cli_render", "--output-path", str(out))
    files = sorted(out.glob("*.yaml"))
    assert len(files) == 2
    pods = {yaml.safe_load(f.read_text())["metadata"]["labels"]["task_id"]: f for f in files}
    assert set(pods) == {"plain", "configured"}
    configured = yaml.safe_load(pods["configured"].read_text())
    assert configured["metadata"]["namespace"] == namespace
    assert configured["metadata"]["annotations"]["hooked-by"] == "local-settings"
    # The owner label the executor launches this task's pod with, so the YAML selects as its pods do.
    for path in files:
        labels = yaml.safe_load(path.read_text())["metadata"]["labels"]
        assert labels[identity.OWNER_LABEL] == identity.executor_identity(EXECUTOR_ALIAS)
    assert configured["spec"]["containers"][0]["image"] == "custom-image:1"
    for path in files:
        applied = subprocess.run(
            [
                # Built with the control plane, so a fresh machine needs no kubectl of its own.
                str(build.ensure_binaries(log=False) / "kubectl"),
                "--kubeconfig",
                str(cluster.kubeconfig),
                "apply",
                "--dry-run=server",
                "-f",
                str(path),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert applied.returncode == 0, f"{path.name}: {applied.stderr}"
        assert "created (server dry run)" in applied.stdout


def test_explain_names_the_source_of_each_field(
    cluster: control_plane.ClusterState, namespace: str, home: Path
) -> None:
    output = airflow(home, cluster, namespace, "explain", "cli_render", "configured")
    sources = dict(re.findall(r"^# (\S+) +(\S.*)$", output, re.MULTILINE))
    assert sources["spec.containers[base].image"] == "executor_config (dict form)"
    assert sources["spec.containers[base].resources.requests.memory"] == "executor_config (dict form)"
    # Both forms set `team`; pod_override applies last and wins.
    assert sources["metadata.labels.team"] == "executor_config (pod_override)"
    assert sources["metadata.labels.tier"] == "executor_config (pod_override)"
    assert sources["spec.containers[base].env[FROM_OVERRIDE].value"] == "executor_config (pod_override)"
    assert sources["metadata.annotations.hooked-by"] == "mutation hook"
    assert sources["spec.restartPolicy"] == "default"
    assert sources["metadata.namespace"] == "default"
    # Airflow logs to stdout too; the pod's YAML starts at the command's own first line.
    pod = yaml.safe_load(output[output.index("# pod of cli_render.configured") :])
    assert pod["metadata"]["labels"]["team"] == "platform"
    assert pod["metadata"]["namespace"] == namespace


# --- several clusters: a second one on the same control plane, in a namespace of its own ---------
CLUSTERS_DAG = """
from __future__ import annotations

import datetime

try:
    from airflow.providers.standard.operators.bash import BashOperator
    from airflow.sdk import DAG
except ImportError:  # Airflow 2
    from airflow import DAG
    from airflow.operators.bash import BashOperator

with DAG("cli_clusters", schedule=None, start_date=datetime.datetime(2026, 1, 1), catchup=False):
    BashOperator(task_id="plain", bash_command="true")
    BashOperator(task_id="named", bash_command="true", executor_config={"cluster": "x"})
    BashOperator(task_id="queued", bash_command="true", queue="xq")
    BashOperator(task_id="lost", bash_command="true", executor_config={"cluster": "nope"})
"""


@pytest.fixture
def x_namespace(core: client.CoreV1Api) -> Iterator[str]:
    """The namespace of cluster `x`, which is the development cluster again."""
    with fresh_namespace(core, "x") as name:
        yield name


def clusters_env(
    cluster: control_plane.ClusterState, x_namespace: str, dags: Path | None = None
) -> dict[str, str]:
    env = {
        "AIRFLOW__KUBERNETES_EXECUTOR__CLUSTERS": json.dumps(
            {"x": {"config_file": str(cluster.kubeconfig), "namespace": x_namespace}}
        ),
        "AIRFLOW__KUBERNETES_EXECUTOR__QUEUE_CLUSTERS": json.dumps({"xq": "x"}),
    }
    if dags:
        env["AIRFLOW__CORE__DAGS_FOLDER"] = str(dags)
    return env


def by_cluster(output: str, verb: str) -> set[tuple[str, str]]:
    """(cluster, namespace/pod) of each `cluster NAME: VERB namespace/pod: reason` line."""
    return set(re.findall(rf"^cluster (\S+): {verb} (\S+): .+$", output, re.MULTILINE))


def test_cleanup_pods_cleans_one_cluster_with_cluster_and_every_cluster_without(
    cluster: control_plane.ClusterState,
    core: client.CoreV1Api,
    namespace: str,
    x_namespace: str,
    home: Path,
) -> None:
    core.create_namespaced_pod(namespace, executor_pod("done", "exit 0"))
    core.create_namespaced_pod(x_namespace, executor_pod("done", "exit 0", cluster="x"))
    for ns in (namespace, x_namespace):
        wait_for_pod_phase(core, ns, "done", ("Succeeded",))
    env = clusters_env(cluster, x_namespace)

    dry = airflow(home, cluster, namespace, "cleanup-pods", "--dry-run", env=env)
    assert by_cluster(dry, "would delete") == {("default", f"{namespace}/done"), ("x", f"{x_namespace}/done")}
    dry_x = airflow(home, cluster, namespace, "cleanup-pods", "--cluster", "x", "--dry-run", env=env)
    assert by_cluster(dry_x, "would delete") == {("x", f"{x_namespace}/done")}
    # --namespace narrows every cluster cleaned to that namespace. x is the same control plane,
    # but it takes only the pods labelled as its own: not the default cluster's pod there.
    narrowed = airflow(
        home, cluster, namespace, "cleanup-pods", "--namespace", namespace, "--dry-run", env=env
    )
    assert by_cluster(narrowed, "would delete") == {("default", f"{namespace}/done")}

    deleted = airflow(home, cluster, namespace, "cleanup-pods", "--cluster", "x", env=env)
    assert by_cluster(deleted, "deleted") == {("x", f"{x_namespace}/done")}
    wait_for(lambda: not core.list_namespaced_pod(x_namespace).items, "cluster x's pod gone", timeout=90)
    assert [p.metadata.name for p in core.list_namespaced_pod(namespace).items] == ["done"]

    deleted = airflow(home, cluster, namespace, "cleanup-pods", env=env)
    assert by_cluster(deleted, "deleted") == {("default", f"{namespace}/done")}
    wait_for(
        lambda: not core.list_namespaced_pod(namespace).items, "the default cluster's pod gone", timeout=90
    )

    unknown = run_airflow(home, cluster, namespace, "cleanup-pods", "--cluster", "gpu", env=env)
    assert unknown.returncode != 0
    assert "--cluster 'gpu' is not one of the executor's clusters (default, x;" in unknown.stderr


def test_tasks_are_rendered_for_the_cluster_they_would_run_in(
    cluster: control_plane.ClusterState, namespace: str, x_namespace: str, home: Path, tmp_path: Path
) -> None:
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "cli_clusters.py").write_text(CLUSTERS_DAG)
    env = clusters_env(cluster, x_namespace, dags)
    out = tmp_path / "yaml"

    done = run_airflow(
        home, cluster, namespace, "generate-dag-yaml", "cli_clusters", "--output-path", str(out), env=env
    )
    # The task naming a cluster that is not configured is reported as any refused executor_config.
    assert done.returncode == 1, done.stderr
    assert "task lost: executor_config['cluster'] is 'nope'" in done.stderr
    assert "(default, x;" in done.stderr
    assert "no pod could be rendered for task(s) lost" in done.stderr
    assert re.search(r"^named in cluster x: ", done.stdout, re.MULTILINE)
    rendered = {
        pod["metadata"]["labels"]["task_id"]: pod["metadata"]["namespace"]
        for pod in (yaml.safe_load(f.read_text()) for f in out.glob("*.yaml"))
    }
    assert rendered == {"plain": namespace, "named": x_namespace, "queued": x_namespace}

    def explained(task_id: str, *args: str) -> dict[str, Any]:
        output = airflow(home, cluster, namespace, "explain", "cli_clusters", task_id, *args, env=env)
        start = output.index("# pod of cli_clusters.")
        return {"header": output[start:].splitlines()[0], **yaml.safe_load(output[start:])}

    named = explained("named")
    assert named["header"] == "# pod of cli_clusters.named (run rendered, cluster x)"
    assert named["metadata"]["namespace"] == x_namespace
    assert explained("queued")["metadata"]["namespace"] == x_namespace
    # --cluster renders a task for that cluster, whatever its executor_config and queue say.
    assert explained("queued", "--cluster", "default")["metadata"]["namespace"] == namespace

    lost = run_airflow(home, cluster, namespace, "explain", "cli_clusters", "lost", env=env)
    assert lost.returncode != 0
    assert "task lost: executor_config['cluster'] is 'nope'" in lost.stderr
    assert "(default, x;" in lost.stderr
    unknown = run_airflow(
        home, cluster, namespace, "generate-dag-yaml", "cli_clusters", "--cluster", "y", env=env
    )
    assert unknown.returncode != 0
    assert "--cluster 'y' is not one of the executor's clusters (default, x;" in unknown.stderr
