"""The demo DAG: every task runs in its own pod on the development cluster."""

from __future__ import annotations

import datetime

from airflow.sdk import DAG, task
from kubernetes.client import models as k8s

with DAG(
    "k8s_executor_demo",
    start_date=datetime.datetime(2024, 1, 1),
    schedule=None,
    catchup=False,
    default_args={"retries": 0},
):

    @task
    def extract() -> list[int]:
        return [1, 2, 3, 4]

    @task
    def square(x: int) -> int:
        return x * x

    @task(
        executor_config={
            "KubernetesExecutor": {
                "request_memory": "128Mi",
                "limit_memory": "512Mi",
                "labels": {"team": "data-engineering"},
                "env_vars": [{"name": "CUSTOM_VAR", "value": "custom_value"}],
            }
        }
    )
    def configured() -> str:
        import os

        return os.environ["CUSTOM_VAR"]

    @task(
        executor_config={
            "pod_override": k8s.V1Pod(
                metadata=k8s.V1ObjectMeta(annotations={"demo": "pod_override"}),
                spec=k8s.V1PodSpec(
                    containers=[k8s.V1Container(name="base", env=[k8s.V1EnvVar(name="GREETING", value="hi")])]
                ),
            )
        }
    )
    def overridden() -> str:
        import os

        return os.environ["GREETING"]

    @task
    def total(values: list[int]) -> int:
        return sum(values)

    total(square.expand(x=extract())) >> [configured(), overridden()]
