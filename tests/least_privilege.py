"""Running the executor as deploy/rbac/rbac.yaml says: a minted user bound to exactly the shipped Role.

The end-to-end stacks and the RBAC test use this, so the Role the project ships is the Role the
executor is tested under; test code itself keeps the admin client.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from devcluster import control_plane
from kubernetes import client

from tests.helpers import wait_for

RBAC_YAML = Path(__file__).resolve().parents[1] / "deploy" / "rbac" / "rbac.yaml"
WORKER_YAML = RBAC_YAML.with_name("worker.yaml")
RBAC_GROUP = "rbac.authorization.k8s.io"


def manifest(kind: str, path: Path = RBAC_YAML) -> dict[str, Any]:
    """The one object of `kind` in deploy/rbac/rbac.yaml (or `path`), as a fresh dict."""
    [found] = [doc for doc in yaml.safe_load_all(path.read_text()) if doc and doc["kind"] == kind]
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


def _user_binding(
    kind: str, user: str, namespace: str | None = None, subject: dict[str, str] | None = None
) -> dict[str, Any]:
    binding = manifest(kind)
    # One binding per user: namespaces shared by several stacks collect several.
    binding["metadata"]["name"] = f"{binding['metadata']['name']}-{user}"
    if namespace:
        binding["metadata"]["namespace"] = namespace
    binding["subjects"] = [subject or {"kind": "User", "apiGroup": RBAC_GROUP, "name": user}]
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


def grant_role(
    api_client: client.ApiClient, namespace: str, user: str, subject: dict[str, str] | None = None
) -> None:
    """The shipped Role in `namespace`, bound to `user` (or `subject`); returns once the authorizer applies it."""
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
        _user_binding("RoleBinding", user.rsplit(":", 1)[-1], namespace, subject),
    )
    # The authorizer reads bindings from a cache: wait for it rather than race the scheduler's first list.
    wait_for(lambda: allowed(api_client, user, "watch", "pods", namespace), f"RBAC for {user} in {namespace}")


def grant_workers(api_client: client.ApiClient, namespace: str, service_account: str = "default") -> None:
    """deploy/rbac/worker.yaml's Role in `namespace`, bound to the workers' service account (the
    namespace's default one, which the stacks' worker pods run under): the disruption guard reads
    its own pod with it."""
    rbac = client.RbacAuthorizationV1Api(api_client)
    role, binding = manifest("Role", WORKER_YAML), manifest("RoleBinding", WORKER_YAML)
    binding["subjects"] = [{"kind": "ServiceAccount", "name": service_account, "namespace": namespace}]
    for body, create, replace in (
        (role, rbac.create_namespaced_role, rbac.replace_namespaced_role),
        (binding, rbac.create_namespaced_role_binding, rbac.replace_namespaced_role_binding),
    ):
        body["metadata"]["namespace"] = namespace
        _create_or_replace(
            lambda b, create=create: create(namespace, b),
            lambda name, b, replace=replace: replace(name, namespace, b),
            body,
        )
    user = f"system:serviceaccount:{namespace}:{service_account}"
    wait_for(lambda: allowed(api_client, user, "get", "pods", namespace), f"the workers' RBAC in {namespace}")


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


def grant_service_account(api_client: client.ApiClient, namespace: str, name: str) -> str:
    """ServiceAccount `name` in `namespace` (made if missing), bound to the shipped Role there; its user name."""
    core = client.CoreV1Api(api_client)
    try:
        core.create_namespaced_service_account(namespace, {"metadata": {"name": name}})
    except client.ApiException as exc:
        if exc.status != 409:
            raise
    user = f"system:serviceaccount:{namespace}:{name}"
    grant_role(api_client, namespace, user, {"kind": "ServiceAccount", "name": name, "namespace": namespace})
    return user


def mint_token(api_client: client.ApiClient, namespace: str, name: str, expiration_s: int = 600) -> str:
    """A token of ServiceAccount `name` from the TokenRequest API (valid until it expires or the account goes)."""
    answer = client.CoreV1Api(api_client).create_namespaced_service_account_token(
        name, namespace, {"spec": {"expirationSeconds": expiration_s}}
    )
    token: str = answer.status.token
    return token


def user_kubeconfig(cluster: control_plane.ClusterState, path: Path, user: dict[str, Any]) -> Path:
    """A kubeconfig for the cluster whose user authenticates as `user` says (token, tokenFile, exec)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "devcluster",
                "cluster": {
                    "server": cluster.server,
                    "certificate-authority": str(Path(cluster.directory) / "pki" / "ca.crt"),
                },
            }
        ],
        "users": [{"name": "executor", "user": user}],
        "contexts": [{"name": "executor", "context": {"cluster": "devcluster", "user": "executor"}}],
        "current-context": "executor",
    }
    path.write_text(yaml.safe_dump(config))
    return path
