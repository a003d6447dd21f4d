"""What a log line looks like to an operator: one format, the request id, never a secret."""

from __future__ import annotations

import json
import logging

import pytest

from foundry import request_id
from foundry.config import Settings
from foundry.logging import REDACTED, JsonFormatter, TextFormatter, _Context

SECRET = "whsec_0123456789abcdef"


def record(message: str, *args: object, exc: BaseException | None = None) -> logging.LogRecord:
    rec = logging.LogRecord("foundry.test", logging.ERROR, __file__, 1, message, args, None)
    if exc is not None:
        rec.exc_info = (type(exc), exc, exc.__traceback__)
    _Context("main").filter(rec)
    return rec


def test_a_json_line_names_process_request_and_redacts_secrets_even_in_tracebacks() -> None:
    try:
        raise ValueError(f"signature mismatch for secret {SECRET}")
    except ValueError as exc:
        with request_id.bound("req-1"):
            rec = record("verifying with %s", SECRET, exc=exc)
    line = JsonFormatter([SECRET]).format(rec)
    entry = json.loads(line)
    assert entry["process"] == "main"
    assert entry["request_id"] == "req-1"
    assert entry["msg"] == f"verifying with {REDACTED}"
    assert SECRET not in line
    assert "ValueError" in entry["exc"]
    assert entry["ts"].endswith("Z")


def test_a_text_line_has_a_utc_timestamp_and_the_request_id_only_when_there_is_one() -> None:
    plain = TextFormatter([]).format(record("hello"))
    assert "rid=" not in plain
    assert " ERROR main[" in plain
    with request_id.bound("abc"):
        traced = TextFormatter([]).format(record("hello"))
    assert traced.endswith("hello rid=abc")


@pytest.mark.parametrize(
    ("incoming", "kept"),
    [
        ("abc-123", True),
        ("a" * 64, True),
        ("a" * 65, False),
        ('x" rid=admin', False),
        ("x\ny", False),
        ("", False),
    ],
)
def test_only_sane_incoming_request_ids_are_kept(incoming: str, kept: bool) -> None:
    assert (request_id.accept(incoming) == incoming) is kept


def test_every_configured_secret_is_known_to_the_redaction(tmp_path: object) -> None:
    settings = Settings(
        data_dir=tmp_path,  # type: ignore[arg-type]
        secret_key="k" * 20,  # type: ignore[arg-type]
        github={"webhook_secret": SECRET, "client_secret": "c" * 20},  # type: ignore[arg-type]
        stripe={"secret_key": "sk_test_" + "s" * 20, "webhook_secrets": ["whsec_" + "w" * 20]},  # type: ignore[arg-type]
        sandbox={"agent_env": {"OPENAI_API_KEY": "sk-" + "o" * 20, "LANG": "C.UTF-8"}},  # type: ignore[arg-type]
    )
    values = set(settings.secret_values())
    assert {
        "k" * 20,
        SECRET,
        "c" * 20,
        "sk_test_" + "s" * 20,
        "whsec_" + "w" * 20,
        "sk-" + "o" * 20,
    } <= values
    assert "C.UTF-8" not in values
