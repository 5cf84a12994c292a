"""List, then watch: the loop of every watcher outside the executor (the node agent, chaos, bench).

The executor's own watcher (k8s_executor.watching.PodWatch) judges pods and reports to the
scheduler; these only need the raw events, so they share this simpler loop:
- a list gives every object at one resourceVersion, and the watch starts from it;
- bookmarks are requested, so a quiet stream still moves the resourceVersion;
- a stream ended by its timeout resumes from the last resourceVersion seen;
- a 410 Gone (history compacted) is answered by a fresh list at once, any other failure by a
  fresh list after `retry_s`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

from kubernetes.client import ApiException

from k8s_executor.kube_client import json_lines, read_json

log = logging.getLogger(__name__)

# The type of the event that carries a list's body (its `items` and `metadata`): every object
# there is now; an object missing from it went while nothing watched.
LIST = "LIST"


def list_watch(
    call: Callable[..., Any],
    stop: threading.Event,
    *,
    resource_version: str | None = None,
    timeout_seconds: int = 300,
    retry_s: float = 1.0,
    on_error: Callable[[Exception], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """The raw events of `call` (a list method of the Kubernetes client, its selectors bound):
    a `LIST` event after each list, then the watch's ADDED, MODIFIED and DELETED events. Starts
    with a list unless given the `resource_version` to watch from. Ends once `stop` is set;
    `on_error` hears each failure before the relist."""
    rv = resource_version
    while not stop.is_set():
        try:
            if rv is None:
                listing = read_json(call(_preload_content=False))
                rv = listing["metadata"]["resourceVersion"]
                yield {"type": LIST, "object": listing}
            response = call(
                watch=True,
                resource_version=rv,
                allow_watch_bookmarks=True,
                timeout_seconds=timeout_seconds,
                _preload_content=False,
            )
            for event in json_lines(response):
                obj = event["object"]
                if event["type"] == "ERROR":
                    if obj.get("code") != 410:
                        raise ApiException(status=obj.get("code", 500), reason=obj.get("message"))
                    log.info("resourceVersion %s is gone, relisting", rv)
                    rv = None
                    break
                rv = obj["metadata"]["resourceVersion"]
                if event["type"] != "BOOKMARK":
                    yield event
                if stop.is_set():
                    return
        except Exception as exc:
            if stop.is_set():
                return
            if on_error:
                on_error(exc)
            rv = None
            stop.wait(retry_s)


def objects(event: dict[str, Any]) -> list[dict[str, Any]]:
    """The objects an event brings: every item of a list, or the one of a watch event."""
    return event["object"]["items"] if event["type"] == LIST else [event["object"]]
