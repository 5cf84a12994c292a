"""Adoption reads what Airflow's orphan query left unloaded with a query per thousand rows, not per row."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Column, Integer, String, create_engine, event, select
from sqlalchemy.orm import Session, declarative_base, load_only

from k8s_executor.task_instances import load_unloaded_columns

# The SQLAlchemy of Airflow 2.11 (1.4) and of Airflow 3 (2.x) both take this form.
Base: Any = declarative_base()


class ById(Base):
    """Keyed as Airflow 3's task instances are."""

    __tablename__ = "by_id"
    id = Column(Integer, primary_key=True)
    task_id = Column(String)
    try_number = Column(Integer)
    queued_by_job_id = Column(Integer)


class ByComposite(Base):
    """Keyed as Airflow 2's are."""

    __tablename__ = "by_composite"
    task_id = Column(String, primary_key=True)
    map_index = Column(Integer, primary_key=True)
    try_number = Column(Integer)
    queued_by_job_id = Column(Integer)


@pytest.mark.parametrize(
    ("model", "row"),
    [
        (ById, lambda i: ById(id=i, task_id=f"t{i}", try_number=1, queued_by_job_id=7)),
        (ByComposite, lambda i: ByComposite(task_id="t", map_index=i, try_number=1, queued_by_job_id=7)),
    ],
)
def test_columns_left_unloaded_are_loaded_a_thousand_rows_per_query(model: Any, row: Any) -> None:
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all([row(i) for i in range(2500)])
        session.commit()
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    with Session(engine) as session:
        tis = list(session.scalars(select(model).options(load_only(model.task_id))))
        statements.clear()
        load_unloaded_columns(tis)
        assert len(statements) == 3
        statements.clear()
        assert {(ti.try_number, ti.queued_by_job_id) for ti in tis} == {(1, 7)}
        assert statements == [], "reading the columns after the load must not query again"
        load_unloaded_columns(tis)
        assert statements == [], "rows with every column loaded need no query"


def test_task_instances_outside_a_session_are_left_as_they_are() -> None:
    detached = ById(id=1, task_id="t", try_number=1, queued_by_job_id=7)
    load_unloaded_columns([detached])
    load_unloaded_columns([])
    load_unloaded_columns([object()])
    assert detached.try_number == 1
