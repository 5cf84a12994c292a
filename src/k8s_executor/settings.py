"""The `[kubernetes_executor]` and `[local_kubernetes_executor]` settings.

Option names and meanings follow the official provider so an operator's
airflow.cfg keeps working. One pydantic model is the single definition: it
validates at `start()` (a bad value names the option and what is wrong), it
feeds `get_provider_info` so `airflow config list` shows every option, and it
generates the configuration reference in the docs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from k8s_executor.disruption_guard import GuardSource
from k8s_executor.identity import DEFAULT_CLUSTER

SECTION = "kubernetes_executor"
LOCAL_SECTION = "local_kubernetes_executor"
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class SettingsError(ValueError):
    """A setting has a value the executor cannot run with."""


def _csv(value: Any) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return list(value or [])


def _json_dict(value: Any) -> dict[str, Any]:
    if value in (None, ""):
        return {}
    if isinstance(value, dict):
        return value
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(parsed, dict):
        raise ValueError("must be a JSON object")
    return parsed


def _clusters_value(value: Any) -> dict[str, Any]:
    """`clusters`: a JSON object, or the path of a YAML (or JSON) file holding one."""
    if value in (None, ""):
        return {}
    if isinstance(value, str) and not value.lstrip().startswith(("{", "[")):
        try:
            value = yaml.safe_load(Path(value).read_text())
        except OSError as exc:
            raise ValueError(f"cannot read the file {value!r} ({exc.strerror})") from None
        except yaml.YAMLError as exc:
            raise ValueError(f"the file {value!r} is not YAML ({exc})") from None
        if value is None:
            return {}
    return _json_dict(value)


# A connection is a unit, its TLS trust included: a cluster takes none of these from the section.
CONNECTION_KEYS = ("in_cluster", "config_file", "cluster_context", "verify_ssl", "ssl_ca_cert")
# So are the namespaces: a cluster that sets any of these takes none of them from the section.
NAMESPACE_KEYS = ("namespace", "multi_namespace_mode", "multi_namespace_mode_namespace_list")
# What only the section decides: how clusters are chosen, and how many pods Airflow's loop builds.
SECTION_ONLY_KEYS = ("clusters", "queue_clusters", "worker_pods_creation_batch_size")
_CLUSTER_NAME = re.compile(r"^[a-z0-9]([-a-z0-9_]{0,61}[a-z0-9])?$")


class ExecutorSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    namespace: str = Field("default", description="Namespace where worker pods run.")
    pod_template_file: str = Field(
        "", description="Path to a YAML pod template used as the base of every worker pod."
    )
    worker_container_repository: str = Field("", description="Image repository of the worker container.")
    worker_container_tag: str = Field("", description="Image tag of the worker container.")
    delete_worker_pods: bool = Field(True, description="Delete a worker pod once its task finished.")
    delete_worker_pods_on_failure: bool = Field(
        False,
        description="Also delete pods of failed tasks (only when delete_worker_pods is True). A pod "
        "whose containers never ran (an image never pulled, a pod never scheduled, or not started in "
        "time) is deleted whatever these two say: kubelet would go on trying to start it.",
    )
    worker_pod_pending_fatal_container_state_reasons: list[str] = Field(
        default_factory=lambda: [
            "CreateContainerConfigError",
            "ErrImagePull",
            "CreateContainerError",
            "ImageInspectError",
            "InvalidImageName",
        ],
        description="Waiting reasons of a pending pod's container that fail its task at once.",
    )
    worker_pods_creation_batch_size: int = Field(
        8192,
        ge=1,
        description="Most tasks taken from Airflow's queue per scheduler heartbeat. The official "
        "provider defaults to 1. Here a task taken costs Airflow's loop a few microseconds: its pod is "
        "built and created off the loop, so a burst goes out at once instead of a batch per loop "
        "(a loop over thousands of queued tasks takes seconds). 8192 bounds the tries taken at once; "
        "at 1024 a burst of 5,000 launched at two thirds of the rate (bench/RESULTS.md).",
    )
    async_pod_creation: bool = Field(
        False, description="Accepted for compatibility: pods are always created concurrently."
    )
    pod_creation_max_concurrency: int = Field(
        0,
        ge=0,
        description="Concurrent create requests in flight; 0 means 64. Each create waits on the "
        "API server and etcd, not on this process, so it takes many in flight to reach the rate the "
        "API server can take: with 32 the development cluster's API server held 22 of them at a time "
        "on average and answered each in about 0.1 s, below what it could take; with 64 it held 45, "
        "as many as the bare client's 64 threads got there (bench/RESULTS.md). 64 is about a quarter "
        "of the seats API Priority and Fairness gives the priority level of service accounts "
        "(workload-low: about 245 of a default API server's 600), which it shares fairly among that "
        "level's clients, so one scheduler's burst does not shut the others out. Deletes of finished "
        "pods go at most 8 at a time.",
    )
    api_qps: float = Field(
        400.0,
        gt=0,
        description=(
            "Client-side rate limit on requests to the API server (per second). The API server "
            "protects itself (priority and fairness, 429 with Retry-After, which the executor "
            "honours); this limit only keeps a runaway scheduler from flooding a shared cluster. "
            "400 is above the rate one API server on the development machine took the executor's "
            "pods from a bare client (200-370 creates per second; smaller pods up to 440, "
            "bench/RESULTS.md), so that the API server, not this limit, paces a burst: at 200 (and "
            "api_burst 400) a burst of 5,000 could go no faster than 217 pods per second, below "
            "that rate. Where the API servers take more, raise it with api_burst."
        ),
    )
    api_burst: int = Field(
        800,
        ge=1,
        description="Requests allowed above api_qps in a burst: two seconds' worth, so that a burst "
        "of tasks goes out at once and the limit only holds a scheduler that keeps on asking.",
    )
    multi_namespace_mode: bool = Field(False, description="Launch and watch pods in several namespaces.")
    multi_namespace_mode_namespace_list: list[str] = Field(
        default_factory=list,
        description="Namespaces watched in multi_namespace_mode; empty means all namespaces (needs a ClusterRole).",
    )
    in_cluster: bool = Field(True, description="Use the pod's service account to reach the API server.")
    cluster_context: str | None = Field(None, description="kubeconfig context when not in_cluster.")
    config_file: str | None = Field(None, description="kubeconfig path when not in_cluster.")
    kube_client_request_args: dict[str, Any] = Field(
        default_factory=dict, description="JSON object of extra keyword arguments for every API call."
    )
    delete_option_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="JSON object of V1DeleteOptions fields used when deleting pods."
    )
    api_client_retry_configuration: dict[str, Any] = Field(
        default_factory=dict,
        description="JSON object of urllib3 Retry arguments for the API client. Unset, "
        "a refusal (429, 503) is not waited for inside a call: the executor retries it itself, "
        "so that the scheduler loop never sleeps on an overloaded API server.",
    )
    enable_tcp_keepalive: bool = Field(True, description="TCP keepalive on API connections.")
    tcp_keep_idle: int = Field(120, ge=1, description="Seconds idle before keepalive probes start.")
    tcp_keep_intvl: int = Field(30, ge=1, description="Seconds between keepalive probes.")
    tcp_keep_cnt: int = Field(6, ge=1, description="Failed probes before the connection is dropped.")
    verify_ssl: bool = Field(True, description="Verify the API server's certificate.")
    ssl_ca_cert: str = Field("", description="CA bundle used to verify the API server.")
    task_publish_max_retries: int = Field(
        5,
        ge=-1,
        description="Retries of a pod create after a transient error (429, 5xx, quota, connection); "
        "-1 retries until the task's queued timeout. The official provider defaults to 0, failing a task "
        "on the first 429; retrying is safe here because pod names are deterministic.",
    )
    pod_launch_failure_retries: int = Field(
        1,
        ge=-1,
        description="New pods for a try whose pod failed before its task started (the task instance "
        "still queued: an image that could not be pulled, a create the API server refused, a pod "
        "evicted, deleted or unschedulable before it ran), without spending one of the task's "
        "retries; each failed launch's reason goes to the task's log. 0: fail the try at once; -1: "
        "no limit. Not after the try's task_queued_timeout.",
    )
    pod_launch_failure_excluded_container_reasons: list[str] = Field(
        default_factory=lambda: ["Error"],
        description="Failure causes (a container's termination or waiting reason, or Evicted, "
        "Unschedulable, Deleted, CreateRefused) that fail the try instead of launching a new pod. "
        "The default, Error, is a container that ran and exited non-zero before its task started.",
    )
    disruption_retries: int = Field(
        3,
        ge=0,
        description="New pods for a try whose pod the cluster disrupted (a DisruptionTarget "
        "condition: eviction, preemption, a NoExecute taint, its node gone, kubelet's node-pressure "
        "eviction or a graceful node shutdown) while its task instance was still queued or running, "
        "without spending one of the task's retries; each disruption is explained in the task's log. "
        'A task may set its own in executor_config ({"KubernetesExecutor": {"disruption_retries": '
        "N}}). 0: a disruption fails the try, as any failure does.",
    )
    disruption_guard: bool = Field(
        True,
        description="Run each task's command under the disruption guard, which keeps SIGTERM from "
        "the task when its pod carries a DisruptionTarget condition: Airflow 2's LocalTaskJob, and "
        "on Airflow 3 an operator whose on_kill ends its work (Bash, KubernetesPodOperator), would "
        "otherwise fail the task, and spend a retry, before the executor can launch it again. The "
        "task runs on until the grace period ends (a task that finishes meanwhile keeps its end). "
        "Any other stop (a person's deletion) reaches the task at once, as without it, and on_kill "
        "runs. Needs `get` on pods for the workers' service account (deploy/rbac/worker.yaml); "
        "without it, the guard passes SIGTERM on. Not used for a task whose disruption_retries is 0, "
        "nor for callbacks and connection tests.",
    )
    disruption_guard_source: GuardSource = Field(
        "image",
        description="Where a pod's disruption guard comes from. image: the package installed in the "
        "worker image, as in the scheduler's (deploy/Dockerfile); the pod's args carry a few lines "
        "that import it, and in an image without the package the task runs unguarded and says so in "
        "its log. inline: the guard's whole source (about 4 KB, standard library only) in every "
        "pod's args, for worker images without this package (a task's own image, Python 3.9); "
        "each pod then costs the API server, etcd and every watcher about 4 KB more on each of its "
        "events: 8-17% more of the cluster's CPU per pod (bench/RESULTS.md).",
    )
    logs_task_metadata: bool = Field(False, description="Accepted for compatibility; not used.")
    termination_grace_period_seconds: int | None = Field(
        None,
        ge=0,
        description="Seconds a worker pod has to stop after SIGTERM when it is deleted, unless its template "
        "or executor_config sets terminationGracePeriodSeconds; empty leaves Kubernetes' default (30).",
    )
    running_pod_log_lines: int = Field(100, ge=1, description="Lines of a running pod's log shown in the UI.")
    unschedulable_pod_timeout: int = Field(
        300, ge=1, description="Seconds a pod may stay Unschedulable before its task fails with the reason."
    )

    # Declared last: their validators read the section's other values (`info.data`).
    clusters: dict[str, Any] = Field(
        default_factory=dict,
        description="More clusters than the section's own (which is the cluster named "
        '"default"): a JSON object, or the path of a YAML file holding one, from a cluster\'s name to '
        "its settings. Each cluster has its connection (in_cluster: true, or config_file and "
        "cluster_context) and may set any other option of this section for itself (namespace, "
        "multi_namespace_mode_namespace_list, pod_template_file, worker_container_repository and "
        "worker_container_tag, api_qps, ...); the options it does not set are the section's. A task "
        'runs in the cluster its executor_config names ({"cluster": "gpu"}), else the one '
        "queue_clusters gives its queue, else the default. Each cluster has its own credentials, "
        "watchers, launcher, rate limit, adoption and sweep: one that cannot be reached holds back "
        "only its own tasks (docs/multi-cluster.md).",
    )
    queue_clusters: dict[str, str] = Field(
        default_factory=dict,
        description='JSON object from a queue to the cluster its tasks run in, e.g. {"gpu": "gpu"}; '
        "a task's executor_config cluster comes first.",
    )

    # Which cluster these settings are for (`cluster_settings`): named by the section, not an option.
    _cluster: str = PrivateAttr(DEFAULT_CLUSTER)

    _csv_fields = field_validator(
        "worker_pod_pending_fatal_container_state_reasons",
        "multi_namespace_mode_namespace_list",
        "pod_launch_failure_excluded_container_reasons",
        mode="before",
    )(_csv)
    _json_fields = field_validator(
        "kube_client_request_args",
        "delete_option_kwargs",
        "api_client_retry_configuration",
        "queue_clusters",
        mode="before",
    )(_json_dict)
    _clusters_field = field_validator("clusters", mode="before")(_clusters_value)

    @field_validator("clusters")
    @classmethod
    def _clusters(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        # Each cluster's settings are checked now, at start, naming the cluster and the key.
        for name, entry in value.items():
            _cluster_settings(name, entry, info.data)
        return value

    @field_validator("queue_clusters")
    @classmethod
    def _queue_clusters(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        if "clusters" not in info.data:
            return value  # the clusters' own error says what is wrong
        known = [DEFAULT_CLUSTER, *info.data["clusters"]]
        for queue, cluster in value.items():
            if cluster not in known:
                raise ValueError(
                    f"queue {queue!r} is routed to cluster {cluster!r}, which is not configured "
                    f"(clusters: {', '.join(known)})"
                )
        return value

    @field_validator("namespace", "multi_namespace_mode_namespace_list")
    @classmethod
    def _namespaces(cls, value: str | list[str]) -> str | list[str]:
        # A name the API server would refuse for every pod and every watch stops the scheduler at
        # start, not each task later.
        for name in [value] if isinstance(value, str) else value:
            if not _DNS_LABEL.match(name):
                raise ValueError(
                    f"{name!r} is not a namespace name (at most 63 lower-case letters, digits and '-', "
                    "starting and ending with a letter or digit)"
                )
        return value

    @field_validator("cluster_context", "config_file", "termination_grace_period_seconds", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return value or None

    def cluster_settings(self) -> dict[str, ExecutorSettings]:
        """Every cluster's own settings by its name, the default (the section's own) first."""
        base = self.model_dump()
        return {
            DEFAULT_CLUSTER: self,
            **{name: _cluster_settings(name, entry, base) for name, entry in self.clusters.items()},
        }

    @property
    def cluster(self) -> str:
        """The name of the cluster these settings are for ([kubernetes_executor] clusters)."""
        return self._cluster

    @property
    def creation_concurrency(self) -> int:
        return self.pod_creation_max_concurrency or 64

    @property
    def worker_image(self) -> str | None:
        if not self.worker_container_repository:
            return None
        tag = self.worker_container_tag
        return f"{self.worker_container_repository}:{tag}" if tag else self.worker_container_repository

    @property
    def watched_namespaces(self) -> list[str | None]:
        """Namespaces with one watcher each; `None` is one watcher over all namespaces."""
        if not self.multi_namespace_mode:
            return [self.namespace]
        return list(self.multi_namespace_mode_namespace_list) or [None]

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> ExecutorSettings:
        """Build from raw option strings; unknown keys are ignored (other providers share the section)."""
        known = {k: v for k, v in raw.items() if k in cls.model_fields and v is not None}
        try:
            return cls(**known)
        except ValidationError as exc:
            problems = "; ".join(_problem(*problem) for problem in validation_problems(exc))
            raise SettingsError(f"invalid executor settings: {problems}") from None


def validation_problems(exc: ValidationError) -> list[tuple[str, str, Any]]:
    """Each problem pydantic found: where (the dotted field), what is wrong in our validators' own
    words (without pydantic's "Value error, " before them), and the value given."""
    return [
        (".".join(str(p) for p in err["loc"]), err["msg"].removeprefix("Value error, "), err.get("input"))
        for err in exc.errors()
    ]


def _problem(where: str, message: str, value: Any) -> str:
    if message.startswith(f"{where}."):
        return f"[{SECTION}] {message}"  # a cluster's own problem, which names its key and value
    return f"[{SECTION}] {where}: {message} (got {value!r})"


def _cluster_settings(name: str, entry: Any, section: dict[str, Any]) -> ExecutorSettings:
    """Cluster `name`'s settings: the section's values with the cluster's own over them."""
    where = f"clusters.{name}"
    if name == DEFAULT_CLUSTER:
        raise ValueError(f"{where}: {DEFAULT_CLUSTER!r} is the section's own cluster; name the others")
    if not _CLUSTER_NAME.match(name):
        raise ValueError(
            f"{where}: a cluster's name is at most 63 lower-case letters, digits, '-' and '_', "
            "starting and ending with a letter or digit (it goes into metric names)"
        )
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: must be an object of settings, got {type(entry).__name__}")
    if entry.get("in_cluster") is not True and not entry.get("config_file"):
        raise ValueError(
            f"{where}: needs its connection: in_cluster: true, or config_file and cluster_context"
        )
    if found := [key for key in SECTION_ONLY_KEYS if key in entry]:
        raise ValueError(f"{where}: {', '.join(found)} can only be set for the whole section")
    own_keys = {*CONNECTION_KEYS, *SECTION_ONLY_KEYS}
    if any(key in entry for key in NAMESPACE_KEYS):
        own_keys |= set(NAMESPACE_KEYS)
    inherited = {k: v for k, v in section.items() if k not in own_keys}
    try:
        settings = ExecutorSettings(**{**inherited, "in_cluster": False, **entry})
    except ValidationError as exc:
        problems = "; ".join(
            f"{where}.{field}: {message} (got {value!r})"
            for field, message, value in validation_problems(exc)
        )
        raise ValueError(problems) from None
    settings._cluster = name
    return settings


class LocalKubernetesSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kubernetes_queue: str = Field("kubernetes", description="Tasks of this queue run as pods.")


def option_definitions(model: type[BaseModel]) -> dict[str, dict[str, Any]]:
    """Provider-info option entries, so `airflow config list` shows every setting with its default."""
    options = {}
    for name, info in model.model_fields.items():
        default = info.get_default(call_default_factory=True)
        if isinstance(default, list):
            default_text = ",".join(default)
        elif isinstance(default, dict):
            default_text = json.dumps(default) if default else ""
        elif default is None:
            default_text = None
        else:
            default_text = str(default)
        options[name] = {
            "description": info.description,
            "version_added": "0.1.0",
            "type": {bool: "boolean", int: "integer", float: "float"}.get(type(default), "string"),
            "example": None,
            "default": default_text,
        }
    return options
