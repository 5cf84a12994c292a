"""The list-then-watch loop of the node agent, chaos and bench, against a scripted API server."""

from __future__ import annotations

import json
import threading
from typing import Any

from devcluster.list_watch import LIST, list_watch, objects


class Response:
    """A `_preload_content=False` response: a list's body, or a watch's lines."""

    def __init__(self, body: Any) -> None:
        self.body = body

    @property
    def data(self) -> bytes:
        return json.dumps(self.body).encode()

    def stream(self, amt: Any = None, decode_content: bool = False) -> Any:
        yield from (json.dumps(event).encode() + b"\n" for event in self.body)

    def release_conn(self) -> None:
        pass


def pod(name: str, rv: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "resourceVersion": rv}}


def test_lists_watches_resumes_and_relists_after_410_and_failures() -> None:
    stop = threading.Event()
    calls: list[dict[str, Any]] = []
    answers: list[Any] = [
        Response({"metadata": {"resourceVersion": "10"}, "items": [pod("a", "9")]}),
        Response(
            [{"type": "ADDED", "object": pod("b", "11")}, {"type": "BOOKMARK", "object": pod("", "12")}]
        ),
        # The stream's timeout ended it: resumed from the bookmark's resourceVersion.
        Response([{"type": "ERROR", "object": {"code": 410, "message": "too old"}}]),
        Response({"metadata": {"resourceVersion": "20"}, "items": []}),
        ConnectionResetError("API server gone"),
        Response({"metadata": {"resourceVersion": "30"}, "items": [pod("c", "29")]}),
        Response([{"type": "DELETED", "object": pod("c", "31")}]),
    ]

    def call(**kwargs: Any) -> Any:
        calls.append(kwargs)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        if not answers:
            stop.set()
        return answer

    errors: list[Exception] = []
    events = list(list_watch(call, stop, retry_s=0, on_error=errors.append))

    assert [(e["type"], [p["metadata"]["name"] for p in objects(e)]) for e in events] == [
        (LIST, ["a"]),
        ("ADDED", ["b"]),
        (LIST, []),
        (LIST, ["c"]),
        ("DELETED", ["c"]),
    ]
    assert [c.get("resource_version") for c in calls] == [None, "10", "12", None, "20", None, "30"]
    assert all(c["allow_watch_bookmarks"] for c in calls if c.get("watch"))
    assert [str(e) for e in errors] == ["API server gone"]


def test_a_given_resource_version_is_watched_from_without_a_list() -> None:
    stop = threading.Event()
    calls: list[dict[str, Any]] = []

    def call(**kwargs: Any) -> Any:
        calls.append(kwargs)
        stop.set()
        return Response([{"type": "MODIFIED", "object": pod("a", "6")}])

    assert [e["type"] for e in list_watch(call, stop, resource_version="5")] == ["MODIFIED"]
    assert [(c["watch"], c["resource_version"]) for c in calls] == [(True, "5")]
