"""The development cluster behaves as a real one where the executor depends on it."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import queue
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from devcluster import build, control_plane
from devcluster.list_watch import list_watch, objects
from devcluster.node_agent import (
    DURATION_ANNOTATION,
    EXIT_CODE_ANNOTATION,
    RUNTIME_LABEL,
    SIMULATED_TAINT,
    process_alive,
)
from kubernetes import client, watch

from k8s_executor.state_mapping import pod_state
from tests.conftest import CLUSTER_DIR, api_client_for
from tests.helpers import pod_log, shell_pod, wait_for, wait_for_pod_phase

pytestmark = pytest.mark.cluster


def test_version_is_the_pinned_release(api_client: client.ApiClient) -> None:
    info = client.VersionApi(api_client).get_code()
    assert info.git_version == build.kubernetes_version()


def test_failed_container_reports_exit_code_and_log(core: client.CoreV1Api, namespace: str) -> None:
    core.create_namespaced_pod(namespace, shell_pod("hello", "echo hello; exit 3"))
    pod = wait_for_pod_phase(core, namespace, "hello", ("Failed", "Succeeded"))
    assert pod.status.phase == "Failed"
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (3, "Error")
    assert pod_log(core, namespace, "hello", container="base") == "hello\n"


def test_memory_limit_counts_every_process_of_the_container(core: client.CoreV1Api, namespace: str) -> None:
    # The shell stays small; its child in a session of its own takes the memory, as a
    # worker's task process may. A cgroup would count it, and kill the container.
    hog = "python3 -c 'import os, time; os.setsid(); x = b\"x\" * (200 * 2**20); time.sleep(60)'"
    pod = shell_pod("hog", f"{hog} & wait")
    pod["spec"]["containers"][0]["resources"] = {"limits": {"memory": "100Mi"}}
    core.create_namespaced_pod(namespace, pod)
    pod = wait_for_pod_phase(core, namespace, "hog", ("Failed", "Succeeded"), timeout=30)
    terminated = pod.status.container_statuses[0].state.terminated
    # As the kernel does on cgroup v1 (tests/realnode): the largest process is killed, the shell's
    # `wait` returns 0 and so does the container, which keeps OOMKilled as its reason.
    assert (pod.status.phase, terminated.reason, terminated.exit_code) == ("Succeeded", "OOMKilled", 0)
    state = pod_state(client.ApiClient().sanitize_for_serialization(pod))
    assert (state.verdict, state.cause) == ("failed", "OOMKilled")


def test_env_from_secret_and_field_refs(core: client.CoreV1Api, namespace: str) -> None:
    core.create_namespaced_secret(namespace, {"metadata": {"name": "s"}, "stringData": {"password": "pw"}})
    pod = shell_pod("env", 'echo "$PASSWORD $POD_NAME $GREETING"')
    pod["spec"]["containers"][0]["env"] = [
        {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "s", "key": "password"}}},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "GREETING", "value": "hi-$(POD_NAME)"},
    ]
    core.create_namespaced_pod(namespace, pod)
    assert wait_for_pod_phase(core, namespace, "env", ("Succeeded", "Failed")).status.phase == "Succeeded"
    assert pod_log(core, namespace, "env") == "pw env hi-env\n"


def test_env_from_config_map_key_refs(core: client.CoreV1Api, namespace: str) -> None:
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "cm"}, "data": {"color": "blue"}})
    pod = shell_pod("cmenv", 'echo "$COLOR ${ABSENT-unset}"')
    pod["spec"]["containers"][0]["env"] = [
        {"name": "COLOR", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "color"}}},
        {"name": "ABSENT", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "no", "optional": True}}},
    ]
    core.create_namespaced_pod(namespace, pod)
    assert wait_for_pod_phase(core, namespace, "cmenv", ("Succeeded", "Failed")).status.phase == "Succeeded"
    assert pod_log(core, namespace, "cmenv") == "blue unset\n"


def test_init_containers_run_in_order_before_the_main_container(
    core: client.CoreV1Api, namespace: str, tmp_path: Path
) -> None:
    # The first is the slower one: run side by side, the second would write first.
    pod = shell_pod(
        "inits",
        "cat order",
        initContainers=[
            {"name": "first", "image": "busybox", "command": ["sh", "-c", "sleep 0.5; echo first >> order"]},
            {"name": "second", "image": "busybox", "command": ["sh", "-c", "echo second >> order"]},
        ],
    )
    for container in pod["spec"]["initContainers"] + pod["spec"]["containers"]:
        container["workingDir"] = str(tmp_path)
    core.create_namespaced_pod(namespace, pod)
    done = wait_for_pod_phase(core, namespace, "inits", ("Succeeded", "Failed"))
    assert done.status.phase == "Succeeded"
    assert pod_log(core, namespace, "inits", container="base") == "first\nsecond\n"
    inits = {s.name: s.state.terminated.reason for s in done.status.init_container_statuses}
    assert inits == {"first": "Completed", "second": "Completed"}


def test_native_sidecars_start_first_run_beside_the_task_and_end_after_it(
    core: client.CoreV1Api, namespace: str, tmp_path: Path
) -> None:
    """Kubelet's native sidecars (an init container with restartPolicy Always): started before the
    next container, running beside the main one, stopped once it ends; the pod's phase is the main
    container's, whatever the sidecar's exit code."""
    pod = shell_pod(
        "sidecar",
        # Started is not ready (no startupProbe here): the task waits for its sidecar's mark.
        "for i in $(seq 100); do test -e sidecar-up && break; sleep 0.1; done; test -e sidecar-up && echo task ran",
        initContainers=[
            {
                "name": "proxy",
                "image": "busybox",
                "restartPolicy": "Always",
                "command": ["sh", "-c", "touch sidecar-up; exec sleep 3600"],
            }
        ],
    )
    for container in pod["spec"]["initContainers"] + pod["spec"]["containers"]:
        container["workingDir"] = str(tmp_path)
    pod["spec"]["terminationGracePeriodSeconds"] = 2
    core.create_namespaced_pod(namespace, pod)
    done = wait_for_pod_phase(core, namespace, "sidecar", ("Succeeded", "Failed"), timeout=60)
    assert done.status.phase == "Succeeded"
    assert pod_log(core, namespace, "sidecar", container="base") == "task ran\n"
    [proxy] = done.status.init_container_statuses
    assert proxy.state.terminated is not None, "the sidecar was not stopped after the task"


def test_an_active_deadline_set_on_a_running_pod_ends_it(core: client.CoreV1Api, namespace: str) -> None:
    """Kubelet's active deadline: activeDeadlineSeconds may be set on a running pod; once past, its
    containers are stopped and the pod fails with DeadlineExceeded, the object kept."""
    pod = shell_pod("lingering", "exec sleep 3600")
    pod["spec"]["terminationGracePeriodSeconds"] = 1
    core.create_namespaced_pod(namespace, pod)
    wait_for_pod_phase(core, namespace, "lingering", ("Running",))
    core.patch_namespaced_pod("lingering", namespace, {"spec": {"activeDeadlineSeconds": 1}})
    done = wait_for_pod_phase(core, namespace, "lingering", ("Failed", "Succeeded"), timeout=30)
    assert (done.status.phase, done.status.reason) == ("Failed", "DeadlineExceeded")
    assert done.status.message == "Pod was active on the node longer than the specified deadline"
    assert done.status.container_statuses[0].state.terminated is not None


def test_an_eviction_keeps_its_disruption_target_through_the_nodes_status_writes(
    core: client.CoreV1Api, namespace: str
) -> None:
    """The Eviction API marks the pod DisruptionTarget before deleting it; the node's status writes
    while its containers stop (strategic merge, as kubelet's) must keep that condition."""
    core.create_namespaced_pod(namespace, shell_pod("evictee", "exec sleep 3600"))
    wait_for_pod_phase(core, namespace, "evictee", ("Running",))
    seen: queue.Queue[dict] = queue.Queue()
    stop = threading.Event()

    def watch() -> None:
        call = functools.partial(core.list_namespaced_pod, namespace, field_selector="metadata.name=evictee")
        for event in list_watch(call, stop):
            for pod in objects(event):
                seen.put(pod)

    threading.Thread(target=watch, daemon=True).start()
    seen.get(timeout=30)  # the watch's list: what follows it is seen whatever its speed
    core.create_namespaced_pod_eviction(
        "evictee",
        namespace,
        client.V1Eviction(
            metadata=client.V1ObjectMeta(name="evictee", namespace=namespace),
            delete_options=client.V1DeleteOptions(grace_period_seconds=3),
        ),
    )

    def stopped() -> dict | None:
        pod = seen.get(timeout=30)
        statuses = pod.get("status", {}).get("containerStatuses") or [{}]
        return pod if "terminated" in (statuses[0].get("state") or {}) else None

    try:
        pod = wait_for(stopped, "the evicted pod's container to stop", timeout=30, interval=0)
    finally:
        stop.set()
    conditions = {c["type"]: c for c in pod["status"]["conditions"]}
    assert conditions["DisruptionTarget"]["status"] == "True"
    assert conditions["DisruptionTarget"]["reason"] == "EvictionByEvictionAPI"


def test_missing_secret_is_a_create_container_config_error(core: client.CoreV1Api, namespace: str) -> None:
    pod = shell_pod("nosecret", "true")
    pod["spec"]["containers"][0]["env"] = [
        {"name": "X", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k"}}}
    ]
    core.create_namespaced_pod(namespace, pod)

    def waiting_reason() -> str | None:
        statuses = core.read_namespaced_pod("nosecret", namespace).status.container_statuses or []
        return statuses[0].state.waiting.reason if statuses and statuses[0].state.waiting else None

    wait_for(lambda: waiting_reason() == "CreateContainerConfigError", "CreateContainerConfigError")


def test_follow_logs_stream_while_running(core: client.CoreV1Api, namespace: str) -> None:
    core.create_namespaced_pod(
        namespace, shell_pod("ticker", "for i in 1 2 3; do echo tick $i; sleep 0.3; done")
    )
    wait_for_pod_phase(core, namespace, "ticker", ("Running", "Succeeded"))
    assert pod_log(core, namespace, "ticker", follow=True) == "tick 1\ntick 2\ntick 3\n"
    assert pod_log(core, namespace, "ticker", tail_lines=1) == "tick 3\n"


def kubectl(cluster: control_plane.ClusterState, *args: str) -> list[str]:
    return [str(build.ensure_binaries(log=False) / "kubectl"), "--kubeconfig", str(cluster.kubeconfig), *args]


def test_kubectl_logs_tail_and_follow(
    cluster: control_plane.ClusterState, core: client.CoreV1Api, namespace: str, tmp_path: Path
) -> None:
    core.create_namespaced_pod(namespace, shell_pod("four", "for i in 1 2 3 4; do echo line $i; done"))
    wait_for_pod_phase(core, namespace, "four", ("Succeeded",))
    tailed = subprocess.run(
        kubectl(cluster, "logs", "-n", namespace, "four", "--tail=2"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (tailed.returncode, tailed.stdout) == (0, "line 3\nline 4\n"), tailed.stderr

    go = tmp_path / "go"
    script = f"echo before; while [ ! -e {go} ]; do sleep 0.1; done; echo after"
    core.create_namespaced_pod(namespace, shell_pod("waiter", script))
    wait_for_pod_phase(core, namespace, "waiter", ("Running",))
    follow = subprocess.Popen(
        kubectl(cluster, "logs", "-n", namespace, "waiter", "-f"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def read_lines() -> None:
        assert follow.stdout is not None
        for line in follow.stdout:
            lines.put(line)

    threading.Thread(target=read_lines, daemon=True).start()
    try:
        # The pod cannot print its second line, nor end, until the file exists.
        assert lines.get(timeout=60) == "before\n"
        go.touch()
        assert lines.get(timeout=60) == "after\n"
        assert follow.wait(timeout=60) == 0, follow.stderr.read() if follow.stderr else ""
    finally:
        follow.kill()
        follow.wait()


def test_invalid_names_and_label_values_are_refused(core: client.CoreV1Api, namespace: str) -> None:
    with pytest.raises(client.ApiException) as long_name:
        core.create_namespaced_pod(namespace, shell_pod("a" * 254, "true"))
    assert long_name.value.status == 422
    pod = shell_pod("labelled", "true")
    pod["metadata"]["labels"] = {"dag_id": "x" * 64}
    with pytest.raises(client.ApiException) as long_label:
        core.create_namespaced_pod(namespace, pod)
    assert long_label.value.status == 422
    assert "must be no more than 63" in long_label.value.body


def test_watch_from_compacted_resource_version_is_gone(core: client.CoreV1Api, namespace: str) -> None:
    old_rv = core.list_namespaced_pod(namespace).metadata.resource_version
    for i in range(3):
        core.create_namespaced_config_map(namespace, {"metadata": {"name": f"c{i}"}})
    control_plane.compact_etcd(CLUSTER_DIR)
    # The API server's watch cache still holds recent history after a compaction; a
    # restart drops it, as a rolling update of the API server does in production.
    control_plane.restart_component(CLUSTER_DIR, "kube-apiserver")
    resp = core.list_namespaced_pod(
        namespace, watch=True, resource_version=old_rv, timeout_seconds=5, _preload_content=False
    )
    first = json.loads(resp.readline())
    assert first["type"] == "ERROR"
    assert first["object"]["code"] == 410


def test_unmatched_node_selector_stays_pending_unschedulable(core: client.CoreV1Api, namespace: str) -> None:
    core.create_namespaced_pod(namespace, shell_pod("lost", "true", nodeSelector={"disktype": "nvme"}))

    def unschedulable() -> bool:
        pod = core.read_namespaced_pod("lost", namespace)
        conds = {c.type: c for c in pod.status.conditions or []}
        return (
            pod.status.phase == "Pending"
            and conds.get("PodScheduled") is not None
            and (conds["PodScheduled"].reason == "Unschedulable")
        )

    wait_for(unschedulable, "PodScheduled=False reason Unschedulable")


def test_unpullable_image_backs_off(core: client.CoreV1Api, namespace: str) -> None:
    pod = shell_pod("nopull", "true")
    pod["spec"]["containers"][0]["image"] = "invalid.registry/does-not-exist:1"
    core.create_namespaced_pod(namespace, pod)
    seen: set[str] = set()

    def both_reasons() -> bool:
        statuses = core.read_namespaced_pod("nopull", namespace).status.container_statuses or []
        if statuses and statuses[0].state.waiting:
            seen.add(statuses[0].state.waiting.reason)
        return {"ErrImagePull", "ImagePullBackOff"} <= seen

    wait_for(both_reasons, "ErrImagePull then ImagePullBackOff", timeout=30)
    assert core.read_namespaced_pod("nopull", namespace).status.phase == "Pending"


def test_resource_quota_refuses_with_403(core: client.CoreV1Api, namespace: str) -> None:
    core.create_namespaced_resource_quota(
        namespace, {"metadata": {"name": "q"}, "spec": {"hard": {"pods": "1"}}}
    )
    # The quota controller must have computed usage before admission enforces it.
    wait_for(lambda: core.read_namespaced_resource_quota("q", namespace).status.hard, "quota status")
    core.create_namespaced_pod(namespace, shell_pod("one", "sleep 5"))
    with pytest.raises(client.ApiException) as refused:
        core.create_namespaced_pod(namespace, shell_pod("two", "sleep 5"))
    assert refused.value.status == 403
    assert "exceeded quota" in refused.value.body


def test_least_privilege_identity_is_confined_to_its_namespace(
    api_client: client.ApiClient, core: client.CoreV1Api, namespace: str
) -> None:
    rbac = client.RbacAuthorizationV1Api(api_client)
    rbac.create_namespaced_role(
        namespace,
        {"metadata": {"name": "pods"}, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["*"]}]},
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "pods"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pods"},
            "subjects": [
                {"kind": "User", "name": f"limited-{namespace}", "apiGroup": "rbac.authorization.k8s.io"}
            ],
        },
    )
    limited = client.CoreV1Api(
        api_client_for(control_plane.mint_identity(CLUSTER_DIR, f"limited-{namespace}"))
    )
    wait_for(lambda: limited.list_namespaced_pod(namespace) is not None, "RBAC to take effect")
    with pytest.raises(client.ApiException) as outside:
        limited.list_namespaced_pod("default")
    assert outside.value.status == 403
    with pytest.raises(client.ApiException) as secrets:
        limited.list_namespaced_secret(namespace)
    assert secrets.value.status == 403


def test_graceful_deletion_sends_sigterm_then_sigkill(core: client.CoreV1Api, namespace: str) -> None:
    marker = Path(tempfile.mkdtemp()) / "signals"
    script = (
        "import os, signal, sys, time\n"
        f"out = open({str(marker)!r}, 'a', buffering=1)\n"
        "out.write(f'pid {os.getpid()}\\n')\n"
        "signal.signal(signal.SIGTERM, lambda *a: out.write('TERM\\n'))\n"
        "while True: time.sleep(0.05)\n"
    )
    pod = {
        "metadata": {"name": "stubborn"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "base", "image": "python", "command": ["python3", "-c", script]}],
        },
    }
    core.create_namespaced_pod(namespace, pod)
    wait_for_pod_phase(core, namespace, "stubborn", ("Running",))
    wait_for(lambda: marker.exists() and "pid" in marker.read_text(), "the container to start")
    pid = int(marker.read_text().split()[1])
    started = time.monotonic()
    core.delete_namespaced_pod("stubborn", namespace, grace_period_seconds=2)

    def gone() -> bool:
        try:
            core.read_namespaced_pod("stubborn", namespace)
            return False
        except client.ApiException as exc:
            return exc.status == 404

    wait_for(gone, "the pod object to be removed", timeout=30)
    waited = time.monotonic() - started
    assert "TERM" in marker.read_text()
    assert not process_alive(pid)
    assert waited >= 2, f"the process was killed before its grace period ({waited:.1f}s)"


def test_agent_restart_keeps_running_pods(core: client.CoreV1Api, namespace: str) -> None:
    core.create_namespaced_pod(namespace, shell_pod("survivor", "sleep 2; echo done; exit 4"))
    core.create_namespaced_pod(namespace, shell_pod("victim", "sleep 30"))
    wait_for_pod_phase(core, namespace, "survivor", ("Running",))
    wait_for_pod_phase(core, namespace, "victim", ("Running",))
    state = control_plane.ClusterState.load(CLUSTER_DIR)
    assert state is not None
    state_file = next((CLUSTER_DIR / "node-agent" / "pods").glob("*/state.json"))
    assert state_file.exists()
    victim_uid = core.read_namespaced_pod("victim", namespace).metadata.uid
    victim_pid = json.loads((CLUSTER_DIR / "node-agent" / "pods" / victim_uid / "state.json").read_text())[
        "procs"
    ]
    # The agent dies hard; while it is away one container's process dies too.
    os.kill(state.pids["node-agent"], 9)
    os.killpg(victim_pid["base"], 9)
    control_plane.restart_component(CLUSTER_DIR, "node-agent")
    survivor = wait_for_pod_phase(core, namespace, "survivor", ("Failed", "Succeeded"), timeout=30)
    assert survivor.status.container_statuses[0].state.terminated.exit_code == 4
    assert pod_log(core, namespace, "survivor") == "done\n"
    victim = wait_for_pod_phase(core, namespace, "victim", ("Failed", "Succeeded"), timeout=30)
    assert victim.status.phase == "Failed"
    assert "lost" in victim.status.container_statuses[0].state.terminated.message


def test_a_pod_deleted_while_the_agent_is_away_reports_its_containers_end_before_it_goes(
    core: client.CoreV1Api, namespace: str
) -> None:
    """Kubelet restarted under a deletion stops the containers it finds and reports them
    terminated before the pod goes: a pod gone with its container still 'running' would read as
    a node cut off from the cluster, whose worker may run on."""
    core.create_namespaced_pod(namespace, shell_pod("deleted-meanwhile", "sleep 300"))
    wait_for_pod_phase(core, namespace, "deleted-meanwhile", ("Running",))
    state = control_plane.ClusterState.load(CLUSTER_DIR)
    assert state is not None
    last: list[client.V1Pod] = []
    stream = watch.Watch()

    def follow() -> None:
        for event in stream.stream(
            core.list_namespaced_pod,
            namespace,
            field_selector="metadata.name=deleted-meanwhile",
            timeout_seconds=120,
        ):
            last.append(event["object"])
            if event["type"] == "DELETED":
                return

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    os.kill(state.pids["node-agent"], 9)
    core.delete_namespaced_pod("deleted-meanwhile", namespace, grace_period_seconds=2)
    control_plane.restart_component(CLUSTER_DIR, "node-agent")
    follower.join(timeout=90)
    stream.stop()
    assert last, "no event of the pod was seen"
    final = last[-1]
    statuses = final.status.container_statuses or []
    assert statuses and statuses[0].state.terminated is not None, statuses


def test_pod_that_ends_while_the_api_server_is_down_is_reported_when_it_is_back(
    core: client.CoreV1Api, namespace: str
) -> None:
    """kubelet keeps a status the API server did not take and writes it later; dropping it
    would leave the pod Running for ever (and the executor waiting on it)."""
    marker = Path(tempfile.mkdtemp()) / "ended"
    core.create_namespaced_pod(namespace, shell_pod("outlives", f"sleep 2; touch {marker}; exit 0"))
    wait_for_pod_phase(core, namespace, "outlives", ("Running",))
    control_plane.stop_component(CLUSTER_DIR, "kube-apiserver")
    try:
        wait_for(marker.exists, "the container to end while the API server is down", timeout=30)
        time.sleep(1)  # the agent's first write of the end meets no API server
    finally:
        control_plane.restart_component(CLUSTER_DIR, "kube-apiserver")
    pod = wait_for_pod_phase(core, namespace, "outlives", ("Failed", "Succeeded"), timeout=30)
    assert pod.status.phase == "Succeeded"
    assert pod.status.container_statuses[0].state.terminated.exit_code == 0


def processes_of(directory: Path) -> set[int]:
    """Processes whose command line names `directory` or that run in it (a container's cwd)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            named = str(directory).encode() in Path(f"/proc/{entry}/cmdline").read_bytes()
            if named or Path(os.readlink(f"/proc/{entry}/cwd")).is_relative_to(directory):
                found.add(int(entry))
    return found


def test_second_cluster_runs_beside_and_stops_without_a_trace(
    cluster: control_plane.ClusterState, api_client: client.ApiClient, tmp_path: Path
) -> None:
    directory = tmp_path / "second"
    second = control_plane.up(directory)
    try:
        assert second.apiserver_port != cluster.apiserver_port
        second_api = api_client_for(second.kubeconfig)
        versions = [client.VersionApi(c).get_code().git_version for c in (api_client, second_api)]
        assert versions == [build.kubernetes_version()] * 2
        # Separate stores: what one cluster holds, the other does not.
        second_core = client.CoreV1Api(second_api)
        second_core.create_namespaced_config_map("default", {"metadata": {"name": "only-here"}})
        with pytest.raises(client.ApiException) as absent:
            client.CoreV1Api(api_client).read_namespaced_config_map("only-here", "default")
        assert absent.value.status == 404
        # A running container too must go with its cluster.
        second_core.create_namespaced_pod("default", shell_pod("lingering", "sleep 600"))
        wait_for_pod_phase(second_core, "default", "lingering", ("Running",))
        assert set(second.pids.values()) < processes_of(directory)
    finally:
        control_plane.down(directory)
    assert processes_of(directory) == set()
    assert client.VersionApi(api_client).get_code().git_version == build.kubernetes_version()


def test_thousand_simulated_pods_run_through_the_api_server(core: client.CoreV1Api, namespace: str) -> None:
    count = 1000
    finished: set[str] = set()
    rv = core.list_namespaced_pod(namespace).metadata.resource_version
    done = threading.Event()

    def watch_pods() -> None:
        # The API server closes a watch whose reader falls behind: list_watch resumes it.
        for event in list_watch(
            functools.partial(core.list_namespaced_pod, namespace),
            done,
            resource_version=rv,
            timeout_seconds=240,
        ):
            finished.update(
                p["metadata"]["name"]
                for p in objects(event)
                if p.get("status", {}).get("phase") == "Succeeded"
            )
            if len(finished) == count:
                done.set()

    watcher = threading.Thread(target=watch_pods, daemon=True)
    watcher.start()

    def create(i: int) -> None:
        core.create_namespaced_pod(
            namespace,
            {
                "metadata": {
                    "name": f"sim-{i}",
                    "annotations": {DURATION_ANNOTATION: "1", EXIT_CODE_ANNOTATION: "0"},
                },
                "spec": {
                    "restartPolicy": "Never",
                    "nodeSelector": {RUNTIME_LABEL: "simulated"},
                    "tolerations": [{"key": SIMULATED_TAINT, "operator": "Exists", "effect": "NoSchedule"}],
                    "containers": [{"name": "base", "image": "simulated"}],
                },
            },
            _preload_content=False,
        )

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(create, range(count)))
    assert done.wait(240), f"only {len(finished)} of {count} simulated pods succeeded"
    core.delete_collection_namespaced_pod(namespace)
