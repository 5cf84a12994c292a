"""Building a task's pod: template, then executor fields, then the task's overrides.

Pods are plain JSON dicts from start to end: no model objects on the hot path,
and a template is parsed once per file version, not once per pod.

The merge rule, applied at every level, later layer winning:
- objects (mappings) merge key by key; any value the later layer sets wins,
  including `False`, `0`, `""` and `[]`;
- lists of named entries (containers, initContainers, env, volumeMounts,
  volumes, ports, imagePullSecrets, ...) merge entry by entry on `name`; new
  names are appended in order;
- every other list (args, command, tolerations, ...) is replaced whole.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import yaml

from k8s_executor import disruption_guard, identity, pod_shape
from k8s_executor.disruption_guard import GuardSource
from k8s_executor.executor_config import ParsedExecutorConfig
from k8s_executor.identity import BASE_CONTAINER

MAX_NAME = 253


class PodBuildError(ValueError):
    """The pod of a task cannot be built; the message names the field at fault."""


def merge(base: Any, override: Any) -> Any:
    """Merge `override` onto `base` by the module's rule; neither argument is changed."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            if value is None:
                continue
            out[key] = merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    if (
        isinstance(base, list)
        and isinstance(override, list)
        and is_named_list(base)
        and is_named_list(override)
        and override
    ):
        out_list = [copy.deepcopy(item) for item in base]
        index = {item["name"]: i for i, item in enumerate(out_list)}
        for item in override:
            if item["name"] in index:
                out_list[index[item["name"]]] = merge(out_list[index[item["name"]]], item)
            else:
                index[item["name"]] = len(out_list)
                out_list.append(copy.deepcopy(item))
        return out_list
    return copy.deepcopy(override)


def is_named_list(items: list[Any]) -> bool:
    """Whether `items` is a list of named entries, which the merge rule merges entry by entry."""
    return all(isinstance(i, dict) and isinstance(i.get("name"), str) for i in items)


@lru_cache(maxsize=64)
def _load_template_cached(path: str, mtime_ns: int) -> dict[str, Any]:
    try:
        # Bytes: YAML finds the encoding itself (UTF-8 or UTF-16), whatever the scheduler's locale.
        with open(path, "rb") as f:
            documents = [d for d in yaml.safe_load_all(f) if d is not None]
    except yaml.YAMLError as exc:
        raise PodBuildError(f"pod_template_file {path!r} is not valid YAML: {exc}") from None
    except OSError as exc:
        # A directory, a file without read permission: the task's input, so its task fails (the
        # official provider's scheduler died of IsADirectoryError).
        raise PodBuildError(f"pod_template_file {path!r} cannot be read: {exc.strerror}") from None
    if len(documents) != 1:
        raise PodBuildError(
            f"pod_template_file {path!r} holds {len(documents)} YAML documents; it must hold exactly one Pod"
        )
    pod = documents[0]
    if not isinstance(pod, dict):
        raise PodBuildError(f"pod_template_file {path!r} holds a {type(pod).__name__}, not a Pod object")
    if pod.get("kind", "Pod") != "Pod":
        raise PodBuildError(f"pod_template_file {path!r} holds a {pod.get('kind')}, not a Pod")
    spec = pod.get("spec")
    containers = spec.get("containers") if isinstance(spec, dict) else None
    if not isinstance(containers, list) or not containers:
        raise PodBuildError(f"pod_template_file {path!r}: spec.containers must list at least one container")
    found = pod_shape.problems(pod)
    if not any(isinstance(c, dict) and c.get("name") == BASE_CONTAINER for c in containers):
        # The first container runs the task whatever its name, so it may have none (base_pod).
        found = [problem for problem in found if problem != "spec.containers[0] has no name"]
    if found:
        raise PodBuildError(f"pod_template_file {path!r}: {pod_shape.describe(found)}")
    return pod


def load_template(path: str) -> dict[str, Any]:
    """The template at `path` as pod JSON (a fresh copy); a missing or broken file is an error."""
    try:
        mtime = os.stat(path).st_mtime_ns
    except OSError as exc:
        raise PodBuildError(f"pod_template_file {path!r} cannot be read: {exc.strerror}") from None
    return copy.deepcopy(_load_template_cached(path, mtime))


def default_pod(image: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {},
        "spec": {"restartPolicy": "Never", "containers": [{"name": BASE_CONTAINER, "image": image}]},
    }


@dataclass(frozen=True)
class PodRequest:
    """Everything that decides one task's pod."""

    ref: identity.WorkloadRef
    command: list[str]
    scheduler_id: str
    airflow_version: str
    ti_id: str | None = None
    # The owner label: which configured executor launches the pod (identity.executor_identity).
    executor_id: str = identity.DEFAULT_EXECUTOR
    executor_config: ParsedExecutorConfig = field(default_factory=ParsedExecutorConfig)
    # Airflow 3.3's non-Python task coordinators: the template and base image its queue's
    # coordinator declares in `[sdk] coordinators` (its `extra`), if any.
    coordinator_template: str | None = None
    coordinator_image: str | None = None
    # identity.LAUNCH_ANNOTATION's value: new for each launch.
    launch_id: str = ""
    env: dict[str, str] = field(default_factory=dict)
    launch_attempt: int = 0
    # The task's queue: with executor_config's cluster, it routes the pod to a cluster.
    queue: str | None = None


@dataclass(frozen=True)
class PodDefaults:
    """The executor-wide part of every pod, from settings."""

    namespace: str
    pod_template_file: str | None
    worker_image: str | None
    fallback_image: str
    termination_grace_period_seconds: int | None = None
    # [kubernetes_executor] disruption_guard, disruption_guard_source and disruption_retries (a
    # task may set its own disruption_retries).
    disruption_guard: bool = False
    disruption_guard_source: GuardSource = "image"
    disruption_retries: int = 0
    # The cluster of [kubernetes_executor] clusters the pod is for: its label (identity.py).
    cluster: str = identity.DEFAULT_CLUSTER


def template_path(request: PodRequest, defaults: PodDefaults) -> str | None:
    """The template a task's pod starts from: its queue's coordinator's (as the official provider
    lets it win), else its own, else the executor's, else none."""
    return (
        request.coordinator_template
        or request.executor_config.pod_template_file
        or defaults.pod_template_file
    )


def base_pod(request: PodRequest, defaults: PodDefaults) -> dict[str, Any]:
    """The first layer of a task's pod: its template, or the default pod when there is none."""
    path = template_path(request, defaults)
    pod = load_template(path) if path else default_pod(defaults.fallback_image)
    for container in pod["spec"]["containers"]:
        if container.get("name") == BASE_CONTAINER:
            break
    else:
        # The first container runs the task, whatever the template called it.
        pod["spec"]["containers"][0]["name"] = BASE_CONTAINER
    return pod


def guarded(request: PodRequest, defaults: PodDefaults) -> bool:
    """Whether a task's command runs under the disruption guard: only a task's (a callback or a
    connection test is never launched again), and only while a disruption may relaunch it."""
    own = request.executor_config.disruption_retries
    retries = defaults.disruption_retries if own is None else own
    return defaults.disruption_guard and isinstance(request.ref, identity.TaskRef) and retries > 0


def build_pod(request: PodRequest, defaults: PodDefaults) -> dict[str, Any]:
    """The pod JSON for one task try, before any mutation hook."""
    pod = base_pod(request, defaults)
    base = next(c for c in pod["spec"]["containers"] if c["name"] == BASE_CONTAINER)
    template_env = {e.get("name") for e in base.get("env") or []}
    env: list[dict[str, Any]] = [
        {"name": k, "value": v} for k, v in request.env.items() if k not in template_env
    ]
    command = request.command
    if guarded(request, defaults):
        command = disruption_guard.guarded(command, defaults.disruption_guard_source)
        env += [
            {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}
            for name, path in (
                (disruption_guard.POD_NAME_ENV, "metadata.name"),
                (disruption_guard.POD_NAMESPACE_ENV, "metadata.namespace"),
            )
        ]
    executor_layer: dict[str, Any] = {
        "metadata": {
            "name": identity.pod_name(request.ref, request.launch_attempt),
            "namespace": pod.get("metadata", {}).get("namespace") or defaults.namespace,
            "labels": {
                **identity.labels(
                    request.ref,
                    request.scheduler_id,
                    request.airflow_version,
                    request.ti_id,
                    request.executor_id,
                ),
                **identity.cluster_labels(defaults.cluster),
            },
            "annotations": {
                **identity.annotations_for(request.ref, request.ti_id),
                **({identity.LAUNCH_ANNOTATION: request.launch_id} if request.launch_id else {}),
            },
        },
        "spec": {
            "containers": [
                {
                    "name": BASE_CONTAINER,
                    "args": command,
                    **({"env": env} if env else {}),
                    **(
                        {"image": image}
                        if (image := request.coordinator_image or defaults.worker_image)
                        else {}
                    ),
                    # A worker that dies before it can report (an import error, a callback that
                    # raises) leaves the end of its log in its status, and so in the failure
                    # reason, unless the template chose otherwise.
                    **(
                        {}
                        if "terminationMessagePolicy" in base
                        else {"terminationMessagePolicy": "FallbackToLogsOnError"}
                    ),
                }
            ]
        },
    }
    if not base.get("image") and not (request.coordinator_image or defaults.worker_image):
        executor_layer["spec"]["containers"][0]["image"] = defaults.fallback_image
    grace = defaults.termination_grace_period_seconds
    if grace is not None and "terminationGracePeriodSeconds" not in pod["spec"]:
        executor_layer["spec"]["terminationGracePeriodSeconds"] = grace
    pod = merge(pod, executor_layer)
    for override in request.executor_config.overrides:
        pod = merge(pod, override)
    # The executor's identity cannot be overridden: it is how the task is found again.
    pod["metadata"]["name"] = executor_layer["metadata"]["name"]
    pod["metadata"]["labels"].update(executor_layer["metadata"]["labels"])
    if defaults.cluster == identity.DEFAULT_CLUSTER:
        pod["metadata"]["labels"].pop(identity.CLUSTER_LABEL, None)
    pod["metadata"]["annotations"].update(executor_layer["metadata"]["annotations"])
    pod.setdefault("apiVersion", "v1")
    pod.setdefault("kind", "Pod")
    validate(pod)
    return pod


def validate(pod: dict[str, Any], shape: bool = False) -> None:
    """Catch what the API server would refuse, or a kubelet never run, with a message a person can
    act on. `shape`: check every field's type too (for a pod no layer check has seen)."""
    if shape and (found := pod_shape.problems(pod)):
        raise PodBuildError(pod_shape.describe(found))
    meta = pod.get("metadata")
    if not isinstance(meta, dict) or not meta.get("name"):
        raise PodBuildError("metadata.name is missing")
    if not meta.get("namespace"):
        raise PodBuildError("metadata.namespace is empty: set [kubernetes_executor] namespace")
    if len(meta["name"]) > MAX_NAME:
        raise PodBuildError(f"metadata.name is longer than {MAX_NAME} characters")
    for key, value in (meta.get("labels") or {}).items():
        if not isinstance(value, str) or identity.safe_label_value(value) != value:
            raise PodBuildError(
                f"metadata.labels[{key!r}]: {value!r} is not a valid label value "
                f"(at most 63 characters of letters, digits, '-', '_', '.')"
            )
    spec = pod.get("spec")
    if not isinstance(spec, dict) or not spec.get("containers"):
        raise PodBuildError("spec.containers is empty")
    for field_name in ("initContainers", "containers"):
        for container in spec.get(field_name) or []:
            image = container.get("image")
            where = f"spec.{field_name}[{container.get('name')!r}].image"
            if not image:
                if field_name == "containers":
                    raise PodBuildError(f"{where} is empty")
                continue
            # The API server takes any text; the kubelet would then fail the pod with
            # InvalidImageName after it was scheduled, or never, on a node that pulls nothing.
            if not is_image_reference(image):
                raise PodBuildError(
                    f"{where}: {image!r} is not an image reference (like "
                    f"registry.example.com/team/app:1.2, app:1.2 or app@sha256:<digest>)"
                )


# The grammar of an image reference (github.com/distribution/reference, which the kubelet parses):
# [host[:port]/]path[:tag][@digest], the path in lower case.
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
_IMAGE_REFERENCE = re.compile(
    rf"^(?:{_HOST}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
    r"(?::[\w][\w.-]{0,127})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$",
    re.ASCII,
)
MAX_IMAGE_NAME = 255


def is_image_reference(image: Any) -> bool:
    """Whether `image` parses as an image reference, as the kubelet would parse it."""
    if not isinstance(image, str) or not _IMAGE_REFERENCE.match(image):
        return False
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name = name[: len(name) - len(last) + last.index(":")]
    return len(name) <= MAX_IMAGE_NAME
