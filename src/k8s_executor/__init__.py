"""A Kubernetes executor for Apache Airflow that never loses a task.

The public names are loaded on first use, so the pure modules (and the helper processes
that use only them) do not import Airflow.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "KubernetesExecutor": "k8s_executor.executor",
    "LocalKubernetesExecutor": "k8s_executor.local_kubernetes_executor",
    "KubernetesJobWatcher": "k8s_executor.scheduler",
    "AirflowKubernetesScheduler": "k8s_executor.scheduler",
    "ResourceVersion": "k8s_executor.resource_version",
    "get_base_pod_from_template": "k8s_executor.templates",
}

__all__ = list(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'k8s_executor' has no attribute {name!r}")
