"""The version shim: the one module that knows which Airflow it talks to.

What differs between Airflow 2.10/2.11 and Airflow 3 is answered here, so no other module
branches on the version: where settings come from and which of them Airflow sets, which
executor is configured under which name and for which team, a workload's keys and end states,
what a worker needs in its environment, how a DAG is found (and the CLI's bundle argument),
which coordinators run other languages' tasks, where a try's log file is and how its lines and
remote store look, the metrics facade. The core
(pod building, launching, watching, state mapping) sees only `TaskRef`s, commands and pod JSON.

Where Airflow offers no public API for what is needed, the private one is called here only,
and tests/unit/test_airflow_adapter.py fails when it changes.
"""

from __future__ import annotations

import datetime
import importlib.util
import inspect
import json
import logging
import os
from collections.abc import Sequence
from typing import Any

from airflow import __version__ as AIRFLOW_VERSION
from airflow.configuration import conf
from packaging.version import Version

from k8s_executor import identity
from k8s_executor.identity import CallbackRef, ConnectionTestRef, TaskRef, WorkloadRef
from k8s_executor.pod_building import PodDefaults
from k8s_executor.settings import SECTION, ExecutorSettings

log = logging.getLogger(__name__)
AIRFLOW_V3 = Version(Version(AIRFLOW_VERSION).base_version) >= Version("3.0.0")


def load_settings(team: str | None = None) -> ExecutorSettings:
    """The executor's settings, validated: the installation's, with a team's own over them."""
    return ExecutorSettings.parse(read_settings(team=team))


def team_of(executor: Any) -> str | None:
    """The team an executor serves (Airflow 3.1's multi-team setups); None before that."""
    return getattr(executor, "team_name", None)


def read_settings(team: str | None = None) -> dict[str, Any]:
    """The option values the operator set (airflow.cfg, AIRFLOW__SECTION__KEY, _cmd, _secret).

    Defaults are left to our settings model: with the official provider installed too, Airflow
    answers an unset option with that provider's default (`worker_pods_creation_batch_size`
    = 1), which would silently replace ours.

    For a team, its own values (`AIRFLOW__<TEAM>___<SECTION>__<KEY>`, or a `[<team>=<section>]`
    section of airflow.cfg, as Airflow's `ExecutorConf` reads them) override the installation's.
    """
    # With display_source, every value is a (value, source) pair.
    values: dict[str, tuple[str, str]] = conf.as_dict(display_source=True, display_sensitive=True).get(
        SECTION, {}
    )  # type: ignore[assignment]
    out = {
        name: value
        for name, (value, source) in values.items()
        if name in ExecutorSettings.model_fields and "default" not in source
    }
    if team:
        out.update(_team_values(SECTION, team))
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


def configured_executor_id(task_executor: str | None = None) -> str:
    """`executor_identity` of the executor of ours that runs a task whose `executor` argument is
    `task_executor`, found in `[core] executor` without loading it: for the CLI, which renders
    pods that executor would launch.

    The one named (by alias, module path or class name) if it is ours, else the first of ours
    configured; `identity.DEFAULT_EXECUTOR` when none is. A team's executor is chosen only when
    no installation-wide one of ours is configured: which team a DAG is of is the database's.
    """
    from airflow.executors.executor_loader import ExecutorLoader

    listing = ExecutorLoader.get_executor_names
    # Airflow 3 checks the teams it finds against the database first, unless told not to.
    names = (
        listing(validate_teams=False)
        if "validate_teams" in inspect.signature(listing).parameters
        else listing()
    )
    ours = sorted(
        (name for name in names if name.module_path.startswith("k8s_executor.")),
        key=lambda name: getattr(name, "team_name", None) is not None,
    )
    named = [
        name
        for name in ours
        if task_executor in (name.alias, name.module_path, name.module_path.rsplit(".", 1)[-1])
    ]
    chosen = named[0] if named else ours[0] if ours else None
    if chosen is None:
        return identity.DEFAULT_EXECUTOR
    class_name = chosen.module_path.rsplit(".", 1)[-1]
    return identity.executor_identity(chosen.alias or class_name, getattr(chosen, "team_name", None))


def scheduler_health_check_threshold_s() -> float:
    return conf.getfloat("scheduler", "scheduler_health_check_threshold", fallback=30.0)


def pod_defaults(settings: ExecutorSettings) -> PodDefaults:
    return PodDefaults(
        namespace=settings.namespace,
        pod_template_file=settings.pod_template_file or None,
        worker_image=settings.worker_image,
        fallback_image=f"apache/airflow:{AIRFLOW_VERSION}",
        termination_grace_period_seconds=settings.termination_grace_period_seconds,
        disruption_guard=settings.disruption_guard,
        disruption_guard_source=settings.disruption_guard_source,
        disruption_retries=settings.disruption_retries,
        cluster=settings.cluster,
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


def is_task_key(key: Any) -> bool:
    """Whether an executor key is a task instance's, not a callback's or a connection test's."""
    return hasattr(key, "dag_id")


def ref_of(key: Any) -> TaskRef:
    return TaskRef(key.dag_id, key.task_id, key.run_id, int(key.try_number), int(key.map_index))


# From how many task instances handed over adoption reads their runs in Airflow's call. Each lazy
# load it spares costs Airflow's loop about 0.45 ms (0.9 s for 2,000, bench/RESULTS.md); the read
# itself, the first of its kind in a scheduler just started, costs the loop's CPU up to about
# 0.2 s (docs/reliability.md). Below this many it would cost the loop more than it spares.
READ_RUNS_AHEAD_FROM = 400


def spare_run_reads(tis: Sequence[Any]) -> None:
    """Airflow 3's pass over the task instances an executor adopted reads each one's dag run (to
    default its conf), which its orphan query leaves to a lazy load: a query per task instance, in
    the loop, right after the executor's call. For a large hand-over (READ_RUNS_AHEAD_FROM) one
    query of their runs, per thousand runs, in the call spares those. Airflow 2's pass reads no
    run."""
    if not AIRFLOW_V3 or len(tis) < READ_RUNS_AHEAD_FROM:
        return
    from k8s_executor.task_instances import NotLoaded, load_related

    try:
        queries = load_related(tis, "dag_run")
    except NotLoaded as exc:
        # Only a saving: Airflow's pass then reads each run itself. (A failure that lost Airflow's
        # transaction is raised as it came, for Airflow's retry of its pass.)
        log.warning("the runs of %d task instances handed over were not read ahead: %s", len(tis), exc)
        return
    log.info(
        "the runs of %d task instances handed over read ahead (queries: %d), for Airflow's pass after the adoption",
        len(tis),
        queries,
    )


def hold_heartbeat(ti: Any) -> None:
    """A try handed over stays clear of Airflow 3's heartbeat timeout while its pod is looked for:
    Airflow would otherwise fail a try whose pod is long gone, spending a retry, before the
    executor resets it. Airflow 2's zombie check goes by the worker's job, not the try. Asked of
    the class: asked of the row, it would read the column, a query per row Airflow's orphan query
    left it unloaded in."""
    if hasattr(type(ti), "last_heartbeat_at"):  # Airflow 3
        ti.last_heartbeat_at = datetime.datetime.now(datetime.timezone.utc)


def reset_for_next_try(ti: Any, session: Any) -> None:
    """What Airflow's scheduler does to a try handed over that no executor adopted: Airflow 3 keeps
    the abandoned try in the task instance's history first; both lines clear its state and queuing
    scheduler, so the scheduler runs the task again."""
    if hasattr(ti, "prepare_db_for_next_try"):  # Airflow 3
        ti.prepare_db_for_next_try(session)
        ti.external_executor_id = None
        ti.clear_next_method_args()
    ti.state = None
    ti.queued_by_job_id = None


def with_fresh_token(workload: Any, executor: Any) -> Any:
    """Airflow 3: the task's workload with a new token, valid for its queued timeout from now (as
    the scheduler issues one when it queues a task)."""
    token = type(workload).generate_token(str(workload.ti.id), executor.jwt_generator)
    return workload.model_copy(update={"token": token})


def is_callback(workload: Any) -> bool:
    return type(workload).__name__ == "ExecuteCallback"


def is_connection_test(workload: Any) -> bool:
    return type(workload).__name__ == "TestConnection"


def task_log_line(text: str, now: datetime.datetime) -> str:
    """One error line of the executor's, as the try's log file writes its lines: structured
    JSON on Airflow 3, Airflow 2's text format before."""
    if AIRFLOW_V3:
        return json.dumps(
            {"timestamp": now.isoformat(), "level": "error", "event": text, "logger": "k8s_executor"}
        )
    return f"[{now.isoformat()}] {{k8s_executor}} ERROR - {text}"


def remote_task_log() -> Any | None:
    """Airflow 3's remote log store (`RemoteLogIO`), or None when none is configured.

    Airflow 2 ships task logs through its log handlers' `close()` only, for the process that ran
    the task; there the executor's note stays in the local folder.
    """
    if not AIRFLOW_V3:
        return None
    import airflow.logging_config as logging_config

    getter = getattr(logging_config, "get_remote_task_log", None)  # Airflow 3.2 and later
    return getter() if getter else getattr(logging_config, "REMOTE_TASK_LOG", None)


def dag_bundle_args() -> tuple[Any, ...]:
    """The CLI's argument naming a DAG bundle (Airflow 3); Airflow 2 parses the DAG folder only."""
    try:
        from airflow.cli.cli_config import ARG_BUNDLE_NAME
    except ImportError:
        return ()
    return (ARG_BUNDLE_NAME,)


def coordinator_manager() -> Any | None:
    """Airflow 3.3's manager of `[sdk] coordinators`, or None on an Airflow without them."""
    try:
        from airflow.sdk.execution_time.coordinator import get_coordinator_manager
    except ImportError:
        return None
    return get_coordinator_manager()


def task_log_filename(ti: Any, try_number: int, base_log_folder: str, session: Any) -> str:
    """The path, under `base_log_folder`, of the file of try `try_number` of task instance `ti`:
    where its worker writes and the API server reads.

    Airflow renders it from the log template its DAG run was created under, in
    `FileTaskHandler._render_filename`: there is no public function of it. Airflow 3's reads
    through the caller's `session`; Airflow 2's opens one of its own.
    """
    from airflow.utils.log.file_task_handler import FileTaskHandler

    handler = FileTaskHandler(base_log_folder)
    if AIRFLOW_V3:
        filename: str = handler._render_filename(ti, try_number, session=session)
    else:
        filename = handler._render_filename(ti, try_number)
    return filename


def stats() -> Any:
    """Airflow's metrics facade (StatsD or OpenTelemetry, as the operator configured it)."""
    try:
        from airflow.sdk.observability import stats as facade  # Airflow 3.2 and later

        return facade
    except ImportError:
        from airflow.stats import Stats

        return Stats
