"""Pods that end the ways a cluster ends them: sidecars that outlive their task, deletions inside
a grace period, evictions. Each task's outcome and log are checked by tests/e2e/test_pod_endings.py."""

import datetime
import pathlib

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, task
from kubernetes.client import models as k8s

ARGS = {"start_date": datetime.datetime(2024, 1, 1), "schedule": None, "catchup": False}
# A sidecar that never exits on its own (a proxy, a log shipper).
PROXY = {"name": "proxy", "image": "busybox", "command": ["sleep", "3600"]}


def with_sidecar() -> dict:
    return {
        "pod_override": k8s.V1Pod(
            spec=k8s.V1PodSpec(containers=[k8s.V1Container(name="base"), k8s.V1Container(**PROXY)])
        )
    }


def with_native_sidecar() -> dict:
    return {
        "pod_override": k8s.V1Pod(
            spec=k8s.V1PodSpec(
                containers=[k8s.V1Container(name="base")],
                init_containers=[k8s.V1Container(**PROXY, restart_policy="Always")],
            )
        )
    }


def grace_s(seconds: int, **extra: object) -> dict:
    """A short grace period: an evicted pod's task runs on through it (the disruption guard)."""
    return {
        "pod_override": k8s.V1Pod(
            spec=k8s.V1PodSpec(
                containers=[k8s.V1Container(name="base")], termination_grace_period_seconds=seconds
            )
        ),
        **extra,
    }


# The process node runs every pod on this machine: a task's pods all see this mark.
BASH_MARK = pathlib.Path(__file__).with_name("bash_evicted.first-pod-ran")

with DAG("e2e_endings", max_active_tasks=8, default_args={"retries": 0}, **ARGS):

    @task(executor_config=with_sidecar())
    def sidecar_ok() -> None:
        print("task done, its sidecar runs on", flush=True)

    @task(executor_config=with_native_sidecar())
    def native_sidecar_ok() -> None:
        print("task done, its native sidecar runs on", flush=True)

    @task(executor_config=with_sidecar())
    def sidecar_fails() -> None:
        raise ValueError("this task fails; its pod is kept, and must not run on")

    @task
    def finishes_in_grace() -> None:
        import time

        print("finishes_in_grace is running", flush=True)
        time.sleep(12)
        print("finished inside the grace period", flush=True)

    @task(executor_config=grace_s(10))
    def evicted() -> None:
        import pathlib
        import time

        # Its first pod is evicted while it sleeps; the pod launched again finishes it. (The process
        # node runs every pod on this machine, so both see the mark.)
        mark = pathlib.Path(__file__).with_name("evicted.first-pod-ran")
        first = not mark.exists()
        mark.touch()
        print(f"evicted is running ({'first' if first else 'a new'} pod)", flush=True)
        time.sleep(600 if first else 1)

    @task(executor_config=grace_s(10, KubernetesExecutor={"disruption_retries": 1}))
    def evicted_twice() -> None:
        import time

        print("evicted_twice is running", flush=True)
        time.sleep(600)

    # An operator whose on_kill ends its work: told to stop, it would fail its task (and spend a
    # retry) before the executor heard of the disruption. The guard keeps SIGTERM from it.
    BashOperator(
        task_id="bash_evicted",
        executor_config=grace_s(10),
        bash_command=(
            f"if [ -e {BASH_MARK} ]; then echo 'bash_evicted is running (a new pod)'; sleep 1; "
            f"else touch {BASH_MARK}; echo 'bash_evicted is running (first pod)'; sleep 600; fi"
        ),
    )
    sidecar_ok()
    native_sidecar_ok()
    sidecar_fails()
    finishes_in_grace()
    evicted()
    evicted_twice()
