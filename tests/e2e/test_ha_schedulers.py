"""Several live schedulers on one database and one namespace (Airflow's HA mode).

500 mapped tasks whose pods land on the simulated node: they run nothing and end together when
the test says so, so the test plays their workers and records each task's success in the
database first, as a worker does through the execution API. What is under test is the
executors: who creates, adopts, reports and deletes which pod, counted from the API server's
audit log, where each scheduler appears under a user of its own.
"""

from __future__ import annotations

import datetime
import json
import re
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from devcluster import control_plane
from devcluster.node_agent import simulated_pod_template
from kubernetes import client

from k8s_executor import airflow_adapter
from tests.e2e.conftest import airflow_stack
from tests.helpers import audit_entries, pods_created, wait_for
from tests.least_privilege import executor_kubeconfig

pytestmark = pytest.mark.e2e

TASKS = 500
RUN = "ha-1"
POD_TRY = re.compile(r"^(?P<base>.+-t\d+)(r\d+)?$")
# Room for every task at once, and for a hand-over that takes a while.
AT_ONCE = {
    "AIRFLOW__KUBERNETES_EXECUTOR__DELETE_WORKER_PODS": "True",
    "AIRFLOW__CORE__PARALLELISM": "1000",
    "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "1000",
    "AIRFLOW__CORE__DEFAULT_POOL_TASK_SLOT_COUNT": "1000",
    "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "900",
}


def simulated_pods() -> tuple[Path, Path]:
    """A pod template whose pods run nothing on the simulated node, and the file that ends them."""
    scratch = Path(tempfile.mkdtemp(prefix="k8s-executor-ha-"))
    finish = scratch / "finish"
    template = scratch / "simulated_pod.json"
    template.write_text(json.dumps(simulated_pod_template(finish)))
    return template, finish


def test_two_schedulers_share_a_run_one_is_killed_a_third_starts_and_nothing_is_lost_or_doubled(
    cluster: control_plane.ClusterState, core: client.CoreV1Api
) -> None:
    template, finish = simulated_pods()
    suffix = uuid.uuid4().hex[:6]
    users = {name: f"ha-{name}-{suffix}" for name in ("a", "b", "c")}
    kubeconfigs: dict[str, Path] = {}

    def kubeconfig_for(namespace: str) -> Path:
        for name, user in users.items():
            kubeconfigs[name] = executor_kubeconfig(cluster, core.api_client, user, [namespace])
        return kubeconfigs["a"]

    with airflow_stack(
        cluster,
        core,
        kubeconfig_for=kubeconfig_for,
        AIRFLOW__KUBERNETES_EXECUTOR__POD_TEMPLATE_FILE=str(template),
        **AT_ONCE,
    ) as stack:
        [(job_a,)] = wait_for(
            lambda: stack.sql("SELECT id FROM job WHERE job_type = 'SchedulerJob' AND state = 'running'"),
            "scheduler a's job",
        )
        stack.start_component(
            "scheduler",
            name="scheduler-b",
            env={"AIRFLOW__KUBERNETES_EXECUTOR__CONFIG_FILE": str(kubeconfigs["b"])},
        )
        stack.wait_for_dag("e2e_ha")
        stack.trigger("e2e_ha", RUN)

        def pods() -> list[client.V1Pod]:
            return core.list_namespaced_pod(stack.namespace, label_selector=f"run_id={RUN}").items

        wait_for(lambda: len(pods()) >= TASKS // 3, "a third of the pods", timeout=300, interval=1)
        stack.kill_component("scheduler")
        killed_at = datetime.datetime.now(datetime.timezone.utc)
        stack.start_component(
            "scheduler",
            name="scheduler-c",
            env={"AIRFLOW__KUBERNETES_EXECUTOR__CONFIG_FILE": str(kubeconfigs["c"])},
        )

        def every_try_has_its_pod() -> bool:
            rows = stack.sql(
                "SELECT map_index, try_number, state, queued_by_job_id FROM task_instance WHERE run_id = %s",
                RUN,
            )
            if len(rows) < TASKS or any(state != "queued" or by == job_a for _, _, state, by in rows):
                return False
            tries = {
                (int(a["map_index"]), int(a["try_number"])) for p in pods() if (a := p.metadata.annotations)
            }
            return all((index, number) in tries for index, number, _, _ in rows)

        # Airflow hands the killed scheduler's tries to the live ones (none is queued by it any
        # more): adopted where their pod exists, reset and launched again where its create never
        # went out.
        wait_for(every_try_has_its_pod, "every try queued with its pod", timeout=600, interval=2)
        # The workers' report (see the module's docstring), then every pod ends.
        stack.sql("UPDATE task_instance SET state = 'success', end_date = now() WHERE run_id = %s", RUN)
        finish.touch()
        wait_for(lambda: not pods(), "every finished pod deleted", timeout=600, interval=2)

        tries = {
            (i, t)
            for i, t in stack.sql("SELECT map_index, try_number FROM task_instance WHERE run_id = %s", RUN)
        }
        logs = "\n".join(
            (stack.home / f"{name}.log").read_text(errors="replace")
            for name in ("scheduler", "scheduler-b", "scheduler-c")
        )
        for index, number in tries:
            events = [
                line
                for line in logs.splitlines()
                if "Received executor event with state success" in line
                and f"run_id='{RUN}', try_number={number}, map_index={index})" in line
            ]
            assert len(events) == 1, f"task [{index}] try {number} reported {len(events)} times"

        entries = [
            e
            for e in audit_entries(core, control_plane.audit_log(cluster), stack.namespace)
            if e.get("stage") == "ResponseComplete" and (e.get("objectRef") or {}).get("resource") == "pods"
        ]
        user_of = {f"user:{u}": name for name, u in users.items()} | {u: name for name, u in users.items()}

        def who(entry: dict) -> str:
            return user_of.get(entry["user"]["username"], entry["user"]["username"])

        # A pod that came to exist was bound to the node once (kube-scheduler's binding); its
        # creator is whoever sent the create that made it: answered 201, or a time-out (504) for
        # the killed scheduler, whose create landed as it died.
        bound = {
            e["objectRef"]["name"]
            for e in entries
            if e["verb"] == "create"
            and e["objectRef"].get("subresource") == "binding"
            and e["responseStatus"]["code"] == 201
        }
        created: dict[str, str] = {}
        for e in entries:
            name = e["objectRef"].get("name")
            code = e["responseStatus"]["code"]
            if (
                e["verb"] == "create"
                and not e["objectRef"].get("subresource")
                and (code == 201 or code >= 500)
            ):
                created.setdefault(name, who(e))
        assert bound <= set(created), sorted(bound - set(created))
        created = {name: creator for name, creator in created.items() if name in bound}
        # No try got two pods: a try's pod name is fixed, and a relaunch after a revocation (r<n>)
        # would be a second pod of the same try.
        by_try = Counter(POD_TRY.match(name)["base"] for name in created)  # type: ignore[index]
        assert [base for base, count in by_try.items() if count > 1] == []
        assert len(created) == len(tries)
        adopters: dict[str, set[str]] = defaultdict(set)
        deleters: dict[str, set[str]] = defaultdict(set)
        for e in entries:
            name = e["objectRef"].get("name")
            if e["verb"] == "patch" and e["responseStatus"]["code"] == 200 and who(e) in users:
                adopters[name].add(who(e))
            # The node agent's own delete, once the containers stopped (kubelet's), is not an
            # executor's.
            if e["verb"] == "delete" and e["responseStatus"]["code"] == 200 and who(e) in users:
                deleters[name].add(who(e))
        trespasses = [
            (name, sorted(deleters[name]), created[name])
            for name in created
            if deleters[name] - {created[name], "a"} - adopters[name]
            # A pod of the killed scheduler may be disposed of by the live one Airflow holds
            # responsible once it is dead; a live scheduler's pod only by itself or its adopter.
            and created[name] != "a"
        ]
        assert trespasses == []
        # Every pod deleted, each by one scheduler only.
        assert sorted(name for name in created if len(deleters[name]) != 1) == []

        # The killed scheduler's helpers went with it: no request of "a" after its death. A request
        # it sent just before may reach the API server's handler after the kill (a second late, in
        # one CI run, with b and c creating hundreds of pods); the server then finds its client
        # gone: a create ends "context canceled", a watch at once. A helper left running would
        # hold its watch open (timeoutSeconds=300).
        def at(stamp: str) -> datetime.datetime:
            return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))

        def client_gone(e: dict) -> bool:
            if "context canceled" in e["responseStatus"].get("message", ""):
                return True
            return e["verb"] == "watch" and at(e["stageTimestamp"]) - at(e["requestReceivedTimestamp"]) < (
                datetime.timedelta(seconds=1)
            )

        late = [
            (e["verb"], e["objectRef"].get("name"))
            for e in entries
            if who(e) == "a" and at(e["requestReceivedTimestamp"]) > killed_at and not client_gone(e)
        ]
        assert late == []


HELD_DAG = """
import datetime

from airflow.sdk import DAG, task

with DAG("e2e_held", start_date=datetime.datetime(2024, 1, 1), schedule=None, catchup=False):

    @task
    def held() -> str:
        return "ran"

    held()
"""


def test_a_create_held_back_until_airflow_reset_its_try_makes_no_pod(
    cluster: control_plane.ClusterState, core: client.CoreV1Api
) -> None:
    # Upstream #69760: with HA schedulers, a create that lands after the try was reset makes a pod
    # nobody waits for. Here the create is held back by a quota of no pods (refused with 403 and
    # retried), and the try reset as another scheduler would reset it.
    with airflow_stack(cluster, core, AIRFLOW__KUBERNETES_EXECUTOR__TASK_PUBLISH_MAX_RETRIES="-1") as stack:
        core.create_namespaced_resource_quota(
            stack.namespace, {"metadata": {"name": "no-pods"}, "spec": {"hard": {"pods": "0"}}}
        )
        (stack.dags_folder / "e2e_held.py").write_text(HELD_DAG)
        stack.wait_for_dag("e2e_held")
        stack.trigger("e2e_held", "held-1")
        log = control_plane.audit_log(cluster)

        def refused_creates() -> list[str]:
            return [
                e["objectRef"]["name"]
                for e in audit_entries(core, log, stack.namespace)
                if e["verb"] == "create"
                and e.get("stage") == "ResponseComplete"
                and e["responseStatus"]["code"] == 403
            ]

        [first, *_] = wait_for(refused_creates, "the create refused by the quota", timeout=120, interval=2)
        # Paused, so that Airflow does not queue the try again at once: then the create would be
        # wanted again, and rightly sent.
        stack.sql("UPDATE dag SET is_paused = true WHERE dag_id = 'e2e_held'")
        stack.sql(
            "UPDATE task_instance SET state = 'scheduled', queued_by_job_id = NULL WHERE run_id = 'held-1'"
        )
        scheduler_log = stack.home / "scheduler.log"
        wait_for(
            lambda: "is no longer this scheduler's" in scheduler_log.read_text(errors="replace"),
            "the executor dropping the create",
            timeout=60,
        )
        core.delete_namespaced_resource_quota("no-pods", stack.namespace)
        time.sleep(10)  # what a create still retried would need to land: the quota is gone
        assert pods_created(audit_entries(core, log, stack.namespace)) == []
        stack.sql("UPDATE dag SET is_paused = false WHERE dag_id = 'e2e_held'")
        assert stack.wait_for_run("e2e_held", "held-1", timeout=300) == "success"
        created = pods_created(audit_entries(core, log, stack.namespace))
        # One pod, under a new name: the held-back one never existed.
        assert len(created) == 1 and created[0] != first and created[0].startswith(first), (first, created)

        def events() -> list[str]:
            return [
                line
                for line in scheduler_log.read_text(errors="replace").splitlines()
                if "Received executor event" in line and "run_id='held-1'" in line
            ]

        # The task reports its own end; the executor's report of its pod follows.
        [event] = wait_for(events, "the executor's report of the task", timeout=60)
        time.sleep(5)
        assert events() == [event] and "state success" in event, events()


def test_a_scheduler_taking_over_hundreds_of_tries_reads_their_runs_ahead_and_adopts_every_pod(
    cluster: control_plane.ClusterState, core: client.CoreV1Api
) -> None:
    # From READ_RUNS_AHEAD_FROM tries handed over, the adoption reads their dag runs in Airflow's
    # transaction, in a savepoint, before Airflow's own pass reads each one's conf: here on
    # PostgreSQL under a real scheduler, where the savepoint, the row locks Airflow's orphan query
    # took and its flush after the call meet.
    assert TASKS >= airflow_adapter.READ_RUNS_AHEAD_FROM
    template, finish = simulated_pods()
    run = "adopt-1"
    with airflow_stack(
        cluster, core, AIRFLOW__KUBERNETES_EXECUTOR__POD_TEMPLATE_FILE=str(template), **AT_ONCE
    ) as stack:
        stack.wait_for_dag("e2e_ha")
        stack.trigger("e2e_ha", run)

        def pods() -> list[client.V1Pod]:
            return core.list_namespaced_pod(stack.namespace, label_selector=f"run_id={run}").items

        wait_for(lambda: len(pods()) == TASKS, "every task's pod", timeout=300, interval=1)
        before = {p.metadata.name: p.metadata.uid for p in pods()}
        stack.kill_component("scheduler")
        stack.start_component("scheduler", name="scheduler-b")
        log_b = stack.home / "scheduler-b.log"
        wait_for(
            lambda: f"adopted {TASKS} of {TASKS} task instances" in log_b.read_text(errors="replace"),
            "the successor adopting every pod",
            timeout=300,
            interval=2,
        )
        text = log_b.read_text(errors="replace")
        assert f"the runs of {TASKS} task instances handed over read ahead (queries: 1)" in text
        [(job_b,)] = stack.sql("SELECT id FROM job WHERE job_type = 'SchedulerJob' AND state = 'running'")
        # Every try kept its pod and its number, now the successor's: none was reset.
        rows = stack.sql(
            "SELECT try_number, state, queued_by_job_id FROM task_instance WHERE run_id = %s", run
        )
        assert Counter(rows) == Counter({(1, "queued", job_b): TASKS})
        assert {p.metadata.name: p.metadata.uid for p in pods()} == before
        # The workers' report (see the module's docstring), then every pod ends.
        stack.sql("UPDATE task_instance SET state = 'success', end_date = now() WHERE run_id = %s", run)
        finish.touch()
        wait_for(lambda: not pods(), "every finished pod deleted", timeout=300, interval=2)
        events = Counter(
            line.split("map_index=")[1].split(")")[0]
            for line in log_b.read_text(errors="replace").splitlines()
            if "Received executor event with state success" in line and f"run_id='{run}'" in line
        )
        assert events == Counter({str(i): 1 for i in range(TASKS)})
