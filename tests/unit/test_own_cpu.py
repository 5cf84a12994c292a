"""The executor's own CPU in the scheduler's process: its calls, counted once however nested, and
its threads, apart from the CPU of Airflow's loop around them."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from k8s_executor import metrics
from k8s_executor.own_cpu import OWN_CPU, OwnCpu, ThreadCpuMeter


def spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


class Executor:
    def __init__(self) -> None:
        self.call_times = metrics.CallTimes()

    @metrics.timed_call("heartbeat")
    def heartbeat(self) -> None:
        spin(0.02)
        self.sync()

    @metrics.timed_call("sync")
    def sync(self) -> None:
        spin(0.03)


def test_a_call_inside_another_counts_once() -> None:
    executor = Executor()
    before = OWN_CPU.calls_s
    executor.heartbeat()
    counted = OWN_CPU.calls_s - before
    # heartbeat's 0.05 s includes sync's 0.03 s: summing both calls would give 0.08 s.
    assert 0.05 <= counted < 0.075
    assert executor.call_times.within == []


def test_cpu_spent_outside_a_call_is_not_the_executors() -> None:
    before = OWN_CPU.calls_s
    spin(0.03)
    assert OWN_CPU.calls_s == before


def test_a_block_on_another_thread_counts_its_cpu_not_its_waits() -> None:
    own = OwnCpu()

    def work() -> None:
        with own.counted():
            spin(0.03)
            time.sleep(0.1)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert 0.03 <= own.threads_s < 0.08
    assert own.calls_s == 0.0
    assert own.summary() == f"0.00 s in Airflow's calls, {own.threads_s:.2f} s on its threads"


def test_a_long_lived_threads_meter_counts_what_ran_since_its_last_tick() -> None:
    before = OWN_CPU.threads_s
    meter = ThreadCpuMeter()
    spin(0.02)
    meter.tick()
    time.sleep(0.05)  # a blocking read between two messages: no CPU
    meter.tick()
    spin(0.02)
    meter.tick()
    assert 0.04 <= OWN_CPU.threads_s - before < 0.07


def test_airflows_debug_dump_gives_the_executors_own_cpu_so_far(caplog: pytest.LogCaptureFixture) -> None:
    from k8s_executor import KubernetesExecutor

    caplog.set_level(logging.INFO, logger="k8s_executor.test_dump")
    OWN_CPU.add_thread(0.25)
    executor = KubernetesExecutor()
    executor._log = logging.getLogger("k8s_executor.test_dump")  # Airflow 3 logs through structlog
    executor.debug_dump()
    (line,) = [r.getMessage() for r in caplog.records if "own CPU" in r.getMessage()]
    assert line == f"the executor's own CPU in this process so far: {OWN_CPU.summary()}"
    assert float(line.split(", ")[1].split()[0]) >= 0.25
