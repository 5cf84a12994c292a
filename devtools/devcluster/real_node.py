"""A real node beside the process node: kubelet (built from Go modules at the control plane's
version), Debian's containerd and runc, the CNI reference plugins, and kube-proxy.

`cluster up --node name=real-1,runtime=containerd` asks for one. Its pods run as real
containers in their own network namespaces, on a bridge of their own, and reach Services through
kube-proxy's iptables rules, as on a kubeadm node. Everything it makes lives under
`<cluster>/real-node/<name>/` or is named after the node, so `down` finds and removes it all:
containers and their shims, mounts, the bridge, iptables chains and kubelet's cgroups.

It is told apart from the process node by the label `devcluster.k8s-executor.dev/runtime=containerd`
and the taint `devcluster.k8s-executor.dev/real-node=true:NoSchedule`: the benchmark and the fault
run keep the fast process node, and a test that wants kubelet tolerates the taint.

What this machine kind needs (checked first, each missing piece named): cgroups that can be
written (v1 here; kubelet 1.35+ refuses v1 unless `failCgroupV1: false`), overlayfs, and Debian's
containerd, runc, containernetworking-plugins and iptables, installed when missing.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from devcluster import build, oci

RUNTIME_LABEL = "devcluster.k8s-executor.dev/runtime"
REAL_NODE_TAINT = "devcluster.k8s-executor.dev/real-node"
# Pods of the real node: one node per machine, since kube-proxy's chains and kubelet's cgroup
# tree are the machine's own.
POD_SUBNET = "10.244.0.0/24"
CLUSTER_CIDR = "10.244.0.0/16"
SERVICE_CIDR = "10.96.0.0/16"
CNI_BIN_DIR = Path("/usr/lib/cni")
_DEBIAN_PACKAGES = {
    "containerd": "containerd",
    "runc": "runc",
    "ctr": "containerd",
    "iptables": "iptables",
    "conntrack": "conntrack",
}
_CGROUP_CONTROLLERS = (
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "pids",
    "blkio",
    "devices",
    "freezer",
    "hugetlb",
    "systemd",
)


@dataclass(frozen=True)
class RealNodeSpec:
    name: str
    labels: dict[str, str]

    @classmethod
    def parse(cls, text: str) -> RealNodeSpec:
        """`name=N,runtime=containerd,label.K=V`: kubelet measures the machine's own capacity."""
        items = dict(part.split("=", 1) for part in text.split(",") if part)
        if items.pop("runtime", "") != "containerd":
            raise ValueError(f"not a real node's spec: {text!r}")
        name = items.pop("name")
        labels = {RUNTIME_LABEL: "containerd"}
        for key, value in items.items():
            if not key.startswith("label."):
                raise ValueError(f"a real node takes name, runtime and label.K=V; not {key!r} ({text!r})")
            labels[key.removeprefix("label.")] = value
        return cls(name, labels)


def is_real(node_arg: str) -> bool:
    return "runtime=containerd" in node_arg.split(",")


@dataclass(frozen=True)
class Layout:
    """Where one real node keeps everything it makes."""

    root: Path
    name: str

    @property
    def containerd_dir(self) -> Path:
        return self.root / "containerd"

    @property
    def socket(self) -> Path:
        return self.containerd_dir / "containerd.sock"

    @property
    def kubelet_dir(self) -> Path:
        return self.root / "kubelet"

    @property
    def cni_conf_dir(self) -> Path:
        return self.root / "cni" / "net.d"

    @property
    def bridge(self) -> str:
        return "k8se-" + re.sub(r"[^a-z0-9]", "", self.name)[:10]

    @property
    def network(self) -> str:
        return f"devcluster-{self.name}"


def layout(cluster_dir: Path, name: str) -> Layout:
    return Layout(cluster_dir / "real-node" / name, name)


# --- what the machine must have ------------------------------------------------------------------


def missing_capabilities() -> list[str]:
    """What this machine lacks for a real node, in words (empty when it has it all)."""
    missing = []
    cgroup_v1 = os.access("/sys/fs/cgroup/memory", os.W_OK)
    cgroup_v2 = Path("/sys/fs/cgroup/cgroup.controllers").exists() and os.access("/sys/fs/cgroup", os.W_OK)
    if not (cgroup_v1 or cgroup_v2):
        missing.append("a writable cgroup hierarchy with the memory controller (/sys/fs/cgroup)")
    if "overlay" not in Path("/proc/filesystems").read_text():
        missing.append("overlayfs (not in /proc/filesystems)")
    if os.geteuid() != 0:
        missing.append("root (kubelet and containerd run as root)")
    return missing


def ensure_packages() -> None:
    """Debian's containerd, runc, CNI plugins, iptables and conntrack, installed when missing."""
    wanted = sorted({pkg for cmd, pkg in _DEBIAN_PACKAGES.items() if shutil.which(cmd) is None})
    if not (CNI_BIN_DIR / "bridge").exists():
        wanted.append("containernetworking-plugins")
    if not Path("/bin/busybox").exists():
        wanted.append("busybox-static")
    if not shutil.which("gcc"):
        wanted.append("gcc")
    build.apt_install(wanted, "the real node")


def preflight() -> None:
    """Fail at once, naming what is missing, when a real node cannot run here."""
    missing = missing_capabilities()
    if missing:
        raise RuntimeError("a real node cannot run on this machine: it lacks " + "; ".join(missing))
    ensure_packages()
    still = [cmd for cmd in _DEBIAN_PACKAGES if shutil.which(cmd) is None]
    if still:
        raise RuntimeError(f"a real node needs {', '.join(still)}, which could not be installed")


def refuse_second(cluster_dir: Path) -> None:
    """One real node a machine: kube-proxy's chains and kubelet's `kubepods` cgroups are the
    machine's, so a second cluster's node would take them over."""
    mine = str(cluster_dir.resolve()).encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            theirs = argv[0].endswith(b"/kubelet") and any(b"/real-node/" in a for a in argv)
            if theirs and not any(mine in a for a in argv):
                config = next((a.decode() for a in argv if a.startswith(b"--config=")), "?")
                raise RuntimeError(
                    f"another cluster's real node runs on this machine (kubelet pid {entry}, {config}); "
                    "a machine holds one: bring that cluster down first"
                )


def host_ip() -> str:
    """The address pods and the API server reach this machine at: the default route's source."""
    out = subprocess.run(["ip", "-4", "-j", "route", "get", "192.0.2.255"], capture_output=True, text=True)
    with contextlib.suppress(ValueError, KeyError, IndexError):
        return str(json.loads(out.stdout)[0]["prefsrc"])
    addrs = json.loads(subprocess.run(["ip", "-4", "-j", "addr"], capture_output=True, text=True).stdout)
    for link in addrs:
        for addr in link.get("addr_info", []):
            if not ipaddress.ip_address(addr["local"]).is_loopback:
                return str(addr["local"])
    raise RuntimeError("a real node needs a non-loopback IPv4 address, and this machine has none")


# --- configuration ------------------------------------------------------------------------------


def containerd_config(lay: Layout) -> str:
    d = lay.containerd_dir
    return f"""version = 2
root = "{d / "root"}"
state = "{d / "state"}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{lay.socket}"
[ttrpc]
  address = "{lay.socket}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d / "opt"}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{oci.PAUSE_IMAGE}"
  # In a container, a process may not lower its OOM score below its parent's.
  restrict_oom_score_adj = true
  # Network namespaces under the state directory, not /var/run/netns: `down` finds them there.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{lay.cni_conf_dir}"
"""


def cni_config(lay: Layout) -> dict[str, Any]:
    """A bridge with masquerading, host-local addresses and hostPorts: what kind's and many
    kubeadm nodes' CNI does for pods on one node."""
    return {
        "cniVersion": "1.0.0",
        "name": lay.network,
        "plugins": [
            {
                "type": "bridge",
                "bridge": lay.bridge,
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_SUBNET}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(lay.root / "cni" / "ipam"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def kubelet_config(lay: Layout, port: int, ca: Path, cert: Path, key: Path) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        # This machine kind has cgroup v1; kubelet 1.35+ refuses it unless told.
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "containerRuntimeEndpoint": f"unix://{lay.socket}",
        "address": "0.0.0.0",
        "port": port,
        "readOnlyPort": 0,
        "healthzPort": 0,
        "tlsCertFile": str(cert),
        "tlsPrivateKeyFile": str(key),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca)},
        },
        "authorization": {"mode": "Webhook"},
        "podLogsDir": str(lay.root / "pod-logs"),
        "failSwapOn": False,
        "resolvConf": "/etc/resolv.conf",
        "podCIDR": POD_SUBNET,
        "maxPods": 110,
        "serializeImagePulls": False,
        # Images are built and imported here: kubelet must not collect them for disk space.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "2%", "imagefs.available": "2%"},
        "nodeStatusUpdateFrequency": "10s",
        "registerWithTaints": [{"key": REAL_NODE_TAINT, "value": "true", "effect": "NoSchedule"}],
        "protectKernelDefaults": False,
        "makeIPTablesUtilChains": False,
        "shutdownGracePeriod": "0s",
        "containerLogMaxSize": "10Mi",
    }


def kube_proxy_config(lay: Layout, kubeconfig: Path, metrics_port: int) -> dict[str, Any]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": lay.name,
        "clusterCIDR": CLUSTER_CIDR,
        "metricsBindAddress": f"127.0.0.1:{metrics_port}",
        "healthzBindAddress": "",
        # No br_netfilter here: masquerading every Service connection keeps replies between two pods
        # of the one bridge going back through the host, where the connection is un-NATed.
        "iptables": {"masqueradeAll": True},
        # Leave the machine's conntrack sysctls alone (read-only in a container).
        "conntrack": {"maxPerCore": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
    }


def write_configs(
    lay: Layout,
    *,
    kubelet_port: int,
    metrics_port: int,
    ca: Path,
    serving: tuple[Path, Path],
    proxy_kubeconfig: Path,
) -> dict[str, Path]:
    for sub in (lay.containerd_dir, lay.kubelet_dir, lay.cni_conf_dir, lay.root / "pod-logs"):
        sub.mkdir(parents=True, exist_ok=True)
    paths = {
        "containerd": lay.root / "containerd.toml",
        "kubelet": lay.root / "kubelet.yaml",
        "kube-proxy": lay.root / "kube-proxy.yaml",
    }
    paths["containerd"].write_text(containerd_config(lay))
    (lay.cni_conf_dir / "10-devcluster.conflist").write_text(json.dumps(cni_config(lay), indent=2))
    paths["kubelet"].write_text(yaml.safe_dump(kubelet_config(lay, kubelet_port, ca, *serving)))
    paths["kube-proxy"].write_text(yaml.safe_dump(kube_proxy_config(lay, proxy_kubeconfig, metrics_port)))
    return paths


# --- running ------------------------------------------------------------------------------------


def ctr(lay: Layout, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ctr", "--address", str(lay.socket), "--namespace", "k8s.io", *args],
        capture_output=True,
        text=True,
        check=check,
    )


def wait_for_containerd(lay: Layout, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if lay.socket.exists() and ctr(lay, "version", check=False).returncode == 0:
            return
        time.sleep(0.2)
    raise TimeoutError(f"containerd of node {lay.name} did not answer on {lay.socket} in {timeout_s:.0f}s")


def import_image(lay: Layout, archive: Path) -> None:
    ctr(lay, "images", "import", str(archive))


def import_base_images(lay: Layout) -> None:
    """The sandbox image kubelet's pods need, and busybox for tests: both built here."""
    for archive in (oci.pause_archive(), oci.busybox_archive()):
        import_image(lay, archive)


# --- leaving nothing behind ---------------------------------------------------------------------


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve())
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mount_point = line.split()[4].replace("\\040", " ")
        if mount_point == prefix or mount_point.startswith(prefix + "/"):
            found.append(mount_point)
    return sorted(set(found), key=lambda m: m.count("/"), reverse=True)


def _shims_of(lay: Layout) -> list[int]:
    pids = []
    marker = str(lay.socket).encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            if b"containerd-shim" in cmdline and marker in cmdline:
                pids.append(int(entry))
    return pids


def stop_containers(lay: Layout) -> None:
    """Kill every container of the node's containerd (while it still answers)."""
    if not lay.socket.exists() or ctr(lay, "version", check=False).returncode != 0:
        return
    for task in ctr(lay, "tasks", "ls", "-q", check=False).stdout.split():
        ctr(lay, "tasks", "kill", "--signal", "SIGKILL", task, check=False)
    deadline = time.monotonic() + 10
    while (
        tasks := ctr(lay, "tasks", "ls", "-q", check=False).stdout.split()
    ) and time.monotonic() < deadline:
        for task in tasks:
            ctr(lay, "tasks", "delete", "--force", task, check=False)
        time.sleep(0.2)
    for container in ctr(lay, "containers", "ls", "-q", check=False).stdout.split():
        ctr(lay, "containers", "delete", container, check=False)


def _iptables_rules_naming(words: tuple[str, ...]) -> list[tuple[str, str]]:
    """(table, rule) pairs whose text names one of `words` (as `iptables -S` prints them)."""
    found = []
    for table in ("nat", "filter", "mangle"):
        out = subprocess.run(["iptables", "-t", table, "-S"], capture_output=True, text=True).stdout
        for rule in out.splitlines():
            if rule.startswith("-A ") and any(w in rule for w in words):
                found.append((table, rule))
    return found


def _remove_iptables(lay: Layout, bins: Path | None) -> None:
    if bins is not None and (bins / "kube-proxy").exists():
        subprocess.run([str(bins / "kube-proxy"), "--cleanup"], capture_output=True)
    # What kube-proxy's cleanup and the CNI plugins did not undo (no CNI DEL for pods killed with
    # their node): rules that name the node's network or a KUBE- chain, then the chains left empty.
    for table, rule in _iptables_rules_naming((lay.network, lay.bridge, "KUBE-")):
        subprocess.run(["iptables", "-t", table, "-D", *shlex.split(rule)[1:]], capture_output=True)
    for table in ("nat", "filter", "mangle"):
        out = subprocess.run(["iptables", "-t", table, "-S"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            chain = line[3:] if line.startswith("-N ") else ""
            if chain.startswith(("KUBE-", "CNI-")):
                subprocess.run(["iptables", "-t", table, "-F", chain], capture_output=True)
        out = subprocess.run(["iptables", "-t", table, "-S"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            chain = line[3:] if line.startswith("-N ") else ""
            if chain.startswith(("KUBE-", "CNI-")):
                subprocess.run(["iptables", "-t", table, "-X", chain], capture_output=True)


def _remove_cgroups() -> None:
    """kubelet's `kubepods` tree in every controller: emptied once its containers are gone."""
    for controller in _CGROUP_CONTROLLERS:
        root = Path("/sys/fs/cgroup") / controller / "kubepods"
        if not root.exists():
            continue
        for directory in sorted(
            (p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
        ):
            with contextlib.suppress(OSError):
                directory.rmdir()
        with contextlib.suppress(OSError):
            root.rmdir()


def clean_up(lay: Layout, bins: Path | None) -> None:
    """After kubelet, kube-proxy and containerd have stopped: what they leave behind goes."""
    for pid in _shims_of(lay):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
    for mount_point in _mounts_under(lay.root):
        subprocess.run(["umount", "-l", mount_point], capture_output=True)
    subprocess.run(["ip", "link", "delete", lay.bridge], capture_output=True)
    _remove_iptables(lay, bins)
    _remove_cgroups()


def leftovers(lay: Layout) -> list[str]:
    """What of the node is still on the machine (empty after a clean `down`)."""
    found = [f"mount {m}" for m in _mounts_under(lay.root)]
    found += [f"containerd shim (pid {p})" for p in _shims_of(lay)]
    if Path(f"/sys/class/net/{lay.bridge}").exists():
        found.append(f"network interface {lay.bridge}")
    found += [f"iptables -t {t} {r}" for t, r in _iptables_rules_naming((lay.network, lay.bridge, "KUBE-"))]
    for table in ("nat", "filter", "mangle"):
        out = subprocess.run(["iptables", "-t", table, "-S"], capture_output=True, text=True).stdout
        found += [
            f"iptables -t {table} chain {line[3:]}"
            for line in out.splitlines()
            if line.startswith(("-N KUBE-", "-N CNI-"))
        ]
    found += [
        f"cgroup {c}/kubepods"
        for c in _CGROUP_CONTROLLERS
        if (Path("/sys/fs/cgroup") / c / "kubepods").exists()
    ]
    return found
