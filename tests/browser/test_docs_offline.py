"""The API documentation renders in a browser that may reach nothing but this Foundry."""

from __future__ import annotations

from urllib.parse import urlsplit

from playwright.sync_api import Browser, Route, expect

from tests.browser.support import Server


def test_docs_render_with_every_request_staying_on_this_server(browser: Browser, server: Server) -> None:
    own = urlsplit(server.url).netloc
    foreign: list[str] = []
    context = browser.new_context()

    def only_this_server(route: Route) -> None:
        # A CDN is unreachable offline: refuse it here too, so a page that needs one fails to render.
        if urlsplit(route.request.url).netloc == own:
            route.continue_()
        else:
            foreign.append(route.request.url)
            route.abort()

    try:
        context.route("**/*", only_this_server)
        page = context.new_page()
        page.goto(f"{server.url}/docs")
        # Swagger UI drew the document it fetched from /openapi.json: the title and the operations.
        expect(page.locator(".swagger-ui .info .title")).to_contain_text("Foundry")
        expect(
            page.locator(".opblock-summary-path", has_text="/v1/organizations/{org}/tasks").first
        ).to_be_visible()
        # The session cookie is offered as the way to authorize.
        expect(page.locator(".swagger-ui .auth-wrapper .authorize")).to_be_visible()
    finally:
        context.close()
    assert foreign == []


def test_the_websocket_protocol_page_renders_offline(browser: Browser, server: Server) -> None:
    own = urlsplit(server.url).netloc
    foreign: list[str] = []
    context = browser.new_context()

    def only_this_server(route: Route) -> None:
        if urlsplit(route.request.url).netloc == own:
            route.continue_()
        else:
            foreign.append(route.request.url)
            route.abort()

    try:
        context.route("**/*", only_this_server)
        page = context.new_page()
        page.goto(f"{server.url}/docs")
        # Swagger UI shows the OpenAPI description, which links to the websocket protocol.
        link = page.locator(".swagger-ui .info a", has_text="/docs/realtime")
        expect(link).to_have_attribute("href", "/docs/realtime")
        page.goto(f"{server.url}/docs/realtime")  # Swagger UI opens description links in a new tab
        expect(page.locator("h1")).to_contain_text("Foundry realtime")
        expect(page.locator("section#subscribe table")).to_contain_text("since")
        expect(page.locator("section#error")).to_contain_text("invalid_topic")
    finally:
        context.close()
    assert foreign == []
