"""Adoption takes what Airflow hands over without a query in Airflow's loop, and reads the rows
off it with a query per thousand rows, not per row."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, NamedTuple

import pytest
from sqlalchemy import Column, Integer, String, create_engine, event, select
from sqlalchemy.orm import Session, declarative_base, load_only

from k8s_executor.airflow_adapter import hold_heartbeat
from k8s_executor.identity import TaskRef
from k8s_executor.shapes import HandedTry
from k8s_executor.task_instances import handed_over

# The SQLAlchemy of Airflow 2.11 (1.4) and of Airflow 3 (2.x) both take this form.
Base: Any = declarative_base()


class ById(Base):
    """Keyed as Airflow 3's task instances are."""

    __tablename__ = "by_id"
    id = Column(Integer, primary_key=True)
    dag_id = Column(String)
    task_id = Column(String)
    run_id = Column(String)
    map_index = Column(Integer)
    try_number = Column(Integer)
    state = Column(String)
    queued_by_job_id = Column(Integer)
    last_heartbeat_at = Column(Integer)  # Airflow 3's


class ByComposite(Base):
    """Keyed as Airflow 2's are."""

    __tablename__ = "by_composite"
    dag_id = Column(String, primary_key=True)
    task_id = Column(String, primary_key=True)
    run_id = Column(String, primary_key=True)
    map_index = Column(Integer, primary_key=True)
    try_number = Column(Integer)
    state = Column(String)
    queued_by_job_id = Column(Integer)


def _row(model: Any, i: int) -> Any:
    # Every tenth taken back by Airflow since the hand-over (failed): not an adoptable state.
    state = "failed" if i % 10 == 0 else "running"
    fields = dict(dag_id="d", task_id="t", run_id="r", map_index=i, try_number=2, state=state)
    return model(id=i, **fields, queued_by_job_id=7) if model is ById else model(**fields, queued_by_job_id=7)


@pytest.mark.parametrize("model", [ById, ByComposite])
def test_the_rows_are_kept_by_key_in_the_loop_and_read_a_thousand_per_query_off_it(model: Any) -> None:
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all([_row(model, i) for i in range(2500)])
        session.commit()
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    with Session(engine) as session:
        # As Airflow's orphan query loads them: neither the try number nor who queued it.
        tis = list(session.scalars(select(model).options(load_only(model.dag_id, model.map_index))))
        statements.clear()
        handed = handed_over(tis)
        for ti in tis:
            hold_heartbeat(ti)
        assert statements == [], "nothing is read in Airflow's loop"
        assert len(handed) == 2500
        read = handed.read(session_scope=lambda: Session(engine))
    assert len(statements) == 3
    assert sorted(read) == sorted(
        HandedTry(TaskRef("d", "t", "r", 2, i), "running", 7) for i in range(2500) if i % 10
    )


class _Key(NamedTuple):
    dag_id: str
    task_id: str
    run_id: str
    try_number: int
    map_index: int


def test_task_instances_outside_a_session_are_read_as_they_are() -> None:
    detached = ById(id=1, dag_id="d", task_id="t", run_id="r", map_index=-1, try_number=1, queued_by_job_id=7)
    detached.key = _Key("d", "t", "r", 1, -1)  # Airflow's TaskInstance has it as a property
    plain = SimpleNamespace(key=_Key("d", "u", "r", 3, 0), state="queued", queued_by_job_id=None)
    handed = handed_over([detached, plain])
    assert handed.read() == [
        HandedTry(TaskRef("d", "t", "r", 1, -1), None, 7),
        HandedTry(TaskRef("d", "u", "r", 3, 0), "queued", None),
    ]
    assert len(handed_over([])) == 0
