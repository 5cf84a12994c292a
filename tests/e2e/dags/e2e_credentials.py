"""A DAG that keeps pods coming and going while the tests change the executor's credentials."""

from __future__ import annotations

import datetime
import time

from airflow.sdk import DAG, task

with DAG(
    "e2e_credentials",
    start_date=datetime.datetime(2024, 1, 1),
    schedule=None,
    catchup=False,
    max_active_tasks=8,
):

    @task
    def work(i: int) -> int:
        time.sleep(4)
        if i == 19:
            raise RuntimeError("task 19 fails on purpose")
        return i

    work.expand(i=list(range(20)))
