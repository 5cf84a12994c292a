"""What a kubelet gives a pod, on the process node: volumes at their mount paths, its own
ServiceAccount token bound to it, and the API server's address; and the executor's own
client running in-cluster from exactly those."""

from __future__ import annotations

import base64
import json
import os
import ssl
import sys
import textwrap
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from devcluster import control_plane
from kubernetes import client

from tests.helpers import pod_log, wait_for, wait_for_pod_phase
from tests.least_privilege import grant_service_account

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
CONFIG_DIR = "/srv/k8s-executor-test/config"


def python_pod(name: str, script: str, **spec: object) -> dict[str, object]:
    container = {
        "name": "base",
        "image": "python",
        "command": [sys.executable, "-c", textwrap.dedent(script)],
        **spec.pop("container", {}),  # type: ignore[dict-item]
    }
    return {"metadata": {"name": name}, "spec": {"restartPolicy": "Never", "containers": [container], **spec}}


def self_review(cluster: control_plane.ClusterState, token: str) -> tuple[int, str]:
    """Who the API server takes `token` for (a SelfSubjectReview any identity may make)."""
    context = ssl.create_default_context(cafile=str(Path(cluster.directory) / "pki" / "ca.crt"))
    request = urllib.request.Request(
        f"{cluster.server}/apis/authentication.k8s.io/v1/selfsubjectreviews",
        data=json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as answer:
            return answer.status, json.loads(answer.read())["status"]["userInfo"]["username"]
    except urllib.error.HTTPError as exc:
        return exc.code, ""


READ_EVERYTHING = f"""
    import json, os, ssl, urllib.request
    sa = "{SA_DIR}"
    token = open(sa + "/token").read()
    context = ssl.create_default_context(cafile=sa + "/ca.crt")
    host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
    request = urllib.request.Request(
        f"https://{{host}}:{{port}}/apis/authentication.k8s.io/v1/selfsubjectreviews",
        data=b'{{"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}}',
        headers={{"Authorization": "Bearer " + token, "Content-Type": "application/json"}},
        method="POST",
    )
    user = json.loads(urllib.request.urlopen(request, context=context).read())["status"]["userInfo"]
    print(json.dumps({{
        "namespace": open(sa + "/namespace").read(),
        "greeting": open("{CONFIG_DIR}/greeting").read(),
        # As with kubelet, the atomic writer's ..data and timestamped directory are there too.
        "config_files": sorted(n for n in os.listdir("{CONFIG_DIR}") if not n.startswith("..")),
        "single": open("/srv/k8s-executor-test/single.txt").read(),
        "password": open("/srv/k8s-executor-test/secret/pw").read(),
        "password_mode": oct(os.stat("/srv/k8s-executor-test/secret/pw").st_mode & 0o777),
        "labels": open("/srv/k8s-executor-test/info/labels").read(),
        "scratch_shared": open("/srv/k8s-executor-test/scratch/note").read(),
        "user": user["username"],
    }}))
"""


def test_a_pod_reads_its_volumes_and_reaches_the_api_server_with_its_projected_token(
    cluster: control_plane.ClusterState, core: client.CoreV1Api, namespace: str
) -> None:
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "cfg"}, "data": {"a": "hello", "b": "one"}}
    )
    core.create_namespaced_secret(
        namespace, {"metadata": {"name": "sec"}, "data": {"pw": base64.b64encode(b"s3cret").decode()}}
    )
    mounts = [
        {"name": "cfg", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "whole-cfg", "mountPath": "/srv/k8s-executor-test/single.txt", "subPath": "b"},
        {"name": "sec", "mountPath": "/srv/k8s-executor-test/secret"},
        {"name": "info", "mountPath": "/srv/k8s-executor-test/info"},
        {"name": "scratch", "mountPath": "/srv/k8s-executor-test/scratch"},
    ]
    pod = python_pod(
        "reader",
        READ_EVERYTHING,
        container={"volumeMounts": mounts},
        initContainers=[
            {
                "name": "prepare",
                "image": "busybox",
                "command": ["sh", "-c", "echo from-init > /srv/k8s-executor-test/scratch/note"],
                "volumeMounts": [{"name": "scratch", "mountPath": "/srv/k8s-executor-test/scratch"}],
            }
        ],
        volumes=[
            {"name": "cfg", "configMap": {"name": "cfg", "items": [{"key": "a", "path": "greeting"}]}},
            {"name": "whole-cfg", "configMap": {"name": "cfg"}},
            {"name": "sec", "secret": {"secretName": "sec", "defaultMode": 0o400}},
            {
                "name": "info",
                "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]},
            },
            {"name": "scratch", "emptyDir": {}},
        ],
    )
    pod["metadata"]["labels"] = {"app": "reader"}  # type: ignore[index]
    core.create_namespaced_pod(namespace, pod)
    done = wait_for_pod_phase(core, namespace, "reader", ("Succeeded", "Failed"), timeout=90)
    output = pod_log(core, namespace, "reader")
    assert done.status.phase == "Succeeded", output
    seen = json.loads(output.strip().splitlines()[-1])
    assert seen == {
        "namespace": namespace,
        "greeting": "hello",
        "config_files": ["greeting"],
        "single": "one",
        "password": "s3cret",
        "password_mode": "0o400",
        "labels": 'app="reader"',
        "scratch_shared": "from-init\n",
        "user": f"system:serviceaccount:{namespace}:default",
    }
    # The mounts were the container's own: nothing of them is visible on the host.
    assert not Path(CONFIG_DIR, "greeting").exists()
    assert not Path(SA_DIR, "token").exists()


def test_without_automount_a_pod_has_no_token(core: client.CoreV1Api, namespace: str) -> None:
    script = f"import os; print(os.path.exists('{SA_DIR}/token'))"
    core.create_namespaced_pod(namespace, python_pod("no-token", script, automountServiceAccountToken=False))
    wait_for_pod_phase(core, namespace, "no-token", ("Succeeded",), timeout=60)
    assert pod_log(core, namespace, "no-token").strip() == "False"


def test_a_pods_token_dies_with_the_pod(
    cluster: control_plane.ClusterState, core: client.CoreV1Api, namespace: str, tmp_path: Path
) -> None:
    tmp_path.chmod(0o755)
    script = f"""
        import shutil, time
        shutil.copy("{SA_DIR}/token", "/srv/k8s-executor-test/out/token")
        time.sleep(300)
    """
    out = {"name": "out", "mountPath": "/srv/k8s-executor-test/out"}
    pod = python_pod(
        "holder",
        script,
        container={"volumeMounts": [out]},
        volumes=[{"name": "out", "hostPath": {"path": str(tmp_path), "type": "Directory"}}],
        terminationGracePeriodSeconds=1,
    )
    core.create_namespaced_pod(namespace, pod)
    token = wait_for(lambda: (tmp_path / "token").exists() and (tmp_path / "token").read_text(), "the token")
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert claims["kubernetes.io"]["pod"]["name"] == "holder"
    # The cluster's token lifetime, not the year kubelet's default request would be extended to.
    assert claims["exp"] - claims["iat"] <= 3600
    assert self_review(cluster, token) == (201, f"system:serviceaccount:{namespace}:default")
    core.delete_namespaced_pod("holder", namespace)
    wait_for(lambda: not core.list_namespaced_pod(namespace).items, "the pod gone")
    assert wait_for(lambda: self_review(cluster, token)[0] == 401, "the token refused") is True


def test_the_executors_client_runs_in_cluster_from_the_pods_own_identity(
    core: client.CoreV1Api, namespace: str
) -> None:
    """`in_cluster = True` with nothing else set, as the Helm chart runs the scheduler."""
    grant_service_account(core.api_client, namespace, "airflow-scheduler")
    script = f"""
        from k8s_executor.kube_client import core_api
        from k8s_executor.settings import ExecutorSettings
        api = core_api(ExecutorSettings(namespace="{namespace}"))
        print(sorted(p.metadata.name for p in api.list_namespaced_pod("{namespace}").items))
    """
    env = [{"name": k, "value": v} for k, v in os.environ.items() if k in ("PYTHONPATH", "VIRTUAL_ENV")]
    pod = python_pod("in-cluster", script, serviceAccountName="airflow-scheduler", container={"env": env})
    core.create_namespaced_pod(namespace, pod)
    done = wait_for_pod_phase(core, namespace, "in-cluster", ("Succeeded", "Failed"), timeout=90)
    output = pod_log(core, namespace, "in-cluster")
    assert done.status.phase == "Succeeded", output
    assert output.strip().splitlines()[-1] == "['in-cluster']"


def test_a_pod_waits_for_a_missing_config_map_and_says_so(core: client.CoreV1Api, namespace: str) -> None:
    name = f"absent-{uuid.uuid4().hex[:6]}"
    pod = python_pod(
        "waiting",
        "print('ran')",
        container={"volumeMounts": [{"name": "cfg", "mountPath": CONFIG_DIR}]},
        volumes=[{"name": "cfg", "configMap": {"name": name}}],
    )
    core.create_namespaced_pod(namespace, pod)

    def failed_mount() -> bool:
        events = core.list_namespaced_event(namespace, field_selector="involvedObject.name=waiting").items
        return any(e.reason == "FailedMount" and f'configmap "{name}" not found' in e.message for e in events)

    wait_for(failed_mount, "a FailedMount event")
    waiting = core.read_namespaced_pod("waiting", namespace).status.container_statuses[0].state.waiting
    assert waiting.reason == "ContainerCreating"
    core.create_namespaced_config_map(namespace, {"metadata": {"name": name}, "data": {"a": "1"}})
    wait_for_pod_phase(core, namespace, "waiting", ("Succeeded",), timeout=60)


def test_a_claim_bound_to_a_host_path_volume_is_mounted(
    core: client.CoreV1Api, namespace: str, tmp_path: Path
) -> None:
    tmp_path.chmod(0o755)
    volume = f"pv-{namespace}"
    core.create_persistent_volume(
        {
            "metadata": {"name": volume},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteOnce"],
                "hostPath": {"path": str(tmp_path / "data")},
                "storageClassName": "",
                "claimRef": {"namespace": namespace, "name": "data"},
            },
        }
    )
    try:
        core.create_namespaced_persistent_volume_claim(
            namespace,
            {
                "metadata": {"name": "data"},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": "1Gi"}},
                    "storageClassName": "",
                    "volumeName": volume,
                },
            },
        )
        pod = python_pod(
            "writer",
            "open('/srv/k8s-executor-test/data/out.txt', 'w').write('written in the pod')",
            container={"volumeMounts": [{"name": "data", "mountPath": "/srv/k8s-executor-test/data"}]},
            volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
        )
        core.create_namespaced_pod(namespace, pod)
        done = wait_for_pod_phase(core, namespace, "writer", ("Succeeded", "Failed"), timeout=90)
        assert done.status.phase == "Succeeded", pod_log(core, namespace, "writer")
        # The volume's directory, made as containerd makes a missing bind-mount source.
        assert (tmp_path / "data" / "out.txt").read_text() == "written in the pod"
    finally:
        core.delete_persistent_volume(volume)
