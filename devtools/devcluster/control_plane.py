"""Start and stop one development cluster: etcd, the API server, the scheduler,
the controller manager and the process node agent, all on loopback.

A cluster lives in one directory (certificates, etcd data, logs, kubeconfig and
`state.json` with ports and process ids), so several can run at once and
`down` kills exactly the processes that directory started.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from devcluster import build, pki, process_tree, real_node

READY_TIMEOUT_S = 120.0


def default_cluster_dir(name: str = "default") -> Path:
    return build.cache_root() / "clusters" / name


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ClusterState:
    directory: str
    etcd_port: int
    etcd_peer_port: int
    apiserver_port: int
    kubelet_port: int
    node_args: list[str] = field(default_factory=list)
    # Service-account tokens live at most this long, with no extension (None: the API server's defaults).
    token_max_expiration_s: int | None = None
    pids: dict[str, int] = field(default_factory=dict)
    # Where pods of a real node reach this machine (loopback when there is none).
    host_ip: str = "127.0.0.1"

    @property
    def real_nodes(self) -> list[str]:
        return [
            real_node.RealNodeSpec.parse(arg.removeprefix("--node=")).name
            for arg in self.node_args
            if real_node.is_real(arg.removeprefix("--node="))
        ]

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def etcd_url(self) -> str:
        return f"http://127.0.0.1:{self.etcd_port}"

    @property
    def kubeconfig(self) -> Path:
        return Path(self.directory) / "admin.kubeconfig"

    def save(self) -> None:
        (Path(self.directory) / "state.json").write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, directory: Path) -> ClusterState | None:
        path = directory / "state.json"
        if not path.exists():
            return None
        return cls(**json.loads(path.read_text()))


def write_kubeconfig(path: Path, server: str, ca: Path, cert: Path, key: Path, user: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "devcluster", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": user, "user": {"client-certificate": str(cert), "client-key": str(key)}}],
        "contexts": [{"name": user, "context": {"cluster": "devcluster", "user": user}}],
        "current-context": user,
    }
    path.write_text(yaml.safe_dump(config))
    return path


def _running(pid: int) -> bool:
    """True until the process has fully exited and closed its files and sockets.

    A killed multi-threaded process shows its leader as a zombie while its other
    threads still tear down and hold the listening socket, so count the threads.
    """
    try:
        fields = dict(
            line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
        )
    except OSError:
        return False
    return fields["State"].strip()[0] not in "ZX" or int(fields["Threads"]) > 1


def _alive(pid: int, directory: str) -> bool:
    """True if `pid` runs and belongs to this cluster (pids are reused)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return directory.encode() in cmdline and _running(pid)


def _kill(pid: int, grace_s: float) -> None:
    """SIGTERM the process group, SIGKILL it after `grace_s`, and wait until it is gone."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM if grace_s > 0 else signal.SIGKILL)
    deadline = time.monotonic() + grace_s
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    while _running(pid):
        time.sleep(0.02)


# Processes started by this process: their exit is known from `poll()`, not guessed from /proc.
_spawned: dict[int, subprocess.Popen[bytes]] = {}


def _exited(pid: int, directory: str) -> int | None:
    """The exit code if the process ended (-1 when it is not our child), else None."""
    proc = _spawned.get(pid)
    if proc is not None:
        return proc.poll()
    return None if _alive(pid, directory) else -1


def _spawn(state: ClusterState, name: str, argv: list[str]) -> None:
    log_dir = Path(state.directory) / "logs"
    log_dir.mkdir(exist_ok=True)
    with open(log_dir / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=state.directory,
        )
    state.pids[name] = proc.pid
    _spawned[proc.pid] = proc


def _ssl_context(directory: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(directory / "pki" / "ca.crt"))
    ctx.load_cert_chain(str(directory / "pki" / "admin.crt"), str(directory / "pki" / "admin.key"))
    return ctx


def _get(url: str, ctx: ssl.SSLContext | None = None, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _wait(what: str, check, state: ClusterState, timeout: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        dead = {
            n: code for n, pid in state.pids.items() if (code := _exited(pid, state.directory)) is not None
        }
        if dead:
            name, code = next(iter(dead.items()))
            raise RuntimeError(
                f"{name} exited (code {code}) while waiting for {what}; see {state.directory}/logs/{name}.log"
            )
        time.sleep(0.1)
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s; see {state.directory}/logs/")


def _prepare_pki(directory: Path, extra_hosts: tuple[str, ...] = ()) -> dict[str, Path]:
    pki_dir = directory / "pki"
    ca, _ = pki.ensure_ca(pki_dir)
    serving, serving_key = pki.ensure_cert(
        pki_dir,
        "apiserver",
        "kube-apiserver",
        server_hosts=(
            "127.0.0.1",
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            *extra_hosts,
        ),
    )
    admin, admin_key = pki.ensure_cert(pki_dir, "admin", "admin", organization="system:masters", client=True)
    kubelet_client, kubelet_client_key = pki.ensure_cert(
        pki_dir,
        "apiserver-kubelet-client",
        "kube-apiserver-kubelet-client",
        organization="system:masters",
        client=True,
    )
    node_serving, node_serving_key = pki.ensure_cert(
        pki_dir, "node-agent", "node-agent", server_hosts=("127.0.0.1", "localhost")
    )
    sa_key, sa_pub = pki.ensure_service_account_keys(pki_dir)
    return {
        "ca": ca,
        "serving": serving,
        "serving_key": serving_key,
        "admin": admin,
        "admin_key": admin_key,
        "kubelet_client": kubelet_client,
        "kubelet_client_key": kubelet_client_key,
        "node_serving": node_serving,
        "node_serving_key": node_serving_key,
        "sa_key": sa_key,
        "sa_pub": sa_pub,
    }


def start_etcd(state: ClusterState, bins: Path) -> None:
    _spawn(
        state,
        "etcd",
        [
            str(bins / "etcd"),
            "--name=devcluster",
            f"--data-dir={state.directory}/etcd-data",
            f"--listen-client-urls={state.etcd_url}",
            f"--advertise-client-urls={state.etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{state.etcd_peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{state.etcd_peer_port}",
            f"--initial-cluster=devcluster=http://127.0.0.1:{state.etcd_peer_port}",
            "--listen-metrics-urls=",
            # A development cluster trades crash durability for speed on a 2-core machine.
            "--unsafe-no-fsync=true",
            "--quota-backend-bytes=4294967296",
            "--log-level=warn",
        ],
    )
    _wait("etcd", lambda: _get(f"{state.etcd_url}/health")[0] == 200, state)


AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    # Who did what to pods: the benchmark counts each client's requests from this record.
    "rules": [
        {"level": "Metadata", "resources": [{"group": "", "resources": ["pods", "pods/*"]}]},
        {"level": "None"},
    ],
}


def audit_log(state: ClusterState) -> Path:
    return Path(state.directory) / "audit.log"


def start_apiserver(state: ClusterState, bins: Path, certs: dict[str, Path]) -> None:
    policy = Path(state.directory) / "audit-policy.yaml"
    policy.write_text(yaml.safe_dump(AUDIT_POLICY))
    if state.real_nodes:
        # Pods in network namespaces of their own reach it through the `kubernetes` Service, whose
        # endpoint is this machine's address: the API server listens there too, and says so.
        address = [
            "--bind-address=0.0.0.0",
            f"--advertise-address={state.host_ip}",
            "--endpoint-reconciler-type=lease",
        ]
    else:
        address = [
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            "--endpoint-reconciler-type=none",
        ]
    _spawn(
        state,
        "kube-apiserver",
        [
            str(bins / "kube-apiserver"),
            f"--etcd-servers={state.etcd_url}",
            *address,
            f"--secure-port={state.apiserver_port}",
            f"--tls-cert-file={certs['serving']}",
            f"--tls-private-key-file={certs['serving_key']}",
            f"--client-ca-file={certs['ca']}",
            "--authorization-mode=Node,RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={certs['sa_pub']}",
            f"--service-account-signing-key-file={certs['sa_key']}",
            "--service-cluster-ip-range=10.96.0.0/16",
            "--enable-admission-plugins=NamespaceLifecycle,LimitRanger,ServiceAccount,"
            "DefaultTolerationSeconds,ResourceQuota,NodeRestriction,PodSecurity",
            f"--kubelet-client-certificate={certs['kubelet_client']}",
            f"--kubelet-client-key={certs['kubelet_client_key']}",
            f"--kubelet-certificate-authority={certs['ca']}",
            "--kubelet-preferred-address-types=InternalIP",
            "--allow-privileged=true",
            "--profiling=false",
            f"--audit-policy-file={policy}",
            f"--audit-log-path={audit_log(state)}",
            # Batched, so recording requests does not slow them down.
            "--audit-log-mode=batch",
            "--audit-log-maxsize=500",
            "--audit-log-maxbackup=1",
            "--v=0",
            *_token_lifetime_args(state),
        ],
    )
    ctx = _ssl_context(Path(state.directory))
    _wait("kube-apiserver", lambda: _get(f"{state.server}/readyz", ctx)[0] == 200, state)


def _token_lifetime_args(state: ClusterState) -> list[str]:
    """Service-account tokens that expire as a production cluster's do.

    By default the API server extends the tokens kubelet requests for pods (3607 s) to a year;
    with extension off they expire after at most `token_max_expiration_s`, which the API server
    wants to be at least an hour (and TokenRequest refuses less than 10 minutes per token).
    """
    if state.token_max_expiration_s is None:
        return []
    return [
        f"--service-account-max-token-expiration={state.token_max_expiration_s}s",
        "--service-account-extend-token-expiration=false",
    ]


def start_scheduler(state: ClusterState, bins: Path) -> None:
    config = Path(state.directory) / "scheduler.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kubescheduler.config.k8s.io/v1",
                "kind": "KubeSchedulerConfiguration",
                # The defaults (50 QPS) would make binding, not the API server, the
                # bottleneck of a burst on this machine.
                "clientConnection": {"kubeconfig": str(state.kubeconfig), "qps": 500, "burst": 1000},
                "leaderElection": {"leaderElect": False},
            }
        )
    )
    _spawn(
        state,
        "kube-scheduler",
        [str(bins / "kube-scheduler"), f"--config={config}", "--secure-port=0", "--v=0"],
    )


def start_controller_manager(state: ClusterState, bins: Path, certs: dict[str, Path]) -> None:
    _spawn(
        state,
        "kube-controller-manager",
        [
            str(bins / "kube-controller-manager"),
            f"--kubeconfig={state.kubeconfig}",
            f"--service-account-private-key-file={certs['sa_key']}",
            f"--root-ca-file={certs['ca']}",
            "--leader-elect=false",
            "--secure-port=0",
            "--kube-api-qps=200",
            "--kube-api-burst=400",
            # Nodes are processes on this machine: no cloud, no routes, no IPAM.
            "--controllers=*,-node-ipam-controller",
            "--v=0",
        ],
    )


def start_node_agent(state: ClusterState, certs: dict[str, Path]) -> None:
    _spawn(
        state,
        "node-agent",
        [
            sys.executable,
            "-m",
            "devcluster.node_agent",
            f"--kubeconfig={state.kubeconfig}",
            f"--state-dir={state.directory}/node-agent",
            f"--port={state.kubelet_port}",
            f"--tls-cert={certs['node_serving']}",
            f"--tls-key={certs['node_serving_key']}",
            f"--client-ca={certs['ca']}",
            *(arg for arg in state.node_args if not real_node.is_real(arg.removeprefix("--node="))),
        ],
    )


def start_real_node(state: ClusterState, spec: real_node.RealNodeSpec, certs: dict[str, Path]) -> None:
    """containerd, kubelet and kube-proxy for one real node (see real_node.py)."""
    directory = Path(state.directory)
    bins = build.ensure_node_binaries()
    lay = real_node.layout(directory, spec.name)
    # A node does not outlive `down`; its image store does, so a warm start imports nothing again.
    for stale in ("kubelet", "pod-logs", "cni", "containerd/state"):
        shutil.rmtree(lay.root / stale, ignore_errors=True)
    serving = pki.ensure_cert(
        directory / "pki",
        f"kubelet-{spec.name}",
        f"system:node:{spec.name}",
        server_hosts=(state.host_ip, "127.0.0.1", spec.name),
    )
    kubelet_kubeconfig = mint_identity(directory, f"system:node:{spec.name}", ("system:nodes",))
    proxy_kubeconfig = mint_identity(directory, "system:kube-proxy")
    paths = real_node.write_configs(
        lay,
        kubelet_port=free_port(),
        metrics_port=free_port(),
        ca=certs["ca"],
        serving=serving,
        proxy_kubeconfig=proxy_kubeconfig,
    )
    _spawn(state, f"containerd-{spec.name}", ["containerd", f"--config={paths['containerd']}"])
    real_node.wait_for_containerd(lay)
    real_node.import_base_images(lay)
    labels = ",".join(f"{k}={v}" for k, v in spec.labels.items())
    _spawn(
        state,
        f"kubelet-{spec.name}",
        [
            str(bins / "kubelet"),
            f"--config={paths['kubelet']}",
            f"--kubeconfig={kubelet_kubeconfig}",
            f"--root-dir={lay.kubelet_dir}",
            f"--hostname-override={spec.name}",
            f"--node-ip={state.host_ip}",
            f"--node-labels={labels}",
            "--v=1",
        ],
    )
    _spawn(state, f"kube-proxy-{spec.name}", [str(bins / "kube-proxy"), f"--config={paths['kube-proxy']}"])


def up(
    directory: Path, node_args: list[str] | None = None, token_max_expiration_s: int | None = None
) -> ClusterState:
    """Start a cluster in `directory`, or return the one already running there."""
    directory.mkdir(parents=True, exist_ok=True)
    existing = ClusterState.load(directory)
    if existing and existing.pids and all(_alive(p, existing.directory) for p in existing.pids.values()):
        return existing
    if existing:
        down(directory)
    # A cluster does not outlive `down`: ports change, and etcd's member record would not match.
    for stale in ("etcd-data", "node-agent"):
        shutil.rmtree(directory / stale, ignore_errors=True)
    real_specs = [
        real_node.RealNodeSpec.parse(arg.removeprefix("--node="))
        for arg in node_args or []
        if real_node.is_real(arg.removeprefix("--node="))
    ]
    if real_specs:
        real_node.preflight()
        real_node.refuse_second(directory)
    bins = build.ensure_binaries()
    host = real_node.host_ip() if real_specs else "127.0.0.1"
    certs = _prepare_pki(directory, (host, "10.96.0.1") if real_specs else ())
    state = ClusterState(
        directory=str(directory),
        etcd_port=free_port(),
        etcd_peer_port=free_port(),
        apiserver_port=free_port(),
        kubelet_port=free_port(),
        node_args=node_args or [],
        token_max_expiration_s=token_max_expiration_s,
        host_ip=host,
    )
    write_kubeconfig(state.kubeconfig, state.server, certs["ca"], certs["admin"], certs["admin_key"], "admin")
    try:
        start_etcd(state, bins)
        start_apiserver(state, bins, certs)
        start_scheduler(state, bins)
        start_controller_manager(state, bins, certs)
        start_node_agent(state, certs)
        state.save()
        for spec in real_specs:
            start_real_node(state, spec, certs)
            state.save()
        wait_for_nodes(state)
    except BaseException:
        state.save()
        down(directory)
        raise
    return state


def wait_for_nodes(state: ClusterState) -> None:
    ctx = _ssl_context(Path(state.directory))

    def nodes_ready() -> bool:
        status, body = _get(f"{state.server}/api/v1/nodes", ctx)
        if status != 200:
            return False
        items = json.loads(body)["items"]
        names = {n["metadata"]["name"] for n in items}
        return (
            bool(items)
            and set(state.real_nodes) <= names
            and all(
                any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"].get("conditions", []))
                for n in items
            )
        )

    def default_service_account() -> bool:
        status, _ = _get(f"{state.server}/api/v1/namespaces/default/serviceaccounts/default", ctx)
        return status == 200

    _wait("the nodes", nodes_ready, state)
    _wait("the default service account", default_service_account, state)


def down(directory: Path, grace_s: float = 10.0) -> list[str]:
    """Stop every process of the cluster in `directory`; return the names stopped."""
    state = ClusterState.load(directory)
    if not state:
        return []
    stopped = []
    for name in state.real_nodes:
        stopped += _stop_real_node(state, name, grace_s)
    # The node agent first, so it can still see the API server while it stops its pods.
    order = ["node-agent", "kube-controller-manager", "kube-scheduler", "kube-apiserver", "etcd"]
    for name in sorted(state.pids, key=lambda n: order.index(n) if n in order else -1):
        pid = state.pids[name]
        if _alive(pid, state.directory):
            _kill(pid, grace_s)
            stopped.append(name)
    stopped += _kill_orphan_containers(directory)
    state.pids = {}
    state.save()
    return stopped


def _stop_real_node(state: ClusterState, name: str, grace_s: float) -> list[str]:
    """kubelet and kube-proxy, then every container while containerd still answers, then
    containerd, then what they leave on the machine (real_node.clean_up)."""
    stopped = []
    lay = real_node.layout(Path(state.directory), name)
    for component in (f"kubelet-{name}", f"kube-proxy-{name}"):
        pid = state.pids.pop(component, None)
        if pid is not None and _alive(pid, state.directory):
            _kill(pid, grace_s)
            stopped.append(component)
    real_node.stop_containers(lay)
    pid = state.pids.pop(f"containerd-{name}", None)
    if pid is not None and _alive(pid, state.directory):
        _kill(pid, grace_s)
        stopped.append(f"containerd-{name}")
    real_node.clean_up(lay, build.bin_dir())
    return stopped


def _kill_orphan_containers(under: Path) -> list[str]:
    """Containers whose node agent did not stop them (killed, or the pod's record already gone)
    must not outlive the cluster. Each runs under a shim whose command line names its exit file
    in its agent's state directory, so /proc finds all those under `under` (a cluster's
    directory, or one agent's), whatever the agent remembers."""
    marker = f"{under}/".encode()
    killed = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if b"devcluster.shim" in cmdline and marker in cmdline and _running(int(entry)):
            # The whole container: its task may run in a session of its own (the guard's).
            process_tree.kill(int(entry))
            _kill(int(entry), 0)
            killed.append(f"container shim (pid {entry})")
    return killed


def status(directory: Path) -> dict[str, object]:
    state = ClusterState.load(directory)
    if not state:
        return {"directory": str(directory), "running": False}
    processes = {name: _alive(pid, state.directory) for name, pid in state.pids.items()}
    return {
        "directory": str(directory),
        "running": bool(processes) and all(processes.values()),
        "server": state.server,
        "kubeconfig": str(state.kubeconfig),
        "processes": processes,
    }


def stop_component(directory: Path, name: str) -> None:
    """Kill one component, as a crash would (fault tests use this)."""
    state = ClusterState.load(directory)
    if state is None:
        raise RuntimeError(f"no cluster in {directory}")
    pid = state.pids.get(name)
    if pid and _alive(pid, state.directory):
        _kill(pid, 0)


def join_node(directory: Path, spec: str) -> str:
    """A process node joins the running cluster with an agent of its own (`spec` as `--node`
    takes it), so that it can be lost alone: `leave_node` stops its agent, as a machine that goes
    away stops its kubelet and its containers. Returns the node's name."""
    state = ClusterState.load(directory)
    if state is None:
        raise RuntimeError(f"no cluster in {directory}")
    name = dict(part.split("=", 1) for part in spec.split(","))["name"]
    certs = _prepare_pki(directory)
    _spawn(
        state,
        f"node-agent-{name}",
        [
            sys.executable,
            "-m",
            "devcluster.node_agent",
            f"--kubeconfig={state.kubeconfig}",
            f"--state-dir={state.directory}/node-agent/joined-{name}",
            f"--port={free_port()}",
            f"--tls-cert={certs['node_serving']}",
            f"--tls-key={certs['node_serving_key']}",
            f"--client-ca={certs['ca']}",
            f"--node={spec}",
        ],
    )
    state.save()
    return name


def leave_node(directory: Path, name: str) -> None:
    """A joined node is lost, as a machine that goes away: its agent is killed (no last status
    is written) and every container it ran with it. Its Node object stays, as a lost machine's
    does until the node controller or someone deletes it."""
    state = ClusterState.load(directory)
    if state is None:
        raise RuntimeError(f"no cluster in {directory}")
    pid = state.pids.pop(f"node-agent-{name}", None)
    if pid and _alive(pid, state.directory):
        _kill(pid, 0)
    _kill_orphan_containers(directory / "node-agent" / f"joined-{name}")
    state.save()


def restart_component(directory: Path, name: str) -> ClusterState:
    """Kill one component and start it again with the same ports (fault tests use this)."""
    stop_component(directory, name)
    state = ClusterState.load(directory)
    assert state is not None
    bins = build.ensure_binaries(log=False)
    certs = _prepare_pki(directory)
    starters = {
        "etcd": lambda: start_etcd(state, bins),
        "kube-apiserver": lambda: start_apiserver(state, bins, certs),
        "kube-scheduler": lambda: start_scheduler(state, bins),
        "kube-controller-manager": lambda: start_controller_manager(state, bins, certs),
        "node-agent": lambda: start_node_agent(state, certs),
    }
    starters[name]()
    state.save()
    return state


def mint_identity(directory: Path, user: str, groups: tuple[str, ...] = ()) -> Path:
    """A client certificate and kubeconfig for `user`, with no rights until RBAC grants some."""
    state = ClusterState.load(directory)
    if state is None:
        raise RuntimeError(f"no cluster in {directory}")
    pki_dir = directory / "pki"
    cert, key = pki.ensure_cert(
        pki_dir, f"user-{user}", user, organization=",".join(groups) or None, client=True
    )
    return write_kubeconfig(
        directory / f"{user}.kubeconfig", state.server, pki_dir / "ca.crt", cert, key, user
    )


def _etcd_call(state: ClusterState, path: str, body: dict[str, object]) -> dict[str, object]:
    request = urllib.request.Request(
        f"{state.etcd_url}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        result: dict[str, object] = json.loads(resp.read())
        return result


def compact_etcd(directory: Path) -> int:
    """Compact etcd's history up to now, as the API server does every few minutes; return the revision."""
    state = ClusterState.load(directory)
    if state is None:
        raise RuntimeError(f"no cluster in {directory}")
    header = _etcd_call(state, "/v3/kv/range", {"key": "Lw=="})["header"]
    assert isinstance(header, dict)
    revision = int(header["revision"])
    _etcd_call(state, "/v3/kv/compaction", {"revision": revision, "physical": True})
    return revision
