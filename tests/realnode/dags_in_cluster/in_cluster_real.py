"""Run by the scheduler pod of deploy/in-cluster/ on the real node (tests/realnode/test_in_cluster_on_real_node.py)."""

import datetime
import os

from airflow.sdk import DAG, task

with DAG(
    "in_cluster_real",
    start_date=datetime.datetime(2024, 1, 1),
    schedule=None,
    catchup=False,
    default_args={"retries": 0},
):

    @task
    def work(i: int) -> None:
        print(f"task {i} in pod {os.environ.get('HOSTNAME')} as uid {os.getuid()}", flush=True)
        if i == 2:
            raise RuntimeError("task 2 fails on purpose")

    work.expand(i=[0, 1, 2])
