"""The last resourceVersion seen per watched namespace, one store per process.

A restarted watcher resumes from here instead of replaying history from "0".
"""

from __future__ import annotations

import threading
from typing import Any


class Singleton(type):
    _instances: dict[type, Any] = {}
    _lock = threading.Lock()

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        with cls._lock:
            if cls not in cls._instances:
                cls._instances[cls] = super().__call__(*args, **kwargs)
        return cls._instances[cls]


ALL_NAMESPACES = "*"


class ResourceVersion(metaclass=Singleton):
    """The one store of the resourceVersions the watchers resume from: the scheduler shell records
    each one its watchers report, and a watcher restarted after it died starts from it.

    Keyed by namespace (None: all namespaces) and by `owner`, the scheduler shell that watches:
    two executors in one process (teams) select different pods, so a resourceVersion one of them
    saw says nothing of what the other has read.
    """

    def __init__(self) -> None:
        self._versions: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    def get_resource_version(self, namespace: str | None = None, owner: str = "") -> str | None:
        with self._lock:
            return self._versions.get((owner, namespace or ALL_NAMESPACES))

    def set_resource_version(
        self, version: str | None, namespace: str | None = None, owner: str = ""
    ) -> None:
        with self._lock:
            if version is None:
                self._versions.pop((owner, namespace or ALL_NAMESPACES), None)
            else:
                self._versions[(owner, namespace or ALL_NAMESPACES)] = version
