"""A pod that fails before its task starts gets a new pod, without spending the task's retries
(pod_launch_failure_retries); a task that started is never launched again this way.

The node agent fails the image pull of the try's first pod only (a rule on its name in its
pull-failures file, read at every pull, as a registry outage that ends between two launches).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from devcluster import control_plane
from devcluster.node_agent import PULL_FAILURES_FILE
from kubernetes import client

from k8s_executor import identity
from tests.e2e.conftest import airflow_stack
from tests.helpers import audit_entries, pods_created

pytestmark = pytest.mark.e2e

DAG = """
import datetime

from airflow.sdk import DAG, task

with DAG("e2e_relaunch", start_date=datetime.datetime(2024, 1, 1), schedule=None, catchup=False):

    @task(retries=0)
    def pulled_late() -> str:
        return "ran"

    pulled_late()
"""


@pytest.fixture
def first_pull_fails(cluster: control_plane.ClusterState) -> Iterator[Path]:
    rules = Path(cluster.directory) / "node-agent" / PULL_FAILURES_FILE
    yield rules
    rules.unlink(missing_ok=True)


@pytest.mark.parametrize("retries", [1, 0])
def test_a_pod_that_could_not_pull_its_image_is_launched_again_on_the_same_try(
    cluster: control_plane.ClusterState, core: client.CoreV1Api, first_pull_fails: Path, retries: int
) -> None:
    run = f"relaunch-{retries}"
    first = identity.pod_name(identity.TaskRef("e2e_relaunch", "pulled_late", run, 1))
    first_pull_fails.write_text(f"^{first}$ .*\n")
    with airflow_stack(
        cluster, core, AIRFLOW__KUBERNETES_EXECUTOR__POD_LAUNCH_FAILURE_RETRIES=str(retries)
    ) as stack:
        (stack.dags_folder / "e2e_relaunch.py").write_text(DAG)
        stack.wait_for_dag("e2e_relaunch")
        stack.trigger("e2e_relaunch", run)
        outcome = stack.wait_for_run("e2e_relaunch", run, timeout=300)
        created = pods_created(audit_entries(core, control_plane.audit_log(cluster), stack.namespace))
        log = stack.task_log("e2e_relaunch", run, "pulled_late")
        if retries:
            assert outcome == "success", log
            # Try 1 throughout: the task's own retries (none) were not needed.
            assert stack.task_states("e2e_relaunch", run) == {("pulled_late", -1): ("success", 1)}
            assert created == [first, f"{first}r1"]
            # The failed launch's reason stays in the task's log.
            assert "failed before its task started" in log and "ErrImagePull" in log, log
        else:
            assert outcome == "failed"
            assert created == [first]
            assert "container 'base' is ErrImagePull" in stack.failure_reasons(
                "e2e_relaunch", run, "pulled_late"
            )
            assert "failed before its task started" not in log
