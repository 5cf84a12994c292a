"""docs/configuration.md is generated from the settings models and must not drift from them."""

from __future__ import annotations

from pathlib import Path

from k8s_executor.docs import REGENERATE, configuration_reference
from k8s_executor.settings import ExecutorSettings, LocalKubernetesSettings

PAGE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_configuration_reference_matches_the_settings() -> None:
    assert PAGE.read_text() == configuration_reference(), (
        f"docs/configuration.md is out of date with src/k8s_executor/settings.py; regenerate it: {REGENERATE}"
    )


def test_every_option_has_a_row() -> None:
    page = configuration_reference()
    for model in (ExecutorSettings, LocalKubernetesSettings):
        for name in model.model_fields:
            assert f"| `{name}` |" in page
