"""The connection to the API server, made from settings by each process for itself.

The official `kubernetes` client: in-cluster or kubeconfig credentials kept fresh
(credentials.py), TLS verification, urllib3 retries and TCP keepalive. No process is
handed a client or a `Configuration`: each calls `connect` with the settings. Calls
that need speed use `_preload_content=False` and read JSON themselves.
"""

from __future__ import annotations

import functools
import json
import logging
import socket
import time
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

from kubernetes import client
from pydantic_core import from_json
from urllib3.util.retry import Retry

from k8s_executor import __version__, credentials
from k8s_executor.settings import ExecutorSettings
from k8s_executor.shapes import PodSeen
from k8s_executor.state_mapping import observe

log = logging.getLogger(__name__)

# How this executor's requests are named in the API server's audit log and in the pods' managed
# fields: apart from the official provider's, which sends the client's default.
USER_AGENT = f"airflow-k8s-executor/{__version__}"


# urllib3's default, but a 429 or 503 comes back at once instead of being slept on for up to three
# times its Retry-After inside the call: a GET in the scheduler loop (adoption's list) would stall
# that loop past its health check under an API server overload, and the other schedulers would
# declare it dead. Every caller here retries refusals itself, at a pace it chooses.
DEFAULT_RETRIES = Retry(total=3, respect_retry_after_header=False)


def connect(settings: ExecutorSettings) -> credentials.RefreshingApiClient:
    """A client of this process's own, its credential fetched now and kept fresh.

    Raises `credentials.CredentialError` naming the file or command when no credential can be had.
    """
    cfg = client.Configuration()
    if settings.in_cluster:
        source: credentials.Source | None = credentials.in_cluster(cfg)
    else:
        source = credentials.from_kubeconfig(cfg, settings.config_file, settings.cluster_context)
    if not settings.verify_ssl:
        cfg.verify_ssl = False
    if settings.ssl_ca_cert:
        cfg.ssl_ca_cert = settings.ssl_ca_cert
    if settings.api_client_retry_configuration:
        cfg.retries = Retry(**settings.api_client_retry_configuration)
    else:
        cfg.retries = DEFAULT_RETRIES
    cfg.connection_pool_maxsize = max(16, settings.creation_concurrency * 2)
    if settings.enable_tcp_keepalive:
        cfg.socket_options = [
            (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),
            (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
            (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, settings.tcp_keep_idle),
            (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, settings.tcp_keep_intvl),
            (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, settings.tcp_keep_cnt),
        ]
    api = credentials.RefreshingApiClient(cfg, credentials.FreshCredential(source) if source else None)
    api.user_agent = USER_AGENT
    return api


def connect_in_helper(settings: ExecutorSettings) -> credentials.RefreshingApiClient:
    """`connect` for a helper process: a credential missing for now is waited for, not fatal.

    The scheduler checked the same settings when it started; a credential that fails now (a
    token file being replaced, a plugin's service down) is tried again every few seconds and
    logged once a minute, while the requests handed to the process wait.
    """
    logged_at: float | None = None
    while True:
        try:
            return connect(settings)
        except credentials.CredentialError as exc:
            now = time.monotonic()
            if logged_at is None or now - logged_at >= credentials.LOG_FAILURE_EVERY_S:
                logged_at = now
                log.error("no credential for the API server yet, trying again: %s", exc)
            time.sleep(credentials.RETRY_FAILED_REFRESH_S)


def list_pods(api: client.CoreV1Api, namespace: str | None, **kwargs: Any) -> Any:
    """List (or, with `watch=True`, watch) pods in `namespace`; all namespaces when it is None."""
    if namespace:
        return api.list_namespaced_pod(namespace, **kwargs)
    return api.list_pod_for_all_namespaces(**kwargs)


def read_pod(api: client.CoreV1Api, namespace: str, name: str) -> dict[str, Any] | None:
    """One pod as it is now, as raw JSON; None when there is none of that name. Read by a list
    with a field selector: the executor's Role grants list and watch on pods, never get."""
    body = read_json(
        api.list_namespaced_pod(namespace, field_selector=f"metadata.name={name}", _preload_content=False)
    )
    items: list[dict[str, Any]] = body["items"]
    return items[0] if items else None


def list_seen(
    api: client.CoreV1Api,
    namespaces: Iterable[str | None],
    selector: str,
    fatal_waiting_reasons: frozenset[str] = frozenset(),
    unschedulable_timeout_s: float = 300.0,
    timeout_s: float | None = None,
) -> list[PodSeen]:
    """Every pod under `selector` in `namespaces`, listed now (raw JSON) and judged as listed; each
    list waits at most `timeout_s` for the API server's answer."""
    return [
        observe(
            pod, fatal_waiting_reasons=fatal_waiting_reasons, unschedulable_timeout_s=unschedulable_timeout_s
        )
        for namespace in namespaces
        for pod in read_json(
            list_pods(
                api, namespace, label_selector=selector, _preload_content=False, _request_timeout=timeout_s
            )
        )["items"]
    ]


def pod_events(
    api: client.CoreV1Api, namespace: str, name: str, uid: str | None, timeout_s: float | None = None
) -> list[dict[str, Any]]:
    """The events of one pod, as raw dicts; raises what the request raises.

    Events are found by the pod's name, so those of an earlier pod of the same name (deleted
    and made again) are left out by its uid.
    """
    response = api.list_namespaced_event(
        namespace,
        field_selector=f"involvedObject.name={name},involvedObject.kind=Pod",
        _preload_content=False,
        _request_timeout=timeout_s,
    )
    items: list[dict[str, Any]] = read_json(response)["items"]
    return [e for e in items if (e.get("involvedObject") or {}).get("uid") in (None, uid)]


def core_api(settings: ExecutorSettings) -> client.CoreV1Api:
    return client.CoreV1Api(connect(settings))


def read_body(response: Any) -> bytes:
    """The whole body of a `_preload_content=False` response, its connection back in the pool.

    urllib3 keeps the connection of an unreleased response out of the pool, so every
    request after it would pay a new TLS handshake, which costs more CPU than a create
    (bench/RESULTS.md).
    """
    try:
        data: bytes = response.data
        return data
    finally:
        response.release_conn()


def read_json(response: Any) -> Any:
    """The JSON body of a `_preload_content=False` response."""
    return from_json(read_body(response))


class _Body(NamedTuple):
    data: str


def to_model(data: Any, klass: str, api: client.ApiClient | None = None) -> Any:
    """`data` (API JSON) as the client's model `klass` ("V1Pod"), for code that wants models.

    Through the client's public `deserialize`, which reads a response: a body in `.data` is all it
    needs of one.
    """
    return (api or _models()).deserialize(_Body(json.dumps(data)), klass)


def from_model(model: Any) -> Any:
    """A client model back as API JSON."""
    return _models().sanitize_for_serialization(model)


@functools.cache
def _models() -> client.ApiClient:
    """A client for models only: it sends nothing."""
    return client.ApiClient()


def describe_error(exc: BaseException) -> str:
    """The API server's words for a refused request, or the failure itself for one that got none."""
    return error_message(exc) if isinstance(exc, client.ApiException) else repr(exc)


def error_message(exc: client.ApiException) -> str:
    """The API server's own words for a refused request."""
    try:
        return str(json.loads(exc.body)["message"])
    except (TypeError, ValueError, KeyError):
        return f"{exc.status} {exc.reason}"


def json_lines(response: Any) -> Iterator[dict[str, Any]]:
    """Events of a watch response as dicts, read as they arrive.

    Parsing is most of a watcher's CPU through a burst (a pod event is 4-7 KB, the task's command
    and the managed fields most of it): pydantic's parser takes two thirds of the time
    `json.loads` does (bench/RESULTS.md)."""
    buffer = b""
    try:
        for chunk in response.stream(amt=None, decode_content=False):
            if b"\n" not in chunk:
                buffer += chunk
                continue
            *lines, buffer = (buffer + chunk).split(b"\n")
            for line in lines:
                if line.strip():
                    yield from_json(line)
    finally:
        response.release_conn()


def merge_patch(
    api_client: client.ApiClient,
    path: str,
    body: dict[str, Any],
    patch_type: str = "application/merge-patch+json",
    **kwargs: Any,
) -> Any:
    """PATCH `path` with a JSON merge patch (or `patch_type`).

    Older clients (before 33) cannot choose the patch type per call, and their default
    (strategic merge) treats lists differently; the raw call behaves the same on all of them.
    """
    return api_client.call_api(
        path,
        "PATCH",
        header_params={"Content-Type": patch_type, "Accept": "application/json"},
        body=body,
        auth_settings=["BearerToken"],
        _preload_content=False,
        # The response itself on every client version (older ones return a tuple without it).
        _return_http_data_only=True,
        **kwargs,
    )
