"""The AsyncAPI 3.0 document of ``WS /v1/realtime``, generated from the frame models.

The websocket protocol is documented the way OpenAPI documents the HTTP API: one machine-readable
document whose payload schemas come from `foundry.realtime.frames` (``model_json_schema``), so the
document cannot drift from what the gateway parses and sends. The document describes the server:
client frames are operations it *receives* (each with the replies it answers), server frames are
operations it *sends*.
"""

from __future__ import annotations

import inspect
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from foundry.realtime import frames
from foundry.realtime.endpoint import CLOSE_UNAUTHENTICATED
from foundry.realtime.gateway import CLOSE_GOING_AWAY, CLOSE_INTERNAL_ERROR, CLOSE_SLOW_CONSUMER

ASYNCAPI_VERSION = "3.0.0"
CHANNEL = "realtime"
ADDRESS = "/v1/realtime"
SECURITY_SCHEME = "sessionCookie"
_SCHEMA_REF = "#/components/schemas/{model}"

#: One example per message; the tests check each against its model.
EXAMPLES: dict[str, list[dict[str, Any]]] = {
    "subscribe": [
        {"op": "subscribe", "topic": "organization:acme"},
        {"op": "subscribe", "topic": "session:acme:t1:s1", "since": 41},
    ],
    "unsubscribe": [{"op": "unsubscribe", "topic": "organization:acme"}],
    "ping": [{"op": "ping"}],
    "subscribed": [{"op": "subscribed", "topic": "organization:acme"}],
    "unsubscribed": [{"op": "unsubscribed", "topic": "organization:acme"}],
    "pong": [{"op": "pong"}],
    "waiting": [
        {
            "op": "waiting",
            "topic": "task:acme:t1",
            "detail": "the part of Foundry that holds this topic does not answer right now (host process "
            "foundry.tasks gave no answer within 5 s); the subscription stays and its state follows once "
            "it answers",
        }
    ],
    "error": [
        {"op": "error", "topic": "task:acme:nope", "error": "not_found", "detail": "no task 'nope' in acme"},
        {
            "op": "error",
            "error": "invalid_input",
            "detail": 'subscribe frame: since: Input should be a valid integer, got "3"',
            "topic": "organization:acme",
            "fields": ["since"],
        },
    ],
    "snapshot": [
        {"topic": "organization:acme", "event": "snapshot", "seq": 12, "data": {"tasks": [], "settings": {}}}
    ],
    "event": [
        {
            "topic": "session:acme:t1:s1",
            "event": "agentUpdate",
            "seq": 42,
            "data": {"kind": "agent_message_chunk", "text": "Done."},
        }
    ],
}

#: Message name → model, client frames first.
MESSAGES: dict[str, type[BaseModel]] = {
    "subscribe": frames.Subscribe,
    "unsubscribe": frames.Unsubscribe,
    "ping": frames.Ping,
    "subscribed": frames.Subscribed,
    "unsubscribed": frames.Unsubscribed,
    "pong": frames.Pong,
    "waiting": frames.Waiting,
    "error": frames.ErrorFrame,
    "snapshot": frames.SnapshotFrame,
    "event": frames.EventFrame,
}
CLIENT_MESSAGES = ("subscribe", "unsubscribe", "ping")
#: What the server answers to each client frame.
REPLIES = {
    "subscribe": ("subscribed", "snapshot", "event", "waiting", "error"),
    "unsubscribe": ("unsubscribed", "error"),
    "ping": ("pong", "error"),
}

CLOSE_CODES = {
    CLOSE_UNAUTHENTICATED: "no valid session, or a cross-site `Origin` (after an `unauthorized` error frame)",
    CLOSE_SLOW_CONSUMER: "the client fell too far behind (after a `slow_consumer` error frame)",
    CLOSE_GOING_AWAY: "the server is shutting down (after a `going_away` error frame)",
    CLOSE_INTERNAL_ERROR: "the server failed (after an `internal_error` error frame)",
}

DESCRIPTION = f"""\
Live state for the dashboard over one websocket per browser tab: `{ADDRESS}`.

**Authentication.** The session cookie, as for the HTTP API; a cross-site `Origin` is refused. A
connection without a session is accepted, sent an `error` frame `unauthorized` and closed with code
{CLOSE_UNAUTHENTICATED}, so a browser script can tell "sign in again" from a network failure.

**Topics.** {frames.TOPIC_DESCRIPTION} Access is checked on every `subscribe`: `app` for that
user, the others for members of the organization; a task or session topic also needs a task its
organization lists. `billing:<orgId>` (plan, status, seats and who holds them, dates, payment method,
invoices) is for the organization's admins only (others get `forbidden`); `organization:<orgId>`
carries only a summary of billing (`enabled`, `plan`, `status`, `seatLimitReached`, `updatedAt`).

**Order.** After `subscribed` comes a `snapshot` with the topic's full state (skipped when `since` is
already current) or, for append-only topics (a session's transcript), the events after `since`. Live
events follow with strictly increasing `seq`: no gap, no event twice. After the server lost events
(a restarted actor host) the client gets a fresh snapshot or the replay of what it missed.

**Errors.** A malformed frame is answered with an `error` frame naming the field and what was
expected; the connection stays open. Client frames are limited to {frames.MAX_CLIENT_FRAME_CHARS}
characters.

**Close codes.**
""" + "\n".join(f"- {code}: {why}" for code, why in CLOSE_CODES.items())


def _doc(model: type[BaseModel]) -> tuple[str, str]:
    """(summary, description) from a model's docstring: its first sentence, then all of it."""
    text = " ".join(line.strip() for line in inspect.cleandoc(model.__doc__ or "").splitlines())
    summary = text.split(". ")[0].rstrip(".") + "."
    return summary, text


def _server(base_url: str) -> dict[str, Any]:
    parts = urlsplit(base_url)
    return {
        "host": parts.netloc,
        "protocol": "wss" if parts.scheme == "https" else "ws",
        **({"pathname": parts.path.rstrip("/")} if parts.path.rstrip("/") else {}),
        "description": "This Foundry server (its configured base URL).",
        "security": [{"$ref": f"#/components/securitySchemes/{SECURITY_SCHEME}"}],
    }


def _message_ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/channels/{CHANNEL}/messages/{name}"}


def build_asyncapi(*, version: str, base_url: str, cookie_name: str) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the realtime protocol.

    Args:
        version: the server's version (``info.version``).
        base_url: the server's public URL; it gives the document's ``servers`` entry.
        cookie_name: the session cookie that authenticates the websocket.
    """
    _, top = models_json_schema(
        [(model, "validation") for model in MESSAGES.values()], ref_template=_SCHEMA_REF
    )
    schemas = top.get("$defs", {})
    messages: dict[str, Any] = {}
    for name, model in MESSAGES.items():
        summary, description = _doc(model)
        messages[name] = {
            "name": name,
            "title": name,
            "summary": summary,
            "description": description,
            "contentType": "application/json",
            "payload": {"$ref": _SCHEMA_REF.format(model=model.__name__)},
            "examples": [{"payload": example} for example in EXAMPLES[name]],
        }
    channel_ref = {"$ref": f"#/channels/{CHANNEL}"}
    operations: dict[str, Any] = {}
    for name in MESSAGES:
        if name in CLIENT_MESSAGES:
            operations[name] = {
                "action": "receive",
                "title": f"Client sends {name}",
                "summary": messages[name]["summary"],
                "channel": channel_ref,
                "messages": [_message_ref(name)],
                "reply": {"channel": channel_ref, "messages": [_message_ref(r) for r in REPLIES[name]]},
            }
        else:
            operations[f"send{name[0].upper()}{name[1:]}"] = {
                "action": "send",
                "title": f"Server sends {name}",
                "summary": messages[name]["summary"],
                "channel": channel_ref,
                "messages": [_message_ref(name)],
            }
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "Foundry realtime",
            "version": version,
            "description": DESCRIPTION,
        },
        "defaultContentType": "application/json",
        "servers": {"foundry": _server(base_url)},
        "channels": {
            CHANNEL: {
                "address": ADDRESS,
                "title": f"WS {ADDRESS}",
                "description": "The one websocket: every frame, both ways, is JSON text.",
                "messages": {name: {"$ref": f"#/components/messages/{name}"} for name in MESSAGES},
                "bindings": {"ws": {"method": "GET", "bindingVersion": "0.1.0"}},
            }
        },
        "operations": operations,
        "components": {
            "schemas": schemas,
            "messages": messages,
            "securitySchemes": {
                SECURITY_SCHEME: {
                    "type": "httpApiKey",
                    "in": "cookie",
                    "name": cookie_name,
                    "description": "The session cookie set by sign-in.",
                }
            },
        },
    }
