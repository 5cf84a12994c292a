"""A task's `executor_config`, validated and turned into pod overrides.

Two forms are accepted, and may be combined:
- `{"pod_override": V1Pod, "pod_template_file": "/path.yaml"}`, as the official provider takes;
- `{"KubernetesExecutor": {"image": ..., "request_memory": ..., ...}}`, the dict form of the
  specification, which the official provider refuses;
- `{"cluster": "gpu"}`: the cluster of `[kubernetes_executor] clusters` the task runs in.
Unknown keys and wrong types are refused with a message that names them; the
error fails that one task, never the scheduler.
"""

from __future__ import annotations

from typing import Any, Literal

from kubernetes.client import ApiClient
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from k8s_executor import identity, pod_shape
from k8s_executor.settings import validation_problems

DICT_FORM_KEY = "KubernetesExecutor"
TOP_LEVEL_KEYS = ("pod_override", "pod_template_file", DICT_FORM_KEY, "cluster")

_serializer = ApiClient()


class ExecutorConfigError(ValueError):
    """The executor_config of a task cannot be used."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SecretSpec(_Strict):
    deploy_type: Literal["env", "volume"]
    deploy_target: str | None = None
    secret: str
    key: str | None = None
    items: list[dict[str, Any]] | None = None


def _quantity(value: Any) -> Any:
    if value is not None and (problem := pod_shape.quantity_problem(value)) is not None:
        raise ValueError(problem)
    return value


class ResourcesSpec(_Strict):
    requests: dict[str, str | int | float] = Field(default_factory=dict)
    limits: dict[str, str | int | float] = Field(default_factory=dict)

    @field_validator("requests", "limits")
    @classmethod
    def _quantities(cls, values: dict[str, str | int | float]) -> dict[str, str | int | float]:
        for name, value in values.items():
            if (problem := pod_shape.quantity_problem(value)) is not None:
                raise ValueError(f"{name}: {problem}")
        return values


class KubernetesExecutorConfig(_Strict):
    """The dict form, one field per key a user may write."""

    namespace: str | None = None
    image: str | None = None
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    image_pull_secrets: list[str] | str | None = None
    service_account_name: str | None = None
    request_memory: str | None = None
    request_cpu: str | int | float | None = None
    request_ephemeral_storage: str | None = None
    limit_memory: str | None = None
    limit_cpu: str | int | float | None = None
    limit_ephemeral_storage: str | None = None
    limit_gpu: str | int | None = None
    resources: ResourcesSpec | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    env_vars: list[dict[str, Any]] | dict[str, str] | None = None
    secrets: list[SecretSpec] | None = None
    volumes: list[dict[str, Any]] | None = None
    volume_mounts: list[dict[str, Any]] | None = None
    node_selector: dict[str, str] | None = None
    affinity: dict[str, Any] | None = None
    tolerations: list[dict[str, Any]] | None = None
    security_context: dict[str, Any] | None = None
    priority_class_name: str | None = None
    scheduler_name: str | None = None
    termination_grace_period_seconds: int | None = None
    host_network: bool | None = None
    # Not part of the pod: how often this task's pods may be disrupted by the cluster and launched
    # again without spending its retries ([kubernetes_executor] disruption_retries).
    disruption_retries: int | None = Field(None, ge=0)

    # A size that does not parse is named here, by the key the task wrote, not by the API server's
    # decoder ("quantities must match the regular expression ...", without saying which).
    _quantities = field_validator(
        "request_memory",
        "request_cpu",
        "request_ephemeral_storage",
        "limit_memory",
        "limit_cpu",
        "limit_ephemeral_storage",
        "limit_gpu",
    )(_quantity)

    @field_validator("volumes", "volume_mounts")
    @classmethod
    def _named(cls, items: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        for item in items or []:
            if not item.get("name"):
                raise ValueError("every entry needs a 'name'")
        return items

    @field_validator("env_vars")
    @classmethod
    def _env(cls, value: list[dict[str, Any]] | dict[str, str] | None) -> list[dict[str, Any]] | None:
        if isinstance(value, dict):
            return [{"name": k, "value": str(v)} for k, v in value.items()]
        for item in value or []:
            if not item.get("name"):
                raise ValueError("every entry needs a 'name'")
        return value

    def to_pod(self) -> dict[str, Any]:
        """The override this form stands for, as pod JSON with the worker container named `base`."""
        container: dict[str, Any] = {"name": identity.BASE_CONTAINER}
        spec: dict[str, Any] = {"containers": [container]}
        metadata: dict[str, Any] = {}
        if self.image:
            container["image"] = self.image
        if self.image_pull_policy:
            container["imagePullPolicy"] = self.image_pull_policy
        resources: dict[str, dict[str, str]] = {"requests": {}, "limits": {}}
        for kind, field_name, resource in (
            ("requests", "request_memory", "memory"),
            ("requests", "request_cpu", "cpu"),
            ("requests", "request_ephemeral_storage", "ephemeral-storage"),
            ("limits", "limit_memory", "memory"),
            ("limits", "limit_cpu", "cpu"),
            ("limits", "limit_ephemeral_storage", "ephemeral-storage"),
            ("limits", "limit_gpu", "nvidia.com/gpu"),
        ):
            value = getattr(self, field_name)
            if value is not None:
                resources[kind][resource] = str(value)
        if self.resources:
            resources["requests"].update({k: str(v) for k, v in self.resources.requests.items()})
            resources["limits"].update({k: str(v) for k, v in self.resources.limits.items()})
        resources = {k: v for k, v in resources.items() if v}
        if resources:
            container["resources"] = resources
        env = list(self.env_vars or [])
        mounts = list(self.volume_mounts or [])
        volumes = list(self.volumes or [])
        env_from = []
        for secret in self.secrets or []:
            if secret.deploy_type == "env" and secret.key:
                target = secret.deploy_target or secret.key
                env.append(
                    {
                        "name": target,
                        "valueFrom": {"secretKeyRef": {"name": secret.secret, "key": secret.key}},
                    }
                )
            elif secret.deploy_type == "env":
                env_from.append({"secretRef": {"name": secret.secret}})
            else:
                if not secret.deploy_target:
                    raise ExecutorConfigError(
                        f"executor_config[{DICT_FORM_KEY!r}]: secrets: a volume secret needs deploy_target "
                        f"(the mount path) for {secret.secret!r}"
                    )
                volume_name = f"secretvol-{secret.secret}"[:63]
                source: dict[str, Any] = {"secretName": secret.secret}
                if secret.items:
                    source["items"] = secret.items
                volumes.append({"name": volume_name, "secret": source})
                mounts.append({"name": volume_name, "mountPath": secret.deploy_target, "readOnly": True})
        if env:
            container["env"] = env
        if env_from:
            container["envFrom"] = env_from
        if mounts:
            container["volumeMounts"] = mounts
        if volumes:
            spec["volumes"] = volumes
        for field_name, key in (
            ("node_selector", "nodeSelector"),
            ("affinity", "affinity"),
            ("tolerations", "tolerations"),
            ("security_context", "securityContext"),
            ("service_account_name", "serviceAccountName"),
            ("priority_class_name", "priorityClassName"),
            ("scheduler_name", "schedulerName"),
            ("termination_grace_period_seconds", "terminationGracePeriodSeconds"),
            ("host_network", "hostNetwork"),
        ):
            value = getattr(self, field_name)
            if value is not None:
                spec[key] = value
        if self.image_pull_secrets:
            names = (
                self.image_pull_secrets.split(",")
                if isinstance(self.image_pull_secrets, str)
                else self.image_pull_secrets
            )
            spec["imagePullSecrets"] = [{"name": n.strip()} for n in names if n.strip()]
        if self.namespace:
            metadata["namespace"] = self.namespace
        if self.labels:
            metadata["labels"] = dict(self.labels)
        if self.annotations:
            metadata["annotations"] = dict(self.annotations)
        pod: dict[str, Any] = {"spec": spec}
        if metadata:
            pod["metadata"] = metadata
        return pod


class ParsedExecutorConfig(BaseModel):
    """What a task asked for: a template path and overrides, in the order they apply."""

    pod_template_file: str | None = None
    overrides: list[dict[str, Any]] = Field(default_factory=list)
    # The task's own disruption_retries, when it sets one.
    disruption_retries: int | None = None
    # The cluster the task asks to run in ([kubernetes_executor] clusters), if it names one.
    cluster: str | None = None


def parse(executor_config: dict[str, Any] | None) -> ParsedExecutorConfig:
    if not executor_config:
        return ParsedExecutorConfig()
    if not isinstance(executor_config, dict):
        raise ExecutorConfigError(f"executor_config must be a dict, got {type(executor_config).__name__}")
    unknown = sorted(set(executor_config) - set(TOP_LEVEL_KEYS), key=str)
    if unknown:
        raise ExecutorConfigError(
            f"executor_config: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"expected {', '.join(TOP_LEVEL_KEYS)}"
        )
    overrides: list[tuple[str, dict[str, Any]]] = []
    disruption_retries: int | None = None
    dict_form = executor_config.get(DICT_FORM_KEY)
    if dict_form is not None:
        if not isinstance(dict_form, dict):
            raise ExecutorConfigError(
                f"executor_config[{DICT_FORM_KEY!r}] must be a dict, got {type(dict_form).__name__}"
            )
        try:
            parsed = KubernetesExecutorConfig(**dict_form)
            overrides.append((DICT_FORM_KEY, parsed.to_pod()))
            disruption_retries = parsed.disruption_retries
        except ValidationError as exc:
            problems = "; ".join(f"{field}: {message}" for field, message, _ in validation_problems(exc))
            raise ExecutorConfigError(f"executor_config[{DICT_FORM_KEY!r}]: {problems}") from None
    pod_override = executor_config.get("pod_override")
    if pod_override is not None:
        if isinstance(pod_override, dict):
            overrides.append(("pod_override", pod_override))
        elif type(pod_override).__name__ == "V1Pod":
            overrides.append(("pod_override", _serializer.sanitize_for_serialization(pod_override)))
        else:
            raise ExecutorConfigError(
                f"executor_config['pod_override'] must be a kubernetes.client.V1Pod, "
                f"got {type(pod_override).__name__}"
            )
    for key, override in overrides:
        # Checked layer by layer, so the message says which key holds the value of the wrong type.
        if found := pod_shape.problems(override):
            raise ExecutorConfigError(f"executor_config[{key!r}]: {pod_shape.describe(found)}")
    template = executor_config.get("pod_template_file")
    if template is not None and not isinstance(template, str):
        raise ExecutorConfigError(
            f"executor_config['pod_template_file'] must be a path string, got {type(template).__name__}"
        )
    cluster = executor_config.get("cluster")
    if cluster is not None and not isinstance(cluster, str):
        raise ExecutorConfigError(
            f"executor_config['cluster'] must be a cluster's name, got {type(cluster).__name__}"
        )
    return ParsedExecutorConfig(
        cluster=cluster or None,
        pod_template_file=template or None,
        overrides=[o for _, o in overrides],
        disruption_retries=disruption_retries,
    )
