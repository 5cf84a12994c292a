"""The corpus of bad input: each case a task's input, and the exact words its task must fail with.

One list for every level (issue 17, item 3). tests/unit/test_bad_input.py builds the pod of each case
decided by the executor itself (`level == "executor"`) and checks the message; tests/cluster/
test_bad_input.py sends the pod of each case the API server decides (`level == "api"`) to a real API
server and checks its words; tests/e2e/test_bad_input.py runs every case as a task of one DAG run of
a real Airflow (tests/e2e/dags/e2e_bad_input.py) and checks that each fails alone with its message
while good tasks after them run. The ids cases are the other way round: inputs Airflow allows, whose
pods must be valid and run.

This module is copied beside the e2e DAG file, so it imports nothing of the tests and nothing that
a worker lacks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from kubernetes.client import models as k8s

Level = Literal["executor", "api"]

# The stand-ins for paths and names only known where a case runs.
TEMPLATES = "{templates}"  # the folder the templates of the corpus are written to
WATCHED = "{watched}"  # the namespaces the executor watches, as its message lists them
ONE_MB = 1024 * 1024
API_ANNOTATIONS_LIMIT = 262144  # bytes, all annotations of an object together (apimachinery)
QUANTITY_HINT = "is not a quantity (like 500m, 1.5, 512Mi or 2G)"
IMAGE_HINT = (
    "is not an image reference (like registry.example.com/team/app:1.2, app:1.2 or app@sha256:<digest>)"
)
ENV_NAME_RULE = (
    "a valid environment variable name must consist only of printable ASCII characters other than '='"
)
LABEL_RULE = (
    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
    "alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is "
    "'([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
)


@dataclass(frozen=True)
class Case:
    """One bad input. `name` is also its task's id in the e2e DAG."""

    name: str
    category: str
    # "executor": refused while the executor builds the pod, `expected` being the error's exact text
    # (after "task <dag>.<task> (run <run>, try <n>): "). "api": refused by the API server,
    # `expected` being its words (after 'Pod "<name>" is invalid: ', when it says that).
    level: Level
    expected: str
    executor_config: Any = None
    # The text (or bytes) of the case's own pod template, written to <templates>/<name>.yaml and
    # named by its executor_config's pod_template_file.
    template: str | bytes | None = None
    # What Airflow makes of `executor_config` on its way to the executor, where it differs: its DAG
    # serialiser turns an object it does not know into its text.
    expected_in_airflow: str | None = None
    # Who refuses it in the e2e run, where that differs from `level` (the e2e stack watches its own
    # namespaces only, so the executor refuses a pod for another before the API server could).
    level_in_airflow: Level | None = None
    # Why the case is not a task of the e2e run, when it cannot be: what Airflow does to it first.
    not_in_airflow: str = ""

    def config(self, templates: Path) -> Any:
        """The executor_config with the corpus's stand-ins replaced by the folder of templates."""
        return _substitute(self.executor_config, str(templates))

    def message(self, templates: Path, watched: str = "", in_airflow: bool = False) -> str:
        text = self.expected_in_airflow if in_airflow and self.expected_in_airflow else self.expected
        return text.replace(TEMPLATES, str(templates)).replace(WATCHED, watched)


def _substitute(value: Any, templates: str) -> Any:
    if isinstance(value, str):
        return value.replace(TEMPLATES, templates)
    if isinstance(value, dict):
        return {k: _substitute(v, templates) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, templates) for v in value]
    return value


def _dict_form(**fields: Any) -> dict[str, Any]:
    return {"KubernetesExecutor": fields}


def _own_template(name: str) -> dict[str, Any]:
    return {"pod_template_file": f"{TEMPLATES}/{name}.yaml"}


def _pod(*containers: k8s.V1Container, **spec: Any) -> k8s.V1Pod:
    return k8s.V1Pod(spec=k8s.V1PodSpec(containers=list(containers), **spec))


GOOD_TEMPLATE = "apiVersion: v1\nkind: Pod\nspec:\n  containers:\n  - name: base\n    image: busybox:1.36\n"
_BIG = "x" * ONE_MB

CASES: list[Case] = [
    # --- executor_config of every wrong shape ---------------------------------------------------
    Case(
        "ec_unknown_top_level_key",
        "executor_config",
        "executor",
        "executor_config: unknown key(s) 'KubernetesExcutor'; expected pod_override, pod_template_file, "
        "KubernetesExecutor, cluster",
        {"KubernetesExcutor": {"image": "busybox:1.36"}},
    ),
    Case(
        "ec_unknown_cluster",
        "executor_config",
        "executor",
        "executor_config['cluster'] is 'gpu', which is not one of the executor's clusters (default; "
        "[kubernetes_executor] clusters)",
        {"cluster": "gpu"},
    ),
    Case(
        "ec_cluster_not_a_name",
        "executor_config",
        "executor",
        "executor_config['cluster'] must be a cluster's name, got int",
        {"cluster": 1},
    ),
    Case(
        "ec_unknown_dict_form_key",
        "executor_config",
        "executor",
        "executor_config['KubernetesExecutor']: imagee: Extra inputs are not permitted",
        _dict_form(imagee="busybox:1.36"),
    ),
    Case(
        "ec_not_a_dict",
        "executor_config",
        "executor",
        "executor_config must be a dict, got list",
        ["KubernetesExecutor", {"image": "busybox:1.36"}],
        not_in_airflow="Airflow 3's scheduler cannot queue it: its workload model (TaskInstanceDTO) takes "
        "only a dict, and raises a ValidationError in the scheduler's loop before any executor sees it",
    ),
    Case(
        "ec_dict_form_is_a_list",
        "executor_config",
        "executor",
        "executor_config['KubernetesExecutor'] must be a dict, got list",
        {"KubernetesExecutor": [{"image": "busybox:1.36"}]},
    ),
    Case(
        "ec_labels_a_list",
        "executor_config",
        "executor",
        "executor_config['KubernetesExecutor']: labels: Input should be a valid dictionary",
        _dict_form(labels=[["team", "data"]]),
    ),
    Case(
        "ec_node_selector_a_list",
        "executor_config",
        "executor",
        "executor_config['KubernetesExecutor']: node_selector: Input should be a valid dictionary",
        _dict_form(node_selector=["disktype=ssd"]),
    ),
    Case(
        "ec_tolerations_a_map",
        "executor_config",
        "executor",
        "executor_config['KubernetesExecutor']: tolerations: Input should be a valid list",
        _dict_form(tolerations={"key": "gpu", "operator": "Exists"}),
    ),
    Case(
        "ec_env_var_without_name",
        "executor_config",
        "executor",
        "executor_config['KubernetesExecutor']: env_vars: every entry needs a 'name'",
        _dict_form(env_vars=[{"value": "1"}]),
    ),
    Case(
        "ec_volume_without_name",
        "executor_config",
        "executor",
        "executor_config['KubernetesExecutor']: volumes: every entry needs a 'name'",
        _dict_form(volumes=[{"emptyDir": {}}]),
    ),
    Case(
        "ec_secret_deploy_type",
        "executor_config",
        "executor",
        "executor_config['KubernetesExecutor']: secrets.0.deploy_type: Input should be 'env' or 'volume'",
        _dict_form(secrets=[{"deploy_type": "file", "secret": "db"}]),
    ),
    Case(
        "ec_volume_secret_without_target",
        "executor_config",
        "executor",
        "executor_config['KubernetesExecutor']: secrets: a volume secret needs deploy_target (the mount "
        "path) for 'db'",
        _dict_form(secrets=[{"deploy_type": "volume", "secret": "db"}]),
    ),
    Case(
        "ec_memory_an_integer",
        "executor_config",
        "executor",
        "executor_config['KubernetesExecutor']: request_memory: Input should be a valid string",
        _dict_form(request_memory=512),
    ),
    Case(
        "ec_grace_period_not_a_number",
        "executor_config",
        "executor",
        "executor_config['KubernetesExecutor']: termination_grace_period_seconds: Input should be a valid "
        "integer, unable to parse string as an integer",
        _dict_form(termination_grace_period_seconds="soon"),
    ),
    Case(
        "ec_host_network_not_a_boolean",
        "executor_config",
        "executor",
        "executor_config['KubernetesExecutor']: host_network: Input should be a valid boolean, unable to "
        "interpret input",
        _dict_form(host_network="maybe"),
    ),
    Case(
        "ec_pull_policy_unknown",
        "executor_config",
        "executor",
        "executor_config['KubernetesExecutor']: image_pull_policy: Input should be 'Always', 'IfNotPresent' "
        "or 'Never'",
        _dict_form(image_pull_policy="Sometimes"),
    ),
    Case(
        "ec_pod_override_a_string",
        "executor_config",
        "executor",
        "executor_config['pod_override'] must be a kubernetes.client.V1Pod, got str",
        {"pod_override": "spec: {containers: [{name: base}]}"},
    ),
    Case(
        "ec_pod_override_a_container",
        "executor_config",
        "executor",
        "executor_config['pod_override'] must be a kubernetes.client.V1Pod, got V1Container",
        {"pod_override": k8s.V1Container(name="base", image="busybox:1.36")},
        expected_in_airflow="executor_config['pod_override'] must be a kubernetes.client.V1Pod, got str",
    ),
    Case(
        "ec_pod_override_container_fields",
        "executor_config",
        "executor",
        "executor_config['pod_override']: 'image', 'name' are not fields of a pod (it has apiVersion, kind, "
        "metadata, spec)",
        {"pod_override": {"name": "base", "image": "busybox:1.36"}},
    ),
    Case(
        "ec_pod_override_spec_a_number",
        "executor_config",
        "executor",
        "executor_config['pod_override']: spec must be an object, not an integer (1)",
        {"pod_override": {"spec": 1}},
    ),
    Case(
        "ec_pod_override_containers_a_map",
        "executor_config",
        "executor",
        "executor_config['pod_override']: spec.containers must be a list, not an object",
        {"pod_override": {"spec": {"containers": {"base": {"image": "busybox:1.36"}}}}},
    ),
    Case(
        "ec_pod_override_labels_a_list",
        "executor_config",
        "executor",
        "executor_config['pod_override']: metadata.labels must be an object, not a list",
        {"pod_override": {"metadata": {"labels": ["team=data"]}}},
    ),
    Case(
        "ec_pod_override_env_value_a_number",
        "executor_config",
        "executor",
        "executor_config['pod_override']: spec.containers[0].env[0].value must be a string, not an integer (1)",
        {"pod_override": {"spec": {"containers": [{"name": "base", "env": [{"name": "A", "value": 1}]}]}}},
    ),
    Case(
        "ec_v1pod_field_of_wrong_type",
        "executor_config",
        "executor",
        "executor_config['pod_override']: spec.hostNetwork must be true or false, not a string ('yes')",
        {"pod_override": _pod(k8s.V1Container(name="base"), host_network="yes")},
        not_in_airflow="Airflow's DAG serialiser reads the V1Pod back through the client's deserialiser, "
        "which makes 'yes' True: the task would run with hostNetwork",
    ),
    Case(
        "ec_template_path_a_number",
        "executor_config",
        "executor",
        "executor_config['pod_template_file'] must be a path string, got int",
        {"pod_template_file": 7},
    ),
    # Both forms name the volume `data`, each with its own source: merged by name (README, the merge
    # rule), the volume has two sources, which the API server refuses.
    Case(
        "ec_both_forms_contradict",
        "executor_config",
        "api",
        "spec.volumes[0].hostPath: Forbidden: may not specify more than 1 volume type",
        {
            "KubernetesExecutor": {"volumes": [{"name": "data", "emptyDir": {}}]},
            "pod_override": _pod(
                k8s.V1Container(name="base"),
                volumes=[k8s.V1Volume(name="data", host_path=k8s.V1HostPathVolumeSource(path="/tmp"))],
            ),
        },
    ),
    # --- templates ------------------------------------------------------------------------------
    Case(
        "tpl_missing_file",
        "templates",
        "executor",
        f"pod_template_file '{TEMPLATES}/tpl_missing_file.yaml' cannot be read: No such file or directory",
        _own_template("tpl_missing_file"),
    ),
    Case(
        "tpl_a_directory",
        "templates",
        "executor",
        f"pod_template_file '{TEMPLATES}' cannot be read: Is a directory",
        {"pod_template_file": TEMPLATES},
    ),
    Case(
        "tpl_not_yaml",
        "templates",
        "executor",
        f"pod_template_file '{TEMPLATES}/tpl_not_yaml.yaml' is not valid YAML: while parsing a flow "
        "sequence\n  in \"{templates}/tpl_not_yaml.yaml\", line 1, column 7\nexpected ',' or ']', but got "
        "'<stream end>'\n  in \"{templates}/tpl_not_yaml.yaml\", line 1, column 16",
        _own_template("tpl_not_yaml"),
        template="spec: [unclosed",
    ),
    Case(
        "tpl_not_text",
        "templates",
        "executor",
        f"pod_template_file '{TEMPLATES}/tpl_not_text.yaml' is not valid YAML: unacceptable character "
        '#x0080: invalid start byte\n  in "{templates}/tpl_not_text.yaml", position 0',
        _own_template("tpl_not_text"),
        template=b"\x80kind: Pod",
    ),
    Case(
        "tpl_several_documents",
        "templates",
        "executor",
        f"pod_template_file '{TEMPLATES}/tpl_several_documents.yaml' holds 2 YAML documents; it must hold "
        "exactly one Pod",
        _own_template("tpl_several_documents"),
        template=GOOD_TEMPLATE + "---\n" + GOOD_TEMPLATE,
    ),
    Case(
        "tpl_empty",
        "templates",
        "executor",
        f"pod_template_file '{TEMPLATES}/tpl_empty.yaml' holds 0 YAML documents; it must hold exactly one Pod",
        _own_template("tpl_empty"),
        template="# nothing but a comment\n",
    ),
    Case(
        "tpl_not_a_pod",
        "templates",
        "executor",
        f"pod_template_file '{TEMPLATES}/tpl_not_a_pod.yaml' holds a Deployment, not a Pod",
        _own_template("tpl_not_a_pod"),
        template="apiVersion: apps/v1\nkind: Deployment\nspec:\n  replicas: 1\n",
    ),
    Case(
        "tpl_a_list",
        "templates",
        "executor",
        f"pod_template_file '{TEMPLATES}/tpl_a_list.yaml' holds a list, not a Pod object",
        _own_template("tpl_a_list"),
        template="- name: base\n  image: busybox:1.36\n",
    ),
    Case(
        "tpl_no_containers",
        "templates",
        "executor",
        f"pod_template_file '{TEMPLATES}/tpl_no_containers.yaml': spec.containers must list at least one "
        "container",
        _own_template("tpl_no_containers"),
        template="apiVersion: v1\nkind: Pod\nspec:\n  restartPolicy: Never\n",
    ),
    Case(
        "tpl_container_without_name",
        "templates",
        "executor",
        f"pod_template_file '{TEMPLATES}/tpl_container_without_name.yaml': spec.containers[1] has no name",
        _own_template("tpl_container_without_name"),
        template=GOOD_TEMPLATE + "  - image: busybox:1.36\n",
    ),
    Case(
        "tpl_env_a_map",
        "templates",
        "executor",
        f"pod_template_file '{TEMPLATES}/tpl_env_a_map.yaml': spec.containers[0].env must be a list, not an "
        "object",
        _own_template("tpl_env_a_map"),
        template=GOOD_TEMPLATE + "    env:\n      A: '1'\n",
    ),
    # A megabyte of template, all of it one annotation: read and built like any template (the
    # scheduler does not choke), and refused by the API server for the annotation's size.
    Case(
        "tpl_one_megabyte",
        "templates",
        "api",
        f"metadata.annotations: Too long: may not be more than {API_ANNOTATIONS_LIMIT} bytes",
        _own_template("tpl_one_megabyte"),
        template=f"apiVersion: v1\nkind: Pod\nmetadata:\n  annotations:\n    bulk: {_BIG}\n"
        + GOOD_TEMPLATE.split("kind: Pod\n", 1)[1],
    ),
    # --- labels and annotations over the API server's limits ------------------------------------
    Case(
        "lbl_value_too_long",
        "labels and annotations",
        "executor",
        f"metadata.labels['team']: '{'x' * 64}' is not a valid label value (at most 63 characters of "
        "letters, digits, '-', '_', '.')",
        _dict_form(labels={"team": "x" * 64}),
    ),
    Case(
        "lbl_value_not_a_string",
        "labels and annotations",
        "executor",
        "executor_config['pod_override']: metadata.labels['tier'] must be a string, not an integer (1)",
        {"pod_override": {"metadata": {"labels": {"tier": 1}}}},
    ),
    Case(
        "lbl_key_with_a_space",
        "labels and annotations",
        "api",
        f'metadata.labels: Invalid value: "team name": {LABEL_RULE}',
        _dict_form(labels={"team name": "data"}),
    ),
    Case(
        "ann_over_256_kb",
        "labels and annotations",
        "api",
        f"metadata.annotations: Too long: may not be more than {API_ANNOTATIONS_LIMIT} bytes",
        _dict_form(annotations={"bulk": "x" * API_ANNOTATIONS_LIMIT}),
    ),
    Case(
        "node_selector_key_invalid",
        "labels and annotations",
        "api",
        f'spec.nodeSelector: Invalid value: "bad key!": {LABEL_RULE}',
        _dict_form(node_selector={"bad key!": "x"}),
    ),
    # --- env var names the API server refuses ---------------------------------------------------
    Case(
        "env_name_with_equals",
        "env var names",
        "api",
        f'spec.containers[0].env[0].name: Invalid value: "BAD=NAME": {ENV_NAME_RULE}',
        _dict_form(env_vars=[{"name": "BAD=NAME", "value": "1"}]),
    ),
    Case(
        "env_name_not_ascii",
        "env var names",
        "api",
        f'spec.containers[0].env[0].name: Invalid value: "naïve": {ENV_NAME_RULE}',
        _dict_form(env_vars={"naïve": "1"}),
    ),
    Case(
        "env_name_with_a_tab",
        "env var names",
        "api",
        f'spec.containers[0].env[0].name: Invalid value: "A\\tB": {ENV_NAME_RULE}',
        {"pod_override": _pod(k8s.V1Container(name="base", env=[k8s.V1EnvVar(name="A\tB", value="1")]))},
    ),
    # --- namespaces -----------------------------------------------------------------------------
    Case(
        "ns_not_watched",
        "namespace",
        "executor",
        f"metadata.namespace 'no-such-namespace' is not watched by this executor (watching {WATCHED}); set "
        "[kubernetes_executor] multi_namespace_mode = True and add it to multi_namespace_mode_namespace_list",
        _dict_form(namespace="no-such-namespace"),
    ),
    # With multi_namespace_mode watching all namespaces, nothing but the API server knows.
    Case(
        "ns_does_not_exist",
        "namespace",
        "api",
        'namespaces "not-there" not found',
        _dict_form(namespace="not-there"),
        expected_in_airflow=f"metadata.namespace 'not-there' is not watched by this executor (watching "
        f"{WATCHED}); set [kubernetes_executor] multi_namespace_mode = True and add it to "
        "multi_namespace_mode_namespace_list",
        level_in_airflow="executor",
    ),
    # --- image names that are not references ----------------------------------------------------
    Case(
        "img_with_spaces",
        "image",
        "executor",
        f"spec.containers['base'].image: 'Not A Reference!' {IMAGE_HINT}",
        _dict_form(image="Not A Reference!"),
    ),
    Case(
        "img_upper_case_path",
        "image",
        "executor",
        f"spec.containers['base'].image: 'busybox:latest/Edge' {IMAGE_HINT}",
        _dict_form(image="busybox:latest/Edge"),
    ),
    Case(
        "img_empty_tag",
        "image",
        "executor",
        f"spec.containers['base'].image: 'busybox:' {IMAGE_HINT}",
        {"pod_override": _pod(k8s.V1Container(name="base", image="busybox:"))},
    ),
    Case(
        "img_of_an_init_container",
        "image",
        "executor",
        f"spec.initContainers['init'].image: ' busybox' {IMAGE_HINT}",
        {
            "pod_override": _pod(
                k8s.V1Container(name="base"), init_containers=[k8s.V1Container(name="init", image=" busybox")]
            )
        },
    ),
    # --- resources that do not parse ------------------------------------------------------------
    Case(
        "res_memory_in_words",
        "resources",
        "executor",
        f"executor_config['KubernetesExecutor']: request_memory: 'lots' {QUANTITY_HINT}",
        _dict_form(request_memory="lots"),
    ),
    Case(
        "res_cpu_with_a_unit_in_words",
        "resources",
        "executor",
        f"executor_config['KubernetesExecutor']: limit_cpu: '1 core' {QUANTITY_HINT}",
        _dict_form(limit_cpu="1 core"),
    ),
    Case(
        "res_resources_map",
        "resources",
        "executor",
        f"executor_config['KubernetesExecutor']: resources.limits: memory: '1 GB' {QUANTITY_HINT}",
        _dict_form(resources={"limits": {"memory": "1 GB"}}),
    ),
    Case(
        "res_pod_override",
        "resources",
        "executor",
        f"executor_config['pod_override']: spec.containers[0].resources.requests['memory']: '2 gigs' "
        f"{QUANTITY_HINT}",
        {
            "pod_override": _pod(
                k8s.V1Container(
                    name="base", resources=k8s.V1ResourceRequirements(requests={"memory": "2 gigs"})
                )
            )
        },
    ),
    Case(
        "res_template",
        "resources",
        "executor",
        f"pod_template_file '{TEMPLATES}/res_template.yaml': spec.containers[0].resources.limits['cpu']: "
        f"'two' {QUANTITY_HINT}",
        _own_template("res_template"),
        template=GOOD_TEMPLATE + "    resources:\n      limits:\n        cpu: two\n",
    ),
    Case(
        "res_request_over_limit",
        "resources",
        "api",
        'spec.containers[0].resources.requests: Invalid value: "2": must be less than or equal to cpu limit of 1',
        _dict_form(request_cpu="2", limit_cpu="1"),
    ),
    Case(
        "res_negative",
        "resources",
        "api",
        'spec.containers[0].resources.requests[memory]: Invalid value: "-1Gi": must be greater than or equal to 0',
        _dict_form(request_memory="-1Gi"),
    ),
    # --- a pod_mutation_hook that raises or returns garbage (HOOK_SOURCE, keyed by task id) --------
    Case(
        "hook_raises",
        "pod_mutation_hook",
        "executor",
        "pod_mutation_hook raised RuntimeError: the hook refuses hook_raises",
    ),
    Case(
        "hook_returns_a_new_pod",
        "pod_mutation_hook",
        "executor",
        "pod_mutation_hook returned a new V1Pod instead of changing the pod it was given; its return value is "
        "not used",
    ),
    Case(
        "hook_sets_containers_to_text",
        "pod_mutation_hook",
        "executor",
        "after pod_mutation_hook: spec.containers must be a list, not a string ('base')",
    ),
    Case(
        "hook_sets_image_to_a_number",
        "pod_mutation_hook",
        "executor",
        "after pod_mutation_hook: spec.containers[0].image must be a string, not an integer (42)",
    ),
    Case(
        "hook_drops_metadata",
        "pod_mutation_hook",
        "executor",
        "after pod_mutation_hook: metadata.name is missing",
    ),
]

# The operator's hook of the e2e run (written to $AIRFLOW_HOME/config/airflow_local_settings.py) and
# of the unit test: it does harm only to the pods of the hook cases, found by their task id.
HOOK_SOURCE = """
from kubernetes.client import models as k8s


def pod_mutation_hook(pod):
    task_id = (pod.metadata.annotations or {}).get("task_id") if pod.metadata else None
    if task_id == "hook_raises":
        raise RuntimeError("the hook refuses hook_raises")
    if task_id == "hook_returns_a_new_pod":
        return k8s.V1Pod(metadata=pod.metadata, spec=pod.spec)
    if task_id == "hook_sets_containers_to_text":
        pod.spec.containers = "base"
    if task_id == "hook_sets_image_to_a_number":
        pod.spec.containers[0].image = 42
    if task_id == "hook_drops_metadata":
        pod.metadata = None
    return None
"""


@dataclass(frozen=True)
class IdsCase:
    """Ids Airflow allows: the task must run, its pod valid and its ids read back exactly."""

    name: str
    dag_id: str
    task_id: str
    run_id: str
    # Run for real in the e2e suite too. The others are beyond what Airflow itself can run (a
    # 250-character id makes a log file name over 255 bytes) or add nothing the unit level lacks.
    in_e2e: bool = False


# Every character Airflow allows: dag and task ids match `^[\w.-]+$` (Unicode word characters) up
# to 250 characters; a triggered run id matches `[scheduler] allowed_run_id_pattern`,
# `^[A-Za-z0-9_.~:+-]+$`, up to 250 (its column). `..` is refused in run ids.
_ASCII_KEY = "ABCXYZabcxyz0189_.-"
IDS_CASES: list[IdsCase] = [
    IdsCase("ids_every_ascii_character", _ASCII_KEY, "-" + _ASCII_KEY, "A~z:0+9_.-x", in_e2e=True),
    IdsCase(
        "ids_unicode_words",
        "données_日本語_задача",
        "τάσκ_ä_ß_٣",
        "manual:2024-01-01T00:00:00+00:00",
        in_e2e=True,
    ),
    IdsCase("ids_longest", "D" * 249 + ".", "_" * 250, ("r~" * 125)),
    IdsCase("ids_edges", ".", "-", "+"),
    IdsCase("ids_differ_only_in_case", "Dag", "TASK", "Run"),
]


_SETTINGS_PREFIX = "invalid executor settings: [kubernetes_executor] "
_NAMESPACE_RULE = "is not a namespace name (at most 63 lower-case letters, digits and '-', starting and ending with a letter or digit)"
# Settings out of range at start: (option, value as airflow.cfg holds it, the scheduler's exact words).
SETTINGS_CASES: list[tuple[str, str, str]] = [
    (option, value, f"{_SETTINGS_PREFIX}{option}: {words} (got {value!r})")
    for option, value, words in [
        ("worker_pods_creation_batch_size", "0", "Input should be greater than or equal to 1"),
        ("api_qps", "0", "Input should be greater than 0"),
        ("api_qps", "fast", "Input should be a valid number, unable to parse string as a number"),
        ("api_burst", "0", "Input should be greater than or equal to 1"),
        ("pod_creation_max_concurrency", "-1", "Input should be greater than or equal to 0"),
        ("task_publish_max_retries", "-2", "Input should be greater than or equal to -1"),
        ("pod_launch_failure_retries", "-2", "Input should be greater than or equal to -1"),
        ("termination_grace_period_seconds", "-1", "Input should be greater than or equal to 0"),
        ("running_pod_log_lines", "0", "Input should be greater than or equal to 1"),
        ("unschedulable_pod_timeout", "0", "Input should be greater than or equal to 1"),
        ("tcp_keep_idle", "0", "Input should be greater than or equal to 1"),
        ("delete_worker_pods", "perhaps", "Input should be a valid boolean, unable to interpret input"),
        ("delete_option_kwargs", "[1]", "must be a JSON object"),
        (
            "kube_client_request_args",
            "{not json",
            "not JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))",
        ),
        ("namespace", "", f"'' {_NAMESPACE_RULE}"),
        ("namespace", "Airflow_NS", f"'Airflow_NS' {_NAMESPACE_RULE}"),
        ("multi_namespace_mode_namespace_list", "airflow, Team_B", f"'Team_B' {_NAMESPACE_RULE}"),
    ]
]


def counts() -> dict[str, int]:
    """Cases by category, as docs/bad-input.md counts them."""
    out: dict[str, int] = {}
    for case in CASES:
        out[case.category] = out.get(case.category, 0) + 1
    out["ids Airflow allows"] = len(IDS_CASES)
    out["settings at start"] = len(SETTINGS_CASES)
    return out


def write_templates(folder: Path) -> None:
    """Each template case's file, in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for case in CASES:
        if case.template is None:
            continue
        path = folder / f"{case.name}.yaml"
        if isinstance(case.template, bytes):
            path.write_bytes(case.template)
        else:
            path.write_text(case.template)
    os.chmod(folder, 0o755)
