"""The environment the executor gives every worker container, from the scheduler's configuration."""

from __future__ import annotations

import pytest

from k8s_executor import airflow_adapter


def test_workers_get_the_schedulers_executor_dags_folder_and_execution_api(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "k8s_executor.KubernetesExecutor")
    monkeypatch.setenv("AIRFLOW__CORE__DAGS_FOLDER", "/opt/dags")
    monkeypatch.delenv("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", raising=False)
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "http://airflow-api:8080/")
    env = airflow_adapter.worker_env()
    assert env["AIRFLOW__CORE__EXECUTOR"] == "k8s_executor.KubernetesExecutor"
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == "/opt/dags"
    if airflow_adapter.AIRFLOW_V3:
        # Derived from the API server's address when not set: where the worker reports its state.
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-api:8080/execution/"
        assert env["AIRFLOW_IS_K8S_EXECUTOR_POD"] == "True"
        monkeypatch.setenv("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", "https://exec.example/execution/")
        assert airflow_adapter.worker_env()["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == (
            "https://exec.example/execution/"
        )
    else:
        assert "AIRFLOW__CORE__EXECUTION_API_SERVER_URL" not in env
