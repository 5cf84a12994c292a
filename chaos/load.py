"""The steady load: one DAG whose mapped tasks each end in a known way, triggered every few seconds.

Every task is written to reach one outcome, so the end state of each task instance can be checked
against it (see `EXPECTED`). Tasks written to succeed have retries: a try failed by an injected
fault (a pod deleted by hand) is retried, so the task still reaches its outcome, and the failed
try is checked for the reason it was given. Long tasks are the ones faults aim at: they are the
ones running when a pod is picked.

With a second cluster, a second DAG of the same tasks (`dag_source(cluster)`) runs there, triggered
in turn with the first: half the runs, so half the tasks of every kind. Its tasks are routed as an
operator routes them: by their queue (`queue_clusters` maps the queue named after the cluster to
it), the long ones by their `executor_config` (`{"cluster": ...}` beside their pod_override).
"""

from __future__ import annotations

DAG_ID = "chaos"
# The message of every failure a task is written to have: the reason check looks for it.
WRITTEN_TO_FAIL = "chaos: written to fail"
LONG_S = 60
RETRIES = {"ok": 2, "fail": 1, "flaky": 2, "long": 2}
MAPPED = {"ok": 3, "fail": 1, "flaky": 1, "long": 2}

DEFAULT_CLUSTER = "default"


def dag_id_for(cluster: str) -> str:
    """The DAG whose tasks run in `cluster` (the executor's name for it)."""
    return DAG_ID if cluster == DEFAULT_CLUSTER else f"{DAG_ID}_{cluster}"


def is_load_dag(dag_id: str | None) -> bool:
    return dag_id is not None and (dag_id == DAG_ID or dag_id.startswith(f"{DAG_ID}_"))


def dag_source(cluster: str = DEFAULT_CLUSTER) -> str:
    """The load's DAG for `cluster`: the first cluster's routes nowhere (the executor's default)."""
    routed = cluster != DEFAULT_CLUSTER
    return _DAG.format(
        dag_id=dag_id_for(cluster),
        queue=f"queue={cluster!r}, " if routed else "",
        cluster=f", cluster={cluster!r}" if routed else "",
    )


_DAG = f'''
import datetime
import time

from airflow.sdk import DAG, get_current_context, task
from kubernetes.client import models as k8s

NO_DELAY = datetime.timedelta(seconds=0)
HALF_A_CPU = dict(
    pod_override=k8s.V1Pod(
        spec=k8s.V1PodSpec(
            containers=[
                k8s.V1Container(name="base", resources=k8s.V1ResourceRequirements(requests=dict(cpu="500m")))
            ]
        )
    ){{cluster}}
)

with DAG("{{dag_id}}", start_date=datetime.datetime(2024, 1, 1), schedule=None, catchup=False,
         max_active_runs=64, max_active_tasks=256):

    @task({{queue}}retries={RETRIES["ok"]}, retry_delay=NO_DELAY)
    def ok(i: int) -> None:
        time.sleep(1)

    @task({{queue}}retries={RETRIES["fail"]}, retry_delay=NO_DELAY)
    def fail(i: int) -> None:
        raise RuntimeError("{WRITTEN_TO_FAIL} (every try)")

    @task({{queue}}retries={RETRIES["flaky"]}, retry_delay=NO_DELAY)
    def flaky(i: int) -> None:
        if get_current_context()["ti"].try_number == 1:
            raise RuntimeError("{WRITTEN_TO_FAIL} (first try only)")

    # Half a CPU each: a pod of higher priority that needs a whole node preempts them. A
    # pod_override, which both executors take; in a second cluster's DAG, beside that cluster's
    # name, which routes them there.
    @task(retries={RETRIES["long"]}, retry_delay=NO_DELAY, executor_config=HALF_A_CPU)
    def long(i: int) -> None:
        time.sleep({LONG_S})

    ok.expand(i=list(range({MAPPED["ok"]})))
    fail.expand(i=list(range({MAPPED["fail"]})))
    flaky.expand(i=list(range({MAPPED["flaky"]})))
    long.expand(i=list(range({MAPPED["long"]})))
'''
DAG = dag_source()


def expected_outcome(task_id: str) -> str:
    """What a task was written to reach: `success`, `failed_after_retries` or `retried_then_success`."""
    return {"fail": "failed_after_retries", "flaky": "retried_then_success"}.get(task_id, "success")


def outcome(task_id: str, state: str | None, try_number: int) -> str:
    """What a task instance reached, in the words of `expected_outcome`, or its state when it is
    none of them (queued, running, failed where it should have succeeded...)."""
    if state == "success":
        return "retried_then_success" if task_id == "flaky" and try_number >= 2 else "success"
    # At least: a try Airflow abandoned (reset when its scheduler died before its pod existed)
    # takes a try number but no retry.
    if state == "failed" and task_id == "fail" and try_number >= RETRIES["fail"] + 1:
        return "failed_after_retries"
    return str(state)


def written_to_fail(task_id: str, try_number: int) -> bool:
    return task_id == "fail" or (task_id == "flaky" and try_number == 1)
