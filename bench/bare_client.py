"""The ceiling: the launch burst from a bare concurrent client, with no executor around it.

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


def bare_burst(kubeconfig: str, namespace: str, template: dict[str, Any], tasks: int) -> float:
    """The bare client, in a process of its own (as the executor's launcher is): pods per second."""
    cfg = client.Configuration()
    config.load_kube_config(kubeconfig, client_configuration=cfg)
    cfg.connection_pool_maxsize = BARE_THREADS
    core = client.CoreV1Api(client.ApiClient(cfg))

    def create(i: int) -> None:
        pod = json.loads(json.dumps(template))
        pod["metadata"]["name"] = f"bare-{i}"
        read_body(core.create_namespaced_pod(namespace, pod, _preload_content=False))

    started = time.monotonic()
    with ThreadPoolExecutor(BARE_THREADS) as pool:
        list(pool.map(create, range(tasks)))
    return tasks / (time.monotonic() - started)
