"""The version shim: what it answers for either Airflow, and the private Airflow API it calls, so an
Airflow release that changes that API fails here, not in an operator's scheduler."""

from __future__ import annotations

import datetime
import inspect
from collections.abc import Callable
from types import SimpleNamespace

import pytest

from k8s_executor import airflow_adapter, identity

START = datetime.datetime(2026, 5, 1, 12, 0, tzinfo=datetime.timezone.utc)
DEFAULT_TEMPLATE = (
    "dag_id={{ ti.dag_id }}/run_id={{ ti.run_id }}/task_id={{ ti.task_id }}/"
    "{% if ti.map_index >= 0 %}map_index={{ ti.map_index }}/{% endif %}attempt={{ try_number }}.log"
)


class FakeDagRun:
    """What `FileTaskHandler._render_filename` reads of a DAG run, in Airflow 2 and 3."""

    logical_date = execution_date = run_after = data_interval_start = data_interval_end = START

    def __init__(self, template: str) -> None:
        self.template = template
        self.sessions: list[object] = []

    def get_log_template(self, session: object = None) -> SimpleNamespace:
        self.sessions.append(session)
        return SimpleNamespace(filename=self.template)


def fake_ti(run: FakeDagRun, map_index: int = -1) -> SimpleNamespace:
    return SimpleNamespace(
        dag_id="etl",
        task_id="load",
        run_id="manual-1",
        map_index=map_index,
        try_number=3,
        get_dagrun=lambda session=None: run,
    )


def test_the_private_log_file_renderer_takes_what_the_shim_passes() -> None:
    from airflow.utils.log.file_task_handler import FileTaskHandler

    parameters = list(inspect.signature(FileTaskHandler._render_filename).parameters)
    if airflow_adapter.AIRFLOW_V3:
        assert parameters == ["self", "ti", "try_number", "session"]
    else:
        assert parameters == ["self", "ti", "try_number"]


@pytest.mark.skipif(
    not airflow_adapter.AIRFLOW_V3, reason="Airflow 2 reads the task instance from the database"
)
def test_a_try_s_log_file_is_named_by_its_dag_run_s_log_template_and_the_try_asked_for() -> None:
    # FileTaskHandler._render_filename(ti, try_number, *, session) is private: this fails when it
    # is renamed, or reads a DAG run differently.
    run = FakeDagRun(DEFAULT_TEMPLATE)
    session = object()
    assert (
        airflow_adapter.task_log_filename(fake_ti(run), 2, "/logs", session)
        == "dag_id=etl/run_id=manual-1/task_id=load/attempt=2.log"
    )
    assert (
        airflow_adapter.task_log_filename(fake_ti(run, map_index=4), 1, "/logs", session)
        == "dag_id=etl/run_id=manual-1/task_id=load/map_index=4/attempt=1.log"
    )
    assert run.sessions == [session, session], "the caller's session is used, no new one opened"


@pytest.mark.skipif(
    not airflow_adapter.AIRFLOW_V3, reason="Airflow 2 reads the task instance from the database"
)
def test_a_log_template_of_the_older_format_style_is_rendered_too() -> None:
    run = FakeDagRun("{dag_id}/{task_id}/{logical_date}/{try_number}.log")
    assert (
        airflow_adapter.task_log_filename(fake_ti(run), 2, "/logs", object())
        == f"etl/load/{START.isoformat()}/2.log"
    )


# --- which configured executor a rendered pod is of --------------------------------------------
def test_the_cli_names_the_executor_as_its_alias_or_class_name(
    configure_executors: Callable[[str], None],
) -> None:
    configure_executors("k8s_executor.KubernetesExecutor")
    assert airflow_adapter.configured_executor_id() == identity.DEFAULT_EXECUTOR
    configure_executors("LocalExecutor,pods:k8s_executor.KubernetesExecutor")
    assert airflow_adapter.configured_executor_id() == "pods"


def test_a_task_that_names_one_of_our_executors_gets_that_one(
    configure_executors: Callable[[str], None],
) -> None:
    configure_executors("pods:k8s_executor.KubernetesExecutor,mixed:k8s_executor.LocalKubernetesExecutor")
    assert airflow_adapter.configured_executor_id("mixed") == "mixed"
    assert airflow_adapter.configured_executor_id("k8s_executor.LocalKubernetesExecutor") == "mixed"
    # Another executor's task, rendered anyway: the first of ours.
    assert airflow_adapter.configured_executor_id("LocalExecutor") == "pods"


def test_without_an_executor_of_ours_configured_the_default_name_is_used(
    configure_executors: Callable[[str], None],
) -> None:
    configure_executors("LocalExecutor")
    assert airflow_adapter.configured_executor_id() == identity.DEFAULT_EXECUTOR
