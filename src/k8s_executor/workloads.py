"""What Airflow hands the executor becomes a pod: one `PodRequest` factory per kind of work.

A task's workload (Airflow 3) or command (Airflow 2), an executor callback, a connection test,
and the CLI's rendering of a DAG's task each become a `PodRequest` here, and every one through
`_request`: the owner labels (`Owner`) and the launch id are set in that one place, so what
`airflow kubernetes generate-dag-yaml` shows carries the labels the launched pod gets. `pod_for`
then builds the pod and runs the operator's mutation hook on it, for the launch and the CLI alike.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from airflow.configuration import conf

from k8s_executor import executor_config as executor_config_module
from k8s_executor.airflow_adapter import (
    AIRFLOW_VERSION,
    configured_executor_id,
    coordinator_manager,
    ref_of,
    worker_env,
)
from k8s_executor.identity import CallbackRef, ConnectionTestRef, TaskRef, WorkloadRef
from k8s_executor.kube_client import from_model, to_model
from k8s_executor.pod_building import PodBuildError, PodDefaults, PodRequest, build_pod, validate

# What a rendered pod (the CLI's) has where a launched one has its scheduler, launch and workload.
RENDER_SCHEDULER_ID = "generate-dag-yaml"
RENDER_LAUNCH_ID = "rendered"
PLACEHOLDER_COMMAND = [
    "echo",
    "rendered by airflow kubernetes generate-dag-yaml: a launched task runs its workload here",
]


@dataclass(frozen=True)
class Owner:
    """Whose pods these are: the executor (`identity.executor_identity`) and scheduler job their
    labels name, and the environment the executor gives its workers."""

    scheduler_id: str
    executor_id: str
    env: dict[str, str]
    # identity.LAUNCH_ANNOTATION's value; None for a new one at each request, as each launch needs.
    launch_id: str | None = None


def _request(owner: Owner, ref: WorkloadRef, command: list[str], **fields: Any) -> PodRequest:
    return PodRequest(
        ref=ref,
        command=command,
        scheduler_id=owner.scheduler_id,
        executor_id=owner.executor_id,
        launch_id=owner.launch_id or uuid.uuid4().hex,
        airflow_version=AIRFLOW_VERSION,
        env=owner.env,
        **fields,
    )


def workload_command(workload: Any) -> list[str]:
    """Airflow 3: the worker runs the workload JSON (its token included; never logged)."""
    return [
        "python",
        "-m",
        "airflow.sdk.execution_time.execute_workload",
        "--json-string",
        workload.model_dump_json(),
    ]


def request_from_workload(workload: Any, owner: Owner, launch_attempt: int = 0) -> PodRequest:
    """Airflow 3: a task's `ExecuteTask` workload."""
    ti = workload.ti
    template, image = coordinator_choice(getattr(ti, "queue", None))
    return _request(
        owner,
        TaskRef(ti.dag_id, ti.task_id, ti.run_id, int(ti.try_number), int(ti.map_index)),
        workload_command(workload),
        ti_id=str(ti.id),
        executor_config=executor_config_module.parse(ti.executor_config),
        launch_attempt=launch_attempt,
        coordinator_template=template,
        coordinator_image=image,
        queue=getattr(ti, "queue", None),
    )


def request_from_command(
    key: Any,
    command: list[str],
    executor_config: Any,
    owner: Owner,
    launch_attempt: int = 0,
    queue: str | None = None,
) -> PodRequest:
    """Airflow 2: `execute_async` hands over an `airflow tasks run ...` command."""
    return _request(
        owner,
        ref_of(key),
        list(command),
        executor_config=executor_config_module.parse(executor_config),
        launch_attempt=launch_attempt,
        queue=queue,
    )


def request_from_callback(workload: Any, owner: Owner) -> PodRequest:
    """Airflow 3: an executor callback (a deadline alert's) runs in a pod as a task does: the
    same template and settings, the workload's JSON as its command."""
    # Its log path is executor_callbacks/<dag_id>/<run_id>/<callback id>: the run it is for.
    parts = str(workload.log_path or "").split("/")
    dag_id, run_id = (parts[1], parts[2]) if len(parts) == 4 else ("", "")
    return _request(
        owner,
        CallbackRef(str(workload.callback.id), dag_id, run_id),
        workload_command(workload),
    )


def request_from_connection_test(workload: Any, owner: Owner) -> PodRequest:
    """Airflow 3.3: a connection test runs in a pod as a task does, from inside the cluster with
    the workers' network and secrets; the worker reports its result to the API server itself."""
    return _request(
        owner,
        ConnectionTestRef(str(workload.connection_test_id), workload.connection_id),
        workload_command(workload),
        # Its queue, if the test names one, routes it to a cluster as a task's does.
        queue=getattr(workload, "queue", None),
    )


def request_for_rendering(task: Any, run_id: str, executor_config: dict[str, Any] | None) -> PodRequest:
    """The CLI's: a DAG's task rendered with no run behind it (`generate-dag-yaml`, `explain`).

    Its owner is the configured executor of ours that runs `task`; where a launch has a
    workload, the pod has a placeholder command.
    """
    owner = Owner(
        RENDER_SCHEDULER_ID,
        configured_executor_id(getattr(task, "executor", None)),
        worker_env(),
        launch_id=RENDER_LAUNCH_ID,
    )
    template, image = coordinator_choice(getattr(task, "queue", None))
    return _request(
        owner,
        TaskRef(task.dag_id, task.task_id, run_id),
        PLACEHOLDER_COMMAND,
        executor_config=executor_config_module.parse(executor_config),
        coordinator_template=template,
        coordinator_image=image,
        queue=getattr(task, "queue", None),
    )


def coordinator_choice(queue: str | None) -> tuple[str | None, str | None]:
    """Airflow 3.3: the pod template and base image that `[sdk] coordinators` declares (in its
    `extra`: `pod_template_file`, and `worker_container_repository` with `worker_container_tag`) for
    the coordinator `[sdk] queue_to_coordinator` routes `queue` to; (None, None) for a queue of
    Python tasks, or an Airflow without coordinators. Read as the official provider reads them."""
    if not queue:
        return None, None
    try:
        manager = coordinator_manager()
        if manager is None:
            return None, None
        extra = manager.extra_for_queue(queue) or {}
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


# --- the pod ---------------------------------------------------------------------------------
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

    model: V1Pod = to_model(pod, "V1Pod")
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
    mutated: dict[str, Any] = from_model(model)
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
