import json

import pytest

from k8s_executor.settings import ExecutorSettings, SettingsError


def test_defaults_match_the_official_provider_where_not_safer() -> None:
    s = ExecutorSettings.parse({})
    assert s.namespace == "default" and s.delete_worker_pods and not s.delete_worker_pods_on_failure
    assert s.worker_pod_pending_fatal_container_state_reasons[0] == "CreateContainerConfigError"
    assert s.in_cluster and s.verify_ssl and s.tcp_keep_idle == 120


def test_strings_from_airflow_cfg_are_parsed() -> None:
    s = ExecutorSettings.parse(
        {
            "delete_worker_pods": "False",
            "worker_pods_creation_batch_size": "10",
            "multi_namespace_mode": "True",
            "multi_namespace_mode_namespace_list": "airflow-prod, airflow-staging",
            "delete_option_kwargs": '{"grace_period_seconds": 30, "propagation_policy": "Foreground"}',
            "api_client_retry_configuration": '{"total": 3, "backoff_factor": 0.5}',
            "cluster_context": "",
            "termination_grace_period_seconds": "30",
            "unrelated_option_of_another_provider": "x",
        }
    )
    assert s.termination_grace_period_seconds == 30
    assert (
        ExecutorSettings.parse({"termination_grace_period_seconds": ""}).termination_grace_period_seconds
        is None
    )
    assert s.delete_worker_pods is False
    assert s.worker_pods_creation_batch_size == 10
    assert s.watched_namespaces == ["airflow-prod", "airflow-staging"]
    assert s.delete_option_kwargs["propagation_policy"] == "Foreground"
    assert s.cluster_context is None


@pytest.mark.parametrize(
    ("raw", "option"),
    [
        ({"worker_pods_creation_batch_size": "many"}, "worker_pods_creation_batch_size"),
        ({"worker_pods_creation_batch_size": "0"}, "worker_pods_creation_batch_size"),
        ({"delete_worker_pods": "perhaps"}, "delete_worker_pods"),
        ({"delete_option_kwargs": "{not json"}, "delete_option_kwargs"),
        ({"delete_option_kwargs": "[1]"}, "delete_option_kwargs"),
    ],
)
def test_bad_values_name_the_option(raw: dict, option: str) -> None:
    with pytest.raises(SettingsError, match=rf"\[kubernetes_executor\] {option}"):
        ExecutorSettings.parse(raw)


def test_all_namespaces_when_multi_namespace_list_is_empty() -> None:
    assert ExecutorSettings.parse({"multi_namespace_mode": "True"}).watched_namespaces == [None]


def test_every_metric_is_documented() -> None:
    from pathlib import Path

    from k8s_executor import metrics

    doc = (Path(__file__).parents[2] / "docs" / "metrics.md").read_text()
    for name in metrics.NAMES:
        assert f"`{metrics.PREFIX}.{name}`" in doc, f"{name} is missing from docs/metrics.md"


def test_only_values_the_operator_set_are_read_not_another_providers_defaults(monkeypatch) -> None:
    from k8s_executor.airflow_adapter import read_settings

    monkeypatch.setenv("AIRFLOW__KUBERNETES_EXECUTOR__NAMESPACE", "team-a")
    monkeypatch.delenv("AIRFLOW__KUBERNETES_EXECUTOR__WORKER_PODS_CREATION_BATCH_SIZE", raising=False)
    raw = read_settings()
    assert raw["namespace"] == "team-a"
    # With the official provider installed, Airflow answers this unset option with its default of 1.
    assert "worker_pods_creation_batch_size" not in raw
    assert ExecutorSettings.parse(raw).worker_pods_creation_batch_size == 8192


def test_a_teams_own_values_override_the_installations_and_the_rest_is_shared(monkeypatch) -> None:
    from k8s_executor.airflow_adapter import AIRFLOW_V3, read_settings

    if not AIRFLOW_V3:
        pytest.skip("teams are an Airflow 3 feature: Airflow 2's executors have no team")

    monkeypatch.setenv("AIRFLOW__KUBERNETES_EXECUTOR__NAMESPACE", "shared")
    monkeypatch.setenv("AIRFLOW__KUBERNETES_EXECUTOR__DELETE_WORKER_PODS", "False")
    monkeypatch.setenv("AIRFLOW__TEAM_A___KUBERNETES_EXECUTOR__NAMESPACE", "ns-a")
    monkeypatch.setenv("AIRFLOW__TEAM_A___KUBERNETES_EXECUTOR__POD_TEMPLATE_FILE", "/templates/a.yaml")
    team_a = ExecutorSettings.parse(read_settings(team="team_a"))
    team_b = ExecutorSettings.parse(read_settings(team="team_b"))
    installation = ExecutorSettings.parse(read_settings())
    assert (team_a.namespace, team_a.pod_template_file, team_a.delete_worker_pods) == (
        "ns-a",
        "/templates/a.yaml",
        False,
    )
    assert (team_b.namespace, team_b.pod_template_file, team_b.delete_worker_pods) == ("shared", "", False)
    assert (installation.namespace, installation.pod_template_file) == ("shared", "")


def test_every_option_is_registered_with_airflow() -> None:
    """Airflow learns the sections and defaults from the provider entry point (`airflow config list`)."""
    from airflow.configuration import retrieve_configuration_description

    from k8s_executor.settings import LOCAL_SECTION, SECTION, LocalKubernetesSettings

    registered = retrieve_configuration_description(
        include_airflow=False, include_providers=True, selected_provider="airflow-k8s-executor"
    )
    for section, model in ((SECTION, ExecutorSettings), (LOCAL_SECTION, LocalKubernetesSettings)):
        assert set(model.model_fields) <= set(registered[section]["options"]), section


def test_each_team_may_have_its_own_clusters(monkeypatch) -> None:
    from k8s_executor.airflow_adapter import AIRFLOW_V3, read_settings

    if not AIRFLOW_V3:
        pytest.skip("teams are an Airflow 3 feature: Airflow 2's executors have no team")

    gpu = {"config_file": "/etc/kube/team-a-gpu.yaml", "namespace": "team-a-gpu"}
    monkeypatch.setenv("AIRFLOW__TEAM_A___KUBERNETES_EXECUTOR__CLUSTERS", json.dumps({"gpu": gpu}))
    monkeypatch.setenv("AIRFLOW__TEAM_A___KUBERNETES_EXECUTOR__QUEUE_CLUSTERS", '{"cuda": "gpu"}')
    team_a = ExecutorSettings.parse(read_settings(team="team_a")).cluster_settings()
    team_b = ExecutorSettings.parse(read_settings(team="team_b")).cluster_settings()
    assert list(team_a) == ["default", "gpu"] and team_a["gpu"].namespace == "team-a-gpu"
    assert list(team_b) == ["default"]
