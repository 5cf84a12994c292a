"""Small waiting helpers for tests against the development cluster."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from kubernetes import client

T = TypeVar("T")


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
