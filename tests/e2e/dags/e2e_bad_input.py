"""Every case of the bad-input corpus as a task of one DAG, good tasks after them, and DAGs whose ids
use the characters Airflow allows (tests/e2e/test_bad_input.py).

The corpus (tests/bad_input.py) and its templates are put beside this file by that test; in another
test's DAG folder they are not there, and this file defines nothing.
"""

from __future__ import annotations

import datetime
import importlib.util
import sys
from pathlib import Path

from airflow.sdk import DAG, task

HERE = Path(__file__).parent
CORPUS = HERE / "bad_input.py"
TEMPLATES = HERE / "bad_input_templates"
ARGS = {"start_date": datetime.datetime(2024, 1, 1), "schedule": None, "catchup": False}

if CORPUS.exists():
    # Loaded by path: whether the DAG folder is on sys.path differs between Airflow's processes.
    spec = importlib.util.spec_from_file_location("bad_input", CORPUS)
    assert spec is not None and spec.loader is not None
    corpus = importlib.util.module_from_spec(spec)
    # Its dataclasses look their module up there while they are made.
    sys.modules["bad_input"] = corpus
    spec.loader.exec_module(corpus)

    @task
    def nothing() -> None:
        """Never runs for a bad case: its pod is never made."""

    @task
    def ran() -> str:
        return "ran"

    with DAG("e2e_bad_input", max_active_tasks=128, default_args={"retries": 0}, **ARGS):
        bad = [
            nothing.override(task_id=case.name, executor_config=case.config(TEMPLATES))()
            for case in corpus.CASES
            if not case.not_in_airflow
        ]
        # Runs once every bad task has failed: the scheduler went on after each of them.
        bad >> ran.override(task_id="after_all_bad", trigger_rule="all_done")()

    # Triggered once the run above is over: the scheduler's next task.
    with DAG("e2e_bad_input_next", default_args={"retries": 0}, **ARGS):
        ran.override(task_id="next_run_task")()

    for ids in corpus.IDS_CASES:
        if ids.in_e2e:
            with DAG(ids.dag_id, default_args={"retries": 0}, **ARGS):
                ran.override(task_id=ids.task_id)()
