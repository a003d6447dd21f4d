"""Agent credentials on the organization settings page: an admin adds, replaces and removes them
(names only ever shown; the value never reaches the page or any response), the server's refusal
is shown as it words it, and a member changes nothing."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page, Request, Route, WebSocket, expect

from actors.organization.agent_credentials import ALLOWED_NAMES, check_name
from foundry.errors import InvalidInput
from tests.browser.conftest import People

log = logging.getLogger(__name__)

FIRST_VALUE = "sk-groq-first-browser-secret-0123ABCD"
SECOND_VALUE = "sk-groq-second-browser-secret-4567WXYZ"


class Traffic:
    """Every HTTP response and websocket frame a page receives, and the requests it sends."""

    def __init__(self, page: Page) -> None:
        self.bodies: list[str] = []
        self.frames: list[str | bytes] = []
        self.requests: list[Request] = []
        # Every API answer passes through here and its body is kept as it arrives: a body read later
        # from a `Response` is gone once the page has navigated on.
        page.route("**/v1/**", self._record)
        page.on("request", lambda request: self.requests.append(request))
        page.on("websocket", lambda ws: self._socket(ws))

    def _record(self, route: Route) -> None:
        try:
            response = route.fetch()
            body = response.body()
        except PlaywrightError as exc:
            # The page closed with this request in flight (the test ended): nothing left to record.
            # Raised here, it surfaced in whichever test opened the next page.
            log.info("not recorded, the page closed: %s (%s)", route.request.url, exc)
            return
        self.bodies.append(body.decode(errors="replace"))
        route.fulfill(response=response)

    def _socket(self, ws: WebSocket) -> None:
        ws.on("framereceived", lambda frame: self.frames.append(frame))

    def received(self) -> str:
        """Everything received so far, as text (bodies of redirects and the like are empty)."""
        bodies = list(self.bodies)
        bodies.extend(f if isinstance(f, str) else f.decode(errors="replace") for f in self.frames)
        return "\n".join(bodies)

    def writes(self) -> list[str]:
        return [
            f"{r.method} {r.url}" for r in self.requests if r.method in ("PUT", "DELETE", "POST", "PATCH")
        ]


def open_settings(page: Page) -> Any:
    page.goto("/o/acme/settings")
    section = page.get_by_test_id("agent-credentials")
    expect(section.get_by_role("heading", name="Agent credentials")).to_be_visible()
    return section


def input_values(page: Page) -> list[str]:
    return list(page.evaluate("() => [...document.querySelectorAll('input, textarea')].map((e) => e.value)"))


def test_an_admin_adds_replaces_and_removes_a_credential_and_never_sees_its_value(
    people: People, shots: Path
) -> None:
    carol = people.page("carol")
    traffic = Traffic(carol)
    section = open_settings(carol)
    rows = section.get_by_test_id("credential-list").locator("li")
    row = section.locator("li[data-name='GROQ_API_KEY']")
    expect(section.get_by_text("Loading credentials…")).to_have_count(0)
    expect(row).to_have_count(0)

    # Add: listed by name with its last four characters, who set it and when; the field is cleared.
    section.get_by_label("Name", exact=True).fill("GROQ_API_KEY")
    value = section.get_by_label("Value", exact=True)
    expect(value).to_have_attribute("type", "password")
    value.fill(FIRST_VALUE)
    # The admin may check what was pasted; saving hides the field again.
    section.get_by_role("button", name="Show value").click()
    expect(value).to_have_attribute("type", "text")
    section.get_by_role("button", name="Save credential").click()
    expect(section.get_by_role("status")).to_have_text(re.compile("GROQ_API_KEY saved"))
    expect(row).to_contain_text("ends in …ABCD")
    expect(row).to_contain_text("by carol")
    expect(row).to_contain_text("just now")
    expect(value).to_have_value("")
    expect(value).to_have_attribute("type", "password")
    expect(section.get_by_label("Name", exact=True)).to_have_value("")

    # Replace, by keyboard: the row's button fills the name and moves to the value field; saving
    # asks first, and cancelling changes nothing.
    section.get_by_role("button", name="Replace GROQ_API_KEY").focus()
    carol.keyboard.press("Enter")
    expect(section.get_by_label("Name", exact=True)).to_have_value("GROQ_API_KEY")
    expect(value).to_be_focused()
    carol.keyboard.type(SECOND_VALUE)
    carol.keyboard.press("Enter")
    dialog = carol.get_by_role("dialog", name="Replace GROQ_API_KEY?")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("set by carol")
    carol.screenshot(path=shots / "credentials-replace.png")
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_have_count(0)
    expect(row).to_contain_text("ends in …ABCD")
    section.get_by_role("button", name="Save credential").click()
    carol.get_by_role("dialog", name="Replace GROQ_API_KEY?").get_by_role(
        "button", name="Replace", exact=True
    ).click()
    expect(row).to_contain_text("ends in …WXYZ")
    expect(value).to_have_value("")

    # Remove: Escape keeps it; confirming removes it.
    section.get_by_role("button", name="Remove GROQ_API_KEY").click()
    dialog = carol.get_by_role("dialog", name="Remove GROQ_API_KEY?")
    expect(dialog).to_be_visible()
    carol.keyboard.press("Escape")
    expect(dialog).to_have_count(0)
    expect(row).to_have_count(1)
    section.get_by_role("button", name="Remove GROQ_API_KEY").click()
    carol.get_by_role("dialog", name="Remove GROQ_API_KEY?").get_by_role(
        "button", name="Remove", exact=True
    ).click()
    expect(section.get_by_role("status")).to_have_text("GROQ_API_KEY removed.")
    expect(row).to_have_count(0)
    expect(rows.filter(has_text="GROQ_API_KEY")).to_have_count(0)
    # The section keeps the keyboard's place once the row is gone.
    expect(section.get_by_role("heading", name="Agent credentials")).to_be_focused()

    # The value was typed, sent and forgotten: it is in no field, nowhere in the page and in no
    # response or live message the page received.
    received = traffic.received()
    # The check reads real bodies: the listings that named the credential, and live messages.
    assert "GROQ_API_KEY" in received
    assert traffic.frames
    for secret in (FIRST_VALUE, SECOND_VALUE):
        assert secret not in carol.content()
        assert secret not in input_values(carol)
        assert secret not in received
    puts = [w for w in traffic.writes() if w.startswith("PUT ")]
    assert len(puts) == 2, puts
    assert carol.errors == []  # type: ignore[attr-defined]


def test_a_refused_name_shows_the_server_s_reason_and_a_malformed_one_is_not_sent(people: People) -> None:
    carol = people.page("carol")
    traffic = Traffic(carol)
    section = open_settings(carol)
    name = section.get_by_label("Name", exact=True)

    # The suggestions are exactly the names the server accepts.
    options = section.locator("datalist#cred-name-options option")
    assert [options.nth(i).get_attribute("value") for i in range(options.count())] == list(ALLOWED_NAMES)

    # A well-formed name the server does not accept: its own words are shown, and the value stays
    # in the field so the name can be corrected.
    try:
        check_name("PATH")
    except InvalidInput as refused:
        server_reason = refused.detail
    else:
        raise AssertionError("the server accepts PATH")
    name.fill("PATH")
    section.get_by_label("Value", exact=True).fill("some-value-for-path")
    section.get_by_role("button", name="Save credential").click()
    expect(section.get_by_role("alert")).to_have_text(server_reason)
    expect(name).to_have_attribute("aria-invalid", "true")
    expect(name).to_be_focused()
    expect(section.get_by_label("Value", exact=True)).to_have_value("some-value-for-path")
    expect(section.locator("li[data-name='PATH']")).to_have_count(0)

    # A name that cannot be an environment variable, or a missing value, is explained before
    # anything is sent.
    writes_before = len(traffic.writes())
    name.fill("anthropic api key")
    section.get_by_role("button", name="Save credential").click()
    expect(section.get_by_text(re.compile("capital letters, digits and underscores"))).to_be_visible()
    expect(name).to_have_attribute("aria-invalid", "true")
    name.fill("ANTHROPIC_API_KEY")
    section.get_by_label("Value", exact=True).fill("")
    section.get_by_role("button", name="Save credential").click()
    expect(section.get_by_text("Enter the value.")).to_be_visible()
    expect(section.get_by_label("Value", exact=True)).to_be_focused()
    assert len(traffic.writes()) == writes_before, traffic.writes()


def test_a_member_sees_that_only_admins_manage_credentials_and_has_no_controls(people: People) -> None:
    alice = people.page("alice")
    traffic = Traffic(alice)
    section = open_settings(alice)
    expect(section.get_by_test_id("credentials-admins-only")).to_contain_text("Only admins")
    expect(section.get_by_role("textbox")).to_have_count(0)
    expect(section.get_by_role("button")).to_have_count(0)
    # The page does not even ask: the server would refuse a member (403).
    assert not [r.url for r in traffic.requests if "/agent-credentials" in r.url]
    assert alice.errors == []  # type: ignore[attr-defined]


def test_another_tab_s_change_shows_when_this_tab_regains_focus(people: People) -> None:
    first = people.page("carol")
    second = people.page("carol")
    first_section = open_settings(first)
    second_section = open_settings(second)
    row = "li[data-name='DEEPSEEK_API_KEY']"
    expect(second_section.get_by_text("Loading credentials…")).to_have_count(0)
    expect(second_section.locator(row)).to_have_count(0)

    first_section.get_by_label("Name", exact=True).fill("DEEPSEEK_API_KEY")
    first_section.get_by_label("Value", exact=True).fill("deepseek-from-the-other-tab")
    first_section.get_by_role("button", name="Save credential").click()
    expect(first_section.locator(row)).to_be_visible()

    # The admin comes back to the second tab (the window's focus event, as a browser sends it).
    second.bring_to_front()
    second.evaluate("() => window.dispatchEvent(new Event('focus'))")
    expect(second_section.locator(row)).to_contain_text("by carol")

    second_section.get_by_role("button", name="Remove DEEPSEEK_API_KEY").click()
    second.get_by_role("dialog", name="Remove DEEPSEEK_API_KEY?").get_by_role(
        "button", name="Remove", exact=True
    ).click()
    expect(second_section.locator(row)).to_have_count(0)
    first.bring_to_front()
    first.evaluate("() => window.dispatchEvent(new Event('focus'))")
    expect(first_section.locator(row)).to_have_count(0)
