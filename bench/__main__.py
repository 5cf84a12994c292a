"""Side-by-side benchmark: this executor and the official provider's, same cluster, same run.

    python -m bench --tasks 1000 --json bench/out/result.json

Each configuration runs a real Airflow 3 scheduler (with PostgreSQL holding the task
instances) on one mapped task of N instances whose pods land on the simulated node of the
development cluster, so the API server, not task processes, is the bottleneck. Measured
from outside the scheduler: the time until every pod exists (from the API server's own
watch), API requests per task by verb (the API server's `apiserver_request_total`),
and the scheduler's CPU seconds per task (its process and its children, from /proc).
The bare client creates the same pods with 16 threads and nothing around them: the ceiling.
"""

from __future__ import annotations

import argparse
import json
import re
import ssl
import statistics
import tempfile
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any

from kubernetes import client, config

from devcluster import build, control_plane
from devcluster.airflow_stack import AirflowStack
from devcluster.node_agent import DURATION_ANNOTATION, RUNTIME_LABEL, SIMULATED_TAINT
from k8s_executor.kube_client import json_lines

OFFICIAL = "airflow.providers.cncf.kubernetes.executors.kubernetes_executor.KubernetesExecutor"
OURS = "k8s_executor.KubernetesExecutor"
CONFIGS = {
    "ours_default": (OURS, {}),
    "ours_best": (OURS, {"API_QPS": "400", "API_BURST": "800", "POD_CREATION_MAX_CONCURRENCY": "16"}),
    "official_default": (OFFICIAL, {}),
    "official_best": (OFFICIAL, {"ASYNC_POD_CREATION": "True", "WORKER_PODS_CREATION_BATCH_SIZE": "256"}),
}

DAG = """
import datetime
from airflow.sdk import DAG, task

with DAG("bench", start_date=datetime.datetime(2024, 1, 1), schedule=None, catchup=False,
         max_active_tasks=100000):
    @task
    def unit(i: int) -> None:
        pass

    unit.expand(i=list(range({tasks})))
"""


def simulated_template(path: Path) -> Path:
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                # Pods outlive the launch measurement: a simulated pod never runs its task, so each
                # completion would send Airflow down its "finished externally" path, which costs the
                # scheduler far more than launching and would hide what the executors do.
                "metadata": {"annotations": {DURATION_ANNOTATION: "600"}},
                "spec": {
                    "restartPolicy": "Never",
                    "nodeSelector": {RUNTIME_LABEL: "simulated"},
                    "tolerations": [{"key": SIMULATED_TAINT, "operator": "Exists", "effect": "NoSchedule"}],
                    "containers": [{"name": "base", "image": "simulated"}],
                },
            }
        )
    )
    return path


def api_requests(state: control_plane.ClusterState) -> dict[str, float]:
    """`apiserver_request_total` for pods, summed by verb."""
    ctx = ssl.create_default_context(cafile=f"{state.directory}/pki/ca.crt")
    ctx.load_cert_chain(f"{state.directory}/pki/admin.crt", f"{state.directory}/pki/admin.key")
    with urllib.request.urlopen(f"{state.server}/metrics", context=ctx, timeout=30) as resp:
        text = resp.read().decode()
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("apiserver_request_total{") and 'resource="pods"' in line:
            verb = re.search(r'verb="([A-Z]+)"', line)
            if verb:
                totals[verb.group(1)] = totals.get(verb.group(1), 0.0) + float(line.rsplit(" ", 1)[1])
    return totals


def cpu_seconds(pid: int) -> float:
    """CPU of a process and all its descendants, alive or reaped."""
    tick = 100.0
    total = 0.0
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(") ", 1)[1].split()
        except OSError:
            continue
        proc_pid = int(stat_file.parent.name)
        if proc_pid == pid or _descends(proc_pid, pid):
            # utime, stime, cutime, cstime
            total += sum(int(f) for f in fields[11:15]) / tick
    return total


def _descends(pid: int, ancestor: int) -> bool:
    for _ in range(20):
        try:
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[1])
        except OSError:
            return False
        if ppid == ancestor:
            return True
        if ppid <= 1:
            return False
        pid = ppid
    return False


class PodClock:
    """Watches a namespace and records when each pod first appears."""

    def __init__(self, core: client.CoreV1Api, namespace: str) -> None:
        self.core, self.namespace = core, namespace
        self.first_seen: dict[str, float] = {}
        self.stop = threading.Event()
        rv = core.list_namespaced_pod(namespace).metadata.resource_version
        self.thread = threading.Thread(target=self._run, args=(rv,), daemon=True)
        self.thread.start()

    def _run(self, rv: str) -> None:
        while not self.stop.is_set():
            resp = self.core.list_namespaced_pod(
                self.namespace, watch=True, resource_version=rv, timeout_seconds=30, _preload_content=False
            )
            for event in json_lines(resp):
                rv = event["object"]["metadata"]["resourceVersion"]
                if event["type"] == "ADDED":
                    self.first_seen.setdefault(event["object"]["metadata"]["name"], time.monotonic())
                if self.stop.is_set():
                    return

    def wait(self, count: int, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.first_seen) >= count:
                return max(self.first_seen.values())
            time.sleep(0.2)
        return None


def run_executor(
    name: str, state: control_plane.ClusterState, core: client.CoreV1Api, tasks: int, timeout: float
) -> dict[str, Any]:
    executor, options = CONFIGS[name]
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": namespace}})
    home = Path(tempfile.mkdtemp(prefix=f"k8s-executor-bench-{name}-"))
    env = {f"AIRFLOW__KUBERNETES_EXECUTOR__{k}": v for k, v in options.items()}
    env.update(
        {
            "AIRFLOW__CORE__PARALLELISM": str(tasks * 2),
            "AIRFLOW__CORE__MAX_MAP_LENGTH": str(max(tasks, 1024)),
            "AIRFLOW__SCHEDULER__MAX_TIS_PER_QUERY": "0",
            "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": str(tasks * 2),
            # The default pool's 128 slots would cap the burst, whatever the executor.
            "AIRFLOW__CORE__DEFAULT_POOL_TASK_SLOT_COUNT": str(tasks * 2),
        }
    )
    stack = AirflowStack(home=home, cluster=state, namespace=namespace, executor=executor, extra_env=env)
    try:
        stack.prepare()
        template = simulated_template(home / "simulated_pod.json")
        stack.extra_env["AIRFLOW__KUBERNETES_EXECUTOR__POD_TEMPLATE_FILE"] = str(template)
        (stack.dags_folder / "bench.py").write_text(DAG.replace("{tasks}", str(tasks)))
        stack.start("api-server", "dag-processor")
        stack.wait_for_dag("bench")
        stack.start_component("scheduler")
        time.sleep(10)  # the scheduler's own start-up is not what is measured
        clock = PodClock(core, namespace)
        requests_before = api_requests(state)
        scheduler_pid = stack.procs["scheduler"].pid
        cpu_before = cpu_seconds(scheduler_pid)
        stack.trigger("bench", "bench-1")
        started = time.monotonic()
        last_created = clock.wait(tasks, timeout)
        created = len(clock.first_seen)
        time.sleep(5)
        requests_after = api_requests(state)
        cpu = cpu_seconds(scheduler_pid) - cpu_before
        clock.stop.set()
        per_verb = {
            verb: (requests_after.get(verb, 0) - requests_before.get(verb, 0)) / tasks
            for verb in sorted(set(requests_after) | set(requests_before))
        }
        return {
            "config": name,
            "pods_created": created,
            "launch_s": (last_created - started) if last_created else None,
            "pods_per_s": tasks / (last_created - started) if last_created else created / timeout,
            # All clients count here (kube-scheduler's binding, the node agent's status); the bare
            # client's run, with the same pods, shows that share.
            "api_requests_per_task": sum(v for k, v in per_verb.items() if k not in ("WATCH", "LIST")),
            "api_requests_per_task_by_verb": per_verb,
            "cpu_s_per_task": cpu / tasks,
        }
    finally:
        stack.stop()
        core.delete_namespace(namespace)


def run_bare(state: control_plane.ClusterState, core: client.CoreV1Api, tasks: int) -> float:
    namespace = f"bench-bare-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": namespace}})
    template = json.loads(simulated_template(Path(tempfile.mktemp())).read_text())
    wait = time.monotonic() + 30
    while not core.list_namespaced_service_account(namespace).items and time.monotonic() < wait:
        time.sleep(0.1)

    def create(i: int) -> None:
        pod = json.loads(json.dumps(template))
        pod["metadata"]["name"] = f"bare-{i}"
        core.create_namespaced_pod(namespace, pod, _preload_content=False)

    started = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(create, range(tasks)))
    elapsed = time.monotonic() - started
    core.delete_namespace(namespace)
    return tasks / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--json", default="bench/out/result.json")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()

    state = control_plane.up(control_plane.default_cluster_dir("bench"))
    cfg = client.Configuration()
    config.load_kube_config(str(state.kubeconfig), client_configuration=cfg)
    cfg.connection_pool_maxsize = 32
    core = client.CoreV1Api(client.ApiClient(cfg))

    runs: dict[str, list[dict[str, Any]]] = {}
    for _ in range(args.repeat):
        for name in args.configs.split(","):
            result = run_executor(name, state, core, args.tasks, args.timeout)
            runs.setdefault(name, []).append(result)
            print(json.dumps(result), flush=True)
    bare = statistics.median(run_bare(state, core, args.tasks) for _ in range(args.repeat))

    def median(name: str, key: str) -> float | None:
        values = [r[key] for r in runs.get(name, []) if r.get(key) is not None]
        return statistics.median(values) if values else None

    out = {
        "tasks": args.tasks,
        "airflow_version": metadata.version("apache-airflow"),
        "kubernetes_version": build.kubernetes_version(),
        "official_provider_version": metadata.version("apache-airflow-providers-cncf-kubernetes"),
        "launch_pods_per_s": {name: median(name, "pods_per_s") for name in CONFIGS} | {"bare_client": bare},
        "cpu_s_per_task": {
            "ours": median("ours_default", "cpu_s_per_task"),
            "official": median("official_default", "cpu_s_per_task"),
        },
        "api_requests_per_task": {
            "ours": median("ours_default", "api_requests_per_task"),
            "official": median("official_default", "api_requests_per_task"),
        },
        # Not measured yet by this harness: see bench/RESULTS.md.
        "completion_to_event_p99_s": {"ours": None, "official": None},
        "adoption_s": {"ours": None, "official": None},
        "runs": runs,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
    print(f"\n{'configuration':<18} {'pods/s':>8} {'API req/task':>13} {'CPU s/task':>11}")
    for name in CONFIGS:
        if name in runs:
            print(
                f"{name:<18} {median(name, 'pods_per_s') or 0:>8.1f} "
                f"{median(name, 'api_requests_per_task') or 0:>13.2f} {median(name, 'cpu_s_per_task') or 0:>11.4f}"
            )
    print(f"{'bare_client':<18} {bare:>8.1f}")
    print(f"\nwritten to {args.json}")


if __name__ == "__main__":
    main()
