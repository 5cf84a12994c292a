"""The real node: kubelet and the kernel produce the endings the executor explains, and the node
agent (our imitation of kubelet) is checked against them, spec by spec."""

from __future__ import annotations

import subprocess
import threading
import time
from typing import Any

import pytest
from devcluster import build, control_plane, oci, real_node
from kubernetes import client, watch

from k8s_executor.state_mapping import deletion_began_first, pod_state
from tests.helpers import pod_log, wait_for
from tests.realnode.conftest import PROCESS_NODE, REAL_NODE, on_node

pytestmark = pytest.mark.realnode

FATAL_WAITING = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError"}
)


def busybox_pod(name: str, script: str, **container: Any) -> dict:
    return {
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 5,
            "containers": [
                {
                    "name": "base",
                    "image": oci.BUSYBOX_IMAGE,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["sh", "-c", script],
                    **container,
                }
            ],
        },
    }


def test_the_node_runs_a_real_kubelet_and_containerd(real_cluster: control_plane.ClusterState) -> None:
    kubectl = build.bin_dir() / "kubectl"
    out = subprocess.run(
        [
            str(kubectl),
            f"--kubeconfig={real_cluster.kubeconfig}",
            "get",
            "nodes",
            "-o",
            "wide",
            "--no-headers",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = {line.split()[0]: line.split() for line in out.splitlines()}
    print(out)
    assert rows[REAL_NODE][-1].startswith("containerd://")
    assert rows[REAL_NODE][4] == build.kubernetes_version()
    assert rows[PROCESS_NODE][-1].startswith("devcluster-process://")


def test_the_real_node_is_told_apart_by_a_label_and_a_taint(real_core: client.CoreV1Api) -> None:
    node = real_core.read_node(REAL_NODE)
    assert node.metadata.labels[real_node.RUNTIME_LABEL] == "containerd"
    assert [(t.key, t.effect) for t in node.spec.taints] == [(real_node.REAL_NODE_TAINT, "NoSchedule")]
    # Without the toleration, nothing lands there: the benchmark and fault run keep the process node.
    assert node.status.node_info.kubelet_version == build.kubernetes_version()


def end_of(core: client.CoreV1Api, namespace: str, name: str, timeout: float = 90) -> client.V1Pod:
    """The pod once the executor has a verdict on it (ended, or failed to start)."""

    def judged() -> client.V1Pod | None:
        pod = core.read_namespaced_pod(name, namespace)
        raw = client.ApiClient().sanitize_for_serialization(pod)
        verdict = pod_state(raw, fatal_waiting_reasons=FATAL_WAITING).verdict
        return pod if verdict in ("success", "failed") else None

    return wait_for(judged, f"pod {name} to end", timeout=timeout, interval=0.5)


def run_and_delete(core: client.CoreV1Api, namespace: str, pod: dict, grace: int) -> tuple[dict, bool]:
    """Run `pod`, delete it once running with `grace`: its last status before it went, and
    whether a look at it saw the deletion begin while its task ran."""
    name = pod["metadata"]["name"]
    last: dict[str, Any] = {}
    seen_first = [False]
    done = threading.Event()

    def follow() -> None:
        w = watch.Watch()
        for event in w.stream(
            core.list_namespaced_pod, namespace, field_selector=f"metadata.name={name}", timeout_seconds=120
        ):
            raw = client.ApiClient().sanitize_for_serialization(event["object"])
            # As the executor's watcher does: what the last object no longer shows.
            seen_first[0] = seen_first[0] or deletion_began_first(raw)
            if event["type"] == "DELETED":
                break
            last.clear()
            last.update(raw)
        done.set()

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    time.sleep(0.5)
    core.create_namespaced_pod(namespace, pod)
    wait_for(
        lambda: "ready" in pod_log(core, namespace, name),
        f"{name} to be running with its trap set",
        timeout=60,
    )
    core.delete_namespaced_pod(name, namespace, grace_period_seconds=grace)
    assert done.wait(120), f"pod {name} was not removed"
    return last, seen_first[0]


# --- endings kubelet and the kernel produce -----------------------------------------------------


def test_a_task_over_its_memory_limit_is_oom_killed_by_the_kernel(
    real_core: client.CoreV1Api, real_namespace: str
) -> None:
    pod = busybox_pod("oom", 'x=$(head -c 200000000 /dev/zero | tr "\\0" a); echo done')
    pod["spec"]["containers"][0]["resources"] = {"limits": {"memory": "64Mi"}}
    real_core.create_namespaced_pod(real_namespace, on_node(REAL_NODE, pod))
    ended = end_of(real_core, real_namespace, "oom")
    terminated = ended.status.container_statuses[0].state.terminated
    assert (terminated.reason, terminated.exit_code) == ("OOMKilled", 137)
    state = pod_state(client.ApiClient().sanitize_for_serialization(ended))
    assert state.verdict == "failed" and state.cause == "OOMKilled"
    assert "'base' was killed for exceeding its memory limit (OOMKilled)" in state.reason


def test_an_image_that_does_not_exist_fails_fast_with_kubelets_words(
    real_core: client.CoreV1Api, real_namespace: str
) -> None:
    pod = busybox_pod("noimage", "true")
    pod["spec"]["containers"][0]["image"] = "example.invalid/does-not-exist:1"
    started = time.monotonic()
    real_core.create_namespaced_pod(real_namespace, on_node(REAL_NODE, pod))
    ended = end_of(real_core, real_namespace, "noimage", timeout=60)
    waited = time.monotonic() - started
    state = pod_state(
        client.ApiClient().sanitize_for_serialization(ended), fatal_waiting_reasons=FATAL_WAITING
    )
    assert state.verdict == "failed" and state.cause in ("ErrImagePull", "ImagePullBackOff")
    assert (
        "example.invalid/does-not-exist:1" in state.reason and "failed to resolve reference" in state.reason
    )
    print(f"judged failed after {waited:.1f}s: {state.reason}")


def test_a_crash_keeps_its_exit_code_and_termination_message(
    real_core: client.CoreV1Api, real_namespace: str
) -> None:
    pod = busybox_pod(
        "crash",
        "echo 'disk full' > /dev/termination-log; exit 3",
        terminationMessagePath="/dev/termination-log",
    )
    real_core.create_namespaced_pod(real_namespace, on_node(REAL_NODE, pod))
    state = pod_state(
        client.ApiClient().sanitize_for_serialization(end_of(real_core, real_namespace, "crash"))
    )
    assert state.verdict == "failed"
    assert state.reason == "container 'base' exited with code 3 (Error): disk full"


def test_a_failing_init_container_fails_the_pod_before_its_task(
    real_core: client.CoreV1Api, real_namespace: str
) -> None:
    pod = busybox_pod("initfail", "echo never")
    pod["spec"]["initContainers"] = [
        {
            "name": "fetch",
            "image": oci.BUSYBOX_IMAGE,
            "imagePullPolicy": "IfNotPresent",
            "command": ["sh", "-c", "exit 7"],
        }
    ]
    real_core.create_namespaced_pod(real_namespace, on_node(REAL_NODE, pod))
    ended = end_of(real_core, real_namespace, "initfail")
    state = pod_state(client.ApiClient().sanitize_for_serialization(ended))
    assert state.verdict == "failed" and "container 'fetch' exited with code 7" in state.reason
    assert ended.status.container_statuses[0].state.waiting.reason == "PodInitializing"


def test_a_graceful_deletion_sends_sigterm_to_the_task(
    real_core: client.CoreV1Api, real_namespace: str
) -> None:
    script = "trap 'echo got TERM; exit 0' TERM; echo ready; while true; do sleep 0.1; done"
    last, seen_first = run_and_delete(
        real_core, real_namespace, on_node(REAL_NODE, busybox_pod("graceful", script)), grace=5
    )
    terminated = last["status"]["containerStatuses"][0]["state"]["terminated"]
    # The trap ran: the shell ended itself with 0 well inside the grace period, not killed (137).
    assert terminated["exitCode"] == 0, terminated
    # Kubelet's last delete (grace 0) moved deletionTimestamp past the original grace's start: the
    # last object alone reads as a success, the deletion seen first tells the truth.
    assert last["metadata"]["deletionGracePeriodSeconds"] == 0 and seen_first
    assert pod_state(last, deleted=True).verdict == "success"
    state = pod_state(last, deleted=True, deletion_seen_first=seen_first)
    assert state.verdict == "failed" and state.cause == "Deleted"
    assert "its process stopped when told to (exit code 0)" in state.reason


def test_pods_reach_the_api_server_through_the_kubernetes_service(
    real_core: client.CoreV1Api, real_namespace: str
) -> None:
    pod = busybox_pod(
        "svc", "nc -w 5 $KUBERNETES_SERVICE_HOST $KUBERNETES_SERVICE_PORT </dev/null && echo reached"
    )
    real_core.create_namespaced_pod(real_namespace, on_node(REAL_NODE, pod))
    ended = end_of(real_core, real_namespace, "svc")
    assert ended.status.container_statuses[0].state.terminated.exit_code == 0
    assert pod_log(real_core, real_namespace, "svc") == "reached\n"
    assert ended.status.pod_ip.startswith("10.244.")
