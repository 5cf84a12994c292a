"""The production wheel holds the executor and nothing of its development tooling."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]


def test_the_wheel_has_one_top_level_package_and_only_the_executors_dependencies(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPOSITORY)],
        check=True,
        capture_output=True,
    )
    [wheel] = tmp_path.glob("airflow_k8s_executor-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        [metadata] = [n for n in names if n.endswith(".dist-info/METADATA")]
        info = Parser().parsestr(archive.read(metadata).decode())
    top = {name.split("/")[0] for name in names if ".dist-info/" not in name}
    assert top == {"k8s_executor"}
    required = {
        req.split(";")[0].split(">")[0].split("=")[0].split("[")[0].strip()
        for req in info.get_all("Requires-Dist") or []
        if "extra ==" not in req
    }
    assert required == {"apache-airflow", "kubernetes", "pydantic", "PyYAML"}
    assert not [
        n for n in names if n.endswith("entry_points.txt") and b"devcluster" in zipfile.ZipFile(wheel).read(n)
    ]


def test_every_module_of_the_executor_imports_without_the_development_distribution() -> None:
    """The CLI commands Airflow loads included; `devcluster` made unimportable."""
    script = """
import importlib, pkgutil, sys
sys.modules["devcluster"] = None
import k8s_executor
for module in pkgutil.walk_packages(k8s_executor.__path__, "k8s_executor."):
    importlib.import_module(module.name)
from k8s_executor.commands import cli_commands
assert [c.name for c in cli_commands()] == ["kubernetes"]
from k8s_executor import KubernetesExecutor, LocalKubernetesExecutor
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.stdout.strip() == "ok", done.stderr[-3000:]
