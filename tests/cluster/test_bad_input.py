"""The bad-input corpus (tests/bad_input.py) at the cluster level: the pod of each case the API server
decides, built by the executor and sent by its launcher to a real API server, is refused once (not
retried) with the API server's own words, which become the task's failure reason."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from kubernetes import client

from k8s_executor import executor_config
from k8s_executor.identity import TaskRef
from k8s_executor.launching import Launcher
from k8s_executor.pod_building import PodDefaults, PodRequest, build_pod
from k8s_executor.shapes import LaunchResult
from tests.bad_input import CASES, Case, write_templates

pytestmark = pytest.mark.cluster


@pytest.mark.parametrize("case", [c for c in CASES if c.level == "api"], ids=lambda c: c.name)
def test_each_bad_input_the_api_server_decides_fails_once_with_its_words(
    case: Case, core: client.CoreV1Api, namespace: str, tmp_path: Path
) -> None:
    templates = tmp_path / "templates"
    write_templates(templates)
    request = PodRequest(
        ref=TaskRef("bad_input", case.name, "run"),
        command=["sh", "-c", "true"],
        scheduler_id="t",
        airflow_version="3.3.2",
        executor_config=executor_config.parse(case.config(templates)),
    )
    pod = build_pod(request, PodDefaults(namespace, None, None, "busybox"))
    # Retries allowed, so that a refusal taken for a passing one would show as a second attempt.
    launcher = Launcher(core, concurrency=1, qps=50, burst=50, max_retries=5)
    try:
        launcher.create(pod, time.monotonic() + 60)
        result: LaunchResult = launcher.results.get(timeout=60)
    finally:
        launcher.shutdown(wait=False)
    name = pod["metadata"]["name"]
    expected = case.message(templates)
    if not expected.startswith("namespaces "):
        expected = f'Pod "{name}" is invalid: {expected}'
    assert (result.ok, result.error, result.attempts) == (False, expected, 1)
    assert name not in {p.metadata.name for p in core.list_namespaced_pod(namespace).items}
