"""A cluster with a real node (kubelet, containerd, runc) beside a process node.

One real node a machine, so one such cluster at a time: module-scoped, each module brings its
cluster up and down, and the teardown proves `down` leaves nothing behind.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from devcluster import control_plane, real_node
from kubernetes import client

from tests.conftest import api_client_for, fresh_namespace

REAL_CLUSTER_DIR = Path(
    os.environ.get("K8S_EXECUTOR_REAL_TEST_CLUSTER", str(control_plane.default_cluster_dir("tests-real")))
)
REAL_NODE = "real-1"
PROCESS_NODE = "devnode-1"
NODES = [f"name={PROCESS_NODE},runtime=process", f"name={REAL_NODE},runtime=containerd"]


def on_node(node: str, pod: dict) -> dict:
    """`pod`, pinned to `node` (and tolerating the real node's taint)."""
    spec = pod["spec"]
    spec["nodeName"] = node
    spec.setdefault("tolerations", []).append({"key": real_node.REAL_NODE_TAINT, "operator": "Exists"})
    return pod


@pytest.fixture(scope="module")
def real_cluster() -> Iterator[control_plane.ClusterState]:
    state = control_plane.up(REAL_CLUSTER_DIR, node_args=[f"--node={n}" for n in NODES])
    yield state
    if not os.environ.get("K8S_EXECUTOR_KEEP_CLUSTER"):
        control_plane.down(REAL_CLUSTER_DIR)
        left = real_node.leftovers(real_node.layout(REAL_CLUSTER_DIR, REAL_NODE))
        assert not left, f"cluster down left behind: {left}"


@pytest.fixture(scope="module")
def real_core(real_cluster: control_plane.ClusterState) -> client.CoreV1Api:
    return client.CoreV1Api(api_client_for(real_cluster.kubeconfig))


@pytest.fixture
def real_namespace(real_core: client.CoreV1Api) -> Iterator[str]:
    with fresh_namespace(real_core, "r") as name:
        yield name
