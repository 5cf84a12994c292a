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
    def __init__(self) -> None:
        self._versions: dict[str, str] = {}
        self._lock = threading.Lock()

    def get_resource_version(self, namespace: str | None = None) -> str | None:
        with self._lock:
            return self._versions.get(namespace or ALL_NAMESPACES)

    def set_resource_version(self, version: str | None, namespace: str | None = None) -> None:
        with self._lock:
            if version is None:
                self._versions.pop(namespace or ALL_NAMESPACES, None)
            else:
                self._versions[namespace or ALL_NAMESPACES] = version
