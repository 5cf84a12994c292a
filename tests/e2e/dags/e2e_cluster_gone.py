"""A DAG whose one task is routed to the cluster `gone`, which no API server answers for
(tests/e2e/test_clusters.py): it waits for its queued timeout, then fails naming the cluster."""

from __future__ import annotations

import datetime

from airflow.sdk import DAG, task

with DAG("e2e_cluster_gone", start_date=datetime.datetime(2024, 1, 1), schedule=None, catchup=False):

    @task(executor_config={"cluster": "gone"}, retries=0)
    def in_gone() -> None:
        pass

    in_gone()
