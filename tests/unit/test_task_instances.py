"""Adoption takes what Airflow hands over without a query per row in Airflow's loop, and reads the
rows off it with a query per thousand rows, not per row."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, NamedTuple

import pytest
from sqlalchemy import Column, ForeignKeyConstraint, Integer, String, create_engine, event, select, text
from sqlalchemy.orm import Session, declarative_base, lazyload, load_only, relationship

from k8s_executor import airflow_adapter
from k8s_executor.airflow_adapter import hold_heartbeat
from k8s_executor.identity import TaskRef
from k8s_executor.shapes import HandedTry
from k8s_executor.task_instances import NotLoaded, handed_over, load_related

# The SQLAlchemy of Airflow 2.11 (1.4) and of Airflow 3 (2.x) both take this form.
Base: Any = declarative_base()


class Run(Base):
    """Keyed by an id, and found from a task instance by its dag and run ids, as Airflow's runs."""

    __tablename__ = "run"
    id = Column(Integer, primary_key=True)
    dag_id = Column(String)
    run_id = Column(String)
    conf = Column(String)


class ById(Base):
    """Keyed as Airflow 3's task instances are, with their run as Airflow 3 has it: a many-to-one on
    two columns that are not the run's primary key, so a lazy load of it is a query per row."""

    __tablename__ = "by_id"
    __table_args__ = (ForeignKeyConstraint(["dag_id", "run_id"], ["run.dag_id", "run.run_id"]),)
    id = Column(Integer, primary_key=True)
    dag_id = Column(String)
    task_id = Column(String)
    run_id = Column(String)
    map_index = Column(Integer)
    try_number = Column(Integer)
    state = Column(String)
    queued_by_job_id = Column(Integer)
    last_heartbeat_at = Column(Integer)  # Airflow 3's
    dag_run = relationship(Run, primaryjoin="and_(ById.dag_id == Run.dag_id, ById.run_id == Run.run_id)")


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


def _handed_over_in_runs(session: Session) -> list[Any]:
    # As Airflow's orphan query loads them: a few columns, the run left to a lazy load.
    query = select(ById).options(lazyload(ById.dag_run), load_only(ById.id, ById.dag_id, ById.run_id))
    return list(session.scalars(query))


def test_the_runs_of_the_task_instances_handed_over_are_read_in_one_query_not_one_per_row() -> None:
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all([Run(id=i, dag_id="d", run_id=f"r{i}", conf="{}" if i else None) for i in range(3)])
        session.add_all([ById(id=i, dag_id="d", run_id=f"r{i % 3}", map_index=i) for i in range(2000)])
        session.commit()
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))

    def airflow_pass(tis: list[Any]) -> list[Any]:
        # Airflow 3's pass over the task instances adopted: each one's run, to default its conf.
        statements.clear()
        return [ti.dag_run.conf for ti in tis]

    expected = [None if i % 3 == 0 else "{}" for i in range(2000)]
    with Session(engine) as session:
        assert airflow_pass(_handed_over_in_runs(session)) == expected
        assert len(statements) == 2000, "a lazy load per row, as Airflow's pass has it unspared"
    with Session(engine) as session:
        tis = _handed_over_in_runs(session)
        statements.clear()
        assert load_related(tis, "dag_run", chunk=2) == 2
        reads = [s for s in statements if s.startswith("SELECT")]
        assert len(reads) == 2 and reads == [s for s in statements if "SAVEPOINT" not in s]
        for ti in tis:
            hold_heartbeat(ti)  # as the executor's call goes on: a change for Airflow to flush
        assert airflow_pass(tis) == expected
        assert statements == []
        assert load_related(tis, "dag_run") == 0, "loaded already: no query"


def test_a_read_ahead_that_fails_leaves_the_callers_transaction_as_it_was() -> None:
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all([ById(id=i, dag_id="d", run_id="r", map_index=i) for i in range(3)])
        session.commit()
    with Session(engine) as session:
        tis = _handed_over_in_runs(session)
        session.execute(text("DROP TABLE run"))  # the read of the runs fails; the session lives on
        with pytest.raises(NotLoaded, match="no such table"):
            load_related(tis, "dag_run")
        for ti in tis:
            hold_heartbeat(ti)
        session.commit()  # the caller's transaction goes on, and its changes land
    with Session(engine) as session:
        assert all(ti.last_heartbeat_at is not None for ti in session.scalars(select(ById)))


@pytest.mark.parametrize("handed", [3, airflow_adapter.READ_RUNS_AHEAD_FROM])
def test_adoption_reads_the_runs_ahead_only_on_airflow_3_and_for_a_large_hand_over(handed: int) -> None:
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add(Run(id=1, dag_id="d", run_id="r", conf="{}"))
        session.add_all([ById(id=i, dag_id="d", run_id="r", map_index=i) for i in range(handed)])
        session.commit()
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    with Session(engine) as session:
        tis = _handed_over_in_runs(session)
        statements.clear()
        airflow_adapter.spare_run_reads(tis)
        reads = [s for s in statements if s.startswith("SELECT")]
        large = handed >= airflow_adapter.READ_RUNS_AHEAD_FROM
        assert len(reads) == (1 if airflow_adapter.AIRFLOW_V3 and large else 0)
