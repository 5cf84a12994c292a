"""DAGs the end-to-end tests run on the development cluster."""

from __future__ import annotations

import datetime
import time

from airflow.sdk import DAG, task
from kubernetes.client import models as k8s

ARGS = {"start_date": datetime.datetime(2024, 1, 1), "schedule": None, "catchup": False}

with DAG("e2e_main", **ARGS):

    @task
    def first() -> int:
        return 1

    @task
    def second(x: int) -> int:
        return x + 1

    @task
    def third(x: int) -> int:
        return x + 1

    @task
    def numbers() -> list[int]:
        return list(range(20))

    @task
    def double(x: int) -> int:
        return 2 * x

    @task(retries=1, retry_delay=datetime.timedelta(seconds=0))
    def flaky() -> None:
        raise RuntimeError("this task fails on every try")

    @task(
        executor_config={
            "KubernetesExecutor": {
                "request_memory": "64Mi",
                "limit_memory": "1Gi",
                "request_cpu": "100m",
                "labels": {"team": "data-engineering"},
                "annotations": {"monitoring": "enabled"},
                "env_vars": [{"name": "CUSTOM_VAR", "value": "custom_value"}],
                "node_selector": {"kubernetes.io/os": "linux"},
                "tolerations": [
                    {"key": "compute-type", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}
                ],
            }
        }
    )
    def dict_form() -> str:
        import os

        assert os.environ["CUSTOM_VAR"] == "custom_value"
        return "ok"

    @task(
        executor_config={
            "pod_override": k8s.V1Pod(
                metadata=k8s.V1ObjectMeta(labels={"override": "yes"}),
                spec=k8s.V1PodSpec(
                    automount_service_account_token=False,
                    containers=[
                        k8s.V1Container(name="base", env=[k8s.V1EnvVar(name="FROM_OVERRIDE", value="1")])
                    ],
                ),
            )
        }
    )
    def pod_override() -> str:
        import os

        assert os.environ["FROM_OVERRIDE"] == "1"
        return "ok"

    third(second(first()))
    double.expand(x=numbers())
    flaky()
    dict_form()
    pod_override()


with DAG("e2e_sleepers", max_active_tasks=32, **ARGS):

    @task
    def sleeper(i: int) -> int:
        time.sleep(20)
        return i

    sleeper.expand(i=list(range(20)))


with DAG("e2e_long", **ARGS):

    @task
    def long_task() -> None:
        time.sleep(120)

    long_task()


with DAG("e2e_routing", max_active_tasks=32, **ARGS):

    @task(queue="k8s-custom")
    def on_custom_queue() -> str:
        import os

        return os.environ.get("AIRFLOW_IS_K8S_EXECUTOR_POD", "local")

    @task(queue="kubernetes")
    def on_kubernetes_queue() -> str:
        import os

        return os.environ.get("AIRFLOW_IS_K8S_EXECUTOR_POD", "local")

    @task
    def on_default_queue() -> str:
        import os

        return os.environ.get("AIRFLOW_IS_K8S_EXECUTOR_POD", "local")

    @task
    def slow_local() -> None:
        time.sleep(25)

    @task(queue="k8s-custom")
    def slow_pod() -> None:
        time.sleep(25)

    on_custom_queue()
    on_kubernetes_queue()
    on_default_queue()
    slow_local()
    slow_pod()
