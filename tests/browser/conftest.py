"""Browser tests: Debian's Chromium driven by Playwright against a real ``foundry serve``.

One server (mock mode, demo agent) serves the whole directory, behind a proxy that the reconnect
test cuts. Pages run with the server's Content-Security-Policy enforced, except in the
accessibility test, which injects axe-core. Screenshots go to ``test-results/browser/``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from tests.browser.support import CHROMIUM, DIST, ROOT, CuttableProxy, Server

SHOTS = ROOT / "test-results" / "browser"
#: Collects every main-thread task over 50 ms (Long Tasks API) with its start time, so that a
#: measurement can keep only the tasks of the interval it is about (`long_tasks_between`): the
#: observer's callback runs late, and would otherwise slip page-load tasks into a later interval.
LONG_TASKS_SCRIPT = """
window.__longTasks = [];
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) window.__longTasks.push({ start: e.startTime, duration: e.duration });
}).observe({ type: "longtask", buffered: true });
"""
#: Resolves to the page's clock when the first agent text contains ``arg`` (checked every frame;
#: `textContent` needs no layout, so the check itself adds no long task).
_TEXT_SHOWN_AT = """
(text) => {
  const el = document.querySelector("[data-testid=agent-text]");
  return el !== null && el.textContent.includes(text) ? performance.now() : false;
}
"""


def text_shown_at(page: Page, text: str, timeout: float = 120_000) -> float:
    """The page's ``performance.now()`` at the frame where the first agent text first contains
    ``text``."""
    handle = page.wait_for_function(_TEXT_SHOWN_AT, arg=text, polling="raf", timeout=timeout)
    return float(handle.json_value())


def long_tasks_between(page: Page, start: float, end: float) -> list[float]:
    """Durations (ms) of the long tasks that started in ``[start, end]`` (page clock)."""
    # The observer's callback may still be pending for the last frames: let it run first.
    page.evaluate("() => new Promise((r) => setTimeout(r, 100))")
    tasks: list[dict[str, float]] = page.evaluate("() => window.__longTasks")
    return [t["duration"] for t in tasks if start <= t["start"] <= end]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).parent == Path(__file__).parent:
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    # Debian's Chromium: no browser download (`playwright install` is never run).
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: run scripts/bootstrap.sh (it installs chromium)"
    return {**browser_type_launch_args, "executable_path": CHROMIUM}


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    assert (DIST / "index.html").is_file(), "the dashboard is not built: run scripts/bootstrap.sh"
    srv = Server(tmp_path_factory.mktemp("browser") / "data")
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def proxy(server: Server) -> Iterator[CuttableProxy]:
    p = CuttableProxy(server.port)
    yield p
    p.close()


@pytest.fixture
def site_url(proxy: CuttableProxy) -> str:
    """Every page goes through the proxy (the browser's origin is the proxy's address)."""
    proxy.restore()
    return proxy.url


@pytest.fixture(scope="session")
def shots() -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    return SHOTS


class People:
    """Opens a signed-in browser context per seeded user."""

    def __init__(self, browser: Browser, base_url: str) -> None:
        self.browser = browser
        self.base_url = base_url
        self.contexts: list[BrowserContext] = []

    def page(
        self, login: str | None, *, width: int = 1280, height: int = 800, bypass_csp: bool = False
    ) -> Page:
        ctx = self.browser.new_context(
            base_url=self.base_url, viewport={"width": width, "height": height}, bypass_csp=bypass_csp
        )
        ctx.add_init_script(LONG_TASKS_SCRIPT)
        self.contexts.append(ctx)
        page = ctx.new_page()
        page.errors = []  # type: ignore[attr-defined]
        page.on("pageerror", lambda e: page.errors.append(str(e)))  # type: ignore[attr-defined]
        if login:
            sign_in(page, login)
        return page

    def close(self) -> None:
        for ctx in self.contexts:
            ctx.close()


@pytest.fixture
def people(browser: Browser, site_url: str) -> Iterator[People]:
    p = People(browser, site_url)
    yield p
    p.close()


def sign_in(page: Page, login: str) -> None:
    """Signs in through the sign-in page, as a person would."""
    page.goto("/")
    page.get_by_role("button", name=re.compile(f"Continue as {login}")).click()
    expect(page.get_by_test_id("current-user")).to_have_text(login)
