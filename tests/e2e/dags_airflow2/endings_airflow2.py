"""Sidecars that outlive their task, on Airflow 2: the task's end is its `base` container's."""

from __future__ import annotations

import datetime

from airflow import DAG
from airflow.operators.python import PythonOperator
from kubernetes.client import models as k8s

PROXY = {"name": "proxy", "image": "busybox", "command": ["sleep", "3600"]}
SIDECAR = {
    "pod_override": k8s.V1Pod(
        spec=k8s.V1PodSpec(containers=[k8s.V1Container(name="base"), k8s.V1Container(**PROXY)])
    )
}
# A native sidecar in the dict form: the Kubernetes client Airflow 2 pins may predate the field.
NATIVE_SIDECAR = {
    "pod_override": {
        "spec": {"containers": [{"name": "base"}], "initContainers": [{**PROXY, "restartPolicy": "Always"}]}
    }
}


def done() -> None:
    print("task done, its sidecar runs on")


def fails() -> None:
    raise ValueError("this task fails; its pod is kept, and must not run on")


with DAG(
    "e2e_endings",
    start_date=datetime.datetime(2024, 1, 1),
    schedule_interval=None,
    catchup=False,
    default_args={"retries": 0},
):
    PythonOperator(task_id="sidecar_ok", python_callable=done, executor_config=SIDECAR)
    PythonOperator(task_id="native_sidecar_ok", python_callable=done, executor_config=NATIVE_SIDECAR)
    PythonOperator(task_id="sidecar_fails", python_callable=fails, executor_config=SIDECAR)
