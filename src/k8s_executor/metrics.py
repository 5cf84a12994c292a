"""What the executor tells metrics dashboards, through Airflow's `Stats` (StatsD or OpenTelemetry).

Every name lives here, so the README's list and the code cannot disagree. Tags carry the
details (HTTP status, cluster) for backends that keep them; StatsD also gets the status
in the name, as Airflow's own metrics do.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import functools
import gc
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from k8s_executor.airflow_adapter import stats
from k8s_executor.identity import DEFAULT_CLUSTER
from k8s_executor.own_cpu import OWN_CPU

PREFIX = "k8s_executor"
NAMES = {
    "pods.pending": "gauge: pods created and not yet running (counted every 5 s)",
    "pods.running": "gauge: pods running their task (counted every 5 s)",
    "pod_create.duration": "timer: one create request, from first attempt to answer (retries included)",
    "pod_create.status.<code>": "counter: create outcomes by HTTP status (0 = API server unreachable)",
    "pod_delete.status.<code>": "counter: delete outcomes by HTTP status",
    "watcher.restarts": "counter: watcher processes that died and were restarted",
    "launcher.restarts": "counter: launcher processes that died and were restarted (their unanswered creates and patches are sent again)",
    "watcher.relists": "counter: full relists after a 410 Gone (history compacted)",
    "watcher.events": "counter: watch events and listed pods the watchers read (every scheduler of an executor reads its pods' events)",
    "pods.relaunched": "counter: new pods for tries whose pod failed before their task started (pod_launch_failure_retries)",
    "pods.disrupted.<cause>": "counter: pods the cluster ended, by their DisruptionTarget reason",
    "executor_call.<call>": "timer: one call Airflow's scheduler loop made into the executor (heartbeat, sync, trigger_tasks, execute_async, try_adopt_task_instances, revoke_task, end)",
    "executor_call.slow.<call>": "counter: calls that held Airflow's scheduler loop longer than 100 ms (each also logged)",
    "adoption.pods": "counter: pods taken over from schedulers that died",
    "adoption.duration": "timer: one adoption pass, from Airflow's hand-over to the pods found adopted",
    "unclaimed_pods.disposed": "counter: finished pods of a scheduler that is gone, deleted or marked done",
    "clusters.<cluster>.<name>": "each of the pod, watcher, launcher, relaunch, disruption and adoption metrics above, for a cluster of [kubernetes_executor] clusters other than the default (tagged cluster=<cluster> where the backend keeps tags)",
}


def _name(name: str, cluster: str | None) -> str:
    # The default cluster's metrics are named as an executor of one cluster names them, so that
    # what watches one cluster needs no change when others are added.
    if cluster is None or cluster == DEFAULT_CLUSTER:
        return f"{PREFIX}.{name}"
    return f"{PREFIX}.clusters.{cluster}.{name}"


def incr(name: str, count: int = 1, cluster: str | None = None, **tags: Any) -> None:
    if cluster is not None and cluster != DEFAULT_CLUSTER:
        tags["cluster"] = cluster
    stats().incr(_name(name, cluster), count, tags=tags or None)


def gauge(name: str, value: float, cluster: str | None = None) -> None:
    stats().gauge(_name(name, cluster), value)


def timing(name: str, seconds: float, cluster: str | None = None) -> None:
    stats().timing(_name(name, cluster), datetime.timedelta(seconds=seconds))


class Stopwatch:
    """Seconds since it was made: how long something took, for a metric or a log line, never an
    input to a decision (those take the ledger's injected clock)."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started


def http_outcome(kind: str, status: int, cluster: str | None = None) -> None:
    incr(f"{kind}.status.{status}", cluster=cluster, status=status)


# A call of Airflow's into the executor that takes longer holds its scheduler loop noticeably.
SLOW_CALL_S = 0.1
# How often the executor logs how long Airflow's calls took (count, p99, longest).
CALL_SUMMARY_EVERY_S = 30.0
# The p99 is over each call's latest durations: a bounded memory, however long the scheduler runs.
CALL_WINDOW = 10_000

log = logging.getLogger("k8s_executor.executor")
_Call = TypeVar("_Call", bound=Callable[..., Any])


class CallTimes:
    """How long each of Airflow's calls into the executor took: a timer per call, a counter and a
    warning for each slow one, and a summary line every CALL_SUMMARY_EVERY_S. The summary also
    gives how often Airflow's loop came round (from one `heartbeat` to the next): the executor's
    events reach Airflow once a turn, so a long turn delays them, whatever the executor does."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, collections: FullCollections | None = None
    ) -> None:
        self.clock = clock
        # The process's full garbage collections, for the summary (a process-wide figure).
        self.collections = collections
        # The timed calls the loop is in, outermost first: Airflow's `heartbeat` calls
        # `trigger_tasks` and `sync`, and only the outermost call's CPU counts towards the
        # executor's own.
        self.within: list[str] = []
        self.recent: dict[str, deque[float]] = {}
        self.count: dict[str, int] = {}
        self.longest: dict[str, float] = {}
        self.summarised = clock()
        self.turns: deque[float] = deque(maxlen=CALL_WINDOW)
        self.longest_turn = 0.0
        self.last_heartbeat: float | None = None

    def heartbeat_started(self, at: float) -> None:
        if self.last_heartbeat is not None:
            self.turns.append(at - self.last_heartbeat)
            self.longest_turn = max(self.longest_turn, at - self.last_heartbeat)
        self.last_heartbeat = at

    def record(
        self,
        call: str,
        seconds: float,
        cpu_s: float = 0.0,
        cpu_wait_s: float | None = None,
        collections: int = 0,
    ) -> None:
        """`seconds` the call took; `cpu_s` of it the calling thread ran; `cpu_wait_s` of it the
        thread was ready to run and waited for a CPU of a busy machine (None where the system does
        not tell). The rest it waited on a lock, I/O or the GIL held by another thread.
        `collections`: Python's full garbage collections meanwhile, on this thread (then within
        `cpu_s`) or another (then holding the GIL)."""
        self.recent.setdefault(call, deque(maxlen=CALL_WINDOW)).append(seconds)
        self.count[call] = self.count.get(call, 0) + 1
        self.longest[call] = max(self.longest.get(call, 0.0), seconds)
        timing(f"executor_call.{call}", seconds)
        if seconds > SLOW_CALL_S:
            incr(f"executor_call.slow.{call}")
            waited = "" if cpu_wait_s is None else f", {cpu_wait_s:.3f} s waiting for a CPU"
            if collections:
                waited += f", {collections} full garbage collection{'s' if collections > 1 else ''}"
            log.warning(
                "%s held Airflow's scheduler loop for %.3f s (%.3f s of it on the loop's own CPU%s)",
                call,
                seconds,
                cpu_s,
                waited,
            )
        if self.clock() - self.summarised >= CALL_SUMMARY_EVERY_S:
            self.log_summary()

    def log_summary(self) -> None:
        self.summarised = self.clock()
        if self.count:
            log.info("executor calls since start: %s", self.summary())

    def p99(self, call: str) -> float:
        return _p99(self.recent[call])

    def summary(self) -> str:
        calls = "; ".join(
            f"{call} n={self.count[call]} p99={self.p99(call):.3f} s max={self.longest[call]:.3f} s"
            for call in sorted(self.count)
        )
        if self.turns:
            calls += f"; Airflow's loop turn p99={_p99(self.turns):.3f} s max={self.longest_turn:.3f} s"
        if self.collections is not None:
            calls += (
                "; Python's full garbage collections in this process since the executor started "
                + self.collections.summary()
            )
        return calls


def _p99(values: deque[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


class _Schedstat:
    """Linux's scheduler statistics of the calling thread: its second field is the nanoseconds the
    thread has been ready to run but waited for a CPU.

    Read without letting go of the GIL. Python's own file reads release it, and taking it back
    from a busy thread of the scheduler (a pipe's reader, say) costs a switch interval, 5 ms or
    more, and a `heartbeat` makes six reads (it, `trigger_tasks` and `sync` are each timed), each of
    which could cost that. So each thread keeps its file open, and reads it with libc's `pread` called through
    `ctypes.PyDLL`, which holds the GIL (a read of /proc takes microseconds and never blocks)."""

    def __init__(self) -> None:
        self._local = threading.local()
        # A fork's threads are new: the files it inherited describe its parent's.
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._forget_files)
        try:
            pread = ctypes.PyDLL(None).pread
        except (OSError, AttributeError, TypeError):
            self._pread = None
            return
        if not os.path.exists("/proc/thread-self/schedstat"):  # not Linux
            self._pread = None
            return
        pread.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_long]
        pread.restype = ctypes.c_ssize_t
        self._pread = pread

    def _forget_files(self) -> None:
        self._local = threading.local()

    def wait_s(self) -> float | None:
        if self._pread is None:
            return None
        file = getattr(self._local, "file", None)
        if file is None:
            try:
                file = self._local.file = _ThreadFile(os.open("/proc/thread-self/schedstat", os.O_RDONLY))
            except OSError:
                return None  # tried again on the next call (out of file descriptors, say)
        read = self._pread(file.fd, file.buffer, len(file.buffer), 0)
        if read <= 0:
            return None
        try:
            return int(file.buffer.raw[:read].split()[1]) / 1e9
        except (ValueError, IndexError):
            return None


class _ThreadFile:
    """A thread's open statistics file, closed when the thread ends (with its thread-local)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = ctypes.create_string_buffer(128)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at the interpreter's exit, `os` may be gone
            os.close(self.fd)


_SCHEDSTAT = _Schedstat()


def cpu_wait_s() -> float | None:
    """Seconds the calling thread has waited, ready to run, for a CPU; None where not told."""
    return _SCHEDSTAT.wait_s()


def full_collections() -> int:
    """How many full collections (of generation 2) Python's garbage collector has made in this
    process. One holds the GIL throughout, and so Airflow's loop, whichever thread it runs on.

    Read from `gc.get_stats()`, not timed with a `gc.callbacks` function: a signal's Python handler
    can run inside such a callback, and the exception it raises there is dropped, which would lose
    Airflow's SIGTERM (its handler raises SystemExit to stop the scheduler)."""
    return int(gc.get_stats()[2]["collections"])


def collector_thresholds() -> str:
    return "/".join(str(t) for t in gc.get_threshold())


class FullCollections:
    """The full collections since the executor started, and the collector's thresholds (see
    executor._set_the_schedulers_collector)."""

    def __init__(self) -> None:
        self.before = full_collections()

    def forget(self) -> None:
        """Count from now on (the executor's start: the process's own start-up is not its)."""
        self.before = full_collections()

    @property
    def count(self) -> int:
        return full_collections() - self.before

    def summary(self) -> str:
        # Not `gc.get_freeze_count()`: it walks every frozen object, 30 ms of the loop's CPU.
        return f"n={self.count} (thresholds {collector_thresholds()})"


FULL_COLLECTIONS = FullCollections()


def timed_call(call: str) -> Callable[[_Call], _Call]:
    """Times a method Airflow's scheduler loop calls, into its object's `call_times`."""

    def wrap(method: _Call) -> _Call:
        @functools.wraps(method)
        def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
            if "end" in self.call_times.within:
                # `end` syncs on its own as the scheduler stops, after Airflow's loop has ended:
                # that is part of `end`'s time, not a hold of the loop's turns.
                return method(self, *args, **kwargs)
            watch, cpu_before, wait_before = Stopwatch(), time.thread_time(), cpu_wait_s()
            collections_before = full_collections()
            if call == "heartbeat":
                self.call_times.heartbeat_started(watch.started)
            self.call_times.within.append(call)
            try:
                return method(self, *args, **kwargs)
            finally:
                self.call_times.within.pop()
                wait_after = cpu_wait_s()
                cpu_s = time.thread_time() - cpu_before
                if not self.call_times.within:
                    OWN_CPU.add_calls(cpu_s)
                self.call_times.record(
                    call,
                    watch.seconds,
                    cpu_s,
                    None if wait_before is None or wait_after is None else wait_after - wait_before,
                    full_collections() - collections_before,
                )

        return timed  # type: ignore[return-value]

    return wrap
