"""Pod status documents as kubelet writes them.

Pure functions: given what the node knows about each container, build the
`status` the API server should hold. Kept apart from the agent so the shape of
a status (phase, conditions, container states) has one home.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any


def now_iso(ts: float | None = None) -> str:
    when = (
        datetime.datetime.fromtimestamp(ts, datetime.timezone.utc)
        if ts is not None
        else datetime.datetime.now(datetime.timezone.utc)
    )
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str) -> float:
    """A status timestamp (now_iso's format) as seconds since the epoch."""
    return (
        datetime.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ")
        .replace(tzinfo=datetime.timezone.utc)
        .timestamp()
    )


@dataclass
class ContainerState:
    """What the node knows of one container."""

    name: str
    image: str
    waiting_reason: str | None = "ContainerCreating"
    waiting_message: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    exit_code: int | None = None
    reason: str | None = None
    message: str | None = None
    restart_count: int = 0
    last_terminated: dict[str, Any] | None = field(default=None)
    # A native sidecar: an init container with `restartPolicy: Always` (Kubernetes 1.29+).
    restartable: bool = False

    @property
    def running(self) -> bool:
        return self.started_at is not None and self.exit_code is None

    @property
    def terminated(self) -> bool:
        return self.exit_code is not None

    def to_status(self, pod_uid: str) -> dict[str, Any]:
        state: dict[str, Any]
        if self.terminated:
            terminated: dict[str, Any] = {
                "exitCode": self.exit_code,
                "reason": self.reason or ("Completed" if self.exit_code == 0 else "Error"),
                "startedAt": self.started_at,
                "finishedAt": self.finished_at,
                "containerID": f"devcluster://{pod_uid}/{self.name}",
            }
            if self.message:
                terminated["message"] = self.message
            state = {"terminated": terminated}
        elif self.running:
            state = {"running": {"startedAt": self.started_at}}
        else:
            waiting: dict[str, Any] = {"reason": self.waiting_reason or "ContainerCreating"}
            if self.waiting_message:
                waiting["message"] = self.waiting_message
            state = {"waiting": waiting}
        status: dict[str, Any] = {
            "name": self.name,
            "image": self.image,
            "imageID": f"devcluster://{self.image}" if self.started_at else "",
            "ready": self.running,
            "started": self.running,
            "restartCount": self.restart_count,
            "state": state,
            "lastState": {"terminated": self.last_terminated} if self.last_terminated else {},
        }
        if self.started_at:
            status["containerID"] = f"devcluster://{pod_uid}/{self.name}"
        return status


def initialized(init: list[ContainerState]) -> bool:
    """Kubelet's Initialized: every regular init container completed, every native sidecar started
    (pkg/kubelet/status/generate.go; a sidecar counts once started, whatever it does after)."""
    return all(
        (c.started_at is not None or c.terminated) if c.restartable else (c.terminated and c.exit_code == 0)
        for c in init
    )


def phase_of(
    init: list[ContainerState], main: list[ContainerState], restart_policy: str, failed: bool = False
) -> str:
    """Pod phase from container states, as kubelet computes it (pkg/kubelet/kubelet_pods.go,
    getPhase): native sidecars never decide it. `failed`: kubelet ended the pod itself (its
    activeDeadlineSeconds passed)."""
    if failed:
        return "Failed"
    regular = [c for c in init if not c.restartable]
    if any(c.terminated and c.exit_code != 0 for c in regular) and restart_policy == "Never":
        return "Failed"
    if not initialized(init):
        return "Pending"
    if any(c.running for c in main):
        return "Running"
    if main and all(c.terminated for c in main) and any(c.running for c in init if c.restartable):
        return "Running"  # the regular containers are done; the sidecars are being stopped
    if main and all(c.terminated for c in main):
        if all(c.exit_code == 0 for c in main):
            return "Succeeded"
        return "Failed" if restart_policy == "Never" else "Running"
    if any(c.started_at or c.terminated for c in main):
        return "Running"
    return "Pending"


def _condition(
    kind: str, ok: bool, since: str, reason: str | None = None, reason_if_ok: str | None = None
) -> dict[str, Any]:
    # The reason is always written, null when there is none: the status is sent as a strategic
    # merge patch, which would otherwise keep a reason from the condition's earlier status.
    return {
        "type": kind,
        "status": "True" if ok else "False",
        "lastTransitionTime": since,
        "reason": reason_if_ok if ok else reason,
    }


def pod_status(
    pod_uid: str,
    init: list[ContainerState],
    main: list[ContainerState],
    restart_policy: str,
    start_time: str,
    host_ip: str = "127.0.0.1",
    reason: str | None = None,
    message: str | None = None,
    failed: bool = False,
) -> dict[str, Any]:
    phase = phase_of(init, main, restart_policy, failed)
    ready = phase == "Running" and all(c.running for c in main)
    since = now_iso()
    terminal = phase in ("Succeeded", "Failed")
    unready = {"Succeeded": "PodCompleted", "Failed": "PodFailed"}.get(phase, "ContainersNotReady")
    status: dict[str, Any] = {
        "phase": phase,
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "podIP": host_ip,
        "podIPs": [{"ip": host_ip}],
        "startTime": start_time,
        # Kubelet's reasons (status/generate.go): a terminal pod's sandbox is gone, its readiness
        # ended with its phase, and a pod that succeeded completed its initialisation.
        "conditions": [
            _condition("PodReadyToStartContainers", not terminal, since, "PodSandboxNotReady"),
            _condition(
                "Initialized",
                initialized(init) or phase == "Succeeded",
                since,
                "ContainersNotInitialized",
                "PodCompleted" if phase == "Succeeded" else None,
            ),
            _condition("Ready", ready, since, unready),
            _condition("ContainersReady", ready, since, unready),
            _condition("PodScheduled", True, since),
        ],
        "containerStatuses": [c.to_status(pod_uid) for c in main],
    }
    if init:
        status["initContainerStatuses"] = [c.to_status(pod_uid) for c in init]
    if reason:
        status["reason"] = reason
    if message:
        status["message"] = message
    return status
