import logging
import time

import pytest
from kubernetes import client
from urllib3.exceptions import ProtocolError

from k8s_executor.launching import Launcher, transient, unreachable
from k8s_executor.shapes import LaunchResult


def api_error(status: int, body: str = "", headers: dict | None = None) -> client.ApiException:
    exc = client.ApiException(status=status, reason="x")
    exc.body = body
    exc.headers = headers or {}
    return exc


def test_throttling_honours_retry_after() -> None:
    assert transient(api_error(429, headers={"Retry-After": "3"})) == 3.0
    assert transient(api_error(429)) == 0.0


def test_server_errors_quota_and_broken_connections_are_retried() -> None:
    assert transient(api_error(503)) == 0.0
    assert (
        transient(api_error(403, body='pods "p" is forbidden: exceeded quota: q, requested: pods=1')) == 0.0
    )
    assert transient(ProtocolError("Connection aborted.")) == 0.0


def test_forbidden_is_retried_within_the_refusal_budget() -> None:
    # Right after an API server restart its authorizer answers 403 until its cache is loaded.
    assert transient(api_error(403, body='pods is forbidden: User "x" cannot create resource')) == 0.0


def test_unauthorized_is_retried_within_the_refusal_budget() -> None:
    # A token file rotated a moment after the old token stopped working: the client fetched the
    # credential again and it was still the old one; the next try may find the new one.
    assert transient(api_error(401)) == 0.0


def test_permanent_refusals_are_not_retried() -> None:
    assert transient(api_error(422, body="Pod is invalid")) is None
    assert transient(api_error(404)) is None
    assert transient(ValueError("bug")) is None


def test_an_unreachable_api_server_is_told_apart_from_a_refusal() -> None:
    assert unreachable(ProtocolError("Connection aborted."))
    assert unreachable(ConnectionRefusedError())
    assert unreachable(client.ApiException(status=0, reason="x"))
    assert not unreachable(api_error(503))
    assert not unreachable(api_error(403, body="exceeded quota"))


def test_a_bug_in_the_create_path_fails_only_its_task_and_logs_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A pod the client cannot serialise is the executor's bug, not the API server's refusal:
    no retry, its traceback in the log once, and a result that fails the task saying so."""
    # Nothing listens there: the request fails while being built, before any connection.
    api = client.CoreV1Api(client.ApiClient(client.Configuration(host="https://127.0.0.1:9")))
    launcher = Launcher(api, concurrency=1, qps=100, burst=100, max_retries=5)
    pod = {
        "metadata": {"namespace": "ns", "name": "p"},
        "spec": {"containers": [{"name": "base", "args": {1}}]},
    }
    with caplog.at_level(logging.ERROR, logger="k8s_executor.launching"):
        launcher._create(pod, time.monotonic() + 60)
    result = launcher.results.get_nowait()
    assert isinstance(result, LaunchResult) and not result.ok and result.attempts == 1
    assert result.error.startswith("the executor failed while creating it (AttributeError:")
    [record] = caplog.records
    assert (
        record.exc_info is not None and "creating pod ns/p failed inside the executor" in record.getMessage()
    )
