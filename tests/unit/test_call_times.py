"""How long Airflow's calls into the executor took: timers, the slow ones named, a summary."""

from __future__ import annotations

import logging

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
        import time

        time.sleep(seconds)
        return "synced"

    @metrics.timed_call("end")
    def end(self) -> None:
        raise RuntimeError("a call that raises is timed too")


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
    assert slow.getMessage().endswith(" s of it on the loop's own CPU)")
    assert float(slow.getMessage().split("(")[1].split()[0]) < 0.1
    with pytest.raises(RuntimeError):
        executor.end()
    clock.now = metrics.CALL_SUMMARY_EVERY_S
    executor.sync(0.0)
    summary = caplog.records[-1].getMessage()
    assert summary.startswith("executor calls since start: end n=1 p99=0.000 s")
    assert "sync n=3 p99=0.1" in summary
    assert executor.call_times.count == {"sync": 3, "end": 1}
