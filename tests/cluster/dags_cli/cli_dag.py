"""A DAG for `airflow kubernetes generate-dag-yaml` and `explain`: one task per executor_config form."""

from __future__ import annotations

import datetime

from kubernetes.client import models as k8s

try:
    from airflow.providers.standard.operators.bash import BashOperator
    from airflow.sdk import DAG
except ImportError:  # Airflow 2
    from airflow import DAG  # type: ignore[no-redef]
    from airflow.operators.bash import BashOperator  # type: ignore[no-redef]

with DAG("cli_render", schedule=None, start_date=datetime.datetime(2026, 1, 1), catchup=False):
    BashOperator(task_id="plain", bash_command="true")
    BashOperator(
        task_id="configured",
        bash_command="true",
        executor_config={
            "KubernetesExecutor": {
                "image": "custom-image:1",
                "request_memory": "64Mi",
                "labels": {"team": "data"},
            },
            "pod_override": k8s.V1Pod(
                metadata=k8s.V1ObjectMeta(labels={"tier": "gold", "team": "platform"}),
                spec=k8s.V1PodSpec(
                    containers=[
                        k8s.V1Container(name="base", env=[k8s.V1EnvVar(name="FROM_OVERRIDE", value="1")])
                    ]
                ),
            ),
        },
    )
