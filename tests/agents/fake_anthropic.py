"""A small fake of Anthropic's Messages API, speaking its wire format, for the real Claude Code.

``POST /v1/messages`` (Claude Code adds ``?beta=true``) answers ``stream: true`` requests with the
server-sent events of a streamed message (``message_start``, ``content_block_start``,
``content_block_delta`` with ``text_delta`` parts, ``content_block_stop``, ``message_delta``,
``message_stop``) and other requests with one JSON message; ``POST /v1/messages/count_tokens``
counts. A request without a known ``x-api-key`` gets the API's 401 ``authentication_error``.
Every request is recorded (method, path, headers, JSON body) for the test to inspect.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Seen:
    """One request the fake received."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any


class FakeAnthropic:
    """The fake, on a free port of 127.0.0.1; ``reply`` is what the model says, in ``parts``."""

    def __init__(self, keys: set[str], parts: list[str]) -> None:
        self.keys = keys
        self.parts = parts
        self.requests: list[Seen] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-anthropic", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeAnthropic:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def seen(self) -> list[Seen]:
        with self._lock:
            return list(self.requests)

    def _record(self, seen: Seen) -> None:
        with self._lock:
            self.requests.append(seen)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def _json(self, status: int, payload: dict[str, Any]) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _error(self, status: int, kind: str, message: str) -> None:
                self._json(status, {"type": "error", "error": {"type": kind, "message": message}})

            def do_GET(self) -> None:
                fake._record(Seen("GET", self.path, dict(self.headers), None))
                self._error(404, "not_found_error", f"no route GET {self.path}")

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode(errors="replace")
                fake._record(Seen("POST", self.path, dict(self.headers), body))
                path = self.path.split("?", 1)[0]
                if self.headers.get("x-api-key") not in fake.keys:
                    self._error(401, "authentication_error", "invalid x-api-key")
                elif path == "/v1/messages/count_tokens":
                    self._json(200, {"input_tokens": 42})
                elif path == "/v1/messages" and isinstance(body, dict):
                    self._message(body)
                else:
                    self._error(404, "not_found_error", f"no route POST {path}")

            def _message(self, request: dict[str, Any]) -> None:
                text = "".join(fake.parts)
                message: dict[str, Any] = {
                    "id": f"msg_fake_{len(fake.requests)}",
                    "type": "message",
                    "role": "assistant",
                    "model": request.get("model", "claude-sonnet"),
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": 25, "output_tokens": 1},
                }
                if not request.get("stream"):
                    message.update(content=[{"type": "text", "text": text}], stop_reason="end_turn")
                    message["usage"]["output_tokens"] = len(fake.parts)
                    self._json(200, message)
                    return
                block = {"type": "text", "text": ""}
                deltas = [{"type": "text_delta", "text": part} for part in fake.parts]
                events: list[tuple[str, dict[str, Any]]] = [
                    ("message_start", {"type": "message_start", "message": message}),
                    (
                        "content_block_start",
                        {"type": "content_block_start", "index": 0, "content_block": block},
                    ),
                    *(
                        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": d})
                        for d in deltas
                    ),
                    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
                    (
                        "message_delta",
                        {
                            "type": "message_delta",
                            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                            "usage": {"output_tokens": len(fake.parts)},
                        },
                    ),
                    ("message_stop", {"type": "message_stop"}),
                ]
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("cache-control", "no-cache")
                self.send_header("connection", "close")
                self.end_headers()
                for name, data in events:
                    self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
                    self.wfile.flush()
                self.close_connection = True

        return Handler
