"""Tasks in real containers on the real node, from the image built from deploy/Dockerfile: the
specification's forms of executor_config, and the endings kubelet and the kernel produce. The
scheduler runs LocalKubernetesExecutor: every task is on the `kubernetes` queue but `local_task`.
Checked by tests/realnode/test_airflow_on_real_node.py."""

import datetime
import os
import time
from pathlib import Path

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, BaseOperator, task
from kubernetes.client import models as k8s

ARGS = {"start_date": datetime.datetime(2024, 1, 1), "schedule": None, "catchup": False}
BUSYBOX = "localhost/busybox:1.35"


def where() -> str:
    return f"pod {os.environ.get('HOSTNAME')} uid {os.getuid()} image-home {os.environ.get('AIRFLOW_HOME')}"


class Killable(BaseOperator):
    """Runs until stopped; `on_kill` leaves a mark beside the logs, where the test reads it."""

    def execute(self, context: object) -> None:
        print("killable running", flush=True)
        for _ in range(600):
            time.sleep(0.5)

    def on_kill(self) -> None:
        print("on_kill ran", flush=True)
        marks = Path(os.environ["AIRFLOW__LOGGING__BASE_LOG_FOLDER"]) / "on_kill"
        marks.write_text(where())


with DAG("real_node", max_active_tasks=10, default_args={"retries": 0, "queue": "kubernetes"}, **ARGS):

    @task(queue="default")
    def local_task() -> None:
        print("local task in", where(), flush=True)

    @task
    def hello() -> None:
        print("hello from", where(), flush=True)

    @task(
        executor_config={
            "KubernetesExecutor": {
                "request_memory": "64Mi",
                "limit_memory": "1Gi",
                "labels": {"team": "data-engineering"},
                "annotations": {"monitoring": "enabled"},
                "env_vars": [{"name": "CUSTOM_VAR", "value": "custom_value"}],
            }
        }
    )
    def dict_form() -> None:
        assert os.environ["CUSTOM_VAR"] == "custom_value", os.environ.get("CUSTOM_VAR")
        print("dict form:", where(), flush=True)

    @task(
        executor_config={
            "pod_override": k8s.V1Pod(
                metadata=k8s.V1ObjectMeta(labels={"overridden": "yes"}),
                spec=k8s.V1PodSpec(
                    containers=[
                        k8s.V1Container(name="base", env=[k8s.V1EnvVar(name="FROM_OVERRIDE", value="1")])
                    ]
                ),
            )
        }
    )
    def override() -> None:
        assert os.environ["FROM_OVERRIDE"] == "1"
        print("pod_override:", where(), flush=True)

    @task(
        executor_config={
            "pod_override": k8s.V1Pod(
                spec=k8s.V1PodSpec(
                    containers=[
                        k8s.V1Container(
                            name="base", resources=k8s.V1ResourceRequirements(limits={"memory": "400Mi"})
                        )
                    ]
                )
            )
        }
    )
    def oom() -> None:
        hog = bytearray(2 * 2**30)
        print("not reached", len(hog))

    @task
    def crash() -> None:
        # The worker itself dies (its supervisor, killed): nothing of Airflow's reports the end,
        # the container's exit code and last words are all there is.
        import signal

        print("the worker is going down", flush=True)
        time.sleep(3)  # for the supervisor to pass the line on to the container's log
        os.kill(os.getppid(), signal.SIGKILL)
        time.sleep(60)

    @task(executor_config={"KubernetesExecutor": {"image": "example.invalid/does-not-exist:1"}})
    def bad_image() -> None:
        print("not reached")

    @task(
        executor_config={
            "pod_override": k8s.V1Pod(
                spec=k8s.V1PodSpec(
                    containers=[k8s.V1Container(name="base")],
                    init_containers=[
                        k8s.V1Container(
                            name="fetch",
                            image=BUSYBOX,
                            image_pull_policy="IfNotPresent",
                            command=["sh", "-c", "echo cannot fetch the input; exit 7"],
                        )
                    ],
                )
            )
        }
    )
    def init_fails() -> None:
        print("not reached")

    # Its first pod is evicted while it runs; the new pod of the same try finishes it. A Bash task,
    # whose on_kill would fail it if SIGTERM reached it: the disruption guard keeps the signal back.
    # The mark lies beside the logs, which every pod of the node mounts.
    BashOperator(
        task_id="evicted",
        bash_command=(
            'mark="$AIRFLOW__LOGGING__BASE_LOG_FOLDER/evicted.first-pod-ran"; '
            'if [ -e "$mark" ]; then echo "evicted running in a new pod: $HOSTNAME"; sleep 1; '
            'else touch "$mark"; echo "evicted running in its first pod: $HOSTNAME"; sleep 600; fi'
        ),
    )

    local_task()
    hello()
    dict_form()
    override()
    oom()
    crash()
    bad_image()
    init_fails()
    Killable(task_id="killable")
