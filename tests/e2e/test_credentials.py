"""The scheduler with the credentials production users give it: a ServiceAccount token in a
file that is rotated mid-run, a static token, and an exec credential plugin (EKS, GKE, AKS)."""

from __future__ import annotations

import collections
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from devcluster import control_plane
from devcluster.airflow_stack import AirflowStack
from kubernetes import client

from tests.e2e.conftest import airflow_stack
from tests.helpers import audit_entries, pods_created, wait_for
from tests.least_privilege import grant_service_account, mint_token, user_kubeconfig

pytestmark = pytest.mark.e2e
ACCOUNT = "airflow-scheduler"
DAG = "e2e_credentials"
TASKS = 20


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("credentials")


@pytest.fixture(scope="module")
def stack(
    cluster: control_plane.ClusterState, core: client.CoreV1Api, workdir: Path
) -> Iterator[AirflowStack]:
    """Airflow whose executor reads a ServiceAccount token from a file, as a pod's would."""

    def token_file_kubeconfig(namespace: str) -> Path:
        grant_service_account(core.api_client, namespace, ACCOUNT)
        write_atomically(workdir / "token", mint_token(core.api_client, namespace, ACCOUNT))
        return user_kubeconfig(
            cluster, workdir / "token-file.kubeconfig", {"tokenFile": str(workdir / "token")}
        )

    with airflow_stack(cluster, core, kubeconfig_for=token_file_kubeconfig) as airflow:
        airflow.wait_for_dag(DAG)
        yield airflow


def write_atomically(path: Path, text: str) -> None:
    staged = path.with_suffix(".new")
    staged.write_text(text)
    staged.rename(path)


def restart_scheduler(stack: AirflowStack, kubeconfig: Path) -> None:
    stack.kill_component("scheduler", signal.SIGTERM)
    stack.extra_env["AIRFLOW__KUBERNETES_EXECUTOR__CONFIG_FILE"] = str(kubeconfig)
    stack.start_component("scheduler")


def scheduler_log(stack: AirflowStack) -> str:
    return (stack.home / "scheduler.log").read_text(errors="replace")


def run_and_check(core: client.CoreV1Api, stack: AirflowStack, run_id: str, during: object = None) -> None:
    """Run the DAG: 19 tasks succeed, task 19 fails with its own error, and each try got one pod."""
    stack.trigger(DAG, run_id)
    if callable(during):
        during()
    stack.wait_for_run(DAG, run_id, timeout=600)
    states = stack.task_states(DAG, run_id)
    expected = {("work", i): ("failed" if i == 19 else "success", 1) for i in range(TASKS)}
    assert states == expected, stack.explain_run(DAG, run_id)
    assert "task 19 fails on purpose" in stack.task_log(DAG, run_id, "work", map_index=19)
    pods = core.list_namespaced_pod(stack.namespace, label_selector=f"run_id={run_id}").items
    created = collections.Counter(
        pods_created(audit_entries(core, control_plane.audit_log(stack.cluster), stack.namespace))
    )
    mine = {p.metadata.name for p in pods}
    assert len(mine) == TASKS
    # One accepted create per try, counted by the API server: no try got two pods.
    assert {name: created[name] for name in mine} == dict.fromkeys(mine, 1)


def test_a_token_file_rotated_mid_run(core: client.CoreV1Api, stack: AirflowStack, workdir: Path) -> None:
    """The account is deleted and made again while pods run: the old token stops working at once,
    and a new one is written where the processes read it."""
    run_id = f"rotate-{uuid.uuid4().hex[:6]}"

    def rotate() -> None:
        wait_for(
            lambda: core.list_namespaced_pod(stack.namespace, label_selector=f"run_id={run_id}").items,
            "the first pods",
            timeout=240,
            interval=0.5,
        )
        core.delete_namespaced_service_account(ACCOUNT, stack.namespace)
        wait_for(
            lambda: (
                ACCOUNT
                not in {a.metadata.name for a in core.list_namespaced_service_account(stack.namespace).items}
            ),
            "the account gone",
        )
        grant_service_account(core.api_client, stack.namespace, ACCOUNT)
        write_atomically(workdir / "token", mint_token(core.api_client, stack.namespace, ACCOUNT))

    run_and_check(core, stack, run_id, during=rotate)
    # The launcher and the watcher each take the new token within a minute (at a 401, or when they
    # read the file again) and say so, once.
    said = wait_for(
        lambda: (
            sum(
                f"token file {workdir / 'token'}" in line
                and ("holds a new credential" in line or "a new one was fetched" in line)
                for line in scheduler_log(stack).splitlines()
            )
            >= 2
        ),
        "the scheduler's processes to take the new token",
        timeout=90,
        interval=1,
    )
    assert said
    log = scheduler_log(stack)
    assert "Traceback" not in log, log[-5000:]
    # Work after the rotation goes on with the new token.
    run_and_check(core, stack, f"after-{uuid.uuid4().hex[:6]}")


def test_a_static_token(core: client.CoreV1Api, stack: AirflowStack, workdir: Path) -> None:
    token = mint_token(core.api_client, stack.namespace, ACCOUNT)
    restart_scheduler(stack, user_kubeconfig(stack.cluster, workdir / "static.kubeconfig", {"token": token}))
    run_and_check(core, stack, f"static-{uuid.uuid4().hex[:6]}")


PLUGIN = """\
    #!{python}
    import datetime, json, os, sys, time
    with open({calls!r}, "a") as calls:
        calls.write(f"{{os.getppid()}} {{time.time()}}\\n")
    if {fail!r}:
        print("the token service is unreachable", file=sys.stderr)
        sys.exit(1)
    expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds={lifetime})
    print(json.dumps({{
        "apiVersion": "client.authentication.k8s.io/v1",
        "kind": "ExecCredential",
        "status": {{
            "token": open({token!r}).read(),
            "expirationTimestamp": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }},
    }}))
"""


def exec_kubeconfig(stack: AirflowStack, workdir: Path, name: str, fail: bool = False) -> tuple[Path, Path]:
    calls = workdir / f"{name}.calls"
    script = workdir / f"{name}-plugin"
    script.write_text(
        textwrap.dedent(PLUGIN).format(
            python=sys.executable, calls=str(calls), fail=fail, lifetime=15, token=str(workdir / "token")
        )
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    user = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": str(script),
            "args": ["get-token"],
        }
    }
    return user_kubeconfig(stack.cluster, workdir / f"{name}.kubeconfig", user), calls


def test_an_exec_plugin_is_run_again_when_its_credential_expires(
    core: client.CoreV1Api, stack: AirflowStack, workdir: Path
) -> None:
    kubeconfig, calls = exec_kubeconfig(stack, workdir, "expiring")
    restart_scheduler(stack, kubeconfig)
    run_and_check(core, stack, f"exec-{uuid.uuid4().hex[:6]}")
    time.sleep(16)
    run_and_check(core, stack, f"exec-again-{uuid.uuid4().hex[:6]}")
    by_process = collections.Counter(line.split()[0] for line in calls.read_text().splitlines())
    # The scheduler, its launcher and its watcher each run it; a credential living 15 s is fetched
    # again by a process that outlived it.
    assert len(by_process) >= 3 and max(by_process.values()) >= 2, by_process


def test_an_exec_plugin_that_fails_stops_the_scheduler_at_start(stack: AirflowStack, workdir: Path) -> None:
    kubeconfig, _ = exec_kubeconfig(stack, workdir, "failing", fail=True)
    env = {**stack._process_env(), "AIRFLOW__KUBERNETES_EXECUTOR__CONFIG_FILE": str(kubeconfig)}
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    done = subprocess.run(
        [sys.executable, "-m", "airflow", "scheduler"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode != 0
    message = f"exec plugin `{workdir / 'failing-plugin'} get-token` exited with 1: the token service is unreachable"
    assert message in done.stdout + done.stderr, (done.stdout + done.stderr)[-5000:]
