"""Edges of a page a person reaches by a link or through a proxy: a view that does not exist, and
a failure that is not Foundry's JSON (a proxy's error page)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Route, expect

from tests.browser.conftest import People
from tests.browser.support import Server
from tests.browser.test_task_flow import open_new_task

PR_TASK = "/o/acme/t/pr-910001-1"


def test_a_link_to_a_view_that_does_not_exist_opens_the_agent_view_and_says_so(people: People) -> None:
    page = people.page("alice")
    page.goto(f"{PR_TASK}?tab=bogus")
    expect(page.locator("article.task")).to_be_visible()
    expect(page).to_have_url(re.compile(re.escape(PR_TASK) + "$"))
    expect(page.get_by_role("tab", name=re.compile("Agent", re.I))).to_have_attribute("aria-selected", "true")
    page.goto(f"{PR_TASK}?tab=activity")
    expect(page).to_have_url(re.compile(re.escape(f"{PR_TASK}?tab=activity") + "$"))
    assert page.errors == []  # type: ignore[attr-defined]


def test_a_proxy_error_page_reads_as_foundry_not_answering(people: People) -> None:
    page = people.page("alice")
    page.goto("/o/acme")

    def bad_gateway(route: Route) -> None:
        route.fulfill(status=502, content_type="text/html", body="<html><body>502 Bad Gateway</body></html>")

    page.route("**/v1/organizations/acme/tasks/pr-910001-1", bad_gateway)
    page.goto(PR_TASK)
    note = page.get_by_role("alert")
    expect(note).to_contain_text("Foundry is not answering right now (HTTP 502")
    expect(note).to_contain_text("try again in a moment")


def test_a_task_waiting_for_a_sandbox_says_where_it_is_in_line(people: People) -> None:
    """Every slot busy (24 sandboxes, the default, are too many to start here): the server's answer
    gets the queue place the task actor records, and the page must say it."""
    page = people.page("alice")
    page.goto("/o/acme")

    def in_line(route: Route) -> None:
        detail = route.fetch().json()
        detail["sandboxQueue"] = {"position": 3, "reason": "waiting for a sandbox slot (24 of 24 running)"}
        route.fulfill(json=detail)

    page.route("**/v1/organizations/acme/tasks/pr-910001-1", in_line)
    page.goto(PR_TASK)
    expect(page.get_by_test_id("sandbox-queue")).to_have_text(
        "In line for a sandbox (number 3): waiting for a sandbox slot (24 of 24 running). "
        "It starts on its own when one is free."
    )


def test_a_rename_in_settings_shows_in_the_organization_switcher_at_once(people: People) -> None:
    page = people.page("carol")
    page.goto("/o/acme/settings")
    name = page.get_by_label("Display name")
    expect(name).to_be_enabled()
    original = name.input_value()
    switcher = page.get_by_role("combobox", name="Organization")
    save = page.get_by_role("region", name="General").get_by_role("button", name="Save")
    try:
        name.fill("Acme Rocketry")
        save.click()
        expect(switcher.locator("option[value=acme]")).to_have_text("Acme Rocketry")
        expect(switcher).to_have_value("acme")
    finally:
        name.fill(original)
        save.click()
        expect(switcher.locator("option[value=acme]")).to_have_text(original)


@pytest.fixture(scope="module")
def one_seat_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server whose free plan has one seat (the shared one has ten: many flows prompt in acme)."""
    srv = Server(tmp_path_factory.mktemp("one-seat") / "data", free_seats=1)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def test_a_member_without_a_seat_on_a_full_plan_is_told_before_writing_a_prompt(
    browser: Browser, one_seat_server: Server
) -> None:
    """acme's free plan has one seat. Once alice holds it, carol's New task dialog and her task's
    composer say her prompt would be refused, before she writes it; alice sees no notice."""
    people = People(browser, one_seat_server.url)
    try:
        alice, carol = people.page("alice"), people.page("carol")
        alice.goto("/o/acme")
        task_id = open_new_task(alice, "Take the only seat")
        expect(alice.get_by_test_id("seat-notice")).to_have_count(0)
        carol.goto("/o/acme")
        carol.get_by_role("button", name="New task").click()
        notice = carol.get_by_role("dialog", name="New task").get_by_test_id("seat-notice")
        expect(notice).to_contain_text("Your prompts are not accepted yet")
        expect(notice).to_contain_text("carol needs a seat to send prompts")
        carol.keyboard.press("Escape")
        carol.goto(f"/o/acme/t/{task_id}")
        expect(carol.get_by_test_id("seat-notice")).to_contain_text("Your messages are not accepted yet")
        # An admin frees the seat: the notice goes, live.
        assert carol.request.delete("/v1/organizations/acme/billing/seats/alice").status == 200
        expect(carol.get_by_test_id("seat-notice")).to_have_count(0)
    finally:
        people.close()
