"""Airflow installed into the development cluster from deploy/in-cluster/, as an operator would.

`kubectl apply -k` of an overlay on the shipped manifests: the scheduler, API server and DAG
processor run as Deployments (the controller manager makes their pods), the scheduler under the
ServiceAccount bound to the shipped Role, with `in_cluster` at its default. The overlay holds
only what this machine differs in: the process node runs the host's Python instead of the
image, the DAG and log folders are host directories (as a shared volume would be), the
database is the stack's PostgreSQL on loopback, and no cluster DNS or service proxy exists,
so the API server is reached at 127.0.0.1 on a free port.
"""

from __future__ import annotations

import configparser
import contextlib
import io
import os
import random
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from devcluster import REPOSITORY, build
from devcluster.airflow_stack import JWT_SECRET, AirflowStack

MANIFESTS = REPOSITORY / "deploy" / "in-cluster"
COMPONENTS = ("scheduler", "api-server", "dag-processor")


@dataclass
class InClusterAirflow(AirflowStack):
    """An `AirflowStack` whose components are pods of the cluster, not processes of this machine."""

    @property
    def overlay(self) -> Path:
        return self.home / "overlay"

    def prepare(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.dags_folder.mkdir(exist_ok=True)
        (self.home / "logs").mkdir(exist_ok=True)
        (self.home / "airflow.cfg").touch()
        self.api_port = self.api_port or _free_port()
        self.start_postgres()
        self.write_overlay()

    def start(self, *components: str) -> None:
        self.kubectl("apply", "-k", str(self.overlay))
        self.wait_for_api(timeout=300)

    def stop(self) -> None:
        self.kubectl("delete", "-k", str(self.overlay), "--wait=false", "--ignore-not-found", check=False)
        self.stop_postgres()

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(build.ensure_binaries() / "kubectl"), f"--kubeconfig={self.cluster.kubeconfig}", *args],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {done.stderr}")
        return done

    def component_log(self, component: str) -> str:
        """The logs of a component's pods, as `kubectl logs deploy/airflow-<component>` shows them."""
        done = self.kubectl(
            "logs", "-n", self.namespace, f"deployment/airflow-{component}", "--all-containers", check=False
        )
        return done.stdout + done.stderr

    # --- the overlay -----------------------------------------------------------------------
    def write_overlay(self) -> None:
        self.overlay.mkdir(parents=True, exist_ok=True)
        (self.overlay / "airflow.cfg").write_text(self.airflow_cfg())
        (self.overlay / "pod_template.yaml").write_text(yaml.safe_dump(self.worker_template()))
        kustomization = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "namespace": self.namespace,
            # Kustomize takes a relative path only.
            "resources": [os.path.relpath(MANIFESTS, self.overlay)],
            "configMapGenerator": [
                {
                    "name": "airflow-config",
                    "behavior": "replace",
                    "files": ["airflow.cfg", "pod_template.yaml"],
                }
            ],
            "secretGenerator": [
                {
                    "name": "airflow-secrets",
                    "behavior": "replace",
                    "literals": [f"sql_alchemy_conn={self.sql_conn}", f"jwt_secret={JWT_SECRET}"],
                }
            ],
            "patches": [
                {"target": {"kind": kind}, "patch": yaml.safe_dump(self._host_volumes_patch(kind))}
                for kind in ("Deployment", "Job")
            ]
            + [
                {
                    "target": {"kind": "Deployment", "name": "airflow-api-server"},
                    "patch": yaml.safe_dump(
                        [
                            {
                                "op": "replace",
                                "path": "/spec/template/spec/containers/0/command",
                                "value": ["airflow", "api-server", "--port", str(self.api_port)],
                            }
                        ]
                    ),
                },
            ]
            # Kustomize moves every object to the overlay's namespace, but not a binding's subject.
            + [
                {
                    "target": {"kind": "RoleBinding", "name": binding},
                    "patch": yaml.safe_dump(
                        [{"op": "replace", "path": "/subjects/0/namespace", "value": self.namespace}]
                    ),
                }
                for binding in ("airflow-k8s-executor", "airflow-worker")
            ],
        }
        (self.overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))

    def airflow_cfg(self) -> str:
        """The shipped airflow.cfg with this machine's addresses and folders."""
        cfg = configparser.ConfigParser(interpolation=None)
        cfg.read(MANIFESTS / "airflow.cfg")
        base = self.api_url
        cfg["core"]["execution_api_server_url"] = f"{base}/execution/"
        cfg["api"]["base_url"] = base
        cfg["api"]["port"] = str(self.api_port)
        cfg["kubernetes_executor"]["namespace"] = self.namespace
        for section, values in {
            "core": {"simple_auth_manager_all_admins": "True", "dags_are_paused_at_creation": "False"},
            "dag_processor": {"refresh_interval": "5"},
            "scheduler": {
                "task_queued_timeout": "300",
                "job_heartbeat_sec": "2",
                "scheduler_heartbeat_sec": "2",
            },
        }.items():
            cfg.setdefault(section, {})
            cfg[section].update(values)
        # `extra_env` speaks Airflow's environment form; here it goes into the file.
        for name, value in self.extra_env.items():
            if name.startswith("AIRFLOW__") and name.count("__") >= 2:
                section, key = name.removeprefix("AIRFLOW__").lower().split("__", 1)
                cfg.setdefault(section, {})
                cfg[section][key] = value
        text = io.StringIO()
        cfg.write(text)
        return text.getvalue()

    def worker_template(self) -> dict[str, Any]:
        """The shipped worker template with the host's DAG and log folders."""
        pod: dict[str, Any] = yaml.safe_load((MANIFESTS / "pod_template.yaml").read_text())
        pod["spec"]["volumes"] = [
            v
            if v["name"] == "config"
            else {"name": v["name"], "hostPath": {"path": self._host_path(v["name"])}}
            for v in pod["spec"]["volumes"]
        ]
        return pod

    def _host_path(self, volume: str) -> str:
        return str(self.dags_folder if volume == "dags" else self.home / "logs")

    def _host_volumes_patch(self, kind: str) -> dict[str, Any]:
        # `emptyDir: null` removes the shipped placeholder: a strategic merge keyed by name.
        volumes = [
            {"name": name, "emptyDir": None, "hostPath": {"path": self._host_path(name)}}
            for name in ("dags", "logs")
        ]
        spec = {"template": {"spec": {"volumes": volumes}}}
        return {
            "apiVersion": "batch/v1" if kind == "Job" else "apps/v1",
            "kind": kind,
            "metadata": {"name": "any"},
            "spec": spec,
        }

    def wait_for_api(self, timeout: float = 180) -> None:
        try:
            super().wait_for_api(timeout)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self.component_log('api-server')[-3000:]}") from exc


def _free_port() -> int:
    from devcluster.control_plane import free_port

    return free_port()


@contextlib.contextmanager
def installed(airflow: InClusterAirflow, dag_file: Path, dag_id: str) -> Iterator[InClusterAirflow]:
    """`airflow` installed with `dag_file` in its DAG folder, rolled out and the DAG parsed; removed
    after, its namespace with it (its home stays, for a post-mortem)."""
    try:
        airflow.prepare()
        shutil.copy(dag_file, airflow.dags_folder)
        airflow.start()
        wait_for_rollout(airflow)
        airflow.wait_for_dag(dag_id)
        yield airflow
    finally:
        airflow.stop()
        airflow.kubectl(
            "delete", "namespace", airflow.namespace, "--wait=false", "--ignore-not-found", check=False
        )


def wait_for_rollout(stack: InClusterAirflow, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    for component in COMPONENTS:
        left = max(1, int(deadline - time.monotonic()))
        stack.kubectl(
            "rollout",
            "status",
            "-n",
            stack.namespace,
            f"deployment/airflow-{component}",
            f"--timeout={left}s",
        )


@dataclass
class RealNodeInClusterAirflow(InClusterAirflow):
    """deploy/in-cluster/ as shipped, on the cluster's real node: every component a pod of the
    image built from deploy/Dockerfile (`image`), the shipped airflow.cfg's addresses kept. The
    overlay differs only where this machine does: the DAG and log folders are host directories, the
    database is PostgreSQL on this machine's address, and with no cluster DNS the `airflow-api-server`
    name is given to pods as a host alias of its Service's fixed ClusterIP."""

    image: str = ""
    api_cluster_ip: str = field(default_factory=lambda: f"10.96.200.{random.randint(10, 250)}")

    @property
    def api_url(self) -> str:
        return f"http://{self.api_cluster_ip}:8080"

    def prepare(self) -> None:
        self.pg_host = self.cluster.host_ip
        super().prepare()
        (self.home / "logs").chmod(0o777)

    def airflow_cfg(self) -> str:
        cfg = configparser.ConfigParser(interpolation=None)
        cfg.read_string(super().airflow_cfg())
        shipped = configparser.ConfigParser(interpolation=None)
        shipped.read(MANIFESTS / "airflow.cfg")
        cfg["core"]["execution_api_server_url"] = shipped["core"]["execution_api_server_url"]
        cfg["api"]["base_url"] = shipped["api"]["base_url"]
        cfg["api"]["port"] = shipped["api"]["port"]
        text = io.StringIO()
        cfg.write(text)
        return text.getvalue()

    def _on_the_real_node(self) -> dict[str, Any]:
        from devcluster import real_node

        return {
            "nodeSelector": {real_node.RUNTIME_LABEL: "containerd"},
            "tolerations": [{"key": real_node.REAL_NODE_TAINT, "operator": "Exists", "effect": "NoSchedule"}],
            "hostAliases": [{"ip": self.api_cluster_ip, "hostnames": ["airflow-api-server"]}],
        }

    def write_overlay(self) -> None:
        super().write_overlay()
        path = self.overlay / "kustomization.yaml"
        kustomization = yaml.safe_load(path.read_text())
        # The shipped port and command stay: only this machine's differences are patched.
        kustomization["patches"] = [
            p for p in kustomization["patches"] if p.get("target", {}).get("name") != "airflow-api-server"
        ]
        name, tag = self.image.rsplit(":", 1)
        kustomization["images"] = [
            {"name": "my-registry/airflow-k8s-executor", "newName": name, "newTag": tag}
        ]
        for kind in ("Deployment", "Job"):
            patch = {
                "apiVersion": "batch/v1" if kind == "Job" else "apps/v1",
                "kind": kind,
                "metadata": {"name": "any"},
                "spec": {"template": {"spec": self._on_the_real_node()}},
            }
            kustomization["patches"].append({"target": {"kind": kind}, "patch": yaml.safe_dump(patch)})
        service = [{"op": "add", "path": "/spec/clusterIP", "value": self.api_cluster_ip}]
        kustomization["patches"].append(
            {"target": {"kind": "Service", "name": "airflow-api-server"}, "patch": yaml.safe_dump(service)}
        )
        path.write_text(yaml.safe_dump(kustomization, sort_keys=False))

    def worker_template(self) -> dict[str, Any]:
        pod = super().worker_template()
        pod["spec"].update(self._on_the_real_node())
        pod["spec"]["containers"][0]["image"] = self.image
        return pod
