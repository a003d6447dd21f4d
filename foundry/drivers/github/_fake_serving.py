"""Serving of the fake GitHub: its lifecycle, request dispatch, failure injection and the request log.

Split from the routes so the HTTP mechanics every route shares (JSON responses with GitHub's headers,
pagination, GitHub-shaped errors, injected failures) sit in one place; the route modules only decide
what to answer.
"""

from __future__ import annotations

import asyncio
import http
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Self

from foundry.drivers.github._fake_http import DOCS_URL, HttpError, HttpServer, Request, Response, paginate
from foundry.drivers.github._fake_records import JSON, localize
from foundry.drivers.github._fake_state import Failure, FakeState, RecordedRequest

__all__ = ["FakeServing", "Handler"]

# The fake's log lines keep the logger name they had before the fake was split into modules.
_log = logging.getLogger("foundry.drivers.github.fake")

Handler = Callable[..., Response]


class FakeServing(FakeState):
    """Starts and stops the fake's server and turns each request into a GitHub-shaped response."""

    # ---------------------------------------------------------------------------------- lifecycle

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>`` — both the API base and the web (OAuth) base."""
        if self._server is None:
            raise RuntimeError("FakeGitHub is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> Self:
        """Start serving in a background thread. Idempotent."""
        if self._server is not None:
            return self
        self._server = HttpServer(self._serve, ("127.0.0.1", self._port))
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-github", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close open connections. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.close_connections()  # idle keep-alive connections would keep their threads alive
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)

    # ---------------------------------------------------------------- failure injection, request log

    def fail_next(
        self,
        path_prefix: str,
        status: int,
        headers: Mapping[str, str] | None = None,
        *,
        body: JSON = None,
        method: str | None = None,
        times: int = 1,
        after: int = 0,
    ) -> None:
        """Make the next ``times`` requests whose path starts with ``path_prefix`` fail.

        ``after`` lets that many matching requests through first (e.g. ``after=1`` fails page 2 of
        a list). Failures are matched before authentication, in the order they were added. Without
        ``body``, GitHub's message for that kind of failure is used (rate limits get the exact
        wording PyGithub recognises).
        """
        with self._lock:
            lowered = {k.lower(): str(v) for k, v in (headers or {}).items()}
            self._failures.append(
                Failure(path_prefix, status, lowered, body, method.upper() if method else None, times, after)
            )

    def clear_requests(self) -> None:
        """Forget the request log."""
        with self._lock:
            self.requests.clear()

    def requests_to(self, path_prefix: str, method: str | None = None) -> list[RecordedRequest]:
        """Logged requests whose path starts with ``path_prefix`` (and with ``method``, if given)."""
        with self._lock:
            return [
                r
                for r in self.requests
                if r.path.startswith(path_prefix) and (method is None or r.method == method.upper())
            ]

    # ------------------------------------------------------------------------------ dispatching

    def _match(self, method: str, path: str) -> tuple[Handler, dict[str, str]] | None:
        parts = path.strip("/").split("/")
        allowed = False
        for route_method, pattern, handler in self._routes:
            if len(pattern) != len(parts):
                continue
            params: dict[str, str] = {}
            for want, got in zip(pattern, parts, strict=True):
                if want.startswith("{"):
                    params[want[1:-1]] = got
                elif want != got:
                    break
            else:
                if route_method == method:
                    return handler, params
                allowed = True
        if allowed:
            raise HttpError(404, "Not Found")  # GitHub answers unknown verbs on known paths with 404
        return None

    def _serve(self, request: Request) -> Response:
        with self._lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            if self.latency:
                time.sleep(self.latency)  # runs on the server's request thread, never an event loop
            with self._lock:
                response = self._dispatch(request)
                self.requests.append(
                    RecordedRequest(
                        request.method,
                        request.path,
                        dict(request.query),
                        dict(request.headers),
                        request.body,
                        response.status,
                    )
                )
                return response
        finally:
            with self._lock:
                self._in_flight -= 1

    def _dispatch(self, request: Request) -> Response:
        try:
            failure = self._take_failure(request)
            if failure is not None:
                return failure
            matched = self._match(request.method, request.path)
            if matched is None:
                raise HttpError(404, "Not Found")
            handler, params = matched
            return handler(request, **params)
        except HttpError as exc:
            body = {"message": exc.message, "documentation_url": DOCS_URL, "status": str(exc.status)}
            return self._json({**body, **exc.extra}, exc.status)
        except Exception:  # a bug in the fake itself: answer like GitHub's 500 and keep serving
            _log.exception("fake github: %s %s crashed", request.method, request.path)
            return self._json({"message": "Server Error"}, 500)

    def _take_failure(self, request: Request) -> Response | None:
        for failure in self._failures:
            if request.path.startswith(failure.path_prefix) and failure.method in (None, request.method):
                if failure.skip > 0:
                    failure.skip -= 1
                    return None
                failure.remaining -= 1
                if failure.remaining <= 0:
                    self._failures.remove(failure)
                body = failure.body if failure.body is not None else self._failure_body(failure)
                return self._json(body, failure.status, failure.headers)
        return None

    @staticmethod
    def _failure_body(failure: Failure) -> JSON:
        if failure.status in (403, 429):
            if failure.headers.get("x-ratelimit-remaining") == "0":
                message = (
                    "API rate limit exceeded for installation. If you reach out to GitHub Support "
                    "for help, please include the request ID."
                )
            else:
                message = (
                    "You have exceeded a secondary rate limit. Please wait a few minutes before "
                    "you try again."
                )
        else:
            message = http.HTTPStatus(failure.status).phrase
        return {"message": message, "documentation_url": DOCS_URL, "status": str(failure.status)}

    def _json(self, body: JSON, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
        reset = int(self.clock.now_ms() / 1000) + 3600
        out = {
            "Content-Type": "application/json; charset=utf-8",
            "X-GitHub-Media-Type": "github.v3; format=json",
            "X-GitHub-Api-Version-Selected": "2022-11-28",
            "X-GitHub-Request-Id": secrets.token_hex(8).upper(),
            "X-RateLimit-Limit": "5000",
            "X-RateLimit-Remaining": "4999",
            "X-RateLimit-Reset": str(reset),
            "X-RateLimit-Used": "1",
            "X-RateLimit-Resource": "core",
        }
        for name, value in (headers or {}).items():
            # Injected headers replace the defaults whatever their case.
            for existing in [k for k in out if k.lower() == name.lower()]:
                del out[existing]
            out[name] = value
        return Response(status, json.dumps(localize(body, self.base_url)).encode(), out)

    def _page(
        self,
        request: Request,
        items: list[JSON],
        envelope: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Response:
        body, headers = paginate(request, items, self.base_url, envelope, extra)
        return self._json(body, 200, headers)
