import re

import pytest

from k8s_executor import identity
from k8s_executor.identity import (
    TaskRef,
    annotations_for,
    labels,
    pod_name,
    ref_from_annotations,
    safe_label_value,
)

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


@pytest.mark.parametrize(
    "value", ["simple", "manual__2024-01-01T00.00.00", "a" * 63, "", "With_Caps.and-dots"]
)
def test_valid_label_values_pass_unchanged(value: str) -> None:
    assert safe_label_value(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "a" * 64,
        "manual__2024-01-01T00:00:00+00:00",
        "данные_задача",
        "-leading",
        "trailing-",
        "x" * 300,
        "日本",
    ],
)
def test_invalid_label_values_become_valid_stable_and_distinct(value: str) -> None:
    safe = safe_label_value(value)
    assert len(safe) <= 63 and LABEL_VALUE.match(safe)
    assert safe == safe_label_value(value)
    assert safe != safe_label_value(value + "x")


@pytest.mark.parametrize(
    "ref",
    [
        TaskRef("dag", "task", "run"),
        TaskRef("D" * 200, "T.with.dots_and_UNDERSCORES" * 5, "manual__2024", try_number=10, map_index=999),
        TaskRef("данные", "задача", "run"),
        TaskRef("_", "_", "_"),
    ],
)
def test_pod_names_are_valid_dns_labels(ref: TaskRef) -> None:
    name = pod_name(ref)
    assert len(name) <= 63 and DNS_LABEL.match(name), name
    assert pod_name(ref) == name


def test_pod_names_differ_per_try_map_index_and_relaunch() -> None:
    base = TaskRef("dag", "task", "run", try_number=1, map_index=-1)
    names = {
        pod_name(base),
        pod_name(base._replace(try_number=2)),
        pod_name(base._replace(map_index=0)),
        pod_name(base._replace(run_id="run2")),
        pod_name(base, launch_attempt=1),
        pod_name(TaskRef("Dag", "task", "run")),  # ids differing only by case
    }
    assert len(names) == 6


def test_labels_and_annotations_round_trip_the_key() -> None:
    ref = TaskRef("d" * 100, "t", "manual__2024-01-01T00:00:00+00:00", try_number=10, map_index=-1)
    out = labels(ref, "42", "3.3.2", ti_id="0195")
    assert all(len(v) <= 63 and LABEL_VALUE.match(v) for v in out.values())
    assert "map_index" not in out
    assert labels(ref._replace(map_index=3), "42", "3.3.2")["map_index"] == "3"
    assert ref_from_annotations(annotations_for(ref, "0195")) == ref
    assert ref_from_annotations({"dag_id": "x"}) is None


def test_try_selector_names_one_try_and_leaves_out_mapped_instances_of_an_unmapped_task() -> None:
    assert identity.try_selector(identity.TaskRef("d", "t", "manual__2024-01-01T00:00:00+00:00", 2)) == (
        "dag_id=d,task_id=t,run_id=manual__2024-01-01T00_00_00_00_00-"
        + identity.safe_label_value("manual__2024-01-01T00:00:00+00:00").rsplit("-", 1)[1]
        + ",try_number=2,!map_index"
    )
    assert identity.try_selector(identity.TaskRef("d", "t", "r", 1, 3)).endswith(",try_number=1,map_index=3")


def test_the_specifications_make_safe_pod_id_names_the_pod_of_a_try() -> None:
    """`AirflowKubernetesScheduler._make_safe_pod_id`, the specification's name, is identity.pod_name."""
    from k8s_executor.scheduler import AirflowKubernetesScheduler

    made = AirflowKubernetesScheduler._make_safe_pod_id(None, "my_dag", "my_task", "manual__2024-01-01")  # type: ignore[arg-type]
    assert made == identity.pod_name(identity.TaskRef("my_dag", "my_task", "manual__2024-01-01"))
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", made) and len(made) <= 63


def test_each_configured_executor_and_team_has_its_own_owner_label_value() -> None:
    owners = {
        identity.executor_identity("KubernetesExecutor"),
        identity.executor_identity("k8s"),
        identity.executor_identity("KubernetesExecutor", team="team_a"),
        identity.executor_identity("KubernetesExecutor", team="team_b"),
        identity.executor_identity("LocalKubernetesExecutor"),
    }
    assert len(owners) == 5
    assert identity.executor_identity("KubernetesExecutor", team="team_a") == "team_a.KubernetesExecutor"
    # Any team name gives a valid label value, the same each time.
    odd = identity.executor_identity("k8s", team="Team A/β" * 10)
    assert identity.safe_label_value(odd) == odd and odd == identity.executor_identity(
        "k8s", team="Team A/β" * 10
    )


def test_the_watch_selects_one_executors_pods_and_nothing_of_the_official_providers() -> None:
    ref = TaskRef("d", "t", "r")
    ours = labels(ref, "42", "3.3.2", executor_id="team_a.k8s")
    assert ours[identity.OWNER_LABEL] == "team_a.k8s" and ours[identity.SCHEDULER_LABEL] == "42"
    # Neither label the official provider's watcher (airflow-worker=<job id>) or its completed-pod
    # sweep (kubernetes_executor=True) selects on.
    assert identity.LEGACY_SCHEDULER_LABEL not in ours and identity.LEGACY_EXECUTOR_LABEL not in ours
    assert (
        identity.selector("team_a.k8s")
        == "airflow-k8s-executor/executor=team_a.k8s,airflow_executor_done!=True,!airflow-k8s-executor/cluster"
    )
    # A cluster of [kubernetes_executor] clusters sees only its own pods, even on one API server.
    assert (
        identity.selector("k8s", "42", cluster="gpu")
        == "airflow-k8s-executor/executor=k8s,airflow_executor_done!=True,airflow-k8s-executor/cluster=gpu,"
        "airflow-k8s-executor/scheduler=42"
    )
    assert identity.cluster_labels("gpu") == {identity.CLUSTER_LABEL: "gpu"}
    assert identity.cluster_labels(identity.DEFAULT_CLUSTER) == {}
    # What readers outside the executor (the demo, the CLI) list: finished pods too.
    assert identity.executor_pods_selector() == "airflow-k8s-executor/executor=KubernetesExecutor"
    assert identity.executor_pods_selector(None) == "airflow-k8s-executor/executor"
    assert identity.scheduler_of(ours) == "42"
    assert identity.scheduler_of({"kubernetes_executor": "True", "airflow-worker": "7"}) == "7"
    assert identity.launched_by_an_executor(ours)
    assert identity.launched_by_an_executor({"kubernetes_executor": "True"})
    assert not identity.launched_by_an_executor({"app": "web"})
    # A legacy pod adopted gets an owner and leaves the official provider's selectors.
    assert identity.adopted_labels("k8s", "43") == {
        identity.OWNER_LABEL: "k8s",
        identity.SCHEDULER_LABEL: "43",
        "kubernetes_executor": None,
        "airflow-worker": None,
    }
