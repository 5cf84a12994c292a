"""`python -m chaos`: see chaos/__init__.py."""

from __future__ import annotations

import argparse
import json
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

from devcluster import control_plane
from devcluster.airflow_stack import AirflowStack
from kubernetes import client, config

from chaos import checks, faults, identities, load, neighbour
from chaos.observe import PodWatch, audit_entries
from chaos.schedule import ALL_KINDS, DISRUPTION_KINDS, KINDS, Fault, draw, for_executor

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
    parser.add_argument("--keep-cluster", action="store_true", help="leave the cluster running at the end")
    parser.add_argument(
        "--reuse-cluster",
        action="store_true",
        help="run on the cluster of that name if one is running (left running at the end)",
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


def executor_identities(
    directory: Path, core: client.CoreV1Api, namespace: str, executor: str, count: int
) -> list[identities.Identity]:
    """A ServiceAccount per scheduler (the audit log tells them apart), bound to cluster-admin:
    what the executors may do is not under test here."""
    made = [
        identities.create(
            core,
            namespace,
            f"chaos-{executor}-{'abcdefgh'[i]}",
            directory / "chaos-identities" / namespace / f"scheduler-{i + 1}",
            directory / "pki" / "ca.crt",
        )
        for i in range(count)
    ]
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
    reviews = client.AuthorizationV1Api(core.api_client)

    def allowed() -> bool:
        review = reviews.create_subject_access_review(
            {
                "spec": {
                    "user": made[0].username,
                    "groups": ["system:serviceaccounts", f"system:serviceaccounts:{namespace}"],
                    "resourceAttributes": {"verb": "create", "resource": "pods", "namespace": namespace},
                }
            }
        )
        return bool(review.status.allowed)

    # The authorizer reads bindings from a cache: the schedulers' first list must not meet a 403.
    wait_until(allowed, "the executors' RBAC binding", 60)
    return made


class Run:
    def __init__(self, args: argparse.Namespace, schedule: list[Fault], directory: Path) -> None:
        self.args, self.schedule, self.directory = args, schedule, directory
        state = control_plane.ClusterState.load(directory)
        assert state is not None
        self.state: control_plane.ClusterState = state
        self.core = admin_core(self.state.kubeconfig)
        self.namespace = f"chaos-{uuid.uuid4().hex[:8]}"
        self.records = [faults.Record(*for_executor(f, args.executor)) for f in schedule]
        self.exits: list[dict[str, Any]] = []
        self.triggered: list[str] = []
        self.trigger_failures = 0
        # The load and the faults that start a run of their own both trigger.
        self.trigger_lock = threading.Lock()
        self.t0 = 0.0

    # --- set-up ------------------------------------------------------------------------------------
    def start(self) -> None:
        args = self.args
        self.core.create_namespace({"metadata": {"name": self.namespace}})
        wait_until(
            lambda: self.core.list_namespaced_service_account(self.namespace).items,
            "the namespace's default service account",
            180,
        )
        count = 2 if args.executor == "ours" else 1
        made = executor_identities(self.directory, self.core, self.namespace, args.executor, count)
        self.users = {i.username for i in made}
        crowd = neighbour.create(
            self.core,
            self.namespace,
            self.directory / "chaos-identities" / self.namespace / "neighbour",
            self.directory / "pki" / "ca.crt",
        )
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
        home = Path(tempfile.mkdtemp(prefix=f"k8s-executor-chaos-{args.executor}-"))
        self.stack = AirflowStack(
            home=home,
            cluster=self.state,
            namespace=self.namespace,
            executor=EXECUTORS[args.executor],
            extra_env=env,
        )
        self.stack.prepare()
        (self.stack.dags_folder / "chaos.py").write_text(load.DAG)
        self.stack.start("api-server", "dag-processor")
        self.stack.wait_for_dag(load.DAG_ID)
        names = ["scheduler", *(f"scheduler-{i}" for i in range(2, count + 1))]
        self.world = faults.World(
            cluster_dir=self.directory,
            core=self.core,
            stack=self.stack,
            executor=args.executor,
            schedulers=dict(zip(names, made, strict=True)),
            neighbour=crowd,
            trigger=self.trigger,
        )
        with self.world.lock:
            for name in names:
                self.world.start_scheduler(name)
        self.watch = PodWatch(self.core, self.namespace)
        print(f"Airflow in {home}, pods in namespace {self.namespace}", flush=True)

    def stop(self) -> None:
        # Whatever `start` got to: it may have failed half-way.
        if hasattr(self, "world"):
            with self.world.lock:
                self.world.killing.update(self.world.schedulers)
        if hasattr(self, "watch"):
            self.watch.close()
        if hasattr(self, "stack"):
            self.stack.stop()
            shutil.rmtree(self.stack.pg_data, ignore_errors=True)
        try:
            self.core.delete_namespace(self.namespace)
            client.RbacAuthorizationV1Api(self.core.api_client).delete_cluster_role_binding(self.namespace)
        except Exception as exc:
            print(f"namespace {self.namespace} not fully cleaned up: {exc}", file=sys.stderr)

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
            if record.skipped:
                print(f"          skipped: {record.skipped}", flush=True)

    def trigger(self) -> None:
        with self.trigger_lock:
            self._trigger()

    def _trigger(self) -> None:
        run_id = f"chaos-{len(self.triggered) + 1:04d}"
        try:
            self.stack.rest(
                f"/api/v2/dags/{load.DAG_ID}/dagRuns", {"dag_run_id": run_id, "logical_date": None}
            )
        except urllib.error.HTTPError as exc:
            if exc.code != 409:  # 409: an earlier attempt did create it, its answer was lost
                self.trigger_failures += 1
                return
        except Exception:
            # Airflow's API server cannot reach its database while PostgreSQL restarts: the
            # next tick tries again.
            self.trigger_failures += 1
            return
        self.triggered.append(run_id)

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
                "SELECT count(*) FROM dag_run WHERE dag_id = %s AND state NOT IN ('success', 'failed')",
                load.DAG_ID,
            )
        except Exception:
            return -1
        return int(count)

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
        remaining: list[Any] = []
        while time.time() < pods_deadline:
            self.watch_exits()
            remaining = self.core.list_namespaced_pod(self.namespace).items
            if not remaining:
                break
            time.sleep(2)
        print(f"[{time.time() - self.t0:6.1f}s] settled: {settled}, pods left: {len(remaining)}", flush=True)
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

    def findings(self, remaining: list[Any], settled: bool) -> dict[str, Any]:
        found = checks.Findings()
        disrupted = frozenset(p.key for p in self.watch.pods.values() if p.disrupted and p.key is not None)
        all_tries = checks.check_tasks(self.stack, self.records, self.world.victims, found, disrupted)
        entries = audit_entries(self.core, control_plane.audit_log(self.state), self.namespace)
        creates = checks.check_pods(self.args.executor, self.watch, entries, self.users, remaining, found)
        checks.count_refusals(entries, self.users, self.records, found)
        checks.recovery(self.records, creates, all_tries, found)
        done = [r for r in self.records if r.started is not None and not r.skipped]
        exits = [self.explain_exit(e) for e in self.exits]
        unexplained = [e for e in exits if not e["caused_by"]]
        return {
            "executor": self.args.executor,
            "seed": self.args.seed,
            "minutes": self.args.minutes,
            "run_every_s": self.args.run_every,
            "schedulers": len(self.world.schedulers),
            "faults": dict(Counter(r.fault.kind for r in done)),
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
            "watch_gaps": self.watch.gaps,
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
    print(
        f"\nAirflow's loop held at most {result['loop_hold_max_s']:.3f} s by the executor "
        f"({result['slow_calls']} calls over 100 ms; end at most {result['end_max_s']:.3f} s); p99 by call: "
        + ", ".join(f"{call} {s:.3f} s" for call, s in result["loop_hold_p99_s"].items())
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    asked = set(args.faults.split(","))
    if "disruptions" in asked:
        asked |= set(DISRUPTION_KINDS)
    kinds = tuple(k for k in ALL_KINDS if k in asked)
    schedule = draw(args.seed, args.minutes, kinds)
    print(f"fault schedule (seed {args.seed}, {args.minutes} min):")
    for fault in schedule:
        mapped, note = for_executor(fault, args.executor)
        print(f"  {mapped.describe()}" + (f"  [{note}]" if note else ""))
    sys.stdout.flush()
    if args.schedule_only:
        return 0
    directory = control_plane.default_cluster_dir(args.cluster)
    # A running cluster of this name may be another run's, whose faults would be this run's too,
    # and whose end would take this run's cluster down: used only when asked, and never stopped.
    reused = bool(control_plane.status(directory).get("running"))
    if reused and not args.reuse_cluster:
        print(
            f"a cluster named {args.cluster!r} is running ({directory}): another run's? "
            f"Stop it (k8s-executor-dev cluster down --name {args.cluster}) or pass --reuse-cluster.",
            file=sys.stderr,
        )
        return 2
    control_plane.up(directory)
    run = Run(args, schedule, directory)
    try:
        run.start()
        try:
            result = run.execute()
        finally:
            run.stop()
    finally:
        if not (args.keep_cluster or reused):
            control_plane.down(directory)
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
