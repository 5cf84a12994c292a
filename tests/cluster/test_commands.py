"""`airflow kubernetes ...` run as an operator runs it: the `airflow` command against the real API server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from devcluster import build, control_plane
from kubernetes import client

from k8s_executor import identity
from k8s_executor.airflow_adapter import AIRFLOW_VERSION
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


def airflow(home: Path, cluster: control_plane.ClusterState, namespace: str, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__EXECUTOR=f"{EXECUTOR_ALIAS}:k8s_executor.KubernetesExecutor",
        AIRFLOW__CORE__DAGS_FOLDER=str(DAGS),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__KUBERNETES_EXECUTOR__IN_CLUSTER="False",
        AIRFLOW__KUBERNETES_EXECUTOR__CONFIG_FILE=str(cluster.kubeconfig),
        AIRFLOW__KUBERNETES_EXECUTOR__NAMESPACE=namespace,
    )
    done = subprocess.run(
        [str(AIRFLOW), "kubernetes", *args], env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, f"airflow kubernetes {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "airflow_local_settings.py").write_text(HOOK)
    return tmp_path


def executor_pod(name: str, script: str, ours: bool = True, **spec: Any) -> dict[str, Any]:
    ref = identity.TaskRef("cleanup", name, "run")
    return {
        "metadata": {
            "name": name,
            "labels": identity.labels(ref, "cli-test", AIRFLOW_VERSION) if ours else {"app": "other"},
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
