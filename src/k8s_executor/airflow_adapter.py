"""The thin layer that knows which Airflow it talks to.

Everything that differs between Airflow 2.10/2.11 and Airflow 3 lives here:
how a task's command is made, where settings come from, the mutation hook,
the key type. The core (pod building, launching, watching, state mapping)
sees only `TaskRef`s, commands and pod JSON.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow import __version__ as AIRFLOW_VERSION
from airflow.configuration import conf
from kubernetes.client import ApiClient
from packaging.version import Version

from k8s_executor import executor_config as executor_config_module
from k8s_executor import identity
from k8s_executor.identity import CallbackRef, ConnectionTestRef, TaskRef, WorkloadRef
from k8s_executor.pod_building import PodBuildError, PodDefaults, PodRequest, build_pod, validate
from k8s_executor.settings import SECTION, ExecutorSettings

AIRFLOW_V3 = Version(Version(AIRFLOW_VERSION).base_version) >= Version("3.0.0")

_serializer = ApiClient()


def read_settings(section: str = SECTION, team: str | None = None) -> dict[str, Any]:
    """The option values the operator set (airflow.cfg, AIRFLOW__SECTION__KEY, _cmd, _secret).

    Defaults are left to our settings model: with the official provider installed too, Airflow
    answers an unset option with that provider's default (`worker_pods_creation_batch_size`
    = 1), which would silently replace ours.

    For a team, its own values (`AIRFLOW__<TEAM>___<SECTION>__<KEY>`, or a `[<team>=<section>]`
    section of airflow.cfg, as Airflow's `ExecutorConf` reads them) override the installation's.
    """
    # With display_source, every value is a (value, source) pair.
    values: dict[str, tuple[str, str]] = conf.as_dict(display_source=True, display_sensitive=True).get(
        section, {}
    )  # type: ignore[assignment]
    out = {
        name: value
        for name, (value, source) in values.items()
        if name in ExecutorSettings.model_fields and "default" not in source
    }
    if team:
        out.update(_team_values(section, team))
    return out


def _team_values(section: str, team: str) -> dict[str, Any]:
    names = set()
    team_section = f"{team}={section}"
    if conf.has_section(team_section):
        names.update(conf.options(team_section))
    prefix = f"AIRFLOW__{team.upper()}___{section.upper()}__"
    for variable in os.environ:
        if variable.startswith(prefix):
            names.add(variable[len(prefix) :].lower().removesuffix("_cmd").removesuffix("_secret"))
    return {
        name: conf.get(section, name, team_name=team)
        for name in sorted(names)
        if name in ExecutorSettings.model_fields
    }


def executor_identity(executor: Any) -> str:
    """The owner label value of a configured executor (identity.executor_identity): its alias, or
    its class name, and its team. Airflow 2 has neither aliases nor teams."""
    name = getattr(executor, "name", None)
    alias = getattr(name, "alias", None)
    return identity.executor_identity(alias or type(executor).__name__, getattr(executor, "team_name", None))


def scheduler_health_check_threshold_s() -> float:
    return conf.getfloat("scheduler", "scheduler_health_check_threshold", fallback=30.0)


def scheduler_jobs() -> list[tuple[object, str | None, datetime.datetime | None]]:
    """Every scheduler job Airflow knows as running: (id, state, latest heartbeat)."""
    from airflow.jobs.job import Job
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(Job.id, Job.state, Job.latest_heartbeat).where(
                Job.job_type == "SchedulerJob", Job.state == "running"
            )
        ).all()
    return [(job_id, getattr(state, "value", state), heartbeat) for job_id, state, heartbeat in rows]


def task_instance_rows(
    refs: Sequence[TaskRef], chunk: int = 500
) -> dict[tuple[str, str, str, int], tuple[int, str | None, object]]:
    """(try_number, state, queued_by_job_id) of the task instances of `refs`, by (dag, task, run,
    map index): one query per `chunk` tries."""
    from airflow.models.taskinstance import TaskInstance as TI
    from airflow.utils.session import create_session
    from sqlalchemy import select, tuple_

    out: dict[tuple[str, str, str, int], tuple[int, str | None, object]] = {}
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
                out[(dag_id, task_id, run_id, map_index)] = (
                    try_number,
                    str(state.value if hasattr(state, "value") else state) if state is not None else None,
                    queued_by,
                )
    return out


def pod_defaults(settings: ExecutorSettings) -> PodDefaults:
    return PodDefaults(
        namespace=settings.namespace,
        pod_template_file=settings.pod_template_file or None,
        worker_image=settings.worker_image,
        fallback_image=f"apache/airflow:{AIRFLOW_VERSION}",
        termination_grace_period_seconds=settings.termination_grace_period_seconds,
    )


def load_dag(dag_id: str, bundle_names: list[str] | None = None) -> Any:
    """The DAG `dag_id` as its file defines it, parsed from the DAG folder (Airflow 3: its bundles).

    Naming every bundle keeps Airflow 3 from syncing bundles to the metadata database first:
    finding a DAG needs no database.
    """
    from airflow.utils import cli as cli_utils

    if not AIRFLOW_V3:
        return cli_utils.get_dag(None, dag_id)  # type: ignore[attr-defined]  # Airflow 2 only
    from airflow.dag_processing.bundles.manager import DagBundlesManager

    names = bundle_names or list(DagBundlesManager().get_all_bundle_names())
    return cli_utils.get_bagged_dag(names, dag_id)


def task_queued_timeout_s() -> float:
    return conf.getfloat("scheduler", "task_queued_timeout", fallback=600.0)


def orphan_check_interval_s() -> float:
    return conf.getfloat("scheduler", "orphaned_tasks_check_interval", fallback=300.0)


def worker_env() -> dict[str, str]:
    """What a worker needs to find its scheduler's world, unless the pod template sets it already.

    The worker re-parses the DAG and refuses a task whose executor it does not know, so it
    must see the scheduler's `[core] executor`.
    """
    env = {"AIRFLOW__CORE__EXECUTOR": conf.get("core", "executor")}
    # Airflow 2 workers that see this flag render the pod through the official provider's
    # module, and fail without it; Airflow 3 only uses it to know where it runs.
    if AIRFLOW_V3 or _has_official_provider():
        env["AIRFLOW_IS_K8S_EXECUTOR_POD"] = "True"
    dags_folder = conf.get("core", "dags_folder", fallback=None)
    if dags_folder:
        env["AIRFLOW__CORE__DAGS_FOLDER"] = dags_folder
    if AIRFLOW_V3:
        url = conf.get("core", "execution_api_server_url", fallback=None)
        if not url:
            base = conf.get("api", "base_url", fallback="http://localhost:8080/").rstrip("/")
            url = f"{base}/execution/"
        env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] = url
    return env


def _has_official_provider() -> bool:
    try:
        return importlib.util.find_spec("airflow.providers.cncf.kubernetes") is not None
    except ModuleNotFoundError:
        return False


def to_airflow_key(ref: WorkloadRef) -> Any:
    """Airflow's key of what a pod ran: a TaskInstanceKey, or (Airflow 3) a CallbackKey."""
    if isinstance(ref, CallbackRef):
        from airflow.models.callback import CallbackKey

        return CallbackKey(id=ref.callback_id)
    if isinstance(ref, ConnectionTestRef):
        from airflow.models.connection_test import ConnectionTestKey

        return ConnectionTestKey(id=ref.test_id)
    from airflow.models.taskinstancekey import TaskInstanceKey

    return TaskInstanceKey(*ref)


def failure_state_of(key: Any) -> Any:
    """The failure state of a callback's or connection test's key."""
    if type(key).__name__ == "ConnectionTestKey":
        return end_states(ConnectionTestRef(key.id))[1]
    return end_states(CallbackRef(key.id))[1]


def end_states(ref: WorkloadRef) -> tuple[Any, Any]:
    """The states Airflow takes for a workload's success and failure."""
    if isinstance(ref, CallbackRef):
        from airflow.utils.state import CallbackState

        return CallbackState.SUCCESS, CallbackState.FAILED
    if isinstance(ref, ConnectionTestRef):
        from airflow.models.connection_test import ConnectionTestState

        return ConnectionTestState.SUCCESS, ConnectionTestState.FAILED
    from airflow.utils.state import TaskInstanceState

    return TaskInstanceState.SUCCESS, TaskInstanceState.FAILED


def ref_of(key: Any) -> TaskRef:
    return TaskRef(key.dag_id, key.task_id, key.run_id, int(key.try_number), int(key.map_index))


def load_unloaded_columns(tis: Sequence[Any], chunk: int = 1000) -> None:
    """Load, a thousand rows per query, the columns Airflow's orphan query left unloaded.

    That query loads only a few columns of each task instance (Airflow 2.11 and 3.x alike).
    Adoption reads the try number and the scheduler that queued each one, and every column
    left out costs a query per task instance when first read: 2.3 s for 2,000 at Airflow
    3.3 (bench/RESULTS.md, item 13). Loaded here, for the scheduler's own use after
    adoption too. Task instances that are not rows of a session are left as they are.
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


def workload_command(workload: Any) -> list[str]:
    """Airflow 3: the worker runs the workload JSON (its token included; never logged)."""
    return [
        "python",
        "-m",
        "airflow.sdk.execution_time.execute_workload",
        "--json-string",
        workload.model_dump_json(),
    ]


def request_from_workload(
    workload: Any, scheduler_id: str, env: dict[str, str], launch_attempt: int = 0
) -> PodRequest:
    ti = workload.ti
    template, image = coordinator_choice(getattr(ti, "queue", None))
    return PodRequest(
        ref=TaskRef(ti.dag_id, ti.task_id, ti.run_id, int(ti.try_number), int(ti.map_index)),
        command=workload_command(workload),
        scheduler_id=scheduler_id,
        airflow_version=AIRFLOW_VERSION,
        ti_id=str(ti.id),
        executor_config=executor_config_module.parse(ti.executor_config),
        env=env,
        launch_attempt=launch_attempt,
        coordinator_template=template,
        coordinator_image=image,
    )


def coordinator_choice(queue: str | None) -> tuple[str | None, str | None]:
    """Airflow 3.3: the pod template and base image that `[sdk] coordinators` declares (in its
    `extra`: `pod_template_file`, and `worker_container_repository` with `worker_container_tag`) for
    the coordinator `[sdk] queue_to_coordinator` routes `queue` to; (None, None) for a queue of
    Python tasks, or an Airflow without coordinators. Read as the official provider reads them."""
    if not queue:
        return None, None
    try:
        from airflow.sdk.execution_time.coordinator import get_coordinator_manager
    except ImportError:
        return None, None
    try:
        extra = get_coordinator_manager().extra_for_queue(queue) or {}
    except Exception as exc:
        # The installation's setting, but it decides the pods of the queues it routes: those
        # tasks fail, saying why; the other queues' tasks are not its concern.
        routes = conf.get("sdk", "queue_to_coordinator", fallback="") or ""
        try:
            routed = queue in json.loads(routes)
        except (ValueError, TypeError):
            routed = queue in routes
        if not routed:
            return None, None
        raise PodBuildError(
            f"queue {queue!r}: [sdk] coordinators / queue_to_coordinator cannot be read: {exc}"
        ) from exc
    repository, tag = extra.get("worker_container_repository"), extra.get("worker_container_tag")
    return extra.get("pod_template_file"), f"{repository}:{tag}" if repository and tag else None


def is_callback(workload: Any) -> bool:
    return type(workload).__name__ == "ExecuteCallback"


def request_from_callback(
    workload: Any, scheduler_id: str, env: dict[str, str], launch_attempt: int = 0
) -> PodRequest:
    """Airflow 3: an executor callback (a deadline alert's) runs in a pod as a task does: the
    same template and settings, the workload's JSON as its command."""
    # Its log path is executor_callbacks/<dag_id>/<run_id>/<callback id>: the run it is for.
    parts = str(workload.log_path or "").split("/")
    dag_id, run_id = (parts[1], parts[2]) if len(parts) == 4 else ("", "")
    return PodRequest(
        ref=CallbackRef(str(workload.callback.id), dag_id, run_id),
        command=workload_command(workload),
        scheduler_id=scheduler_id,
        airflow_version=AIRFLOW_VERSION,
        env=env,
        launch_attempt=launch_attempt,
    )


def is_connection_test(workload: Any) -> bool:
    return type(workload).__name__ == "TestConnection"


def request_from_connection_test(workload: Any, scheduler_id: str, env: dict[str, str]) -> PodRequest:
    """Airflow 3.3: a connection test runs in a pod as a task does, from inside the cluster with
    the workers' network and secrets; the worker reports its result to the API server itself."""
    return PodRequest(
        ref=ConnectionTestRef(str(workload.connection_test_id), workload.connection_id),
        command=workload_command(workload),
        scheduler_id=scheduler_id,
        airflow_version=AIRFLOW_VERSION,
        env=env,
    )


def request_from_command(
    key: Any,
    command: list[str],
    executor_config: Any,
    scheduler_id: str,
    env: dict[str, str],
    launch_attempt: int = 0,
) -> PodRequest:
    """Airflow 2: `execute_async` hands over an `airflow tasks run ...` command."""
    return PodRequest(
        ref=ref_of(key),
        command=list(command),
        scheduler_id=scheduler_id,
        airflow_version=AIRFLOW_VERSION,
        executor_config=executor_config_module.parse(executor_config),
        env=env,
        launch_attempt=launch_attempt,
    )


def pod_for(request: PodRequest, defaults: PodDefaults) -> dict[str, Any]:
    """The pod that would be launched for `request`: built, then the operator's mutation hook.

    One function for the launch and for the CLI (`generate-dag-yaml`, `explain`), so what the
    CLI shows is what is launched.
    """
    return apply_mutation_hook(build_pod(request, defaults))


def apply_mutation_hook(pod: dict[str, Any]) -> dict[str, Any]:
    """Run the operator's `pod_mutation_hook`, if they defined one, on the finished pod."""
    from airflow import settings

    hook = getattr(settings, "pod_mutation_hook", None)
    if hook is None or (getattr(hook, "__module__", "") == "airflow.settings" and not _policy_hooks()):
        return pod
    from kubernetes.client import V1Pod

    model: V1Pod = _serializer._ApiClient__deserialize(pod, "V1Pod")
    try:
        returned = hook(model)
    except Exception as exc:
        raise PodBuildError(f"pod_mutation_hook raised {type(exc).__name__}: {exc}") from exc
    # Airflow's dispatcher answers with each hook's return value. A hook that returns a new pod
    # meant it to be launched, but only the pod it was given is: its changes would be lost unseen.
    for value in returned if isinstance(returned, list) else [returned]:
        if isinstance(value, V1Pod | dict) and value is not model:
            raise PodBuildError(
                f"pod_mutation_hook returned a new {type(value).__name__} instead of changing the pod it "
                "was given; its return value is not used"
            )
    mutated: dict[str, Any] = _serializer.sanitize_for_serialization(model)
    try:
        # What the hook left is checked as a template is: it may have set any field to anything.
        validate(mutated, shape=True)
    except PodBuildError as exc:
        raise PodBuildError(f"after pod_mutation_hook: {exc}") from None
    return mutated


def _policy_hooks() -> list[Any]:
    """The pod mutation hooks Airflow's own `pod_mutation_hook` dispatches to.

    Airflow turns the hook of airflow_local_settings.py (and of policy plugins) into a
    plugin that its dispatcher in `airflow.settings` calls; with none, the model round
    trip is skipped.
    """
    from airflow import settings

    manager = getattr(settings, "get_policy_plugin_manager", None)
    return list(manager().hook.pod_mutation_hook.get_hookimpls()) if manager else []


def note_in_task_log(ref: TaskRef, text: str, ends_try: bool) -> None:
    """Append `text` to the try's log, where the UI shows it.

    A pod that never ran its worker leaves no log at all; this note is then the one place an
    operator looks that says why. It is written where the worker would have written: the local
    log folder, which the API server reads when the folder is shared. When remote logging is
    configured, the note that ends a try is uploaded as the worker's supervisor uploads its own
    log at a task's end: the API server reads a finished try from the remote store, and asks the
    executor's `get_task_log` only while a try runs, so without the upload a try whose pod never
    started shows nothing in the usual installation (the Helm chart shares no log folder between
    the scheduler and the API server).
    """
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.log.file_task_handler import FileTaskHandler
    from airflow.utils.session import create_session
    from sqlalchemy import select

    folder = conf.get("logging", "base_log_folder")
    with create_session() as session:
        ti = session.scalar(
            select(TaskInstance).where(
                TaskInstance.dag_id == ref.dag_id,
                TaskInstance.task_id == ref.task_id,
                TaskInstance.run_id == ref.run_id,
                TaskInstance.map_index == ref.map_index,
            )
        )
        if ti is None:
            return
        path = Path(folder) / FileTaskHandler(folder)._render_filename(ti, ref.try_number)
    now = datetime.datetime.now(datetime.timezone.utc)
    if AIRFLOW_V3:
        line = json.dumps(
            {"timestamp": now.isoformat(), "level": "error", "event": text, "logger": "k8s_executor"}
        )
    else:
        line = f"[{now.isoformat()}] {{k8s_executor}} ERROR - {text}"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as log_file:
        log_file.write(line + "\n")
    remote = _remote_task_log() if ends_try else None
    if remote is not None:
        remote.upload(path, ti)


def _remote_task_log() -> Any | None:
    """Airflow 3's remote log store (`RemoteLogIO`), or None when none is configured.

    Airflow 2 ships task logs through its log handlers' `close()` only, for the process that ran
    the task; there the note stays in the local folder.
    """
    if not AIRFLOW_V3:
        return None
    import airflow.logging_config as logging_config

    getter = getattr(logging_config, "get_remote_task_log", None)  # Airflow 3.2 and later
    return getter() if getter else getattr(logging_config, "REMOTE_TASK_LOG", None)


def stats() -> Any:
    """Airflow's metrics facade (StatsD or OpenTelemetry, as the operator configured it)."""
    try:
        from airflow.sdk.observability import stats as facade  # Airflow 3.2 and later

        return facade
    except ImportError:
        from airflow.stats import Stats

        return Stats
