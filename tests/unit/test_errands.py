"""Errands run off the scheduler's loop; their outcomes reach the loop only through `collect`."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future

from k8s_executor.errands import Errands


def wait_for(errands: Errands, kind: str) -> None:
    deadline = time.monotonic() + 5
    while errands._running[kind][0].done() is False and time.monotonic() < deadline:
        time.sleep(0.01)


def test_an_outcome_reaches_the_loop_only_when_collected_and_on_the_loops_thread() -> None:
    errands = Errands("test")
    seen: list[tuple[int, str]] = []

    def then(outcome: Future[int]) -> list[str]:
        seen.append((outcome.result(), threading.current_thread().name))
        return ["action"]

    assert errands.run("read", lambda: 42, then)
    wait_for(errands, "read")
    assert seen == []  # done, but not yet taken in
    assert errands.collect() == ["action"]
    assert seen == [(42, threading.current_thread().name)]
    assert not errands.busy("read")


def test_one_errand_of_a_kind_at_a_time_and_a_hung_one_holds_no_other() -> None:
    errands = Errands("test")
    release = threading.Event()
    assert errands.run("list", release.wait, lambda _: [])
    assert not errands.run("list", lambda: None, lambda _: [])
    assert errands.run("rows", lambda: "rows", lambda outcome: [outcome.result()])
    wait_for(errands, "rows")
    assert errands.collect() == ["rows"]
    assert errands.busy("list")
    release.set()
    wait_for(errands, "list")
    errands.collect()
    assert not errands.busy("list")


def test_a_failed_errand_and_a_failing_then_stop_neither_the_loop_nor_the_others() -> None:
    errands = Errands("test")

    def fails() -> None:
        raise ConnectionError("database away")

    def then_raises(outcome: Future[None]) -> list[str]:
        outcome.result()
        return ["never"]

    errands.run("bad", fails, then_raises)
    errands.run("good", lambda: 1, lambda outcome: ["good"])
    wait_for(errands, "bad")
    wait_for(errands, "good")
    assert errands.collect() == ["good"]
    errands.shutdown()
    assert not errands.run("after", lambda: 1, lambda _: [])
