"""Running the executor as deploy/rbac.yaml says: a minted user bound to exactly the shipped Role.

The end-to-end stacks and the RBAC test use this, so the Role the project ships is the Role the
executor is tested under; test code itself keeps the admin client.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from devcluster import control_plane
from tests.helpers import wait_for

RBAC_YAML = Path(__file__).resolve().parents[1] / "deploy" / "rbac.yaml"
RBAC_GROUP = "rbac.authorization.k8s.io"


def manifest(kind: str) -> dict[str, Any]:
    """The one object of `kind` in deploy/rbac.yaml, as a fresh dict."""
    [found] = [doc for doc in yaml.safe_load_all(RBAC_YAML.read_text()) if doc and doc["kind"] == kind]
    return copy.deepcopy(found)


def granted(rules: Iterable[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """Every (api group, resource, verb) the rules allow."""
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def _create_or_replace(create: Any, replace: Any, body: dict[str, Any]) -> None:
    try:
        create(body)
    except client.ApiException as exc:
        if exc.status != 409:
            raise
        replace(body["metadata"]["name"], body)


def _user_binding(kind: str, user: str, namespace: str | None = None) -> dict[str, Any]:
    binding = manifest(kind)
    # One binding per user: namespaces shared by several stacks collect several.
    binding["metadata"]["name"] = f"{binding['metadata']['name']}-{user}"
    if namespace:
        binding["metadata"]["namespace"] = namespace
    binding["subjects"] = [{"kind": "User", "apiGroup": RBAC_GROUP, "name": user}]
    return binding


def allowed(
    api_client: client.ApiClient,
    user: str,
    verb: str,
    resource: str,
    namespace: str = "",
    group: str = "",
    subresource: str = "",
) -> bool:
    """The API server's own authorization decision for `user` (a SubjectAccessReview)."""
    review = client.AuthorizationV1Api(api_client).create_subject_access_review(
        {
            "spec": {
                "user": user,
                "groups": ["system:authenticated"],
                "resourceAttributes": {
                    "verb": verb,
                    "resource": resource,
                    "subresource": subresource,
                    "group": group,
                    "namespace": namespace,
                },
            }
        }
    )
    return bool(review.status.allowed)


def grant_role(api_client: client.ApiClient, namespace: str, user: str) -> None:
    """The shipped Role in `namespace`, bound to `user`; returns once the authorizer applies it."""
    rbac = client.RbacAuthorizationV1Api(api_client)
    role = manifest("Role")
    role["metadata"]["namespace"] = namespace
    _create_or_replace(
        lambda body: rbac.create_namespaced_role(namespace, body),
        lambda name, body: rbac.replace_namespaced_role(name, namespace, body),
        role,
    )
    _create_or_replace(
        lambda body: rbac.create_namespaced_role_binding(namespace, body),
        lambda name, body: rbac.replace_namespaced_role_binding(name, namespace, body),
        _user_binding("RoleBinding", user, namespace),
    )
    # The authorizer reads bindings from a cache: wait for it rather than race the scheduler's first list.
    wait_for(lambda: allowed(api_client, user, "watch", "pods", namespace), f"RBAC for {user} in {namespace}")


def grant_cluster_role(api_client: client.ApiClient, user: str) -> str:
    """The shipped ClusterRole bound to `user`; returns the binding's name (the caller deletes it)."""
    rbac = client.RbacAuthorizationV1Api(api_client)
    _create_or_replace(rbac.create_cluster_role, rbac.replace_cluster_role, manifest("ClusterRole"))
    binding = _user_binding("ClusterRoleBinding", user)
    _create_or_replace(rbac.create_cluster_role_binding, rbac.replace_cluster_role_binding, binding)
    wait_for(lambda: allowed(api_client, user, "watch", "pods"), f"cluster-wide RBAC for {user}")
    name: str = binding["metadata"]["name"]
    return name


def executor_kubeconfig(
    cluster: control_plane.ClusterState, api_client: client.ApiClient, user: str, namespaces: Iterable[str]
) -> Path:
    """A kubeconfig for `user`, who may do in `namespaces` what the shipped Role allows, and nothing else."""
    kubeconfig = control_plane.mint_identity(Path(cluster.directory), user)
    for namespace in namespaces:
        grant_role(api_client, namespace, user)
    return kubeconfig
