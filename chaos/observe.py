"""What the run sees from outside the scheduler: the pods (a watch of its own), the API server's
audit log, and Airflow's database and task log files."""

from __future__ import annotations

import datetime
import functools
import json
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devcluster.list_watch import LIST, list_watch
from kubernetes import client

TryKey = tuple[str, str, str, int, int]
# Our executor's pod names end in `-t<try>`, then `r<n>` for a try launched again under a new name.
OUR_POD_TRY = re.compile(r"^(?P<base>.+-t\d+)(r\d+)?$")


@dataclass
class PodSeen:
    key: TryKey | None
    first_seen: float
    ran: bool = False  # a container of it was seen running or ended after starting
    ran_at: float | None = None  # when it was first seen so
    ended: float | None = None
    deleted: float | None = None
    phase: str = ""
    # Its DisruptionTarget reason, once a component of the cluster said it ended the pod.
    disrupted: str = ""


def try_key_of(annotations: dict[str, str] | None) -> TryKey | None:
    """The try a pod runs, from the annotations both executors give their pods."""
    a = annotations or {}
    if not {"dag_id", "task_id", "run_id", "try_number"} <= a.keys():
        return None
    return (a["dag_id"], a["task_id"], a["run_id"], int(a.get("map_index", -1)), int(a["try_number"]))


def _started(status: dict[str, Any]) -> bool:
    for container in status.get("containerStatuses") or []:
        state = container.get("state") or {}
        if state.get("running") or (state.get("terminated") or {}).get("startedAt"):
            return True
    return False


class PodWatch:
    """Every pod of the namespace and its try, whether it ran, when it ended and went. Relists
    after any error (the API server restarts under it, its history is compacted)."""

    def __init__(self, core: client.CoreV1Api, namespace: str) -> None:
        self.core, self.namespace = core, namespace
        self.pods: dict[str, PodSeen] = {}
        self.gaps = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="chaos-pod-watch", daemon=True)
        self.thread.start()

    def _record(self, kind: str, pod: dict[str, Any]) -> None:
        now = time.time()
        meta = pod["metadata"]
        seen = self.pods.setdefault(meta["name"], PodSeen(try_key_of(meta.get("annotations")), now))
        status = pod.get("status") or {}
        seen.phase = status.get("phase", "")
        if seen.phase == "Running" or _started(status):
            seen.ran = True
            seen.ran_at = seen.ran_at or now
        if seen.phase in ("Succeeded", "Failed") and seen.ended is None:
            seen.ended = now
        for condition in status.get("conditions") or []:
            if condition.get("type") == "DisruptionTarget" and condition.get("status") == "True":
                seen.disrupted = str(condition.get("reason") or "DisruptionTarget")
        if kind == "DELETED" and seen.deleted is None:
            seen.deleted = now

    def _run(self) -> None:
        for event in list_watch(
            functools.partial(self.core.list_namespaced_pod, self.namespace),
            self.stop,
            timeout_seconds=30,
            on_error=self._gap,
        ):
            if event["type"] != LIST:
                self._record(event["type"], event["object"])
                continue
            now = time.time()
            names = set()
            for item in event["object"]["items"]:
                names.add(item["metadata"]["name"])
                self._record("LISTED", item)
            # Pods gone while the watch was down went at some moment in the gap.
            for name, seen in self.pods.items():
                if name not in names and seen.deleted is None:
                    seen.deleted = now

    def _gap(self, _: Exception) -> None:
        self.gaps += 1

    def close(self) -> None:
        self.stop.set()


def audit_entries(
    core: client.CoreV1Api, audit_log: Path, namespace: str, timeout: float = 120
) -> list[dict]:
    """The audit records of requests in `namespace` (the rotated file too), read once a marker
    request made now is in them: the API server writes its audit log in batches."""
    marker = f"chaos-marker-{time.monotonic_ns()}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            core.read_namespaced_pod(marker, namespace)
        except client.ApiException:
            pass
        except Exception:
            # The API server may still be coming back from the last fault.
            time.sleep(2)
            continue
        entries: list[dict[str, Any]] = []
        for path in sorted(audit_log.parent.glob(f"{audit_log.stem}*{audit_log.suffix}")):
            with path.open(errors="replace") as lines:
                entries.extend(json.loads(line) for line in lines if namespace in line)
        if (
            any((e.get("objectRef") or {}).get("name") == marker for e in entries)
            or time.monotonic() > deadline
        ):
            return entries
        time.sleep(2)


def audit_time(text: str) -> float:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
