import dataclasses
from pathlib import Path

import pytest
from kubernetes.client import models as k8s

from k8s_executor import executor_config
from k8s_executor.executor_config import ExecutorConfigError
from k8s_executor.identity import TaskRef
from k8s_executor.pod_building import PodBuildError, PodDefaults, PodRequest, build_pod, merge

DEFAULTS = PodDefaults(namespace="airflow", pod_template_file=None, worker_image=None, fallback_image="img:1")


def request(config: dict | None = None, **kwargs) -> PodRequest:
    return PodRequest(
        ref=TaskRef("dag", "task", "run", 2, -1),
        command=["python", "-m", "x"],
        scheduler_id="7",
        airflow_version="3.3.2",
        executor_config=executor_config.parse(config),
        **kwargs,
    )


def base(pod: dict) -> dict:
    return next(c for c in pod["spec"]["containers"] if c["name"] == "base")


def test_merge_lets_overrides_set_false_zero_and_empty() -> None:
    out = merge({"a": True, "b": 5, "c": [1, 2], "d": {"x": 1}}, {"a": False, "b": 0, "c": [], "d": {"y": 2}})
    assert out == {"a": False, "b": 0, "c": [], "d": {"x": 1, "y": 2}}


def test_merge_ignores_none() -> None:
    assert merge({"a": 1}, {"a": None}) == {"a": 1}


def test_merge_named_lists_by_name_and_replaces_others() -> None:
    template = {
        "containers": [
            {"name": "sidecar", "image": "s"},
            {"name": "base", "image": "b", "env": [{"name": "A", "value": "1"}]},
        ],
        "tolerations": [{"key": "t1"}],
    }
    override = {
        "containers": [{"name": "base", "env": [{"name": "A", "value": "2"}, {"name": "B", "value": "3"}]}],
        "tolerations": [{"key": "t2"}],
    }
    out = merge(template, override)
    assert [c["name"] for c in out["containers"]] == ["sidecar", "base"]
    assert out["containers"][1]["image"] == "b"
    assert out["containers"][1]["env"] == [{"name": "A", "value": "2"}, {"name": "B", "value": "3"}]
    assert out["tolerations"] == [{"key": "t2"}]
    assert template["containers"][1]["env"] == [{"name": "A", "value": "1"}], "inputs are not changed"


def test_default_pod_runs_the_command_in_base() -> None:
    pod = build_pod(request(env={"AIRFLOW__CORE__EXECUTOR": "E"}), DEFAULTS)
    assert pod["metadata"]["namespace"] == "airflow"
    assert base(pod)["args"] == ["python", "-m", "x"]
    assert base(pod)["image"] == "img:1"
    assert {"name": "AIRFLOW__CORE__EXECUTOR", "value": "E"} in base(pod)["env"]
    assert pod["metadata"]["labels"]["try_number"] == "2"
    assert pod["spec"]["restartPolicy"] == "Never"


def test_spec_dict_form_lands_in_the_pod() -> None:
    config = {
        "KubernetesExecutor": {
            "namespace": "custom-namespace",
            "image": "custom-image:latest",
            "request_memory": "1Gi",
            "request_cpu": "500m",
            "limit_memory": "2Gi",
            "limit_cpu": "1000m",
            "labels": {"team": "data-engineering"},
            "annotations": {"monitoring": "enabled"},
            "env_vars": [{"name": "CUSTOM_VAR", "value": "custom_value"}],
            "secrets": [
                {
                    "deploy_type": "env",
                    "deploy_target": "DB_PASSWORD",
                    "secret": "database-secret",
                    "key": "password",
                }
            ],
            "volumes": [{"name": "data-volume", "persistentVolumeClaim": {"claimName": "data-pvc"}}],
            "volume_mounts": [{"name": "data-volume", "mountPath": "/data"}],
            "node_selector": {"disktype": "ssd"},
            "tolerations": [
                {"key": "compute-type", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}
            ],
            "resources": {"limits": {"nvidia.com/gpu": "1"}},
        }
    }
    pod = build_pod(request(config), DEFAULTS)
    c = base(pod)
    assert pod["metadata"]["namespace"] == "custom-namespace"
    assert c["image"] == "custom-image:latest"
    assert c["resources"] == {
        "requests": {"memory": "1Gi", "cpu": "500m"},
        "limits": {"memory": "2Gi", "cpu": "1000m", "nvidia.com/gpu": "1"},
    }
    assert pod["metadata"]["labels"]["team"] == "data-engineering"
    assert pod["metadata"]["annotations"]["monitoring"] == "enabled"
    env = {e["name"]: e for e in c["env"]}
    assert env["CUSTOM_VAR"]["value"] == "custom_value"
    assert env["DB_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "database-secret", "key": "password"}
    assert pod["spec"]["volumes"] == [
        {"name": "data-volume", "persistentVolumeClaim": {"claimName": "data-pvc"}}
    ]
    assert c["volumeMounts"] == [{"name": "data-volume", "mountPath": "/data"}]
    assert pod["spec"]["nodeSelector"] == {"disktype": "ssd"}
    assert pod["spec"]["tolerations"][0]["key"] == "compute-type"


def test_pod_override_v1pod_can_set_false_and_keeps_identity() -> None:
    override = k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name="evil", labels={"dag_id": "other", "x": "y"}),
        spec=k8s.V1PodSpec(
            automount_service_account_token=False,
            containers=[
                k8s.V1Container(name="base", image="over:1", env=[k8s.V1EnvVar(name="E", value="v")])
            ],
        ),
    )
    pod = build_pod(request({"pod_override": override}), DEFAULTS)
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert base(pod)["image"] == "over:1"
    assert pod["metadata"]["labels"]["dag_id"] == "dag" and pod["metadata"]["labels"]["x"] == "y"
    assert pod["metadata"]["name"] != "evil"


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"KubernetesExecutor": {"imagee": "x"}}, "imagee"),
        ({"KubernetesExecutor": {"labels": "team=a"}}, "labels"),
        ({"KubernetesExecutor": {"volumes": [{"emptyDir": {}}]}}, "volumes"),
        ({"KubernetesExecutor": {"secrets": [{"deploy_type": "file", "secret": "s"}]}}, "deploy_type"),
        ({"KubernetesExcutor": {}}, "KubernetesExcutor"),
        ({"pod_override": {"spec": 1}, "pod_override2": 1}, "pod_override2"),
        ({"pod_override": "not a pod"}, "pod_override"),
        ({"pod_override": {"spec": 1}}, r"pod_override'\]: spec must be an object"),
        ({"pod_override": {"metadata": []}}, r"pod_override'\]: metadata must be an object"),
        ("not a dict", "must be a dict"),
    ],
)
def test_invalid_executor_config_names_the_key(config, fragment: str) -> None:
    with pytest.raises(ExecutorConfigError, match=fragment):
        executor_config.parse(config)


def test_missing_and_broken_templates_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(PodBuildError, match="cannot be read"):
        build_pod(request({"pod_template_file": str(tmp_path / "nope.yaml")}), DEFAULTS)
    broken = tmp_path / "broken.yaml"
    broken.write_text("spec: [unclosed")
    with pytest.raises(PodBuildError, match="not valid YAML"):
        build_pod(request({"pod_template_file": str(broken)}), DEFAULTS)
    empty = tmp_path / "empty.yaml"
    empty.write_text("kind: Pod\nspec: {}\n")
    with pytest.raises(PodBuildError, match=r"spec\.containers"):
        build_pod(request({"pod_template_file": str(empty)}), DEFAULTS)


def test_template_values_win_over_executor_env_and_first_container_is_base(tmp_path: Path) -> None:
    template = tmp_path / "t.yaml"
    template.write_text(
        "kind: Pod\nmetadata: {namespace: from-template}\nspec:\n  containers:\n"
        "  - name: worker\n    image: t:1\n    env: [{name: AIRFLOW__CORE__EXECUTOR, value: T}]\n"
    )
    pod = build_pod(
        request({"pod_template_file": str(template)}, env={"AIRFLOW__CORE__EXECUTOR": "E"}), DEFAULTS
    )
    assert pod["metadata"]["namespace"] == "from-template"
    c = base(pod)
    assert c["image"] == "t:1"
    assert [e for e in c["env"] if e["name"] == "AIRFLOW__CORE__EXECUTOR"] == [
        {"name": "AIRFLOW__CORE__EXECUTOR", "value": "T"}
    ]


def test_invalid_override_label_is_refused_with_field() -> None:
    with pytest.raises(PodBuildError, match=r"metadata.labels\['team'\]"):
        build_pod(request({"KubernetesExecutor": {"labels": {"team": "x" * 64}}}), DEFAULTS)


def test_termination_grace_setting_yields_to_the_template_and_executor_config(tmp_path: Path) -> None:
    defaults = dataclasses.replace(DEFAULTS, termination_grace_period_seconds=45)
    assert build_pod(request(), defaults)["spec"]["terminationGracePeriodSeconds"] == 45
    assert "terminationGracePeriodSeconds" not in build_pod(request(), DEFAULTS)["spec"]
    template = tmp_path / "t.yaml"
    template.write_text(
        "spec:\n  terminationGracePeriodSeconds: 5\n  containers:\n  - name: base\n    image: t:1\n"
    )
    from_template = build_pod(request({"pod_template_file": str(template)}), defaults)
    assert from_template["spec"]["terminationGracePeriodSeconds"] == 5
    config = {"KubernetesExecutor": {"termination_grace_period_seconds": 0}}
    assert build_pod(request(config), defaults)["spec"]["terminationGracePeriodSeconds"] == 0


def test_a_worker_that_dies_early_leaves_its_log_tail_unless_the_template_says_otherwise(
    tmp_path: Path,
) -> None:
    assert base(build_pod(request(), DEFAULTS))["terminationMessagePolicy"] == "FallbackToLogsOnError"
    template = tmp_path / "t.yaml"
    template.write_text(
        "apiVersion: v1\nkind: Pod\nspec:\n  containers:\n  - name: base\n    terminationMessagePolicy: File\n"
    )
    chosen = build_pod(request(), dataclasses.replace(DEFAULTS, pod_template_file=str(template)))
    assert base(chosen)["terminationMessagePolicy"] == "File"


def test_a_coordinator_queues_template_and_image_win_over_the_tasks_and_the_executors(tmp_path: Path) -> None:
    java = tmp_path / "java.yaml"
    java.write_text(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  labels:\n    runtime: jvm\n"
        "spec:\n  containers:\n  - name: base\n    image: from-template\n"
    )
    own = tmp_path / "own.yaml"
    own.write_text("apiVersion: v1\nkind: Pod\nspec:\n  containers:\n  - name: base\n    image: own\n")
    pod = build_pod(
        request({"pod_template_file": str(own)}, coordinator_template=str(java), coordinator_image="jre:17"),
        dataclasses.replace(DEFAULTS, worker_image="python-worker:1"),
    )
    assert pod["metadata"]["labels"]["runtime"] == "jvm"
    assert base(pod)["image"] == "jre:17"
    # Without a coordinator: the task's template, the executor's image.
    plain = build_pod(
        request({"pod_template_file": str(own)}),
        dataclasses.replace(DEFAULTS, worker_image="python-worker:1"),
    )
    assert "runtime" not in plain["metadata"].get("labels", {}) and base(plain)["image"] == "python-worker:1"
