"""Each fault, injected into a running installation with the tools the tests already use.

Components of the cluster are killed and started again by `devcluster.control_plane` (as the
cluster and end-to-end tests do), pods are deleted through the API server, Airflow's processes
are the stack's own. A fault of a kind that hits one cluster hits the one its `cluster` parameter
names (chaos/schedule.py; the first, `default`, when it names none). Every injection returns when
the fault is over (the component is back, the limit lifted); `Record.over` marks that moment, from
which recovery is timed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devcluster import control_plane, process_tree
from devcluster.airflow_stack import AirflowStack, _pg_bin
from kubernetes import client

from chaos import identities, load, neighbour
from chaos.observe import try_key_of
from chaos.schedule import DISRUPTION_KINDS, Fault, cluster_hit

OVERLOAD_NAME = "chaos-overload"
RECLAIM_TAINT = "chaos.k8s-executor.dev/reclaimed"
PREEMPTOR = "chaos-preemptor"
QUOTA_NAME = "chaos-quota"

TryKey = tuple[str, str, str, int, int]  # dag_id, task_id, run_id, map_index, try_number
VICTIM_TIME_LEFT_S = 20
# A pod fault waits this long at most for a long task to hit in its cluster: with a second cluster
# each cluster has a run every other `--run-every`.
VICTIM_WAIT_S = 30.0
DEFAULT_CLUSTER = load.DEFAULT_CLUSTER


@dataclass
class Record:
    """What became of one scheduled fault."""

    fault: Fault
    note: str = ""  # how it was mapped onto the executor, if it was
    started: float | None = None
    over: float | None = None
    detail: str = ""
    skipped: str = ""
    cluster: str = ""  # the cluster it hit: the executor's name for it (and the development cluster's)

    def as_json(self, t0: float) -> dict[str, Any]:
        return {
            "kind": self.fault.kind,
            "cluster": self.cluster or None,
            "at_s": self.fault.at_s,
            "params": self.fault.params,
            "started_s": None if self.started is None else round(self.started - t0, 1),
            "over_s": None if self.over is None else round(self.over - t0, 1),
            "note": self.note,
            "detail": self.detail,
            "skipped": self.skipped,
        }


@dataclass
class Target:
    """One cluster the executors launch pods in, as the faults reach it."""

    name: str  # the executor's name for it: "default" (the in-cluster connection), or the second's
    development_cluster: str  # devcluster's name for it: "chaos", "chaos-east"
    cluster_dir: Path
    core: client.CoreV1Api  # the cluster's admin
    namespace: str
    # The identities the schedulers reach it with (the overload's FlowSchema matches them).
    scheduler_identities: list[identities.Identity]
    # The other tenant whose requests crowd the executors' out under the overload fault.
    neighbour: identities.Identity

    @property
    def label(self) -> str:
        return f"{self.name} ({self.development_cluster})"


@dataclass
class World:
    """The installation under fault: the clusters, the Airflow stack, and its schedulers."""

    # The executor's name for each cluster -> the cluster; "default" first.
    targets: dict[str, Target]
    stack: AirflowStack
    executor: str  # "ours" or "official"
    # Scheduler process name -> its identity in the first cluster (a ServiceAccount, its token in
    # a file at the in-cluster path).
    schedulers: dict[str, identities.Identity]
    # Taken around every start, kill and poll of a scheduler process, so the watch on exits
    # never mistakes an injected kill for an exit of its own.
    lock: threading.Lock = field(default_factory=threading.Lock)
    killing: set[str] = field(default_factory=set)
    # The try each pod fault hit, and the fault: the reason its failure must give.
    victims: dict[TryKey, str] = field(default_factory=dict)
    # Triggers a DAG run of a cluster's DAG now: the faults that refuse creates start one, so that
    # creates meet them.
    trigger: Callable[[str], None] = lambda cluster: None
    # Scheduler process name -> what its mount namespace sees besides its in-cluster token: mount
    # point -> directory (its kubeconfig and token for the second cluster).
    mounts: dict[str, dict[str, Path]] = field(default_factory=dict)

    def start_scheduler(self, name: str) -> None:
        identity, mounts = self.schedulers[name], self.mounts.get(name, {})
        self.stack.start_component(
            "scheduler", name=name, wrap=lambda cmd: identities.in_pod(identity, cmd, mounts)
        )

    def target(self, fault: Fault) -> Target:
        """The cluster `fault` hits (the first for a fault of what all clusters share)."""
        return self.targets[cluster_hit(fault) or DEFAULT_CLUSTER]

    @property
    def default(self) -> Target:
        return self.targets[DEFAULT_CLUSTER]

    @property
    def apiserver_port(self) -> int:
        state = control_plane.ClusterState.load(self.default.cluster_dir)
        assert state is not None
        return state.apiserver_port


def inject(world: World, record: Record) -> None:
    fault = record.fault
    record.started = time.time()
    if cluster_hit(fault) is not None:
        record.cluster = world.target(fault).label
    handler = _HANDLERS[fault.kind]
    handler(world, record)
    if record.over is None and not record.skipped:
        record.over = time.time()


# --- Airflow's processes -------------------------------------------------------------------------


def _scheduler_name(world: World, fault: Fault) -> str:
    names = list(world.schedulers)
    return names[int(fault.params.get("scheduler", 0)) % len(names)]


def scheduler_kill(world: World, record: Record) -> None:
    """SIGKILL of the scheduler's own process, as an OOM kill does; what it leaves in its process
    group is killed 2 s later, as a container's runtime does when the main process dies. It is
    started again after `down_s`, as a Deployment would."""
    name = _scheduler_name(world, record.fault)
    with world.lock:
        proc = world.stack.procs.get(name)
        if proc is None or proc.poll() is not None:
            record.skipped = f"{name} was not running"
            return
        world.killing.add(name)
    try:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        record.detail = f"{name} (pid {proc.pid})"
        time.sleep(2)
        left = [pid for pid in _group(proc.pid) if pid != proc.pid]
        if left:
            record.detail += f"; {len(left)} process(es) of its group still there after 2 s"
        with world.lock:
            world.stack.kill_component(name, signal.SIGKILL)
        time.sleep(float(record.fault.params.get("down_s", 5)))
        with world.lock:
            world.start_scheduler(name)
    finally:
        with world.lock:
            world.killing.discard(name)


def _group(pgid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, ValueError):
                if os.getpgid(int(entry)) == pgid and process_tree.stat_fields(int(entry)):
                    state = process_tree.stat_fields(int(entry))
                    if state and state[0] not in ("Z", "X"):
                        found.append(int(entry))
    return found


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _talks_to(pid: int, port: int) -> bool:
    """True if `pid` holds a TCP connection to `port` on this machine (its watch, say)."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                cols = line.split()
                if len(cols) > 9 and int(cols[2].rsplit(":", 1)[1], 16) == port and cols[9] in inodes:
                    return True
    return False


def helper_pids(world: World, name: str, helper: str, target: Target | None = None) -> list[int]:
    """The helper processes of scheduler `name` for cluster `target` (the first when None): ours run
    `python -m k8s_executor.helper ... NAME`, a launcher and a watcher per cluster, named after the
    cluster but for the first (scheduler.py); the official executor's watcher is a forked child
    holding a connection to the API server (its other children, multiprocessing managers and the
    log server, hold none)."""
    proc = world.stack.procs.get(name)
    if proc is None:
        return []
    target = target or world.default
    children = [pid for pid in process_tree.tree(proc.pid) if pid != proc.pid]
    if world.executor == "ours":
        part = "" if target.name == DEFAULT_CLUSTER else target.name
        wanted = (
            "-".join(filter(None, ("k8s-executor-launcher", part)))
            if helper == "launcher"
            else "-".join(filter(None, ("k8s-executor-watcher", part, target.namespace)))
        )
        return [
            pid for pid in children if "k8s_executor.helper" in (args := _cmdline(pid)) and wanted in args
        ]
    port = world.apiserver_port
    return [pid for pid in children if _talks_to(pid, port)]


def helper_kill(world: World, record: Record) -> None:
    name = _scheduler_name(world, record.fault)
    helper = str(record.fault.params.get("helper", "watcher"))
    target = world.target(record.fault)
    # A scheduler started a moment ago (after a kill, or its exit on a database restart) has no
    # helper yet: waited for, up to the time a start takes on a loaded machine.
    deadline = time.monotonic() + 60
    while True:
        with world.lock:
            pids = helper_pids(world, name, helper, target)
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if pids:
            break
        if time.monotonic() > deadline:
            record.skipped = f"no {helper} process of {name} found"
            return
        time.sleep(1)
    record.detail = f"{helper} of {name} (pid {', '.join(map(str, pids))})"


# --- The cluster ------------------------------------------------------------------------------------


def apiserver_restart(world: World, record: Record) -> None:
    control_plane.restart_component(world.target(record.fault).cluster_dir, "kube-apiserver")


def etcd_compaction(world: World, record: Record) -> None:
    """As tests/e2e/test_kubernetes_executor.py cuts the watch: the API server goes away, etcd moves
    on (lease renewals), its history is compacted, and a restarted API server (with an empty watch
    cache) answers a watch from the old resourceVersion with 410 Gone."""
    directory = world.target(record.fault).cluster_dir
    control_plane.restart_component(directory, "kube-apiserver")
    time.sleep(5)
    revision = control_plane.compact_etcd(directory)
    control_plane.restart_component(directory, "kube-apiserver")
    record.detail = f"compacted at revision {revision}"


def node_agent_restart(world: World, record: Record) -> None:
    control_plane.restart_component(world.target(record.fault).cluster_dir, "node-agent")


def _running_long_pods(world: World, target: Target) -> list[tuple[str, TryKey]]:
    """Pods of long tasks that run, whose task runs on that try, with a retry left: a fault that
    fails one leaves its task a way to its outcome, and a try not yet started would be launched
    again without spending a retry (pod_launch_failure_retries), which is not what is hit here."""
    found = []
    for pod in target.core.list_namespaced_pod(target.namespace).items:
        a = pod.metadata.annotations or {}
        if (
            pod.status.phase != "Running"
            or pod.metadata.deletion_timestamp
            or not load.is_load_dag(a.get("dag_id"))
            or a.get("task_id") != "long"
        ):
            continue
        key = try_key_of(a)
        assert key is not None
        rows = world.stack.sql(
            "SELECT state, try_number, extract(epoch from now() - start_date) FROM task_instance "
            "WHERE dag_id = %s AND task_id = %s AND run_id = %s AND map_index = %s",
            *key[:4],
        )
        if (
            rows
            and rows[0][0] == "running"
            and rows[0][1] == key[4]
            and key[4] <= load.RETRIES["long"]
            # With time left to run: a try that ends as its pod is deleted may well succeed.
            and float(rows[0][2] or 0) < load.LONG_S - VICTIM_TIME_LEFT_S
        ):
            found.append((pod.metadata.name, key))
    return sorted(found)


def _victims(world: World, target: Target, wanted: Callable[[TryKey], bool]) -> list[tuple[str, TryKey]]:
    """The long tasks' pods a pod fault may hit in `target`; waited for up to VICTIM_WAIT_S when
    there is none yet with two clusters (each has a run every other `--run-every`)."""
    deadline = time.monotonic() + (VICTIM_WAIT_S if len(world.targets) > 1 else 0)
    while True:
        candidates = [(name, key) for name, key in _running_long_pods(world, target) if wanted(key)]
        if candidates or time.monotonic() >= deadline:
            return candidates
        time.sleep(2)


def _pod_delete(world: World, record: Record, grace: int | None) -> None:
    target = world.target(record.fault)
    candidates = _victims(world, target, lambda key: key not in world.victims)
    if not candidates:
        record.skipped = "no long task running to hit"
        return
    name, key = candidates[int(float(record.fault.params.get("pick", 0)) * len(candidates))]
    world.victims[key] = record.fault.kind
    target.core.delete_namespaced_pod(name, target.namespace, grace_period_seconds=grace)
    record.detail = f"{name} ({key[2]} {key[1]}[{key[3]}] try {key[4]})"


def pod_evict(world: World, record: Record) -> None:
    """`kubectl drain` of one pod: the Eviction API marks it DisruptionTarget, then deletes it with
    its grace period."""
    # A try another disruption hit may be hit again (it was launched again, its retries kept).
    target = world.target(record.fault)
    candidates = _victims(
        world, target, lambda key: world.victims.get(key, DISRUPTION_KINDS[0]) in DISRUPTION_KINDS
    )
    if not candidates:
        record.skipped = "no long task running to hit"
        return
    name, key = candidates[int(float(record.fault.params.get("pick", 0)) * len(candidates))]
    world.victims.setdefault(key, record.fault.kind)
    namespace = target.namespace
    target.core.create_namespaced_pod_eviction(
        name,
        namespace,
        client.V1Eviction(metadata=client.V1ObjectMeta(name=name, namespace=namespace)),
    )
    record.detail = f"{name} ({key[2]} {key[1]}[{key[3]}] try {key[4]})"


def _busiest_node(world: World, record: Record, only_long: bool = False) -> str | None:
    """The process node of the fault's cluster with the most long tasks running, every task pod on
    it (`only_long`: its long tasks') a victim of the fault; None (the fault skipped) when no long
    task runs."""
    target = world.target(record.fault)
    long_pods = dict(_victims(world, target, lambda key: True))
    pods = target.core.list_namespaced_pod(target.namespace).items
    by_node: dict[str, int] = {}
    for pod in pods:
        if pod.metadata.name in long_pods and pod.spec.node_name:
            by_node[pod.spec.node_name] = by_node.get(pod.spec.node_name, 0) + 1
    if not by_node:
        record.skipped = "no long task running to hit"
        return None
    node = max(sorted(by_node), key=lambda n: by_node[n])
    hit = []
    for pod in pods:
        a = pod.metadata.annotations or {}
        key = try_key_of(a)
        # Every pod bound there that has not ended: one still starting is ended too.
        if pod.spec.node_name != node or pod.status.phase in ("Succeeded", "Failed") or key is None:
            continue
        if only_long and pod.metadata.name not in long_pods:
            continue
        world.victims.setdefault(key, record.fault.kind)
        hit.append(pod.metadata.name)
    record.detail = f"{node}: {len(hit)} task pods ({by_node[node]} long)"
    return node


def node_taint(world: World, record: Record) -> None:
    """A spot node reclaimed: a NoExecute taint the task pods do not tolerate, for `hold_s`. The
    taint manager deletes every pod on it (DisruptionTarget DeletionByTaintManager)."""
    node = _busiest_node(world, record)
    if node is None:
        return
    core = world.target(record.fault).core
    taints = core.read_node(node).spec.taints or []
    reclaim = client.V1Taint(key=RECLAIM_TAINT, value="now", effect="NoExecute")
    core.patch_node(node, {"spec": {"taints": [*taints, reclaim]}})
    try:
        time.sleep(float(record.fault.params.get("hold_s", 15)))
    finally:
        left = [t for t in core.read_node(node).spec.taints or [] if t.key != RECLAIM_TAINT]
        core.patch_node(node, {"spec": {"taints": left or None}})


def pod_preempt(world: World, record: Record) -> None:
    """A pod of higher priority that needs a whole node: the scheduler preempts the task pods there
    that request CPU (the long ones: DisruptionTarget PreemptionByScheduler). It runs `hold_s`."""
    node = _busiest_node(world, record, only_long=True)
    if node is None:
        return
    target = world.target(record.fault)
    scheduling = client.SchedulingV1Api(target.core.api_client)
    with contextlib.suppress(client.ApiException):
        scheduling.create_priority_class(
            client.V1PriorityClass(metadata=client.V1ObjectMeta(name=PREEMPTOR), value=1_000_000)
        )
    cpu = target.core.read_node(node).status.allocatable["cpu"]
    namespace = target.namespace
    target.core.create_namespaced_pod(
        namespace,
        client.V1Pod(
            metadata=client.V1ObjectMeta(name=PREEMPTOR, namespace=namespace),
            spec=client.V1PodSpec(
                priority_class_name=PREEMPTOR,
                node_selector={"kubernetes.io/hostname": node},
                termination_grace_period_seconds=0,
                containers=[
                    client.V1Container(
                        name="main",
                        image="busybox",
                        command=["sleep", "3600"],
                        resources=client.V1ResourceRequirements(requests={"cpu": cpu}),
                    )
                ],
            ),
        ),
    )
    try:
        time.sleep(float(record.fault.params.get("hold_s", 15)))
    finally:
        target.core.delete_namespaced_pod(PREEMPTOR, namespace, grace_period_seconds=0)


def node_delete(world: World, record: Record) -> None:
    """A node lost and its Node object deleted: the pod garbage collector deletes its pods
    (DisruptionTarget DeletionByPodGC) once it has been gone 40 s. The node comes back `hold_s`
    after its pods are gone, as a new machine of the pool would, registered by its agent's
    restart."""
    node = _busiest_node(world, record)
    if node is None:
        return
    target = world.target(record.fault)
    target.core.delete_node(node)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and any(
            p.spec.node_name == node for p in target.core.list_namespaced_pod(target.namespace).items
        ):
            time.sleep(2)
        time.sleep(float(record.fault.params.get("hold_s", 15)))
    finally:
        control_plane.restart_component(target.cluster_dir, "node-agent")


def pod_delete(world: World, record: Record) -> None:
    # As `kubectl delete pod` does: with the pod's own grace period (SIGTERM, then SIGKILL).
    _pod_delete(world, record, None)


def pod_force_delete(world: World, record: Record) -> None:
    # `kubectl delete pod --grace-period=0 --force`: the object goes at once, the worker is
    # killed without a chance to report.
    _pod_delete(world, record, 0)


def apiserver_overload(world: World, record: Record) -> None:
    """The executors' requests are refused with 429 for `hold_s`: an API Priority and Fairness
    level of no nominal seats that rejects rather than queues, matched by a FlowSchema ahead of
    every default one but the exempt, shared with a neighbour that keeps its one seat taken
    (chaos/neighbour.py). A DAG run is started with it, so that creates meet it."""
    target = world.target(record.fault)
    flow = client.FlowcontrolApiserverV1Api(target.core.api_client)
    level = {
        "metadata": {"name": OVERLOAD_NAME},
        "spec": {
            "type": "Limited",
            "limited": {
                "nominalConcurrencyShares": 0,
                "lendablePercent": 0,
                "borrowingLimitPercent": 0,
                "limitResponse": {"type": "Reject"},
            },
        },
    }
    schema = {
        "metadata": {"name": OVERLOAD_NAME},
        "spec": {
            "priorityLevelConfiguration": {"name": OVERLOAD_NAME},
            "matchingPrecedence": 200,
            "distinguisherMethod": {"type": "ByUser"},
            "rules": [
                {
                    "subjects": [
                        {
                            "kind": "ServiceAccount",
                            "serviceAccount": {"namespace": i.namespace, "name": i.name},
                        }
                        for i in [*target.scheduler_identities, target.neighbour]
                    ],
                    "resourceRules": [
                        {
                            "verbs": ["*"],
                            "apiGroups": ["*"],
                            "resources": ["*"],
                            "namespaces": ["*"],
                            "clusterScope": True,
                        }
                    ],
                    "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
                }
            ],
        },
    }
    crowd = neighbour.Crowd(target.neighbour, target.core.api_client.configuration.host)
    flow.create_priority_level_configuration(level)
    try:
        flow.create_flow_schema(schema)
        # APF's configuration reaches the request filter within a second or so.
        time.sleep(2)
        crowd.start()
        world.trigger(target.name)
        time.sleep(float(record.fault.params.get("hold_s", 15)))
    finally:
        crowd.stop()
        record.detail = f"the neighbour's answers by status: {dict(sorted(crowd.answers.items()))}"
        with contextlib.suppress(client.ApiException):
            flow.delete_flow_schema(OVERLOAD_NAME)
        with contextlib.suppress(client.ApiException):
            flow.delete_priority_level_configuration(OVERLOAD_NAME)


def resource_quota(world: World, record: Record) -> None:
    """A quota of exactly the pods that run now: full at once, so every create is refused (403)
    until it is deleted `hold_s` later. A DAG run is started with it, so that creates meet it."""
    target = world.target(record.fault)
    namespace = target.namespace
    pods = [
        p
        for p in target.core.list_namespaced_pod(namespace).items
        if p.status.phase not in ("Succeeded", "Failed")
    ]
    target.core.create_namespaced_resource_quota(
        namespace, {"metadata": {"name": QUOTA_NAME}, "spec": {"hard": {"pods": str(len(pods))}}}
    )
    record.detail = f"pods: {len(pods)}"
    try:
        world.trigger(target.name)
        time.sleep(float(record.fault.params.get("hold_s", 15)))
    finally:
        target.core.delete_namespaced_resource_quota(QUOTA_NAME, namespace)


def credential_invalidated(world: World, record: Record) -> None:
    """The token a scheduler holds stops being accepted; a fresh one is already in its token file
    (chaos/identities.py). It is the first cluster's (the in-cluster connection). A DAG run is
    started with it, so that creates meet it."""
    name = _scheduler_name(world, record.fault)
    identity = world.schedulers[name]
    old = identities.invalidate(world.default.core, identity)
    record.detail = f"{name}: the token bound to Secret {old} invalidated"
    world.trigger(DEFAULT_CLUSTER)


def postgres_restart(world: World, record: Record) -> None:
    """PostgreSQL stops at once (as a crash: `-m immediate`, every connection cut) and starts
    again `down_s` later with the options it had (`pg_ctl restart` reads them back)."""
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    data = str(world.stack.pg_data)
    subprocess.run([*as_pg, _pg_bin("pg_ctl"), "-D", data, "-m", "immediate", "stop"], capture_output=True)
    time.sleep(float(record.fault.params.get("down_s", 2)))
    done = subprocess.run(
        [*as_pg, _pg_bin("pg_ctl"), "-D", data, "-l", f"{data}/server.log", "-w", "restart"],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        record.detail = f"pg_ctl restart failed: {done.stderr.strip()[-300:]}"


_HANDLERS = {
    "scheduler_kill": scheduler_kill,
    "helper_kill": helper_kill,
    "apiserver_restart": apiserver_restart,
    "etcd_compaction": etcd_compaction,
    "node_agent_restart": node_agent_restart,
    "pod_delete": pod_delete,
    "pod_force_delete": pod_force_delete,
    "apiserver_overload": apiserver_overload,
    "resource_quota": resource_quota,
    "postgres_restart": postgres_restart,
    "credential_invalidated": credential_invalidated,
    "pod_evict": pod_evict,
    "node_taint": node_taint,
    "pod_preempt": pod_preempt,
    "node_delete": node_delete,
}

# What a failure caused by each fault must say (lower case, any of them). Only the faults that
# are meant to fail a try have words: a try failed by any other fault is a wrong reason.
FAULT_WORDS: dict[str, tuple[str, ...]] = {
    "pod_delete": ("deleted",),
    "pod_force_delete": ("deleted",),
    "resource_quota": ("quota",),
    "apiserver_overload": ("429", "too many requests", "toomanyrequests"),
    "credential_invalidated": ("401", "unauthorized"),
    # Disrupted tries should not fail at all (they are launched again); when they do, their
    # reason must still say what the cluster did.
    "pod_evict": ("evict",),
    "node_taint": ("taint",),
    "pod_preempt": ("preempt",),
    "node_delete": ("garbage collector",),
}
