"""What the executor tells metrics dashboards, through Airflow's `Stats` (StatsD or OpenTelemetry).

Every name lives here, so the README's list and the code cannot disagree. Tags carry the
details (HTTP status, namespace) for backends that keep them; StatsD also gets the status
in the name, as Airflow's own metrics do.
"""

from __future__ import annotations

import datetime
import time
from typing import Any

from k8s_executor.airflow_adapter import stats

PREFIX = "k8s_executor"
NAMES = {
    "pods.pending": "gauge: pods created and not yet running",
    "pods.running": "gauge: pods running their task",
    "pod_create.duration": "timer: one create request, from first attempt to answer (retries included)",
    "pod_create.status.<code>": "counter: create outcomes by HTTP status (0 = API server unreachable)",
    "pod_delete.status.<code>": "counter: delete outcomes by HTTP status",
    "watcher.restarts": "counter: watcher processes that died and were restarted",
    "watcher.relists": "counter: full relists after a 410 Gone (history compacted)",
    "watcher.events": "counter: watch events and listed pods the watchers read (every scheduler of an executor reads its pods' events)",
    "pods.relaunched": "counter: new pods for tries whose pod failed before their task started (pod_launch_failure_retries)",
    "adoption.pods": "counter: pods taken over from schedulers that died",
    "adoption.duration": "timer: one adoption pass",
    "unclaimed_pods.disposed": "counter: finished pods of a scheduler that is gone, deleted or marked done",
}


def incr(name: str, count: int = 1, **tags: Any) -> None:
    stats().incr(f"{PREFIX}.{name}", count, tags=tags or None)


def gauge(name: str, value: float) -> None:
    stats().gauge(f"{PREFIX}.{name}", value)


def timing(name: str, seconds: float) -> None:
    stats().timing(f"{PREFIX}.{name}", datetime.timedelta(seconds=seconds))


class Stopwatch:
    """Seconds since it was made: how long something took, for a metric or a log line, never an
    input to a decision (those take the ledger's injected clock)."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started


def http_outcome(kind: str, status: int) -> None:
    incr(f"{kind}.status.{status}", status=status)
