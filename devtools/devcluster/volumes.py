"""A pod's volumes on the process node, as kubelet's volume plugins lay them out.

Each volume is a directory under the pod's state directory (kubelet:
`/var/lib/kubelet/pods/<uid>/volumes/<plugin>~<name>`), bind-mounted at each
container's `mountPath` inside that container's own mount namespace (the shim
does the mounting, see shim.py), so two pods can both have
`/var/run/secrets/kubernetes.io/serviceaccount` and each sees its own.

- `emptyDir`: an empty directory that lives as long as the pod.
- `hostPath`: the host's path itself (`DirectoryOrCreate` / `FileOrCreate` make it).
- `configMap`, `secret`, `downwardAPI`, `projected`: files written with kubelet's
  atomic writer (pkg/volume/util/atomic_writer.go): the payload goes to a new
  timestamped directory, `..data` is swapped to it by a rename, and each visible
  name is a symlink through `..data`, so a reader never sees half an update.
  `items` choose and rename keys, `defaultMode` / `mode` set permissions.
- `projected` `serviceAccountToken` (the `kube-api-access-*` volume the
  ServiceAccount admission plugin adds): a TokenRequest for the pod's
  ServiceAccount with the source's audience and expiry, bound to the pod (name
  and uid), so the token dies with the pod. It is requested again once 80% of its
  life has passed or it is 24 hours old (kubelet's token manager,
  pkg/kubelet/token/token_manager.go `requiresRefresh`, jitter left out).

Kubelet sets volumes up again at every pod sync; `PodVolumes.refresh` is that
sync, called by the agent every few seconds. A source that cannot be read keeps
the pod's containers from starting (kubelet's `FailedMount`) and is tried again.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException
from urllib3.exceptions import HTTPError

from k8s_executor.kube_client import read_json

# Kubelet's defaults (api/core/v1 defaults.go).
DEFAULT_MODE = 0o644
DEFAULT_TOKEN_EXPIRATION_S = 3600
# pkg/kubelet/token/token_manager.go
TOKEN_MAX_TTL_S = 24 * 3600
TOKEN_REFRESH_AT = 0.8


class MountError(Exception):
    """A volume cannot be set up (kubelet's FailedMount); the containers wait and it is tried again."""


@dataclass(frozen=True)
class Mount:
    source: Path
    target: str
    read_only: bool

    def shim_arg(self) -> str:
        return json.dumps({"source": str(self.source), "target": self.target, "readOnly": self.read_only})


@dataclass
class IssuedToken:
    token: str
    issued_at: float
    expires_at: float


def token_needs_refresh(token: IssuedToken, now: float) -> bool:
    """Kubelet's rule: a new token once 80% of the old one's life has passed, or after 24 hours."""
    lifetime = token.expires_at - token.issued_at
    return now >= token.issued_at + TOKEN_MAX_TTL_S or now >= token.issued_at + lifetime * TOKEN_REFRESH_AT


def downward_value(pod: dict[str, Any], path: str) -> str:
    """A `fieldRef` value as kubelet's fieldpath.ExtractFieldPathAsString renders it."""
    meta = pod["metadata"]
    if path in ("metadata.labels", "metadata.annotations"):
        values = meta.get(path.split(".")[1]) or {}
        return "\n".join(f"{k}={json.dumps(v)}" for k, v in sorted(values.items()))
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": pod["spec"].get("nodeName"),
        "spec.serviceAccountName": pod["spec"].get("serviceAccountName"),
        # Pods of a process node share the host's network.
        "status.podIP": "127.0.0.1",
        "status.hostIP": "127.0.0.1",
    }
    if path in simple:
        return str(simple[path] or "")
    for kind in ("labels", "annotations"):
        prefix = f"metadata.{kind}['"
        if path.startswith(prefix) and path.endswith("']"):
            return str((meta.get(kind) or {}).get(path[len(prefix) : -2], ""))
    raise MountError(f"unsupported fieldPath {path!r}")


class PodVolumes:
    """The volumes of one pod on this node."""

    def __init__(
        self,
        api: client.CoreV1Api,
        pod: dict[str, Any],
        directory: Path,
        clock: Callable[[], float],
    ) -> None:
        self.api = api
        self.pod = pod
        self.directory = directory
        self.clock = clock
        self.tokens: dict[tuple[str, str], IssuedToken] = {}
        self.paths: dict[str, Path] = {}

    @property
    def namespace(self) -> str:
        return str(self.pod["metadata"]["namespace"])

    def set_up(self) -> None:
        """Every volume made ready (or brought up to date); MountError names the one that is not."""
        for volume in self.pod["spec"].get("volumes") or []:
            self.paths[volume["name"]] = self._set_up(volume)

    refresh = set_up

    def mounts(self, container: dict[str, Any]) -> list[Mount]:
        mounts = []
        for mount in container.get("volumeMounts") or []:
            source = self.paths.get(mount["name"])
            if source is None:
                raise MountError(f'volume "{mount["name"]}" of container "{container["name"]}" is not set up')
            if mount.get("subPath"):
                source = self._sub_path(source, mount["subPath"])
            mounts.append(Mount(source, mount["mountPath"], bool(mount.get("readOnly"))))
        return mounts

    def _sub_path(self, volume: Path, sub_path: str) -> Path:
        path = (volume / sub_path).resolve()
        # Kubelet refuses a subPath that leads out of its volume (subpath.go, SafeMakeDir).
        if not str(path).startswith(str(volume.resolve())):
            raise MountError(f"subPath {sub_path!r} leads outside its volume")
        if not path.exists():
            path.mkdir(parents=True)
        return path

    def _set_up(self, volume: dict[str, Any]) -> Path:
        name = volume["name"]
        if "hostPath" in volume:
            return self._host_path(volume["hostPath"])
        if "persistentVolumeClaim" in volume:
            return self._claimed(volume["persistentVolumeClaim"]["claimName"])
        if "emptyDir" in volume:
            path = self.directory / "volumes" / f"empty-dir~{name}"
            path.mkdir(parents=True, exist_ok=True)
            return path
        if "configMap" in volume:
            source = volume["configMap"]
            files = self._config_map_files(source, source.get("defaultMode", DEFAULT_MODE))
            plugin = "configmap"
        elif "secret" in volume:
            source = volume["secret"]
            files = self._secret_files(source, source.get("defaultMode", DEFAULT_MODE))
            plugin = "secret"
        elif "downwardAPI" in volume:
            source = volume["downwardAPI"]
            files = self._downward_files(source.get("items") or [], source.get("defaultMode", DEFAULT_MODE))
            plugin = "downward-api"
        elif "projected" in volume:
            files = self._projected_files(volume["projected"])
            plugin = "projected"
        else:
            kinds = sorted(set(volume) - {"name"})
            raise MountError(f'volume "{name}": {", ".join(kinds)} is not supported on a process node')
        path = self.directory / "volumes" / f"{plugin}~{name}"
        atomic_write(path, files)
        return path

    def _claimed(self, claim_name: str) -> Path:
        """A claim's volume: kubelet mounts what the claim is bound to; here a hostPath or local one."""
        claim = self._read(
            "persistentvolumeclaim", self.api.read_namespaced_persistent_volume_claim, claim_name, False
        )
        assert claim is not None
        volume_name = (claim.get("spec") or {}).get("volumeName")
        if not volume_name or (claim.get("status") or {}).get("phase") != "Bound":
            raise MountError(f'persistentvolumeclaim "{claim_name}" is not bound')
        try:
            volume = read_json(self.api.read_persistent_volume(volume_name, _preload_content=False))
        except (ApiException, HTTPError, OSError, ValueError) as exc:
            raise MountError(f"couldn't get persistentvolume {volume_name}: {exc}") from exc
        spec = volume.get("spec") or {}
        if "hostPath" in spec:
            return self._host_path(spec["hostPath"])
        if "local" in spec:
            return Path(spec["local"]["path"])
        raise MountError(
            f"persistentvolume {volume_name}: only hostPath and local volumes mount on a process node"
        )

    def _host_path(self, source: dict[str, Any]) -> Path:
        path = Path(source["path"])
        kind = source.get("type") or ""
        if kind in ("DirectoryOrCreate", "") and not path.exists():
            # With no type kubelet checks nothing, and containerd's CRI makes a missing bind-mount
            # source as a directory: the same here.
            path.mkdir(parents=True, exist_ok=True)
        elif kind == "FileOrCreate" and not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        elif kind not in ("", "DirectoryOrCreate") and not path.exists():
            raise MountError(f"hostPath type check failed: {path} does not exist")
        return path

    # --- sources --------------------------------------------------------------------------
    def _read(self, kind: str, read: Callable[..., Any], name: str, optional: bool) -> dict[str, Any] | None:
        try:
            body: dict[str, Any] = read_json(read(name, self.namespace, _preload_content=False))
            return body
        except ApiException as exc:
            if exc.status == 404 and optional:
                return None
            if exc.status == 404:
                raise MountError(f'{kind} "{name}" not found') from exc
            raise MountError(f"couldn't get {kind} {self.namespace}/{name}: {exc.reason}") from exc
        except (HTTPError, OSError, ValueError) as exc:
            raise MountError(f"couldn't get {kind} {self.namespace}/{name}: {exc}") from exc

    def _config_map_files(self, source: dict[str, Any], mode: int) -> dict[str, tuple[bytes, int]]:
        body = self._read(
            "configmap", self.api.read_namespaced_config_map, source["name"], bool(source.get("optional"))
        )
        data = {k: v.encode() for k, v in ((body or {}).get("data") or {}).items()}
        data.update({k: base64.b64decode(v) for k, v in ((body or {}).get("binaryData") or {}).items()})
        return self._items(data, source, mode, f'configmap "{source["name"]}"')

    def _secret_files(self, source: dict[str, Any], mode: int) -> dict[str, tuple[bytes, int]]:
        name = source.get("secretName") or source.get("name")
        body = self._read("secret", self.api.read_namespaced_secret, str(name), bool(source.get("optional")))
        data = {k: base64.b64decode(v) for k, v in ((body or {}).get("data") or {}).items()}
        return self._items(data, source, mode, f'secret "{name}"')

    def _items(
        self, data: dict[str, bytes], source: dict[str, Any], mode: int, what: str
    ) -> dict[str, tuple[bytes, int]]:
        """Kubelet's MakePayload: every key, or only the `items`, each at its path and mode."""
        items = source.get("items")
        if not items:
            return {key: (value, mode) for key, value in data.items()}
        files = {}
        for item in items:
            if item["key"] not in data:
                if source.get("optional"):
                    continue
                raise MountError(f'{what} has no key "{item["key"]}"')
            files[item["path"]] = (data[item["key"]], item.get("mode", mode))
        return files

    def _downward_files(self, items: list[dict[str, Any]], mode: int) -> dict[str, tuple[bytes, int]]:
        files = {}
        for item in items:
            # Resource fields read empty: the process node enforces no requests or limits to report.
            value = downward_value(self.pod, item["fieldRef"]["fieldPath"]) if "fieldRef" in item else ""
            files[item["path"]] = (value.encode(), item.get("mode", mode))
        return files

    def _projected_files(self, projected: dict[str, Any]) -> dict[str, tuple[bytes, int]]:
        mode = projected.get("defaultMode", DEFAULT_MODE)
        files: dict[str, tuple[bytes, int]] = {}
        for source in projected.get("sources") or []:
            if "configMap" in source:
                files.update(self._config_map_files(source["configMap"], mode))
            elif "secret" in source:
                files.update(self._secret_files(source["secret"], mode))
            elif "downwardAPI" in source:
                files.update(self._downward_files(source["downwardAPI"].get("items") or [], mode))
            elif "serviceAccountToken" in source:
                token = source["serviceAccountToken"]
                files[token["path"]] = (self._token(token).encode(), mode)
            else:
                raise MountError(f"projected source {sorted(source)} is not supported on a process node")
        return files

    def _token(self, source: dict[str, Any]) -> str:
        key = (source.get("audience") or "", source["path"])
        issued = self.tokens.get(key)
        now = self.clock()
        if issued is None or token_needs_refresh(issued, now):
            issued = self.tokens[key] = self._request_token(source, now)
        return issued.token

    def _request_token(self, source: dict[str, Any], now: float) -> IssuedToken:
        meta = self.pod["metadata"]
        account = self.pod["spec"].get("serviceAccountName") or "default"
        body: dict[str, Any] = {
            "spec": {
                "expirationSeconds": source.get("expirationSeconds", DEFAULT_TOKEN_EXPIRATION_S),
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": meta["name"],
                    "uid": meta["uid"],
                },
            }
        }
        if source.get("audience"):
            body["spec"]["audiences"] = [source["audience"]]
        try:
            answer = read_json(
                self.api.create_namespaced_service_account_token(
                    account, self.namespace, body, _preload_content=False
                )
            )
        except ApiException as exc:
            raise MountError(f"failed to fetch token for service account {account}: {exc.reason}") from exc
        except (HTTPError, OSError, ValueError) as exc:
            raise MountError(f"failed to fetch token for service account {account}: {exc}") from exc
        expires = datetime.datetime.fromisoformat(
            answer["status"]["expirationTimestamp"].replace("Z", "+00:00")
        ).timestamp()
        return IssuedToken(answer["status"]["token"], issued_at=now, expires_at=expires)


DATA_DIR = "..data"


def atomic_write(target: Path, files: dict[str, tuple[bytes, int]]) -> None:
    """Kubelet's AtomicWriter.Write: a new timestamped directory, `..data` swapped to it by a rename."""
    target.mkdir(parents=True, exist_ok=True)
    data_link = target / DATA_DIR
    old = os.readlink(data_link) if data_link.is_symlink() else None
    if old is not None and _same_payload(target / old, files):
        return
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("..%Y_%m_%d_%H_%M_%S.%f")
    fresh = target / stamp
    fresh.mkdir()
    for relative, (content, mode) in files.items():
        path = fresh / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        path.chmod(mode)
    staged = target / "..data_tmp"
    staged.unlink(missing_ok=True)
    staged.symlink_to(stamp)
    staged.rename(data_link)
    visible = {Path(relative).parts[0] for relative in files}
    for name in visible:
        link = target / name
        if not link.is_symlink():
            link.symlink_to(Path(DATA_DIR) / name)
    for entry in target.iterdir():
        if not entry.name.startswith("..") and entry.name not in visible:
            entry.unlink()
    if old is not None:
        shutil.rmtree(target / old, ignore_errors=True)


def _same_payload(directory: Path, files: dict[str, tuple[bytes, int]]) -> bool:
    try:
        written = {
            str(p.relative_to(directory)): (p.read_bytes(), p.stat().st_mode & 0o7777)
            for p in directory.rglob("*")
            if p.is_file()
        }
    except OSError:
        return False
    return written == files
