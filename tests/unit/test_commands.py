"""`airflow kubernetes ...`: which pods cleanup-pods deletes, and where each field of a pod came from."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from k8s_executor import airflow_adapter, identity
from k8s_executor.commands import cleanup_reason, cli_commands, render_pod
from k8s_executor.executor import KubernetesExecutor
from k8s_executor.executor_config import ExecutorConfigError
from k8s_executor.explain import (
    SOURCE_DEFAULT,
    SOURCE_DICT_FORM,
    SOURCE_HOOK,
    SOURCE_POD_OVERRIDE,
    SOURCE_TEMPLATE,
    flatten,
    pod_layers,
    provenance,
)
from k8s_executor.settings import ExecutorSettings

try:
    from airflow.providers.standard.operators.empty import EmptyOperator
    from airflow.sdk import DAG
except ImportError:  # Airflow 2
    from airflow import DAG
    from airflow.operators.empty import EmptyOperator

NOW = datetime.datetime(2026, 5, 1, 12, 0, tzinfo=datetime.timezone.utc)
THIRTY_MIN = datetime.timedelta(minutes=30)


def pod(
    phase: str | None,
    *,
    age_min: float = 1,
    ours: bool = True,
    reason: str | None = None,
    deleting: bool = False,
) -> dict[str, Any]:
    created = NOW - datetime.timedelta(minutes=age_min)
    meta: dict[str, Any] = {
        "name": "p",
        "namespace": "ns",
        "creationTimestamp": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "labels": {"kubernetes_executor": "True"} if ours else {"app": "other"},
    }
    if deleting:
        meta["deletionTimestamp"] = NOW.strftime("%Y-%m-%dT%H:%M:%SZ")
    status: dict[str, Any] = {}
    if phase:
        status["phase"] = phase
    if reason:
        status["reason"] = reason
    return {"metadata": meta, "status": status}


# --- cleanup_reason ---------------------------------------------------------------
def test_succeeded_pod_is_deleted() -> None:
    assert cleanup_reason(pod("Succeeded"), NOW, THIRTY_MIN) == "succeeded"


def test_failed_pod_is_deleted() -> None:
    assert cleanup_reason(pod("Failed"), NOW, THIRTY_MIN) == "failed"


def test_evicted_pod_is_deleted_as_evicted() -> None:
    assert cleanup_reason(pod("Failed", reason="Evicted"), NOW, THIRTY_MIN) == "evicted"


def test_running_pod_is_never_touched_however_old() -> None:
    assert cleanup_reason(pod("Running", age_min=10_000), NOW, THIRTY_MIN) is None


def test_pending_pod_younger_than_the_threshold_is_kept() -> None:
    assert cleanup_reason(pod("Pending", age_min=29), NOW, THIRTY_MIN) is None


def test_pending_pod_exactly_at_the_threshold_is_kept() -> None:
    assert cleanup_reason(pod("Pending", age_min=30), NOW, THIRTY_MIN) is None


def test_pending_pod_older_than_the_threshold_is_deleted_with_its_age() -> None:
    reason = cleanup_reason(pod("Pending", age_min=45), NOW, THIRTY_MIN)
    assert reason == "pending for 45.0 min (threshold 30 min)"


def test_threshold_takes_fractions_of_a_minute() -> None:
    half = datetime.timedelta(minutes=0.5)
    assert cleanup_reason(pod("Pending", age_min=0.4), NOW, half) is None
    assert cleanup_reason(pod("Pending", age_min=0.6), NOW, half) is not None


def test_pod_without_a_phase_yet_is_kept() -> None:
    assert cleanup_reason(pod(None, age_min=60), NOW, THIRTY_MIN) is None


def test_pod_of_unknown_phase_is_kept() -> None:
    assert cleanup_reason(pod("Unknown", age_min=60), NOW, THIRTY_MIN) is None


def test_pod_of_someone_else_is_never_touched() -> None:
    assert cleanup_reason(pod("Succeeded", ours=False), NOW, THIRTY_MIN) is None


def test_pod_already_being_deleted_is_left_alone() -> None:
    assert cleanup_reason(pod("Failed", deleting=True), NOW, THIRTY_MIN) is None


# --- provenance -------------------------------------------------------------------
def test_flatten_names_entries_of_named_lists_and_keeps_other_lists_whole() -> None:
    flat = flatten(
        {
            "spec": {
                "containers": [{"name": "base", "image": "i", "env": [{"name": "A", "value": "1"}]}],
                "tolerations": [{"key": "k"}],
            }
        }
    )
    assert flat == {
        "spec.containers[base].image": "i",
        "spec.containers[base].env[A].value": "1",
        "spec.tolerations": [{"key": "k"}],
    }


def test_each_field_comes_from_the_last_layer_that_changed_it() -> None:
    first = {"metadata": {"labels": {"a": "1"}}, "spec": {"restartPolicy": "Never"}}
    second = {"metadata": {"labels": {"a": "2", "b": "1"}}, "spec": {"restartPolicy": "Never"}}
    third = {"metadata": {"labels": {"a": "2", "b": "1", "c": "1"}}, "spec": {"restartPolicy": "Never"}}
    assert provenance([("one", first), ("two", second), ("three", third)]) == {
        "metadata.labels.a": "two",
        "metadata.labels.b": "two",
        "metadata.labels.c": "three",
        "spec.restartPolicy": "one",
    }


def test_a_layer_that_repeats_a_value_does_not_claim_it() -> None:
    layers = [("one", {"spec": {"hostNetwork": False}}), ("two", {"spec": {"hostNetwork": False}})]
    assert provenance(layers) == {"spec.hostNetwork": "one"}


def test_a_field_a_later_layer_removed_is_not_reported() -> None:
    layers = [
        ("one", {"metadata": {"labels": {"a": "1", "b": "1"}}}),
        ("two", {"metadata": {"labels": {"a": "1"}}}),
    ]
    assert provenance(layers) == {"metadata.labels.a": "one"}


def test_a_replaced_list_belongs_to_the_layer_that_replaced_it() -> None:
    layers = [
        ("one", {"spec": {"tolerations": [{"key": "a"}]}}),
        ("two", {"spec": {"tolerations": [{"key": "b"}]}}),
    ]
    assert provenance(layers) == {"spec.tolerations": "two"}


def test_named_entries_merge_field_by_field_across_layers() -> None:
    one = {"spec": {"containers": [{"name": "base", "image": "a", "args": ["x"]}]}}
    two = {
        "spec": {
            "containers": [{"name": "base", "image": "b", "args": ["x"]}, {"name": "side", "image": "s"}]
        }
    }
    assert provenance([("one", one), ("two", two)]) == {
        "spec.containers[base].image": "two",
        "spec.containers[base].args": "one",
        "spec.containers[side].image": "two",
    }


# --- the layers of a real task's pod -----------------------------------------------
def task_with(config: dict[str, Any] | None) -> Any:
    with DAG("explained", schedule=None, start_date=datetime.datetime(2026, 1, 1)):
        return EmptyOperator(task_id="t", executor_config=config)


SETTINGS = ExecutorSettings(namespace="ns", in_cluster=False)


def test_layers_name_every_source_and_end_with_the_launched_pod(tmp_path: Path) -> None:
    template = tmp_path / "template.yaml"
    template.write_text(
        yaml.safe_dump(
            {
                "metadata": {"labels": {"from": "template"}},
                "spec": {
                    "serviceAccountName": "worker",
                    "containers": [{"name": "worker", "image": "tmpl:1", "workingDir": "/work"}],
                },
            }
        )
    )
    task = task_with(
        {
            "pod_template_file": str(template),
            "KubernetesExecutor": {"image": "dict:1", "labels": {"team": "data"}},
            "pod_override": {
                "metadata": {"labels": {"team": "override"}},
                "spec": {"priorityClassName": "high"},
            },
        }
    )
    layers = pod_layers(task, "run", SETTINGS)
    assert [source for source, _ in layers] == [
        SOURCE_TEMPLATE,
        SOURCE_DEFAULT,
        SOURCE_DICT_FORM,
        SOURCE_POD_OVERRIDE,
        SOURCE_HOOK,
    ]
    assert layers[-1][1] == render_pod(task, "run", SETTINGS)
    sources = provenance(layers)
    assert sources["metadata.labels.from"] == SOURCE_TEMPLATE
    assert sources["spec.serviceAccountName"] == SOURCE_TEMPLATE
    # The template's first container is renamed `base`; its fields still belong to the template.
    assert sources["spec.containers[base].workingDir"] == SOURCE_TEMPLATE
    assert sources["spec.containers[base].image"] == SOURCE_DICT_FORM
    assert sources["metadata.labels.team"] == SOURCE_POD_OVERRIDE
    assert sources["spec.priorityClassName"] == SOURCE_POD_OVERRIDE
    assert sources["metadata.name"] == SOURCE_DEFAULT
    assert sources["metadata.namespace"] == SOURCE_DEFAULT
    assert sources["spec.containers[base].args"] == SOURCE_DEFAULT


def test_without_a_template_the_first_layer_is_the_default_pod() -> None:
    layers = pod_layers(task_with(None), "run", SETTINGS)
    assert [source for source, _ in layers] == [SOURCE_DEFAULT, SOURCE_DEFAULT, SOURCE_HOOK]
    assert set(provenance(layers).values()) == {SOURCE_DEFAULT}


def test_a_rendered_pod_carries_the_owner_label_its_executor_launches_it_with(
    configure_executors: Callable[[str], None],
) -> None:
    from airflow.executors.executor_loader import ExecutorLoader

    configure_executors("LocalExecutor,pods:k8s_executor.KubernetesExecutor")
    # The executor as Airflow's loader makes it: its name is set from `[core] executor`.
    executor = KubernetesExecutor()
    executor.name = next(name for name in ExecutorLoader.get_executor_names() if name.alias == "pods")
    launched_with = airflow_adapter.executor_identity(executor)
    assert launched_with == "pods"
    labels = render_pod(task_with(None), "run", SETTINGS)["metadata"]["labels"]
    assert labels[identity.OWNER_LABEL] == launched_with
    # Every layer explain shows is of the same executor.
    for _, pod in pod_layers(task_with(None), "run", SETTINGS)[1:]:  # the first is the template's
        assert pod["metadata"]["labels"][identity.OWNER_LABEL] == launched_with


def test_the_group_is_named_kubernetes_with_three_commands() -> None:
    [group] = cli_commands()
    assert group.name == "kubernetes"
    assert [c.name for c in group.subcommands] == ["cleanup-pods", "generate-dag-yaml", "explain"]


@pytest.mark.parametrize("config", [{"KubernetesExecutor": {"imagee": "x"}}, {"pod_override": 5}])
def test_a_bad_executor_config_is_refused_before_any_layer(config: dict[str, Any]) -> None:
    with pytest.raises(ExecutorConfigError):
        pod_layers(task_with(config), "run", SETTINGS)
