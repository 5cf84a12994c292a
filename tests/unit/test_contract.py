"""docs/contract.md names every member of the installed Airflow's BaseExecutor."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

base_executor = pytest.importorskip("airflow.executors.base_executor")

CONTRACT = Path(__file__).parents[2] / "docs" / "contract.md"


def members() -> set[str]:
    cls = base_executor.BaseExecutor
    names = {n for n in vars(cls) if not n.startswith("__")}
    # What the constructor sets, as the scheduler sees it on every executor.
    names |= {n for n in vars(cls()) if not n.startswith("_")}
    return names


def documented() -> set[str]:
    rows = [line for line in CONTRACT.read_text().splitlines() if line.startswith("| `")]
    return {name for row in rows for name in re.findall(r"`([A-Za-z_]+)`", row.split("|")[1])}


def test_every_member_of_base_executor_is_in_the_contract_table() -> None:
    from airflow import __version__

    if not __version__.startswith("3."):
        pytest.skip("the table is of Airflow 3.3's BaseExecutor; Airflow 2's has fewer members")
    missing = sorted(members() - documented())
    assert missing == [], f"docs/contract.md does not say what the executor does with {missing}"


def test_the_table_says_what_the_executor_declares() -> None:
    from k8s_executor.executor import KubernetesExecutor

    rows = {
        name: row
        for row in CONTRACT.read_text().splitlines()
        if row.startswith("| `")
        for name in re.findall(r"`([A-Za-z_]+)`", row.split("|")[1])
    }
    for flag in (
        "supports_callbacks",
        "supports_connection_test",
        "supports_multi_team",
        "supports_ad_hoc_ti_run",
    ):
        declared = getattr(KubernetesExecutor, flag)
        assert f"| {declared}" in rows[flag] or rows[flag].split("|")[3].strip().startswith(str(declared)), (
            flag
        )
