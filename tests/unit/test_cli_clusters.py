"""`airflow kubernetes ... --cluster`: which clusters a command works on, and the cluster whose
settings each task's pod is rendered with."""

from __future__ import annotations

import argparse
import datetime
from typing import Any

import pytest

from k8s_executor import commands
from k8s_executor.commands import chosen_clusters, cluster_prefix, render_pod, task_cluster
from k8s_executor.executor_config import ExecutorConfigError
from k8s_executor.explain import pod_layers
from k8s_executor.settings import DEFAULT_CLUSTER, ExecutorSettings

try:
    from airflow.providers.standard.operators.empty import EmptyOperator
    from airflow.sdk import DAG
except ImportError:  # Airflow 2
    from airflow import DAG
    from airflow.operators.empty import EmptyOperator

SETTINGS = ExecutorSettings(
    namespace="main-ns",
    in_cluster=False,
    clusters={"gpu": {"config_file": "/etc/gpu.kubeconfig", "namespace": "gpu-ns"}},
    queue_clusters={"fast-gpus": "gpu"},
)
EVERY = SETTINGS.cluster_settings()
KNOWN = list(EVERY)


def task_with(config: dict[str, Any] | None, queue: str | None = None, dag: Any = None) -> Any:
    extra = {"queue": queue} if queue else {}
    if dag is not None:
        return EmptyOperator(task_id=f"t{len(dag.tasks)}", executor_config=config, dag=dag, **extra)
    with DAG("clustered", schedule=None, start_date=datetime.datetime(2026, 1, 1)):
        return EmptyOperator(task_id="t", executor_config=config, **extra)


def route(task: Any, asked: str | None = None) -> str:
    return task_cluster(task, asked, SETTINGS.queue_clusters, KNOWN)


# --- chosen_clusters ----------------------------------------------------------------
def test_without_cluster_every_cluster_is_chosen_default_first() -> None:
    assert list(chosen_clusters(EVERY, None)) == [DEFAULT_CLUSTER, "gpu"]


def test_cluster_chooses_only_that_one_with_its_own_settings() -> None:
    chosen = chosen_clusters(EVERY, "gpu")
    assert list(chosen) == ["gpu"]
    assert chosen["gpu"].namespace == "gpu-ns"
    assert chosen["gpu"].config_file == "/etc/gpu.kubeconfig"


def test_default_names_the_sections_own_cluster() -> None:
    assert chosen_clusters(EVERY, DEFAULT_CLUSTER) == {DEFAULT_CLUSTER: SETTINGS}


def test_an_unknown_cluster_exits_naming_the_clusters_there_are() -> None:
    with pytest.raises(SystemExit) as exited:
        chosen_clusters(EVERY, "gpus")
    message = str(exited.value.code)
    assert "'gpus'" in message
    assert "(default, gpu;" in message


def test_lines_name_the_cluster_only_when_there_are_several() -> None:
    assert cluster_prefix("gpu", several=True) == "cluster gpu: "
    assert cluster_prefix(DEFAULT_CLUSTER, several=False) == ""


# --- task_cluster -------------------------------------------------------------------
def test_a_task_that_names_no_cluster_is_rendered_for_the_default() -> None:
    assert route(task_with(None)) == DEFAULT_CLUSTER


def test_executor_config_cluster_routes_the_task() -> None:
    assert route(task_with({"cluster": "gpu"})) == "gpu"


def test_the_queue_routes_a_task_that_names_no_cluster() -> None:
    assert route(task_with(None, queue="fast-gpus")) == "gpu"


def test_executor_config_cluster_comes_before_the_queue() -> None:
    assert route(task_with({"cluster": DEFAULT_CLUSTER}, queue="fast-gpus")) == DEFAULT_CLUSTER


def test_the_cluster_flag_comes_before_executor_config_and_queue() -> None:
    assert route(task_with({"cluster": "gpu"}, queue="fast-gpus"), asked=DEFAULT_CLUSTER) == DEFAULT_CLUSTER


def test_an_unknown_cluster_in_executor_config_names_the_known_ones() -> None:
    with pytest.raises(ExecutorConfigError, match=r"'tpu'.*\(default, gpu;"):
        route(task_with({"cluster": "tpu"}))


def test_a_routed_task_is_rendered_with_its_clusters_namespace() -> None:
    task = task_with({"cluster": "gpu"})
    pod = render_pod(task, "run", EVERY[route(task)])
    assert pod["metadata"]["namespace"] == "gpu-ns"
    layers = pod_layers(task, "run", EVERY[route(task)])
    assert layers[-1][1] == pod


# --- the commands, their DAG and settings given ------------------------------------
@pytest.fixture
def dag(monkeypatch: pytest.MonkeyPatch) -> Any:
    with DAG("clustered", schedule=None, start_date=datetime.datetime(2026, 1, 1)) as dag:
        pass
    monkeypatch.setattr(commands, "_dag", lambda args: dag)
    monkeypatch.setattr(commands, "_settings", lambda: SETTINGS)
    return dag


def args(**values: Any) -> argparse.Namespace:
    return argparse.Namespace(**{"run_id": "rendered", "output_path": None, "cluster": None, **values})


def test_generate_dag_yaml_reports_a_task_of_an_unknown_cluster_and_renders_the_others(
    dag: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    task_with({"cluster": "gpu"}, dag=dag)
    task_with({"cluster": "tpu"}, dag=dag)
    with pytest.raises(SystemExit, match=r"task\(s\) t1$"):
        commands.generate_dag_yaml(args(dag_id="clustered"))
    out, err = capsys.readouterr()
    assert "# task t0 in cluster gpu\n" in out
    assert "namespace: gpu-ns" in out
    assert "task t1: executor_config['cluster'] is 'tpu'" in err
    assert "(default, gpu;" in err


def test_explain_exits_naming_the_task_and_the_known_clusters(dag: Any) -> None:
    task_with({"cluster": "tpu"}, dag=dag)
    with pytest.raises(SystemExit) as exited:
        commands.explain(args(dag_id="clustered", task_id="t0"))
    message = str(exited.value.code)
    assert message.startswith("task t0: executor_config['cluster'] is 'tpu'")
    assert "(default, gpu;" in message


def test_an_unknown_cluster_flag_exits_before_the_dag_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_dag(args: argparse.Namespace) -> Any:
        raise AssertionError("the DAG was read")

    monkeypatch.setattr(commands, "_dag", no_dag)
    monkeypatch.setattr(commands, "_settings", lambda: SETTINGS)
    for command in (commands.generate_dag_yaml, commands.explain):
        with pytest.raises(SystemExit, match=r"'tpu' is not one of the executor's clusters \(default, gpu;"):
            command(args(dag_id="clustered", task_id="t0", cluster="tpu"))
