"""`airflow kubernetes ...`: the executor's commands for Airflow operators.

- `cleanup-pods` deletes this executor's pods that no task needs any more;
- `generate-dag-yaml` renders every task's pod of a DAG without running anything;
- `explain` shows one task's pod and which layer set each of its fields.

With several clusters (`[kubernetes_executor] clusters`), `--cluster NAME` picks one: cleanup-pods
cleans every cluster without it, and a task is rendered with the settings of the cluster it would
run in (its executor_config's cluster, else its queue's) unless `--cluster` names another.

Rendering goes through the executor's own path (settings, the request factory of
workloads.py, `build_pod`, the mutation hook), so what is shown is what would be
launched, owner labels included, save the workload, which exists only for a running task.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from airflow.cli.cli_config import (
    ARG_DAG_ID,
    ARG_TASK_ID,
    ActionCommand,
    Arg,
    GroupCommand,
    lazy_load_command,
)
from airflow.utils.providers_configuration_loader import providers_configuration_loaded
from kubernetes import client
from urllib3.exceptions import HTTPError

from k8s_executor import airflow_adapter, clusters, identity, workloads
from k8s_executor.credentials import CredentialError
from k8s_executor.executor_config import ExecutorConfigError
from k8s_executor.explain import flatten, pod_layers, provenance
from k8s_executor.kube_client import core_api, describe_error, error_message, list_pods, read_json
from k8s_executor.pod_building import PodBuildError
from k8s_executor.settings import ExecutorSettings
from k8s_executor.state_mapping import parse_time

GROUP_NAME = "kubernetes"
DEFAULT_MIN_PENDING_MINUTES = 30.0
RENDER_RUN_ID = "rendered"
LIST_PAGE = 500


# --- which pods cleanup-pods deletes ------------------------------------------
def cleanup_reason(
    pod: dict[str, Any], now: datetime.datetime, min_pending: datetime.timedelta
) -> str | None:
    """Why `pod` (API JSON) should be deleted, or None to leave it alone.

    Only pods of this executor that no task needs: finished, evicted, or Pending for longer
    than `min_pending`. Running pods and pods of unknown fate are never touched.
    """
    meta = pod.get("metadata") or {}
    if not identity.launched_by_an_executor(meta.get("labels")):
        return None
    if meta.get("deletionTimestamp"):
        return None
    status = pod.get("status") or {}
    phase = status.get("phase")
    if status.get("reason") == "Evicted":
        return "evicted"
    if phase == "Succeeded":
        return "succeeded"
    if phase == "Failed":
        return "failed"
    if phase == "Pending":
        created = parse_time(meta.get("creationTimestamp"))
        if created is not None and now - created > min_pending:
            minutes = (now - created).total_seconds() / 60
            return f"pending for {minutes:.1f} min (threshold {min_pending.total_seconds() / 60:g} min)"
    return None


def _executor_pods(
    core: client.CoreV1Api, namespace: str | None, cluster: str = identity.DEFAULT_CLUSTER
) -> Iterator[dict[str, Any]]:
    """Every executor's pods of `cluster`: ours under any alias or team, and (in the default
    cluster) legacy ones (identity.py)."""
    seen: set[str] = set()
    ours = f"{identity.executor_pods_selector(None)},{identity.cluster_selector(cluster)}"
    legacy = (identity.LEGACY_PODS_SELECTOR,) if cluster == identity.DEFAULT_CLUSTER else ()
    for selector in (ours, *legacy):
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {
                "label_selector": selector,
                "limit": LIST_PAGE,
                "_preload_content": False,
            }
            if token:
                kwargs["_continue"] = token
            page = read_json(list_pods(core, namespace, **kwargs))
            for pod in page["items"]:
                if pod["metadata"]["uid"] not in seen:  # a pod can carry both kinds of label
                    seen.add(pod["metadata"]["uid"])
                    yield pod
            token = page["metadata"].get("continue")
            if not token:
                break


def _settings() -> ExecutorSettings:
    return airflow_adapter.load_settings()


# --- which cluster a command works on -------------------------------------------
def chosen_clusters(every: Mapping[str, ExecutorSettings], asked: str | None) -> dict[str, ExecutorSettings]:
    """The clusters a command works on: the one `--cluster` names, else all of them. A name
    not configured exits at once, naming the clusters there are."""
    if asked is None:
        return dict(every)
    if asked not in every:
        raise SystemExit(
            f"--cluster {asked!r} is not one of the executor's clusters "
            f"({', '.join(every)}; [kubernetes_executor] clusters)"
        )
    return {asked: every[asked]}


def cluster_prefix(name: str, several: bool) -> str:
    """What starts a line about cluster `name`: nothing when the executor has only one."""
    return f"cluster {name}: " if several else ""


def task_cluster(
    task: Any, asked: str | None, queue_clusters: Mapping[str, str], known: Sequence[str]
) -> str:
    """The cluster whose settings `task` is rendered with: `--cluster` (`asked`, already
    checked) when given, else the one the executor would launch its pod in (`clusters.route`
    of its executor_config's cluster and its queue). Raises ExecutorConfigError for a bad
    executor_config, an unknown cluster in it included."""
    return asked if asked is not None else clusters.route_task(task, queue_clusters, known)


# --- cleanup-pods ----------------------------------------------------------------
def _delete(core: client.CoreV1Api, pod: dict[str, Any], reason: str, dry_run: bool, prefix: str) -> bool:
    """Delete one judged pod, printing what happened; False when it could not be deleted."""
    meta = pod["metadata"]
    where = f"{meta['namespace']}/{meta['name']}"
    if dry_run:
        print(f"{prefix}would delete {where}: {reason}")
        return True
    # The pod must still be the one judged: one that started running since the list
    # has a new resourceVersion, and the API server then refuses the delete.
    preconditions = client.V1Preconditions(uid=meta["uid"], resource_version=meta["resourceVersion"])
    try:
        core.delete_namespaced_pod(
            meta["name"], meta["namespace"], body=client.V1DeleteOptions(preconditions=preconditions)
        )
    except client.ApiException as exc:
        if exc.status == 404:
            print(f"{prefix}already gone {where}")
            return True
        if exc.status == 409:
            print(f"{prefix}skipped {where}: it changed since it was listed; run again to judge it anew")
            return True
        print(f"{prefix}could not delete {where}: {error_message(exc)}", file=sys.stderr)
        return False
    except (HTTPError, OSError) as exc:
        print(f"{prefix}could not delete {where}: {describe_error(exc)}", file=sys.stderr)
        return False
    print(f"{prefix}deleted {where}: {reason}")
    return True


def _clean_cluster(
    settings: ExecutorSettings, args: argparse.Namespace, now: datetime.datetime, prefix: str
) -> int:
    """Clean up one cluster's namespaces (`--namespace`, else those it watches) with its own
    client; how many pods or namespaces failed. One that cannot be reached spares the others."""
    min_pending = datetime.timedelta(minutes=args.min_pending_minutes)
    try:
        core = core_api(settings)
    except CredentialError as exc:
        print(f"{prefix}could not connect: {exc}", file=sys.stderr)
        return 1
    failures = 0
    for namespace in [args.namespace] if args.namespace else settings.watched_namespaces:
        try:
            for pod in _executor_pods(core, namespace, settings.cluster):
                reason = cleanup_reason(pod, now, min_pending)
                if reason is not None and not _delete(core, pod, reason, args.dry_run, prefix):
                    failures += 1
        except (client.ApiException, HTTPError, OSError) as exc:
            failures += 1
            where = f"namespace {namespace}" if namespace else "all namespaces"
            print(f"{prefix}could not list the pods of {where}: {describe_error(exc)}", file=sys.stderr)
    return failures


@providers_configuration_loaded
def cleanup_pods(args: argparse.Namespace) -> None:
    every = _settings().cluster_settings()
    chosen = chosen_clusters(every, args.cluster)
    now = datetime.datetime.now(datetime.timezone.utc)
    failures = sum(
        _clean_cluster(settings, args, now, cluster_prefix(name, len(every) > 1))
        for name, settings in chosen.items()
    )
    if failures:
        raise SystemExit(f"{failures} pod(s) or namespace(s) could not be cleaned up")


# --- rendering a task's pod -----------------------------------------------------
def render_pod(task: Any, run_id: str, settings: ExecutorSettings) -> dict[str, Any]:
    """The pod the executor would launch for `task`, as `KubernetesExecutor._launch` builds it."""
    return workloads.pod_for(
        workloads.request_for_rendering(task, run_id, task.executor_config),
        airflow_adapter.pod_defaults(settings),
    )


def _dump(pod: dict[str, Any]) -> str:
    return yaml.safe_dump(pod, sort_keys=False)


def _dag(args: argparse.Namespace) -> Any:
    return airflow_adapter.load_dag(args.dag_id, getattr(args, "bundle_name", None))


def _task_settings(
    task: Any, args: argparse.Namespace, settings: ExecutorSettings, every: Mapping[str, ExecutorSettings]
) -> tuple[str, ExecutorSettings]:
    """The cluster `task` is rendered for and that cluster's settings."""
    name = task_cluster(task, args.cluster, settings.queue_clusters, list(every))
    return name, every[name]


@providers_configuration_loaded
def generate_dag_yaml(args: argparse.Namespace) -> None:
    settings = _settings()
    every = settings.cluster_settings()
    chosen_clusters(every, args.cluster)  # an unknown name exits before the DAG is parsed
    several = len(every) > 1
    dag = _dag(args)
    output = Path(args.output_path) if args.output_path else None
    if output:
        output.mkdir(parents=True, exist_ok=True)
    failed = []
    for task in dag.tasks:
        try:
            name, task_settings = _task_settings(task, args, settings, every)
            pod = render_pod(task, args.run_id, task_settings)
        except (ExecutorConfigError, PodBuildError) as exc:
            # One task's bad executor_config fails only that task at launch; so here.
            failed.append(task.task_id)
            print(f"task {task.task_id}: {exc}", file=sys.stderr)
            continue
        if output:
            path = output / f"{pod['metadata']['name']}.yaml"
            path.write_text(_dump(pod))
            print(f"{task.task_id}{clusters.where(name, several)}: {path}")
        else:
            print(f"---\n# task {task.task_id}{clusters.where(name, several)}\n{_dump(pod)}", end="")
    if failed:
        raise SystemExit(f"no pod could be rendered for task(s) {', '.join(failed)}")


@providers_configuration_loaded
def explain(args: argparse.Namespace) -> None:
    settings = _settings()
    every = settings.cluster_settings()
    chosen_clusters(every, args.cluster)  # an unknown name exits before the DAG is parsed
    dag = _dag(args)
    if not dag.has_task(args.task_id):
        raise SystemExit(f"DAG {args.dag_id!r} has no task {args.task_id!r}")
    task = dag.get_task(args.task_id)
    try:
        name, task_settings = _task_settings(task, args, settings, every)
        layers = pod_layers(task, args.run_id, task_settings)
    except (ExecutorConfigError, PodBuildError) as exc:
        raise SystemExit(f"task {args.task_id}: {exc}") from None
    pod = layers[-1][1]
    sources = provenance(layers)
    width = max(map(len, sources))
    cluster = f", cluster {name}" if len(every) > 1 else ""
    print(f"# pod of {args.dag_id}.{args.task_id} (run {args.run_id}{cluster})")
    print(_dump(pod), end="")
    # Comments, so the whole output still applies with kubectl.
    print("# where each field came from")
    for path in flatten(pod):
        print(f"# {path:<{width}}  {sources[path]}")


# --- the command group ----------------------------------------------------------
def _minutes(value: str) -> float:
    minutes = float(value)
    if minutes < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return minutes


ARG_NAMESPACE = Arg(
    ("--namespace",),
    help="Namespace to clean up (default: every namespace the executor watches)",
)
ARG_MIN_PENDING_MINUTES = Arg(
    ("--min-pending-minutes",),
    type=_minutes,
    default=DEFAULT_MIN_PENDING_MINUTES,
    help=f"Delete Pending pods older than this many minutes, fractions allowed "
    f"(default {DEFAULT_MIN_PENDING_MINUTES:g})",
)
ARG_CLEANUP_CLUSTER = Arg(
    ("--cluster",),
    help="Only this cluster of [kubernetes_executor] clusters ('default' is the section's own; "
    "default: every cluster in turn)",
)
ARG_RENDER_CLUSTER = Arg(
    ("--cluster",),
    help="Render with this cluster's settings ('default' is the section's own; default: the cluster "
    "each task would run in, by its executor_config's cluster, else its queue)",
)
ARG_DRY_RUN = Arg(
    ("--dry-run",), action="store_true", help="Print the pods that would be deleted, delete none"
)
ARG_OUTPUT_PATH = Arg(
    ("-o", "--output-path"), help="Directory for one YAML file per task (default: print to stdout)"
)
ARG_RUN_ID = Arg(
    ("--run-id",),
    default=RENDER_RUN_ID,
    help=f"Run id in the pod's name, labels and annotations (default {RENDER_RUN_ID!r})",
)
DAG_ARGS: tuple[Arg, ...] = airflow_adapter.dag_bundle_args()

COMMANDS = (
    ActionCommand(
        name="cleanup-pods",
        help="Delete this executor's finished, evicted and long-pending pods",
        func=lazy_load_command("k8s_executor.commands.cleanup_pods"),
        args=(ARG_NAMESPACE, ARG_CLEANUP_CLUSTER, ARG_MIN_PENDING_MINUTES, ARG_DRY_RUN),
    ),
    ActionCommand(
        name="generate-dag-yaml",
        help="Render the pod of every task of a DAG, launching nothing",
        func=lazy_load_command("k8s_executor.commands.generate_dag_yaml"),
        args=(ARG_DAG_ID, ARG_OUTPUT_PATH, ARG_RUN_ID, ARG_RENDER_CLUSTER, *DAG_ARGS),
    ),
    ActionCommand(
        name="explain",
        help="Show the pod a task would get and where each of its fields came from",
        func=lazy_load_command("k8s_executor.commands.explain"),
        args=(ARG_DAG_ID, ARG_TASK_ID, ARG_RUN_ID, ARG_RENDER_CLUSTER, *DAG_ARGS),
    ),
)


def _release_group_name() -> None:
    """Drop a `kubernetes` group registered before ours while Airflow assembles its parser.

    Two groups of one name make Airflow refuse every command. The official provider
    registers its group whenever it is installed, and each of our executors in the
    executor list would register ours; the configured executor's group must win.
    """
    parser_module = sys.modules.get("airflow.cli.cli_parser")
    if parser_module is None or hasattr(parser_module, "ALL_COMMANDS_DICT"):
        return  # not assembling: the list is no longer read
    registered = getattr(parser_module, "airflow_commands", None)
    if isinstance(registered, list):
        registered[:] = [command for command in registered if command.name != GROUP_NAME]


def cli_commands() -> list[GroupCommand]:
    _release_group_name()
    return [
        GroupCommand(
            name=GROUP_NAME,
            help="Clean up, render and explain the pods of k8s_executor",
            subcommands=COMMANDS,
        )
    ]
