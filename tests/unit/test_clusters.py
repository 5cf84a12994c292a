"""Several clusters: their settings, checked at start, and the routing of a task to one."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from k8s_executor import clusters
from k8s_executor.executor_config import ExecutorConfigError
from k8s_executor.identity import DEFAULT_CLUSTER
from k8s_executor.pod_building import PodBuildError
from k8s_executor.settings import ExecutorSettings, SettingsError
from tests.helpers import RecordedStats

GPU = {"config_file": "/etc/kube/gpu.yaml", "cluster_context": "gpu", "namespace": "gpu-tasks", "api_qps": 50}


def parse(**raw: object) -> ExecutorSettings:
    return ExecutorSettings.parse({k: json.dumps(v) if isinstance(v, dict) else v for k, v in raw.items()})


def test_without_clusters_the_section_is_the_one_default_cluster() -> None:
    settings = parse(namespace="airflow")
    assert settings.cluster_settings() == {DEFAULT_CLUSTER: settings}


def test_a_cluster_takes_the_sections_values_it_does_not_set_but_never_its_connection() -> None:
    settings = parse(
        namespace="airflow",
        in_cluster="True",
        worker_container_repository="registry.example/airflow",
        api_burst="100",
        clusters={"gpu": GPU},
    )
    gpu = settings.cluster_settings()["gpu"]
    assert (gpu.namespace, gpu.api_qps, gpu.config_file, gpu.cluster_context) == (
        "gpu-tasks",
        50,
        "/etc/kube/gpu.yaml",
        "gpu",
    )
    assert (gpu.worker_container_repository, gpu.api_burst) == ("registry.example/airflow", 100)
    # The section's in_cluster is its own connection's, not the cluster's.
    assert gpu.in_cluster is False
    assert settings.cluster_settings()[DEFAULT_CLUSTER].in_cluster is True


def test_clusters_may_be_a_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "clusters.yaml"
    path.write_text(
        "gpu:\n  config_file: /etc/kube/gpu.yaml\n  namespace: gpu-tasks\neu:\n  in_cluster: true\n"
    )
    settings = ExecutorSettings.parse({"clusters": str(path), "queue_clusters": '{"cuda": "gpu"}'})
    assert list(settings.cluster_settings()) == [DEFAULT_CLUSTER, "gpu", "eu"]
    assert settings.cluster_settings()["eu"].in_cluster is True


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"clusters": {"gpu": {"namespace": "x"}}},
            "[kubernetes_executor] clusters.gpu: needs its connection: in_cluster: true, or config_file and "
            "cluster_context",
        ),
        (
            {"clusters": {"gpu": {**GPU, "api_qps": 0}}},
            "[kubernetes_executor] clusters.gpu.api_qps: Input should be greater than 0 (got 0)",
        ),
        (
            {"clusters": {"gpu": {**GPU, "namespace": "Not_A_Namespace"}}},
            "[kubernetes_executor] clusters.gpu.namespace: 'Not_A_Namespace' is not a namespace name",
        ),
        (
            {"clusters": {"gpu": {**GPU, "api_qsp": 5}}},
            "[kubernetes_executor] clusters.gpu.api_qsp: Extra inputs are not permitted (got 5)",
        ),
        ({"clusters": {"gpu": "gpu.yaml"}}, "clusters.gpu: must be an object of settings, got str"),
        ({"clusters": {"default": GPU}}, "clusters.default: 'default' is the section's own cluster"),
        ({"clusters": {"GPU pool": GPU}}, "clusters.GPU pool: a cluster's name is at most 63"),
        ({"clusters": "/no/such/clusters.yaml"}, "cannot read the file '/no/such/clusters.yaml'"),
        ({"clusters": "[1, 2]"}, "clusters: must be a JSON object"),
        (
            {"clusters": {"gpu": GPU}, "queue_clusters": {"cuda": "gpus"}},
            "queue_clusters: queue 'cuda' is routed to cluster 'gpus', which is not configured (clusters: "
            "default, gpu)",
        ),
    ],
)
def test_a_bad_cluster_stops_the_start_naming_the_cluster_and_the_key(
    raw: dict[str, object], message: str
) -> None:
    with pytest.raises(SettingsError) as refused:
        parse(**raw)
    assert message in str(refused.value)


def test_a_task_runs_where_its_executor_config_says_else_where_its_queue_goes_else_in_the_default() -> None:
    known = [DEFAULT_CLUSTER, "gpu", "eu"]
    queues = {"cuda": "gpu"}
    assert clusters.route("eu", "cuda", queues, known) == "eu"
    assert clusters.route(None, "cuda", queues, known) == "gpu"
    assert clusters.route(None, "default", queues, known) == DEFAULT_CLUSTER
    assert clusters.route(None, None, queues, known) == DEFAULT_CLUSTER
    assert clusters.route("default", "cuda", queues, known) == DEFAULT_CLUSTER


def test_an_unknown_cluster_fails_the_task_naming_the_clusters_there_are() -> None:
    with pytest.raises(ExecutorConfigError) as refused:
        clusters.route("gpus", None, {}, [DEFAULT_CLUSTER, "gpu"])
    assert str(refused.value) == (
        "executor_config['cluster'] is 'gpus', which is not one of the executor's clusters (default, gpu; "
        "[kubernetes_executor] clusters)"
    )


def test_a_namespace_the_cluster_does_not_watch_names_the_clusters_setting() -> None:
    gpu = parse(clusters={"gpu": GPU}).cluster_settings()["gpu"]
    clusters.check_watched(gpu, "gpu-tasks", "gpu", several=True)
    with pytest.raises(PodBuildError) as refused:
        clusters.check_watched(gpu, "airflow", "gpu", several=True)
    assert str(refused.value) == (
        "metadata.namespace 'airflow' is not watched by this executor in cluster gpu (watching gpu-tasks); "
        "set [kubernetes_executor] clusters, cluster gpu: multi_namespace_mode = True and add it to "
        "multi_namespace_mode_namespace_list"
    )


def test_a_connection_test_goes_where_its_queue_goes() -> None:
    from k8s_executor import workloads

    test = SimpleNamespace(
        connection_test_id="5f0c", connection_id="pg", queue="east", model_dump_json=lambda: "{}"
    )
    request = workloads.request_from_connection_test(test, workloads.Owner("1", "KubernetesExecutor", {}))
    assert (
        clusters.route(request.executor_config.cluster, request.queue, {"east": "east"}, ["default", "east"])
        == "east"
    )


def test_a_named_clusters_metrics_carry_its_name_and_the_defaults_keep_theirs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from k8s_executor import metrics

    recorded = RecordedStats()
    monkeypatch.setattr(metrics, "stats", lambda: recorded)
    metrics.incr("watcher.restarts", cluster="gpu")
    metrics.incr("watcher.restarts", cluster=DEFAULT_CLUSTER)
    metrics.gauge("pods.running", 3, cluster="gpu")
    metrics.http_outcome("pod_create", 201, "gpu")
    assert recorded.sent == [
        ("k8s_executor.clusters.gpu.watcher.restarts", {"cluster": "gpu"}),
        ("k8s_executor.watcher.restarts", None),
        ("k8s_executor.clusters.gpu.pods.running", None),
        ("k8s_executor.clusters.gpu.pod_create.status.201", {"cluster": "gpu", "status": 201}),
    ]


def test_airflow_2s_queue_reaches_the_routing() -> None:
    from k8s_executor import workloads
    from k8s_executor.identity import TaskRef

    key = SimpleNamespace(dag_id="d", task_id="t", run_id="r", try_number=1, map_index=-1)
    request = workloads.request_from_command(
        key, ["airflow", "tasks", "run"], None, workloads.Owner("1", "KubernetesExecutor", {}), queue="east"
    )
    assert request.ref == TaskRef("d", "t", "r", 1, -1)
    assert (
        clusters.route(request.executor_config.cluster, request.queue, {"east": "east"}, ["default", "east"])
        == "east"
    )


def test_a_cluster_never_takes_the_sections_tls_trust_and_takes_its_namespaces_as_a_whole() -> None:
    settings = parse(
        ssl_ca_cert="/etc/kube/main-ca.pem",
        verify_ssl="False",
        multi_namespace_mode="True",
        multi_namespace_mode_namespace_list="a,b",
        clusters={"gpu": GPU, "eu": {"config_file": "/etc/kube/eu.yaml"}},
    )
    gpu, eu = settings.cluster_settings()["gpu"], settings.cluster_settings()["eu"]
    assert (gpu.ssl_ca_cert, gpu.verify_ssl) == ("", True)
    # gpu names its namespace: the section's namespace list is not its; eu names none: it is.
    assert gpu.watched_namespaces == ["gpu-tasks"]
    assert eu.watched_namespaces == ["a", "b"]
    assert (gpu.cluster, eu.cluster, settings.cluster) == ("gpu", "eu", DEFAULT_CLUSTER)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"in_cluster": False}, "clusters.gpu: needs its connection"),
        ({"config_file": ""}, "clusters.gpu: needs its connection"),
        ({"cluster_context": "gpu"}, "clusters.gpu: needs its connection"),
        (
            {**GPU, "worker_pods_creation_batch_size": 5},
            "clusters.gpu: worker_pods_creation_batch_size can only be set for the whole section",
        ),
    ],
)
def test_a_cluster_must_have_its_own_connection_and_no_section_only_option(
    entry: dict[str, object], message: str
) -> None:
    with pytest.raises(SettingsError) as refused:
        parse(clusters={"gpu": entry})
    assert message in str(refused.value)


def test_a_pod_carries_its_clusters_label_and_the_defaults_carries_none_whatever_its_override_says() -> None:
    from k8s_executor import executor_config, identity
    from k8s_executor.airflow_adapter import pod_defaults
    from k8s_executor.pod_building import PodRequest, build_pod

    every = parse(clusters={"gpu": GPU}).cluster_settings()
    request = PodRequest(
        ref=identity.TaskRef("d", "t", "r"),
        command=["true"],
        scheduler_id="1",
        airflow_version="3.3.2",
        executor_config=executor_config.parse(
            {"pod_override": {"metadata": {"labels": {identity.CLUSTER_LABEL: "gpu"}}}}
        ),
    )
    default_pod = build_pod(request, pod_defaults(every[DEFAULT_CLUSTER]))
    gpu_pod = build_pod(request, pod_defaults(every["gpu"]))
    assert identity.CLUSTER_LABEL not in default_pod["metadata"]["labels"]
    assert gpu_pod["metadata"]["labels"][identity.CLUSTER_LABEL] == "gpu"
    assert gpu_pod["metadata"]["namespace"] == "gpu-tasks"


def test_a_failing_clusters_sweep_waits_longer_each_time_up_to_five_minutes() -> None:
    waits = [clusters.sweep_retry_s(n) for n in range(8)]
    assert waits == [0.0, 10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0]
