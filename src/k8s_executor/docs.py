"""The configuration reference (docs/configuration.md), generated from the settings models.

The same option entries feed `airflow config list` (provider.py), so the page, the CLI and the
validation can never disagree. Regenerate with:

    python -m k8s_executor.docs > docs/configuration.md
"""

from __future__ import annotations

import typing

from pydantic import BaseModel

from k8s_executor.settings import (
    LOCAL_SECTION,
    SECTION,
    ExecutorSettings,
    LocalKubernetesSettings,
    option_definitions,
)

REGENERATE = "python -m k8s_executor.docs > docs/configuration.md"

SECTIONS: list[tuple[str, type[BaseModel], str]] = [
    (
        SECTION,
        ExecutorSettings,
        "Read by `k8s_executor.KubernetesExecutor` and by the pod side of "
        "`k8s_executor.LocalKubernetesExecutor`. Same names and meanings as the official provider's section; "
        "its `client_factory` and `async_client_factory` are ignored (the client is built from these options).",
    ),
    (LOCAL_SECTION, LocalKubernetesSettings, "Read by `k8s_executor.LocalKubernetesExecutor`."),
]


def _type(model: type[BaseModel], name: str, airflow_type: str) -> str:
    """How the value is written: Airflow knows only scalars, so lists and JSON are strings to it."""
    origin = typing.get_origin(model.model_fields[name].annotation)
    if origin is list:
        return "comma-separated list"
    if origin is dict:
        return "JSON object"
    return airflow_type


def _default(text: str | None) -> str:
    if text is None:
        return "*(none)*"
    return f"`{text}`" if text else "*(empty)*"


def configuration_reference() -> str:
    lines = [
        "# Configuration reference",
        "",
        f"<!-- Generated from src/k8s_executor/settings.py by `{REGENERATE}`; do not edit by hand. -->",
        "",
        "Every option is read from `airflow.cfg` or from the environment variable "
        "`AIRFLOW__<SECTION>__<OPTION>` (upper case), and validated when the scheduler starts: a bad "
        "value stops it with a message naming the option. `airflow config list` shows the same options "
        "with their defaults, except where the official provider is installed too: Airflow keeps one "
        "description per section, that provider's (the last by package name), so our own options "
        "(`api_qps`, `api_burst`, `unschedulable_pod_timeout`) are missing from the list there, and are "
        "still read.",
    ]
    for section, model, intro in SECTIONS:
        lines += [
            "",
            f"## `[{section}]`",
            "",
            intro,
            "",
            "| option | type | default | meaning |",
            "|---|---|---|---|",
        ]
        for name, option in option_definitions(model).items():
            lines.append(
                f"| `{name}` | {_type(model, name, option['type'])} | {_default(option['default'])} | {option['description']} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(configuration_reference(), end="")
