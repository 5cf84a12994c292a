"""What a pod's shape costs the cluster: the bare client's burst of the executor's pods, built by
the executor's own pod building with the disruption guard from the image (the default), with it
inline (`disruption_guard_source = inline`) and without it, and of the template alone, each
followed by the cluster's CPU per pod.

    python -m bench.pod_shapes --pods 2000 --rounds 2

On the development cluster `bench` (started if it is not running), simulated node. The cluster's
CPU is counted from a burst's start to 3 s after its end (the node's starts of the last pods), so
it is higher than in `python -m bench`'s launch windows; compare the shapes with each other.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from devcluster import control_plane
from devcluster.node_agent import simulated_pod_template
from kubernetes import client, config

from bench.bare_client import bare_burst
from bench.measure import MachineCpu
from k8s_executor.identity import TaskRef
from k8s_executor.pod_building import PodDefaults, PodRequest, build_pod

# An Airflow 3 workload as the scheduler hands it over is about 1 KB, its token most of it.
WORKLOAD = json.dumps({"token": "t" * 600, "ti": {"id": "0" * 36, "dag_id": "bench", "task_id": "unit"}})


def shapes(template_file: Path, namespace: str) -> dict[str, dict[str, Any]]:
    request = PodRequest(
        ref=TaskRef("bench", "unit", "bench-1", 1, 0),
        command=["python", "-m", "airflow.sdk.execution_time.execute_workload", "--json-string", WORKLOAD],
        scheduler_id="1",
        airflow_version="3.3.2",
    )
    defaults = PodDefaults(
        namespace=namespace,
        pod_template_file=str(template_file),
        worker_image=None,
        fallback_image="simulated",
        disruption_guard=True,
        disruption_retries=3,
    )
    inline = dataclasses.replace(defaults, disruption_guard_source="inline")
    unguarded = dataclasses.replace(defaults, disruption_guard=False)
    return {
        "the executor's (guard from image)": build_pod(request, defaults),
        "the executor's, guard inline": build_pod(request, inline),
        "the executor's, no guard": build_pod(request, unguarded),
        "the template alone": json.loads(template_file.read_text()),
    }


def burst(
    core: client.CoreV1Api, kubeconfig: str, machine: MachineCpu, body: dict[str, Any], pods: int
) -> str:
    namespace = f"shape-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": namespace}})
    while not core.list_namespaced_service_account(namespace).items:
        time.sleep(0.1)
    rate, began, _ = bare_burst(kubeconfig, namespace, body, pods)
    time.sleep(3)
    cluster = machine.between(began, time.time()).get("cluster", 0.0)
    core.delete_namespace(namespace)
    while True:
        try:
            core.read_namespace(namespace)
        except client.ApiException:
            break
        time.sleep(1)
    return f"{rate:7.1f} pods/s   the cluster {cluster / pods * 1000:6.2f} ms of CPU per pod"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    state = control_plane.up(control_plane.default_cluster_dir("bench"))
    cfg = client.Configuration()
    config.load_kube_config(str(state.kubeconfig), client_configuration=cfg)
    core = client.CoreV1Api(client.ApiClient(cfg))
    scratch = Path(tempfile.mkdtemp(prefix="k8s-executor-bench-shapes-"))
    template_file = scratch / "template.json"
    # Never finished: the pods run until their namespace goes.
    template_file.write_text(json.dumps(simulated_pod_template(scratch / "never")))
    machine = MachineCpu()
    built = shapes(template_file, "placeholder")
    for name, body in built.items():
        print(f"{name:<36}{len(json.dumps(body)):>6} bytes")
    for round_ in range(args.rounds):
        for name, body in built.items():
            body = json.loads(json.dumps(body))
            body["metadata"].pop("namespace", None)
            result = burst(core, str(state.kubeconfig), machine, body, args.pods)
            print(f"round {round_} {name:<36}{result}", flush=True)


if __name__ == "__main__":
    main()
