"""The API documentation and what each mode exposes, through a real HTTP server per mode."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import jsonschema
import pytest
import uvicorn

from foundry.config import Settings
from foundry.http.app import create_app
from tests.ports import free_port
from tests.realtime.helpers import ASYNCAPI_SCHEMA

MOCK_SIGN_IN = "/v1/auth/mock/sign-in"


@pytest.fixture(scope="module", params=["mock", "production"])
def site(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """A real uvicorn server of a Foundry app in one mode, on the in-process runtime."""
    mode = request.param
    settings = Settings(
        data_dir=tmp_path_factory.mktemp(mode),
        mode=mode,
        secret_key="s" * 40,
        runtime={"backend": "inprocess"},  # type: ignore[arg-type]
    )
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60  # a deadline, not a wait: start-up is slower on a busy machine
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        client.headers["x-mode"] = mode
        yield client
    server.should_exit = True
    thread.join(10)


def _mode(client: httpx.Client) -> str:
    return client.headers["x-mode"]


class _Assets(HTMLParser):
    """Every URL a page loads by itself: scripts, stylesheets, icons, images."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value and name in ("src", "href") and tag in ("script", "link", "img"):
                self.urls.append(value)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_documentation_pages_load_only_assets_this_server_serves(site: httpx.Client, page: str) -> None:
    response = site.get(page)
    assert response.status_code == 200
    parser = _Assets()
    parser.feed(response.text)
    assert parser.urls, "the page loads no assets at all"
    # Also URLs built in inline scripts: nothing may point at another host.
    assert not re.search(r"https?://", response.text.replace("http://127.0.0.1", "")), response.text
    for url in parser.urls:
        assert not urlsplit(url).netloc, f"{page} loads {url} from another origin"
        asset = site.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 1000, url


def test_openapi_declares_the_session_cookie_and_the_error_shape(site: httpx.Client) -> None:
    schema = site.get("/openapi.json").json()
    scheme = schema["components"]["securitySchemes"]["sessionCookie"]
    assert scheme == {**scheme, "type": "apiKey", "in": "cookie", "name": "foundry_session"}
    error = schema["components"]["schemas"]["Error"]
    assert error["required"] == ["error", "detail"]
    assert set(error["properties"]) == {"error", "detail", "fields"}
    create_task = schema["paths"]["/v1/organizations/{org}/tasks"]["post"]
    assert create_task["security"] == [{"sessionCookie": []}]
    for code in ("401", "403", "404", "409", "413", "422"):
        content = create_task["responses"][code]["content"]["application/json"]
        assert content["schema"] == {"$ref": "#/components/schemas/Error"}, code
    # FastAPI's own 422 body ({"detail": [...]}) is not what Foundry answers: it is gone.
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    assert "security" not in schema["paths"]["/healthz"]["get"]


def test_the_error_shape_in_the_document_is_the_one_the_server_answers(site: httpx.Client) -> None:
    error = site.get("/openapi.json").json()["components"]["schemas"]["Error"]
    unauthorized = site.post("/v1/organizations/acme/tasks", json={"prompt": "x"})
    invalid = site.post(
        "/v1/app/active-organization", content=b"{not json", headers={"content-type": "application/json"}
    )
    missing = site.get("/v1/no-such-route")
    # The malformed body of a signed-out caller is a 401 too: who may ask is checked first.
    for answer, status in ((unauthorized, 401), (invalid, 401), (missing, 404)):
        assert answer.status_code == status, answer.text
        assert set(error["required"]) <= set(answer.json()) <= set(error["properties"]), answer.text


def test_mock_sign_in_exists_in_mock_mode_only(site: httpx.Client) -> None:
    documented = MOCK_SIGN_IN in site.get("/openapi.json").json()["paths"]
    answer = site.post(MOCK_SIGN_IN, json={"login": "alice"})
    if _mode(site) == "mock":
        assert documented
        assert answer.status_code == 200, answer.text
    else:
        assert not documented
        assert answer.status_code == 404
        assert answer.json() == {"error": "not_found", "detail": f"no route POST {MOCK_SIGN_IN}"}


def test_docs_assets_are_shipped_inside_the_installed_packages() -> None:
    # The assets are package data, not a download at start: the server needs no network for them.
    from foundry.http.openapi import _static_dir

    static = _static_dir()
    assert Path(static, "swagger-ui-bundle.js").stat().st_size > 100_000
    assert Path(static, "redoc.standalone.js").stat().st_size > 100_000


def test_the_websocket_protocol_is_published_as_asyncapi_without_signing_in(site: httpx.Client) -> None:
    answer = site.get("/v1/realtime/asyncapi.json")
    assert answer.status_code == 200, answer.text
    document = answer.json()
    jsonschema.Draft7Validator(ASYNCAPI_SCHEMA).validate(document)
    assert document["channels"]["realtime"]["address"] == "/v1/realtime"
    assert document["servers"]["foundry"]["protocol"] in ("ws", "wss")
    cookie = document["components"]["securitySchemes"]["sessionCookie"]
    assert (cookie["in"], cookie["name"]) == ("cookie", "foundry_session")
    # /docs links to it, and the OpenAPI document lists the route.
    openapi = site.get("/openapi.json").json()
    assert "/v1/realtime/asyncapi.json" in openapi["info"]["description"]
    assert "/docs/realtime" in openapi["info"]["description"]
    assert "/v1/realtime/asyncapi.json" in openapi["paths"]


def test_the_websocket_protocol_page_is_readable_offline(site: httpx.Client) -> None:
    page = site.get("/docs/realtime")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    parser = _Assets()
    parser.feed(page.text)
    assert parser.urls == []  # inline style, no script, nothing fetched
    assert "<script" not in page.text
    for frame in ("subscribe", "unsubscribe", "ping", "subscribed", "snapshot", "event", "error", "pong"):
        assert f'id="{frame}"' in page.text
    assert site.get("/v1/realtime/asyncapi.json").status_code == 200
