"""A watch response's bytes, however the network cuts them, read as the events the API server sent."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from k8s_executor.kube_client import json_lines

EVENTS: list[dict[str, Any]] = [
    {"type": "ADDED", "object": {"metadata": {"name": "a", "resourceVersion": "1"}, "spec": {"x": "é\\n"}}},
    {"type": "MODIFIED", "object": {"metadata": {"name": "a", "resourceVersion": "2"}, "big": 2**70}},
    {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "3"}}},
    {"type": "DELETED", "object": {"metadata": {"name": "a", "resourceVersion": "4"}, "f": 1.5, "n": None}},
]


class Stream:
    """A `_preload_content=False` watch response whose body arrives in the given pieces."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces
        self.released = False

    def stream(self, amt: Any = None, decode_content: bool = False) -> Any:
        yield from self.pieces

    def release_conn(self) -> None:
        self.released = True


def body(events: list[dict[str, Any]]) -> bytes:
    # The API server ends every event with a newline; a blank line between them is harmless.
    return (
        b"".join(json.dumps(e).encode() + b"\n" for e in events[:2])
        + b"\n"
        + b"".join(json.dumps(e).encode() + b"\n" for e in events[2:])
    )


@pytest.mark.parametrize("seed", range(50))
def test_events_cut_anywhere_are_read_whole_and_in_order(seed: int) -> None:
    data = body(EVENTS)
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(data)), rng.randint(0, 12)))
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    response = Stream(pieces)
    assert list(json_lines(response)) == EVENTS
    assert response.released


def test_several_events_in_one_piece_and_one_event_in_many() -> None:
    data = body(EVENTS)
    response = Stream([data[:3], data[3:5], data[5:]])
    assert list(json_lines(response)) == EVENTS


def test_an_unfinished_last_line_is_not_an_event() -> None:
    data = body(EVENTS[:1]) + json.dumps(EVENTS[1]).encode()[:10]
    assert list(json_lines(Stream([data]))) == EVENTS[:1]


def test_a_line_that_is_not_json_raises() -> None:
    with pytest.raises(ValueError):
        list(json_lines(Stream([b'{"type": "ADDED", "object": {\n'])))
