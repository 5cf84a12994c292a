"""Each scheduler of a run as the Helm chart runs it: a ServiceAccount of its own, and its token
in a file at the in-cluster path, which is replaced while the scheduler runs.

The token is a TokenRequest bound to a Secret made for it, so that deleting the Secret
invalidates the token at once (the API server checks a bound token's object at every request).
That is how `invalidate` takes a credential away from a live scheduler: a fresh token goes into
the file first (as kubelet's token manager writes a projected token before the old one ends),
then the old one stops being accepted. A client that reads its token once keeps sending the
dead one; one that reads the file again (client-go reads it once a minute) recovers.

A scheduler process is started in a mount namespace of its own with its token directory
bind-mounted at /var/run/secrets/kubernetes.io/serviceaccount, as a container runtime mounts a
pod's projected volume, and with KUBERNETES_SERVICE_HOST/PORT set: both executors run with
`[kubernetes_executor] in_cluster = True`, their production default. A second cluster's identity
(a ServiceAccount there) comes as a kubeconfig whose user is its token file (`kubeconfig`),
bind-mounted beside it as a pod mounts a Secret.
"""

from __future__ import annotations

import json
import os
import shlex
import uuid
from dataclasses import dataclass
from pathlib import Path

from kubernetes import client

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
TOKEN_LIFETIME_S = 3600


@dataclass
class Identity:
    namespace: str
    name: str
    directory: Path  # holds `token` and `ca.crt`, mounted at SERVICE_ACCOUNT_DIR
    secret: str = ""  # the Secret the current token is bound to

    @property
    def username(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.name}"


def create(core: client.CoreV1Api, namespace: str, name: str, directory: Path, ca_file: Path) -> Identity:
    """A ServiceAccount, and a first token in `directory` beside the cluster's CA."""
    core.create_namespaced_service_account(namespace, {"metadata": {"name": name}})
    directory.mkdir(parents=True, exist_ok=True)
    _write(directory / "ca.crt", ca_file.read_bytes())
    _write(directory / "namespace", namespace.encode())
    identity = Identity(namespace, name, directory)
    rotate(core, identity)
    return identity


def rotate(core: client.CoreV1Api, identity: Identity) -> str:
    """A fresh token in the file, bound to a new Secret; returns the Secret of the token before."""
    old = identity.secret
    secret = f"{identity.name}-{uuid.uuid4().hex[:6]}"
    made = core.create_namespaced_secret(identity.namespace, {"metadata": {"name": secret}})
    request = core.create_namespaced_service_account_token(
        identity.name,
        identity.namespace,
        {
            "spec": {
                "expirationSeconds": TOKEN_LIFETIME_S,
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "name": secret,
                    "uid": made.metadata.uid,
                },
            }
        },
    )
    _write(identity.directory / "token", request.status.token.encode())
    identity.secret = secret
    return old


def kubeconfig(identity: Identity, server: str, mount_point: str) -> Path:
    """A kubeconfig in the identity's directory for a scheduler that sees that directory at
    `mount_point`: the cluster at `server`, its CA, and the identity's token file (read again as it
    changes, as a kubeconfig's `tokenFile` is)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "chaos", "cluster": {"server": server, "certificate-authority": f"{mount_point}/ca.crt"}}
        ],
        "users": [{"name": identity.name, "user": {"tokenFile": f"{mount_point}/token"}}],
        "contexts": [{"name": "chaos", "context": {"cluster": "chaos", "user": identity.name}}],
        "current-context": "chaos",
    }
    path = identity.directory / "kubeconfig"
    _write(path, json.dumps(config, indent=1).encode())
    return path


def invalidate(core: client.CoreV1Api, identity: Identity) -> str:
    """Rotate, then make the token the scheduler held until now be refused (its Secret goes)."""
    old = rotate(core, identity)
    core.delete_namespaced_secret(old, identity.namespace)
    return old


def _write(path: Path, data: bytes) -> None:
    # Replaced by a rename, so a reader never sees half a token (kubelet's atomic writer).
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o600)
    tmp.rename(path)


def in_pod(identity: Identity, command: list[str], mounts: dict[str, Path] | None = None) -> list[str]:
    """`command` in a mount namespace of its own that sees the identity's directory at the
    in-cluster path, and each of `mounts` (mount point -> directory: another cluster's kubeconfig
    and token, as a pod mounts a Secret) at its mount point. `unshare` and `sh` exec, so the
    process keeps the pid it was started with (a kill of that pid is a kill of the scheduler)."""
    binds = {SERVICE_ACCOUNT_DIR: identity.directory, **(mounts or {})}
    # The mount points must exist on the host's filesystem, which the namespace shares.
    for point in binds:
        Path(point).mkdir(parents=True, exist_ok=True)
    script = " && ".join(
        f"mount --bind {shlex.quote(str(source))} {shlex.quote(point)}" for point, source in binds.items()
    )
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        f'{script} && exec "$@"',
        "sh",
        *command,
    ]
