"""`get_base_pod_from_template`: a template file as a `V1Pod`, for code that wants models."""

from __future__ import annotations

from typing import Any

from kubernetes.client import V1Pod

from k8s_executor.identity import BASE_CONTAINER
from k8s_executor.kube_client import to_model
from k8s_executor.pod_building import default_pod, load_template


def get_base_pod_from_template(pod_template_file: str | None, kube_client: Any = None) -> V1Pod:
    """The pod of `pod_template_file` (or the default pod when None); a missing file raises."""
    pod = load_template(pod_template_file) if pod_template_file else default_pod("apache/airflow")
    pod["spec"]["containers"][0].setdefault("name", BASE_CONTAINER)
    api = kube_client.api_client if hasattr(kube_client, "api_client") else kube_client
    model: V1Pod = to_model(pod, "V1Pod", api)
    return model
