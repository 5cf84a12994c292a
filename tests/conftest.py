"""Fixtures shared by every test that needs the development cluster.

One cluster per test session (started if none runs in the directory), a fresh
namespace per test. `.ci/run` builds the binaries first, so starting here is a
warm start of a few seconds.
"""

from __future__ import annotations

import contextlib
import os
import queue
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from devcluster import control_plane
from kubernetes import client, config

from k8s_executor.kube_client import core_api
from k8s_executor.scheduler import AirflowKubernetesScheduler
from k8s_executor.settings import ExecutorSettings
from tests.helpers import wait_for

CLUSTER_DIR = Path(
    os.environ.get("K8S_EXECUTOR_TEST_CLUSTER", str(control_plane.default_cluster_dir("tests")))
)


@pytest.fixture(scope="session")
def cluster() -> Iterator[control_plane.ClusterState]:
    # Pods' tokens really expire (after an hour, the API server's shortest maximum).
    state = control_plane.up(CLUSTER_DIR, token_max_expiration_s=3600)
    yield state
    if not os.environ.get("K8S_EXECUTOR_KEEP_CLUSTER"):
        control_plane.down(CLUSTER_DIR)


def api_client_for(kubeconfig: Path) -> client.ApiClient:
    cfg = client.Configuration()
    config.load_kube_config(str(kubeconfig), client_configuration=cfg)
    return client.ApiClient(cfg)


@pytest.fixture(scope="session")
def api_client(cluster: control_plane.ClusterState) -> client.ApiClient:
    return api_client_for(cluster.kubeconfig)


@pytest.fixture(scope="session")
def core(api_client: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api_client)


@contextlib.contextmanager
def fresh_namespace(core: client.CoreV1Api, prefix: str) -> Iterator[str]:
    """A new namespace, once pods can be made in it; deleted after."""
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    core.create_namespace({"metadata": {"name": name}})
    # Pods are refused until the service-account controller has made `default`, as in any cluster.
    # After a test restarts the API server, the controller manager's informers back off before
    # they watch again (seen: up to a minute), so the wait is generous.
    wait_for(
        lambda: core.list_namespaced_service_account(name).items,
        f"default service account in {name}",
        timeout=180,
    )
    yield name
    core.delete_namespace(name)


@pytest.fixture
def namespace(core: client.CoreV1Api) -> Iterator[str]:
    with fresh_namespace(core, "t") as name:
        yield name


def admin_settings(cluster: control_plane.ClusterState, **values: object) -> ExecutorSettings:
    """Settings that reach `cluster` with its admin kubeconfig."""
    return ExecutorSettings.model_validate(
        {"in_cluster": False, "config_file": str(cluster.kubeconfig), **values}
    )


@pytest.fixture
def scheduler(cluster: control_plane.ClusterState, namespace: str) -> Iterator[AirflowKubernetesScheduler]:
    """The executor's pod keeper for `namespace` with the default settings; watchers not started."""
    settings = admin_settings(cluster, namespace=namespace)
    keeper = AirflowKubernetesScheduler(settings, None, queue.Queue(), core_api(settings), "t1")
    yield keeper
    keeper.terminate()
