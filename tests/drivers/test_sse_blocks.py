"""SSE event blocks as sandbox-agent writes them, and the other shapes the format allows, decode the
same way: the shortcut for sandbox-agent's own layout must not change what an event means."""

from __future__ import annotations

import pytest

from foundry.drivers.sandbox.sse import parse_event_block

ENVELOPE = b'{"jsonrpc":"2.0","method":"session/update","params":{"update":{"text":"h\xc3\xa9"}}}'
DECODED = {"jsonrpc": "2.0", "method": "session/update", "params": {"update": {"text": "hé"}}}


@pytest.mark.parametrize(
    "block",
    [
        b"event: message\nid: 42\ndata: " + ENVELOPE,  # sandbox-agent's layout
        b"id: 42\ndata: " + ENVELOPE,
        b"id: 42\nevent: message\ndata: " + ENVELOPE,
        b"data: " + ENVELOPE + b"\nid: 42",
        b"event: message\nid:42\ndata:" + ENVELOPE,
        b": keep-alive\nevent: message\nid: 42\ndata: " + ENVELOPE,
        b"event: message\nid: 42\ndata: " + ENVELOPE.replace(b",", b"\ndata: ,", 1),  # two data lines
    ],
)
def test_every_layout_of_an_event_decodes_alike(block: bytes) -> None:
    assert parse_event_block(block) == (42, DECODED)


@pytest.mark.parametrize(
    "block",
    [
        b"event: log\nid: 42\ndata: " + ENVELOPE,  # another event type
        b"event: message\nid: x\ndata: " + ENVELOPE,  # no numeric id
        b"event: message\ndata: " + ENVELOPE,  # no id at all
        b"event: message\nid: 42\ndata: [1, 2]",  # not an object
        b"event: message\nid: 42\ndata: {broken",  # not JSON
        b": keep-alive",
    ],
)
def test_blocks_that_are_not_events_are_skipped(block: bytes) -> None:
    assert parse_event_block(block) is None


def test_64_bit_integers_are_exact() -> None:
    block = b'event: message\nid: 7\ndata: {"id": 9223372036854775807, "low": -9223372036854775808}'
    assert parse_event_block(block) == (7, {"id": 2**63 - 1, "low": -(2**63)})
