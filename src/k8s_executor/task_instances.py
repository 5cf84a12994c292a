"""The executor's questions to Airflow's database, answered with the records of shapes.py.

Only the database knows which schedulers Airflow holds alive and what became of a try after its
pod was asked for (reset, retried, handed to another scheduler). Those questions are asked here,
a batch at a time, and answered with typed records (`SchedulerJob`, `TaskRow`), not positional
rows, which the pure ledger takes as they are.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Collection, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from k8s_executor.identity import TaskRef
from k8s_executor.shapes import HandedTry, SchedulerJob, TaskRow


def scheduler_jobs() -> list[SchedulerJob]:
    """Every scheduler job Airflow knows as running."""
    from airflow.jobs.job import Job
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(Job.id, Job.state, Job.latest_heartbeat).where(
                Job.job_type == "SchedulerJob", Job.state == "running"
            )
        ).all()
    return [
        SchedulerJob(job_id, getattr(state, "value", state), heartbeat) for job_id, state, heartbeat in rows
    ]


def task_instance_rows(refs: Sequence[TaskRef], chunk: int = 500) -> dict[TaskRef, TaskRow]:
    """The task instance of each try of `refs` as the database has it now, by the try: one query
    per `chunk` tries. A try whose task instance the database no longer holds has no entry; its
    row may name another try (`TaskRow.try_number`), the one the task instance is at now."""
    from airflow.models.taskinstance import TaskInstance as TI
    from airflow.utils.session import create_session
    from sqlalchemy import select, tuple_

    rows_by_instance: dict[tuple[str, str, str, int], TaskRow] = {}
    keys = sorted({(r.dag_id, r.task_id, r.run_id, r.map_index) for r in refs})
    with create_session() as session:
        for start in range(0, len(keys), chunk):
            rows = session.execute(
                select(
                    TI.dag_id,
                    TI.task_id,
                    TI.run_id,
                    TI.map_index,
                    TI.try_number,
                    TI.state,
                    TI.queued_by_job_id,
                ).where(
                    tuple_(TI.dag_id, TI.task_id, TI.run_id, TI.map_index).in_(keys[start : start + chunk])
                )
            ).all()
            for dag_id, task_id, run_id, map_index, try_number, state, queued_by in rows:
                rows_by_instance[(dag_id, task_id, run_id, map_index)] = TaskRow(
                    try_number,
                    str(state.value if hasattr(state, "value") else state) if state is not None else None,
                    queued_by,
                )
    found = {ref: rows_by_instance.get((ref.dag_id, ref.task_id, ref.run_id, ref.map_index)) for ref in refs}
    return {ref: row for ref, row in found.items() if row is not None}


@dataclass(frozen=True)
class HandedOver:
    """Task instances Airflow handed over, as its orphan query left them: either read in full
    already (`tries`), or known by their rows' primary keys only (`model`, `keys`), to be read off
    the loop (`read`)."""

    tries: list[HandedTry]
    model: Any = None
    keys: list[tuple[Any, ...]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.tries) + len(self.keys)

    def read(
        self,
        chunk: int = 1000,
        session_scope: Callable[[], AbstractContextManager[Any]] | None = None,
        adoptable: Collection[str] | None = None,
    ) -> list[HandedTry]:
        """Every try handed over: those of `keys` read now, a query per `chunk` rows, in a session
        of its own (Airflow's, unless `session_scope` makes another). A row the database no longer
        holds, or no longer in a state Airflow adopts from (`adoptable`, Airflow's unless given),
        is left out: Airflow took it back since."""
        if not self.keys:
            return self.tries
        from sqlalchemy import inspect, select, tuple_

        if session_scope is None:
            from airflow.utils.session import create_session

            session_scope = create_session
        if adoptable is None:
            from airflow.utils.state import State

            adoptable = [str(getattr(state, "value", state)) for state in State.adoptable_states]
        model = self.model
        key_columns = inspect(model).primary_key
        read: list[HandedTry] = list(self.tries)
        with session_scope() as session:
            for start in range(0, len(self.keys), chunk):
                part = self.keys[start : start + chunk]
                # The model says what its primary key is (one id column on Airflow 3, the task's
                # coordinates on Airflow 2), so no version is asked here.
                if len(key_columns) == 1:
                    where = key_columns[0].in_([key[0] for key in part])
                else:
                    where = tuple_(*key_columns).in_(part)
                rows = session.execute(
                    select(
                        model.dag_id,
                        model.task_id,
                        model.run_id,
                        model.try_number,
                        model.map_index,
                        model.state,
                        model.queued_by_job_id,
                    ).where(where, model.state.in_(list(adoptable)))
                ).all()
                read += [
                    HandedTry(
                        TaskRef(dag_id, task_id, run_id, int(try_number), int(map_index)), state, queued_by
                    )
                    for dag_id, task_id, run_id, try_number, map_index, state, queued_by in rows
                ]
        return read


def handed_over(tis: Sequence[Any]) -> HandedOver:
    """What Airflow's orphan query handed over, without a query on the caller's thread.

    That query loads only a few columns of each task instance (Airflow 2.11 and 3.x alike): the
    try number and the scheduler that queued it are not among them, and reading one would cost a
    query per task instance in Airflow's loop. Rows of a session are therefore kept by their
    primary keys, which the session holds without a query, for `HandedOver.read` to read off the
    loop; task instances that are not rows of a session are read as they are.
    """
    from sqlalchemy import inspect
    from sqlalchemy.exc import NoInspectionAvailable

    from k8s_executor import airflow_adapter

    tries: list[HandedTry] = []
    model: Any = None
    keys: list[tuple[Any, ...]] = []
    for ti in tis:
        try:
            row = inspect(ti)
        except NoInspectionAvailable:
            row = None
        if row is not None and row.persistent and row.identity is not None:
            model = type(ti)
            keys.append(row.identity)
        else:
            tries.append(HandedTry(airflow_adapter.ref_of(ti.key), ti.state, ti.queued_by_job_id))
    return HandedOver(tries, model, keys)


class NotLoaded(Exception):
    """`load_related` failed, and left the caller's transaction as it was."""


def load_related(tis: Sequence[Any], relationship: str, chunk: int = 1000) -> int:
    """Load the many-to-one `relationship` of each task instance that a session holds with it
    unloaded, a query per `chunk` distinct targets, instead of the query per row its lazy load
    costs. The targets are set as loaded from the database (nothing is written); their own
    relationships stay lazy. The reads run in a savepoint of the caller's transaction, which
    flushes what the session has pending first (so it is best called before anything is changed).
    A failure that leaves the caller's transaction as it was (its row locks held) is raised as
    `NotLoaded`; one that lost it (a dropped connection, a failed flush) as it came, for the
    caller's own handling of a lost transaction. Returns the number of queries."""
    from sqlalchemy import inspect, select, tuple_
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.orm.attributes import set_committed_value

    pending = [ti for ti in tis if _unloaded(ti, relationship)]
    if not pending:
        return 0
    session = inspect(pending[0]).session
    found: dict[tuple[Any, ...], Any] = {}
    queries = 0
    try:
        model = inspect(type(pending[0]))
        rel = model.relationships[relationship]
        local = [model.get_property_by_column(column).key for column, _ in rel.local_remote_pairs]
        remote = [rel.mapper.get_property_by_column(column).key for _, column in rel.local_remote_pairs]
        target = rel.mapper.class_
        wanted = sorted({tuple(getattr(ti, key) for key in local) for ti in pending})
        columns = tuple_(*(getattr(target, key) for key in remote))
        with session.begin_nested(), session.no_autoflush:
            for start in range(0, len(wanted), chunk):
                for row in session.scalars(select(target).where(columns.in_(wanted[start : start + chunk]))):
                    found[tuple(getattr(row, key) for key in remote)] = row
                queries += 1
    except Exception as exc:
        transaction = session.get_transaction()
        lost = isinstance(exc, DBAPIError) and exc.connection_invalidated
        if lost or transaction is None or not transaction.is_active:
            raise
        raise NotLoaded(f"{type(exc).__name__}: {exc}") from exc
    for ti in pending:
        row = found.get(tuple(getattr(ti, key) for key in local))
        if row is not None:
            set_committed_value(ti, relationship, row)
    return queries


def _unloaded(ti: Any, relationship: str) -> bool:
    from sqlalchemy import inspect
    from sqlalchemy.exc import NoInspectionAvailable

    try:
        row = inspect(ti)
    except NoInspectionAvailable:
        return False
    return bool(row.persistent and row.session is not None and relationship in row.unloaded)


def requeue(ref: TaskRef, from_state: str, scheduler_id: str) -> bool:
    """Put a try whose pod the cluster disrupted back to queued, for a new pod to start it: one
    compare-and-set, true only if its task instance was still `from_state` (queued or running)
    with this try, queued by this scheduler. The same try number, so no retry is spent; a fresh
    `queued_dttm`, so Airflow's queued timeout counts from now. A task that recorded its own end
    meanwhile (it finished within its grace period, or failed itself) is left as it is."""
    from airflow.models.taskinstance import TaskInstance as TI
    from airflow.utils.session import create_session
    from sqlalchemy import update

    if not scheduler_id.isdigit():
        return False  # no scheduler job (a test harness): no task instance is queued by it
    with create_session() as session:
        result = session.execute(
            update(TI)
            .where(*_this_try_queued_by(TI, ref, scheduler_id), TI.state == from_state)
            .values(state="queued", queued_dttm=datetime.datetime.now(datetime.timezone.utc))
            .execution_options(synchronize_session=False)
        )
        return bool(getattr(result, "rowcount", 0) == 1)


def reset(refs: Sequence[TaskRef], scheduler_id: str) -> tuple[list[TaskRef], dict[TaskRef, str]]:
    """Reset the tries handed over to this scheduler whose pods adoption did not find, as Airflow
    resets the tries an executor does not adopt: state and queuing scheduler cleared, for Airflow
    to schedule the task again. Each is a compare-and-set of its own transaction: only a task
    instance still at this try, in a state Airflow adopts from, queued by this scheduler. Returns
    the tries reset, and the error of each that could not be."""
    from airflow.models.taskinstance import TaskInstance as TI
    from airflow.utils.session import create_session
    from airflow.utils.state import State
    from sqlalchemy import select

    from k8s_executor import airflow_adapter

    if not scheduler_id.isdigit():
        return [], {}  # no scheduler job (a test harness): nothing was handed over in the database
    done: list[TaskRef] = []
    failed: dict[TaskRef, str] = {}
    for ref in refs:
        try:
            with create_session() as session:
                ti = session.scalars(
                    select(TI)
                    .where(*_this_try_queued_by(TI, ref, scheduler_id), TI.state.in_(State.adoptable_states))
                    .with_for_update()
                ).one_or_none()
                if ti is not None:
                    airflow_adapter.reset_for_next_try(ti, session)
                    done.append(ref)
        except Exception as exc:
            failed[ref] = f"{type(exc).__name__}: {exc}"
    return done, failed


def _this_try_queued_by(model: Any, ref: TaskRef, scheduler_id: str) -> tuple[Any, ...]:
    """The conditions of a compare-and-set on one try: its task instance still at this try, queued
    by this scheduler."""
    return (
        model.dag_id == ref.dag_id,
        model.task_id == ref.task_id,
        model.run_id == ref.run_id,
        model.map_index == ref.map_index,
        model.try_number == ref.try_number,
        model.queued_by_job_id == int(scheduler_id),
    )
