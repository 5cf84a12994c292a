"""Instruments that look at a run from outside the scheduler: the API server, /proc, the logs.

Every figure comes from the system itself: requests, each create's answer and each pod's end from
the API server's audit log, the rest of a pod's life from its watch, CPU and memory from /proc, task
events from the scheduler's own log.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import re
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devcluster import process_tree
from devcluster.list_watch import list_watch, objects
from kubernetes import client

from k8s_executor.identity import scheduler_of
from k8s_executor.kube_client import read_body

BENCH_USER_AGENT = "k8s-executor-bench"
# Both executors use the official client's default user agent; every other client (the node
# agent, this harness, kube-scheduler, the controllers) has a name of its own.
# The official provider's requests carry the client's default user agent; this executor's its own.
EXECUTOR_USER_AGENT_PREFIXES = ("OpenAPI-Generator/", "airflow-k8s-executor/")


@dataclass
class PodTimes:
    map_index: int
    created: float
    running: float | None = None
    terminal: float | None = None
    deleted: float | None = None
    worker_label: str = ""
    relabelled: float | None = None


@dataclass
class PodClock:
    """Watches a namespace and records, in wall-clock time, what happens to each pod."""

    core: client.CoreV1Api
    namespace: str
    pods: dict[str, PodTimes] = field(default_factory=dict)
    events: int = 0
    # The first pod seen, as the API server returned it: what the bare client creates again.
    sample: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.stop = threading.Event()
        rv = self.core.list_namespaced_pod(self.namespace).metadata.resource_version
        self.thread = threading.Thread(target=self._run, args=(rv,), daemon=True)
        self.thread.start()

    def _run(self, rv: str) -> None:
        # Watched from the namespace's state at the clock's start: a relist (after a failure) shows
        # what happened in the gap, its pods seen then.
        for event in list_watch(
            functools.partial(self.core.list_namespaced_pod, self.namespace),
            self.stop,
            resource_version=rv,
            timeout_seconds=30,
        ):
            now = time.time()
            for pod in objects(event):
                self.events += 1
                self._record(event["type"], pod, now)

    def _record(self, kind: str, pod: dict[str, Any], now: float) -> None:
        meta = pod["metadata"]
        times = self.pods.get(meta["name"])
        if times is None:
            self.sample = self.sample or pod
            index = int((meta.get("annotations") or {}).get("map_index", -1))
            times = self.pods[meta["name"]] = PodTimes(index, now)
        phase = (pod.get("status") or {}).get("phase")
        if phase == "Running" and times.running is None:
            times.running = now
        if phase in ("Succeeded", "Failed") and times.terminal is None:
            times.terminal = now
        if kind == "DELETED" and times.deleted is None:
            times.deleted = now
        label = scheduler_of(meta.get("labels"))
        if times.worker_label and label != times.worker_label:
            times.relabelled = now
        times.worker_label = label

    def wait(self, done: Any, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if done(self):
                return True
            time.sleep(0.2)
        return False


_EVENT = re.compile(
    r"^(\S+Z) .*Received executor event with state (\w+) for task instance "
    r"TaskInstanceKey\(dag_id='[^']*', task_id='[^']*', run_id='([^']*)', try_number=\d+, map_index=(-?\d+)\)"
)
_ADOPTING = re.compile(r"^(\S+Z) .*Adopting or resetting orphaned tasks for active dag runs")
_ADOPTED = re.compile(
    r"^(\S+Z) .*adopted (\d+) of \d+ task instances from schedulers (?:.* in ([\d.]+) s\b)?"
)


def _stamp(text: str) -> float:
    # A log line's time, in UTC; one that falls on a whole second is written without a fraction.
    return _audit_time(text)


def executor_events(scheduler_log: Path, run_id: str) -> dict[int, float]:
    """Map index -> when the scheduler took the executor's report of the task's end.

    The harness records each task's end in the database before its pod ends, as a real task
    does; the official executor reports the state it reads there, ours the pod's verdict, so
    both report `success`. (The official one also reports `queued` at launch: not an end.)
    """
    seen: dict[int, float] = {}
    for line in scheduler_log.read_text(errors="replace").splitlines():
        match = _EVENT.match(line)
        if match and match.group(3) == run_id and match.group(2) in ("success", "failed"):
            seen.setdefault(int(match.group(4)), _stamp(match.group(1)))
    return seen


def adoptions_logged(scheduler_log: Path) -> list[tuple[float, int, float | None]]:
    """When this executor ended an adoption pass, how many task instances it adopted, and how long
    its own part took (Airflow's query of the task instances before it not included).

    It writes nothing to the pods it adopts, so its own log line marks the end; the official
    executor's end is its last relabel patch, seen on the pods.
    """
    return [
        (_stamp(m.group(1)), int(m.group(2)), float(m.group(3)) if m.group(3) else None)
        for line in scheduler_log.read_text(errors="replace").splitlines()
        if (m := _ADOPTED.match(line))
    ]


def adoption_passes(scheduler_log: Path) -> list[float]:
    return [
        _stamp(m.group(1))
        for line in scheduler_log.read_text(errors="replace").splitlines()
        if (m := _ADOPTING.match(line))
    ]


@dataclass
class AuditedRequests:
    """What the audit log has of the executor's pod requests in a run's namespace."""

    by_verb: dict[str, int]
    # Each pod the executor created, by name: when the API server answered its create (the
    # `stageTimestamp` of its ResponseComplete entry, to the microsecond).
    created: dict[str, float]
    # Each pod's first status write (by the node) from `ended_after` on: when it ended.
    ended: dict[str, float]


def executor_requests(
    audit_log: Path, namespace: str, since: float, until: float, ended_after: float | None = None
) -> AuditedRequests:
    """Requests on pods the executor made in `namespace` during the window, by verb; when each
    pod's create was answered; and when each pod's status was first written from `ended_after`, the
    moment the harness told every pod to end (audit log).

    Both are the API server's own record, as the bare client's burst is timed by the answers it
    gets: this harness's watch falls behind in a burst (on this machine up to 1.6 s in a 1,000-pod
    one and 22.7 s in a 20,000-pod one, bench/RESULTS.md), which would be charged to the executor at
    launch and credited to it at completion. A pod not yet started when told to end has its start written
    first: its end then counts from that earlier write, against the executor.
    """
    counts: dict[str, int] = {}
    created: dict[str, float] = {}
    ended: dict[str, float] = {}
    # The API server rotates the log into `audit-<time>.log` beside it (seen: a 5,000-task run
    # whose first 1,663 creates had moved there before the window was read).
    for path in sorted(audit_log.parent.glob(f"{audit_log.stem}*{audit_log.suffix}")):
        with path.open(errors="replace") as lines:
            for line in lines:
                if namespace not in line:
                    continue
                entry = json.loads(line)
                ref = entry.get("objectRef") or {}
                if entry.get("stage") != "ResponseComplete" or ref.get("namespace") != namespace:
                    continue
                received = _audit_time(entry["requestReceivedTimestamp"])
                if (
                    ended_after is not None
                    and received >= ended_after
                    and ref.get("subresource") == "status"
                    and "name" in ref
                    and (entry.get("responseStatus") or {}).get("code", 500) < 300
                ):
                    ended.setdefault(ref["name"], _audit_time(entry["stageTimestamp"]))
                if not str(entry.get("userAgent", "")).startswith(EXECUTOR_USER_AGENT_PREFIXES):
                    continue
                if since <= received <= until:
                    verb = entry["verb"] + (f" {ref['subresource']}" if ref.get("subresource") else "")
                    counts[verb] = counts.get(verb, 0) + 1
                    answered = (entry.get("responseStatus") or {}).get("code") == 201
                    if verb == "create" and ref.get("resource") == "pods" and answered and "name" in ref:
                        created.setdefault(ref["name"], _audit_time(entry["stageTimestamp"]))
    return AuditedRequests(counts, created, ended)


def _audit_time(text: str) -> float:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def cpu_seconds(root: int) -> float:
    """CPU of a process and its descendants (their reaped children included)."""
    return sum(map(process_tree.cpu_seconds, process_tree.tree(root).values()))


def own_cpu_seconds(pid: int) -> float:
    """CPU of the process alone, without its descendants: for a scheduler, Airflow's loop and the
    executor's part inside it, but not the executor's launcher and watcher processes."""
    fields = process_tree.stat_fields(pid)
    return process_tree.cpu_seconds(fields) if fields is not None else 0.0


def rss_bytes(root: int) -> int:
    return sum(map(process_tree.resident_bytes, process_tree.tree(root).values()))


class PeakMemory:
    """Samples the scheduler's resident memory (with its watcher processes) every second."""

    def __init__(self, root: int) -> None:
        self.root, self.peak = root, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(1.0):
            self.peak = max(self.peak, rss_bytes(self.root))


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


_REQUEST_TOTAL = re.compile(r"^apiserver_request_total\{([^}]*)\} (\S+)$")


def apiserver_pod_requests(api: client.ApiClient) -> dict[str, float]:
    """The API server's own count of pod requests by verb, from every client (`/metrics`).

    A cross-check on the audit log's per-executor figures: this counter cannot tell the
    executor from the node agent (status writes) or this harness (its watch).
    """
    response = api.call_api(
        "/metrics", "GET", auth_settings=["BearerToken"], _preload_content=False, _return_http_data_only=True
    )
    counts: dict[str, float] = {}
    for line in read_body(response).decode().splitlines():
        match = _REQUEST_TOTAL.match(line)
        if not match:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        if labels.get("resource") != "pods":
            continue
        verb = labels.get("verb", "") + (f" {labels['subresource']}" if labels.get("subresource") else "")
        counts[verb] = counts.get(verb, 0.0) + float(match.group(2))
    return counts


def difference(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0) > 0}


# Which part of the machine a process is, by its command line (first match wins). The cluster's
# part is what each pod costs the API server, etcd and the components that act on it; the
# scheduler's is Airflow's loop with the executor's part inside it (and the official provider's
# job watcher, a fork of it); the executor's helpers are ours alone.
MACHINE_PARTS = (
    (
        "cluster",
        ("kube-apiserver", "/etcd ", "kube-scheduler", "kube-controller-manager", "devcluster.node_agent"),
    ),
    ("executor helpers", ("k8s_executor.helper",)),
    ("scheduler", ("airflow scheduler",)),
    ("postgres", ("postgres",)),
    # This harness's process (its watch) and the bare client's, a spawned child of it.
    ("harness", ("-m bench", "multiprocessing")),
)


def machine_part(command_line: str) -> str:
    for part, marks in MACHINE_PARTS:
        if any(mark in command_line for mark in marks):
            return part
    return "other"


class MachineCpu:
    """Every process's CPU on this machine, summed by part every half second, so that any window
    of a run (an executor's launch, the bare client's) can be split by where its CPU went.

    A process that exits between two samples loses at most its last half second; one that starts
    in a window counts from zero."""

    INTERVAL_S = 0.5

    def __init__(self) -> None:
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._parts: dict[tuple[int, str], str] = {}
        self._last: dict[int, tuple[str, float]] = {}
        self._gone: dict[str, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="machine-cpu", daemon=True)
        self.thread.start()

    def _part(self, pid: int, started: str) -> str:
        key = (pid, started)
        if key not in self._parts:
            try:
                command = (
                    Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                )
            except OSError:
                command = ""
            self._parts[key] = machine_part(command)
        return self._parts[key]

    def _sample(self) -> None:
        now: dict[int, tuple[str, float]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            fields = process_tree.stat_fields(int(entry))
            if fields is None:
                continue
            # utime and stime alone: a reaped child's CPU is counted as the child's, not twice.
            cpu = (int(fields[11]) + int(fields[12])) / process_tree.TICKS
            now[int(entry)] = (self._part(int(entry), fields[19]), cpu)
        for pid, (part, cpu) in self._last.items():
            if pid not in now:
                self._gone[part] = self._gone.get(part, 0.0) + cpu
        self._last = now
        totals = dict(self._gone)
        for part, cpu in now.values():
            totals[part] = totals.get(part, 0.0) + cpu
        self.samples.append((time.time(), totals))

    def _run(self) -> None:
        while not self.stop.is_set():
            self._sample()
            self.stop.wait(self.INTERVAL_S)

    def _at(self, when: float) -> dict[str, float]:
        """The totals by part at `when`, between the two samples around it."""
        samples = list(self.samples)
        after = next((i for i, (t, _) in enumerate(samples) if t >= when), len(samples) - 1)
        (t1, b) = samples[after]
        (t0, a) = samples[max(0, after - 1)]
        share = 0.0 if t1 <= t0 else min(1.0, max(0.0, (when - t0) / (t1 - t0)))
        return {part: a.get(part, 0.0) + share * (b.get(part, 0.0) - a.get(part, 0.0)) for part in b}

    def between(self, start: float, end: float) -> dict[str, float]:
        """CPU seconds by part from `start` to `end` (epoch seconds)."""
        if len(self.samples) < 2 or end <= start:
            return {}
        first, last = self._at(start), self._at(end)
        return {part: round(last[part] - first.get(part, 0.0), 2) for part in last}
