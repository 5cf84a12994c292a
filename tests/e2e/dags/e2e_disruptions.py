"""Tasks on the spot nodes tests/e2e/test_disruptions.py brings up and then disrupts: tainted,
preempted, lost. Each task's first pod runs until the cluster ends it; the new pod of the same try
finishes it, its retries (none) untouched."""

import datetime

from airflow.sdk import DAG, task
from kubernetes.client import models as k8s

ARGS = {"start_date": datetime.datetime(2024, 1, 1), "schedule": None, "catchup": False}

# One task pod fills a spot node (1 CPU): a preemptor then has to take its place. A short grace
# period, since the task ignores SIGTERM (a @task's on_kill does nothing) until SIGKILL.
ON_SPOT = {
    "pod_override": k8s.V1Pod(
        spec=k8s.V1PodSpec(
            node_selector={"pool": "spot"},
            tolerations=[k8s.V1Toleration(key="pool", value="spot", effect="NoSchedule")],
            termination_grace_period_seconds=2,
            containers=[
                k8s.V1Container(name="base", resources=k8s.V1ResourceRequirements(requests={"cpu": "1"}))
            ],
        )
    )
}

for how in ("taint", "preempt", "node"):
    with DAG(f"e2e_disrupt_{how}", default_args={"retries": 0}, **ARGS):

        @task(executor_config=ON_SPOT)
        def work() -> None:
            import pathlib
            import time

            from airflow.sdk import get_current_context

            dag_id = get_current_context()["dag"].dag_id
            # The process nodes run every pod on this machine: both pods see the mark.
            mark = pathlib.Path(__file__).with_name(f"{dag_id}.first-pod-ran")
            first = not mark.exists()
            mark.touch()
            print(f"work is running ({'first' if first else 'a new'} pod)", flush=True)
            time.sleep(600 if first else 1)

        work()
