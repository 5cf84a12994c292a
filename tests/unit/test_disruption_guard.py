"""The disruption guard: which pods run under it, its rule, and the program a pod runs."""

from __future__ import annotations

import ast
import dataclasses
import os
import signal
import subprocess
import sys
import time
import urllib.error
from email.message import Message
from pathlib import Path
from typing import Any

import pytest

from k8s_executor import disruption_guard, executor_config
from k8s_executor.identity import CallbackRef, ConnectionTestRef, TaskRef
from k8s_executor.pod_building import PodDefaults, PodRequest, build_pod

GUARDED = PodDefaults("airflow", None, None, "img:1", disruption_guard=True, disruption_retries=3)
COMMAND = ["python", "-m", "airflow.sdk.execution_time.execute_workload", "--json-string", "{}"]


def request(ref: Any = None, config: dict[str, Any] | None = None) -> PodRequest:
    return PodRequest(
        ref=ref or TaskRef("dag", "task", "run", 1, -1),
        command=COMMAND,
        scheduler_id="7",
        airflow_version="3.3.2",
        executor_config=executor_config.parse(config),
    )


def base(pod: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in pod["spec"]["containers"] if c["name"] == "base")


def test_a_task_runs_under_the_guard_which_learns_its_pod_from_the_downward_api() -> None:
    container = base(build_pod(request(), GUARDED))
    assert container["args"] == ["python", "-c", disruption_guard.BOOTSTRAP, *COMMAND]
    fields = {
        e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"] if "valueFrom" in e
    }
    assert fields == {
        disruption_guard.POD_NAME_ENV: "metadata.name",
        disruption_guard.POD_NAMESPACE_ENV: "metadata.namespace",
    }


def test_with_the_guard_sent_inline_the_pod_carries_its_whole_source() -> None:
    inline = dataclasses.replace(GUARDED, disruption_guard_source="inline")
    container = base(build_pod(request(), inline))
    assert container["args"] == ["python", "-c", disruption_guard.source(), *COMMAND]
    assert len(disruption_guard.BOOTSTRAP) * 5 < len(disruption_guard.source())


@pytest.mark.parametrize(
    ("ref", "config", "defaults"),
    [
        (CallbackRef("cb", "dag", "run"), None, GUARDED),
        (ConnectionTestRef("t1", "conn"), None, GUARDED),
        (None, {"KubernetesExecutor": {"disruption_retries": 0}}, GUARDED),
        (None, None, dataclasses.replace(GUARDED, disruption_retries=0)),
        (None, None, dataclasses.replace(GUARDED, disruption_guard=False)),
    ],
    ids=["callback", "connection-test", "task-disruption-retries-0", "default-disruption-retries-0", "off"],
)
def test_what_a_disruption_never_launches_again_runs_its_command_as_it_is(
    ref: Any, config: dict[str, Any] | None, defaults: PodDefaults
) -> None:
    container = base(build_pod(request(ref, config), defaults))
    assert container["args"] == COMMAND
    assert "env" not in container


def test_a_task_whose_own_disruption_retries_allow_one_is_guarded_when_the_default_does_not() -> None:
    own = request(config={"KubernetesExecutor": {"disruption_retries": 2}})
    assert base(build_pod(own, dataclasses.replace(GUARDED, disruption_retries=0)))["args"][3:] == COMMAND


def condition(reason: str, message: str = "") -> dict[str, Any]:
    return {"type": "DisruptionTarget", "status": "True", "reason": reason, "message": message}


@pytest.mark.parametrize(
    ("status", "cause"),
    [
        ({"conditions": [condition("EvictionByEvictionAPI")]}, "EvictionByEvictionAPI"),
        ({"conditions": [condition("PreemptionByScheduler")]}, "PreemptionByScheduler"),
        ({"conditions": [condition("DeletionByTaintManager")]}, "DeletionByTaintManager"),
        (
            {"conditions": [condition("TerminationByKubelet", "The node was low on resource: memory.")]},
            "TerminationByKubelet",
        ),
        ({"reason": "Evicted", "message": "The node was low on resource: memory."}, "Evicted"),
        (
            {
                "conditions": [
                    condition(
                        "TerminationByKubelet",
                        "Pod ephemeral local storage usage exceeds the total limit of containers 1Gi.",
                    )
                ]
            },
            None,
        ),
        (
            {"reason": "Evicted", "message": 'Usage of EmptyDir volume "scratch" exceeds the limit "1Gi".'},
            None,
        ),
        ({"conditions": [{**condition("EvictionByEvictionAPI"), "status": "False"}]}, None),
        ({}, None),
    ],
)
def test_the_rule_what_disrupted_a_pod(status: dict[str, Any], cause: str | None) -> None:
    assert disruption_guard.disrupted_by({"status": status}) == cause


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def decide_with(monkeypatch: pytest.MonkeyPatch, *answers: Any) -> tuple[tuple[bool, str], int]:
    """decide(), with the pod's reads answered in turn (the last one repeated)."""
    reads = []

    def read_pod() -> dict[str, Any]:
        answer = answers[min(len(reads), len(answers) - 1)]
        reads.append(answer)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(disruption_guard, "read_pod", read_pod)
    clock = Clock()
    return disruption_guard.decide(clock, clock.sleep), len(reads)


def test_a_disrupted_pod_holds_the_signal_back(monkeypatch: pytest.MonkeyPatch) -> None:
    pod = {
        "metadata": {"deletionTimestamp": "x"},
        "status": {"conditions": [condition("EvictionByEvictionAPI")]},
    }
    assert decide_with(monkeypatch, pod) == ((True, "EvictionByEvictionAPI"), 1)


def test_a_deletion_without_the_condition_passes_it_on_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    (hold, why), reads = decide_with(monkeypatch, {"metadata": {"deletionTimestamp": "x"}, "status": {}})
    assert (hold, reads) == (False, 1)
    assert "not by the cluster" in why


def test_kubelets_condition_is_awaited_a_few_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    running: dict[str, Any] = {"metadata": {}, "status": {"phase": "Running"}}
    stopped = {"metadata": {}, "status": {"conditions": [condition("TerminationByKubelet")]}}
    assert decide_with(monkeypatch, running, running, stopped) == ((True, "TerminationByKubelet"), 3)
    (hold, why), reads = decide_with(monkeypatch, running)
    assert not hold and "within 5 s" in why
    assert reads == 1 + disruption_guard.KUBELET_CONDITION_WAIT_S / 0.5


def test_a_pod_it_cannot_read_passes_the_signal_on(monkeypatch: pytest.MonkeyPatch) -> None:
    refused = urllib.error.HTTPError("https://k/api", 403, "Forbidden", Message(), None)
    (hold, why), _ = decide_with(monkeypatch, refused)
    assert (hold, why) == (False, "its pod cannot be read (403 Forbidden)")
    (hold, why), _ = decide_with(monkeypatch, KeyError("KUBERNETES_SERVICE_HOST"))
    assert not hold and "KUBERNETES_SERVICE_HOST" in why


def test_the_program_a_pod_runs_needs_the_standard_library_only() -> None:
    tree = ast.parse(disruption_guard.source())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    imported |= {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module
    }
    assert imported <= set(sys.stdlib_module_names)
    assert "k8s_executor" not in disruption_guard.source()


# The guard as a pod runs it: from the package installed with this Python, or sent whole.
PROGRAMS = [
    pytest.param(disruption_guard.BOOTSTRAP, id="from-the-image"),
    pytest.param(disruption_guard.source(), id="inline"),
]


def run_guarded(
    command: list[str], env: dict[str, str], program: str = disruption_guard.BOOTSTRAP
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", program, *command],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("program", PROGRAMS)
def test_the_task_keeps_its_exit_code(program: str) -> None:
    guard = run_guarded([sys.executable, "-c", "import sys; sys.exit(3)"], {}, program)
    assert guard.wait(timeout=30) == 3


@pytest.mark.parametrize("program", PROGRAMS)
def test_a_stop_it_cannot_tell_from_a_deletion_reaches_the_task_at_once(program: str) -> None:
    """No service account (a pod without a token): SIGTERM reaches the task, which ends by it, and
    the guard exits as a process killed by SIGTERM would (128 + 15)."""
    guard = run_guarded([sys.executable, "-c", "import time; time.sleep(60)"], {}, program)
    time.sleep(1.0)  # the guard has started its task
    started = time.monotonic()
    guard.send_signal(signal.SIGTERM)
    assert guard.wait(timeout=30) == 128 + signal.SIGTERM
    assert time.monotonic() - started < 10
    assert "passing SIGTERM on to the task: its pod cannot be read" in (
        guard.stderr.read() if guard.stderr else ""
    )


@pytest.mark.parametrize("program", PROGRAMS)
def test_the_task_is_in_a_session_of_its_own(program: str) -> None:
    """The image's init signals its child's process group: that signal must not reach the task
    before the guard has decided."""
    guard = run_guarded(
        [sys.executable, "-c", "import os; print(os.getsid(0) == os.getpid(), flush=True)"],
        {},
        program,
    )
    out, _ = guard.communicate(timeout=30)
    assert (guard.returncode, out.strip()) == (0, "True")


def test_an_image_without_the_package_runs_the_task_as_it_is_and_says_so() -> None:
    """`-I -S`: a Python without this environment's site-packages, as in an image without the package.
    The task replaces the program (its own process, not in a session of its own), and keeps its
    exit code."""
    task = "import os, sys; sys.exit(4 if os.getsid(0) == os.getpid() else 5)"
    ran = subprocess.run(
        [sys.executable, "-I", "-S", "-c", disruption_guard.BOOTSTRAP, sys.executable, "-c", task],
        cwd="/",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert ran.returncode == 5
    assert "[disruption guard] not in this image (ModuleNotFoundError: " in ran.stderr


def test_a_guard_that_fails_to_import_runs_the_task_as_it_is(tmp_path: Path) -> None:
    """A package in the image whose guard raises on import (a broken or mismatched install) does
    not keep the task from running."""
    broken = tmp_path / "k8s_executor"
    broken.mkdir()
    (broken / "__init__.py").write_text("")
    (broken / "disruption_guard.py").write_text("raise RuntimeError('half an install')\n")
    ran = subprocess.run(
        [
            sys.executable,
            "-c",
            disruption_guard.BOOTSTRAP,
            sys.executable,
            "-c",
            "import sys; sys.exit(6)",
        ],
        cwd=tmp_path,  # first on the path of `python -c`, before the installed package
        env={"PATH": os.environ.get("PATH", "")},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert ran.returncode == 6
    assert "not in this image (RuntimeError: half an install)" in ran.stderr
