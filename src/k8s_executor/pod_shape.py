"""The shape of pod JSON, checked against the Kubernetes API's own types before anything is built on it.

Every layer of a pod (a template, an `executor_config` override, what a `pod_mutation_hook` left)
is checked here, so that a value of the wrong type fails its task with the field's path and the
layer it came from, instead of a `TypeError` deep in the merge or the API server's JSON decoder
error. The types are the Kubernetes Python client's models; fields the client does not know (an
API newer than the client) are let through for the API server to judge.
"""

from __future__ import annotations

import datetime
import re
from typing import Any

from kubernetes.client import models

# Fields whose values are Kubernetes quantities: strings, or numbers as YAML writes `cpu: 1`.
_QUANTITY_FIELDS = {
    ("V1ResourceRequirements", "limits"),
    ("V1ResourceRequirements", "requests"),
    ("V1VolumeResourceRequirements", "limits"),
    ("V1VolumeResourceRequirements", "requests"),
    ("V1PodSpec", "overhead"),
    ("V1EmptyDirVolumeSource", "size_limit"),
}
# Entries of these lists are found by their name: without one, the merge cannot place them and the
# API server refuses the pod. (A port's or an image pull secret's name is optional.)
_NAMED = {"V1Container", "V1EphemeralContainer", "V1Volume", "V1VolumeMount", "V1EnvVar"}
# The grammar of resource.Quantity (k8s.io/apimachinery): a signed decimal, then a binary or
# decimal SI suffix or a decimal exponent.
_QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?\d+)?$")
_LIST = re.compile(r"^list\[(.+)\]$")
# Client 36 writes `dict[str, T]`; earlier clients (Airflow 2.11's pins) `dict(str, T)`.
_DICT = re.compile(r"^dict[\[(]str, (.+)[\])]$")
# What each scalar type of the client's models is written as. A date a YAML template left unquoted
# is sent as its ISO text by the client, as a string would be.
_SCALARS: dict[str, tuple[str, tuple[type, ...]]] = {
    "str": ("a string", (str, datetime.date)),
    "datetime": ("a string", (str, datetime.date)),
    "date": ("a string", (str, datetime.date)),
    "int": ("an integer", (int,)),
    "float": ("a number", (int, float)),
    "bool": ("true or false", (bool,)),
}
# Shown at most: the first few problems say enough, and a message stays readable.
MAX_PROBLEMS = 3


def is_quantity(value: Any) -> bool:
    """Whether `value` parses as a Kubernetes quantity (`500m`, `1.5`, `512Mi`, `2G`, `1e3`)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    return isinstance(value, str) and bool(_QUANTITY.match(value))


def quantity_problem(value: Any) -> str | None:
    if is_quantity(value):
        return None
    return f"{value!r} is not a quantity (like 500m, 1.5, 512Mi or 2G)"


def problems(pod: Any) -> list[str]:
    """What is wrong with the shape of `pod` (JSON of a V1Pod), each with its path; [] when nothing."""
    found: list[str] = []
    if not isinstance(pod, dict):
        return [f"the pod must be an object, not {_kind(pod)}"]
    # A pod's own fields have not changed since v1: anything else at the top is not a pod (say, a
    # container's fields given as the pod), and would be dropped without a word.
    unknown = sorted(set(pod) - set(models.V1Pod.attribute_map.values()), key=str)
    if unknown:
        found.append(
            f"{', '.join(map(repr, unknown))} {'is not a field' if len(unknown) == 1 else 'are not fields'} "
            f"of a pod (it has apiVersion, kind, metadata, spec)"
        )
    _check(pod, "V1Pod", "", found)
    return found


def describe(found: list[str]) -> str:
    shown = "; ".join(found[:MAX_PROBLEMS])
    more = len(found) - MAX_PROBLEMS
    return shown + (f" (and {more} more)" if more > 0 else "")


def _kind(value: Any) -> str:
    """`value` described for a message: its JSON kind, and a scalar's value."""
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    kinds = {str: "a string", bool: "a boolean", int: "an integer", float: "a number"}
    kind = kinds.get(type(value), f"a {type(value).__name__}")
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    return f"{kind} ({shown})"


def _check(value: Any, type_name: str, path: str, found: list[str], quantity: bool = False) -> None:
    if value is None or len(found) > MAX_PROBLEMS:
        return  # an unset field; or enough said
    where = path or "the pod"
    if quantity and not (m := _DICT.match(type_name)):
        if (problem := quantity_problem(value)) is not None:
            found.append(f"{where}: {problem}")
        return
    if m := _LIST.match(type_name):
        if not isinstance(value, list):
            found.append(f"{where} must be a list, not {_kind(value)}")
            return
        for i, item in enumerate(value):
            _check(item, m.group(1), f"{path}[{i}]", found)
        return
    if m := _DICT.match(type_name):
        if not isinstance(value, dict):
            found.append(f"{where} must be an object, not {_kind(value)}")
            return
        for key, item in value.items():
            _check(item, m.group(1), f"{path}[{key!r}]", found, quantity)
        return
    if type_name in _SCALARS:
        wanted, accepted = _SCALARS[type_name]
        if not isinstance(value, accepted) or (isinstance(value, bool) and bool not in accepted):
            found.append(f"{where} must be {wanted}, not {_kind(value)}")
        return
    model = getattr(models, type_name, None)
    if model is None:
        return  # `object` (an int-or-string), or a type this client does not model
    if not isinstance(value, dict):
        found.append(f"{where} must be an object, not {_kind(value)}")
        return
    if type_name in _NAMED and not (isinstance(value.get("name"), str) and value["name"]):
        found.append(f"{where} has no name")
    fields = {json_key: attr for attr, json_key in model.attribute_map.items()}
    for key, item in value.items():
        attr = fields.get(key)
        if attr is None:
            continue  # a field newer than this client: the API server judges it
        _check(
            item,
            model.openapi_types[attr],
            f"{path}.{key}" if path else key,
            found,
            (type_name, attr) in _QUANTITY_FIELDS,
        )
