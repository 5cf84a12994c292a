"""Creating and deleting pods: concurrent, rate-limited, retried, never duplicated.

Requests run on small thread pools (creates on one, deletes and label patches of
finished pods on a smaller one) in a process of the launcher's own
(`LauncherProcess`), so the scheduler loop never waits on the network and the
requests never wait on the scheduler loop. A token bucket keeps the executor
within the QPS it was given, as client-go's rate limiter does. Refusals that can
pass (429 with its Retry-After, 5xx, 403 for quota or for RBAC not loaded yet, 401 for a
credential being replaced)
are retried with backoff, up to `task_publish_max_retries` times; an API server
that cannot be reached at all (restarting, upgrading) is waited for until the
task's own deadline, since that is no fault of the task. Because a try's pod
name is fixed, a retry whose first attempt did land meets 409 and counts as
created. Anything else is final, and the API server's own
message goes back to the task.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kubernetes import client
from urllib3.exceptions import HTTPError

from k8s_executor import identity
from k8s_executor.kube_client import (
    connect_in_helper,
    describe_error,
    merge_patch,
    read_body,
    read_pod,
)
from k8s_executor.processes import Channel, Helper, log_in_parent, next_batch
from k8s_executor.settings import ExecutorSettings
from k8s_executor.shapes import DeleteResult, LauncherResult, LaunchResult, PatchResult

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0
# Reconnecting is cheap, and pods should go out as soon as the API server is back.
MAX_RECONNECT_BACKOFF_S = 2.0
# Deletes and label patches of finished pods are never urgent. With as many in flight as a
# launch-tuned create pool (64), a completion burst's deletes crowd out the status writes and
# the scheduler loop that report tasks' ends.
DISPOSAL_CONCURRENCY = 8
# What stops a kept pod's containers: an activeDeadlineSeconds already past (the field may be set,
# or lowered, on a running pod). Kubelet then stops every container with the pod's grace period
# and fails the pod with reason DeadlineExceeded; the pod object stays, for inspection.
STOP_PATCH: dict[str, Any] = {"spec": {"activeDeadlineSeconds": 1}}


# What a request to the API server raises when the server or the network says no: an answer
# (ApiException), a broken connection (urllib3's errors), a socket's error or timeout. Anything
# else is a bug in the executor, never a refusal to retry or a reason to give a task.
REQUEST_ERRORS = (client.ApiException, HTTPError, OSError)


class TokenBucket:
    def __init__(self, qps: float, burst: int) -> None:
        self.rate, self.capacity = qps, float(burst)
        self.tokens, self.stamp = float(burst), time.monotonic()
        self.lock = threading.Lock()

    def take(self) -> None:
        while True:
            with self.lock:
                now = time.monotonic()
                self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                wait = (1 - self.tokens) / self.rate
            time.sleep(wait)


def unreachable(exc: Exception) -> bool:
    """The request never got an answer from the API server."""
    return isinstance(exc, (HTTPError, ConnectionError, TimeoutError)) or (
        isinstance(exc, client.ApiException) and exc.status == 0
    )


def status_of(exc: Exception | None, ok: int) -> int:
    """The HTTP status a request ended with; 0 when the API server never answered."""
    if exc is None:
        return ok
    if isinstance(exc, client.ApiException):
        return exc.status or 0
    return 0


def transient(exc: Exception) -> float | None:
    """Seconds to wait before retrying `exc`, or None when retrying cannot help."""
    if unreachable(exc):
        return 0.0
    if not isinstance(exc, client.ApiException):
        return None
    if exc.status == 429 or (exc.status or 0) >= 500:
        retry_after = (exc.headers or {}).get("Retry-After")
        try:
            return float(retry_after) if retry_after else 0.0
        except ValueError:
            return 0.0
    if exc.status in (401, 403):
        # Quota frees up as pods end; a forbidden create may be an authorizer still loading its
        # cache (for a moment after an API server restart) or a RoleBinding not yet seen; a
        # credential refused even after it was fetched again (credentials.py) may be replaced on
        # disk a moment later. All spend the refusal budget; a credential or right that stays
        # wrong fails the task with the server's words.
        return 0.0
    return None


class CreateDropped(Exception):
    """A create not sent (or not sent again): the scheduler dropped it."""


class Launcher:
    def __init__(
        self,
        api: client.CoreV1Api,
        *,
        concurrency: int,
        qps: float,
        burst: int,
        max_retries: int,
        request_args: dict[str, Any] | None = None,
        delete_options: dict[str, Any] | None = None,
    ) -> None:
        self.api = api
        self.bucket = TokenBucket(qps, burst)
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="k8s-launch")
        self.disposal_pool = ThreadPoolExecutor(
            max_workers=min(concurrency, DISPOSAL_CONCURRENCY), thread_name_prefix="k8s-dispose"
        )
        self.max_retries = max_retries
        self.request_args = request_args or {}
        self.delete_options = delete_options or {}
        self.results: queue.SimpleQueue[LauncherResult] = queue.SimpleQueue()
        self.stopping = threading.Event()
        # Creates whose try is no longer wanted: not sent, or not sent again.
        self.dropped: set[tuple[str, str]] = set()

    def _with_retries(
        self, call: Callable[[], Any], deadline: float, dropped: Callable[[], bool] = lambda: False
    ) -> tuple[Any, Exception | None, int]:
        attempt = refusals = 0
        while True:
            if dropped():
                return None, CreateDropped("its try is no longer wanted"), attempt
            attempt += 1
            self.bucket.take()
            try:
                return call(), None, attempt
            except REQUEST_ERRORS as exc:
                wait = transient(exc)
                lost = unreachable(exc)
                refusals += not lost
                retries_left = self.max_retries < 0 or refusals <= self.max_retries
                if wait is None or not retries_left or self.stopping.is_set():
                    return None, exc, attempt
                ceiling = MAX_RECONNECT_BACKOFF_S if lost else MAX_BACKOFF_S
                backoff = max(wait, min(ceiling, 0.5 * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0))
                backoff = min(backoff, max(0.0, deadline - time.monotonic()))
                if time.monotonic() + backoff > deadline:
                    return None, exc, attempt
                time.sleep(backoff)

    def _submit(self, pool: ThreadPoolExecutor, fn: Callable[..., None], *args: Any) -> None:
        pool.submit(self._logged, fn, *args)

    @staticmethod
    def _logged(fn: Callable[..., None], *args: Any) -> None:
        # A future nobody reads would swallow the error: say it where an operator looks.
        try:
            fn(*args)
        except Exception:
            log.exception("%s%s failed", fn.__name__.strip("_"), args[:2])

    def create(self, pod: dict[str, Any], deadline: float) -> None:
        """Create `pod` in the background; its LaunchResult arrives on `results`."""
        self._submit(self.pool, self._create, pod, deadline)

    def _create(self, pod: dict[str, Any], deadline: float) -> None:
        namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        started = time.monotonic()
        try:
            _, exc, attempts = self._with_retries(
                lambda: read_body(
                    self.api.create_namespaced_pod(
                        namespace, pod, _preload_content=False, **self.request_args
                    )
                ),
                deadline,
                dropped=lambda: (namespace, name) in self.dropped,
            )
        except Exception as bug:
            # A bug, not the API server's answer: its traceback goes to the scheduler's log once,
            # and only this task fails, saying where to look.
            log.exception("creating pod %s/%s failed inside the executor", namespace, name)
            self.results.put(
                LaunchResult(
                    namespace,
                    name,
                    False,
                    error=f"the executor failed while creating it ({type(bug).__name__}: {bug}; "
                    "the traceback is in the scheduler's log)",
                    status=0,
                    duration_s=time.monotonic() - started,
                )
            )
            return
        finally:
            self.dropped.discard((namespace, name))
        ok = exc is None or (isinstance(exc, client.ApiException) and exc.status == 409)
        error = "" if ok or exc is None else describe_error(exc)
        name_taken = exc is not None and ok and not self._is_own(pod, deadline)
        if name_taken:
            ok, error = False, "a pod of an earlier launch of this try has its name"
        self.results.put(
            LaunchResult(
                namespace,
                name,
                ok,
                error=error,
                already_existed=exc is not None and ok,
                name_taken=name_taken,
                attempts=attempts,
                status=status_of(exc, 201),
                duration_s=time.monotonic() - started,
            )
        )

    def _is_own(self, pod: dict[str, Any], deadline: float) -> bool:
        """After a 409: whether the pod of that name is this launch's (an earlier attempt landed)."""
        meta = pod["metadata"]
        launch = (meta.get("annotations") or {}).get(identity.LAUNCH_ANNOTATION)
        if not launch:
            return True
        found, _, _ = self._with_retries(
            lambda: read_pod(self.api, meta["namespace"], meta["name"]), deadline
        )
        if found is None:
            return False  # gone since, or unreadable: a new name is the safe way on
        existing = (found["metadata"].get("annotations") or {}).get(identity.LAUNCH_ANNOTATION)
        return bool(existing == launch)

    def drop(self, namespace: str, name: str) -> None:
        """Send the create of this pod no more (if it has not landed, it never will from here)."""
        self.dropped.add((namespace, name))

    def delete(self, namespace: str, name: str, resource_version: str | None = None) -> None:
        """Delete a pod; with `resource_version`, only if it is unchanged since (else 409)."""
        self._submit(self.disposal_pool, self._delete, namespace, name, resource_version)

    def _delete(self, namespace: str, name: str, resource_version: str | None = None) -> None:
        body = dict(self.delete_options)
        if resource_version:
            body["preconditions"] = {"resourceVersion": resource_version}
        _, exc, _ = self._with_retries(
            lambda: read_body(
                self.api.delete_namespaced_pod(
                    name,
                    namespace,
                    body=body,
                    _preload_content=False,
                    **self.request_args,
                )
            ),
            time.monotonic() + 120,
        )
        self.results.put(DeleteResult(namespace, name, status_of(exc, 200)))
        status = exc.status if isinstance(exc, client.ApiException) else None
        if resource_version and status == 409:
            log.info("pod %s/%s changed since it was seen; not deleted", namespace, name)
            return
        if exc is not None and status != 404:
            raise exc

    def patch_labels(
        self, namespace: str, name: str, labels: dict[str, str | None], stop: bool = False
    ) -> None:
        """Set (None: remove) labels of a pod, and with `stop` end its containers (see
        `STOP_PATCH`); its PatchResult arrives on `results`."""
        self._submit(self.disposal_pool, self._patch_labels, namespace, name, labels, stop)

    def _patch_labels(self, namespace: str, name: str, labels: dict[str, str | None], stop: bool) -> None:
        body: dict[str, Any] = {"metadata": {"labels": labels}, **(STOP_PATCH if stop else {})}
        _, exc, _ = self._with_retries(
            lambda: read_body(
                merge_patch(
                    self.api.api_client,
                    f"/api/v1/namespaces/{namespace}/pods/{name}",
                    body,
                    **self.request_args,
                )
            ),
            time.monotonic() + 120,
        )
        self.results.put(PatchResult(namespace, name, status_of(exc, 200)))
        if exc is not None and not (isinstance(exc, client.ApiException) and exc.status == 404):
            raise exc

    def shutdown(self, wait: bool) -> None:
        """Stop retrying; with `wait`, requests already handed over are still sent, once each."""
        self.stopping.set()
        for pool in (self.pool, self.disposal_pool):
            pool.shutdown(wait=wait, cancel_futures=not wait)


class LauncherProcess:
    """The launcher in a process of its own, with the same calls as `Launcher`.

    During a burst Airflow's scheduler loop keeps one core busy in Python; launcher threads
    inside that process wait for its GIL at every socket read (about 10% of a burst's rate).
    In a process of its own (see processes.py), they wait only for the
    network and the CPU. Requests after `shutdown` are refused here, and left to the next
    scheduler. Creates not yet answered are kept here, so a launcher process that dies is
    restarted and they are sent again; a create whose first attempt did land meets 409 and
    counts as created.
    """

    def __init__(
        self, settings: ExecutorSettings, name: str = "k8s-executor-launcher", **options: Any
    ) -> None:
        # The process builds its own client from the settings: credentials do not cross processes.
        self.settings = settings
        self.name = name
        self.options = options
        self.results: queue.SimpleQueue[LauncherResult] = queue.SimpleQueue()
        self.unanswered: dict[tuple[str, str], tuple[dict[str, Any], float]] = {}
        # Label patches not yet answered (an adoption's relabelling among them), sent again too.
        self.unanswered_patches: dict[tuple[str, str], tuple[dict[str, str | None], bool]] = {}
        self.lock = threading.Lock()
        self.closed = False
        self.restarts = 0
        # A dead process whose last answers are still being read, and what it had not answered.
        self._draining: tuple[Helper, set[tuple[str, str]], set[tuple[str, str]]] | None = None
        self._start()

    def _start(self) -> None:
        # Whether anything was sent to this process: one that was sent nothing has nothing to finish.
        self.sent_anything = False
        self.process = Helper(
            "k8s_executor.launching:serve",
            {"settings": self.settings, "options": self.options},
            name=self.name,
            on_message=self._receive,
        )

    def _receive(self, result: Any) -> None:
        if isinstance(result, logging.LogRecord):
            log_in_parent(result)
            return
        if isinstance(result, LaunchResult):
            with self.lock:
                self.unanswered.pop((result.namespace, result.name), None)
        if isinstance(result, PatchResult):
            with self.lock:
                self.unanswered_patches.pop((result.namespace, result.name), None)
        self.results.put(result)

    def _send(self, verb: str, *args: Any) -> None:
        """Under `lock`: what `shutdown` sees sent, or refused, is all that is sent."""
        if self.closed:
            log.info("launcher closed: %s%s left to the next scheduler", verb, args[:2])
            return
        self.sent_anything = True
        self.process.send((verb, args))

    def create(self, pod: dict[str, Any], deadline: float) -> None:
        # Recorded and sent under the lock: to the process that dies (then sent again once its
        # last answers are in) or to its successor, never lost between the two.
        with self.lock:
            self.unanswered[(pod["metadata"]["namespace"], pod["metadata"]["name"])] = (pod, deadline)
            self._send("create", pod, deadline)

    def delete(self, namespace: str, name: str, resource_version: str | None = None) -> None:
        with self.lock:
            self._send("delete", namespace, name, resource_version)

    def patch_labels(
        self, namespace: str, name: str, labels: dict[str, str | None], stop: bool = False
    ) -> None:
        with self.lock:
            self.unanswered_patches[(namespace, name)] = (labels, stop)
            self._send("patch_labels", namespace, name, labels, stop)

    def drop(self, namespace: str, name: str) -> None:
        with self.lock:
            self.unanswered.pop((namespace, name), None)
            self._send("drop", namespace, name)

    def check(self) -> bool:
        """Restart a launcher process that died, and send its unanswered creates and patches again
        once the dead one's last answers are in; whether it restarted one. Nothing here waits (on
        a busy machine, waiting for them would hold Airflow's loop): the dead process's own reader
        hands them on, and a later check sends what they left unanswered."""
        if self._draining is not None:
            dead, creates, patches = self._draining
            if not dead.settled():
                return False
            self._draining = None
            with self.lock:
                pending = [self.unanswered[key] for key in creates if key in self.unanswered]
                patched = [
                    (key, self.unanswered_patches[key]) for key in patches if key in self.unanswered_patches
                ]
                for pod, deadline in pending:
                    self._send("create", pod, deadline)
                for (namespace, name), (labels, stop) in patched:
                    self._send("patch_labels", namespace, name, labels, stop)
            return False
        if self.closed or self.process.is_alive():
            return False
        log.error("launcher process died (%s); restarting", self.process.how_it_ended)
        self.process.forget()
        with self.lock:
            # What the dead process had not answered: what is sent from now on goes to the new one.
            self._draining = (self.process, set(self.unanswered), set(self.unanswered_patches))
            self.restarts += 1
            self._start()
        self.check()
        return True

    def shutdown(self, wait: bool) -> None:
        """Stop retrying; with `wait`, requests already handed over are still sent, once each."""
        if self.closed:
            return
        if self._draining is not None:
            # A process that died just before: what it left unanswered goes to its successor first.
            self._draining[0].join(timeout=5)
            self.check()
        with self.lock:
            self.closed = True
            untouched = not self.sent_anything
        if untouched:
            # Nothing to send or answer: a process just restarted (after a fault, say) is not
            # waited for while it starts up (seconds, on a busy machine) only to be told to stop.
            self.process.kill()
            self.process.join(timeout=5)
            return
        self.process.send(("shutdown", (wait,)))
        self.process.join(timeout=60 if wait else 5)
        if self.process.is_alive():
            self.process.kill()
            # The last results have been handed on once the child's end of the pipe is read.
            self.process.join(timeout=5)


def serve(channel: Channel, settings: ExecutorSettings, options: dict[str, Any]) -> None:
    """The launcher process (see processes.py): requests in, results out, until told to shut down."""
    launcher = Launcher(client.CoreV1Api(connect_in_helper(settings)), **options)

    def forward() -> None:
        while True:
            batch = next_batch(launcher.results)
            # Whatever answered meanwhile goes up in one write (see processes.Helper._write).
            ending = None in batch
            channel.put_many(batch[: batch.index(None)] if ending else batch)
            if ending:
                return

    forwarder = threading.Thread(target=forward, name="k8s-launch-forward")
    forwarder.start()
    while True:
        verb, args = channel.get()
        if verb == "shutdown":
            launcher.shutdown(wait=args[0])
            break
        getattr(launcher, verb)(*args)
    launcher.results.put(None)  # type: ignore[arg-type]
    forwarder.join()
