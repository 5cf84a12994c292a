"""A task whose pod can never be scheduled: its log must still say why, through the UI."""

import datetime

from airflow.sdk import DAG, task

with DAG("e2e_unstarted_logs", start_date=datetime.datetime(2024, 1, 1), schedule=None, catchup=False):

    @task(executor_config={"KubernetesExecutor": {"node_selector": {"disktype": "floppy"}}})
    def unschedulable() -> None:
        pass

    unschedulable()
