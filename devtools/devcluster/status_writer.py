"""Writing pod status as kubelet's status manager does: the newest status of each pod, until it lands.

A status write can meet an API server that is restarting. Dropping it would
leave the pod Running for ever in the API server while its process has long
ended; so the newest status of each pod is kept until a write succeeds, and
retried. One write per pod is in flight at a time, so an older status never
lands after a newer one; statuses that pile up while one is in flight collapse
into the newest.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kubernetes.client.rest import ApiException

log = logging.getLogger("node-agent")

RETRY_S = 0.5

Write = Callable[[str, str, str, dict[str, Any]], None]


def retriable(exc: Exception) -> bool:
    """The API server did not take the write, but may later: unreachable, overloaded or starting."""
    if isinstance(exc, ApiException):
        return exc.status in (0, 429) or (exc.status or 0) >= 500
    return True


class StatusWriter:
    def __init__(self, write: Write, stopping: threading.Event, workers: int = 8) -> None:
        self.write = write
        self.stopping = stopping
        self.lock = threading.Lock()
        self.newest: dict[str, tuple[str, str, dict[str, Any]]] = {}
        self.busy: set[str] = set()
        self.failing: set[str] = set()
        self.to_retry: set[str] = set()
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="status")
        threading.Thread(target=self._retry_loop, name="status-retry", daemon=True).start()

    def set(self, uid: str, namespace: str, name: str, status: dict[str, Any]) -> None:
        with self.lock:
            self.newest[uid] = (namespace, name, status)
            if uid in self.busy:
                return
            self.busy.add(uid)
        self.pool.submit(self._sync, uid)

    def written(self, uid: str, timeout_s: float) -> bool:
        """Wait until the newest status set for `uid` has landed (or been given up on)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if uid not in self.busy and uid not in self.newest:
                    return True
            time.sleep(0.02)
        return False

    def drop(self, uid: str) -> None:
        """The pod is gone: nothing more to write for it."""
        with self.lock:
            self.newest.pop(uid, None)

    def _sync(self, uid: str) -> None:
        with self.lock:
            item = self.newest.pop(uid, None)
            if item is None:
                self.busy.discard(uid)
                return
        namespace, name, status = item
        try:
            self.write(uid, namespace, name, status)
        except Exception as exc:
            if retriable(exc):
                with self.lock:
                    self.newest.setdefault(uid, item)
                    self.to_retry.add(uid)
                    first = uid not in self.failing
                    self.failing.add(uid)
                if first:
                    log.warning("status of %s/%s not written yet (%s); retrying", namespace, name, exc)
                return
            # 404 and 409: the pod is gone, or its name now belongs to another pod.
            if not (isinstance(exc, ApiException) and exc.status in (404, 409)):
                log.warning("status of %s/%s not written: %s", namespace, name, exc)
        with self.lock:
            self.failing.discard(uid)
            again = uid in self.newest
            if not again:
                self.busy.discard(uid)
        if again:
            self.pool.submit(self._sync, uid)

    def _retry_loop(self) -> None:
        while not self.stopping.wait(RETRY_S):
            with self.lock:
                uids, self.to_retry = self.to_retry, set()
            for uid in uids:
                self.pool.submit(self._sync, uid)
