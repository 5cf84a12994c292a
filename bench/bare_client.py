"""The ceiling: the launch burst from a bare concurrent client, with no executor around it.

It creates the pods an executor created (`executor_shaped`): on this machine a burst of the
template alone, 0.4 KB, went 1.2 to 1.8 times as fast as one of the executors' 2.3 KB pods, which
carry the task's command, labels and environment (bench/RESULTS.md, item 15).

A module of its own so that a spawned process can import it (`python -m bench` runs as
`__main__`, which a spawned child cannot find by that name).
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kubernetes import client, config

from k8s_executor.kube_client import read_body

# 16 threads reached only about 210 pods/s where 64 reach 275-315 (bench/RESULTS.md, item 8).
BARE_THREADS = 64


def executor_shaped(template: dict[str, Any], pod: dict[str, Any]) -> dict[str, Any]:
    """The harness's pod template with what an executor added to it in `pod`, one of its pods as the
    API server returns it: labels, annotations (the template's own win), and each container's
    command, args and env. The rest of `pod` the API server filled in (node, defaults, the service
    account's token volume), so this body is what the executor sent for the same task."""
    body: dict[str, Any] = json.loads(json.dumps(template))
    meta, own = pod["metadata"], body.setdefault("metadata", {})
    own["labels"] = {**(meta.get("labels") or {}), **own.get("labels", {})}
    own["annotations"] = {**(meta.get("annotations") or {}), **own.get("annotations", {})}
    added = {c["name"]: c for c in pod["spec"]["containers"]}
    for container in body["spec"]["containers"]:
        for key in ("command", "args", "env"):
            if key in added.get(container["name"], {}):
                container[key] = added[container["name"]][key]
    return body


def bare_burst(
    kubeconfig: str, namespace: str, template: dict[str, Any], tasks: int
) -> tuple[float, float, float]:
    """The bare client, in a process of its own (as the executor's launcher is): pods per second,
    and when its burst began and ended (epoch seconds)."""
    cfg = client.Configuration()
    config.load_kube_config(kubeconfig, client_configuration=cfg)
    cfg.connection_pool_maxsize = BARE_THREADS
    core = client.CoreV1Api(client.ApiClient(cfg))

    def create(i: int) -> None:
        pod = json.loads(json.dumps(template))
        pod["metadata"]["name"] = f"bare-{i}"
        read_body(core.create_namespaced_pod(namespace, pod, _preload_content=False))

    started, began = time.monotonic(), time.time()
    with ThreadPoolExecutor(BARE_THREADS) as pool:
        list(pool.map(create, range(tasks)))
    return tasks / (time.monotonic() - started), began, time.time()
