"""A DAG for an executor with a second cluster, `east` ([kubernetes_executor] clusters): one task
in the default cluster, one routed by its executor_config, one by its queue. With `hold` in the
run's conf, each task waits for that file before it ends."""

from __future__ import annotations

import datetime
import os
import time

from airflow.sdk import DAG, get_current_context, task


def _hold() -> str:
    path = (get_current_context()["dag_run"].conf or {}).get("hold")
    while path and not os.path.exists(path):
        time.sleep(0.5)
    return os.environ.get("HOSTNAME", "")


with DAG("e2e_clusters", start_date=datetime.datetime(2024, 1, 1), schedule=None, catchup=False):

    @task
    def in_default() -> str:
        return _hold()

    @task(executor_config={"cluster": "east"})
    def east_by_config() -> str:
        return _hold()

    @task(queue="east")
    def east_by_queue() -> str:
        return _hold()

    in_default()
    east_by_config()
    east_by_queue()
