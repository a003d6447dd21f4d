"""The frame models and the AsyncAPI document generated from them (which must validate against
AsyncAPI's own JSON Schema, `ASYNCAPI_SCHEMA`, payload schemas included)."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import pytest
from pydantic import ValidationError

from foundry.realtime import frames
from foundry.realtime.asyncapi import CLIENT_MESSAGES, EXAMPLES, MESSAGES, REPLIES, build_asyncapi
from foundry.realtime.asyncapi_page import render_page
from tests.realtime.helpers import ASYNCAPI_SCHEMA


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return build_asyncapi(version="1.2.3", base_url="https://foundry.example/", cookie_name="foundry_session")


def _resolve(document: dict[str, Any], ref: str) -> Any:
    """What a local ``$ref`` points at, following references to references."""
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return _resolve(document, node["$ref"]) if isinstance(node, dict) and "$ref" in node else node


def _payload_validator(document: dict[str, Any], message: str) -> jsonschema.Validator:
    """A validator of the message's payload schema as the document states it (refs resolved in it)."""
    payload = document["components"]["messages"][message]["payload"]
    schema = {**payload, "components": document["components"]}
    return jsonschema.Draft7Validator(schema)


def test_the_document_is_valid_asyncapi_3(document: dict[str, Any]) -> None:
    validator = jsonschema.Draft7Validator(ASYNCAPI_SCHEMA)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(document)]
    assert errors == []
    # The schema is strict enough to catch a broken document (it validates payload schemas too).
    broken = json.loads(json.dumps(document))
    broken["components"]["schemas"]["Ping"]["properties"]["op"]["type"] = 5
    assert not validator.is_valid(broken)


def test_every_frame_type_has_a_message_an_operation_and_its_models_schema(document: dict[str, Any]) -> None:
    assert set(MESSAGES.values()) == {*frames.CLIENT_FRAMES, *frames.SERVER_FRAMES}
    channel = document["channels"]["realtime"]
    assert channel["address"] == "/v1/realtime"
    operated: dict[str, str] = {}
    for operation in document["operations"].values():
        assert _resolve(document, operation["channel"]["$ref"]) is channel
        for ref in operation["messages"]:
            operated[ref["$ref"].rsplit("/", 1)[1]] = operation["action"]
        for ref in operation.get("reply", {}).get("messages", []):
            assert _resolve(document, ref["$ref"])["name"] in MESSAGES
    for name, model in MESSAGES.items():
        message = _resolve(document, channel["messages"][name]["$ref"])
        assert message["name"] == name
        assert message["contentType"] == "application/json"
        assert message["summary"]
        assert message["description"]
        payload = _resolve(document, message["payload"]["$ref"])
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        assert payload["properties"] == schema["properties"], name
        assert payload.get("required") == schema.get("required"), name
        assert operated[name] == ("receive" if name in CLIENT_MESSAGES else "send")
    for name, replies in REPLIES.items():
        operation = document["operations"][name]
        assert [r["$ref"].rsplit("/", 1)[1] for r in operation["reply"]["messages"]] == list(replies)


def test_the_document_names_the_server_and_its_session_cookie(document: dict[str, Any]) -> None:
    server = document["servers"]["foundry"]
    assert (server["host"], server["protocol"]) == ("foundry.example", "wss")
    scheme = _resolve(document, server["security"][0]["$ref"])
    assert scheme == {**scheme, "type": "httpApiKey", "in": "cookie", "name": "foundry_session"}
    plain = build_asyncapi(version="1", base_url="http://127.0.0.1:7741/foundry", cookie_name="c")
    assert plain["servers"]["foundry"] == {
        **plain["servers"]["foundry"],
        "host": "127.0.0.1:7741",
        "protocol": "ws",
        "pathname": "/foundry",
    }


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_each_example_is_valid_for_its_model_and_its_documented_schema(
    document: dict[str, Any], name: str
) -> None:
    validator = _payload_validator(document, name)
    for example in document["components"]["messages"][name]["examples"]:
        payload = example["payload"]
        if name in CLIENT_MESSAGES:
            parsed: object = frames.parse_client_frame(json.dumps(payload))
        else:
            parsed = frames.server_frames.validate_python(payload)
        assert type(parsed) is MESSAGES[name]
        validator.validate(payload)


def test_documented_schemas_refuse_what_the_models_refuse(document: dict[str, Any]) -> None:
    wrong = {
        "subscribe": {"op": "subscribe", "topic": "organization:acme", "since": -1},
        "ping": {"op": "pong"},
        "error": {"op": "error", "error": "x", "detail": "y", "extra": 1},
        "snapshot": {"topic": "t:x", "event": "snapshot", "seq": -1, "data": None},
        "event": {"topic": "t:x", "event": "e", "data": None},
    }
    for name, payload in wrong.items():
        assert not _payload_validator(document, name).is_valid(payload), name
        with pytest.raises(ValidationError):
            MESSAGES[name].model_validate(payload)


def test_encoded_control_frames_match_their_models() -> None:
    encoded = {
        frames.subscribed("organization:acme"): frames.Subscribed,
        frames.unsubscribed("organization:acme"): frames.Unsubscribed,
        frames.pong(): frames.Pong,
        frames.error("forbidden", "no", "organization:acme"): frames.ErrorFrame,
        frames.error("bad_json", "no"): frames.ErrorFrame,
        frames.event_frame("organization:acme", "snapshot", 3, {"a": [1]}): frames.SnapshotFrame,
        frames.event_frame("organization:acme", "taskUpdated", 4, None): frames.EventFrame,
        # Beyond 64 bits: the standard library's fallback.
        frames.event_frame("organization:acme", "taskUpdated", 5, {"n": 2**70}): frames.EventFrame,
    }
    for text, model in encoded.items():
        decoded = json.loads(text)
        assert type(frames.server_frames.validate_python(decoded)) is model, text
    # Optional fields are left out, never null.
    assert json.loads(frames.error("bad_json", "no")) == {"op": "error", "error": "bad_json", "detail": "no"}


def test_the_page_renders_every_frame_offline(document: dict[str, Any]) -> None:
    page = render_page(document, json_url="/v1/realtime/asyncapi.json", docs_url="/docs")
    for name in MESSAGES:
        assert f'id="{name}"' in page
    assert "<script" not in page
    assert not re.search(r"https?://", page)
    assert "<code>since</code>" in page
    assert "slow_consumer" in page


# ------------------------------------------------------------------------------ parsing

ACME = "organization:acme"


def _since(value: str) -> str:
    return f'{{"op":"subscribe","topic":"{ACME}","since":{value}}}'


BAD_FRAMES: list[tuple[str, str | None, str, list[str] | None, str | None]] = [
    # (name, text, code, fields, echoed topic)
    ("binary", None, "bad_json", None, None),
    ("not_json", "hello", "bad_json", None, None),
    ("array", "[1, 2]", "bad_json", None, None),
    ("string", '"ping"', "bad_json", None, None),
    ("nested", '{"op":' * 100 + '"ping"' + "}" * 100, "bad_json", None, None),
    ("one_megabyte", '{"op":"ping","pad":"' + "x" * 2**20 + '"}', "too_large", None, None),
    ("no_op", '{"topic": "organization:acme"}', "unknown_op", ["op"], None),
    ("null_op", '{"op": null}', "unknown_op", ["op"], None),
    ("unknown_op", '{"op": "dance"}', "unknown_op", ["op"], None),
    ("op_not_a_string", '{"op": ["subscribe"]}', "unknown_op", ["op"], None),
    ("op_case", '{"op": "Subscribe", "topic": "organization:acme"}', "unknown_op", ["op"], None),
    ("missing_topic", '{"op": "subscribe"}', "invalid_topic", ["topic"], None),
    ("topic_number", '{"op": "subscribe", "topic": 5}', "invalid_topic", ["topic"], None),
    ("topic_object", '{"op": "subscribe", "topic": {"a": 1}}', "invalid_topic", ["topic"], None),
    ("topic_too_long", json.dumps({"op": "subscribe", "topic": "a:" + "b" * 600}), "invalid_topic", ["topic"],
     None),
    ("unsubscribe_no_topic", '{"op": "unsubscribe"}', "invalid_topic", ["topic"], None),
    ("since_string", _since('"3"'), "invalid_input", ["since"], ACME),
    ("since_bool", _since('true'), "invalid_input", ["since"], ACME),
    ("since_float", _since('1.5'), "invalid_input", ["since"], ACME),
    ("since_negative", _since('-1'), "invalid_input", ["since"], ACME),
    ("since_list", _since('[1]'), "invalid_input", ["since"], ACME),
    ("since_beyond_64_bits", _since(str(2**70)), "invalid_input", ["since"], ACME),
    ("since_one_past_max", _since(str(2**63)), "invalid_input", ["since"], ACME),
    ("since_thousands_of_digits", _since("9" * 5000), "bad_json", None, None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "code", "fields", "topic"), [f[1:] for f in BAD_FRAMES], ids=[f[0] for f in BAD_FRAMES]
)
def test_bad_client_frames_become_error_frames_naming_the_problem(
    text: str | None, code: str, fields: list[str] | None, topic: str | None
) -> None:
    with pytest.raises(frames.ClientFrameError) as info:
        frames.parse_client_frame(text)
    frame = json.loads(info.value.frame())
    assert isinstance(frames.server_frames.validate_python(frame), frames.ErrorFrame)
    assert frame["error"] == code
    assert frame.get("fields") == fields
    assert frame.get("topic") == topic
    for field in fields or []:
        assert field in frame["detail"]


def test_good_client_frames_parse_into_their_models() -> None:
    assert frames.parse_client_frame('{"op":"ping"}') == frames.Ping(op="ping")
    parsed = frames.parse_client_frame('{"op":"subscribe","topic":"organization:acme","since":7,"new":1}')
    assert parsed == frames.Subscribe(op="subscribe", topic="organization:acme", since=7)
    assert frames.parse_client_frame('{"op":"subscribe","topic":"a:b","since":null}') == frames.Subscribe(
        op="subscribe", topic="a:b"
    )
    assert frames.parse_client_frame('{"op":"unsubscribe","topic":"a:b"}') == frames.Unsubscribe(
        op="unsubscribe", topic="a:b"
    )
