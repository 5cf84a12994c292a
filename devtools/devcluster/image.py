"""`k8s-executor-dev image build`: the image users deploy, built on this machine.

No image registry is reachable here, so the official `apache/airflow` image cannot be pulled.
A stand-in is built instead, laid out as the official image is: Debian bookworm (mmdebstrap,
from the mirror this machine's apt uses), user `airflow` (uid 50000, group 0) owning
/home/airflow and AIRFLOW_HOME=/opt/airflow, Airflow installed with the repository's pinned
constraints into a virtual environment at /home/airflow/.local (the official image's
VIRTUAL_ENV, so `pip install` as `airflow` works), dumb-init and an entrypoint that runs
commands as the official one does. deploy/Dockerfile is then built on it as written, with
`buildah bud`.

Both images are written as OCI archives under the cache directory, named by a key of what went
into them: the constraints and this module's recipe for the base; the base's key, the
Dockerfile and the files it copies for the project image. A build with nothing changed builds
nothing. Building needs root, `mmdebstrap` and `buildah` (Debian packages), and PyPI.

Where the stand-in differs from the official image: Debian's Python 3.11 (not a Python built
from source in /usr/python); only the `cncf-kubernetes` and `postgres` extras; none of the
database clients and tools the official image carries (git, ssh, sudo, ...); the bytecode pip
compiled is kept (the official image deletes it); its entrypoint runs a first argument that is
a program on PATH (the official one hands it to airflow) and leaves out the Celery broker wait,
`_AIRFLOW_WWW_USER_CREATE` and `_PIP_ADDITIONAL_REQUIREMENTS`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from devcluster import REPOSITORY, build

CONSTRAINTS = REPOSITORY / "constraints-airflow3.txt"
DOCKERFILE = REPOSITORY / "deploy" / "Dockerfile"
# What deploy/Dockerfile copies from the repository: the project image's inputs beside the base.
PROJECT_SOURCES = ("pyproject.toml", "README.md", "src")


def pinned_version(constraints: str, distribution: str) -> str:
    """The version `constraints` pins `distribution` to (names compared as pip does)."""
    wanted = re.sub(r"[-_.]+", "-", distribution).lower()
    for line in constraints.splitlines():
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)", line)
        if match and re.sub(r"[-_.]+", "-", match.group(1)).lower() == wanted:
            return match.group(2)
    raise ValueError(f"{distribution} is not pinned")


AIRFLOW_VERSION = pinned_version(CONSTRAINTS.read_text(), "apache-airflow")
BASE_REPOSITORY = "localhost/airflow-base"
PROJECT_REPOSITORY = "localhost/airflow-k8s-executor"
BASE_IMAGE = f"{BASE_REPOSITORY}:{AIRFLOW_VERSION}"
PROJECT_IMAGE = f"{PROJECT_REPOSITORY}:{AIRFLOW_VERSION}"

# --- the base image's recipe: everything here goes into its cache key ---------------------------

SUITE = "bookworm"
# minbase (Essential packages and apt) plus: Python with venv (ensurepip's wheels), certificates
# for HTTPS, dumb-init (the official image's PID 1), time zones, and libstdc++ (greenlet's wheel
# links it). psycopg2-binary and the other wheels Airflow installs bring their own libraries.
PACKAGES = ("python3", "python3-venv", "ca-certificates", "dumb-init", "tzdata", "libstdc++6")
# Manual pages, translations and documentation are left out (copyright files stay).
DPKG_OPTIONS = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/info/*",
)
AIRFLOW_UID = 50000
USER_HOME = "/home/airflow"
AIRFLOW_HOME = "/opt/airflow"
VENV = f"{USER_HOME}/.local"
# The constraints pin no pip; this is the development environment's.
PIP_VERSION = "26.3"
AIRFLOW_REQUIREMENT = f"apache-airflow[cncf-kubernetes,postgres]=={AIRFLOW_VERSION}"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Run by mmdebstrap once the packages are installed, with /proc, /sys, /dev and the host's
# resolv.conf in the chroot: $1 the root, $2 the constraints file, $3 the certificates this
# machine's pip trusts (a proxy's own authority may be among them), used by pip and removed.
CUSTOMIZE_SCRIPT = f"""\
set -eu
root=$1 constraints=$2 certificates=$3
# The official image's user: airflow, uid {AIRFLOW_UID}, primary group root, also in group root.
echo "airflow:x:{AIRFLOW_UID}:0:airflow:{USER_HOME}:/bin/bash" >> "$root/etc/passwd"
echo "airflow:*:19000:0:99999:7:::" >> "$root/etc/shadow"
sed -i 's/^root:x:0:$/root:x:0:airflow/' "$root/etc/group"
mkdir -p "$root{USER_HOME}" "$root{AIRFLOW_HOME}/dags" "$root{AIRFLOW_HOME}/logs"
cp "$constraints" "$root{USER_HOME}/constraints.txt"
chown -R {AIRFLOW_UID}:0 "$root{USER_HOME}" "$root{AIRFLOW_HOME}"
cp "$certificates" "$root/tmp/build-certificates.crt"
as_airflow() {{
    chroot --userspec={AIRFLOW_UID}:0 "$root" env -i HOME={USER_HOME} LANG=C.UTF-8 \\
        PATH={VENV}/bin:{SYSTEM_PATH} PIP_NO_CACHE_DIR=1 PIP_CERT=/tmp/build-certificates.crt \\
        PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off "$@"
}}
as_airflow python3 -m venv {VENV}
as_airflow pip install "pip=={PIP_VERSION}"
as_airflow pip install --constraint {USER_HOME}/constraints.txt "{AIRFLOW_REQUIREMENT}"
as_airflow pip check
rm "$root/tmp/build-certificates.crt"
# Group 0 may do what the owner may (OpenShift's convention, the official image's), and may add
# an arbitrary uid to /etc/passwd (the entrypoint does).
chmod -R g=u "$root{USER_HOME}" "$root{AIRFLOW_HOME}"
chmod g=u "$root/etc/passwd"
"""

ENTRYPOINT_SCRIPT = r"""#!/usr/bin/env bash
# The entrypoint of the development image (devtools/devcluster/image.py), after the official
# apache/airflow image's. What it runs:
#   (no arguments)       airflow
#   airflow ARGS...      airflow ARGS...
#   bash ARGS...         /bin/bash ARGS...
#   python ARGS...       python ARGS...
#   PROGRAM ARGS...      PROGRAM ARGS..., when PROGRAM is a path or found on PATH
#   ARGS...              airflow ARGS... (`scheduler`, `dags list`, ...)
# Before that: the group must be 0 (uid 50000 is let through with a warning); a uid without a
# passwd entry gets one, home /home/airflow; umask 0002; the scheduler, dag-processor,
# triggerer and api-server wait for the metadata database (`airflow db check`, tried
# CONNECTION_CHECK_MAX_COUNT times, CONNECTION_CHECK_SLEEP_TIME seconds apart; 0 skips it);
# _AIRFLOW_DB_MIGRATE set migrates it.
set -euo pipefail

if [[ "$(id -g)" != 0 ]]; then
    if [[ "$(id -u)" != "${AIRFLOW_UID:-50000}" ]]; then
        echo "ERROR: run this image with group 0 (started with uid $(id -u), gid $(id -g))" >&2
        exit 1
    fi
    echo "WARNING: run this image with group 0 (started with uid $(id -u), gid $(id -g))" >&2
fi
if ! whoami >/dev/null 2>&1; then
    if [[ -w /etc/passwd ]]; then
        echo "default:x:$(id -u):0:default user:${AIRFLOW_USER_HOME_DIR}:/sbin/nologin" >>/etc/passwd
    fi
    export HOME="${AIRFLOW_USER_HOME_DIR}"
fi
umask 0002

subcommand="${1:-}"
if [[ "${subcommand}" == airflow ]]; then
    subcommand="${2:-}"
fi
case "${subcommand}" in
    scheduler | dag-processor | triggerer | api-server)
        tries="${CONNECTION_CHECK_MAX_COUNT:-20}"
        try=0
        while ((tries > 0)); do
            try=$((try + 1))
            if answer="$(airflow db check 2>&1)"; then
                break
            elif ((try >= tries)); then
                echo "ERROR: the metadata database did not answer in ${tries} tries: ${answer}" >&2
                exit 1
            fi
            sleep "${CONNECTION_CHECK_SLEEP_TIME:-3}"
        done
        ;;
esac
if [[ -n "${_AIRFLOW_DB_MIGRATE:-}" ]]; then
    airflow db migrate || true
fi

case "${1:-}" in
    "") exec airflow ;;
    airflow) shift && exec airflow "$@" ;;
    bash) shift && exec /bin/bash "$@" ;;
    python) shift && exec python "$@" ;;
esac
if [[ "$1" == */* ]] || type -P -- "$1" >/dev/null; then
    exec "$@"
fi
exec airflow "$@"
"""


@dataclass(frozen=True)
class ImageConfig:
    """`buildah config` of the base: the official image's user, directories, variables, entrypoint."""

    user: str
    workingdir: str
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    ports: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    labels: tuple[tuple[str, str], ...]

    def flags(self) -> list[str]:
        return [
            f"--user={self.user}",
            f"--workingdir={self.workingdir}",
            f"--entrypoint={json.dumps(list(self.entrypoint))}",
            f"--cmd={json.dumps(list(self.cmd))}",
            *(f"--port={port}" for port in self.ports),
            *(f"--env={name}={value}" for name, value in self.env),
            *(f"--label={name}={value}" for name, value in self.labels),
        ]


def image_config(python_version: str) -> ImageConfig:
    return ImageConfig(
        user=str(AIRFLOW_UID),
        workingdir=AIRFLOW_HOME,
        entrypoint=("/usr/bin/dumb-init", "--", "/entrypoint"),
        cmd=(),
        ports=("8080",),
        env=(
            ("PATH", f"{VENV}/bin:{SYSTEM_PATH}"),
            ("VIRTUAL_ENV", VENV),
            ("AIRFLOW_HOME", AIRFLOW_HOME),
            ("AIRFLOW_USER_HOME_DIR", USER_HOME),
            ("AIRFLOW_UID", str(AIRFLOW_UID)),
            ("AIRFLOW_VERSION", AIRFLOW_VERSION),
            ("AIRFLOW_PYTHON_VERSION", python_version),
            ("AIRFLOW_PIP_VERSION", PIP_VERSION),
            ("AIRFLOW__CORE__LOAD_EXAMPLES", "false"),
            ("DUMB_INIT_SETSID", "1"),
            ("DEBIAN_FRONTEND", "noninteractive"),
            ("LANG", "C.UTF-8"),
            ("LANGUAGE", "C.UTF-8"),
            ("LC_ALL", "C.UTF-8"),
        ),
        labels=(
            ("org.apache.airflow.version", AIRFLOW_VERSION),
            ("org.apache.airflow.uid", str(AIRFLOW_UID)),
            ("org.opencontainers.image.version", AIRFLOW_VERSION),
            (
                "org.opencontainers.image.title",
                "Airflow, a stand-in for apache/airflow built by devcluster/image.py",
            ),
        ),
    )


# Raised when _build_base changes what it does beyond the values above (the files it removes).
RECIPE_REVISION = 2


def base_recipe() -> dict[str, object]:
    """Everything the base image is made of besides the constraints."""
    return {
        "revision": RECIPE_REVISION,
        "suite": SUITE,
        "variant": "minbase",
        "packages": list(PACKAGES),
        "dpkg_options": list(DPKG_OPTIONS),
        "customize": CUSTOMIZE_SCRIPT,
        "entrypoint": ENTRYPOINT_SCRIPT,
        "config": dataclasses.asdict(image_config("(read from the image)")),
    }


def base_key(constraints: bytes, recipe: Mapping[str, object]) -> str:
    digest = hashlib.sha256(b"airflow-base\0")
    digest.update(hashlib.sha256(constraints).digest())
    digest.update(json.dumps(recipe, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def tree_files(root: Path, paths: tuple[str, ...]) -> list[Path]:
    """The files under `paths` (relative to `root`) a build copies, in a stable order; bytecode
    caches and egg-info metadata are left out (pip builds from the sources and writes its own)."""
    found: list[Path] = []
    for name in paths:
        path = root / name
        if path.is_file():
            found.append(path)
            continue
        for directory, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.endswith(".egg-info"))
            found.extend(Path(directory) / f for f in sorted(files) if not f.endswith((".pyc", ".pyo")))
    return found


def project_key(base: str, dockerfile: bytes, root: Path, paths: tuple[str, ...]) -> str:
    digest = hashlib.sha256(b"airflow-k8s-executor\0" + base.encode() + b"\0")
    digest.update(hashlib.sha256(dockerfile).digest())
    for path in tree_files(root, paths):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


def debian_sources(files: Mapping[str, str], suite: str = SUITE) -> list[str]:
    """One-line apt sources for `suite`, its updates and its security suite, component main,
    from apt's configuration files (name -> text, deb822 `.sources` or one-line `.list`)."""
    entries: list[tuple[str, str, list[str], str]] = []  # uri, suite, components, signed-by
    for name, text in files.items():
        if name.endswith(".sources"):
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                key = ""
                for line in stanza.splitlines():
                    if line.startswith("#") or not line.strip():
                        continue
                    if line[0].isspace() and key:
                        fields[key] += " " + line.strip()
                    elif ":" in line:
                        key, value = line.split(":", 1)
                        key = key.strip().lower()
                        fields[key] = value.strip()
                if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes") == "no":
                    continue
                signed_by = fields.get("signed-by", "")
                signed_by = signed_by if signed_by.startswith("/") and " " not in signed_by else ""
                for uri in fields.get("uris", "").split():
                    for entry_suite in fields.get("suites", "").split():
                        entries.append((uri, entry_suite, fields.get("components", "").split(), signed_by))
        elif name.endswith(".list"):
            for line in text.splitlines():
                line = line.split("#", 1)[0].strip()
                options = re.search(r"\[([^]]*)\]", line)
                words = re.sub(r"\[[^]]*\]", " ", line).split()
                if len(words) < 4 or words[0] != "deb":
                    continue
                signed = re.search(r"signed-by=(\S+)", options.group(1)) if options else None
                entries.append((words[1], words[2], words[3:], signed.group(1) if signed else ""))
    lines: list[str] = []
    for uri, entry_suite, components, signed_by in entries:
        if (entry_suite == suite or entry_suite.startswith(suite + "-")) and "main" in components:
            option = f"[signed-by={signed_by}] " if signed_by else ""
            line = f"deb {option}{uri} {entry_suite} main"
            if line not in lines:
                lines.append(line)
    if not any(f" {suite} main" in line for line in lines):
        raise RuntimeError(f"apt's configuration has no Debian {suite} source with component main")
    return lines


def host_certificates() -> Path:
    """The certificate bundle this machine's pip verifies PyPI with."""
    for variable in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        if os.environ.get(variable) and Path(os.environ[variable]).is_file():
            return Path(os.environ[variable])
    return Path("/etc/ssl/certs/ca-certificates.crt")


def host_apt_files() -> dict[str, str]:
    paths = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    return {str(p): p.read_text() for p in paths if p.is_file() and p.name.endswith((".list", ".sources"))}


# --- building -------------------------------------------------------------------------------------


class BuildError(RuntimeError):
    pass


@dataclass(frozen=True)
class Built:
    name: str
    archive: Path
    seconds: float
    cached: bool


def images_dir() -> Path:
    return build.cache_root() / "images"


def base_archive_path(key: str) -> Path:
    return images_dir() / f"airflow-base-{AIRFLOW_VERSION}-{key}.oci.tar"


def project_archive_path(key: str) -> Path:
    return images_dir() / f"airflow-k8s-executor-{AIRFLOW_VERSION}-{key}.oci.tar"


HEARTBEAT_S = 30.0
_WORK_PREFIX = "airflow-image-build-"


class _Steps:
    """Runs a build's commands with their output in a log file, saying every HEARTBEAT_S what
    a long one last printed, so a cold build does not look hung."""

    def __init__(self, log: Path, say: Callable[[str], None], env: Mapping[str, str]) -> None:
        self.log = log
        self.say = say
        self.env = dict(env)

    def run(self, title: str, argv: list[str], cwd: Path | None = None) -> None:
        started = time.monotonic()
        with self.log.open("ab") as out:
            out.write(f"\n$ {shlex.join(argv)}\n".encode())
            out.flush()
            # Its own process group, so that an interrupted build stops every process it started
            # (mmdebstrap waits for its hook; pip runs in the chroot under it).
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=cwd,
                start_new_session=True,
            )
            try:
                while True:
                    try:
                        code = proc.wait(timeout=HEARTBEAT_S)
                        break
                    except subprocess.TimeoutExpired:
                        self.say(f"  ... {title}: {time.monotonic() - started:.0f}s, {self._last_line()}")
            except BaseException:
                _stop_group(proc)
                raise
        if code:
            raise BuildError(f"{title} failed (exit {code}); the end of {self.log}:\n{self._tail(20)}")

    def output(self, argv: list[str]) -> str:
        with self.log.open("ab") as out:
            out.write(f"\n$ {shlex.join(argv)}\n".encode())
        done = subprocess.run(argv, capture_output=True, text=True, env=self.env, stdin=subprocess.DEVNULL)
        with self.log.open("a") as out:
            out.write(done.stdout + done.stderr)
        if done.returncode:
            raise BuildError(f"{shlex.join(argv)} failed (exit {done.returncode}): {done.stderr.strip()}")
        return done.stdout.strip()

    def _tail(self, lines: int) -> str:
        with self.log.open("rb") as f:
            f.seek(max(0, self.log.stat().st_size - 16384))
            return "\n".join(f.read().decode(errors="replace").splitlines()[-lines:])

    def _last_line(self) -> str:
        last = [line for line in self._tail(5).splitlines() if line.strip()]
        return (last[-1].strip()[:110]) if last else "(no output yet)"


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    for sig, wait_s in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def _sigterm_stops_the_build() -> Iterator[None]:
    """SIGTERM raises, so that the build's cleanup runs (Python's default would end it at once)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: FrameType | None) -> None:
        raise BuildError("stopped by SIGTERM")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Buildah:
    """buildah with its storage in the build's own directory, and chroot isolation."""

    def __init__(self, steps: _Steps, work: Path, driver: str) -> None:
        self.steps = steps
        self.work = work
        self.driver = driver

    def argv(self, *args: str) -> list[str]:
        storage = ["--root", str(self.work / "storage"), "--runroot", str(self.work / "run")]
        return ["buildah", *storage, "--storage-driver", self.driver, *args]

    def __call__(self, *args: str) -> str:
        return self.steps.output(self.argv(*args))

    def run(self, title: str, *args: str, cwd: Path | None = None) -> None:
        self.steps.run(title, self.argv(*args), cwd=cwd)

    def remove_everything(self) -> None:
        for args in (("rm", "--all"), ("rmi", "--all", "--force")):
            subprocess.run(self.argv(*args), capture_output=True, env=self.steps.env, check=False)


def _mount_points() -> list[str]:
    points = []
    with open("/proc/self/mountinfo") as info:
        for line in info:
            raw = line.split()[4]
            points.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), raw))
    return points


def _unmount_under(directory: Path) -> None:
    """Unmount whatever is still mounted under `directory`, deepest first."""
    prefix = str(directory.resolve()) + os.sep
    for point in sorted((p for p in _mount_points() if p.startswith(prefix)), key=len, reverse=True):
        if subprocess.run(["umount", point], capture_output=True).returncode:
            subprocess.run(["umount", "--lazy", point], capture_output=True)


def _remove_work_dir(work: Path) -> None:
    _unmount_under(work)
    shutil.rmtree(work, ignore_errors=True)


def _choose_driver(steps: _Steps, work: Path) -> str:
    """overlay when this kernel and filesystem mount it, else vfs (a full copy per layer)."""
    probe = _Buildah(steps, work / "probe", "overlay")
    try:
        container = probe("from", "--quiet", "scratch")
        probe("mount", container)
        probe("umount", container)
        return "overlay"
    except BuildError:
        return "vfs"
    finally:
        probe.remove_everything()
        _remove_work_dir(work / "probe")


def ensure_tools() -> None:
    if os.geteuid() != 0:
        raise BuildError("building the image needs root (mmdebstrap's root mode, buildah's storage)")

    def missing() -> list[str]:
        return [tool for tool in ("mmdebstrap", "buildah") if shutil.which(tool) is None]

    build.apt_install(missing(), "the image")
    if still := missing():
        raise BuildError(f"missing {', '.join(still)}, which apt could not install")
    policy = Path("/etc/containers/policy.json")
    if not policy.exists():
        # buildah refuses to read or write any image without a signature policy.
        policy.parent.mkdir(parents=True, exist_ok=True)
        policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}, indent=4) + "\n")


@contextlib.contextmanager
def _build_lock() -> Iterator[None]:
    images_dir().mkdir(parents=True, exist_ok=True)
    with (images_dir() / ".airflow-image.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        # What a build that was killed left: no build runs now but this one.
        for stale in images_dir().glob(_WORK_PREFIX + "*"):
            _remove_work_dir(stale)
        for partial in images_dir().glob("airflow-*.oci.tar.partial"):
            partial.unlink()
        yield


def _build_base(bud: _Buildah, steps: _Steps, work: Path, key: str, archive: Path) -> None:
    """mmdebstrap into a scratch container's root, configure it, commit and push it."""
    script = work / "customize.sh"
    script.write_text(CUSTOMIZE_SCRIPT)
    container = bud("from", "--quiet", "--name", f"airflow-base-{key}", "scratch")
    root = Path(bud("mount", container))
    arguments = [str(script), '"$1"', str(CONSTRAINTS), str(host_certificates())]
    hook = "sh " + " ".join(a if a == '"$1"' else shlex.quote(a) for a in arguments)
    steps.say(f"  base: Debian {SUITE} ({', '.join(PACKAGES)}), then pip install {AIRFLOW_REQUIREMENT}")
    steps.run(
        "mmdebstrap and pip",
        [
            "mmdebstrap",
            "--mode=root",
            "--variant=minbase",
            "--format=directory",
            f"--include={','.join(PACKAGES)}",
            *(f"--dpkgopt={option}" for option in DPKG_OPTIONS),
            f"--customize-hook={hook}",
            SUITE,
            str(root),
            *debian_sources(host_apt_files()),
        ],
    )
    entrypoint = root / "entrypoint"
    entrypoint.write_text(ENTRYPOINT_SCRIPT)
    entrypoint.chmod(0o755)
    # This machine's name and resolver, copied in for the build; a runtime provides its own.
    for name in ("etc/resolv.conf", "etc/hostname"):
        (root / name).unlink(missing_ok=True)
    # The device nodes mmdebstrap made for its chroot: a runtime mounts its own /dev.
    for entry in (root / "dev").iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    python = steps.output(
        ["chroot", str(root), "python3", "-c", "import platform; print(platform.python_version())"]
    )
    bud("umount", container)
    bud("config", *image_config(python).flags(), f"--label=dev.k8s-executor.recipe={key}", container)
    steps.say("  base: committing and writing the archive")
    bud.run("commit", "commit", "--quiet", "--rm", container, BASE_IMAGE)
    _push(bud, BASE_IMAGE, archive)


def _build_project(bud: _Buildah, steps: _Steps, base_archive: Path, archive: Path) -> None:
    if BASE_IMAGE not in bud("images", "--format", "{{.Name}}:{{.Tag}}").split():
        steps.say(f"  project: loading {BASE_IMAGE} from {base_archive.name}")
        image_id = bud("pull", "--quiet", f"oci-archive:{base_archive}")
        bud("tag", image_id.split()[-1], BASE_IMAGE)
    steps.say(f"  project: buildah bud -f {DOCKERFILE.relative_to(REPOSITORY)} (pip install of this project)")
    bud.run(
        "buildah bud",
        "bud",
        "--isolation=chroot",
        "--network=host",
        "--pull=never",
        # pip in the Dockerfile's RUN trusts what this machine's pip does (a mount, not committed).
        f"--volume={host_certificates()}:/etc/ssl/certs/ca-certificates.crt:ro",
        f"--file={DOCKERFILE}",
        f"--build-arg=AIRFLOW_IMAGE={BASE_IMAGE}",
        f"--tag={PROJECT_IMAGE}",
        str(REPOSITORY),
        cwd=REPOSITORY,
    )
    steps.say("  project: checking `airflow version` and the executor's import as uid 50000")
    container = bud("from", "--quiet", "--pull=never", PROJECT_IMAGE)
    # `airflow version` may print warnings before the version (stdout): its last line is read.
    probe = (
        'echo "uid=$(id -u) gid=$(id -g) home=$HOME"; '
        'echo "airflow=$(airflow version 2>/dev/null | tail -n 1)"; '
        "python -c \"import k8s_executor, sys; print('k8s_executor=imported python=' + sys.version.split()[0])\""
    )
    answer = bud("run", "--isolation=chroot", container, "--", "/entrypoint", "bash", "-c", probe)
    bud("rm", container)
    facts = dict(word.split("=", 1) for word in answer.split() if "=" in word)
    expected = {"uid": str(AIRFLOW_UID), "gid": "0", "airflow": AIRFLOW_VERSION, "k8s_executor": "imported"}
    if any(facts.get(name) != value for name, value in expected.items()):
        raise BuildError(f"the project image answered {answer!r}; expected {expected}")
    steps.say(f"  project: {' '.join(f'{k}={v}' for k, v in facts.items())}")
    _push(bud, PROJECT_IMAGE, archive)


def _push(bud: _Buildah, image: str, archive: Path) -> None:
    partial = archive.with_name(archive.name + ".partial")
    if ":" in str(partial):
        raise BuildError(f"an oci-archive path may not hold ':': {partial}")
    partial.unlink(missing_ok=True)
    bud.run(f"writing {archive.name}", "push", "--quiet", image, f"oci-archive:{partial}:{image}")
    partial.replace(archive)


def _prune(keep: Path, pattern: str) -> None:
    for old in images_dir().glob(pattern):
        if old != keep:
            old.unlink(missing_ok=True)


def build_images(no_cache: bool = False, say: Callable[[str], None] = print) -> tuple[Built, Built]:
    """Build (or find in the cache) the base image and the project image; return both."""
    bkey = base_key(CONSTRAINTS.read_bytes(), base_recipe())
    pkey = project_key(bkey, DOCKERFILE.read_bytes(), REPOSITORY, PROJECT_SOURCES)
    base_archive, project_archive = base_archive_path(bkey), project_archive_path(pkey)
    cached = (Built(BASE_IMAGE, base_archive, 0.0, True), Built(PROJECT_IMAGE, project_archive, 0.0, True))
    if base_archive.exists() and project_archive.exists() and not no_cache:
        return cached
    ensure_tools()
    with _sigterm_stops_the_build(), _build_lock():
        # Another build may have written them while this one waited for the lock.
        base_cached = base_archive.exists() and not no_cache
        project_cached = project_archive.exists() and not no_cache
        if base_cached and project_cached:
            return cached
        work = Path(tempfile.mkdtemp(prefix=_WORK_PREFIX, dir=images_dir()))
        (work / "tmp").mkdir()
        log = images_dir() / "airflow-image-build.log"
        log.write_text("")
        run_dirs = [Path("/run/containers/networks"), Path("/run/containers")]
        created = [d for d in run_dirs if not d.exists()]
        env = dict(os.environ, TMPDIR=str(work / "tmp"), BUILDAH_ISOLATION="chroot")
        steps = _Steps(log, say, env)
        bud: _Buildah | None = None
        try:
            driver = _choose_driver(steps, work)
            say(f"building the images (buildah storage: {driver}; log: {log})")
            bud = _Buildah(steps, work, driver)
            started = time.monotonic()
            if not base_cached:
                say(f"{BASE_IMAGE}: building (first run: several minutes)")
                _build_base(bud, steps, work, bkey, base_archive)
                _prune(base_archive, f"airflow-base-{AIRFLOW_VERSION}-*.oci.tar")
            base = Built(BASE_IMAGE, base_archive, time.monotonic() - started, base_cached)
            started = time.monotonic()
            if not project_cached:
                say(f"{PROJECT_IMAGE}: building deploy/Dockerfile on {BASE_IMAGE}")
                _build_project(bud, steps, base_archive, project_archive)
                _prune(project_archive, f"airflow-k8s-executor-{AIRFLOW_VERSION}-*.oci.tar")
            project = Built(PROJECT_IMAGE, project_archive, time.monotonic() - started, project_cached)
            return base, project
        finally:
            if bud is not None:
                bud.remove_everything()
            _remove_work_dir(work)
            # buildah makes its network directory even for builds that use the host's network.
            for directory in created:
                with contextlib.suppress(OSError):
                    directory.rmdir()


def build_command(no_cache: bool = False) -> int:
    """`k8s-executor-dev image build`."""
    started = time.monotonic()
    try:
        images = build_images(no_cache=no_cache, say=lambda line: print(line, flush=True))
    except BuildError as error:
        print(f"image build failed: {error}")
        return 1
    for image in images:
        size = image.archive.stat().st_size / 1e6
        how = "cached" if image.cached else f"built in {image.seconds:.0f}s"
        print(f"{image.name}  {image.archive}  ({size:.0f} MB, {how})")
    print(f"done in {time.monotonic() - started:.1f}s")
    return 0


# --- containerd -----------------------------------------------------------------------------------


def archive_image_names(archive: Path) -> list[str]:
    """The names an OCI archive's index gives its images (`org.opencontainers.image.ref.name`)."""
    return [name for name, _ in archive_manifests(archive)]


def archive_manifests(archive: Path) -> list[tuple[str, str]]:
    """(name, manifest digest) of each image an OCI archive's index names."""
    with tarfile.open(archive) as tar:
        member = tar.extractfile("index.json")
        if member is None:
            raise ValueError(f"{archive} has no index.json: not an OCI archive")
        index = json.load(member)
    return [
        (name, manifest["digest"])
        for manifest in index.get("manifests", [])
        if (name := manifest.get("annotations", {}).get("org.opencontainers.image.ref.name"))
    ]


def import_into_containerd(archive: Path, address: str, snapshotter: str | None = None) -> None:
    """Import an OCI archive written by `build_images` into the containerd listening at `address`,
    in the namespace kubelet's CRI plugin uses (k8s.io), unpacked into `snapshotter` (containerd's
    default, overlayfs, when None). The image keeps the full name its archive gives it (ctr keeps
    a reference holding '/' or ':' as it is), so a pod names it as `PROJECT_IMAGE` with
    imagePullPolicy IfNotPresent or Never. About 40 s for the project image on this machine:
    ctr decompresses and unpacks every layer."""
    names = archive_image_names(archive)
    if not names:
        raise ValueError(f"{archive} names no image (no org.opencontainers.image.ref.name)")
    ctr = ["ctr", "--address", address, "--namespace", "k8s.io"]
    # A node's image store outlives `cluster down`: an image already there under the archive's
    # digest is not imported again.
    listed = subprocess.run([*ctr, "images", "ls"], capture_output=True, text=True, check=True)
    present = {tuple(line.split()[:3:2]) for line in listed.stdout.splitlines()[1:] if line.strip()}
    if all((name, digest) in present for name, digest in archive_manifests(archive)):
        return
    options = [f"--snapshotter={snapshotter}"] if snapshotter else []
    done = subprocess.run([*ctr, "images", "import", *options, str(archive)], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(
            f"ctr images import {archive} failed: {done.stderr.strip() or done.stdout.strip()}"
        )
    listed = subprocess.run([*ctr, "images", "ls", "--quiet"], capture_output=True, text=True, check=True)
    missing = set(names) - set(listed.stdout.split())
    if missing:
        raise RuntimeError(f"ctr imported {archive} but lists no {', '.join(sorted(missing))}")
