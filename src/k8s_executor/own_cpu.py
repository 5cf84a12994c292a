"""The CPU the executor's own work takes in Airflow's scheduler process.

A module of its own, free of Airflow, because the pipes to the helper processes count their
threads' CPU here and the helper processes import those pipes without Airflow.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator


class OwnCpu:
    """The CPU the executor's own work takes in the scheduler's process: its part of Airflow's calls
    and its own threads there (the pod builder, the errands, the task-log notes, the pipes to its
    helper processes). The rest of the process's CPU is Airflow's loop; the helper processes (the
    launcher, the watchers) have their own. Process-wide: every executor of one scheduler (one per
    team) adds to it. Logged as the scheduler stops, so that the executor's CPU per task can be
    told apart from Airflow's, which grows with the task instances a turn of its loop goes over."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls_s = 0.0
        self.threads_s = 0.0

    def add_calls(self, seconds: float) -> None:
        with self._lock:
            self.calls_s += seconds

    def add_thread(self, seconds: float) -> None:
        with self._lock:
            self.threads_s += seconds

    @contextlib.contextmanager
    def counted(self) -> Iterator[None]:
        """Counts the CPU the calling thread spends in the block as the executor's."""
        before = time.thread_time()
        try:
            yield
        finally:
            self.add_thread(time.thread_time() - before)

    def summary(self) -> str:
        # Read without the lock: Airflow's SIGUSR2 handler asks for it on the loop's thread, which
        # may be holding the lock at that moment.
        return f"{self.calls_s:.2f} s in Airflow's calls, {self.threads_s:.2f} s on its threads"


OWN_CPU = OwnCpu()


class ThreadCpuMeter:
    """For a thread of the executor's that lives as long as its helper (a pipe's reader or writer):
    each `tick` counts the CPU the thread took since the last one as the executor's. CPU time only
    runs while the thread does, so a tick after a blocking read counts none of the wait."""

    def __init__(self) -> None:
        self.last = time.thread_time()

    def tick(self) -> None:
        now = time.thread_time()
        OWN_CPU.add_thread(now - self.last)
        self.last = now
