"""One function decides what a pod means for its task.

Pure: it takes the pod as the API server sent it (a dict) and the time, and
returns a verdict with the reason a person needs in plain words. Terminal
verdicts are final; `pending` and `running` only say the task is on its way.
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

from k8s_executor import disruption_guard, identity
from k8s_executor.shapes import PodSeen, PodState


def parse_time(value: str | None) -> datetime.datetime | None:
    """A Kubernetes timestamp (RFC 3339, as in creationTimestamp), timezone-aware; None if unset."""
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def _container_failure(statuses: list[dict[str, Any]]) -> tuple[str, str] | None:
    """The first failed container's story, and its reason."""
    for status in statuses:
        terminated = (status.get("state") or {}).get("terminated")
        if terminated and (terminated.get("exitCode", 0) != 0 or terminated.get("reason") == "OOMKilled"):
            reason = terminated.get("reason") or "Error"
            code = terminated.get("exitCode", 0)
            text = f"container {status.get('name')!r} exited with code {code} ({reason})"
            if reason == "OOMKilled" and code == 0:
                # The kernel killed the container's largest process (the task's, say) and its main
                # process went on: containerd keeps the OOM in the reason, with the exit code 0.
                text = (
                    f"a process of container {status.get('name')!r} was killed for exceeding the "
                    "container's memory limit (OOMKilled); the container's main process then exited "
                    "with code 0"
                )
            elif reason == "OOMKilled":
                text = (
                    f"container {status.get('name')!r} was killed for exceeding its memory limit (OOMKilled)"
                )
            if terminated.get("message"):
                text += f": {terminated['message'].strip()}"
            return text, reason
    return None


# How long past a pod's deletionTimestamp (the end of its grace period) its containers may take to
# end before the pod counts as deleted with its task unfinished: the kubelet that would end them
# may be gone with its node, and the pod then stays Terminating until the node object goes.
TERMINATING_SLACK_S = 30.0


def pod_state(
    pod: dict[str, Any],
    *,
    fatal_waiting_reasons: frozenset[str] | set[str] = frozenset(),
    unschedulable_timeout_s: float = 300.0,
    now: datetime.datetime | None = None,
    deleted: bool = False,
    deletion_seen_first: bool = False,
) -> PodState:
    """The verdict on a pod's task. `deleted` is set when the pod object is gone;
    `deletion_seen_first` when an earlier look at the pod saw its deletion begin while its task
    still ran (`deletion_began_first`), which the last object may no longer show.

    The task is the `base` container's: once it has ended, its exit code is the verdict, whatever
    other containers (sidecars) still do. A pod being deleted is judged when its containers end or
    its object is gone, not when its deletion starts: a task that ended before its pod's deletion
    began keeps its end; one that ended once it had begun was stopped by it, whatever its exit
    code (what the task recorded in Airflow itself stands, as Airflow keeps a finished task's own
    state over the executor's). A task that ends on its own makes its pod Succeeded before any
    deletion, and that end is reported first.
    """
    status = pod.get("status") or {}
    phase = status.get("phase", "Pending")
    init_statuses = status.get("initContainerStatuses") or []
    statuses = status.get("containerStatuses") or []
    disrupted = disruption_guard.disruption(status)
    meta = pod.get("metadata") or {}
    being_deleted = deleted or bool(meta.get("deletionTimestamp"))
    base = _base(statuses)
    base_end = (base[0].get("state") or {}).get("terminated") if base else None
    # Before the phase: a pod whose task process the kernel killed may still have Succeeded.
    oom = _container_failure(base) if base_end and base_end.get("reason") == "OOMKilled" else None
    if oom:
        return _failed(oom[0] + _told(disrupted), oom[1], disrupted)
    if (
        being_deleted
        and base_end
        and base_end.get("exitCode", 0) == 0
        and (deletion_seen_first or _ended_by_deletion(base_end, meta))
    ):
        # A task told to stop (SIGTERM) may end cleanly: Airflow 3's task runner fails the task
        # itself and its process then exits 0, which alone would read as a success.
        what = "pod was deleted while running, before its task finished: its process stopped when told to (exit code 0)"
        return _failed(what + (_told(disrupted) or _deleted_by_hand(meta)), "Deleted", disrupted)
    if phase == "Succeeded":
        return PodState("success")
    if phase == "Failed" and status.get("reason") == "Evicted":
        # Kubelet's node-pressure eviction: its own words say which resource ran short.
        text = f"pod was evicted: {status.get('message', '').strip()}"
        return _failed(text + _told(disrupted), "Evicted", disrupted)
    if base_end:
        # Kept by another of its containers (a sidecar, running or still to start): kubelet ends
        # the pod's phase by itself once all have ended, a moment after the task's (its status
        # lags), so a pod whose other containers have all ended is left to it.
        others_left = any(
            "terminated" not in (s.get("state") or {})
            for s in init_statuses + statuses
            if s.get("name") != identity.BASE_CONTAINER
        )
        lingering = phase not in ("Failed", "Succeeded") and not being_deleted and others_left
        failure = _container_failure(base)
        if failure is None:
            return PodState("success", lingering=lingering)
        if being_deleted:
            # Stopped by the deletion (SIGTERM, then SIGKILL at the end of its grace period).
            what = f"pod was deleted while running, before its task finished: {failure[0]}"
            return _failed(what + (_told(disrupted) or _deleted_by_hand(meta)), "Deleted", disrupted)
        return dataclasses.replace(
            _failed(failure[0] + _told(disrupted), failure[1], disrupted), lingering=lingering
        )
    if phase == "Failed":
        reason = status.get("reason")
        failure = _container_failure(init_statuses) or _container_failure(statuses)
        if failure:
            return _failed(failure[0] + _told(disrupted), failure[1], disrupted)
        message = status.get("message") or reason or "no container reported an exit code"
        return _failed(f"pod failed: {message}{_told(disrupted)}", reason or "Failed", disrupted)
    current = now or datetime.datetime.now(datetime.timezone.utc)
    if deleted or _grace_overrun(meta, current):
        what = f"pod was deleted while {phase.lower()}, before its task finished"
        if not deleted:
            what += f" (its containers had not ended {TERMINATING_SLACK_S:.0f} s after its grace period)"
        failed = _failed(what + (_told(disrupted) or _deleted_by_hand(meta)), "Deleted", disrupted)
        return dataclasses.replace(failed, end_unseen=True)
    for container in init_statuses + statuses:
        waiting = (container.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason and reason in fatal_waiting_reasons:
            message = (waiting.get("message") or "").strip()
            return PodState(
                "failed",
                f"pod could not start: container {container.get('name')!r} is {reason}"
                + (f": {message}" if message else ""),
                reason,
                ran=False,
            )
    if phase == "Running":
        return PodState("running")
    for condition in status.get("conditions") or []:
        if (
            condition.get("type") == "PodScheduled"
            and condition.get("status") == "False"
            and condition.get("reason") == "Unschedulable"
        ):
            since = parse_time(condition.get("lastTransitionTime")) or parse_time(
                meta.get("creationTimestamp")
            )
            waited = (current - since).total_seconds() if since else 0.0
            if waited >= unschedulable_timeout_s:
                return PodState(
                    "failed",
                    f"pod was unschedulable for {waited:.0f}s: {condition.get('message', '').strip()}",
                    "Unschedulable",
                    ran=False,
                )
            return PodState("pending", f"unschedulable: {condition.get('message', '').strip()}")
    return PodState("pending")


# What each DisruptionTarget reason means, in plain words.
_DISRUPTED_BY = {
    "EvictionByEvictionAPI": "evicted through the Eviction API (a node drain, or the cluster autoscaler)",
    "PreemptionByScheduler": "preempted by the scheduler for a pod of higher priority",
    "DeletionByTaintManager": "deleted by the taint manager (a NoExecute taint on its node, such as a node going away)",
    "DeletionByPodGC": "deleted by the pod garbage collector (its node is gone)",
    "TerminationByKubelet": "stopped by kubelet (node-pressure eviction or a graceful node shutdown)",
}


def _told(disrupted: dict[str, Any] | None) -> str:
    if disrupted is None:
        return ""
    reason = str(disrupted.get("reason") or "")
    by = _DISRUPTED_BY.get(reason, "ended by the cluster")
    message = str(disrupted.get("message") or "").strip()
    when = disrupted.get("lastTransitionTime")
    return (
        f"; the pod was {by}"
        + (f" at {when}" if when else "")
        + f" (DisruptionTarget {reason}"
        + (f": {message}" if message else "")
        + ")"
    )


def _deleted_by_hand(meta: dict[str, Any]) -> str:
    """A deletion no component of the cluster owned up to: a person's, or a tool's."""
    when = meta.get("deletionTimestamp")
    grace = meta.get("deletionGracePeriodSeconds")
    since = ""
    if when and grace is not None and (end := parse_time(when)) is not None:
        started = end - datetime.timedelta(seconds=int(grace))
        since = f" at {started.strftime('%Y-%m-%dT%H:%M:%SZ')} (grace period {grace} s)"
    return (
        f"; it was deleted{since} with no DisruptionTarget condition, so by a person or a tool rather "
        "than by the cluster"
    )


def _ended_by_deletion(terminated: dict[str, Any], meta: dict[str, Any]) -> bool:
    """Whether a container ended once its pod's deletion had begun, as far as the pod object
    tells: the deletion began at `deletionTimestamp` minus its grace period. Kubelet ends a
    deletion with a second delete of grace 0, which moves `deletionTimestamp` to that moment and
    loses the first: the object alone then cannot tell, and only an earlier look can
    (`deletion_began_first`). Both times are whole seconds, so an end in the deletion's own second
    counts as caused by it.
    """
    end = parse_time(meta.get("deletionTimestamp"))
    finished = parse_time(terminated.get("finishedAt"))
    grace = meta.get("deletionGracePeriodSeconds")
    if end is None or finished is None or not grace:
        return False
    return finished >= end - datetime.timedelta(seconds=int(grace))


def deletion_began_first(pod: dict[str, Any]) -> bool:
    """The pod is being deleted and its task's container has not ended: if that container then
    ends, even with 0, it was stopped by the deletion."""
    if not (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    base = _base((pod.get("status") or {}).get("containerStatuses") or [])
    return not (base and "terminated" in (base[0].get("state") or {}))


def _base(statuses: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The task's container's status, as a list of one (or none, before kubelet reports it)."""
    return [s for s in statuses if s.get("name") == identity.BASE_CONTAINER]


def _grace_overrun(meta: dict[str, Any], now: datetime.datetime) -> bool:
    end = parse_time(meta.get("deletionTimestamp"))
    return end is not None and (now - end).total_seconds() > TERMINATING_SLACK_S


def _failed(reason: str, cause: str, disrupted: dict[str, Any] | None, ran: bool = True) -> PodState:
    return PodState("failed", reason, cause, ran, str((disrupted or {}).get("reason") or ""))


# Normal events that still explain an end: who stopped the container, who took its place.
_TELLING_NORMAL_REASONS = frozenset({"Killing", "Preempted", "Preempting"})
MAX_EVENTS = 5


def describe_events(events: list[dict[str, Any]]) -> str:
    """The recent Kubernetes events that explain a pod's fate, oldest first, in one line."""
    telling = [e for e in events if e.get("type") == "Warning" or e.get("reason") in _TELLING_NORMAL_REASONS]
    telling.sort(key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
    seen: dict[tuple[str, str], int] = {}
    for event in telling:
        key = (str(event.get("reason") or ""), str(event.get("message") or "").strip())
        seen[key] = seen.pop(key, 0) + int(event.get("count") or 1)
    parts = [
        f"{reason}: {message}" + (f" (x{count})" if count > 1 else "")
        for (reason, message), count in list(seen.items())[-MAX_EVENTS:]
    ]
    return "; ".join(parts)


def with_events(state: PodState, events: list[dict[str, Any]]) -> PodState:
    """A failed verdict, with what Kubernetes said about the pod appended (what it does not say yet)."""
    described = describe_events(
        [e for e in events if str(e.get("message") or "").strip() not in state.reason]
    )
    if state.verdict != "failed" or not described:
        return state
    return dataclasses.replace(state, reason=f"{state.reason} [events: {described}]")


def observe(
    pod: dict[str, Any],
    *,
    fatal_waiting_reasons: frozenset[str] = frozenset(),
    unschedulable_timeout_s: float = 300.0,
    now: datetime.datetime | None = None,
    deleted: bool = False,
    deletion_seen_first: bool = False,
) -> PodSeen:
    """One raw pod, as the watcher, adoption and the log reader all see it."""
    meta = pod["metadata"]
    return PodSeen(
        ref=identity.ref_from_annotations(meta.get("annotations")),
        namespace=meta["namespace"],
        name=meta["name"],
        scheduler_id=identity.scheduler_of(meta.get("labels")),
        resource_version=meta.get("resourceVersion", ""),
        state=pod_state(
            pod,
            fatal_waiting_reasons=fatal_waiting_reasons,
            unschedulable_timeout_s=unschedulable_timeout_s,
            now=now,
            deleted=deleted,
            deletion_seen_first=deletion_seen_first,
        ),
    )
