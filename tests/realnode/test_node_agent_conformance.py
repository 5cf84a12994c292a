"""The node agent against kubelet: the same pod specs on both nodes, and the status fields the
executor reads compared. Every difference is fixed in the node agent or listed here (and in
docs/devcluster.md) with the reason it stays."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from kubernetes import client, watch

from k8s_executor.state_mapping import deletion_began_first, pod_state
from tests.helpers import wait_for
from tests.realnode.conftest import PROCESS_NODE, REAL_NODE, on_node
from tests.realnode.test_kubelet import FATAL_WAITING, busybox_pod

pytestmark = pytest.mark.realnode


def _sidecar(pod: dict) -> dict:
    pod["spec"]["initContainers"] = [
        {
            "name": "proxy",
            "image": pod["spec"]["containers"][0]["image"],
            "imagePullPolicy": "IfNotPresent",
            "restartPolicy": "Always",
            "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.1; done"],
        }
    ]
    return pod


def _init_failure(pod: dict) -> dict:
    pod["spec"]["initContainers"] = [
        {
            "name": "fetch",
            "image": pod["spec"]["containers"][0]["image"],
            "imagePullPolicy": "IfNotPresent",
            "command": ["sh", "-c", "echo no data; exit 7"],
        }
    ]
    return pod


def _limit(pod: dict) -> dict:
    pod["spec"]["containers"][0]["resources"] = {"limits": {"memory": "64Mi"}}
    return pod


def _bad_image(pod: dict) -> dict:
    pod["spec"]["containers"][0]["image"] = "example.invalid/does-not-exist:1"
    return pod


def _logs_on_error(pod: dict) -> dict:
    pod["spec"]["containers"][0]["terminationMessagePolicy"] = "FallbackToLogsOnError"
    return pod


# name -> (script, how the spec is changed, deleted once running)
SPECS: dict[str, tuple[str, Any, bool]] = {
    "success": ("echo ok", None, False),
    "failure": ("echo 'disk full'; exit 3", _logs_on_error, False),
    "oom": ('x=$(head -c 200000000 /dev/zero | tr "\\0" a); echo done', _limit, False),
    # The kernel kills the largest process of the container (cgroup v1); its main process goes on.
    "child-oom": ('(x=$(head -c 200000000 /dev/zero | tr "\\0" a)); echo survived', _limit, False),
    "bad-image": ("true", _bad_image, False),
    "init-failure": ("echo never", _init_failure, False),
    "deleted": ("trap 'exit 0' TERM; echo ready; while true; do sleep 0.1; done", None, True),
    "projected": (
        "test -s /var/run/secrets/kubernetes.io/serviceaccount/token"
        " && test -s /var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
        ' && test "$(cat /var/run/secrets/kubernetes.io/serviceaccount/namespace)" = "$NS"',
        lambda pod: _env_namespace(pod),
        False,
    ),
    "sidecar": ("echo done", _sidecar, False),
}


def _env_namespace(pod: dict) -> dict:
    pod["spec"]["containers"][0]["env"] = [
        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}
    ]
    return pod


# What the executor concludes of each spec, on either node: (verdict, cause).
EXPECTED = {
    "success": ("success", ""),
    "failure": ("failed", "Error"),
    "oom": ("failed", "OOMKilled"),
    "child-oom": ("failed", "OOMKilled"),
    "bad-image": ("failed", "ImagePullBackOff"),
    "init-failure": ("failed", "Error"),
    "deleted": ("failed", "Deleted"),
    "projected": ("success", ""),
    "sidecar": ("success", ""),
}
# Differences that stay, each with its reason (docs/devcluster.md lists them): none is left.
KNOWN: dict[tuple[str, str], str] = {}


def observed(pod: dict[str, Any], deletion_seen_first: bool = False) -> dict[str, Any]:
    """The fields of a pod the executor reads, with times and ids left out."""
    status = pod.get("status") or {}
    fields: dict[str, Any] = {"phase": status.get("phase"), "reason": status.get("reason")}
    for group in ("initContainerStatuses", "containerStatuses"):
        for container in status.get(group) or []:
            state = container.get("state") or {}
            kind = next(iter(state), "none")
            detail = state.get(kind) or {}
            fields[f"{container['name']}.state"] = kind
            fields[f"{container['name']}.reason"] = detail.get("reason")
            if kind == "terminated":
                fields[f"{container['name']}.exitCode"] = detail.get("exitCode")
                fields[f"{container['name']}.message"] = (detail.get("message") or "").strip()
    for condition in status.get("conditions") or []:
        fields[f"condition.{condition['type']}"] = (condition.get("status"), condition.get("reason"))
    verdict = pod_state(
        pod,
        fatal_waiting_reasons=FATAL_WAITING,
        deleted=bool(pod.get("_deleted")),
        deletion_seen_first=deletion_seen_first,
    )
    fields["verdict"] = (verdict.verdict, verdict.cause)
    return fields


def _ended(pod: dict[str, Any]) -> bool:
    return pod_state(pod, fatal_waiting_reasons=FATAL_WAITING).verdict in ("success", "failed") and (
        (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")
        or any(
            ((c.get("state") or {}).get("waiting") or {}).get("reason") == "ImagePullBackOff"
            for c in (pod.get("status") or {}).get("containerStatuses") or []
        )
    )


def run_on(core: client.CoreV1Api, namespace: str, node: str, name: str) -> dict[str, Any]:
    script, change, delete = SPECS[name]
    pod = on_node(node, busybox_pod(f"{name}-{node}", script))
    if change:
        pod = change(pod)
    pod_name = pod["metadata"]["name"]
    last: dict[str, Any] = {}
    seen_first = [False]
    done = threading.Event()

    def follow() -> None:
        for event in watch.Watch().stream(
            core.list_namespaced_pod,
            namespace,
            field_selector=f"metadata.name={pod_name}",
            timeout_seconds=150,
        ):
            raw = client.ApiClient().sanitize_for_serialization(event["object"])
            seen_first[0] = seen_first[0] or deletion_began_first(raw)
            if event["type"] == "DELETED":
                last["_deleted"] = True
                break
            last.clear()
            last.update(raw)
            if not delete and _ended(raw):
                break
        done.set()

    threading.Thread(target=follow, daemon=True).start()
    time.sleep(0.3)
    core.create_namespaced_pod(namespace, pod)
    if delete:
        wait_for(
            lambda: (
                last.get("status", {}).get("phase") == "Running"
                and all(
                    "running" in (c.get("state") or {})
                    for c in last["status"].get("containerStatuses") or [{}]
                )
            ),
            f"{pod_name} to run",
            timeout=60,
        )
        time.sleep(1)
        core.delete_namespaced_pod(pod_name, namespace, grace_period_seconds=5)
    assert done.wait(150), f"{pod_name} did not end"
    return observed(last, seen_first[0])


def test_the_node_agent_reports_what_kubelet_reports(
    real_core: client.CoreV1Api, real_namespace: str
) -> None:
    differences: dict[tuple[str, str], tuple[Any, Any]] = {}
    for name in SPECS:
        ours = run_on(real_core, real_namespace, PROCESS_NODE, name)
        theirs = run_on(real_core, real_namespace, REAL_NODE, name)
        assert theirs["verdict"] == EXPECTED[name], (name, theirs)
        for field in sorted(set(ours) | set(theirs)):
            if ours.get(field) != theirs.get(field):
                differences[(name, field)] = (ours.get(field), theirs.get(field))
    report = "\n".join(
        f"{spec:13} {field:40} agent={a!r} kubelet={b!r}" for (spec, field), (a, b) in differences.items()
    )
    print(report)
    # The executor's verdict is the same on both nodes for every spec, whatever else differs.
    assert not [key for key in differences if key[1] == "verdict"], report
    assert set(differences) == set(KNOWN), report
