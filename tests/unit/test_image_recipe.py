"""devcluster/image.py's pure parts: the versions, apt sources and cache keys it derives, and the
image's entrypoint run against stand-in programs (building the image itself takes minutes)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from devcluster import image


def test_pinned_version_compares_names_as_pip_does() -> None:
    constraints = "# pins\nApache_Airflow==3.3.2\napache-airflow-core==3.3.2 ; python_version>'3'\n"
    assert image.pinned_version(constraints, "apache-airflow") == "3.3.2"
    assert image.pinned_version(constraints, "apache.airflow.core") == "3.3.2"
    with pytest.raises(ValueError):
        image.pinned_version(constraints, "apache-airflow-providers-cncf-kubernetes")


def test_the_repository_pins_the_airflow_the_images_are_named_for() -> None:
    assert f"localhost/airflow-base:{image.AIRFLOW_VERSION}" == image.BASE_IMAGE
    assert f"localhost/airflow-k8s-executor:{image.AIRFLOW_VERSION}" == image.PROJECT_IMAGE
    assert f"=={image.AIRFLOW_VERSION}" in image.AIRFLOW_REQUIREMENT


def test_debian_sources_from_deb822_and_one_line_files() -> None:
    files = {
        "/etc/apt/sources.list.d/debian.sources": (
            "Types: deb\n# a comment\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
            "Components: main contrib\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
            "Types: deb-src\nURIs: http://mirror.example/debian\nSuites: bookworm\nComponents: main\n\n"
            "Types: deb\nURIs: http://other.example/debian\nSuites: bookworm\nComponents: main\nEnabled: no\n"
        ),
        "/etc/apt/sources.list.d/node.sources": (
            "Types: deb\nURIs: https://node.example/\nSuites: nodistro\nComponents: main\n"
        ),
        "/etc/apt/sources.list": "deb [arch=amd64] http://security.example/debian-security bookworm-security main\n",
    }
    assert image.debian_sources(files) == [
        "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://mirror.example/debian bookworm main",
        "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://mirror.example/debian"
        " bookworm-updates main",
        "deb http://security.example/debian-security bookworm-security main",
    ]
    with pytest.raises(RuntimeError, match="no Debian bookworm source"):
        image.debian_sources({"/etc/apt/sources.list": "deb http://mirror.example/debian trixie main\n"})


def test_base_key_follows_the_constraints_and_the_recipe() -> None:
    recipe = image.base_recipe()
    key = image.base_key(b"apache-airflow==3.3.2\n", recipe)
    assert key == image.base_key(b"apache-airflow==3.3.2\n", image.base_recipe())
    assert key != image.base_key(b"apache-airflow==3.3.3\n", recipe)
    assert key != image.base_key(b"apache-airflow==3.3.2\n", {**recipe, "packages": ["python3"]})


def test_project_key_follows_the_sources_but_not_their_bytecode_or_egg_info(tmp_path: Path) -> None:
    (tmp_path / "src" / "pkg" / "__pycache__").mkdir(parents=True)
    (tmp_path / "src" / "pkg.egg-info").mkdir()
    (tmp_path / "pyproject.toml").write_text("[project]\n")
    module = tmp_path / "src" / "pkg" / "__init__.py"
    module.write_text("A = 1\n")
    sources = ("pyproject.toml", "src")

    def key(base: str = "base", dockerfile: bytes = b"FROM x\n") -> str:
        return image.project_key(base, dockerfile, tmp_path, sources)

    first = key()
    (tmp_path / "src" / "pkg" / "__pycache__" / "__init__.cpython-311.pyc").write_bytes(b"\0")
    (tmp_path / "src" / "pkg.egg-info" / "SOURCES.txt").write_text("src/pkg/__init__.py\n")
    assert key() == first
    assert key(base="other base") != first
    assert key(dockerfile=b"FROM y\n") != first
    module.write_text("A = 2\n")
    assert key() != first


@pytest.fixture
def entrypoint(tmp_path: Path) -> Path:
    """The image's entrypoint, with `airflow` and `python` stand-ins first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("airflow", "python"):
        program = bin_dir / name
        program.write_text(
            f'#!/bin/sh\necho "{name} $*"\n'
            'if [ "$1 $2" = "db check" ]; then exit "${DB_CHECK_EXIT:-0}"; fi\n'
        )
        program.chmod(0o755)
    script = tmp_path / "entrypoint"
    script.write_text(image.ENTRYPOINT_SCRIPT)
    script.chmod(0o755)
    return script


def run_entrypoint(script: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {
        "PATH": f"{script.parent / 'bin'}:/usr/bin:/bin",
        "AIRFLOW_UID": str(os.getuid()),  # lets a test run with a group other than 0
        "AIRFLOW_USER_HOME_DIR": str(script.parent),
        "CONNECTION_CHECK_SLEEP_TIME": "0",
        **env,
    }
    return subprocess.run([str(script), *args], capture_output=True, text=True, env=environment, timeout=30)


@pytest.mark.parametrize(
    ("args", "ran"),
    [
        ((), "airflow"),
        (("airflow", "tasks", "list"), "airflow tasks list"),
        (("version",), "airflow version"),
        (("python", "-c", "pass"), "python -c pass"),
        (("bash", "-c", "echo from bash"), "from bash"),
        (("echo", "a program"), "a program"),
        (("/bin/echo", "a path"), "a path"),
    ],
)
def test_entrypoint_runs_airflow_or_the_program_given(
    entrypoint: Path, args: tuple[str, ...], ran: str
) -> None:
    done = run_entrypoint(entrypoint, *args)
    assert (done.returncode, done.stdout.strip()) == (0, ran), done.stderr


def test_entrypoint_waits_for_the_database_before_the_scheduler(entrypoint: Path) -> None:
    done = run_entrypoint(entrypoint, "airflow", "scheduler")
    assert (done.returncode, done.stdout) == (0, "airflow scheduler\n")
    refused = run_entrypoint(entrypoint, "scheduler", CONNECTION_CHECK_MAX_COUNT="2", DB_CHECK_EXIT="1")
    assert refused.returncode == 1
    assert "did not answer in 2 tries" in refused.stderr
    skipped = run_entrypoint(entrypoint, "scheduler", CONNECTION_CHECK_MAX_COUNT="0", DB_CHECK_EXIT="1")
    assert (skipped.returncode, skipped.stdout) == (0, "airflow scheduler\n")
