"""KubernetesExecutor under a real Airflow 3 scheduler, on the development cluster."""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from devcluster import control_plane, demo
from devcluster.airflow_stack import AirflowStack
from devcluster.node_agent import DURATION_ANNOTATION, RUNTIME_LABEL, SIMULATED_TAINT
from kubernetes import client

from k8s_executor import identity
from tests.conftest import CLUSTER_DIR
from tests.e2e.conftest import (
    Statsd,
    airflow_stack,
    assert_adapter_queries_answer,
    assert_metrics_received,
    statsd_env,
)
from tests.helpers import wait_for

pytestmark = pytest.mark.e2e
UNCLAIMED_GRACE_S = 20


@pytest.fixture(scope="module")
def stack(
    cluster: control_plane.ClusterState, core: client.CoreV1Api, statsd: Statsd
) -> Iterator[AirflowStack]:
    with airflow_stack(
        cluster,
        core,
        # Airflow's orphan check, and with it the grace before unclaimed pods are disposed of.
        AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL=str(UNCLAIMED_GRACE_S),
        **statsd_env(statsd),
    ) as airflow:
        yield airflow


def pods_of(core: client.CoreV1Api, stack: AirflowStack, run_id: str) -> list[client.V1Pod]:
    return core.list_namespaced_pod(stack.namespace, label_selector=f"run_id={run_id}").items


def key_of(pod: client.V1Pod) -> tuple[str, int, int]:
    a = pod.metadata.annotations
    return a["task_id"], int(a["map_index"]), int(a["try_number"])


def wait_running(core: client.CoreV1Api, stack: AirflowStack, run_id: str, count: int) -> None:
    wait_for(
        lambda: sum(p.status.phase == "Running" for p in pods_of(core, stack, run_id)) >= count,
        f"{count} running pods",
        timeout=240,
        interval=1,
    )


def wait_all_pods_done(core: client.CoreV1Api, stack: AirflowStack, run_id: str) -> None:
    wait_for(
        lambda: all(
            p.status.phase == "Succeeded" and p.metadata.labels.get("airflow_executor_done") == "True"
            for p in pods_of(core, stack, run_id)
        ),
        "every pod finished and marked done",
        timeout=120,
        interval=1,
    )


def assert_reported_once(scheduler_log: str, run_id: str, tasks: int) -> None:
    """Each mapped task's end reached Airflow exactly once (the scheduler logs every event it takes)."""
    for i in range(tasks):
        events = [
            line
            for line in scheduler_log.splitlines()
            if "Received executor event" in line
            and f"run_id='{run_id}'" in line
            and f"map_index={i})" in line
        ]
        assert len(events) == 1, f"task [{i}] of {run_id} was reported {len(events)} times"


def run(stack: AirflowStack, dag_id: str, run_id: str) -> str:
    stack.wait_for_dag(dag_id)
    stack.trigger(dag_id, run_id)
    return stack.wait_for_run(dag_id, run_id)


def test_every_task_runs_in_its_own_pod_with_its_settings(
    stack: AirflowStack, core: client.CoreV1Api
) -> None:
    assert run(stack, "e2e_main", "main-1") == "failed"  # `flaky` fails on purpose
    states = stack.task_states("e2e_main", "main-1")
    assert states[("flaky", -1)] == ("failed", 2)
    assert {k: v for k, v in states.items() if k[0] != "flaky"} == {
        **{
            (t, -1): ("success", 1)
            for t in ("first", "second", "third", "numbers", "dict_form", "pod_override")
        },
        **{("double", i): ("success", 1) for i in range(20)},
    }
    pods = {key_of(p): p for p in pods_of(core, stack, "main-1")}
    expected = {(t, m, 1) for (t, m) in states} | {("flaky", -1, 2)}
    assert set(pods) == expected, "one pod per task try, no more, no less"
    # Airflow 3's task runner reports the failure through the execution API and exits 0,
    # so the pod of a failed try ends Succeeded; the task state comes from the API.
    assert pods[("flaky", -1, 1)].status.phase in ("Succeeded", "Failed")

    configured = pods[("dict_form", -1, 1)]
    base = next(c for c in configured.spec.containers if c.name == "base")
    assert base.resources.requests == {"memory": "64Mi", "cpu": "100m"}
    assert base.resources.limits == {"memory": "1Gi"}
    assert configured.metadata.labels["team"] == "data-engineering"
    assert configured.metadata.annotations["monitoring"] == "enabled"
    assert configured.spec.node_selector == {"kubernetes.io/os": "linux"}
    # DefaultTolerationSeconds admission adds not-ready/unreachable tolerations, as in any cluster.
    assert "compute-type" in [t.key for t in configured.spec.tolerations or []]
    # The worker's token travels in the pod's args and nowhere in the scheduler's log.
    token = json.loads(base.args[-1])["token"]
    assert token and token not in (stack.home / "scheduler.log").read_text()
    overridden = pods[("pod_override", -1, 1)]
    assert overridden.metadata.labels["override"] == "yes"
    assert overridden.spec.automount_service_account_token is False
    assert_adapter_queries_answer(stack, "e2e_main", "main-1")


def test_the_demos_table_names_the_pod_and_node_of_every_task(
    stack: AirflowStack, core: client.CoreV1Api
) -> None:
    """`./dev demo`'s DAG and table, read as the demo reads them: every task of its DAG runs as a
    pod, so every row names one, and the node it ran on."""
    shutil.copy(demo.DEMO_DAG, stack.dags_folder)
    _, outcome, rows = demo.run_once(core, stack)
    table = demo.format_table(rows)
    assert outcome == "success", table
    assert len(rows) == 8, table  # extract, square[0..3], total, configured, overridden
    assert all(row.pod != "-" and row.node != "-" for row in rows), table


def test_pod_deleted_by_hand_fails_its_task_with_the_reason(
    stack: AirflowStack, core: client.CoreV1Api
) -> None:
    stack.wait_for_dag("e2e_long")
    stack.trigger("e2e_long", "long-1")

    def running_pod() -> client.V1Pod | None:
        return next((p for p in pods_of(core, stack, "long-1") if p.status.phase == "Running"), None)

    pod = wait_for(running_pod, "the long task's pod to run", timeout=180, interval=1)
    # Its task has started (deleted before, the pod would be launched again: pod_launch_failure_retries).
    wait_for(
        lambda: stack.task_states("e2e_long", "long-1").get(("long_task", -1), (None, 0))[0] == "running",
        "the long task to run",
        timeout=120,
        interval=1,
    )
    core.delete_namespaced_pod(pod.metadata.name, stack.namespace, grace_period_seconds=1)
    assert stack.wait_for_run("e2e_long", "long-1", timeout=180) == "failed"
    assert stack.task_states("e2e_long", "long-1")[("long_task", -1)][0] == "failed"
    # The task runner fails its task itself when told to stop, so the run may end before the
    # executor's heartbeat has read the pod's end: its reason is awaited, not read once.
    said = f"{pod.metadata.name}: pod was deleted while running, before its task finished"
    wait_for(
        lambda: said in (stack.home / "scheduler.log").read_text(),
        "the executor to log why the pod's task failed",
        timeout=60,
        interval=1,
    )


def test_scheduler_killed_mid_run_loses_and_duplicates_nothing(
    stack: AirflowStack, core: client.CoreV1Api
) -> None:
    stack.wait_for_dag("e2e_sleepers")
    stack.trigger("e2e_sleepers", "kill-1")
    wait_running(core, stack, "kill-1", 20)
    stack.kill_component("scheduler")
    stack.start_component("scheduler")
    outcome = stack.wait_for_run("e2e_sleepers", "kill-1", timeout=400)
    assert outcome == "success", stack.explain_run("e2e_sleepers", "kill-1")
    states = stack.task_states("e2e_sleepers", "kill-1")
    assert states == {("sleeper", i): ("success", 1) for i in range(20)}
    pods = pods_of(core, stack, "kill-1")
    assert Counter(key_of(p) for p in pods) == Counter({("sleeper", i, 1): 1 for i in range(20)})
    # No pod is left behind: the new scheduler sees every pod finish and marks it done.
    wait_all_pods_done(core, stack, "kill-1")
    assert_reported_once((stack.home / "scheduler.log").read_text(), "kill-1", 20)


def test_watch_cut_and_410_while_pods_finish(stack: AirflowStack, core: client.CoreV1Api) -> None:
    stack.wait_for_dag("e2e_sleepers")
    stack.trigger("e2e_sleepers", "gap-1")
    wait_running(core, stack, "gap-1", 10)
    control_plane.restart_component(CLUSTER_DIR, "kube-apiserver")
    time.sleep(5)
    control_plane.compact_etcd(CLUSTER_DIR)
    control_plane.restart_component(CLUSTER_DIR, "kube-apiserver")
    outcome = stack.wait_for_run("e2e_sleepers", "gap-1", timeout=400)
    assert outcome == "success", stack.explain_run("e2e_sleepers", "gap-1")
    assert stack.task_states("e2e_sleepers", "gap-1") == {("sleeper", i): ("success", 1) for i in range(20)}
    # A task's run can finish (through the execution API) before its pod has exited.
    wait_all_pods_done(core, stack, "gap-1")
    log = (stack.home / "scheduler.log").read_text()
    # The lease renewals move etcd on while the watch is down, so the watch resumes from a
    # resourceVersion older than the restarted API server's history: a 410, then a relist.
    assert "is gone, relisting" in log
    assert_reported_once(log, "gap-1", 20)


def gone_schedulers_pod(core: client.CoreV1Api, stack: AirflowStack, task_id: str, runtime: str) -> str:
    """A pod of this executor labelled for a scheduler Airflow never knew alive."""
    ref = identity.TaskRef("gone_dag", task_id, "gone-run", 1, -1)
    name = identity.pod_name(ref)
    core.create_namespaced_pod(
        stack.namespace,
        {
            "metadata": {
                "name": name,
                "labels": identity.labels(ref, "scheduler-long-gone", "3.3.2"),
                "annotations": {**identity.annotations_for(ref), DURATION_ANNOTATION: "0"},
            },
            "spec": {
                "restartPolicy": "Never",
                "nodeSelector": {RUNTIME_LABEL: runtime},
                "tolerations": [{"key": SIMULATED_TAINT, "operator": "Exists", "effect": "NoSchedule"}],
                "containers": [{"name": "base", "image": "simulated"}],
            },
        },
    )
    return name


def test_pods_of_a_scheduler_that_is_gone_are_disposed_of(
    stack: AirflowStack, core: client.CoreV1Api
) -> None:
    """Their tries ended through the execution API, or were taken back by Airflow, before any
    successor adopted them, so no adoption will ever take these pods: without the sweep they
    would stay in every watch, and one that cannot start would stay Pending for ever."""
    name = gone_schedulers_pod(core, stack, "gone_task", "simulated")
    # No node has this runtime: the pod stays Pending until it is deleted.
    stuck = gone_schedulers_pod(core, stack, "stuck_task", "nowhere")
    wait_for(
        lambda: core.read_namespaced_pod(name, stack.namespace).status.phase == "Succeeded",
        "the orphan pod to finish",
        timeout=60,
    )
    # The executor keeps finished pods in this suite (delete_worker_pods = False): marked done.
    wait_for(
        lambda: (
            core.read_namespaced_pod(name, stack.namespace).metadata.labels.get(identity.DONE_LABEL) == "True"
        ),
        "the unclaimed pod to be marked done",
        timeout=UNCLAIMED_GRACE_S + 60,
        interval=1,
    )
    # Unfinished: deleted after twice the grace (Airflow's orphan check has run since the death).
    wait_for(
        lambda: not core.list_namespaced_pod(stack.namespace, field_selector=f"metadata.name={stuck}").items,
        "the unclaimed unfinished pod to be deleted",
        timeout=2 * UNCLAIMED_GRACE_S + 60,
        interval=1,
    )
    log = (stack.home / "scheduler.log").read_text()
    assert f"pod {stack.namespace}/{name} finished with no scheduler left to claim it" in log
    assert f"pod {stack.namespace}/{stuck} unfinished with no scheduler left to claim it" in log
    received = "".join(line for line in log.splitlines() if "Received executor event" in line)
    assert "gone_task" not in received and "stuck_task" not in received


def test_relists_adoption_and_disposal_reach_the_metrics(stack: AirflowStack, statsd: Statsd) -> None:
    """Runs last: the tests above restarted the scheduler, forced a 410 and left an unclaimed pod."""
    assert_metrics_received(
        statsd,
        "watcher.relists",
        "adoption.pods",
        "adoption.duration",
        "unclaimed_pods.disposed",
        "pod_create.status.201",
    )
