"""Tasks whose pods fail in each way an operator meets: the reason must reach the UI."""

import datetime

from airflow.sdk import DAG, task
from kubernetes.client import models as k8s

ARGS = {"start_date": datetime.datetime(2024, 1, 1), "schedule": None, "catchup": False}

with DAG("e2e_failures", max_active_tasks=8, **ARGS):

    @task(executor_config={"KubernetesExecutor": {"image": "does-not-exist:1.0"}})
    def unpullable() -> None:
        pass

    @task(executor_config={"KubernetesExecutor": {"node_selector": {"disktype": "floppy"}}})
    def unschedulable() -> None:
        pass

    @task(executor_config={"KubernetesExecutor": {"limit_memory": "600Mi"}})
    def greedy() -> None:
        import time

        hoard = b"x" * (900 * 2**20)
        time.sleep(30)  # the node checks memory a few times a second, not at every allocation
        print(len(hoard))

    # Pending for good (its init container never ends), with no reason Kubernetes calls fatal.
    @task(
        executor_config={
            "pod_override": k8s.V1Pod(
                spec=k8s.V1PodSpec(
                    containers=[k8s.V1Container(name="base")],
                    init_containers=[
                        k8s.V1Container(name="forever", image="busybox", command=["sleep", "3600"])
                    ],
                )
            )
        }
    )
    def stuck() -> None:
        pass

    # A field of the wrong type: it must fail this task, with the field's path, not the scheduler loop.
    @task(executor_config={"pod_override": {"spec": {"containers": 7}}})
    def malformed() -> None:
        pass

    @task(executor_config={"KubernetesExecutor": {"namespace": "e2e-why-side"}})
    def victim() -> None:
        import time

        print("victim is running", flush=True)
        time.sleep(300)

    unpullable()
    unschedulable()
    greedy()
    stuck()
    malformed()
    victim()
