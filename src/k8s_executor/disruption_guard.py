"""The disruption guard: the task's command runs under it, and SIGTERM reaches the task only when
the cluster did not disrupt the pod.

A worker told to stop fails its task itself: Airflow 2's `LocalTaskJob` within seconds, whatever
the operator; Airflow 3's task runner through an operator's `on_kill` that ends its work (Bash,
KubernetesPodOperator). That failure spends one of the task's retries before the executor hears
of the pod's end. When the pod carries a `DisruptionTarget` condition (the Eviction API, the
scheduler's preemption, the taint manager, the pod garbage collector, kubelet), the guard does not
pass the signal on: the task runs on until the grace period ends, and a task that finishes
meanwhile keeps its end. Otherwise the runtime kills the container, nothing recorded a failure,
and the executor launches the same try again in a new pod (`ledger.requeue_from`).

Any other stop reaches the task's process group at once, as without the guard: a deletion with no
`DisruptionTarget` (a person's, a tool's: the control plane sets the condition before it deletes),
a stop by kubelet with no condition within `KUBELET_CONDITION_WAIT_S`, kubelet's eviction of a pod
past its own storage limits (a new pod would meet them again), and a pod the guard cannot read (no
token, a refusal, no API server).

It runs the task in a session of its own: the image's init (dumb-init) signals its child's whole
process group, and that signal must not reach the task before the guard has decided.

The pod runs it from its image, where this package is installed as in the scheduler's
(`BOOTSTRAP`, a few lines), or, with `[kubernetes_executor] disruption_guard_source = inline`, as
`python -c <this module's source>` (`source`), for images without the package. So the module uses
the standard library only. `state_mapping` and the ledger read a pod's disruption with the same
rule (`disruption`, `own_limit_eviction`).
"""

from __future__ import annotations

import ast
import contextlib
import functools
import inspect
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any, Literal

SERVICE_ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
POD_NAME_ENV = "K8S_EXECUTOR_POD_NAME"
POD_NAMESPACE_ENV = "K8S_EXECUTOR_POD_NAMESPACE"
# Kubelet writes the DisruptionTarget condition of its own stops (node-pressure eviction, graceful
# node shutdown) through its status manager, shortly after it signals the containers.
KUBELET_CONDITION_WAIT_S = 5.0
READ_TIMEOUT_S = 3.0
FORWARDED = (signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)

# Kubelet's words when it evicts a pod for exceeding its own limits (pkg/kubelet/eviction/helpers.go):
# the task's doing, which a new pod would meet again.
OWN_LIMIT_EVICTIONS = (
    "exceeds the total limit of containers",
    "exceeded its local ephemeral storage limit",
    "Usage of EmptyDir volume",
)


def disruption(status: dict[str, Any]) -> dict[str, Any] | None:
    """The pod's DisruptionTarget condition, when a component of the cluster ended it (Kubernetes
    1.26+)."""
    for condition in status.get("conditions") or []:
        if condition.get("type") == "DisruptionTarget" and condition.get("status") == "True":
            return dict(condition)
    return None


def own_limit_eviction(message: str) -> bool:
    return any(words in message for words in OWN_LIMIT_EVICTIONS)


def disrupted_by(pod: dict[str, Any]) -> str | None:
    """What disrupted the pod (the condition's reason, or kubelet's Evicted), or None."""
    status = pod.get("status") or {}
    condition = disruption(status)
    message = str((condition or {}).get("message") or status.get("message") or "")
    if own_limit_eviction(message):
        return None
    if condition is not None:
        return str(condition.get("reason") or "DisruptionTarget")
    return "Evicted" if status.get("reason") == "Evicted" else None


def read_pod() -> dict[str, Any]:
    """The pod, read with its service account's token, as an in-cluster client would."""
    host = os.environ["KUBERNETES_SERVICE_HOST"]
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    host = f"[{host}]" if ":" in host else host
    with open(f"{SERVICE_ACCOUNT}/token") as token_file:
        token = token_file.read().strip()
    namespace = os.environ[POD_NAMESPACE_ENV]
    name = os.environ[POD_NAME_ENV]
    request = urllib.request.Request(
        f"https://{host}:{port}/api/v1/namespaces/{namespace}/pods/{name}",
        headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
    )
    context = ssl.create_default_context(cafile=f"{SERVICE_ACCOUNT}/ca.crt")
    with urllib.request.urlopen(request, context=context, timeout=READ_TIMEOUT_S) as response:
        pod: dict[str, Any] = json.load(response)
    return pod


def decide(clock: Any = time.monotonic, sleep: Any = time.sleep) -> tuple[bool, str]:
    """On SIGTERM: (hold the signal back, why)."""
    deadline = clock() + KUBELET_CONDITION_WAIT_S
    while True:
        try:
            pod = read_pod()
        except urllib.error.HTTPError as exc:
            return False, f"its pod cannot be read ({exc.code} {exc.reason})"
        except (OSError, ValueError, KeyError) as exc:
            return False, f"its pod cannot be read ({exc})"
        cause = disrupted_by(pod)
        if cause is not None:
            return True, cause
        if (pod.get("metadata") or {}).get("deletionTimestamp"):
            return False, "its pod is being deleted, and not by the cluster (no DisruptionTarget)"
        if clock() >= deadline:
            return False, f"no DisruptionTarget on its pod within {KUBELET_CONDITION_WAIT_S:.0f} s"
        sleep(0.5)


def say(text: str) -> None:
    print(f"[disruption guard] {text}", file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    pending: list[int] = []

    def note(signum: int, _frame: Any) -> None:
        pending.append(signum)

    # Caught before the task starts, so that no signal ends the guard and leaves the task behind;
    # the task's exec gives it the default handlers back.
    for sig in (signal.SIGTERM, *FORWARDED):
        signal.signal(sig, note)
    child = subprocess.Popen(argv, start_new_session=True)
    while (code := child.poll()) is None:
        while pending:
            signum = pending.pop(0)
            if signum == signal.SIGTERM:
                hold, why = decide()
                if hold:
                    say(
                        f"the cluster disrupted this pod ({why}): the task is not told to stop. It "
                        "runs on until the pod's grace period ends, and unless it finishes first, "
                        "the executor launches the same try again in a new pod."
                    )
                    continue
                say(f"passing SIGTERM on to the task: {why}")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signum)
        time.sleep(0.1)
    return code if code >= 0 else 128 - code


class _Bare(ast.NodeTransformer):
    """Docstrings and annotations out: the pod's Python may be older than this one's (3.9 runs
    Airflow 2), and neither is needed to run."""

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        node.returns = None
        for arg in (*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs):
            arg.annotation = None
        return self._without_docstring(node)

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.AST:
        return self._without_docstring(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.AST:
        assert node.value is not None
        return ast.Assign(targets=[node.target], value=node.value, lineno=node.lineno)

    def _without_docstring(self, node: ast.FunctionDef | ast.ClassDef) -> ast.AST:
        self.generic_visit(node)
        first = node.body[0]
        if (
            isinstance(first, ast.Expr)
            and isinstance(first.value, ast.Constant)
            and isinstance(first.value.value, str)
        ):
            node.body = node.body[1:] or [ast.Pass()]
        return node


_NOT_SENT = {
    "ast",
    "functools",
    "inspect",
    "typing",
    "__future__",
    "_Bare",
    "source",
    "guarded",
    "GuardSource",
    "BOOTSTRAP",
    "_NOT_SENT",
}


@functools.cache
def source() -> str:
    """This module as the pod runs it, ending in a call of `main` with the task's command: without
    docstrings, annotations or comments (ast.unparse keeps none), nor what builds it."""
    tree = _Bare().visit(ast.parse(inspect.getsource(sys.modules[__name__])))
    tree.body = [
        node
        for node in tree.body[1:]  # the module's docstring
        if not (isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in _NOT_SENT)
        and not (isinstance(node, ast.Import) and node.names[0].name in _NOT_SENT)
        and not (isinstance(node, ast.ImportFrom) and node.module in _NOT_SENT)
        and not (isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") in _NOT_SENT)
    ]
    return ast.unparse(ast.fix_missing_locations(tree)) + "\nsys.exit(main(sys.argv[1:]))\n"


# Where the pod's guard comes from ([kubernetes_executor] disruption_guard_source).
GuardSource = Literal["image", "inline"]

# The guard of the package in the pod's image. Every byte of a pod is paid for by the API server,
# etcd and each watcher, on every event of the pod: the module's source would be about 4 KB of a
# task's 6 KB pod, this about 0.4 KB. An image whose guard cannot be imported (no package, a
# broken one) runs the task as it is, and says so in the task's log: unguarded beats not run.
BOOTSTRAP = """\
import os, sys
try:
    from k8s_executor.disruption_guard import main
except Exception as exc:
    print(f"[disruption guard] not in this image ({type(exc).__name__}: {exc}): the task runs "
          "without it, and a disruption of its pod may spend one of its retries",
          file=sys.stderr, flush=True)
    os.execvp(sys.argv[1], sys.argv[1:])
sys.exit(main(sys.argv[1:]))
"""


def guarded(command: list[str], source_from: GuardSource = "image") -> list[str]:
    """The container's args: `command` under the guard, from the image or sent whole."""
    return ["python", "-c", BOOTSTRAP if source_from == "image" else source(), *command]
