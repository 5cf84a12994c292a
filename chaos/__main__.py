"""`python -m chaos`: see chaos/__init__.py."""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.error
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import yaml
from devcluster import control_plane
from devcluster.airflow_stack import AirflowStack
from kubernetes import client, config

from chaos import checks, faults, identities, load, neighbour
from chaos.observe import PodWatch, audit_entries
from chaos.schedule import ALL_KINDS, DISRUPTION_KINDS, KINDS, Fault, cluster_hit, draw, for_executor

DEFAULT_CLUSTER = load.DEFAULT_CLUSTER
# Other runs' development clusters: never this run's, first or second.
OTHER_RUNS_CLUSTERS = ("tests", "tests-east", "tests-real", "bench")
# Where a scheduler's mount namespace sees its kubeconfig and token for the second cluster, as a
# pod mounts a Secret: the same path for every scheduler, so they share one `clusters` setting.
SECOND_CLUSTER_MOUNT = "/var/run/secrets/k8s-executor-chaos"
RBAC_YAML = Path(__file__).resolve().parents[1] / "deploy" / "rbac" / "rbac.yaml"

EXECUTORS = {
    "ours": "k8s_executor.KubernetesExecutor",
    "official": "airflow.providers.cncf.kubernetes.executors.kubernetes_executor.KubernetesExecutor",
}
EXECUTOR_ENV = {
    "ours": {},
    # Its documented default, pinned: with both packages installed, which provider's default
    # Airflow falls back to depends on load order (as bench/ pins it).
    "official": {"AIRFLOW__KUBERNETES_EXECUTOR__WORKER_PODS_CREATION_BATCH_SIZE": "1"},
}


# The disruption run ends a node's pods every 20 s or so, far more often than a spot pool is
# reclaimed, and a one-minute task meets several: its try's budget is raised as an operator on such
# a pool would raise it (the default, 3, is per try). The official provider has no such setting.
DISRUPTED_ENV: dict[str, dict[str, str]] = {
    "ours": {"AIRFLOW__KUBERNETES_EXECUTOR__DISRUPTION_RETRIES": "10"},
    "official": {},
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__)
    parser.add_argument("--minutes", type=float, default=5.0, help="how long the load runs")
    parser.add_argument("--seed", type=int, default=1717)
    parser.add_argument("--executor", choices=sorted(EXECUTORS), default="ours")
    parser.add_argument("--json", default="build/chaos.json", help="where the figures are written")
    parser.add_argument("--run-every", type=float, default=30.0, help="seconds between DAG runs")
    parser.add_argument(
        "--faults",
        default=",".join(KINDS),
        help=f"the kinds to inject, comma-separated (of {','.join(ALL_KINDS)}); `disruptions` stands "
        f"for {','.join(DISRUPTION_KINDS)}, which the default leaves out",
    )
    parser.add_argument("--settle-s", type=float, default=480.0, help="the longest wait for the runs to end")
    parser.add_argument("--cluster", default="chaos", help="the development cluster's name")
    parser.add_argument(
        "--second-cluster",
        default="",
        metavar="NAME",
        help="a second cluster for our executor, NAME being the executor's name for it (e.g. east): a "
        "development cluster of its own (named after --cluster: chaos-east), reached with a kubeconfig "
        "(the first stays in_cluster); half the DAG runs go there, and each fault of a cluster's kind "
        "is drawn for either. The official provider cannot route to two clusters: its run stays on one",
    )
    parser.add_argument(
        "--keep-cluster",
        action="store_true",
        help="leave the cluster (both, with a second) running at the end",
    )
    parser.add_argument(
        "--reuse-cluster",
        action="store_true",
        help="run on the cluster of that name (and the second's) if one is running (left running at the end)",
    )
    parser.add_argument("--schedule-only", action="store_true", help="print the schedule and exit")
    return parser.parse_args(argv)


def admin_core(kubeconfig: Path) -> client.CoreV1Api:
    cfg = client.Configuration()
    config.load_kube_config(str(kubeconfig), client_configuration=cfg)
    return client.CoreV1Api(client.ApiClient(cfg))


def wait_until(check: Any, what: str, timeout: float, interval: float = 1.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except client.ApiException:
            pass
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def _scheduler_accounts(
    directory: Path, core: client.CoreV1Api, namespace: str, executor: str, count: int
) -> list[identities.Identity]:
    """A ServiceAccount per scheduler in `namespace`, with a first token in the cluster's directory."""
    return [
        identities.create(
            core,
            namespace,
            f"chaos-{executor}-{'abcdefgh'[i]}",
            directory / "chaos-identities" / namespace / f"scheduler-{i + 1}",
            directory / "pki" / "ca.crt",
        )
        for i in range(count)
    ]


def executor_identities(
    directory: Path, core: client.CoreV1Api, namespace: str, executor: str, count: int
) -> list[identities.Identity]:
    """A ServiceAccount per scheduler (the audit log tells them apart), bound to cluster-admin:
    what the executors may do is not under test here."""
    made = _scheduler_accounts(directory, core, namespace, executor, count)
    rbac = client.RbacAuthorizationV1Api(core.api_client)
    rbac.create_cluster_role_binding(
        {
            "metadata": {"name": namespace},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "cluster-admin",
            },
            "subjects": [{"kind": "ServiceAccount", "namespace": namespace, "name": i.name} for i in made],
        }
    )
    # The authorizer reads bindings from a cache: the schedulers' first list must not meet a 403.
    wait_until(lambda: _allowed(core, made[0], "create"), "the executors' RBAC binding", 60)
    return made


def _allowed(core: client.CoreV1Api, identity: identities.Identity, verb: str) -> bool:
    namespace = identity.namespace
    review = client.AuthorizationV1Api(core.api_client).create_subject_access_review(
        {
            "spec": {
                "user": identity.username,
                "groups": ["system:serviceaccounts", f"system:serviceaccounts:{namespace}"],
                "resourceAttributes": {"verb": verb, "resource": "pods", "namespace": namespace},
            }
        }
    )
    return bool(review.status.allowed)


def second_cluster_identities(
    directory: Path, core: client.CoreV1Api, namespace: str, executor: str, count: int
) -> list[identities.Identity]:
    """A ServiceAccount per scheduler in the second cluster (the audit log tells them apart), bound
    to what the executor needs there and nothing more: deploy/rbac/rbac.yaml's Role in the namespace
    its tasks run in, as docs/multi-cluster.md has an operator grant it in each cluster."""
    made = _scheduler_accounts(directory, core, namespace, executor, count)
    shipped = {d["kind"]: d for d in yaml.safe_load_all(RBAC_YAML.read_text()) if d}
    role, binding = shipped["Role"], shipped["RoleBinding"]
    role["metadata"]["namespace"] = binding["metadata"]["namespace"] = namespace
    binding["subjects"] = [{"kind": "ServiceAccount", "namespace": namespace, "name": i.name} for i in made]
    rbac = client.RbacAuthorizationV1Api(core.api_client)
    rbac.create_namespaced_role(namespace, role)
    rbac.create_namespaced_role_binding(namespace, binding)
    for identity in made:
        wait_until(
            lambda i=identity: _allowed(core, i, "watch"), "the executors' Role in the second cluster", 60
        )
    return made


class Run:
    def __init__(self, args: argparse.Namespace, schedule: list[Fault], directories: dict[str, Path]) -> None:
        """`directories`: each cluster's development cluster, by the executor's name for it (the
        first, in_cluster, is `default`)."""
        self.args, self.schedule, self.directories = args, schedule, directories
        self.directory = directories[DEFAULT_CLUSTER]
        self.states: dict[str, control_plane.ClusterState] = {}
        for name, directory in directories.items():
            state = control_plane.ClusterState.load(directory)
            assert state is not None
            self.states[name] = state
        self.state = self.states[DEFAULT_CLUSTER]
        self.cores = {name: admin_core(state.kubeconfig) for name, state in self.states.items()}
        self.core = self.cores[DEFAULT_CLUSTER]
        self.namespace = f"chaos-{uuid.uuid4().hex[:8]}"
        # Each cluster's namespace: the second's is named after it, so that logs tell them apart.
        self.namespaces = {
            name: self.namespace if name == DEFAULT_CLUSTER else f"{self.namespace}-{name}"
            for name in directories
        }
        self.records = [faults.Record(*for_executor(f, args.executor)) for f in schedule]
        self.exits: list[dict[str, Any]] = []
        self.triggered: list[str] = []
        self.runs_by_cluster: Counter[str] = Counter()
        self.load_turns = 0
        self.trigger_failures = 0
        # The load and the faults that start a run of their own both trigger.
        self.trigger_lock = threading.Lock()
        self.t0 = 0.0

    # --- set-up ------------------------------------------------------------------------------------
    def _namespace(self, name: str) -> None:
        core, namespace = self.cores[name], self.namespaces[name]
        core.create_namespace({"metadata": {"name": namespace}})
        wait_until(
            lambda: core.list_namespaced_service_account(namespace).items,
            f"the default service account of {namespace}",
            180,
        )

    def start(self) -> None:
        args = self.args
        count = 2 if args.executor == "ours" else 1
        names = ["scheduler", *(f"scheduler-{i}" for i in range(2, count + 1))]
        targets: dict[str, faults.Target] = {}
        mounts: dict[str, dict[str, Path]] = {}
        clusters: dict[str, dict[str, Any]] = {}
        for name, directory in self.directories.items():
            core, namespace = self.cores[name], self.namespaces[name]
            self._namespace(name)
            if name == DEFAULT_CLUSTER:
                made = executor_identities(directory, core, namespace, args.executor, count)
            else:
                made = second_cluster_identities(directory, core, namespace, args.executor, count)
                # Each scheduler sees its own kubeconfig and token at one path (a Secret of its pod).
                point = f"{SECOND_CLUSTER_MOUNT}/{name}"
                for scheduler, identity in zip(names, made, strict=True):
                    identities.kubeconfig(identity, self.states[name].server, point)
                    mounts.setdefault(scheduler, {})[point] = identity.directory
                clusters[name] = {"config_file": f"{point}/kubeconfig", "namespace": namespace}
            crowd = neighbour.create(
                core,
                namespace,
                directory / "chaos-identities" / namespace / "neighbour",
                directory / "pki" / "ca.crt",
            )
            targets[name] = faults.Target(
                name=name,
                development_cluster=directory.name,
                cluster_dir=directory,
                core=core,
                namespace=namespace,
                scheduler_identities=made,
                neighbour=crowd,
            )
        self.users = {name: {i.username for i in t.scheduler_identities} for name, t in targets.items()}
        env = {
            # In the cluster, as the Helm chart runs a scheduler: its ServiceAccount's token file
            # (chaos/identities.py) and the API server's address from the environment.
            "AIRFLOW__KUBERNETES_EXECUTOR__IN_CLUSTER": "True",
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": str(self.state.apiserver_port),
            "AIRFLOW__KUBERNETES_EXECUTOR__DELETE_WORKER_PODS": "True",
            # Every pod goes once its task has ended, failed or not: one left is a pod left behind.
            "AIRFLOW__KUBERNETES_EXECUTOR__DELETE_WORKER_PODS_ON_FAILURE": "True",
            **EXECUTOR_ENV[args.executor],
            **(
                DISRUPTED_ENV[args.executor] if any(f.kind in DISRUPTION_KINDS for f in self.schedule) else {}
            ),
        }
        if clusters:
            # The second cluster by its kubeconfig; its DAG's tasks go there by their queue (named
            # after it) or their executor_config (chaos/load.py).
            env["AIRFLOW__KUBERNETES_EXECUTOR__CLUSTERS"] = json.dumps(clusters)
            env["AIRFLOW__KUBERNETES_EXECUTOR__QUEUE_CLUSTERS"] = json.dumps({c: c for c in clusters})
        home = Path(tempfile.mkdtemp(prefix=f"k8s-executor-chaos-{args.executor}-"))
        self.stack = AirflowStack(
            home=home,
            cluster=self.state,
            namespace=self.namespace,
            executor=EXECUTORS[args.executor],
            extra_env=env,
        )
        self.stack.prepare()
        for name in targets:
            (self.stack.dags_folder / f"{load.dag_id_for(name)}.py").write_text(load.dag_source(name))
        self.stack.start("api-server", "dag-processor")
        for name in targets:
            self.stack.wait_for_dag(load.dag_id_for(name))
        self.world = faults.World(
            targets=targets,
            stack=self.stack,
            executor=args.executor,
            schedulers=dict(zip(names, targets[DEFAULT_CLUSTER].scheduler_identities, strict=True)),
            trigger=self.trigger,
            mounts=mounts,
        )
        with self.world.lock:
            for name in names:
                self.world.start_scheduler(name)
        self.watches = {name: PodWatch(t.core, t.namespace) for name, t in targets.items()}
        where = ", ".join(f"{t.namespace} in {t.label}" for t in targets.values())
        print(f"Airflow in {home}, pods in namespace {where}", flush=True)

    def stop(self) -> None:
        # Whatever `start` got to: it may have failed half-way.
        if hasattr(self, "world"):
            with self.world.lock:
                self.world.killing.update(self.world.schedulers)
        for watch in getattr(self, "watches", {}).values():
            watch.close()
        if hasattr(self, "stack"):
            self.stack.stop()
            shutil.rmtree(self.stack.pg_data, ignore_errors=True)
        for name, core in self.cores.items():
            try:
                core.delete_namespace(self.namespaces[name])
                if name == DEFAULT_CLUSTER:
                    client.RbacAuthorizationV1Api(core.api_client).delete_cluster_role_binding(self.namespace)
            except Exception as exc:
                print(f"namespace {self.namespaces[name]} not fully cleaned up: {exc}", file=sys.stderr)

    # --- the run -----------------------------------------------------------------------------------
    def inject_all(self, load_end: float, stop: threading.Event) -> None:
        for record in self.records:
            due = self.t0 + record.fault.at_s
            if stop.wait(max(0.0, due - time.time())) or time.time() >= load_end:
                record.skipped = "the load had ended before it was due"
                continue
            print(f"[{time.time() - self.t0:6.1f}s] fault: {record.fault.describe()}", flush=True)
            try:
                faults.inject(self.world, record)
            except Exception as exc:
                record.skipped = f"injection failed: {type(exc).__name__}: {exc}"[:500]
            if record.cluster and len(self.world.targets) > 1:
                print(f"          in cluster {record.cluster}", flush=True)
            if record.skipped:
                print(f"          skipped: {record.skipped}", flush=True)

    def trigger(self, cluster: str | None = None) -> None:
        """A DAG run of `cluster`'s DAG; the load's (None) go to each cluster in turn."""
        with self.trigger_lock:
            clusters = list(self.directories)
            turn = cluster is None
            if cluster is None:
                cluster = clusters[self.load_turns % len(clusters)]
            if self._trigger(cluster) and turn:
                self.load_turns += 1

    def _trigger(self, cluster: str) -> bool:
        run_id = f"chaos-{len(self.triggered) + 1:04d}"
        try:
            self.stack.rest(
                f"/api/v2/dags/{load.dag_id_for(cluster)}/dagRuns",
                {"dag_run_id": run_id, "logical_date": None},
            )
        except urllib.error.HTTPError as exc:
            if exc.code != 409:  # 409: an earlier attempt did create it, its answer was lost
                self.trigger_failures += 1
                return False
        except Exception:
            # Airflow's API server cannot reach its database while PostgreSQL restarts: the
            # next tick tries again.
            self.trigger_failures += 1
            return False
        self.triggered.append(run_id)
        self.runs_by_cluster[cluster] += 1
        return True

    def watch_exits(self) -> None:
        """A scheduler that exited unless the run killed it: counted, and started again."""
        with self.world.lock:
            for name in self.world.schedulers:
                proc = self.stack.procs.get(name)
                if name in self.world.killing or proc is None or (code := proc.poll()) is None:
                    continue
                log = (self.stack.home / f"{name}.log").read_text(errors="replace").splitlines()
                self.exits.append(
                    {"scheduler": name, "code": code, "at": time.time(), "log": "\n".join(log[-60:])}
                )
                print(f"[{time.time() - self.t0:6.1f}s] {name} exited (code {code})", flush=True)
                self.stack.kill_component(name, signal.SIGKILL)
                self.world.start_scheduler(name)

    def unfinished_runs(self) -> int:
        try:
            [(count,)] = self.stack.sql(
                "SELECT count(*) FROM dag_run WHERE dag_id = ANY(%s) AND state NOT IN ('success', 'failed')",
                [load.dag_id_for(name) for name in self.directories],
            )
        except Exception:
            return -1
        return int(count)

    def pods_left(self) -> dict[str, list[Any]]:
        """The pods in each cluster's namespace."""
        return {
            name: core.list_namespaced_pod(self.namespaces[name]).items for name, core in self.cores.items()
        }

    def execute(self) -> dict[str, Any]:
        args = self.args
        self.t0 = time.time()
        load_end = self.t0 + args.minutes * 60
        stop = threading.Event()
        injector = threading.Thread(target=self.inject_all, args=(load_end, stop), name="chaos-faults")
        injector.start()
        next_run = self.t0
        while time.time() < load_end:
            if time.time() >= next_run:
                self.trigger()
                next_run = time.time() + args.run_every if self.triggered else time.time() + 2
            self.watch_exits()
            time.sleep(1)
        print(f"[{time.time() - self.t0:6.1f}s] load stopped after {len(self.triggered)} runs", flush=True)
        while injector.is_alive():
            self.watch_exits()
            injector.join(1)
        stop.set()
        # Settle: every run ends, then every pod goes; both bounded.
        deadline = time.time() + args.settle_s
        while time.time() < deadline and self.unfinished_runs() != 0:
            self.watch_exits()
            time.sleep(2)
        settled = self.unfinished_runs() == 0
        pods_deadline = time.time() + 120
        remaining: dict[str, list[Any]] = {}
        while time.time() < pods_deadline:
            self.watch_exits()
            with contextlib.suppress(client.ApiException):  # an API server back from the last fault
                remaining = self.pods_left()
                if not any(remaining.values()):
                    break
            time.sleep(2)
        remaining = {}

        def listed() -> bool:
            remaining.update(self.pods_left())
            return True

        wait_until(listed, "a list of the pods left in each cluster", 60)
        counts = ", ".join(f"{len(pods)} in {name}" for name, pods in remaining.items())
        print(f"[{time.time() - self.t0:6.1f}s] settled: {settled}, pods left: {counts}", flush=True)
        return self.findings(remaining, settled)

    def explain_exit(self, exit_: dict[str, Any]) -> dict[str, Any]:
        """An exit while PostgreSQL was down or just back, on a database error, is Airflow's own
        answer to losing its database (its scheduler loop raises, and the process ends for its
        supervisor to start again, whatever the executor): caused by that fault, not by itself."""
        at = float(exit_["at"])
        caused_by = ""
        for record in self.records:
            if (
                record.fault.kind == "postgres_restart"
                and record.started is not None
                and record.started <= at <= (record.over or at) + 60
                and "OperationalError" in exit_["log"]
            ):
                caused_by = f"postgres_restart at {record.fault.at_s}s"
        return {
            "scheduler": exit_["scheduler"],
            "code": exit_["code"],
            "at_s": round(at - self.t0, 1),
            "caused_by": caused_by,
            "log": exit_["log"].splitlines()[-12:],
        }

    def findings(self, remaining: dict[str, list[Any]], settled: bool) -> dict[str, Any]:
        found = checks.Findings()
        disrupted = frozenset(
            p.key
            for watch in self.watches.values()
            for p in watch.pods.values()
            if p.disrupted and p.key is not None
        )
        clusters = tuple(self.directories)
        all_tries = checks.check_tasks(
            self.stack, self.records, self.world.victims, found, disrupted, clusters
        )
        creates: dict[str, list[float]] = {}
        per_cluster: dict[str, dict[str, Any]] = {}
        for name, target in self.world.targets.items():
            before = (len(found.duplicated), len(found.left_behind))
            entries = audit_entries(target.core, control_plane.audit_log(self.states[name]), target.namespace)
            creates[name] = checks.check_pods(
                self.args.executor,
                self.watches[name],
                entries,
                self.users[name],
                remaining[name],
                found,
                name,
            )
            checks.count_refusals(entries, self.users[name], self.records, found, name)
            per_cluster[name] = {
                "development_cluster": target.development_cluster,
                "namespace": target.namespace,
                "connection": "in_cluster (ServiceAccount token file)"
                if name == DEFAULT_CLUSTER
                else "config_file (kubeconfig with a ServiceAccount tokenFile; deploy/rbac/rbac.yaml's Role)",
                "dag_id": load.dag_id_for(name),
                "runs_triggered": self.runs_by_cluster[name],
                "task_instances": found.tasks_by_cluster[name],
                "pods_created": len(creates[name]),
                "duplicated": len(found.duplicated) - before[0],
                "left_behind": len(found.left_behind) - before[1],
                "watch_gaps": self.watches[name].gaps,
            }
        checks.recovery(self.records, creates, all_tries, found)
        done = [r for r in self.records if r.started is not None and not r.skipped]
        for name, figures in per_cluster.items():
            figures["faults"] = dict(Counter(r.fault.kind for r in done if cluster_hit(r.fault) == name))
            figures["wrong_reasons"] = sum(1 for w in found.wrong_reasons if w.get("cluster") == name)
        exits = [self.explain_exit(e) for e in self.exits]
        unexplained = [e for e in exits if not e["caused_by"]]
        return {
            "executor": self.args.executor,
            "seed": self.args.seed,
            "minutes": self.args.minutes,
            "run_every_s": self.args.run_every,
            "schedulers": len(self.world.schedulers),
            "faults": dict(Counter(r.fault.kind for r in done)),
            "clusters": per_cluster,
            "tasks": dict(found.tasks),
            "lost": len(found.lost),
            "duplicated": len(found.duplicated),
            "left_behind": len(found.left_behind),
            "wrong_reasons": len(found.wrong_reasons),
            "retries_spent_on_disruptions": len(found.retries_spent_on_disruptions),
            "failed_by_airflow_on_db_error": len(found.failed_by_airflow_on_db_error),
            "scheduler_exits": len(unexplained),
            "scheduler_exits_caused_by_faults": len(exits) - len(unexplained),
            "recovery_s": checks.summary(found),
            **checks.loop_holds(
                [log.read_text(errors="replace") for log in sorted(self.stack.home.glob("scheduler*.log"))]
            ),
            "runs_triggered": len(self.triggered),
            "trigger_failures": self.trigger_failures,
            "runs_settled": settled,
            "failed_tries_by_cause": dict(found.failed_tries),
            "refused_requests": found.refusals,
            "watch_gaps": sum(w.gaps for w in self.watches.values()),
            "lost_tasks": found.lost,
            "duplicated_tries": found.duplicated,
            "tries_with_several_pods": found.extra_pods,
            "left_behind_pods": found.left_behind,
            "wrong_reason_list": found.wrong_reasons,
            "retries_spent_on_disruptions_list": found.retries_spent_on_disruptions,
            "failed_by_airflow_on_db_error_list": found.failed_by_airflow_on_db_error,
            "scheduler_exit_list": exits,
            "fault_log": [r.as_json(self.t0) for r in self.records],
            "airflow_home": str(self.stack.home),
        }


INVARIANTS = (
    "lost",
    "duplicated",
    "left_behind",
    "wrong_reasons",
    "retries_spent_on_disruptions",
    "scheduler_exits",
)


def print_table(result: dict[str, Any]) -> None:
    print(f"\nexecutor {result['executor']}, seed {result['seed']}, {result['minutes']} min of load")
    print(f"{'fault':<22}{'injected':>9}{'recovery p50':>14}{'p99':>8}")
    for kind in ALL_KINDS:
        if kind in DISRUPTION_KINDS and kind not in result["faults"]:
            continue
        rec = result["recovery_s"].get(kind, {})
        cells = [rec.get("p50"), rec.get("p99")]
        text = "".join(
            f"{c:>{w}.1f}" if c is not None else f"{'-':>{w}}" for c, w in zip(cells, (14, 8), strict=True)
        )
        print(f"{kind:<22}{result['faults'].get(kind, 0):>9}{text}")
    print(f"\n{'task outcome':<24}{'count':>6}")
    for outcome, count in sorted(result["tasks"].items()):
        print(f"{outcome:<24}{count:>6}")
    print()
    for key in INVARIANTS:
        print(f"{key:<24}{result[key]:>6}")
    print(f"{'(exits caused by faults':<24}{result['scheduler_exits_caused_by_faults']:>6})")
    if len(result["clusters"]) > 1:
        print(f"\n{'cluster':<28}{'runs':>6}{'tasks':>7}{'pods':>6}{'faults':>8}{'dup.':>6}{'left':>6}")
        for name, c in result["clusters"].items():
            where = f"{name} ({c['development_cluster']})"
            print(
                f"{where:<28}{c['runs_triggered']:>6}{c['task_instances']:>7}{c['pods_created']:>6}"
                f"{sum(c['faults'].values()):>8}{c['duplicated']:>6}{c['left_behind']:>6}"
            )
    print(
        f"\nAirflow's loop held at most {result['loop_hold_max_s']:.3f} s by the executor "
        f"(of the slow calls, the longest ran {result['loop_hold_max_own_cpu_s'] or 0:.3f} s on the loop's "
        f"own CPU, waited {result['loop_hold_max_cpu_wait_s'] or 0:.3f} s for a CPU and had "
        f"{result['loop_hold_max_full_collections'] or 0} of Python's full garbage collections in it; "
        f"{result['slow_calls']} calls over 100 ms; end at most {result['end_max_s']:.3f} s); p99 by call: "
        + ", ".join(f"{call} {s:.3f} s" for call, s in result["loop_hold_p99_s"].items())
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    asked = set(args.faults.split(","))
    if "disruptions" in asked:
        asked |= set(DISRUPTION_KINDS)
    kinds = tuple(k for k in ALL_KINDS if k in asked)
    second = args.second_cluster
    if second and args.executor != "ours":
        print(
            f"--second-cluster {second}: the official provider cannot route tasks to two clusters; "
            "this run stays on one cluster",
            flush=True,
        )
        second = ""
    if second and (
        second == DEFAULT_CLUSTER or not re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", second)
    ):
        print(
            f"--second-cluster {second!r}: lower-case letters, digits and '-', not 'default'", file=sys.stderr
        )
        return 2
    clusters = {DEFAULT_CLUSTER: args.cluster, **({second: f"{args.cluster}-{second}"} if second else {})}
    if taken := [c for c in clusters.values() if c in OTHER_RUNS_CLUSTERS]:
        print(
            f"cluster {', '.join(taken)}: other runs use it; name this run's with --cluster", file=sys.stderr
        )
        return 2
    schedule = draw(args.seed, args.minutes, kinds, tuple(clusters) if second else ())
    where = " and ".join(f"{name} ({c})" for name, c in clusters.items())
    print(f"fault schedule (seed {args.seed}, {args.minutes} min, clusters {where}):")
    for fault in schedule:
        mapped, note = for_executor(fault, args.executor)
        print(f"  {mapped.describe()}" + (f"  [{note}]" if note else ""))
    sys.stdout.flush()
    if args.schedule_only:
        return 0
    directories = {name: control_plane.default_cluster_dir(c) for name, c in clusters.items()}
    # A running cluster of this name may be another run's, whose faults would be this run's too,
    # and whose end would take this run's cluster down: used only when asked, and never stopped.
    reused = {name: bool(control_plane.status(d).get("running")) for name, d in directories.items()}
    for name, directory in directories.items():
        if reused[name] and not args.reuse_cluster:
            print(
                f"a cluster named {clusters[name]!r} is running ({directory}): another run's? "
                f"Stop it (k8s-executor-dev cluster down --name {clusters[name]}) or pass --reuse-cluster.",
                file=sys.stderr,
            )
            return 2
    try:
        for directory in directories.values():
            control_plane.up(directory)
        run = Run(args, schedule, directories)
        try:
            run.start()
            result = run.execute()
        finally:
            run.stop()
    finally:
        for name, directory in directories.items():
            if not (args.keep_cluster or reused[name]):
                control_plane.down(directory)
    if args.second_cluster and not second:
        result["second_cluster"] = "not used: the official provider cannot route tasks to two clusters"
    result["schedule"] = [f.describe() for f in schedule]
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    print_table(result)
    print(f"\nwritten to {args.json}")
    failed = [key for key in INVARIANTS if result[key]] + (
        [] if result["runs_triggered"] else ["no run triggered"]
    )
    if failed:
        print(f"invariants failed: {', '.join(failed)}")
    return 1 if failed and args.executor == "ours" else 0


if __name__ == "__main__":
    sys.exit(main())
