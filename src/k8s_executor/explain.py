"""Where each field of a task's pod came from: `airflow kubernetes explain`.

A pod is built in layers (template or default pod, the executor's fields, the two forms of the
task's `executor_config`, the operator's mutation hook), each overriding the one before by
pod_building's merge rule. The layers are built here by the executor's own functions, with the
task's executor_config cut down to the keys applied so far, so every merge happens as it does at
launch; comparing them leaf by leaf names the layer that set each field.
"""

from __future__ import annotations

from typing import Any

from k8s_executor import executor_config as executor_config_module
from k8s_executor.airflow_adapter import pod_defaults
from k8s_executor.pod_building import base_pod, build_pod, is_named_list, template_path
from k8s_executor.settings import ExecutorSettings
from k8s_executor.workloads import apply_mutation_hook, request_for_rendering

SOURCE_DEFAULT = "default"
SOURCE_TEMPLATE = "template file"
SOURCE_DICT_FORM = "executor_config (dict form)"
SOURCE_POD_OVERRIDE = "executor_config (pod_override)"
SOURCE_HOOK = "mutation hook"


def pod_layers(task: Any, run_id: str, settings: ExecutorSettings) -> list[tuple[str, dict[str, Any]]]:
    """The task's pod after each layer, named by its source; the last is the pod the CLI renders
    (`commands.render_pod`)."""
    raw: dict[str, Any] = task.executor_config or {}
    defaults = pod_defaults(settings)
    request = request_for_rendering(task, run_id, raw)  # refuses a bad executor_config before any layer
    first = SOURCE_TEMPLATE if template_path(request, defaults) else SOURCE_DEFAULT
    applied = {k: raw[k] for k in ("pod_template_file",) if raw.get(k) is not None}
    layers = [
        (first, base_pod(request, defaults)),
        (SOURCE_DEFAULT, build_pod(request_for_rendering(task, run_id, applied), defaults)),
    ]
    for key, source in (
        (executor_config_module.DICT_FORM_KEY, SOURCE_DICT_FORM),
        ("pod_override", SOURCE_POD_OVERRIDE),
    ):
        if raw.get(key) is not None:
            applied[key] = raw[key]
            layers.append((source, build_pod(request_for_rendering(task, run_id, applied), defaults)))
    layers.append((SOURCE_HOOK, apply_mutation_hook(layers[-1][1])))
    return layers


def flatten(value: Any, path: str = "") -> dict[str, Any]:
    """Every leaf of a pod by its path, e.g. `spec.containers[base].env[X].value`.

    Paths follow the merge rule: entries of named lists by name, other lists whole (a
    later layer replaces them whole), so a path means the same thing in every layer.
    """
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{path}.{key}" if path else str(key)))
        return out
    if isinstance(value, list) and value and is_named_list(value):
        out = {}
        for item in value:
            rest = {k: v for k, v in item.items() if k != "name"}
            out.update(flatten(rest, f"{path}[{item['name']}]"))
        return out
    return {path: value}


def provenance(layers: list[tuple[str, dict[str, Any]]]) -> dict[str, str]:
    """For each leaf of the last layer, the source of the last layer that changed it.

    `layers` are the whole pod after each step, in the order the steps apply, each
    with the name of its source.
    """
    sources: dict[str, str] = {}
    previous: dict[str, Any] = {}
    for source, pod in layers:
        current = flatten(pod)
        for path, value in current.items():
            if path not in previous or previous[path] != value:
                sources[path] = source
        previous = current
    return {path: sources[path] for path in previous}
