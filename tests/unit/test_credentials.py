"""The credential refresh rules (credentials.py), with an injected clock, and where credentials are read from."""

from __future__ import annotations

import json
import logging
import stat
import textwrap
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from k8s_executor import credentials
from k8s_executor.credentials import Credential, CredentialError, FreshCredential


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Tokens:
    """A source handing out token-1, token-2, ...; `fail` makes the next fetches raise."""

    def __init__(
        self, reread_s: float | None = None, lifetime_s: float | None = None, clock: Clock | None = None
    ):
        self.fetches = 0
        self.fail: str | None = None
        self.reread_s = reread_s
        self.lifetime_s = lifetime_s
        self.clock = clock
        self.description = "test tokens"

    def fetch(self) -> Credential:
        if self.fail:
            raise CredentialError(self.fail)
        self.fetches += 1
        expires = None
        if self.lifetime_s is not None and self.clock is not None:
            expires = self.clock.now + self.lifetime_s
        return Credential(token=f"token-{self.fetches}", expires_at=expires)


def test_a_token_file_is_read_again_once_a_minute_not_at_every_request() -> None:
    clock = Clock()
    source = Tokens(reread_s=60)
    fresh = FreshCredential(source, clock=clock)
    for _ in range(100):
        assert fresh.get().token == "token-1"
    clock.now += 59.9
    assert fresh.get().token == "token-1"
    clock.now += 0.1
    assert fresh.get().token == "token-2"
    assert source.fetches == 2


def test_an_exec_credential_is_used_until_it_expires_then_fetched_again() -> None:
    clock = Clock()
    source = Tokens(lifetime_s=30, clock=clock)
    fresh = FreshCredential(source, clock=clock)
    clock.now += 29
    assert fresh.get().token == "token-1"
    clock.now += 1
    assert fresh.get().token == "token-2"
    clock.now += 29
    assert fresh.get().token == "token-2"
    assert source.fetches == 2


def test_a_401_fetches_again_at_once_and_retries_only_with_a_different_credential() -> None:
    clock = Clock()
    source = Tokens()
    fresh = FreshCredential(source, clock=clock)
    sent = fresh.get()
    assert fresh.refused(sent) is True
    assert fresh.get().token == "token-2"
    # A second request refused with the old credential: already replaced, no new fetch.
    assert fresh.refused(sent) is True
    assert source.fetches == 2


def test_a_401_with_a_credential_that_does_not_change_is_not_retried() -> None:
    class Same(Tokens):
        def fetch(self) -> Credential:
            self.fetches += 1
            return Credential(token="same")

    fresh = FreshCredential(Same(), clock=Clock())
    assert fresh.refused(fresh.get()) is False


def test_the_first_fetch_failing_raises_with_the_sources_words() -> None:
    source = Tokens()
    source.fail = "token file /nowhere: No such file or directory"
    with pytest.raises(CredentialError, match="/nowhere"):
        FreshCredential(source, clock=Clock())


def test_a_failing_refresh_keeps_the_last_credential_waits_between_tries_and_logs_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    source = Tokens(reread_s=60)
    fresh = FreshCredential(source, clock=clock, retry_failed_s=5, log_failure_every_s=60)
    clock.now += 60
    source.fail = "plugin down"
    with caplog.at_level(logging.INFO, logger="k8s_executor.credentials"):
        attempts = 0
        for _ in range(120):  # two minutes of requests, one a second
            before = source.fetches
            assert fresh.get().token == "token-1"
            assert fresh.refused(Credential(token="token-1")) is False
            attempts += source.fetches - before
            clock.now += 1
        failures = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(failures) == 2, [r.getMessage() for r in failures]
        assert "plugin down" in failures[0].getMessage()
        source.fail = None
        clock.now += 5
        assert fresh.get().token == "token-2"
    recovered = [r.getMessage() for r in caplog.records if "after" in r.getMessage()]
    assert len(recovered) == 1 and "failed attempt" in recovered[0]


def test_token_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(CredentialError, match=str(tmp_path / "missing")):
        credentials.TokenFile(tmp_path / "missing").fetch()
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(CredentialError, match="is empty"):
        credentials.TokenFile(tmp_path / "empty").fetch()
    (tmp_path / "token").write_text("abc\n")
    assert credentials.TokenFile(tmp_path / "token").fetch() == Credential(token="abc")


def plugin(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "plugin.sh"
    script.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def test_exec_plugin_protocol(tmp_path: Path) -> None:
    script = plugin(
        tmp_path,
        """
        echo "$KUBERNETES_EXEC_INFO" > "$(dirname "$0")/info.json"
        echo '{"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
               "status": {"token": "t0k", "expirationTimestamp": "2030-01-02T03:04:05Z"}}'
        """,
    )
    got = credentials.ExecPlugin(str(script), args=("a",)).fetch()
    assert got.token == "t0k" and got.expires_at == 1893553445.0
    info = json.loads((tmp_path / "info.json").read_text())
    assert info["kind"] == "ExecCredential" and info["spec"]["interactive"] is False


def test_exec_plugin_that_fails_is_named_with_its_stderr(tmp_path: Path) -> None:
    script = plugin(tmp_path, "echo 'could not reach the token service' >&2\nexit 3\n")
    with pytest.raises(CredentialError) as failed:
        credentials.ExecPlugin(str(script), args=("get-token",)).fetch()
    assert str(failed.value) == (
        f"exec plugin `{script} get-token` exited with 3: could not reach the token service"
    )
    with pytest.raises(CredentialError, match="could not be run"):
        credentials.ExecPlugin(str(tmp_path / "absent")).fetch()


@pytest.mark.parametrize(
    ("stdout", "message"),
    [
        ("not json", "printed no ExecCredential JSON"),
        ('{"kind": "Other"}', "something other than an ExecCredential"),
        (
            '{"apiVersion": "client.authentication.k8s.io/v1beta1", "kind": "ExecCredential", "status": {}}',
            "not the kubeconfig's",
        ),
        (
            '{"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential", "status": {}}',
            "neither a token",
        ),
    ],
)
def test_exec_plugin_output_that_is_not_a_credential(tmp_path: Path, stdout: str, message: str) -> None:
    script = plugin(tmp_path, f"cat <<'EOF'\n{stdout}\nEOF\n")
    with pytest.raises(CredentialError, match=message):
        credentials.ExecPlugin(str(script)).fetch()


def kubeconfig(tmp_path: Path, user: dict[str, object]) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443"}}],
                "users": [{"name": "u", "user": user}],
                "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "ctx",
            }
        )
    )
    return path


def test_kubeconfig_users_become_sources(tmp_path: Path) -> None:
    cfg = client.Configuration()
    source = credentials.from_kubeconfig(cfg, str(kubeconfig(tmp_path, {"token": "abc"})), None)
    assert source == credentials.StaticToken("abc") and cfg.host == "https://127.0.0.1:6443"
    source = credentials.from_kubeconfig(cfg, str(kubeconfig(tmp_path, {"tokenFile": "tok"})), None)
    assert source == credentials.TokenFile(tmp_path / "tok")
    source = credentials.from_kubeconfig(
        cfg,
        str(
            kubeconfig(
                tmp_path,
                {
                    "exec": {
                        "apiVersion": "client.authentication.k8s.io/v1beta1",
                        "command": "aws",
                        "args": ["eks", "get-token"],
                        "env": [{"name": "AWS_PROFILE", "value": "p"}],
                    }
                },
            )
        ),
        "ctx",
    )
    assert isinstance(source, credentials.ExecPlugin)
    assert source.description == "exec plugin `aws eks get-token`" and source.env == (("AWS_PROFILE", "p"),)
    assert credentials.from_kubeconfig(cfg, str(kubeconfig(tmp_path, {})), None) is None


@pytest.mark.parametrize(
    ("user", "context", "message"),
    [
        ({"auth-provider": {"name": "gcp"}}, None, "use the provider's exec plugin"),
        ({"exec": {"apiVersion": "client.authentication.k8s.io/v1alpha1", "command": "x"}}, None, "v1alpha1"),
        (
            {
                "exec": {
                    "apiVersion": "client.authentication.k8s.io/v1",
                    "command": "x",
                    "interactiveMode": "Always",
                }
            },
            None,
            "no terminal",
        ),
        ({"token": "a"}, "elsewhere", "no context 'elsewhere'"),
    ],
)
def test_kubeconfig_users_that_cannot_work_here_say_why(
    tmp_path: Path, user: dict[str, object], context: str | None, message: str
) -> None:
    with pytest.raises(CredentialError, match=message):
        credentials.from_kubeconfig(client.Configuration(), str(kubeconfig(tmp_path, user)), context)


def test_in_cluster_reads_the_pods_environment_and_service_account_files(tmp_path: Path) -> None:
    cfg = client.Configuration()
    with pytest.raises(CredentialError, match="does not run in a pod"):
        credentials.in_cluster(cfg, tmp_path, environ={})
    env = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}
    with pytest.raises(CredentialError, match=r"ca\.crt is missing"):
        credentials.in_cluster(cfg, tmp_path, environ=env)
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    source = credentials.in_cluster(cfg, tmp_path, environ=env)
    assert cfg.host == "https://[fd00::1]:443" and cfg.ssl_ca_cert == str(tmp_path / "ca.crt")
    assert source == credentials.TokenFile(tmp_path / "token")
    assert source.reread_s == 60


def test_an_exec_plugins_client_certificate_is_used_and_replaced_when_it_expires() -> None:
    """A plugin may answer with a client certificate: a new one takes a new TLS connection pool,
    and the files of the old one are removed."""
    clock = Clock()

    class Certificates:
        description = "test certificates"
        reread_s = None
        issued = 0

        def fetch(self) -> Credential:
            self.issued += 1
            return Credential(
                cert_pem=f"cert {self.issued}", key_pem=f"key {self.issued}", expires_at=clock.now + 60
            )

    cfg = client.Configuration(host="https://127.0.0.1:9")
    api = credentials.RefreshingApiClient(cfg, FreshCredential(Certificates(), clock=clock))
    first_pool, first_files = api.rest_client, (cfg.cert_file, cfg.key_file)
    assert [Path(f).read_text() for f in first_files] == ["cert 1", "key 1"]
    assert cfg.auth_settings() == {}  # no bearer token beside the certificate
    api._current()  # what every request does first
    assert api.rest_client is first_pool
    clock.now += 60
    api._current()
    assert api.rest_client is not first_pool
    assert [Path(f).read_text() for f in (cfg.cert_file, cfg.key_file)] == ["cert 2", "key 2"]
    # A request already on its way (another thread's) may still open a connection with the first
    # identity's files: they go at the next replacement, never piling up.
    assert all(Path(f).exists() for f in first_files)
    second_files = (cfg.cert_file, cfg.key_file)
    clock.now += 60
    api._current()
    assert not any(Path(f).exists() for f in first_files)
    assert all(Path(f).exists() for f in second_files)


def test_a_token_is_where_every_client_version_reads_it() -> None:
    """`BearerToken` for kubernetes 36 and later, `authorization` before (Airflow 2's pins 32)."""
    fresh = FreshCredential(credentials.StaticToken("abc"), clock=Clock())
    cfg = client.Configuration(host="https://127.0.0.1:9")
    credentials.RefreshingApiClient(cfg, fresh)
    assert cfg.api_key == {"BearerToken": "Bearer abc", "authorization": "Bearer abc"}
    assert cfg.auth_settings()["BearerToken"]["value"] == "Bearer abc"


def test_a_refusal_is_not_slept_on_inside_a_call_unless_the_settings_say_so(tmp_path: Path) -> None:
    # urllib3's own default would wait out up to three Retry-Afters of a 429 inside one GET: in the
    # scheduler loop, that stalled the loop past its health check under an API server overload.
    from k8s_executor import kube_client
    from k8s_executor.settings import ExecutorSettings

    path = str(kubeconfig(tmp_path, {"token": "abc"}))
    retries = kube_client.connect(
        ExecutorSettings.parse({"in_cluster": "False", "config_file": path})
    ).configuration.retries
    assert retries.total == 3 and retries.respect_retry_after_header is False
    chosen = ExecutorSettings.parse(
        {"in_cluster": "False", "config_file": path, "api_client_retry_configuration": '{"total": 5}'}
    )
    retries = kube_client.connect(chosen).configuration.retries
    assert retries.total == 5 and retries.respect_retry_after_header is True
