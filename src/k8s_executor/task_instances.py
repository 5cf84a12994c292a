"""The executor's questions to Airflow's database, answered with the records of shapes.py.

Only the database knows which schedulers Airflow holds alive and what became of a try after its
pod was asked for (reset, retried, handed to another scheduler). Those questions are asked here,
a batch at a time, and answered with typed records (`SchedulerJob`, `TaskRow`), not positional
rows, which the pure ledger takes as they are.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

from k8s_executor.identity import TaskRef
from k8s_executor.shapes import SchedulerJob, TaskRow


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


def load_unloaded_columns(tis: Sequence[Any], chunk: int = 1000) -> None:
    """Load, a thousand rows per query, the columns Airflow's orphan query left unloaded.

    That query loads only a few columns of each task instance (Airflow 2.11 and 3.x alike).
    Adoption reads the try number and the scheduler that queued each one, and every column
    left out costs a query per task instance when first read: seconds for a few thousand, in
    the scheduler's loop. Loaded here, for the scheduler's own use after adoption too. Task
    instances that are not rows of a session are left as they are.
    """
    from sqlalchemy import inspect, select, tuple_
    from sqlalchemy.orm import object_session
    from sqlalchemy.orm.exc import UnmappedInstanceError

    try:
        session = object_session(tis[0]) if tis else None
    except UnmappedInstanceError:
        return
    if session is None:
        return
    model = type(tis[0])
    mapper = inspect(model)
    columns = {attribute.key for attribute in mapper.column_attrs}
    identities = [inspect(ti).identity for ti in tis if inspect(ti).unloaded & columns]
    key_columns = mapper.primary_key
    for start in range(0, len(identities), chunk):
        part = identities[start : start + chunk]
        if len(key_columns) == 1:
            where = key_columns[0].in_([identity[0] for identity in part])
        else:
            where = tuple_(*key_columns).in_(part)
        # Rows of objects already in the session fill in only what those objects lack.
        session.scalars(select(model).where(where)).all()


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
