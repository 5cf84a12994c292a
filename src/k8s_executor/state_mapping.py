"""One function decides what a pod means for its task.

Pure: it takes the pod as the API server sent it (a dict) and the time, and
returns a verdict with the reason a person needs in plain words. Terminal
verdicts are final; `pending` and `running` only say the task is on its way.
"""

from __future__ import annotations

import datetime
from typing import Any

from k8s_executor import identity
from k8s_executor.shapes import PodSeen, PodState


def parse_time(value: str | None) -> datetime.datetime | None:
    """A Kubernetes timestamp (RFC 3339, as in creationTimestamp), timezone-aware; None if unset."""
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def _container_failure(statuses: list[dict[str, Any]]) -> tuple[str, str] | None:
    """The first failed container's story, and its reason."""
    for status in statuses:
        terminated = (status.get("state") or {}).get("terminated")
        if terminated and terminated.get("exitCode", 0) != 0:
            reason = terminated.get("reason") or "Error"
            text = (
                f"container {status.get('name')!r} exited with code {terminated.get('exitCode')} ({reason})"
            )
            if reason == "OOMKilled":
                text = (
                    f"container {status.get('name')!r} was killed for exceeding its memory limit (OOMKilled)"
                )
            if terminated.get("message"):
                text += f": {terminated['message'].strip()}"
            return text, reason
    return None


def pod_state(
    pod: dict[str, Any],
    *,
    fatal_waiting_reasons: frozenset[str] | set[str] = frozenset(),
    unschedulable_timeout_s: float = 300.0,
    now: datetime.datetime | None = None,
    deleted: bool = False,
) -> PodState:
    """The verdict on a pod's task. `deleted` is set when the pod object is gone."""
    status = pod.get("status") or {}
    phase = status.get("phase", "Pending")
    init_statuses = status.get("initContainerStatuses") or []
    statuses = status.get("containerStatuses") or []
    if phase == "Succeeded":
        return PodState("success")
    if phase == "Failed":
        reason = status.get("reason")
        if reason == "Evicted":
            return PodState("failed", f"pod was evicted: {status.get('message', '').strip()}", "Evicted")
        failure = _container_failure(init_statuses) or _container_failure(statuses)
        if failure:
            return PodState("failed", *failure)
        message = status.get("message") or reason or "no container reported an exit code"
        return PodState("failed", f"pod failed: {message}", reason or "Failed")
    meta = pod.get("metadata") or {}
    if deleted or meta.get("deletionTimestamp"):
        return PodState(
            "failed", f"pod was deleted while {phase.lower()}, before its task finished", "Deleted"
        )
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
            current = now or datetime.datetime.now(datetime.timezone.utc)
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
    return PodState("failed", f"{state.reason} [events: {described}]", state.cause, state.ran)


def observe(
    pod: dict[str, Any],
    *,
    fatal_waiting_reasons: frozenset[str] = frozenset(),
    unschedulable_timeout_s: float = 300.0,
    now: datetime.datetime | None = None,
    deleted: bool = False,
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
        ),
    )
