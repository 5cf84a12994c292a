"""The bad-input corpus (tests/bad_input.py) through a real Airflow scheduler: every case a task of one
DAG run, each failing alone with its exact message in its failure reason and its task log, while a
task after all of them, a task of the next run and tasks with unusual ids run; the scheduler lives on.
A scheduler started with a setting out of range stops at start, naming the option."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from devcluster import control_plane
from devcluster.airflow_stack import AirflowStack
from kubernetes import client

from tests import bad_input
from tests.bad_input import CASES, HOOK_SOURCE, IDS_CASES, SETTINGS_CASES, Case
from tests.e2e.conftest import airflow_stack

pytestmark = pytest.mark.e2e

DAG, RUN = "e2e_bad_input", "bad-1"
NEXT_DAG, NEXT_RUN = "e2e_bad_input_next", "next-1"
IN_AIRFLOW = [case for case in CASES if not case.not_in_airflow]


def put_corpus(stack: AirflowStack) -> None:
    """The corpus beside the DAG file, its templates, and the operator's pod_mutation_hook."""
    shutil.copy(bad_input.__file__, stack.dags_folder / "bad_input.py")
    bad_input.write_templates(stack.dags_folder / "bad_input_templates")
    # Not DAG files: the DAG processor need not import them.
    (stack.dags_folder / ".airflowignore").write_text("bad_input.py\nbad_input_templates/\n")
    config = stack.home / "config"
    config.mkdir(exist_ok=True)
    (config / "airflow_local_settings.py").write_text(HOOK_SOURCE)


@pytest.fixture(scope="module")
def stack(cluster: control_plane.ClusterState, core: client.CoreV1Api) -> Iterator[AirflowStack]:
    with airflow_stack(cluster, core, before_start=put_corpus) as airflow:
        yield airflow


def expected_reason(case: Case, stack: AirflowStack) -> re.Pattern[str]:
    """The failure reason of `case`'s task, exactly: the executor's refusal of the task, or the
    API server's words about the task's pod (whose name carries a hash, hence a pattern)."""
    templates = stack.dags_folder / "bad_input_templates"
    message = case.message(templates, watched=stack.namespace, in_airflow=True)
    if (case.level_in_airflow or case.level) == "executor":
        return re.compile(re.escape(f"task {DAG}.{case.name} (run {RUN}, try 1): {message}"))
    # The stack's template lists its own env vars first: the case's var is not the container's first.
    words = re.escape(message).replace(re.escape(".env[0]."), r"\.env\[\d+\]\.")
    return re.compile(rf'pod (\S+) could not be created: Pod "\1" is invalid: {words}')


def test_every_bad_input_fails_only_its_task_and_the_scheduler_goes_on(stack: AirflowStack) -> None:
    stack.wait_for_dag(DAG)
    stack.trigger(DAG, RUN)
    # The run's state is its leaf's: the task after all the bad ones.
    assert stack.wait_for_run(DAG, RUN, timeout=600) == "success", stack.explain_run(DAG, RUN)
    states = {task: state for (task, _), (state, _) in stack.task_states(DAG, RUN).items()}
    assert states == {**{case.name: "failed" for case in IN_AIRFLOW}, "after_all_bad": "success"}, states
    # The scheduler's next task, in a run triggered once every bad task is over.
    stack.trigger(NEXT_DAG, NEXT_RUN)
    assert stack.wait_for_run(NEXT_DAG, NEXT_RUN, timeout=300) == "success", stack.explain_run(
        NEXT_DAG, NEXT_RUN
    )
    wrong = {}
    for case in IN_AIRFLOW:
        pattern = expected_reason(case, stack)
        reason = stack.failure_reasons(DAG, RUN, case.name)
        log = stack.task_log(DAG, RUN, case.name)
        if not (pattern.search(reason) and pattern.search(log)):
            wrong[case.name] = f"expected {pattern.pattern}\nreason: {reason}\nlog: {log}"
    assert not wrong, "\n\n".join(f"{name}: {text}" for name, text in wrong.items())
    assert stack.procs["scheduler"].poll() is None, "the scheduler exited"


def test_ids_of_every_character_airflow_allows_run(stack: AirflowStack) -> None:
    for ids in IDS_CASES:
        if not ids.in_e2e:
            continue
        stack.wait_for_dag(ids.dag_id)
        stack.trigger(ids.dag_id, ids.run_id)
        assert stack.wait_for_run(ids.dag_id, ids.run_id, timeout=300) == "success", stack.explain_run(
            ids.dag_id, ids.run_id
        )
        assert stack.task_states(ids.dag_id, ids.run_id) == {(ids.task_id, -1): ("success", 1)}


def test_a_setting_out_of_range_stops_a_scheduler_at_start_naming_the_option(stack: AirflowStack) -> None:
    option, value, message = next(c for c in SETTINGS_CASES if c[:2] == ("api_qps", "0"))
    name = "scheduler-bad-setting"
    stack.start_component(
        "scheduler", name=name, env={f"AIRFLOW__KUBERNETES_EXECUTOR__{option.upper()}": value}
    )
    process = stack.procs.pop(name)
    try:
        code = process.wait(timeout=180)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    log = Path(stack.home / f"{name}.log").read_text()
    assert code != 0 and message in log, f"exit code {code}; log:\n{log[-3000:]}"
    # The stack's own scheduler is not disturbed by a second one failing to start.
    assert stack.procs["scheduler"].poll() is None
