"""Small waiting helpers for tests against the development cluster."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
from kubernetes import client

T = TypeVar("T")


def configure_executor(monkeypatch: pytest.MonkeyPatch, kubeconfig: Path, namespace: str) -> None:
    """[kubernetes_executor] settings, as Airflow reads them, for an executor started in this process."""
    for option, value in {
        "IN_CLUSTER": "False",
        "CONFIG_FILE": str(kubeconfig),
        "NAMESPACE": namespace,
        "WORKER_CONTAINER_REPOSITORY": "busybox",
    }.items():
        monkeypatch.setenv(f"AIRFLOW__KUBERNETES_EXECUTOR__{option}", value)


class RecordedStats:
    """Airflow's `Stats` as the executor's metrics call it, keeping what they send: put in place
    with `monkeypatch.setattr(metrics, "stats", lambda: recorded)`."""

    def __init__(self) -> None:
        # Counters and gauges, by name, with a counter's tags (a gauge has none).
        self.sent: list[tuple[str, object]] = []
        self.counts: dict[str, int] = {}

    def incr(self, name: str, count: int = 1, tags: object = None) -> None:
        self.sent.append((name, tags))
        self.counts[name] = self.counts.get(name, 0) + count

    def gauge(self, name: str, value: float) -> None:
        self.sent.append((name, None))

    def timing(self, name: str, value: object) -> None:
        pass


def wait_for(check: Callable[[], T], what: str, timeout: float = 60.0, interval: float = 0.1) -> T:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except client.ApiException as exc:
            last_error = exc
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout:.0f}s waiting for {what}" + (f": {last_error}" if last_error else "")
    )


def assert_says(text: str, *words: str) -> None:
    """Each of `words` is in `text` (a task's log), or the failure shows the whole text."""
    for each in words:
        assert each in text, f"{each!r} not in:\n{text}"


def wait_for_pod_phase(
    core: client.CoreV1Api, namespace: str, name: str, phases: tuple[str, ...], timeout: float = 60.0
) -> client.V1Pod:
    def check() -> client.V1Pod | None:
        pod = core.read_namespaced_pod(name, namespace)
        return pod if pod.status.phase in phases else None

    return wait_for(check, f"pod {namespace}/{name} in {phases}", timeout)


def shell_pod(name: str, script: str, **spec: object) -> dict:
    return {
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "base", "image": "busybox", "command": ["sh", "-c", script]}],
            **spec,
        },
    }


def pod_log(core: client.CoreV1Api, namespace: str, name: str, **kwargs: object) -> str:
    # The generated client turns the log's bytes into their repr(); read the raw body instead.
    return core.read_namespaced_pod_log(name, namespace, _preload_content=False, **kwargs).data.decode()


def audit_entries(core: client.CoreV1Api, log: Path, namespace: str) -> list[dict]:
    """The API server's audit records of pods in `namespace`, read to a marker request made now, so
    that every request before it has been written."""
    marker = f"marker-{time.monotonic_ns()}"
    with contextlib.suppress(client.ApiException):
        core.read_namespaced_pod(marker, namespace)

    def entries() -> list[dict] | None:
        found = [
            json.loads(line) for line in log.read_text(errors="replace").splitlines() if namespace in line
        ]
        return found if any((e.get("objectRef") or {}).get("name") == marker for e in found) else None

    return wait_for(entries, "the audit log to reach the marker", timeout=90, interval=1)


def pods_created(entries: list[dict]) -> list[str]:
    """The names of the pods whose create the API server accepted, once per accepted create."""
    return [
        e["objectRef"]["name"]
        for e in entries
        if e["verb"] == "create"
        and e.get("stage") == "ResponseComplete"
        and not (e.get("objectRef") or {}).get("subresource")
        and (e.get("responseStatus") or {}).get("code") == 201
    ]
