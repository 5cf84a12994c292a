"""deploy/rbac/rbac.yaml against the real API server: enough for every call the executor makes, and no more."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import TypeVar

import pytest
from devcluster import control_plane
from kubernetes import client

from k8s_executor import adoption, identity
from k8s_executor.kube_client import list_seen, read_json, read_pod
from k8s_executor.launching import Launcher
from k8s_executor.pod_building import PodDefaults, PodRequest, build_pod
from k8s_executor.shapes import DeleteResult, LauncherResult, LaunchResult
from tests.conftest import api_client_for
from tests.helpers import wait_for, wait_for_pod_phase
from tests.least_privilege import allowed, executor_kubeconfig, grant_cluster_role, granted, manifest

pytestmark = pytest.mark.cluster

# (api group, resource, verb) of every request the executor sends, read from its code: creates, deletes
# and label patches in launching.py; list and watch in watching.py and adoption.py (one pod is read
# by a list with a field selector, kube_client.read_pod: never `get`); the log and events of
# a pod in executor.get_task_log; events of a failed pod in watching.py. `get`/`watch` on events are
# granted for tools that follow one pod's events.
EXECUTOR_NEEDS = {
    ("", "pods", "create"),
    ("", "pods", "list"),
    ("", "pods", "watch"),
    ("", "pods", "patch"),
    ("", "pods", "delete"),
    ("", "pods/log", "get"),
    ("", "events", "get"),
    ("", "events", "list"),
    ("", "events", "watch"),
}

# What an identity that launches pods could be abused for, and the executor never does.
NOT_NEEDED = [
    ("", "secrets", "get"),
    ("", "secrets", "list"),
    ("", "configmaps", "list"),
    ("", "serviceaccounts/token", "create"),
    ("", "pods/exec", "create"),
    ("", "pods/attach", "create"),
    ("", "pods/portforward", "create"),
    ("", "pods/eviction", "create"),
    ("", "pods/status", "patch"),
    ("", "pods", "get"),
    ("", "pods", "update"),
    ("", "pods", "deletecollection"),
    ("", "events", "create"),
    ("", "namespaces", "create"),
    ("apps", "deployments", "create"),
    ("batch", "jobs", "create"),
    ("rbac.authorization.k8s.io", "rolebindings", "create"),
]


def split(resource: str) -> tuple[str, str]:
    name, _, sub = resource.partition("/")
    return name, sub


@pytest.fixture
def executor_user(
    cluster: control_plane.ClusterState, api_client: client.ApiClient, namespace: str
) -> tuple[str, client.ApiClient]:
    user = f"executor-{namespace}"
    kubeconfig = executor_kubeconfig(cluster, api_client, user, [namespace])
    return user, api_client_for(kubeconfig)


@pytest.fixture
def cluster_user(api_client: client.ApiClient) -> Iterator[str]:
    user = f"executor-all-{uuid.uuid4().hex[:8]}"
    binding = grant_cluster_role(api_client, user)
    yield user
    rbac = client.RbacAuthorizationV1Api(api_client)
    rbac.delete_cluster_role_binding(binding)
    rbac.delete_cluster_role(manifest("ClusterRole")["metadata"]["name"])


def test_role_and_cluster_role_grant_exactly_what_the_executor_uses() -> None:
    assert granted(manifest("Role")["rules"]) == EXECUTOR_NEEDS
    assert granted(manifest("ClusterRole")["rules"]) == granted(manifest("Role")["rules"])
    for binding, role in (("RoleBinding", "Role"), ("ClusterRoleBinding", "ClusterRole")):
        assert manifest(binding)["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": role,
            "name": manifest(role)["metadata"]["name"],
        }


def test_the_api_server_allows_every_executor_call_and_nothing_else(
    executor_user: tuple[str, client.ApiClient], namespace: str, api_client: client.ApiClient
) -> None:
    user, own_client = executor_user
    own = client.AuthorizationV1Api(own_client)

    def self_review(group: str, resource: str, verb: str, ns: str) -> bool:
        name, sub = split(resource)
        attributes = {"group": group, "resource": name, "subresource": sub, "verb": verb, "namespace": ns}
        review = own.create_self_subject_access_review({"spec": {"resourceAttributes": attributes}})
        return bool(review.status.allowed)

    for group, resource, verb in sorted(EXECUTOR_NEEDS):
        assert self_review(group, resource, verb, namespace), f"{verb} {resource} is needed and denied"
        # Only in the namespaces it is bound in: another namespace and the cluster scope stay closed.
        assert not self_review(group, resource, verb, "default"), f"{verb} {resource} allowed in default"
        assert not self_review(group, resource, verb, ""), f"{verb} {resource} allowed cluster-wide"
    for group, resource, verb in NOT_NEEDED:
        assert not self_review(group, resource, verb, namespace), f"{verb} {group}/{resource} is allowed"
    # An administrator asking about the user (SubjectAccessReview) gets the same answers.
    for group, resource, verb in [*EXECUTOR_NEEDS, *NOT_NEEDED]:
        name, sub = split(resource)
        expected = (group, resource, verb) in EXECUTOR_NEEDS
        assert allowed(api_client, user, verb, name, namespace, group, sub) is expected, (verb, resource)


R = TypeVar("R", bound=LauncherResult)


def next_result(launcher: Launcher, kind: type[R]) -> R:
    """The launcher's next answer of `kind` (answers of other kinds before it are passed over)."""
    while True:
        result = launcher.results.get(timeout=30)
        if isinstance(result, kind):
            return result


def test_the_executor_does_its_work_as_the_bound_user(
    executor_user: tuple[str, client.ApiClient], namespace: str, core: client.CoreV1Api
) -> None:
    _, own_client = executor_user
    api = client.CoreV1Api(own_client)
    ref = identity.TaskRef("rbac", "task", "run")
    request = PodRequest(ref=ref, command=["sh", "-c", "echo hello"], scheduler_id="old", airflow_version="3")
    pod = build_pod(request, PodDefaults(namespace, None, None, "busybox"))
    launcher = Launcher(api, concurrency=2, qps=50, burst=10, max_retries=0)
    try:
        launcher.create(pod, time.monotonic() + 60)
        result: LaunchResult = launcher.results.get(timeout=30)
        assert result.ok, result.error
        name = pod["metadata"]["name"]
        wait_for_pod_phase(core, namespace, name, ("Succeeded",))
        # Adoption's list, as a new scheduler makes it, then the patch that marks a kept pod done.
        sightings = list_seen(api, [namespace], identity.selector(identity.DEFAULT_EXECUTOR))
        [orphan] = adoption.select_orphans(sightings, [ref], ["old"])
        assert orphan.name == name
        [orphan_seen] = sightings
        assert orphan_seen.resource_version
        launcher.patch_labels(namespace, name, {identity.DONE_LABEL: "True"}, stop=True)
        wait_for(
            lambda: (
                core.read_namespaced_pod(name, namespace).metadata.labels.get(identity.DONE_LABEL) == "True"
            ),
            "the done-label patch",
        )
        # Marking a kept pod done also stops what still runs in it: a patch of its spec.
        assert core.read_namespaced_pod(name, namespace).spec.active_deadline_seconds == 1
        # One pod as it is now, as the watcher reads a pod that left its watch.
        found = read_pod(api, namespace, name)
        assert found is not None and found["metadata"]["name"] == name
        assert read_pod(api, namespace, "no-such-pod") is None
        log = api.read_namespaced_pod_log(name, namespace, container="base", _preload_content=False)
        assert b"hello" in log.data
        events = api.list_namespaced_event(
            namespace, field_selector=f"involvedObject.name={name}", _preload_content=False
        )
        assert read_json(events)["items"]
        # A delete on the word of a sighting older than the pod (relabelled since) is refused.
        launcher.delete(namespace, name, orphan_seen.resource_version)
        refused_delete = next_result(launcher, DeleteResult)
        assert refused_delete.status == 409
        assert core.read_namespaced_pod(name, namespace).metadata.name == name
        launcher.delete(namespace, name)
        wait_for(lambda: not core.list_namespaced_pod(namespace).items, "the pod to be deleted")
    finally:
        launcher.shutdown(wait=True)
    with pytest.raises(client.ApiException) as refused:
        api.list_namespaced_secret(namespace)
    assert refused.value.status == 403


def test_cluster_role_allows_the_all_namespaces_watch(
    cluster_user: str, api_client: client.ApiClient, namespace: str
) -> None:
    for group, resource, verb in sorted(EXECUTOR_NEEDS):
        name, sub = split(resource)
        assert allowed(api_client, cluster_user, verb, name, namespace, group, sub)
    # multi_namespace_mode with no list: one list and watch of pods over all namespaces.
    assert allowed(api_client, cluster_user, "list", "pods")
    assert allowed(api_client, cluster_user, "watch", "pods")
    for group, resource, verb in NOT_NEEDED:
        name, sub = split(resource)
        assert not allowed(api_client, cluster_user, verb, name, namespace, group, sub), (
            f"{verb} {group}/{resource} is allowed"
        )
