"""`get_base_pod_from_template` and the mutation hook see client models made through the client's
public `deserialize`, and the models go back to the same JSON."""

from __future__ import annotations

from pathlib import Path

import yaml
from kubernetes.client import V1Pod

from k8s_executor.kube_client import from_model, to_model
from k8s_executor.templates import get_base_pod_from_template

TEMPLATE = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"labels": {"team": "data"}, "creationTimestamp": "2026-05-01T12:00:00Z"},
    "spec": {
        "restartPolicy": "Never",
        "containers": [
            {
                "name": "worker",
                "image": "tmpl:1",
                "resources": {"requests": {"memory": "1Gi"}},
                "env": [{"name": "A", "value": "1"}],
            }
        ],
    },
}


def test_a_template_file_becomes_a_v1pod_whose_first_container_runs_the_task(tmp_path: Path) -> None:
    path = tmp_path / "pod.yaml"
    path.write_text(yaml.safe_dump(TEMPLATE))
    model = get_base_pod_from_template(str(path))
    assert isinstance(model, V1Pod)
    assert model.metadata.labels == {"team": "data"}
    assert model.spec.containers[0].name == "worker"
    assert model.spec.containers[0].env[0].value == "1"
    assert get_base_pod_from_template(None).spec.containers[0].name == "base"


def test_a_pod_goes_to_a_model_and_back_unchanged() -> None:
    model = to_model(TEMPLATE, "V1Pod")
    assert model.metadata.creation_timestamp.year == 2026
    assert from_model(model) == {
        **TEMPLATE,
        "metadata": {**TEMPLATE["metadata"], "creationTimestamp": "2026-05-01T12:00:00+00:00"},
    }
