"""The bad-input corpus (tests/bad_input.py) at the unit level: each case the executor decides is
refused with its exact message, by the code the executor's launch runs (parse, build, mutation hook,
namespace check); each case the API server decides builds a pod, so the refusal is the API server's
(tests/cluster/test_bad_input.py sends it); ids Airflow allows make valid pods."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from k8s_executor import clusters, executor_config, identity, workloads
from k8s_executor.executor_config import ExecutorConfigError
from k8s_executor.identity import DEFAULT_CLUSTER, TaskRef
from k8s_executor.pod_building import PodBuildError, PodDefaults, PodRequest, validate
from k8s_executor.settings import ExecutorSettings, SettingsError
from tests.bad_input import CASES, HOOK_SOURCE, IDS_CASES, SETTINGS_CASES, Case, counts, write_templates

NAMESPACE = "airflow"
DEFAULTS = PodDefaults(namespace=NAMESPACE, pod_template_file=None, worker_image=None, fallback_image="img:1")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("corpus") / "templates"
    write_templates(folder)
    return folder


@pytest.fixture
def hook(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The corpus's pod_mutation_hook, installed as airflow_local_settings.py's would be."""
    from airflow import settings

    namespace: dict[str, Any] = {}
    exec(compile(HOOK_SOURCE, "airflow_local_settings.py", "exec"), namespace)
    monkeypatch.setattr(settings, "pod_mutation_hook", namespace["pod_mutation_hook"])
    yield


def launch(
    case: Case, templates: Path, ref: TaskRef | None = None, all_namespaces: bool = False
) -> dict[str, Any]:
    """What KubernetesExecutor._launch does with a task's input, up to the create: the pod, or the
    error. `all_namespaces`: the executor watches every namespace (multi_namespace_mode)."""
    request = PodRequest(
        ref=ref or TaskRef("e2e_bad_input", case.name, "run-1"),
        command=["python", "-m", "airflow.sdk.execution_time.execute_workload"],
        scheduler_id="1",
        airflow_version="3.3.2",
        executor_config=executor_config.parse(case.config(templates)),
    )
    settings = ExecutorSettings.parse({"namespace": NAMESPACE, "multi_namespace_mode": all_namespaces})
    cluster = clusters.route(request.executor_config.cluster, request.queue, {}, [DEFAULT_CLUSTER])
    pod = workloads.pod_for(request, DEFAULTS)
    clusters.check_watched(settings, pod["metadata"]["namespace"], cluster, several=False)
    return pod


@pytest.mark.parametrize("case", [c for c in CASES if c.level == "executor"], ids=lambda c: c.name)
def test_each_bad_input_the_executor_decides_fails_with_its_exact_message(
    case: Case, templates: Path, hook: None
) -> None:
    with pytest.raises((ExecutorConfigError, PodBuildError)) as refused:
        launch(case, templates)
    assert str(refused.value) == case.message(templates, watched=NAMESPACE)


@pytest.mark.parametrize("case", [c for c in CASES if c.level == "api"], ids=lambda c: c.name)
def test_each_bad_input_the_api_server_decides_makes_a_pod_for_it_to_refuse(
    case: Case, templates: Path, hook: None
) -> None:
    pod = launch(case, templates, all_namespaces=True)
    assert pod["metadata"]["annotations"]["task_id"] == case.name


@pytest.mark.parametrize("case", IDS_CASES, ids=lambda c: c.name)
def test_ids_airflow_allows_make_valid_pods_that_name_them_exactly(case: Any, hook: None) -> None:
    ref = TaskRef(case.dag_id, case.task_id, case.run_id, 1, -1)
    pod = launch(Case(case.name, "ids", "executor", ""), Path("/nonexistent"), ref)
    validate(pod)
    meta = pod["metadata"]
    assert len(meta["name"]) <= 63 and DNS_LABEL.match(meta["name"]), meta["name"]
    for key, value in meta["labels"].items():
        assert len(value) <= 63 and LABEL_VALUE.match(value), (key, value)
    assert identity.ref_from_annotations(meta["annotations"]) == ref


@pytest.mark.parametrize(("option", "value", "message"), SETTINGS_CASES, ids=lambda v: str(v)[:40])
def test_settings_out_of_range_stop_the_start_with_the_option_named(
    option: str, value: str, message: str
) -> None:
    with pytest.raises(SettingsError) as refused:
        ExecutorSettings.parse({option: value})
    assert str(refused.value) == message


def test_the_corpus_has_forty_cases_or_more_in_every_category_the_issue_names() -> None:
    by_category = counts()
    assert sum(by_category.values()) >= 40, by_category
    assert set(by_category) >= {
        "executor_config",
        "templates",
        "labels and annotations",
        "env var names",
        "namespace",
        "image",
        "resources",
        "pod_mutation_hook",
        "ids Airflow allows",
        "settings at start",
    }
    names = [case.name for case in CASES]
    assert len(names) == len(set(names)), "each case is a task of one DAG: names are unique"


def test_the_corpus_is_counted_in_the_docs() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "bad-input.md").read_text()
    for category, count in counts().items():
        assert f"| {category} | {count} |" in doc, f"docs/bad-input.md does not count {category}: {count}"
