"""Every frame of ``WS /v1/realtime`` as a pydantic model: the one definition of the protocol.

Frames are JSON text. A client sends ``subscribe``, ``unsubscribe`` and ``ping`` frames, told
apart by ``op`` (`ClientFrame`, a discriminated union). The server sends control frames with an
``op`` (``subscribed``, ``unsubscribed``, ``pong``, ``waiting``, ``error``) and event frames without one
(``{"topic", "event", "seq", "data"}``; a ``snapshot`` event carries a topic's full state).

Incoming frames go through `parse_client_frame`, which turns anything a client can send into
either a model or a `ClientFrameError` naming the field and what was expected: nothing a client
sends raises anything else. Outgoing control and error frames are built from the models here.

Event frames are the hot path (a transcript streams thousands of events a second to every viewer),
so `event_frame` encodes a plain dict with orjson instead of building an `EventFrame`: a model per
event would add its construction and validation to every event, for a shape that is fixed here and
checked against `EventFrame` by the tests of every frame a real session produces.
"""

from __future__ import annotations

import functools
import json
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter, ValidationError
from pydantic.json_schema import SkipJsonSchema

from foundry import strict_json
from foundry.realtime.topics import MAX_TOPIC_LENGTH, TOPIC_PATTERN

#: Client frames are tiny; anything longer is refused before parsing.
MAX_CLIENT_FRAME_CHARS = 16 * 1024
TOPIC_DESCRIPTION = (
    "`<kind>:<id>[:<id>...]`: `app:<userId>`, `organization:<orgId>`, `billing:<orgId>`, "
    "`task:<orgId>:<taskId>`, `session:<orgId>:<taskId>:<sessionId>`."
)

#: The codes of `ErrorFrame.error` a client should expect. A subscription refused by its topic's
#: owner carries the code of that application error, so other codes are possible: a client treats
#: any error frame with a topic as the end of that subscription.
ERROR_CODES: dict[str, str] = {
    "bad_json": "The frame is not a JSON object (not JSON, an array, a binary frame, nested too deeply, "
    "a number beyond 64 bits).",
    "too_large": f"The frame is longer than {MAX_CLIENT_FRAME_CHARS} characters; it was not read.",
    "unknown_op": "`op` is missing or is not one of subscribe, unsubscribe, ping.",
    "invalid_topic": "`topic` is missing, not a string, or not a topic this server serves.",
    "invalid_input": "Another field has the wrong type or value (`since`); `fields` names it.",
    "too_many_subscriptions": "The connection holds as many subscriptions as it may.",
    "forbidden": "The signed-in user may not read this topic (`billing:<orgId>`: admins only). Also "
    "sent to end a subscription whose access was taken away (an admin demoted).",
    "not_found": "The topic names a task the organization does not list.",
    "conflict": "The task is a pull request nobody has started yet; follow the organization topic.",
    "unauthorized": "The connection has no valid session (then closed with code 4401).",
    "slow_consumer": "The connection fell too far behind (then closed with code 1013); reconnect "
    "and subscribe with `since`.",
    "going_away": "The server is shutting down (then closed with code 1001).",
    "unavailable": "The realtime gateway is not running (then closed with code 1001).",
    "internal_error": "The server failed; for a subscription it is ended, otherwise the connection "
    "is closed with code 1011.",
}

_SINCE_DESCRIPTION = (
    "The last `seq` the client holds for this topic (from an earlier connection). The server then "
    "sends only what is newer: no snapshot when the client is current, or the missed events of an "
    "append-only topic. Omit or null to get a snapshot."
)


class _ClientModel(BaseModel):
    # Strict: `"3"` is not a seq and `true` is not 1. Unknown fields are ignored so that a newer
    # client can add optional fields without older servers refusing its frames.
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class _ServerModel(BaseModel):
    # Forbid: a field the server starts sending must be documented here first (the tests check
    # every frame a real session produces against these models).
    model_config = ConfigDict(extra="forbid", frozen=True)


# ------------------------------------------------------------------------------ client → server


class Subscribe(_ClientModel):
    """Start receiving a topic: answered by `subscribed` then a snapshot (or a replay), once the
    topic's state was read, or by an `error` frame carrying the topic (and no `subscribed`).
    Subscribing again to a held topic is acknowledged and changes nothing."""

    model_config = ConfigDict(title="subscribe")
    op: Literal["subscribe"]
    topic: str = Field(
        max_length=MAX_TOPIC_LENGTH,
        description=TOPIC_DESCRIPTION,
        # Documented, not enforced here: `TopicRegistry.resolve` says which part of a topic is wrong.
        json_schema_extra={"pattern": TOPIC_PATTERN},
        examples=["organization:acme"],
    )
    since: int | None = Field(default=None, ge=0, le=strict_json.MAX_INT, description=_SINCE_DESCRIPTION)


class Unsubscribe(_ClientModel):
    """Stop receiving a topic; answered by `unsubscribed` even when the topic was not held."""

    model_config = ConfigDict(title="unsubscribe")
    op: Literal["unsubscribe"]
    topic: str = Field(max_length=MAX_TOPIC_LENGTH, description="A topic sent in an earlier `subscribe`.")


class Ping(_ClientModel):
    """Ask for a `pong` (a client-side liveness check)."""

    model_config = ConfigDict(title="ping")
    op: Literal["ping"]


ClientFrame = Annotated[Subscribe | Unsubscribe | Ping, Field(discriminator="op")]
CLIENT_OPS = ("subscribe", "unsubscribe", "ping")
_client_frames: TypeAdapter[Subscribe | Unsubscribe | Ping] = TypeAdapter(ClientFrame)


# ------------------------------------------------------------------------------ server → client


class Subscribed(_ServerModel):
    """The subscription is authorized and registered; a snapshot or replay follows."""

    model_config = ConfigDict(title="subscribed")
    op: Literal["subscribed"]
    topic: str = Field(description="The topic of the `subscribe` frame.")


class Unsubscribed(_ServerModel):
    """The topic is no longer sent on this connection."""

    model_config = ConfigDict(title="unsubscribed")
    op: Literal["unsubscribed"]
    topic: str = Field(description="The topic of the `unsubscribe` frame.")


class Pong(_ServerModel):
    """The answer to `ping`."""

    model_config = ConfigDict(title="pong")
    op: Literal["pong"]


class Waiting(_ServerModel):
    """The topic's state cannot be read now: the part of Foundry that owns it does not answer (a
    process restarting or hung). The subscription stays: its snapshot (or replay) follows as soon as
    the owner answers. Sent once per subscription and wait, after the first failed attempt; to a
    subscription already served, when its owner's event stream has been silent for 6 s (its events
    then follow in order once the owner answers)."""

    model_config = ConfigDict(title="waiting")
    op: Literal["waiting"]
    topic: str = Field(description="The subscription that waits.")
    detail: str = Field(description="One sentence for a person: what does not answer.")


def _no_default(schema: dict[str, Any]) -> None:
    # An unset optional field is left out of the frame, never sent as null.
    schema.pop("default", None)


class ErrorFrame(_ServerModel):
    """Something went wrong. With a `topic`, that subscription is refused or ended and the others go
    on; without one, a frame was refused and the connection stays usable, unless a close follows
    (`unauthorized` 4401, `slow_consumer` 1013, `going_away`/`unavailable` 1001, `internal_error`
    1011)."""

    model_config = ConfigDict(title="error")
    op: Literal["error"]
    # Optional fields are left out rather than null (`encode`), which the schema says.
    topic: str | SkipJsonSchema[None] = Field(
        default=None,
        description="The subscription concerned; absent for errors about a frame or the connection.",
        json_schema_extra=_no_default,
    )
    error: str = Field(
        description="A stable code:\n"
        + "\n".join(f"- `{code}`: {text}" for code, text in ERROR_CODES.items()),
        examples=list(ERROR_CODES),
    )
    detail: str = Field(description="One sentence for a person, naming what was wrong and what was expected.")
    fields: list[str] | SkipJsonSchema[None] = Field(
        default=None,
        description="Invalid frames only: the offending fields (`op`, `topic`, `since`).",
        json_schema_extra=_no_default,
    )


_SEQ_DESCRIPTION = (
    "Per topic and connection: strictly increasing over events with no gap and no repeat; a "
    "snapshot's seq is at least the last one sent (equal only in the fresh snapshot after the server "
    "lost its stream of the topic). Resume with `since` = the last seq received."
)


class SnapshotFrame(_ServerModel):
    """A topic's full state at `seq`: replaces whatever the client held. Sent after `subscribed`
    (unless `since` is already current), and again after the server lost events of the topic."""

    model_config = ConfigDict(title="snapshot")
    topic: str = Field(description="The topic this state belongs to.")
    event: Literal["snapshot"]
    seq: int = Field(ge=0, description=_SEQ_DESCRIPTION)
    data: Any = Field(description="The full state; its shape depends on the topic kind.")


class EventFrame(_ServerModel):
    """One change on a topic (`organizationUpdated`, `taskUpdated`, `agentUpdate`, `turnEnded`, ...).
    Append-only topics (a session's transcript) replay the events after `since` as these frames.
    `accessChanged` (no data) says who may read the topic changed (a member left, an admin lost the
    role): each subscriber's access was checked again before it arrives; one refused gets the error
    frame `forbidden` instead, and nothing after it."""

    model_config = ConfigDict(title="event")
    topic: str = Field(description="The topic the event was published on.")
    event: str = Field(description="The event's name (past tense), never `snapshot`.")
    seq: int = Field(ge=0, description=_SEQ_DESCRIPTION)
    data: Any = Field(description="The event's payload; its shape depends on the event.")


def _server_tag(frame: Any) -> str | None:
    if not isinstance(frame, dict):
        return None
    if "op" in frame:
        return frame["op"] if isinstance(frame["op"], str) else None
    return "snapshot" if frame.get("event") == "snapshot" else "event"


ServerFrame = Annotated[
    Annotated[Subscribed, Tag("subscribed")]
    | Annotated[Unsubscribed, Tag("unsubscribed")]
    | Annotated[Pong, Tag("pong")]
    | Annotated[Waiting, Tag("waiting")]
    | Annotated[ErrorFrame, Tag("error")]
    | Annotated[SnapshotFrame, Tag("snapshot")]
    | Annotated[EventFrame, Tag("event")],
    Discriminator(_server_tag),
]
#: Validates a decoded server frame against the model of its kind (for tests and tools).
server_frames: TypeAdapter[
    Subscribed | Unsubscribed | Pong | Waiting | ErrorFrame | SnapshotFrame | EventFrame
] = TypeAdapter(ServerFrame)

CLIENT_FRAMES: tuple[type[BaseModel], ...] = (Subscribe, Unsubscribe, Ping)
SERVER_FRAMES: tuple[type[BaseModel], ...] = (
    Subscribed,
    Unsubscribed,
    Pong,
    Waiting,
    ErrorFrame,
    SnapshotFrame,
    EventFrame,
)


# ------------------------------------------------------------------------------ encoding

_dumps = functools.partial(json.dumps, separators=(",", ":"), ensure_ascii=False)


def encode(frame: BaseModel) -> str:
    """A control or error frame as JSON text; optional fields that are unset are left out."""
    return frame.model_dump_json(exclude_none=True)


def subscribed(topic: str) -> str:
    return encode(Subscribed(op="subscribed", topic=topic))


def unsubscribed(topic: str) -> str:
    return encode(Unsubscribed(op="unsubscribed", topic=topic))


def pong() -> str:
    return encode(Pong(op="pong"))


def waiting(topic: str, detail: str) -> str:
    return encode(Waiting(op="waiting", topic=topic, detail=detail))


def error(code: str, detail: str, topic: str | None = None, fields: list[str] | None = None) -> str:
    return encode(ErrorFrame(op="error", error=code, detail=detail, topic=topic, fields=fields))


def event_frame(topic: str, event: str, seq: int, data: Any) -> str:
    """An `EventFrame` (or `SnapshotFrame` for ``event == "snapshot"``) as JSON text.

    Raises:
        TypeError, ValueError: ``data`` is not JSON-serializable.
    """
    frame = {"topic": topic, "event": event, "seq": seq, "data": data}
    # orjson is several times faster than the standard library, which still takes what orjson
    # refuses (integers beyond 64 bits, non-string keys).
    try:
        return orjson.dumps(frame).decode()
    except TypeError:
        return _dumps(frame)


# ------------------------------------------------------------------------------ decoding


class ClientFrameError(ValueError):
    """A client frame that cannot be served, as the fields of the `ErrorFrame` that answers it."""

    def __init__(self, code: str, detail: str, fields: list[str] | None = None, topic: str | None = None):
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.fields = fields
        self.topic = topic

    def frame(self) -> str:
        return error(self.code, self.detail, self.topic, self.fields)


def _short(value: Any) -> str:
    """A client's value as JSON, cut short (details echo what was sent, not all of it)."""
    text = _dumps(value)
    return text[:40] + "…" if len(text) > 40 else text


def parse_client_frame(text: str | None) -> Subscribe | Unsubscribe | Ping:
    """The client frame in ``text`` (None: a binary frame).

    Raises:
        ClientFrameError: the frame is too long, not a JSON object, has no known ``op``, or a field
            has the wrong type or value; its `ClientFrameError.frame` is the error frame to send.
    """
    if text is None:
        raise ClientFrameError("bad_json", "send JSON in text frames; binary frames are not accepted")
    if len(text) > MAX_CLIENT_FRAME_CHARS:
        raise ClientFrameError(
            "too_large", f"client frames are limited to {MAX_CLIENT_FRAME_CHARS} characters, got {len(text)}"
        )
    try:
        # Wide integers: `since` is range-checked by its model, so a too-large one is named.
        message = strict_json.loads(text, unique_keys=True, wide_ints=True)
    except strict_json.BadJson as exc:  # nesting, NaN, huge numbers and lone surrogates too
        raise ClientFrameError("bad_json", f"the frame is not valid JSON: {exc}") from exc
    if not isinstance(message, dict):
        raise ClientFrameError("bad_json", 'expected a JSON object such as {"op": "ping"}')
    try:
        return _client_frames.validate_python(message)
    except ValidationError as exc:
        raise _explain(message, exc) from exc


def _explain(message: dict[str, Any], exc: ValidationError) -> ClientFrameError:
    """The first problem of a frame that failed validation, in the protocol's terms."""
    first = exc.errors(include_url=False)[0]
    if first["type"] in ("union_tag_not_found", "union_tag_invalid"):
        op = message.get("op")
        got = "the frame has no op" if op is None else f"unknown op {_short(op)}"
        return ClientFrameError("unknown_op", f"{got}; expected one of {', '.join(CLIENT_OPS)}", ["op"])
    # loc is (op, field, ...): the tag of the union member, then the path inside it.
    field = ".".join(str(part) for part in first["loc"][1:]) or "op"
    detail = f"{message['op']} frame: {field}: {first['msg']}"
    if first["type"] != "missing":
        detail += f", got {_short(first['input'])}"
    # The topic is echoed when it is one (a frame with a wrong `since` still names its subscription).
    topic = message.get("topic")
    echo = topic if isinstance(topic, str) and len(topic) <= MAX_TOPIC_LENGTH else None
    code = "invalid_topic" if field == "topic" else "invalid_input"
    return ClientFrameError(code, detail, [field], echo)
