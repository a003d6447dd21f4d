"""HTTP plumbing of the fake GitHub: a threaded HTTP/1.1 server, requests, responses, pagination.

Standard library only (``http.server``), so the fake starts in milliseconds and needs no event loop:
it serves from its own threads while async tests and the real driver talk to it over the network.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

_log = logging.getLogger(__name__)

DOCS_URL = "https://docs.github.com/rest"
MAX_PER_PAGE = 100
DEFAULT_PER_PAGE = 30


@dataclass
class Request:
    """A parsed request; ``headers`` keys are lower case, ``query`` keeps the last value of a key."""

    method: str
    path: str
    query: dict[str, str]
    query_pairs: list[tuple[str, str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The JSON body (``{}`` when empty); malformed JSON is GitHub's 400."""
        if not self.body:
            return {}
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise HttpError(400, "Problems parsing JSON") from exc

    def params(self) -> dict[str, str]:
        """Form, JSON or query parameters, as GitHub's OAuth endpoints accept all three."""
        merged = dict(self.query)
        content_type = self.headers.get("content-type", "")
        if "json" in content_type:
            body = self.json()
            if isinstance(body, dict):
                merged.update({k: str(v) for k, v in body.items()})
        elif self.body:
            merged.update(dict(parse_qsl(self.body.decode("utf-8", "replace"))))
        return merged


@dataclass
class Response:
    """What a route answers; the server adds ``Content-Length``."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


class HttpError(Exception):
    """Aborts a route with GitHub's error body ``{"message", "documentation_url", "status"}``."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message
        self.extra = extra


Dispatch = Callable[[Request], Response]


class HttpServer(ThreadingHTTPServer):
    """Serves every request through ``dispatch`` on its own daemon thread."""

    daemon_threads = True

    def __init__(self, dispatch: Dispatch, address: tuple[str, int]) -> None:
        self.dispatch = dispatch
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _RequestHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # Tracked so `stop()` can close idle keep-alive connections, whose threads would linger.
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Shut open keep-alive connections down so their handler threads end."""
        with self.connections_lock:
            open_connections = list(self.connections)
        for conn in open_connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError as exc:  # already closed by the client: nothing left to release
                _log.debug("fake github: closing connection: %s", exc)


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like GitHub; every response has a Content-Length
    server: HttpServer

    def _handle(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        split = urlsplit(self.path)
        pairs = parse_qsl(split.query, keep_blank_values=True)
        request = Request(
            method=self.command,
            path=split.path,
            query=dict(pairs),
            query_pairs=pairs,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
        )
        response = self.server.dispatch(request)
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("fake github: " + format, *args)


def paginate(
    request: Request,
    items: list[Any],
    base_url: str,
    envelope: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> tuple[Any, dict[str, str]]:
    """One page of ``items`` and its headers, like GitHub: ``per_page`` (≤100, default 30) and
    ``page`` query parameters, a ``Link`` header with ``prev``/``next``/``last``/``first`` URLs on
    ``base_url`` keeping the other query parameters, and for ``envelope`` lists
    ``{"total_count": n, **extra, envelope: [...]}``.

    Raises:
        HttpError: 422 for non-numeric pagination parameters.
    """
    try:
        per_page = min(max(int(request.query.get("per_page", DEFAULT_PER_PAGE)), 1), MAX_PER_PAGE)
        page = max(int(request.query.get("page", 1)), 1)
    except ValueError as exc:
        raise HttpError(422, "Invalid pagination parameter") from exc
    last = max((len(items) + per_page - 1) // per_page, 1)
    chunk = items[(page - 1) * per_page : page * per_page]
    links: list[str] = []

    def link(target: int, rel: str) -> None:
        pairs = [(k, v) for k, v in request.query_pairs if k != "page"] + [("page", str(target))]
        links.append(f'<{base_url}{request.path}?{urlencode(pairs)}>; rel="{rel}"')

    if page > 1:
        link(page - 1, "prev")
    if page < last:
        link(page + 1, "next")
        link(last, "last")
    if page > 1:
        link(1, "first")
    body: Any = chunk
    if envelope is not None:
        body = {"total_count": len(items), **(extra or {}), envelope: chunk}
    return body, ({"Link": ", ".join(links)} if links else {})
