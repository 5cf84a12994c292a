"""How long Airflow's calls into the executor took: timers, the slow ones named, a summary."""

from __future__ import annotations

import gc
import logging
import sys
import threading
import time
from collections.abc import Callable

import pytest

from k8s_executor import metrics


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Executor:
    def __init__(self, clock: Clock) -> None:
        self.call_times = metrics.CallTimes(clock)
        self.clock = clock

    @metrics.timed_call("sync")
    def sync(self, seconds: float) -> str:
        time.sleep(seconds)
        return "synced"

    @metrics.timed_call("heartbeat")
    def heartbeat(self) -> None:
        gc.collect()

    @metrics.timed_call("end")
    def end(self) -> None:
        raise RuntimeError("a call that raises is timed too")


class Stopping(Executor):
    @metrics.timed_call("end")
    def end(self) -> None:
        self.sync(0.15)
        self.sync(0.0)


def test_a_slow_call_is_logged_and_the_summary_gives_each_calls_p99_and_longest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    executor = Executor(clock)
    caplog.set_level(logging.INFO, logger="k8s_executor.executor")
    assert executor.sync(0.0) == "synced"
    assert not caplog.records
    assert executor.sync(0.15) == "synced"
    (slow,) = caplog.records
    assert slow.levelno == logging.WARNING
    assert slow.getMessage().startswith("sync held Airflow's scheduler loop for 0.1")
    # Asleep, not running: the warning tells a wait from the loop's own work.
    assert " s of it on the loop's own CPU" in slow.getMessage()
    assert float(slow.getMessage().split("(")[1].split()[0]) < 0.1
    with pytest.raises(RuntimeError):
        executor.end()
    clock.now = metrics.CALL_SUMMARY_EVERY_S
    executor.sync(0.0)
    summary = caplog.records[-1].getMessage()
    assert summary.startswith("executor calls since start: end n=1 p99=0.000 s")
    assert "sync n=3 p99=0.1" in summary
    assert executor.call_times.count == {"sync": 3, "end": 1}


def test_the_syncs_end_makes_as_the_scheduler_stops_are_ends_time_not_holds_of_their_own(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Airflow's loop has ended when it calls `end`: a slow sync inside it holds no turn of it, and
    # would otherwise be counted with the syncs that do (the fault run's `loop_hold_max_s`).
    caplog.set_level(logging.INFO, logger="k8s_executor.executor")
    executor = Stopping(Clock())
    executor.sync(0.0)
    executor.end()
    (slow,) = caplog.records
    assert slow.getMessage().startswith("end held Airflow's scheduler loop for 0.1")
    assert executor.call_times.count == {"sync": 1, "end": 1}
    assert executor.call_times.longest["end"] >= 0.15
    assert executor.call_times.within == []


def test_a_slow_calls_warning_tells_its_own_cpu_and_its_wait_for_a_cpu_apart(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="k8s_executor.executor")
    times = metrics.CallTimes(Clock())
    times.record("sync", 0.25, cpu_s=0.04, cpu_wait_s=0.15)
    times.record("heartbeat", 0.2, cpu_s=0.05)
    assert [r.getMessage() for r in caplog.records] == [
        "sync held Airflow's scheduler loop for 0.250 s "
        "(0.040 s of it on the loop's own CPU, 0.150 s waiting for a CPU)",
        "heartbeat held Airflow's scheduler loop for 0.200 s (0.050 s of it on the loop's own CPU)",
    ]


def test_full_garbage_collections_are_counted_young_ones_not() -> None:
    collections = metrics.FullCollections()
    gc.collect(0)
    gc.collect(1)
    assert collections.count == 0
    gc.collect()
    assert collections.count == 1
    collections.forget()
    assert collections.count == 0


def test_the_executor_gives_pythons_collector_no_callback() -> None:
    # A signal's Python handler can run inside a collector's callback, and what it raises there is
    # dropped: Airflow's SIGTERM handler raises SystemExit, and the scheduler would carry on.
    import k8s_executor.executor  # noqa: F401  (all the scheduler's process imports of ours)

    assert not [c for c in gc.callbacks if getattr(c, "__module__", "").startswith("k8s_executor")]


def test_a_slow_calls_warning_tells_the_full_garbage_collections_within_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="k8s_executor.executor")
    times = metrics.CallTimes(Clock(), collections=metrics.FullCollections())
    times.record("sync", 0.25, cpu_s=0.14, cpu_wait_s=0.01, collections=1)
    times.record("heartbeat", 0.5, cpu_s=0.3, collections=2)
    assert [r.getMessage() for r in caplog.records] == [
        "sync held Airflow's scheduler loop for 0.250 s (0.140 s of it on the loop's own CPU, "
        "0.010 s waiting for a CPU, 1 full garbage collection)",
        "heartbeat held Airflow's scheduler loop for 0.500 s (0.300 s of it on the loop's own CPU, "
        "2 full garbage collections)",
    ]
    assert times.summary().endswith(
        f"; Python's full garbage collections in this process since the executor started "
        f"n=0 (thresholds {'/'.join(map(str, gc.get_threshold()))})"
    )


def test_a_timed_call_is_told_the_full_collections_made_during_it(monkeypatch: pytest.MonkeyPatch) -> None:
    executor = Executor(Clock())
    recorded: list[tuple[str, int]] = []
    monkeypatch.setattr(
        executor.call_times,
        "record",
        lambda call, s, cpu, wait, collections: recorded.append((call, collections)),
    )
    executor.sync(0.0)
    executor.heartbeat()  # makes one
    assert recorded == [("sync", 0), ("heartbeat", 1)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's /proc gives it; elsewhere None")
def test_the_wait_for_a_cpu_is_read_from_the_threads_scheduler_statistics() -> None:
    before = metrics.cpu_wait_s()
    assert before is not None
    after = metrics.cpu_wait_s()
    assert after is not None and after >= before


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's /proc gives it; elsewhere None")
def test_reading_the_wait_for_a_cpu_never_hands_the_gil_to_a_busy_thread() -> None:
    """Each timed call reads it twice: a read that let go of the GIL would wait a switch interval
    or more to take it back from any busy thread of the scheduler. With a long switch interval,
    the busy thread below runs only when this one lets go of the GIL."""
    ran = [0]
    stop = threading.Event()

    def busy() -> None:
        while not stop.is_set():
            ran[0] += 1

    def ran_during(read: Callable[[], object], times: int) -> int:
        before = ran[0]
        for _ in range(times):
            read()
        return ran[0] - before

    interval = sys.getswitchinterval()
    thread = threading.Thread(target=busy, daemon=True)
    metrics.cpu_wait_s()  # this thread's file is opened on its first read
    try:
        thread.start()
        sys.setswitchinterval(0.5)
        # Letting go of the GIL for a while lets the busy thread run (the test can fail); from
        # this thread's return it waits for the GIL.
        assert ran_during(lambda: time.sleep(0.01), 1) > 0
        assert ran_during(metrics.cpu_wait_s, 50) == 0
    finally:
        stop.set()
        sys.setswitchinterval(interval)
        thread.join()


def test_the_summary_gives_how_often_airflows_loop_came_round() -> None:
    times = metrics.CallTimes(Clock())
    for started in (10.0, 11.0, 15.5, 16.5):
        times.heartbeat_started(started)
        times.record("heartbeat", 0.01)
    assert times.summary() == (
        "heartbeat n=4 p99=0.010 s max=0.010 s; Airflow's loop turn p99=4.500 s max=4.500 s"
    )
    assert metrics.CallTimes(Clock()).summary() == ""


def test_the_summary_is_logged_on_demand_once_a_call_was_timed(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="k8s_executor.executor")
    times = metrics.CallTimes(Clock())
    times.log_summary()
    assert not caplog.records
    times.record("sync", 0.01)
    times.log_summary()
    assert [r.getMessage() for r in caplog.records] == [
        "executor calls since start: sync n=1 p99=0.010 s max=0.010 s"
    ]
