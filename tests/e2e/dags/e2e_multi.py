"""A DAG for Airflow 3's multiple executors (`executor = A,B`); other stacks report it as an import error."""

from __future__ import annotations

import datetime
import os

from airflow.sdk import DAG, task

with DAG("e2e_multi", start_date=datetime.datetime(2024, 1, 1), schedule=None, catchup=False):

    @task(queue="k8s-custom")
    def pod_task() -> str:
        return os.environ.get("AIRFLOW_IS_K8S_EXECUTOR_POD", "local")

    @task
    def hybrid_local_task() -> str:
        return os.environ.get("AIRFLOW_IS_K8S_EXECUTOR_POD", "local")

    @task(executor="LocalExecutor")
    def other_executor_task() -> str:
        return os.environ.get("AIRFLOW_IS_K8S_EXECUTOR_POD", "local")

    pod_task()
    hybrid_local_task()
    other_executor_task()
