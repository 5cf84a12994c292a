"""500 mapped tasks for the HA schedulers test: their pods land on the simulated node."""

import datetime

from airflow.sdk import DAG, task

with DAG(
    "e2e_ha",
    start_date=datetime.datetime(2024, 1, 1),
    schedule=None,
    catchup=False,
    max_active_tasks=2000,
):

    @task
    def unit(i: int) -> None:
        pass

    unit.expand(i=list(range(500)))
