"""A real Airflow beside the development cluster: PostgreSQL, API server,
scheduler and DAG processor, with `k8s_executor.KubernetesExecutor`.

Used by the demo and the end-to-end tests. Worker pods run on the process
node with this machine's Python, so they reach the API server on loopback and
read the same DAG folder, as pods would read a shared volume.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from devcluster.control_plane import ClusterState, free_port

JWT_SECRET = "devcluster-not-a-secret"
AIRFLOW_MAJOR = int(metadata.version("apache-airflow").split(".")[0])


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError("PostgreSQL server binaries not found: apt-get install postgresql")
    return found[-1]


@dataclass
class AirflowStack:
    home: Path
    cluster: ClusterState
    namespace: str
    executor: str = "k8s_executor.KubernetesExecutor"
    extra_env: dict[str, str] = field(default_factory=dict)
    pg_port: int = 0
    api_port: int = 0
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    # Workers as real containers on the cluster's real node, from this image (docs/real-node.md);
    # empty: host processes on the process node.
    worker_image: str = ""
    # The execution API as workers on the real node reach it: a Service whose endpoint is this
    # machine's address (no cluster DNS here, so its ClusterIP).
    api_service_url: str = ""
    # Where PostgreSQL listens besides loopback: pods of the real node reach it there.
    pg_host: str = "127.0.0.1"

    @property
    def dags_folder(self) -> Path:
        return self.home / "dags"

    @property
    def pg_data(self) -> Path:
        # Outside the home directory: PostgreSQL refuses to run as root, and its user
        # cannot enter root's home.
        digest = hashlib.sha256(str(self.home).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / "k8s-executor-pg" / digest

    @property
    def sql_conn(self) -> str:
        return f"postgresql+psycopg2://airflow:airflow@{self.pg_host}:{self.pg_port}/airflow"

    @property
    def api_url(self) -> str:
        """Where this machine reaches Airflow's API server."""
        return f"http://127.0.0.1:{self.api_port}"

    def pod_template(self) -> Path:
        """The worker pod: host Python, the stack's AIRFLOW_HOME, the same DAG folder."""
        path = self.home / "pod_template.yaml"
        if self.worker_image:
            path.write_text(yaml.safe_dump(self.real_node_worker()))
            return path
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "placeholder"},
            "spec": {
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "base",
                        "image": "apache/airflow:3",
                        "env": [
                            {"name": "AIRFLOW_HOME", "value": str(self.home)},
                            # This stack's Python environment, whichever started the node agent.
                            {"name": "PATH", "value": f"{os.path.dirname(sys.executable)}:/usr/bin:/bin"},
                        ]
                        + [
                            {"name": k, "value": v}
                            for k, v in self.env().items()
                            if k.startswith("AIRFLOW__")
                        ],
                    }
                ],
            },
        }
        path.write_text(yaml.safe_dump(pod))
        return path

    def real_node_worker(self) -> dict[str, Any]:
        """The worker pod on the real node: the built image as the image runs it (user 50000, its
        own AIRFLOW_HOME), the stack's DAG and log folders mounted at the image's own folders, as
        a shared volume would be, and the execution API through its Service. (The host paths may
        lie where user 50000 cannot go, /root say: the mounts are kubelet's, as root.)"""
        from devcluster import real_node

        folders = {"dags": self.dags_folder, "logs": self.home / "logs"}
        settings = {
            "AIRFLOW__CORE__DAGS_FOLDER": "/opt/airflow/dags",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": "/opt/airflow/logs",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": self.api_service_url,
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        }
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "placeholder"},
            "spec": {
                "restartPolicy": "Never",
                "nodeSelector": {real_node.RUNTIME_LABEL: "containerd"},
                "tolerations": [
                    {"key": real_node.REAL_NODE_TAINT, "operator": "Exists", "effect": "NoSchedule"}
                ],
                "containers": [
                    {
                        "name": "base",
                        "image": self.worker_image,
                        "imagePullPolicy": "IfNotPresent",
                        "env": [{"name": k, "value": v} for k, v in settings.items()],
                        "volumeMounts": [
                            {"name": name, "mountPath": f"/opt/airflow/{name}", "readOnly": name == "dags"}
                            for name in folders
                        ],
                    }
                ],
                "volumes": [
                    {"name": name, "hostPath": {"path": str(path)}} for name, path in folders.items()
                ],
            },
        }

    def expose_api_to_pods(self, core: Any) -> None:
        """A Service without a selector, and its EndpointSlice naming this machine's address: how
        pods in network namespaces of their own reach the API server running here."""
        from kubernetes import client

        name = "airflow-api"
        discovery = client.DiscoveryV1Api(core.api_client)
        # A namespace used again (the demo's) keeps the last run's, whose port is gone.
        for delete in (core.delete_namespaced_service, discovery.delete_namespaced_endpoint_slice):
            try:
                delete(name, self.namespace)
            except client.ApiException as exc:
                if exc.status != 404:
                    raise
        service = core.create_namespaced_service(
            self.namespace,
            {
                "metadata": {"name": name},
                "spec": {"ports": [{"name": "http", "port": self.api_port, "targetPort": self.api_port}]},
            },
        )
        discovery.create_namespaced_endpoint_slice(
            self.namespace,
            {
                "metadata": {"name": name, "labels": {"kubernetes.io/service-name": name}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": [self.cluster.host_ip]}],
                "ports": [{"name": "http", "port": self.api_port, "protocol": "TCP"}],
            },
        )
        self.api_service_url = f"http://{service.spec.cluster_ip}:{self.api_port}/execution/"
        # The worker writes its log where the scheduler and API server read it, as user 50000.
        (self.home / "logs").mkdir(exist_ok=True)
        os.chmod(self.home / "logs", 0o777)
        os.chmod(self.dags_folder, 0o755)
        self.pod_template()

    def env(self) -> dict[str, str]:
        env = {
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__EXECUTOR": self.executor,
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.sql_conn,
            "AIRFLOW__API__BASE_URL": self.api_url,
            "AIRFLOW__API__PORT": str(self.api_port),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{self.api_port}/execution/",
            "AIRFLOW__API_AUTH__JWT_SECRET": JWT_SECRET,
            # Tests read what the UI shows (task logs) through the REST API, without a login.
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__CORE__FERNET_KEY": "",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "300",
            "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "10",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD": "10",
            "AIRFLOW__SCHEDULER__JOB_HEARTBEAT_SEC": "2",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__KUBERNETES_EXECUTOR__IN_CLUSTER": "False",
            "AIRFLOW__KUBERNETES_EXECUTOR__CONFIG_FILE": str(self.cluster.kubeconfig),
            "AIRFLOW__KUBERNETES_EXECUTOR__NAMESPACE": self.namespace,
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.home / "logs"),
            "AIRFLOW__SCHEDULER__DAG_DIR_LIST_INTERVAL": "5",
            **self.extra_env,
        }
        if AIRFLOW_MAJOR < 3:
            env = {
                k: v
                for k, v in env.items()
                if not k.startswith(("AIRFLOW__API", "AIRFLOW__CORE__EXECUTION_API"))
            }
        return env

    def _process_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        env.update(self.env())
        env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
        return env

    def airflow(
        self, *args: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "airflow", *args],
            env=self._process_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        return done

    def python(self, script: str, timeout: float = 120) -> str:
        """Run `script` in a Python of this stack's Airflow (its settings, its database); its output."""
        done = subprocess.run(
            [sys.executable, "-c", script],
            env=self._process_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise RuntimeError(f"the script failed ({done.returncode}):\n{done.stderr[-3000:]}")
        return done.stdout

    # --- PostgreSQL --------------------------------------------------------
    def start_postgres(self) -> None:
        data = self.pg_data
        shutil.rmtree(data, ignore_errors=True)
        self.pg_port = self.pg_port or free_port()
        as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if not (data / "PG_VERSION").exists():
            data.mkdir(parents=True, exist_ok=True)
            if as_pg:
                data.parent.chmod(0o755)
                shutil.chown(data, "postgres", "postgres")
            subprocess.run(
                [*as_pg, _pg_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                check=True,
                capture_output=True,
            )
        if self.pg_host != "127.0.0.1":
            from devcluster import real_node

            with open(data / "pg_hba.conf", "a") as hba:
                # The real node's pods, and this machine's own components by its address.
                hba.write(
                    f"host all all {real_node.CLUSTER_CIDR} trust\nhost all all {self.pg_host}/32 trust\n"
                )
        subprocess.run(
            [
                *as_pg,
                _pg_bin("pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(data / "server.log"),
                "-o",
                f"-p {self.pg_port} -k {data} -c listen_addresses={','.join(dict.fromkeys(['127.0.0.1', self.pg_host]))}"
                " -c fsync=off -c max_connections=200",
                "-w",
                "start",
            ],
            check=True,
            capture_output=True,
        )
        psql = [*as_pg, _pg_bin("psql"), "-h", "127.0.0.1", "-p", str(self.pg_port), "-U", "postgres", "-c"]
        subprocess.run([*psql, "CREATE USER airflow PASSWORD 'airflow'"], capture_output=True)
        subprocess.run([*psql, "CREATE DATABASE airflow OWNER airflow"], capture_output=True)

    def stop_postgres(self) -> None:
        data = self.pg_data
        as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run(
            [*as_pg, _pg_bin("pg_ctl"), "-D", str(data), "-m", "fast", "stop"], capture_output=True
        )

    # --- Airflow -------------------------------------------------------------
    def prepare(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.dags_folder.mkdir(exist_ok=True)
        os.chmod(self.home, 0o755)
        # Otherwise Airflow writes every default it knows into a new airflow.cfg, and with two
        # providers registering [kubernetes_executor] the file holds one provider's defaults as
        # if an operator had chosen them. Settings here come from the environment only.
        (self.home / "airflow.cfg").touch()
        self.api_port = self.api_port or free_port()
        self.start_postgres()
        self.extra_env.setdefault(
            "AIRFLOW__KUBERNETES_EXECUTOR__POD_TEMPLATE_FILE", str(self.home / "pod_template.yaml")
        )
        self.pod_template()
        self.airflow("db", "migrate", timeout=600)

    def start(self, *components: str) -> None:
        """Airflow 3 needs its API server and DAG processor; Airflow 2's scheduler parses DAGs itself."""
        default = ("api-server", "dag-processor", "scheduler") if AIRFLOW_MAJOR >= 3 else ("scheduler",)
        for component in components or default:
            self.start_component(component)
        if "api-server" in self.procs:
            self.wait_for_api()

    def start_component(
        self,
        component: str,
        name: str | None = None,
        env: dict[str, str] | None = None,
        wrap: Callable[[list[str]], list[str]] | None = None,
    ) -> None:
        """Start `component` (as `name`, with `env` over the stack's: a second scheduler, say;
        `wrap` makes the command line, from Airflow's own: run in a namespace of its own, say)."""
        name = name or component
        args = {"api-server": ["api-server", "--port", str(self.api_port)]}.get(component, [component])
        log = open(self.home / f"{name}.log", "ab")  # noqa: SIM115 - the process owns it
        command = [sys.executable, "-m", "airflow", *args]
        self.procs[name] = subprocess.Popen(
            wrap(command) if wrap else command,
            env={**self._process_env(), **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # The real node's workers run as the image's user (50000) and write their logs into the
            # folders this machine's components make: those must be theirs to write, as on a
            # shared volume mounted with the workers' group.
            umask=0 if self.worker_image else -1,
        )

    def kill_component(self, component: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(component)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def wait_for_api(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{self.api_url}/api/v2/monitor/health", timeout=2),
            ):
                return
            time.sleep(0.5)
        raise TimeoutError(f"Airflow API server not up; see {self.home}/api-server.log")

    def stop(self) -> None:
        for component in list(self.procs):
            self.kill_component(component, signal.SIGTERM)
        self.stop_postgres()

    # --- DAG runs --------------------------------------------------------------
    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        import psycopg2

        with (
            contextlib.closing(
                psycopg2.connect(
                    host="127.0.0.1", port=self.pg_port, user="airflow", password="airflow", dbname="airflow"
                )
            ) as db,
            db.cursor() as cur,
        ):
            cur.execute(query, params)
            rows = cur.fetchall() if cur.description else []
            db.commit()
            return rows

    def wait_for_dag(self, dag_id: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sql("SELECT 1 FROM serialized_dag WHERE dag_id = %s", dag_id):
                return
            time.sleep(1)
        raise TimeoutError(f"DAG {dag_id} was not parsed; see {self.home}/dag-processor.log")

    def trigger(self, dag_id: str, run_id: str) -> None:
        self.airflow("dags", "trigger", dag_id, "--run-id", run_id)

    def task_states(self, dag_id: str, run_id: str) -> dict[tuple[str, int], tuple[str | None, int]]:
        rows = self.sql(
            "SELECT task_id, map_index, state, try_number FROM task_instance WHERE dag_id = %s AND run_id = %s",
            dag_id,
            run_id,
        )
        return {(task_id, map_index): (state, tries) for task_id, map_index, state, tries in rows}

    def rest(
        self, path: str, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None
    ) -> Any:
        """Airflow 3's REST API, as the UI calls it (every user is an admin in this stack)."""
        base = self.api_url
        token = json.loads(urllib.request.urlopen(f"{base}/auth/token", timeout=10).read())["access_token"]
        request = urllib.request.Request(
            f"{base}{path}",
            data=json.dumps(body).encode() if body is not None else None,
            headers={
                "Authorization": f"Bearer {token}",
                "Accept": "application/json",
                "Content-Type": "application/json",
                **(headers or {}),
            },
        )
        return json.loads(urllib.request.urlopen(request, timeout=30).read())

    def task_log(
        self, dag_id: str, run_id: str, task_id: str, try_number: int = 1, map_index: int = -1
    ) -> str:
        """The try's log as the UI shows it (Airflow 3's REST API), one line per log record; empty
        while its task instance is not there yet (a run just triggered)."""
        try:
            body = self.rest(
                f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}"
                f"?full_content=true&map_index={map_index}"
            )
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return ""
            raise
        content = body.get("content") or []
        if isinstance(content, str):
            return content
        return "\n".join(_log_line(line) for line in content)

    def log_file(
        self, dag_id: str, run_id: str, task_id: str, try_number: int = 1, map_index: int = -1
    ) -> str:
        """The try's log file as the workers and the executor wrote it (Airflow 2's stacks run no
        webserver to show it); empty while there is none."""
        folder = self.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
        if map_index >= 0:
            folder = folder / f"map_index={map_index}"
        try:
            return (folder / f"attempt={try_number}.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 600) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = self.sql("SELECT state FROM dag_run WHERE dag_id = %s AND run_id = %s", dag_id, run_id)
            if rows and rows[0][0] in ("success", "failed"):
                return str(rows[0][0])
            time.sleep(1)
        raise TimeoutError(f"run {dag_id}/{run_id} did not finish: {self.task_states(dag_id, run_id)}")

    def failure_reasons(self, dag_id: str, run_id: str, task_id: str | None = None) -> str:
        """What Airflow recorded when an executor's report did not match a task's state."""
        rows = self.sql(
            "SELECT task_id, map_index, extra FROM log WHERE event = 'state mismatch' "
            "AND dag_id = %s AND run_id = %s AND (%s::text IS NULL OR task_id = %s) ORDER BY dttm",
            dag_id,
            run_id,
            task_id,
            task_id,
        )
        return "\n".join(f"{task}[{index}]: {extra}" for task, index, extra in rows)

    def explain_run(self, dag_id: str, run_id: str) -> str:
        """For an assertion message: each task's state, and why the executor said what it said."""
        return f"states: {self.task_states(dag_id, run_id)}\n{self.failure_reasons(dag_id, run_id)}"


def _log_line(line: Any) -> str:
    """A structured log record as the UI shows it: its message, then the exception it carries."""
    if not isinstance(line, dict):
        return str(line)
    text = str(line.get("event", line))
    for error in line.get("error_detail") or []:
        text += f"\n{error.get('exc_type')}: {error.get('exc_value')}"
    return text
