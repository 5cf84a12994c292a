"""The process node agent: plays kubelet for one or more Nodes.

There is no container runtime here, so a pod's containers run as local
processes (the image is not pulled; the host's programs run) under
`devcluster.shim`, which records each exit code on disk so an agent restart
does not lose what its pods did. A node may instead use the simulated runtime:
pods run nothing and end after the duration and exit code their annotations
give, so thousands of pods can move through the real API server on 2 cores.

Everything else is kubelet's contract with the API server: Node objects with
capacity, Lease heartbeats, pod status with phases, conditions and container
states, graceful deletion (SIGTERM, grace period, SIGKILL, then the pod object
is removed) and the kubelet API for container logs.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import heapq
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException
from urllib3.exceptions import HTTPError

from devcluster import build, process_tree
from devcluster.list_watch import LIST, list_watch, objects
from devcluster.pod_status import ContainerState, now_iso, parse_time, pod_status
from devcluster.status_writer import StatusWriter
from devcluster.volumes import MountError, PodVolumes, downward_value
from k8s_executor.kube_client import merge_patch, read_body, read_json

log = logging.getLogger("node-agent")

DURATION_ANNOTATION = "devcluster.k8s-executor.dev/duration-seconds"
# A simulated pod with this annotation runs until the named file exists (benchmarks end a whole
# burst at one moment this way, without a single extra API request).
FINISH_FILE_ANNOTATION = "devcluster.k8s-executor.dev/finish-when-file-exists"
NODE_AGENT_USER_AGENT = "devcluster-node-agent"
EXIT_CODE_ANNOTATION = "devcluster.k8s-executor.dev/exit-code"
SIMULATED_TAINT = "devcluster.k8s-executor.dev/simulated"
RUNTIME_LABEL = "devcluster.k8s-executor.dev/runtime"
DEFAULT_FAIL_IMAGES = r"(^|/)(does-not-exist|unpullable)[^/]*$|^invalid\.registry/"
# Pull failures set while the agent runs (a registry outage that ends, say): a file in the state
# directory, one rule a line, "<pod name regex> <image regex>", read at every pull attempt.
PULL_FAILURES_FILE = "pull-failures"
# kubecontainer.MaxContainerTerminationMessageLogLines / ...LogLength (pkg/kubelet/container).
TERMINATION_MESSAGE_LINES = 80
TERMINATION_MESSAGE_BYTES = 2048
BACKOFF_S = 2.0
# Kubelet's words for a pod ended at its activeDeadlineSeconds (pkg/kubelet/active_deadline.go).
ACTIVE_DEADLINE_MESSAGE = "Pod was active on the node longer than the specified deadline"
DEADLINE_CHECK_S = 0.5


def simulated_pod_template(finish_file: Path) -> dict[str, Any]:
    """A pod template for the simulated node: its pods run nothing, and end (Succeeded) together
    when `finish_file` exists, without a single extra API request."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"annotations": {FINISH_FILE_ANNOTATION: str(finish_file)}},
        "spec": {
            "restartPolicy": "Never",
            "nodeSelector": {RUNTIME_LABEL: "simulated"},
            "tolerations": [{"key": SIMULATED_TAINT, "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [{"name": "base", "image": "simulated"}],
        },
    }


# How often a running pod's volumes are set up again (kubelet's pod sync, every minute or so;
# shorter here so that a test sees a changed config map or a renewed token soon).
VOLUME_SYNC_S = 10.0


@dataclass
class NodeSpec:
    name: str
    runtime: str = "process"
    capacity: dict[str, str] = field(default_factory=lambda: {"cpu": "8", "memory": "16Gi", "pods": "250"})
    labels: dict[str, str] = field(default_factory=dict)
    taints: list[dict[str, str]] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str) -> NodeSpec:
        """`name=N,runtime=process|simulated,cpu=8,memory=16Gi,pods=250,res.R=Q,label.K=V,taint.K=V:Effect`."""
        items = dict(part.split("=", 1) for part in text.split(",") if part)
        spec = cls(name=items.pop("name"), runtime=items.pop("runtime", "process"))
        for key, value in items.items():
            if key in ("cpu", "memory", "pods"):
                spec.capacity[key] = value
            elif key.startswith("res."):
                spec.capacity[key[len("res.") :]] = value
            elif key.startswith("label."):
                spec.labels[key[len("label.") :]] = value
            elif key.startswith("taint."):
                taint_value, effect = value.rsplit(":", 1)
                spec.taints.append({"key": key[len("taint.") :], "value": taint_value, "effect": effect})
            else:
                raise ValueError(f"unknown node field {key!r} in {text!r}")
        if spec.runtime == "simulated":
            spec.labels.setdefault(RUNTIME_LABEL, "simulated")
            spec.taints.append({"key": SIMULATED_TAINT, "value": "true", "effect": "NoSchedule"})
        elif spec.runtime != "process":
            raise ValueError(f"runtime must be process or simulated, not {spec.runtime!r}")
        return spec


DEFAULT_NODES = [
    "name=devnode-1,runtime=process,cpu=8,memory=16Gi,pods=250,label.disktype=ssd",
    # A node like the GPU nodes of the specification's examples (the processes use no GPU).
    "name=devgpu-1,runtime=process,cpu=8,memory=16Gi,pods=50,res.nvidia.com/gpu=4,label.accelerator=nvidia-gpu,"
    "label.disktype=ssd",
    "name=devsim-1,runtime=simulated,cpu=1000,memory=4000Gi,pods=20000",
]


class Agent:
    def __init__(
        self, api: client.CoreV1Api, nodes: list[NodeSpec], state_dir: Path, port: int, fail_images: str
    ) -> None:
        self.api = api
        self.coordination = client.CoordinationV1Api(api.api_client)
        self.nodes = {n.name: n for n in nodes}
        self.state_dir = state_dir
        self.port = port
        self.fail_images = re.compile(fail_images)
        self.pods: dict[str, PodWorker] = {}
        self.by_name: dict[tuple[str, str], str] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.simulator = Simulator(self)
        self.patch_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="requests")
        self.statuses = StatusWriter(self._write_status, self.stopping)
        server = urllib.parse.urlsplit(api.api_client.configuration.host)
        self.api_service_env = {
            "KUBERNETES_SERVICE_HOST": server.hostname or "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": str(server.port or 443),
        }

    # --- nodes -----------------------------------------------------------
    def register_nodes(self) -> None:
        for spec in self.nodes.values():
            body = {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": spec.name,
                    "labels": {
                        "kubernetes.io/hostname": spec.name,
                        "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": "amd64",
                        **spec.labels,
                    },
                },
                "spec": {"taints": spec.taints} if spec.taints else {},
                "status": self._node_status(spec),
            }
            try:
                read_body(self.api.create_node(body, _preload_content=False))
            except ApiException as exc:
                if exc.status != 409:
                    raise
                self._patch(
                    f"/api/v1/nodes/{spec.name}",
                    {"metadata": body["metadata"], "spec": {"taints": spec.taints or None}},
                )
                self._patch(f"/api/v1/nodes/{spec.name}/status", {"status": body["status"]})

    def _patch(self, path: str, body: dict[str, Any]) -> None:
        read_body(merge_patch(self.api.api_client, path, body))

    def _node_status(self, spec: NodeSpec) -> dict[str, Any]:
        now = now_iso()
        capacity = {**spec.capacity, "ephemeral-storage": "100Gi"}

        def cond(kind: str, status: str, reason: str) -> dict[str, str]:
            return {
                "type": kind,
                "status": status,
                "reason": reason,
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            }

        return {
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": [
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID"),
                cond("Ready", "True", "KubeletReady"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": spec.name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.port}},
            "nodeInfo": {
                "machineID": spec.name,
                "systemUUID": spec.name,
                "bootID": spec.name,
                "kernelVersion": os.uname().release,
                "osImage": "devcluster",
                "operatingSystem": "linux",
                "architecture": "amd64",
                "containerRuntimeVersion": f"devcluster-{spec.runtime}://0.1",
                "kubeletVersion": build.kubernetes_version(),
                "kubeProxyVersion": "",
            },
        }

    def heartbeat_loop(self) -> None:
        last_status = 0.0
        while not self.stopping.wait(0 if last_status == 0 else 10):
            for name in self.nodes:
                try:
                    self._renew_lease(name)
                    if time.monotonic() - last_status > 60:
                        self._patch(
                            f"/api/v1/nodes/{name}/status", {"status": self._node_status(self.nodes[name])}
                        )
                except Exception:
                    log.exception("heartbeat of node %s failed", name)
            if time.monotonic() - last_status > 60:
                last_status = time.monotonic()

    def _renew_lease(self, name: str) -> None:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name, "namespace": "kube-node-lease"},
            "spec": {
                "holderIdentity": name,
                "leaseDurationSeconds": 40,
                "renewTime": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime()),
            },
        }
        try:
            self._patch(
                f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}",
                {"spec": body["spec"]},
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
            read_body(
                self.coordination.create_namespaced_lease("kube-node-lease", body, _preload_content=False)
            )

    # --- pods ------------------------------------------------------------
    def watch_node(self, node: str) -> None:
        """The node's pods, listed then watched (list_watch); a relist forgets the pods gone."""
        for event in list_watch(
            functools.partial(self.api.list_pod_for_all_namespaces, field_selector=f"spec.nodeName={node}"),
            self.stopping,
            retry_s=0.5,
            on_error=lambda exc: log.warning("pod watch of %s restarts after: %s", node, exc),
        ):
            pods = objects(event)
            if event["type"] == LIST:
                self.forget_missing(node, {pod["metadata"]["uid"] for pod in pods})
            for pod in pods:
                try:
                    if event["type"] == "DELETED":
                        self.forget(pod["metadata"]["uid"])
                    else:
                        self.on_pod(node, pod)
                except Exception:
                    log.exception(
                        "%s of pod %s on %s not handled", event["type"], pod["metadata"]["name"], node
                    )

    def on_pod(self, node: str, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        with self.lock:
            worker = self.pods.get(uid)
            if worker is None:
                if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                    if pod["metadata"].get("deletionTimestamp"):
                        self.remove_pod(pod)
                    return
                worker = (SimulatedPod if self.nodes[node].runtime == "simulated" else ProcessPod)(self, pod)
                self.pods[uid] = worker
                self.by_name[(pod["metadata"]["namespace"], pod["metadata"]["name"])] = uid
                worker.start()
            else:
                worker.update(pod)
        if pod["metadata"].get("deletionTimestamp"):
            worker.request_deletion(int(pod["metadata"].get("deletionGracePeriodSeconds") or 0))

    def forget(self, uid: str) -> None:
        with self.lock:
            worker = self.pods.pop(uid, None)
            if worker:
                self.by_name.pop((worker.namespace, worker.name), None)
        if worker:
            self.statuses.drop(uid)
            worker.kill()
            worker.cleanup()

    def forget_missing(self, node: str, present: set[str]) -> None:
        with self.lock:
            gone = [uid for uid, w in self.pods.items() if w.node == node and uid not in present]
        for uid in gone:
            self.forget(uid)

    def _write_status(self, uid: str, namespace: str, name: str, status: dict[str, Any]) -> None:
        # A strategic merge patch, as kubelet's status manager sends (statusutil.PatchPodStatus):
        # conditions merge by type, so those other components own (DisruptionTarget, written by
        # the Eviction API, the scheduler's preemption, the taint manager) are kept.
        body = {"metadata": {"uid": uid}, "status": status}
        read_body(
            merge_patch(
                self.api.api_client,
                f"/api/v1/namespaces/{namespace}/pods/{name}/status",
                body,
                patch_type="application/strategic-merge-patch+json",
            )
        )

    def record_event(self, pod: dict[str, Any], kind: str, reason: str, message: str, container: str) -> None:
        """An Event about `pod`, as kubelet writes them (what `kubectl describe pod` shows)."""
        meta = pod["metadata"]
        stamp = now_iso()
        body = {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
                "fieldPath": f"spec.containers{{{container}}}",
            },
            "type": kind,
            "reason": reason,
            "message": message,
            "source": {"component": "kubelet", "host": pod["spec"].get("nodeName", "")},
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
            "reportingComponent": "kubelet",
        }
        self.patch_pool.submit(self._create_event, meta["namespace"], body)

    def _create_event(self, namespace: str, body: dict[str, Any]) -> None:
        try:
            read_body(self.api.create_namespaced_event(namespace, body, _preload_content=False))
        except ApiException as exc:
            log.warning("event %s not written: %s", body["reason"], exc.reason)

    def remove_pod(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        try:
            read_body(
                self.api.delete_namespaced_pod(
                    meta["name"],
                    meta["namespace"],
                    # With a body, the API server reads the options from it, not from the query.
                    body={"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}},
                    _preload_content=False,
                )
            )
        except ApiException as exc:
            if exc.status not in (404, 409):
                log.warning("pod %s/%s not removed: %s", meta["namespace"], meta["name"], exc.reason)

    def worker_for(self, namespace: str, name: str) -> PodWorker | None:
        with self.lock:
            uid = self.by_name.get((namespace, name))
            return self.pods.get(uid) if uid else None

    def shutdown(self) -> None:
        """Stop every container this agent started: `cluster down` leaves no stray process."""
        self.stopping.set()
        with self.lock:
            workers = list(self.pods.values())
        for worker in workers:
            worker.kill()


class PodWorker:
    def __init__(self, agent: Agent, pod: dict[str, Any]) -> None:
        self.agent = agent
        self.pod = pod
        meta, spec = pod["metadata"], pod["spec"]
        self.uid, self.namespace, self.name = meta["uid"], meta["namespace"], meta["name"]
        self.node = spec["nodeName"]
        self.restart_policy = spec.get("restartPolicy", "Always")
        self.init = [
            ContainerState(c["name"], c.get("image", ""), restartable=c.get("restartPolicy") == "Always")
            for c in spec.get("initContainers", [])
        ]
        # Kubelet's default waiting reason (kubelet_pods.go, convertToAPIContainerStatuses).
        waiting = "PodInitializing" if self.init else "ContainerCreating"
        self.main = [
            ContainerState(c["name"], c.get("image", ""), waiting_reason=waiting)
            for c in spec.get("containers", [])
        ]
        self.start_time = pod.get("status", {}).get("startTime") or now_iso()
        self.deleting = threading.Event()
        self.grace_s = 30
        self.dir = agent.state_dir / "pods" / self.uid
        # spec.activeDeadlineSeconds, which may be set or lowered on a running pod; once past it,
        # kubelet ends the pod: DeadlineExceeded.
        self.active_deadline_s: int | None = spec.get("activeDeadlineSeconds")
        self.deadline_exceeded = False

    def update(self, pod: dict[str, Any]) -> None:
        """A newer version of the pod object: what of its spec may change while it runs."""
        self.active_deadline_s = pod["spec"].get("activeDeadlineSeconds")

    def status(self, reason: str | None = None, message: str | None = None) -> dict[str, Any]:
        if self.deadline_exceeded and not any(c.running for c in self.init + self.main):
            reason, message = "DeadlineExceeded", ACTIVE_DEADLINE_MESSAGE
        return pod_status(
            self.uid,
            self.init,
            self.main,
            self.restart_policy,
            self.start_time,
            reason=reason,
            message=message,
            failed=reason == "DeadlineExceeded",
        )

    def publish(self, reason: str | None = None, message: str | None = None) -> None:
        self.agent.statuses.set(self.uid, self.namespace, self.name, self.status(reason, message))

    def start(self) -> None:
        raise NotImplementedError

    def request_deletion(self, grace_s: int) -> None:
        self.grace_s = grace_s
        self.deleting.set()

    def kill(self) -> None:
        """Stop whatever runs for this pod, without waiting for a grace period."""

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_path(self, container: str) -> Path:
        return self.dir / f"{container}.log"

    def container(self, name: str) -> ContainerState | None:
        return next((c for c in self.init + self.main if c.name == name), None)


class SimulatedPod(PodWorker):
    """A pod that runs nothing: Running at once, terminated after its annotated duration."""

    def start(self) -> None:
        annotations = self.pod["metadata"].get("annotations") or {}
        duration = float(annotations.get(DURATION_ANNOTATION, "0"))
        self.exit_code = int(annotations.get(EXIT_CODE_ANNOTATION, "0"))
        started = now_iso()
        for c in self.init:
            c.started_at, c.finished_at, c.exit_code = started, started, 0
        for c in self.main:
            c.started_at = started
        finish_file = annotations.get(FINISH_FILE_ANNOTATION)
        if duration > 0 or finish_file:
            self.publish()
        if finish_file:
            self.agent.simulator.when_exists(Path(finish_file), self.finish)
        else:
            self.agent.simulator.at(time.monotonic() + duration, self.finish)

    def finish(self) -> None:
        if self.deleting.is_set():
            return
        finished = now_iso()
        for c in self.main:
            c.finished_at, c.exit_code = finished, self.exit_code
        self.publish()

    def request_deletion(self, grace_s: int) -> None:
        if not self.deleting.is_set():
            super().request_deletion(grace_s)
            self.agent.patch_pool.submit(self.agent.remove_pod, self.pod)


FINISH_FILE_POLL_S = 0.05


class Simulator:
    """One timer thread for all simulated pods: thousands of threads would not fit in 2 cores."""

    def __init__(self, agent: Agent) -> None:
        self.heap: list[tuple[float, int, Callable[[], None]]] = []
        self.files: dict[Path, list[Callable[[], None]]] = {}
        self.cond = threading.Condition()
        self.counter = 0
        self.agent = agent

    def at(self, when: float, fn: Callable[[], None]) -> None:
        with self.cond:
            self.counter += 1
            heapq.heappush(self.heap, (when, self.counter, fn))
            self.cond.notify()

    def when_exists(self, path: Path, fn: Callable[[], None]) -> None:
        """Run `fn` once `path` exists; one poll serves every pod waiting on the same file."""
        with self.cond:
            waiting = self.files.setdefault(path, [])
            waiting.append(fn)
            if len(waiting) == 1:
                self.at(time.monotonic(), lambda: self._poll(path))

    def _poll(self, path: Path) -> None:
        if not path.exists():
            self.at(time.monotonic() + FINISH_FILE_POLL_S, lambda: self._poll(path))
            return
        with self.cond:
            waiting = self.files.pop(path, [])
        for fn in waiting:
            fn()

    def run(self) -> None:
        while not self.agent.stopping.is_set():
            with self.cond:
                while not self.heap or self.heap[0][0] > time.monotonic():
                    timeout = self.heap[0][0] - time.monotonic() if self.heap else 1.0
                    self.cond.wait(timeout=max(0.0, min(timeout, 1.0)))
                    if self.agent.stopping.is_set():
                        return
                _, _, fn = heapq.heappop(self.heap)
            try:
                fn()
            except Exception:
                log.exception("simulated pod step failed")


class ConfigError(Exception):
    """A container cannot be created from its spec (kubelet's CreateContainerConfigError)."""


class ProcessPod(PodWorker):
    """A pod whose containers run as local processes, one thread per pod."""

    def __init__(self, agent: Agent, pod: dict[str, Any]) -> None:
        super().__init__(agent, pod)
        self.procs: dict[str, int] = {}
        self.proc_lock = threading.Lock()
        # Containers run in threads of their own, and each saves the pod's state as it starts and
        # ends: two saves at once through one temporary file would lose a rename, and with it the
        # thread that was recording a container's end.
        self.save_lock = threading.Lock()
        self.sidecars_ending = threading.Event()
        self.thread = threading.Thread(target=self.run, name=f"pod-{self.name}", daemon=True)
        self.volumes = PodVolumes(agent.api, pod, self.dir, time.time)

    def start(self) -> None:
        self.thread.start()
        threading.Thread(target=self._enforce_deadline, name=f"deadline-{self.name}", daemon=True).start()

    def _enforce_deadline(self) -> None:
        """Kubelet's active deadline (pkg/kubelet/active_deadline.go): once the pod has been active
        longer than spec.activeDeadlineSeconds since its startTime, its containers are stopped
        with its grace period, and it fails with reason DeadlineExceeded."""
        started = parse_time(self.start_time)
        while not self.deleting.wait(DEADLINE_CHECK_S) and self.thread.is_alive():
            limit = self.active_deadline_s
            if limit is None or time.time() < started + limit:
                continue
            self.deadline_exceeded = True  # no container is restarted from now on
            self.agent.record_event(self.pod, "Warning", "DeadlineExceeded", ACTIVE_DEADLINE_MESSAGE, "")
            grace = self.pod["spec"].get("terminationGracePeriodSeconds")
            self._stop(self._pids(), 30 if grace is None else int(grace))
            # The containers are stopped first, so the failed phase is never shown beside one
            # still running.
            self.publish()
            return

    def _pids(self, names: set[str] | None = None) -> list[int]:
        with self.proc_lock:
            return [pid for name, pid in self.procs.items() if names is None or name in names]

    def _stop(self, pids: list[int], grace_s: float) -> None:
        """SIGTERM, the grace period, then SIGKILL, as kubelet stops a container."""
        for pid in pids:
            signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(process_alive(p) for p in pids):
            time.sleep(0.05)
        for pid in pids:
            process_tree.kill(pid)

    # The state file lets a restarted agent find the containers it started.
    def _save(self) -> None:
        with self.save_lock:
            self.dir.mkdir(parents=True, exist_ok=True)
            with self.proc_lock:
                procs = dict(self.procs)
            containers = {c.name: dict(c.__dict__) for c in self.init + self.main}
            tmp = self.dir / "state.json.tmp"
            tmp.write_text(json.dumps({"procs": procs, "containers": containers}))
            tmp.rename(self.dir / "state.json")

    def _load(self) -> bool:
        path = self.dir / "state.json"
        if not path.exists():
            return False
        state = json.loads(path.read_text())
        self.procs = state["procs"]
        for c in self.init + self.main:
            c.__dict__.update(state["containers"].get(c.name, {}))
        return True

    def run(self) -> None:
        try:
            self._run()
        except Exception as exc:
            log.exception("pod %s/%s failed in the agent", self.namespace, self.name)
            for c in self.init + self.main:
                if not c.terminated:
                    c.exit_code, c.reason, c.message = 128, "StartError", str(exc)
                    c.finished_at = now_iso()
            self.publish()
        if self.deleting.is_set():
            self._reap()
            self._remove()

    def _reap(self) -> None:
        """Containers still running as the pod's thread ends under a deletion (the agent restarted
        mid-deletion, and found the pod being deleted before it reattached to them): stopped with
        the grace period, and their ends recorded, before the pod goes. Kubelet restarted under a
        deletion kills the containers it finds and reports them terminated first (pod_workers.go,
        then status_manager.go's canBeDeleted)."""
        running = [state for state in self.init + self.main if state.running and state.name in self.procs]
        if not running:
            return
        self._stop(self._pids({state.name for state in running}), self.grace_s)
        containers = {c["name"]: c for c in self.pod["spec"].get("initContainers", [])}
        containers.update({c["name"]: c for c in self.pod["spec"].get("containers", [])})
        for state in running:
            self._run_container(containers[state.name], state)

    def _remove(self) -> None:
        """Kubelet's status manager deletes a pod's object only once its final status (containers
        terminated, their exit codes) is written (status_manager.go, canBeDeleted): what a task did
        inside its grace period reaches whoever watches the pod."""
        self.publish()
        if not self.agent.statuses.written(self.uid, timeout_s=10):
            log.warning("pod %s/%s: final status not written; removing it anyway", self.namespace, self.name)
        self.agent.remove_pod(self.pod)

    def _run(self) -> None:
        resumed = self._load()
        spec = self.pod["spec"]
        if not resumed:
            self.publish()
            if not self._pull_images(spec):
                return
        if not self._mount_volumes():
            return
        threading.Thread(target=self._sync_volumes, name=f"volumes-{self.name}", daemon=True).start()
        sidecars: list[threading.Thread] = []
        for container, state in zip(spec.get("initContainers", []), self.init, strict=True):
            if state.restartable:
                # A native sidecar: started, then the next init container starts beside it; it is
                # restarted whenever it exits, until the regular containers have all ended
                # (kuberuntime_manager.go, computeInitContainerActions).
                sidecar = threading.Thread(
                    target=self._keep_running,
                    args=(container, state),
                    name=f"sidecar-{state.name}",
                    daemon=True,
                )
                sidecar.start()
                sidecars.append(sidecar)
                while not (state.started_at or state.terminated) and not self.deleting.wait(0.05):
                    pass
                continue
            while not (state.terminated and state.exit_code == 0):
                if self.deleting.is_set() or not self._run_container(container, state):
                    return
                if state.exit_code != 0:
                    if self.restart_policy == "Never":
                        self._end_sidecars(sidecars)
                        return
                    self._restart(state)
        self._run_main(spec.get("containers", []))
        self._end_sidecars(sidecars)

    def _end_sidecars(self, sidecars: list[threading.Thread]) -> None:
        """Once the regular containers have ended, kubelet stops the native sidecars, the last
        started first, each with the pod's grace period; the pod's phase is the regular ones'."""
        if not sidecars:
            self.publish()
            return
        self.sidecars_ending.set()
        grace = self.pod["spec"].get("terminationGracePeriodSeconds")
        for state in reversed([s for s in self.init if s.restartable]):
            self._stop(self._pids({state.name}), 30 if grace is None else int(grace))
        for thread in sidecars:
            thread.join()
        self.publish()

    def _unpullable(self, containers: list[dict[str, Any]]) -> list[dict[str, Any]]:
        rules = [self.agent.fail_images.search]
        with contextlib.suppress(FileNotFoundError):
            for line in (self.agent.state_dir / PULL_FAILURES_FILE).read_text().splitlines():
                if line.strip():
                    pod_rule, image_rule = line.split(maxsplit=1)
                    if re.search(pod_rule, self.name):
                        rules.append(re.compile(image_rule.strip()).search)
        return [c for c in containers if any(rule(c.get("image", "")) for rule in rules)]

    def _pull_images(self, spec: dict[str, Any]) -> bool:
        # Kubelet's image pull with back-off: a pull that failed is tried again, and once the
        # image can be had the container starts (pkg/kubelet/images: ErrImagePull, then
        # ImagePullBackOff between attempts).
        containers = spec.get("initContainers", []) + spec.get("containers", [])
        bad = self._unpullable(containers)
        reason = "ErrImagePull"
        while bad and not self.deleting.is_set():
            for c in bad:
                state = self.container(c["name"])
                assert state is not None
                state.waiting_reason = reason
                state.waiting_message = (
                    f'Failed to pull image "{c["image"]}": rpc error: code = NotFound desc = '
                    f"failed to pull and unpack image: not found"
                    if reason == "ErrImagePull"
                    else f'Back-off pulling image "{c["image"]}"'
                )
                event_reason = "Failed" if reason == "ErrImagePull" else "BackOff"
                self.agent.record_event(self.pod, "Warning", event_reason, state.waiting_message, c["name"])
            self.publish()
            reason = "ImagePullBackOff" if reason == "ErrImagePull" else "ErrImagePull"
            self.deleting.wait(BACKOFF_S)
            bad = self._unpullable(containers)
        for c in containers:
            state = self.container(c["name"])
            if state is not None and state.waiting_reason in ("ErrImagePull", "ImagePullBackOff"):
                state.waiting_reason, state.waiting_message = "ContainerCreating", ""
        return not bad

    def _mount_volumes(self) -> bool:
        """Kubelet's WaitForAttachAndMount: containers start only once every volume is set up."""
        while not self.deleting.is_set():
            try:
                self.volumes.set_up()
                return True
            except MountError as exc:
                message = f"MountVolume.SetUp failed: {exc}"
                for state in self.init + self.main:
                    if not state.started_at:
                        state.waiting_reason, state.waiting_message = "ContainerCreating", message
                self.agent.record_event(self.pod, "Warning", "FailedMount", message, "")
                self.publish()
                self.deleting.wait(BACKOFF_S)
        return False

    def _sync_volumes(self) -> None:
        """Kubelet sets a running pod's volumes up again at every sync: tokens renewed, data updated."""
        while not self.deleting.wait(VOLUME_SYNC_S) and self.thread.is_alive():
            try:
                self.volumes.refresh()
            except MountError as exc:
                log.warning("pod %s/%s: volumes not refreshed: %s", self.namespace, self.name, exc)

    def _run_main(self, containers: list[dict[str, Any]]) -> None:
        threads = []
        for container, state in zip(containers, self.main, strict=True):
            t = threading.Thread(target=self._keep_running, args=(container, state), daemon=True)
            t.start()
            threads.append(t)
        for t in threads:
            t.join()
        self.publish()

    def _keep_running(self, container: dict[str, Any], state: ContainerState) -> None:
        if state.terminated and self._stays_terminated(state):
            return
        while not self.deleting.is_set():
            if not self._run_container(container, state):
                return
            if self.deleting.is_set() or self._stays_terminated(state):
                return
            self._restart(state)

    def _stays_terminated(self, state: ContainerState) -> bool:
        if self.deadline_exceeded:
            return True
        if state.restartable:
            return self.sidecars_ending.is_set()
        return self.restart_policy == "Never" or (self.restart_policy == "OnFailure" and state.exit_code == 0)

    def _restart(self, state: ContainerState) -> None:
        state.last_terminated = state.to_status(self.uid)["state"]["terminated"]
        state.restart_count += 1
        state.exit_code = state.started_at = state.finished_at = state.reason = state.message = None
        state.waiting_reason = "CrashLoopBackOff"
        self.publish()
        self.deleting.wait(min(BACKOFF_S * state.restart_count, 10))

    def _message_from_logs(self, container: dict[str, Any], state: ContainerState) -> str | None:
        """Kubelet's terminationMessagePolicy FallbackToLogsOnError (kuberuntime_container.go,
        readLastStringFromContainerLogs): a container that failed without a termination message
        gets the end of its log, its last 80 lines and at most 2048 bytes of them."""
        if container.get("terminationMessagePolicy") != "FallbackToLogsOnError" or state.exit_code == 0:
            return None
        if state.reason == "ContainerCannotRun":
            return None
        try:
            data = self.log_path(state.name).read_bytes()
        except FileNotFoundError:
            return None
        tail = b"".join(data.splitlines(keepends=True)[-TERMINATION_MESSAGE_LINES:])[
            -TERMINATION_MESSAGE_BYTES:
        ]
        return tail.decode(errors="replace") or None

    def _run_container(self, container: dict[str, Any], state: ContainerState) -> bool:
        """Run (or re-attach to) one container until it ends; False if the pod is going away."""
        exit_file = self.dir / f"{state.name}.exit"
        pid = self.procs.get(state.name)
        if pid is None or not state.started_at:
            while True:
                try:
                    argv, env, cwd = self._container_command(container)
                    break
                except ConfigError as exc:
                    state.waiting_reason, state.waiting_message = "CreateContainerConfigError", str(exc)
                    self.publish()
                    if self.deleting.wait(BACKOFF_S):
                        return False
            exit_file.unlink(missing_ok=True)
            self.dir.mkdir(parents=True, exist_ok=True)
            memory_limit = parse_quantity((container.get("resources") or {}).get("limits", {}).get("memory"))
            mounts = [f"--mount={m.shim_arg()}" for m in self.volumes.mounts(container)]
            # A container with volumes gets a mount namespace of its own, where the shim mounts them.
            isolate = ["unshare", "--mount", "--propagation", "private"] if mounts else []
            with open(self.log_path(state.name), "ab") as out:
                proc = subprocess.Popen(
                    [
                        *isolate,
                        sys.executable,
                        "-m",
                        "devcluster.shim",
                        f"--exit-file={exit_file}",
                        f"--memory-limit={memory_limit}",
                        *mounts,
                        "--",
                        *argv,
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    cwd=cwd,
                    start_new_session=True,
                )
            with self.proc_lock:
                self.procs[state.name] = proc.pid
            state.started_at, state.waiting_reason, state.waiting_message = now_iso(), None, None
            self._save()
            self.publish()
            self.agent.record_event(
                self.pod, "Normal", "Started", f"Started container {state.name}", state.name
            )
            pid = proc.pid
        while process_alive(pid, str(exit_file)):
            time.sleep(0.05)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if exit_file.exists():
            result = json.loads(exit_file.read_text())
            state.exit_code, state.reason = result["exitCode"], result["reason"]
            state.message = result.get("message") or self._message_from_logs(container, state)
            state.finished_at = now_iso(result.get("finishedAt"))
        else:
            # The shim was killed (SIGKILL after the grace period, or its process vanished).
            state.exit_code = 137
            state.reason = "Error"
            state.finished_at = now_iso()
            if not self.deleting.is_set():
                state.message = "the container's process was lost (node agent restart or external kill)"
                log.warning(
                    "pod %s/%s container %s: shim pid %s ended without an exit record",
                    self.namespace,
                    self.name,
                    state.name,
                    pid,
                )
        with self.proc_lock:
            self.procs.pop(state.name, None)
        self._save()
        # Kubelet's PLEG reports each container's end as it happens, not once the pod is done: a
        # task container that ended beside a sidecar still running is seen ended.
        self.publish()
        return True

    def _container_command(self, container: dict[str, Any]) -> tuple[list[str], dict[str, str], str | None]:
        argv = list(container.get("command") or []) + list(container.get("args") or [])
        if not argv:
            raise ConfigError(f'container "{container["name"]}" has no command: images are not run here')
        # The host's Python environment stands in for the image: its `python` comes first.
        env = {
            "PATH": os.pathsep.join(
                [os.path.dirname(sys.executable), os.environ.get("PATH", "/usr/bin:/bin")]
            ),
            "HOSTNAME": self.name,
            "HOME": os.environ.get("HOME", "/root"),
            # Kubelet gives every container the `kubernetes` service's address. That service's
            # cluster IP routes nowhere on this machine (no kube-proxy), so the container gets the
            # address this agent reaches the API server at; the pod's own env can override it.
            **self.agent.api_service_env,
        }
        # A worker pod must find the same Python environment as the host it runs on.
        for key in ("VIRTUAL_ENV", "PYTHONPATH", "LANG"):
            if key in os.environ:
                env[key] = os.environ[key]
        env.update(self._resolve_env(container))
        argv = [expand_env(a, env) for a in argv]
        cwd = container.get("workingDir")
        if cwd and not os.path.isdir(cwd):
            cwd = None
        return argv, env, cwd

    def _resolve_env(self, container: dict[str, Any]) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            if "configMapRef" in source:
                data = self._config_map(
                    source["configMapRef"]["name"], source["configMapRef"].get("optional")
                )
            else:
                data = self._secret(source["secretRef"]["name"], source["secretRef"].get("optional"))
            env.update({prefix + k: v for k, v in data.items()})
        for var in container.get("env") or []:
            if "value" in var:
                env[var["name"]] = expand_env(var["value"], env)
                continue
            ref = var.get("valueFrom") or {}
            if "secretKeyRef" in ref:
                r = ref["secretKeyRef"]
                value = self._secret(r["name"], r.get("optional")).get(r["key"])
                kind = "secret"
            elif "configMapKeyRef" in ref:
                r = ref["configMapKeyRef"]
                value = self._config_map(r["name"], r.get("optional")).get(r["key"])
                kind = "configmap"
            elif "fieldRef" in ref:
                value, kind, r = self._field(ref["fieldRef"]["fieldPath"]), "field", {}
            else:
                value, kind, r = "", "resource", {}
            if value is None:
                if r.get("optional"):
                    continue
                raise ConfigError(
                    f"couldn't find key {r.get('key')} in {kind.capitalize()} "
                    f"{self.namespace}/{r.get('name')}"
                )
            env[var["name"]] = value
        return env

    def _secret(self, name: str, optional: bool | None) -> dict[str, str]:
        data = self._data("secret", self.agent.api.read_namespaced_secret, name, optional)
        return {k: base64.b64decode(v).decode() for k, v in data.items()}

    def _config_map(self, name: str, optional: bool | None) -> dict[str, str]:
        return self._data("configmap", self.agent.api.read_namespaced_config_map, name, optional)

    def _data(self, kind: str, read: Callable[..., Any], name: str, optional: bool | None) -> dict[str, str]:
        """The object's `data`; {} if it is missing and optional. Anything else is a
        CreateContainerConfigError, which the container waits out, as with kubelet."""
        try:
            return read_json(read(name, self.namespace, _preload_content=False)).get("data") or {}
        except ApiException as exc:
            if exc.status == 404 and optional:
                return {}
            if exc.status == 404:
                raise ConfigError(f'{kind} "{name}" not found') from exc
            raise ConfigError(f"couldn't get {kind} {self.namespace}/{name}: {exc.reason}") from exc
        except (HTTPError, OSError, ValueError) as exc:
            # The API server is out of reach for now (restarting): retried like any config error.
            raise ConfigError(f"couldn't get {kind} {self.namespace}/{name}: {exc}") from exc

    def _field(self, path: str) -> str | None:
        try:
            return downward_value(self.pod, path)
        except MountError:
            return None

    def request_deletion(self, grace_s: int) -> None:
        if self.deleting.is_set():
            return
        super().request_deletion(grace_s)
        threading.Thread(target=self._terminate, daemon=True).start()

    def _terminate(self) -> None:
        with self.proc_lock:
            pids, names = list(self.procs.values()), list(self.procs)
        if pids:
            for name in names:
                self.agent.record_event(self.pod, "Normal", "Killing", f"Stopping container {name}", name)
            self._stop(pids, self.grace_s)
        if not self.thread.is_alive():
            self._remove()

    def kill(self) -> None:
        self.deleting.set()
        with self.proc_lock:
            pids = list(self.procs.values())
        for pid in pids:
            process_tree.kill(pid)


def signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def process_alive(pid: int, marker: str | None = None) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        # Just after exec the command line can read empty for a moment: that is our process still,
        # not another one that reused the pid.
        if marker and cmdline and marker.encode() not in cmdline:
            return False
    except OSError:
        return False
    return stat.rsplit(") ", 1)[1][0] != "Z"


def expand_env(text: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion; `$$` escapes."""
    return re.sub(
        r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)",
        lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)),
        text,
    )


_UNITS = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4, "k": 1000, "M": 1000**2, "G": 1000**3}


def parse_quantity(value: str | None) -> int:
    if not value:
        return 0
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value))
    if not match:
        return 0
    return int(float(match.group(1)) * _UNITS.get(match.group(2), 1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tls-cert", required=True)
    parser.add_argument("--tls-key", required=True)
    parser.add_argument("--client-ca", required=True)
    parser.add_argument("--node", action="append", help=NodeSpec.parse.__doc__)
    parser.add_argument(
        "--fail-images",
        default=DEFAULT_FAIL_IMAGES,
        help="images matching this pattern fail with ErrImagePull/ImagePullBackOff",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    cfg = client.Configuration()
    config.load_kube_config(args.kubeconfig, client_configuration=cfg)
    cfg.connection_pool_maxsize = 32
    api_client = client.ApiClient(cfg)
    # Named, so the API server's audit log tells the node's requests from the executor's.
    api_client.user_agent = NODE_AGENT_USER_AGENT
    api = client.CoreV1Api(api_client)
    nodes = [NodeSpec.parse(n) for n in (args.node or DEFAULT_NODES)]
    agent = Agent(api, nodes, Path(args.state_dir), args.port, args.fail_images)
    agent.state_dir.mkdir(parents=True, exist_ok=True)

    from devcluster.kubelet_api import serve

    server = serve(agent, args.port, args.tls_cert, args.tls_key, args.client_ca)
    agent.register_nodes()
    signal.signal(signal.SIGTERM, lambda *_: agent.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: agent.stopping.set())
    threads = [
        threading.Thread(target=agent.heartbeat_loop, daemon=True),
        threading.Thread(target=agent.simulator.run, daemon=True),
    ]
    threads += [threading.Thread(target=agent.watch_node, args=(n,), daemon=True) for n in agent.nodes]
    for t in threads:
        t.start()
    log.info("node agent serving %s on port %d", ", ".join(agent.nodes), args.port)
    while not agent.stopping.wait(1):
        pass
    agent.shutdown()
    server.shutdown()


if __name__ == "__main__":
    main()
