"""Sidecars that outlive their task, on Airflow 2: the task's end is its `base` container's. A task
whose pod is evicted while it runs: launched again, its retries untouched."""

from __future__ import annotations

import datetime
import pathlib
import time

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


# A short grace period: an evicted pod's task runs on through it (the disruption guard).
GRACE_10S = {
    "pod_override": {"spec": {"containers": [{"name": "base"}], "terminationGracePeriodSeconds": 10}}
}
# The process node runs every pod on this machine: a task's pods all see this mark.
MARK = pathlib.Path(__file__).with_name("evicted.first-pod-ran")


def evicted() -> None:
    first = not MARK.exists()
    MARK.touch()
    print(f"evicted is running ({'first' if first else 'a new'} pod)", flush=True)
    time.sleep(600 if first else 1)


def done() -> None:
    print("task done, its sidecar runs on")


def fails() -> None:
    raise ValueError("this task fails; its pod is kept, and must not run on")


ARGS = {
    "start_date": datetime.datetime(2024, 1, 1),
    "schedule_interval": None,
    "catchup": False,
    "default_args": {"retries": 0},
}

with DAG("e2e_endings", **ARGS):
    PythonOperator(task_id="sidecar_ok", python_callable=done, executor_config=SIDECAR)
    PythonOperator(task_id="native_sidecar_ok", python_callable=done, executor_config=NATIVE_SIDECAR)
    PythonOperator(task_id="sidecar_fails", python_callable=fails, executor_config=SIDECAR)


# Apart from the sidecars' run, which must end failed: this one must succeed.
with DAG("e2e_evicted", **ARGS):
    PythonOperator(task_id="evicted", python_callable=evicted, executor_config=GRACE_10S)
