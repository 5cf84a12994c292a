"""The scheduler's helper processes (the launcher, the watchers): spawned, and light.

Spawned, never forked: the scheduler process holds threads, database connections and a
SIGTERM handler that a forked child would inherit (and then ignore terminate()).

Light: a spawned child first runs its parent's main module again. Under `airflow scheduler`
that is Airflow's command line, 1.7 s of imports on this project's machine, paid by every
helper a scheduler starts, again by each one that is restarted, and by a new scheduler before
it can adopt its predecessor's pods (bench/RESULTS.md, item 13). The children here skip it and
import neither Airflow nor the scheduler's modules: only the kubernetes client and the
executor's core. Their log records travel to the scheduler with their other messages, and are
logged there, where Airflow's logging settings apply.
"""

from __future__ import annotations

import logging
import multiprocessing.context
import sys
import types
from logging.handlers import QueueHandler
from multiprocessing import popen_spawn_posix
from typing import Any


class _PopenWithoutMain(popen_spawn_posix.Popen):
    def _launch(self, process_obj: Any) -> None:
        # What the child must prepare is read from sys.modules["__main__"] during the launch: a
        # bare module in its place, for the moment of the spawn, means nothing to run again.
        main = sys.modules["__main__"]
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            super()._launch(process_obj)  # type: ignore[misc]
        finally:
            sys.modules["__main__"] = main


class ChildProcess(multiprocessing.context.SpawnProcess):
    """A spawned process that does not run its parent's main module again."""

    @staticmethod
    def _Popen(process_obj: Any) -> Any:
        return _PopenWithoutMain(process_obj)


def send_logs_to(messages: Any, level: int) -> None:
    """In a child: every log record at `level` or above goes to the parent through `messages`."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(QueueHandler(messages))
    root.setLevel(level)


def log_in_parent(record: logging.LogRecord) -> None:
    """Log a child's record in this process, under the child's logger name."""
    logger = logging.getLogger(record.name)
    if logger.isEnabledFor(record.levelno):
        logger.handle(record)


def log_level() -> int:
    """The level the children should send at: the executor's loggers' level in the scheduler."""
    return logging.getLogger("k8s_executor").getEffectiveLevel()
