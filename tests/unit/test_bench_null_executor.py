"""The bench's Airflow-only stack: its executor takes every task as an executor does, and runs none."""

from __future__ import annotations

from types import SimpleNamespace

from bench.null_executor import NullExecutor


def test_takes_each_workload_out_of_the_queue_into_running_and_reports_nothing() -> None:
    executor = NullExecutor()
    keys = [("bench", "unit", "bench-1", 1, i) for i in range(3)]
    workloads = [SimpleNamespace(ti=SimpleNamespace(key=key)) for key in keys]
    for key, workload in zip(keys, workloads, strict=True):
        executor.queued_tasks[key] = workload  # type: ignore[index]

    executor._process_workloads(workloads)
    executor.sync()

    assert executor.queued_tasks == {}
    assert executor.running == set(keys)
    assert executor.get_event_buffer() == {}
