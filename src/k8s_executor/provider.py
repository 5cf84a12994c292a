"""Provider metadata: registers the executors and their options with Airflow."""

from __future__ import annotations

from typing import Any

from k8s_executor import __version__
from k8s_executor.settings import (
    LOCAL_SECTION,
    SECTION,
    ExecutorSettings,
    LocalKubernetesSettings,
    option_definitions,
)


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "airflow-k8s-executor",
        "name": "Kubernetes executor (k8s_executor)",
        "description": "Runs every Airflow task in its own Kubernetes pod.",
        "versions": [__version__],
        "executors": [
            "k8s_executor.KubernetesExecutor",
            "k8s_executor.LocalKubernetesExecutor",
        ],
        "config": {
            SECTION: {
                "description": "Settings of k8s_executor.KubernetesExecutor (compatible with the official provider).",
                "options": option_definitions(ExecutorSettings),
            },
            LOCAL_SECTION: {
                "description": "Settings of k8s_executor.LocalKubernetesExecutor.",
                "options": option_definitions(LocalKubernetesSettings),
            },
        },
    }
