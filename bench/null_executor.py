"""An Airflow executor that takes every task and runs none: Airflow's own part of a burst, alone.

The bench runs the bare client beside a scheduler holding this executor over the same mapped
task, so that the ceiling has Airflow's loop on the machine as every executor's run has it.
Airflow queues the task instances and hands them over; they stay queued, as they do through an
executor's launch (the simulated pods never run a task), and the loop turns over them as it does
then.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.executors.base_executor import BaseExecutor


class NullExecutor(BaseExecutor):
    def _process_workloads(self, workload_items: Sequence[Any]) -> None:
        # Taken as any executor takes them (out of the queue, into running), then left alone.
        for workload in workload_items:
            key = workload.ti.key
            self.queued_tasks.pop(key, None)
            self.running.add(key)

    def sync(self) -> None:
        pass

    def end(self) -> None:
        pass

    def terminate(self) -> None:
        pass
