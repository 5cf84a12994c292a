"""The steady load: one DAG whose mapped tasks each end in a known way, triggered every few seconds.

Every task is written to reach one outcome, so the end state of each task instance can be checked
against it (see `EXPECTED`). Tasks written to succeed have retries: a try failed by an injected
fault (a pod deleted by hand) is retried, so the task still reaches its outcome, and the failed
try is checked for the reason it was given. Long tasks are the ones faults aim at: they are the
ones running when a pod is picked.
"""

from __future__ import annotations

DAG_ID = "chaos"
# The message of every failure a task is written to have: the reason check looks for it.
WRITTEN_TO_FAIL = "chaos: written to fail"
LONG_S = 60
RETRIES = {"ok": 2, "fail": 1, "flaky": 2, "long": 2}
MAPPED = {"ok": 3, "fail": 1, "flaky": 1, "long": 2}

DAG = f'''
import datetime
import time

from airflow.sdk import DAG, get_current_context, task
from kubernetes.client import models as k8s

NO_DELAY = datetime.timedelta(seconds=0)
HALF_A_CPU = {{
    "pod_override": k8s.V1Pod(
        spec=k8s.V1PodSpec(
            containers=[
                k8s.V1Container(name="base", resources=k8s.V1ResourceRequirements(requests={{"cpu": "500m"}}))
            ]
        )
    )
}}

with DAG("{DAG_ID}", start_date=datetime.datetime(2024, 1, 1), schedule=None, catchup=False,
         max_active_runs=64, max_active_tasks=256):

    @task(retries={RETRIES["ok"]}, retry_delay=NO_DELAY)
    def ok(i: int) -> None:
        time.sleep(1)

    @task(retries={RETRIES["fail"]}, retry_delay=NO_DELAY)
    def fail(i: int) -> None:
        raise RuntimeError("{WRITTEN_TO_FAIL} (every try)")

    @task(retries={RETRIES["flaky"]}, retry_delay=NO_DELAY)
    def flaky(i: int) -> None:
        if get_current_context()["ti"].try_number == 1:
            raise RuntimeError("{WRITTEN_TO_FAIL} (first try only)")

    # Half a CPU each: a pod of higher priority that needs a whole node preempts them. A
    # pod_override, which both executors take.
    @task(retries={RETRIES["long"]}, retry_delay=NO_DELAY, executor_config=HALF_A_CPU)
    def long(i: int) -> None:
        time.sleep({LONG_S})

    ok.expand(i=list(range({MAPPED["ok"]})))
    fail.expand(i=list(range({MAPPED["fail"]})))
    flaky.expand(i=list(range({MAPPED["flaky"]})))
    long.expand(i=list(range({MAPPED["long"]})))
'''


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
