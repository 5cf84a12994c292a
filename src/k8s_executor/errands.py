"""Errands: what the executor needs from Airflow's database or the API server, run off Airflow's
scheduler loop.

Airflow calls the executor from its one loop, and takes a scheduler whose loop stalls past its
health check for dead. A database or an API server that is slow or restarting must therefore never
hold that loop: which schedulers live, task-instance rows, resets and requeues, and the pod lists
of adoption and the sweep are each an errand, run on a thread of its own, one errand of a kind at
a time. The loop starts errands and, on a later turn, hands their outcomes to the ledger through
the errand's `then`, on the loop's own thread: the ledger is never touched from an errand.

Each errand has a daemon thread of its own, not a pool's: a hung database call or a list retried
for a minute neither starves the other errands nor holds the scheduler's exit.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from k8s_executor.own_cpu import OWN_CPU

log = logging.getLogger(__name__)

T = TypeVar("T")
# What an errand's outcome becomes on the loop: the actions it leads to, for the executor.
Then = Callable[["Future[Any]"], list[Any]]


def in_background(name: str, work: Callable[[], T]) -> Future[T]:
    """`work`'s outcome, to come: run on a daemon thread of its own, its CPU counted as the
    executor's."""
    future: Future[T] = Future()

    def run() -> None:
        future.set_running_or_notify_cancel()
        with OWN_CPU.counted():
            try:
                future.set_result(work())
            except BaseException as exc:
                future.set_exception(exc)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


class Errands:
    def __init__(self, name: str) -> None:
        self._name = name
        self._running: dict[str, tuple[Future[Any], Then]] = {}
        self._stopped = False

    @property
    def stopped(self) -> bool:
        """Whether `shutdown` was called: an errand that waits in a loop gives up then."""
        return self._stopped

    def busy(self, kind: str) -> bool:
        return kind in self._running

    def run(self, kind: str, errand: Callable[[], T], then: Callable[[Future[T]], list[Any]]) -> bool:
        """Start `errand` unless one of its kind is still out; `then` gets its future on the loop
        (`collect`) once it is done. False if one of the kind was still out, or after `shutdown`."""
        if kind in self._running or self._stopped:
            return False
        self._running[kind] = (in_background(f"{self._name}: {kind}", errand), then)
        return True

    def collect(self) -> list[Any]:
        """The outcomes of the errands done since the last call, each through its `then`."""
        actions: list[Any] = []
        for kind, (future, then) in list(self._running.items()):
            if not future.done():
                continue
            del self._running[kind]
            try:
                actions += then(future)
            except Exception:
                # One errand's bad outcome must not stop the others' nor the loop.
                log.exception("handling the outcome of errand %s failed", kind)
        return actions

    def shutdown(self) -> None:
        """Take no more errands; those out are not waited for (what they would have settled is
        asked again by this scheduler's successor)."""
        self._stopped = True
