"""Fixtures shared by unit tests."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest


@pytest.fixture
def configure_executors(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """Set `[core] executor` for this test, as a fresh process would read it: Airflow's executor
    loader caches what it parsed in module globals (named differently in Airflow 2 and 3)."""
    from airflow.executors import executor_loader

    def configure(value: str) -> None:
        monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", value)
        for name in dir(executor_loader):
            cache = getattr(executor_loader, name)
            if name.startswith("_") and isinstance(cache, dict | list) and not name.startswith("__"):
                fresh = copy.copy(cache)  # a defaultdict keeps its default factory
                fresh.clear()
                monkeypatch.setattr(executor_loader, name, fresh)

    return configure
