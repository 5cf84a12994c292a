"""The demo: the development cluster, a real Airflow with this executor, one DAG run.

Prints each task with its pod, the node it ran on and its final state. Pods are
kept (marked done) so they can be shown; `k8s-executor cluster down` ends it all.
"""

from __future__ import annotations

import shutil
import time
import uuid
from typing import NamedTuple

from kubernetes import client, config

from devcluster import REPOSITORY, control_plane, image
from devcluster import real_node as real_node_module
from devcluster.airflow_stack import AirflowStack
from devcluster.in_cluster import InClusterAirflow, wait_for_rollout
from k8s_executor import identity

DEMO_DAG = REPOSITORY / "examples" / "dags" / "k8s_executor_demo.py"
DEMO_DAG_ID = "k8s_executor_demo"
NAMESPACE = "airflow-demo"


# `--real-node`: a cluster of its own, with a real node beside a process node (docs/real-node.md).
REAL_NODES = [
    "--node=name=devnode-1,runtime=process,label.disktype=ssd",
    "--node=name=real-1,runtime=containerd",
]


def run_demo(in_cluster: bool = False, real_node: bool = False) -> int:
    started = time.monotonic()
    directory = control_plane.default_cluster_dir("real" if real_node else "default")
    state = control_plane.up(directory, node_args=REAL_NODES if real_node else None)
    print(f"cluster ready at {state.server} ({time.monotonic() - started:.1f}s)", flush=True)
    cfg = client.Configuration()
    config.load_kube_config(str(state.kubeconfig), client_configuration=cfg)
    core = client.CoreV1Api(client.ApiClient(cfg))
    worker_image = ""
    if real_node:
        _, project = image.build_images(say=print)
        image.import_into_containerd(
            project.archive, str(real_node_module.layout(directory, "real-1").socket)
        )
        worker_image = project.name
        print(f"image {worker_image} on node real-1 ({time.monotonic() - started:.1f}s)", flush=True)
    home = directory / ("airflow-in-cluster" if in_cluster else "airflow")
    shutil.rmtree(home, ignore_errors=True)
    # Pods are kept (marked done) so that the table below can show them.
    keep_pods = {"AIRFLOW__KUBERNETES_EXECUTOR__DELETE_WORKER_PODS": "False"}
    stack: AirflowStack
    if in_cluster:
        # deploy/in-cluster/ applied with an overlay for this machine; it makes its namespace.
        stack = InClusterAirflow(
            home=home, cluster=state, namespace=f"{NAMESPACE}-in-cluster", extra_env=keep_pods
        )
    else:
        try:
            core.create_namespace({"metadata": {"name": NAMESPACE}})
        except client.ApiException as exc:
            if exc.status != 409:
                raise
        stack = AirflowStack(
            home=home,
            cluster=state,
            namespace=NAMESPACE,
            extra_env=keep_pods,
            worker_image=worker_image,
        )
    namespace = stack.namespace
    try:
        stack.prepare()
        if worker_image:
            stack.expose_api_to_pods(core)
        shutil.copy(DEMO_DAG, stack.dags_folder)
        stack.start()
        if isinstance(stack, InClusterAirflow):
            wait_for_rollout(stack)
            [scheduler] = core.list_namespaced_pod(namespace, label_selector="component=scheduler").items
            print(
                f"scheduler pod {namespace}/{scheduler.metadata.name} on {scheduler.spec.node_name}, "
                f"service account {scheduler.spec.service_account_name}",
                flush=True,
            )
        print(
            f"Airflow up at http://127.0.0.1:{stack.api_port} ({time.monotonic() - started:.1f}s)", flush=True
        )
        run_id, outcome, rows = run_once(core, stack)
        print(f"\n{format_table(rows)}")
        print(f"\nDAG run {run_id}: {outcome} in {time.monotonic() - started:.1f}s")
        if not in_cluster:
            print(f"export KUBECONFIG={state.kubeconfig}; kubectl -n {namespace} get pods")
        return 0 if outcome == "success" else 1
    finally:
        stack.stop()


class TaskRow(NamedTuple):
    """One line of the demo's table: a task, its pod, the node it ran on ("-" for none)."""

    task: str
    pod: str
    node: str
    phase: str
    state: str | None


def run_once(core: client.CoreV1Api, stack: AirflowStack) -> tuple[str, str, list[TaskRow]]:
    """One run of the demo DAG, waited for: its run id, its outcome and its table."""
    stack.wait_for_dag(DEMO_DAG_ID)
    run_id = f"demo-{uuid.uuid4().hex[:6]}"
    stack.trigger(DEMO_DAG_ID, run_id)
    outcome = stack.wait_for_run(DEMO_DAG_ID, run_id)
    return run_id, outcome, task_table(core, stack, run_id)


def task_table(core: client.CoreV1Api, stack: AirflowStack, run_id: str) -> list[TaskRow]:
    """Each task of the run with the executor's pod that ran it and that pod's node."""
    pods = core.list_namespaced_pod(
        stack.namespace,
        label_selector=f"{identity.executor_pods_selector()},run_id={identity.safe_label_value(run_id)}",
    ).items
    by_task = {
        (p.metadata.annotations["task_id"], int(p.metadata.annotations.get("map_index", -1))): p for p in pods
    }
    rows = []
    for (task_id, map_index), (task_state, _) in sorted(stack.task_states(DEMO_DAG_ID, run_id).items()):
        pod = by_task.get((task_id, map_index))
        rows.append(
            TaskRow(
                task=task_id if map_index < 0 else f"{task_id}[{map_index}]",
                pod=pod.metadata.name if pod else "-",
                node=(pod.spec.node_name if pod else None) or "-",
                phase=(pod.status.phase if pod else None) or "-",
                state=task_state,
            )
        )
    return rows


def format_table(rows: list[TaskRow]) -> str:
    lines = [f"{'task':<22} {'pod':<48} {'node':<10} {'pod phase':<10} task state"]
    lines += [f"{r.task:<22} {r.pod:<48} {r.node:<10} {r.phase:<10} {r.state}" for r in rows]
    return "\n".join(lines)
