"""The scheduler's helper processes start without Airflow, and their log lines reach the scheduler."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from k8s_executor.processes import log_in_parent, send_logs_to

REPO = Path(__file__).parents[2]


def report_imports(messages: Any) -> None:
    """Run in the child: say whether Airflow was imported there."""
    send_logs_to(messages, logging.INFO)
    logging.getLogger("k8s_executor.watching").debug("below the level: not sent")
    logging.getLogger("k8s_executor.watching").info("airflow imported: %s", "airflow" in sys.modules)


def test_a_child_of_a_main_module_that_imports_airflow_does_not_import_it(tmp_path: Path) -> None:
    # As under `airflow scheduler`, whose main module is Airflow's command line: a plain spawned
    # child would run that module again before its target.
    main = tmp_path / "scheduler_main.py"
    main.write_text(
        textwrap.dedent(
            """
            import multiprocessing

            import airflow  # noqa: F401

            from k8s_executor.processes import ChildProcess
            from tests.unit.test_processes import report_imports

            if __name__ == "__main__":
                messages = multiprocessing.get_context("spawn").Queue()
                child = ChildProcess(target=report_imports, args=(messages,))
                child.start()
                child.join(60)
                record = messages.get(timeout=10)
                print(record.name, record.levelname, record.getMessage())
                print("exit code", child.exitcode, "more records:", not messages.empty())
            """
        )
    )
    run = subprocess.run(
        [sys.executable, str(main)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-2:] == [
        "k8s_executor.watching INFO airflow imported: False",
        "exit code 0 more records: False",
    ]


def test_a_childs_record_is_logged_in_the_parent_under_its_own_name(caplog: pytest.LogCaptureFixture) -> None:
    record = logging.LogRecord("k8s_executor.watching", logging.WARNING, "w.py", 1, "watch broke", None, None)
    with caplog.at_level(logging.INFO, logger="k8s_executor"):
        log_in_parent(record)
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
        ("k8s_executor.watching", "WARNING", "watch broke")
    ]
