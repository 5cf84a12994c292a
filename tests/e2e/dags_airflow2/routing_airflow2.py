"""The routing DAG of the Airflow 3 suite, written for Airflow 2."""

from __future__ import annotations

import datetime
import os
import time

from airflow import DAG
from airflow.operators.python import PythonOperator


def where() -> str:
    return os.environ.get("AIRFLOW_IS_K8S_EXECUTOR_POD", "local")


def slow() -> None:
    time.sleep(25)


with DAG(
    "e2e_routing",
    start_date=datetime.datetime(2024, 1, 1),
    schedule_interval=None,
    catchup=False,
    max_active_tasks=32,
):
    PythonOperator(task_id="on_custom_queue", python_callable=where, queue="k8s-custom")
    PythonOperator(task_id="on_kubernetes_queue", python_callable=where, queue="kubernetes")
    PythonOperator(task_id="on_default_queue", python_callable=where)
    PythonOperator(task_id="slow_local", python_callable=slow)
    PythonOperator(task_id="slow_pod", python_callable=slow, queue="k8s-custom")
