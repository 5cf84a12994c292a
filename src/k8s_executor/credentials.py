"""Credentials that stay fresh, made by each process for itself from the settings.

The kubernetes client keeps a loaded credential's refresh in a closure on its
`Configuration`, which cannot cross a process boundary; it reads a kubeconfig's
`tokenFile` once, never asks an exec plugin again after a 401, and answers a plugin
that fails with a log line and unauthenticated requests. A scheduler lives for
months while its ServiceAccount token is rotated every hour, so here every process
(the scheduler, the launcher, each watcher) builds its own credential from the same
settings and keeps it fresh with client-go's rules:

- a token file (the in-cluster ServiceAccount token, a kubeconfig's `tokenFile`) is
  read again at least once a minute (client-go's cached file token source);
- an exec plugin (the `client.authentication.k8s.io` ExecCredential protocol: EKS,
  GKE, AKS) is run again once its `expirationTimestamp` has passed;
- a static token and client certificates are used as given;
- a request refused with 401 makes the credential it carried be fetched again at
  once, and is sent once more if the fresh credential differs (client-go's exec
  authenticator does the same on a 401).

A credential that cannot be had when a process starts stops it with a message that
names the file or the command. Later, a failed refresh keeps the last credential
(it may still be valid), is tried again after a few seconds rather than at every
request, and is logged at most once a minute; its recovery is logged once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from kubernetes import client
from kubernetes.config.dateutil import parse_rfc3339
from kubernetes.config.kube_config import KUBE_CONFIG_DEFAULT_LOCATION, KubeConfigLoader, KubeConfigMerger

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
TOKEN_FILE_REREAD_S = 60.0
RETRY_FAILED_REFRESH_S = 5.0
LOG_FAILURE_EVERY_S = 60.0
EXEC_TIMEOUT_S = 60.0
EXEC_API_VERSIONS = ("client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1")
# Ways a kubeconfig user authenticates; what is left once they are removed is the TLS identity.
_USER_AUTH_KEYS = ("token", "tokenFile", "exec", "auth-provider", "username", "password")


class CredentialError(RuntimeError):
    """A credential could not be had; the message names the file or command and what went wrong."""


@dataclass(frozen=True)
class Credential:
    """What a request carries: a bearer token, or a client certificate (from an exec plugin)."""

    token: str | None = None
    cert_pem: str | None = None
    key_pem: str | None = None
    # Wall-clock seconds after which the credential must not be used again (exec plugins).
    expires_at: float | None = None


class Source(Protocol):
    """Where a credential comes from."""

    @property
    def description(self) -> str: ...

    # Read again this often even when nothing says it changed; None: only on expiry or a 401.
    @property
    def reread_s(self) -> float | None: ...

    def fetch(self) -> Credential: ...


@dataclass(frozen=True)
class StaticToken:
    token: str
    description: str = "the kubeconfig's token"
    reread_s: float | None = None

    def fetch(self) -> Credential:
        return Credential(token=self.token)


@dataclass(frozen=True)
class TokenFile:
    path: Path
    reread_s: float | None = TOKEN_FILE_REREAD_S

    @property
    def description(self) -> str:
        return f"token file {self.path}"

    def fetch(self) -> Credential:
        try:
            token = self.path.read_text().strip()
        except OSError as exc:
            raise CredentialError(f"{self.description}: {exc.strerror or exc}") from exc
        if not token:
            raise CredentialError(f"{self.description} is empty")
        return Credential(token=token)


@dataclass(frozen=True)
class ExecPlugin:
    """A client-go credential plugin, run as kubectl runs it (non-interactive)."""

    command: str
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    api_version: str = "client.authentication.k8s.io/v1"
    cwd: str | None = None
    cluster: Mapping[str, Any] | None = None
    reread_s: float | None = None

    @property
    def description(self) -> str:
        return f"exec plugin `{' '.join((self.command, *self.args))}`"

    def fetch(self) -> Credential:
        spec: dict[str, Any] = {"interactive": False}
        if self.cluster is not None:
            spec["cluster"] = dict(self.cluster)
        info = {"apiVersion": self.api_version, "kind": "ExecCredential", "spec": spec}
        env = {**os.environ, **dict(self.env), "KUBERNETES_EXEC_INFO": json.dumps(info)}
        try:
            done = subprocess.run(
                [self.command, *self.args],
                env=env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=EXEC_TIMEOUT_S,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise CredentialError(f"{self.description} could not be run: {exc}") from exc
        if done.returncode != 0:
            stderr = done.stderr.strip()[-2000:] or "(nothing on stderr)"
            raise CredentialError(f"{self.description} exited with {done.returncode}: {stderr}")
        return self._parse(done.stdout)

    def _parse(self, stdout: str) -> Credential:
        try:
            body = json.loads(stdout)
        except ValueError as exc:
            raise CredentialError(f"{self.description} printed no ExecCredential JSON: {exc}") from exc
        if not isinstance(body, dict) or body.get("kind") != "ExecCredential":
            raise CredentialError(f"{self.description} printed something other than an ExecCredential")
        if body.get("apiVersion") != self.api_version:
            raise CredentialError(
                f"{self.description} answered with apiVersion {body.get('apiVersion')!r}, "
                f"not the kubeconfig's {self.api_version!r}"
            )
        status = body.get("status") or {}
        expires_at = None
        if status.get("expirationTimestamp"):
            try:
                expires_at = parse_rfc3339(status["expirationTimestamp"]).timestamp()
            except (ValueError, TypeError) as exc:
                raise CredentialError(
                    f"{self.description}: expirationTimestamp {status['expirationTimestamp']!r} "
                    "is not an RFC 3339 time"
                ) from exc
        if status.get("token"):
            return Credential(token=str(status["token"]), expires_at=expires_at)
        if status.get("clientCertificateData") and status.get("clientKeyData"):
            return Credential(
                cert_pem=str(status["clientCertificateData"]),
                key_pem=str(status["clientKeyData"]),
                expires_at=expires_at,
            )
        raise CredentialError(
            f"{self.description} gave neither a token nor clientCertificateData with clientKeyData"
        )


class FreshCredential:
    """The refresh rules around one source; thread-safe; `clock` is wall-clock seconds."""

    def __init__(
        self,
        source: Source,
        clock: Callable[[], float] = time.time,
        retry_failed_s: float = RETRY_FAILED_REFRESH_S,
        log_failure_every_s: float = LOG_FAILURE_EVERY_S,
    ) -> None:
        self.source = source
        self.clock = clock
        self.retry_failed_s = retry_failed_s
        self.log_failure_every_s = log_failure_every_s
        self._lock = threading.Lock()
        # The first fetch is not caught: a process that cannot authenticate at all must say so.
        self._current = source.fetch()
        self._fetched_at = clock()
        self._failed_at: float | None = None
        self._failures = 0
        self._logged_at: float | None = None

    def due(self, now: float) -> bool:
        """Whether the credential is to be fetched again before the next request."""
        if self._failed_at is not None and now < self._failed_at + self.retry_failed_s:
            return False
        expires_at = self._current.expires_at
        if expires_at is not None and now >= expires_at:
            return True
        reread_s = self.source.reread_s
        return reread_s is not None and now >= self._fetched_at + reread_s

    def get(self) -> Credential:
        """The credential for the next request, fetched again first if it is due."""
        with self._lock:
            now = self.clock()
            if self.due(now):
                self._refresh(now)
            return self._current

    def refused(self, sent: Credential) -> bool:
        """A request carrying `sent` was refused with 401: whether to send it again with `get()`.

        Fetched again at once unless another request's refusal already did (or a failed fetch
        is still waiting out its retry delay); sent again only with a credential that differs.
        """
        with self._lock:
            now = self.clock()
            if sent == self._current and not (
                self._failed_at is not None and now < self._failed_at + self.retry_failed_s
            ):
                if self._refresh(now, announce=False):
                    log.warning(
                        "the API server refused the credential from %s (401); a new one was fetched "
                        "and the request sent again with it",
                        self.source.description,
                    )
                elif self._failed_at is None:
                    log.warning(
                        "the API server refused the credential from %s (401), and it gives the same "
                        "one again",
                        self.source.description,
                    )
            return self._current != sent

    def _refresh(self, now: float, announce: bool = True) -> bool:
        """Fetch the credential again; True if it changed."""
        try:
            fresh = self.source.fetch()
        except CredentialError as exc:
            self._failures += 1
            self._failed_at = now
            if self._logged_at is None or now - self._logged_at >= self.log_failure_every_s:
                self._logged_at = now
                log.error(
                    "credential refresh failed (%d time(s) so far; using the last credential, "
                    "trying again every %.0f s): %s",
                    self._failures,
                    self.retry_failed_s,
                    exc,
                )
            return False
        if self._failures:
            log.warning(
                "credential from %s fetched again after %d failed attempt(s)",
                self.source.description,
                self._failures,
            )
        changed = fresh != self._current
        if changed and announce and self._current.expires_at is None:
            # A plugin's credential changes at every expiry; a file's only when it was replaced.
            log.info("%s holds a new credential; requests carry it from now on", self.source.description)
        self._current, self._fetched_at = fresh, now
        self._failed_at, self._failures, self._logged_at = None, 0, None
        return changed


# Where the client reads the bearer token: `BearerToken` since kubernetes 36, `authorization`
# before (both are read, the first that is set wins).
_TOKEN_KEYS = ("BearerToken", "authorization")


class RefreshingApiClient(client.ApiClient):
    """An `ApiClient` whose every request carries the fresh credential, sent once more after a 401."""

    def __init__(self, configuration: client.Configuration, credential: FreshCredential | None) -> None:
        self.credential = credential
        self._tls_identity: tuple[str | None, str | None] = (None, None)
        # The files of the identity replaced last: a request already on its way may still open a
        # connection with them, so they go only at the next replacement.
        self._retired: list[str] = []
        # The scheduler's errands (errands.py) share this client with its loop.
        self._lock = threading.Lock()
        if credential is not None:
            self._use(configuration, credential.get())
        super().__init__(configuration)

    def call_api(self, *args: Any, **kwargs: Any) -> Any:
        if self.credential is None:
            return super().call_api(*args, **kwargs)
        sent = self._current()
        try:
            return super().call_api(*args, **kwargs)
        except client.ApiException as exc:
            if exc.status != 401 or not self.credential.refused(sent):
                raise
            self._current()
            return super().call_api(*args, **kwargs)

    def _current(self) -> Credential:
        assert self.credential is not None
        with self._lock:
            credential = self.credential.get()
            if self._use(self.configuration, credential):
                # A new client certificate takes a new TLS context, and so a new connection pool.
                self.rest_client = client.rest.RESTClientObject(self.configuration)
        return credential

    def _use(self, configuration: client.Configuration, credential: Credential) -> bool:
        """Put `credential` where the client reads it; True if its TLS identity changed."""
        if credential.token is not None:
            for key in _TOKEN_KEYS:
                configuration.api_key[key] = f"Bearer {credential.token}"
            return False
        identity = (credential.cert_pem, credential.key_pem)
        if credential.cert_pem is None or identity == self._tls_identity:
            return False
        # The files of the identity replaced: connections already open keep what they loaded.
        replaced = [configuration.cert_file, configuration.key_file] if self._tls_identity[0] else []
        self._tls_identity = identity
        configuration.cert_file = _private_file(credential.cert_pem, ".crt")
        configuration.key_file = _private_file(str(credential.key_pem), ".key")
        for path in self._retired:
            with contextlib.suppress(OSError):
                os.unlink(path)
        self._retired = replaced
        return True


def _private_file(content: str, suffix: str) -> str:
    fd, path = tempfile.mkstemp(prefix="k8s-executor-", suffix=suffix)
    with os.fdopen(fd, "w") as f:
        f.write(content)
    return path


# --- where credentials are read from --------------------------------------------------------


def in_cluster(
    configuration: client.Configuration,
    service_account_dir: Path = SERVICE_ACCOUNT_DIR,
    environ: Mapping[str, str] = os.environ,
) -> Source:
    """A pod's own identity: the API server's address from its environment, its CA and token files."""
    host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        raise CredentialError(
            "[kubernetes_executor] in_cluster is True, but KUBERNETES_SERVICE_HOST and "
            "KUBERNETES_SERVICE_PORT are not set: this process does not run in a pod. Outside a "
            "cluster, set in_cluster = False and config_file (and cluster_context) to a kubeconfig."
        )
    if ":" in host:
        host = f"[{host}]"
    configuration.host = f"https://{host}:{port}"
    ca = service_account_dir / "ca.crt"
    if not ca.is_file():
        raise CredentialError(f"in-cluster CA file {ca} is missing: is a ServiceAccount token mounted?")
    configuration.ssl_ca_cert = str(ca)
    return TokenFile(service_account_dir / "token")


def from_kubeconfig(
    configuration: client.Configuration, config_file: str | None, context: str | None
) -> Source | None:
    """The cluster and TLS identity of a kubeconfig into `configuration`; its user's token source.

    The kubernetes client reads the cluster (server, CA, TLS options, client certificate);
    the user's token, tokenFile or exec plugin becomes a `Source` this module keeps fresh.
    None for a user that authenticates by client certificate alone.
    """
    paths = config_file or os.environ.get("KUBECONFIG") or KUBE_CONFIG_DEFAULT_LOCATION
    merged = KubeConfigMerger(os.path.expanduser(paths)).config
    if merged is None:
        raise CredentialError(f"kubeconfig {paths} not found (set [kubernetes_executor] config_file)")
    # Each entry remembers the file it came from: relative paths are relative to that file.
    entries = {kind: _named_entries(merged.value.get(kind)) for kind in ("clusters", "contexts", "users")}
    context_name = context or merged.value.get("current-context")
    if context_name not in entries["contexts"]:
        raise CredentialError(f"kubeconfig {paths} has no context {context_name!r}")
    chosen = entries["contexts"][context_name][0].get("context") or {}
    user, user_file = entries["users"].get(str(chosen.get("user")), ({}, None))
    cluster, cluster_file = entries["clusters"].get(str(chosen.get("cluster")), ({}, None))
    document = {
        "current-context": context_name,
        "contexts": [{"name": context_name, "context": chosen}],
        "clusters": [cluster] if cluster else [],
        # The user's TLS identity only: its token, token file or plugin is this module's.
        "users": [
            {
                "name": chosen.get("user"),
                "user": {k: v for k, v in (user.get("user") or {}).items() if k not in _USER_AUTH_KEYS},
            }
        ],
    }
    KubeConfigLoader(
        config_dict=document, active_context=context_name, config_base_path=_directory(cluster_file)
    ).load_and_set(configuration)
    return _user_source(user.get("user") or {}, _directory(user_file), cluster.get("cluster"), paths)


def _named_entries(items: Any) -> dict[str, tuple[dict[str, Any], str | None]]:
    """A kubeconfig list (clusters, contexts, users) by name, each with the file it came from."""
    found: dict[str, tuple[dict[str, Any], str | None]] = {}
    for item in items or []:
        value, path = (item.value, item.path) if hasattr(item, "value") else (item, None)
        if isinstance(value, dict) and value.get("name") is not None:
            found.setdefault(str(value["name"]), (value, path))
    return found


def _directory(path: str | None) -> str | None:
    return os.path.dirname(os.path.abspath(path)) if path else None


def _user_source(
    user: dict[str, Any], base: str | None, cluster: dict[str, Any] | None, paths: str
) -> Source | None:
    if user.get("token"):
        return StaticToken(str(user["token"]))
    if user.get("tokenFile"):
        path = Path(os.path.expanduser(user["tokenFile"]))
        return TokenFile(path if path.is_absolute() or base is None else Path(base) / path)
    if user.get("exec"):
        spec = user["exec"]
        if not spec.get("command"):
            raise CredentialError(f"kubeconfig {paths}: the user's exec plugin names no command")
        api_version = spec.get("apiVersion") or ""
        if api_version not in EXEC_API_VERSIONS:
            raise CredentialError(
                f"kubeconfig {paths}: exec plugin apiVersion {api_version!r} is not one of {EXEC_API_VERSIONS}"
            )
        if spec.get("interactiveMode") == "Always":
            raise CredentialError(
                f"kubeconfig {paths}: the exec plugin `{spec['command']}` asks for interactiveMode Always, "
                "and a scheduler has no terminal"
            )
        return ExecPlugin(
            command=str(spec["command"]),
            args=tuple(str(a) for a in spec.get("args") or ()),
            env=tuple((str(e["name"]), str(e["value"])) for e in spec.get("env") or ()),
            api_version=api_version,
            cwd=base,
            cluster=cluster if spec.get("provideClusterInfo") else None,
        )
    if user.get("auth-provider"):
        name = (user["auth-provider"] or {}).get("name")
        raise CredentialError(
            f"kubeconfig {paths}: auth-provider {name!r} is not supported (Kubernetes removed the "
            "in-tree providers); use the provider's exec plugin, e.g. gke-gcloud-auth-plugin or kubelogin"
        )
    if user.get("username"):
        raise CredentialError(
            f"kubeconfig {paths}: basic authentication (username/password) is not supported"
        )
    return None
