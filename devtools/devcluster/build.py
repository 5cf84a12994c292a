"""Build the control plane from Go modules into a cache outside the checkout.

There is no image registry or release download here, so the real binaries come
from `k8s.io/kubernetes` and `go.etcd.io/etcd/server/v3` through the Go command.
The versions are pinned by the two Go modules beside this file; the cache
directory is keyed by them, so a warm start finds the binaries and builds nothing.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

GO_DIR = Path(__file__).resolve().parent / "go"


def apt_install(packages: list[str], why: str) -> None:
    """Debian's `packages`, installed through apt (a fresh machine of this kind has none of the
    real node's or the image build's)."""
    if not packages:
        return
    print(f"installing Debian packages for {why}: {' '.join(packages)}", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", *packages], check=True, env=env, stdout=subprocess.DEVNULL
    )


KUBE_BINARIES = {
    "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
    "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
    "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
    # The same release's client, so tests and people need no kubectl from elsewhere.
    "kubectl": "k8s.io/kubernetes/cmd/kubectl",
}
# A real node's own programs, built only when a cluster asks for one (runtime=containerd).
NODE_BINARIES = {
    "kubelet": "k8s.io/kubernetes/cmd/kubelet",
    "kube-proxy": "k8s.io/kubernetes/cmd/kube-proxy",
}
ETCD_PACKAGE = "go.etcd.io/etcd/server/v3"


def _required_version(module_dir: Path, module: str) -> str:
    text = (module_dir / "go.mod").read_text()
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", text, re.MULTILINE)
    if not match:
        raise RuntimeError(f"{module} is not required in {module_dir / 'go.mod'}")
    return match.group(1)


def kubernetes_version() -> str:
    return _required_version(GO_DIR / "kube", "k8s.io/kubernetes")


def etcd_version() -> str:
    return _required_version(GO_DIR / "etcd", ETCD_PACKAGE)


def kubernetes_module_dir() -> Path:
    """Where the Go command keeps k8s.io/kubernetes' sources (downloaded if they are not there)."""
    env = dict(os.environ, GOFLAGS="-mod=mod")
    out = subprocess.run(
        ["go", "list", "-m", "-f", "{{.Dir}}", "k8s.io/kubernetes"],
        cwd=GO_DIR / "kube",
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not out:
        subprocess.run(
            ["go", "mod", "download", "k8s.io/kubernetes"], cwd=GO_DIR / "kube", env=env, check=True
        )
        return kubernetes_module_dir()
    return Path(out)


def cache_root() -> Path:
    base = os.environ.get("K8S_EXECUTOR_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "k8s-executor"
    )
    return Path(base)


def bin_dir() -> Path:
    return cache_root() / f"bin-{kubernetes_version()}-{etcd_version()}"


def _kube_ldflags(version: str) -> str:
    major, minor = version.lstrip("v").split(".")[:2]
    pkg = "k8s.io/component-base/version"
    return " ".join(
        [
            "-s -w",
            f"-X {pkg}.gitVersion={version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.buildDate=1970-01-01T00:00:00Z",
        ]
    )


def _go_build(module_dir: Path, out: str, packages: list[str], ldflags: str) -> None:
    env = dict(os.environ, GOFLAGS="-mod=mod", CGO_ENABLED="0")
    subprocess.run(
        ["go", "build", "-trimpath", "-ldflags", ldflags, "-o", out, *packages],
        cwd=module_dir,
        env=env,
        check=True,
    )


def _ensure_kube(target: Path, binaries: dict[str, str], log: bool) -> None:
    missing = [name for name in binaries if not (target / name).exists()]
    if missing:
        if log:
            print(f"building {', '.join(missing)} {kubernetes_version()} (first run only)", flush=True)
        _go_build(
            GO_DIR / "kube",
            str(target) + os.sep,
            [binaries[name] for name in missing],
            _kube_ldflags(kubernetes_version()),
        )


def ensure_binaries(log: bool = True) -> Path:
    """Return the directory holding etcd and the Kubernetes binaries, building what is missing."""
    target = bin_dir()
    target.mkdir(parents=True, exist_ok=True)
    _ensure_kube(target, KUBE_BINARIES, log)
    if not (target / "etcd").exists():
        if log:
            print(f"building etcd {etcd_version()} (first run only)", flush=True)
        _go_build(GO_DIR / "etcd", str(target / "etcd"), [ETCD_PACKAGE], "-s -w")
    return target


def ensure_node_binaries(log: bool = True) -> Path:
    """Return the directory holding kubelet and kube-proxy (the control plane's version),
    building what is missing: several minutes on 2 cores the first time."""
    target = ensure_binaries(log)
    _ensure_kube(target, NODE_BINARIES, log)
    return target
