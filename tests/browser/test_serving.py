"""How Foundry serves the dashboard: hashed assets cached for a year, index.html never cached,
deep links load the app, and the app never shadows the API, its docs or the health checks."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from playwright.sync_api import expect

from foundry.http.dashboard import install_dashboard
from tests.browser.conftest import People
from tests.browser.support import DIST, Server


@pytest.fixture
def http(server: Server) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=10)


def test_index_and_deep_links_serve_the_app_uncached(http: httpx.Client) -> None:
    for path in ("/", "/o/acme", "/o/acme/t/some-task", "/sign-in", "/anything/deep"):
        answer = http.get(path)
        assert answer.status_code == 200, path
        assert answer.headers["content-type"].startswith("text/html")
        assert answer.headers["cache-control"] == "no-cache"
        assert "script-src 'self'" in answer.headers["content-security-policy"]
        assert '<div id="app">' in answer.text
        assert '<script id="foundry-config" type="application/json">' in answer.text


def test_assets_are_hashed_long_cached_and_gzipped(http: httpx.Client) -> None:
    index = http.get("/").text
    names = re.findall(r"/assets/(app-[A-Z0-9]+\.(?:js|css))", index)
    assert len(names) == 2, index
    for name in names:
        plain = http.get(f"/assets/{name}", headers={"accept-encoding": "identity"})
        assert plain.status_code == 200
        assert plain.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert plain.content == (DIST / "assets" / name).read_bytes()
        packed = http.get(f"/assets/{name}", headers={"accept-encoding": "gzip"})
        assert packed.headers["content-encoding"] == "gzip"
        assert packed.content == plain.content  # httpx decodes; the bytes on the wire were gzip
    js = next(n for n in names if n.endswith(".js"))
    gz = (DIST / "assets" / f"{js}.gz").read_bytes()
    assert gzip.decompress(gz) == (DIST / "assets" / js).read_bytes()
    assert len(gz) <= 300 * 1024  # the whole app, gzipped


def test_the_app_never_shadows_the_api_docs_or_health(http: httpx.Client) -> None:
    unknown = http.get("/v1/no-such-route")
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "not_found"
    assert http.get("/v1").status_code == 404
    assert http.get("/v1").json()["error"] == "not_found"
    assert http.post("/v1/no-such-route", json={}).json()["error"] == "not_found"
    assert http.get("/assets/app-NOPE.js").json()["error"] == "not_found"  # never index.html
    assert http.get("/healthz").json() == {"status": "ok"}
    assert http.post("/healthz").status_code == 405
    ready = http.get("/readyz").json()
    assert ready["checks"]["dashboard"]["ok"] is True
    assert http.get("/openapi.json").json()["info"]["title"] == "Foundry"
    assert "swagger" in http.get("/docs").text.lower()
    assert http.get("/v1/app").json()["auth"]["status"] == "signed_out"


def test_workspace_first_load_is_under_a_second(people: People) -> None:
    page = people.page("alice")
    expect(page).to_have_url(re.compile(r"/o/acme$"))
    page.reload()
    expect(page.locator("a[data-task-id]").first).to_be_visible()
    # The app marks the moment the workspace first shows its tasks (ms since navigation start), in an
    # effect that runs after the browser painted them: it may come a frame after the link is visible.
    page.wait_for_function("() => performance.getEntriesByName('foundry:workspace-ready').length > 0")
    ready = page.evaluate("() => performance.getEntriesByName('foundry:workspace-ready')[0].startTime")
    assert ready < 1000, ready


def test_without_a_build_the_root_names_the_fix(tmp_path: Path) -> None:
    app = FastAPI()

    @app.get("/v1/ping")
    async def ping() -> dict[str, str]:
        return {"pong": "yes"}

    install_dashboard(app, tmp_path / "dist")
    client = TestClient(app)
    answer = client.get("/o/acme")
    assert answer.status_code == 503
    assert answer.json()["error"] == "dashboard_not_built"
    assert "scripts/bootstrap.sh" in answer.json()["detail"]
    assert app.state.dashboard.status()["ok"] is False
    assert client.get("/v1/ping").json() == {"pong": "yes"}
    assert client.get("/v1/pong").status_code == 404

    # Built afterwards: served without a restart, with the page config escaped for a <script>.
    (tmp_path / "dist" / "assets").mkdir(parents=True)
    (tmp_path / "dist" / "assets" / "app-X1.js").write_text("console.log(1)")
    (tmp_path / "dist" / "index.html").write_text("<head><!--foundry-config--></head>")
    page = client.get("/o/acme")
    assert page.status_code == 200
    config = re.search(r'<script id="foundry-config" type="application/json">(.*?)</script>', page.text)
    assert config is not None
    assert json.loads(config.group(1))["modelGroups"][0]["models"]
    assert page.text.count("</script>") == 1
    assert client.get("/assets/app-X1.js").text == "console.log(1)"
    assert app.state.dashboard.status()["ok"] is True
