"""Two people on one organization see each other's changes live; others see only "not found"."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from playwright.sync_api import expect

from tests.browser.conftest import People
from tests.browser.test_task_flow import open_new_task


def test_alice_and_carol_see_each_others_tasks_live(people: People, shots: Path) -> None:
    alice = people.page("alice")
    carol = people.page("carol")
    # carol belongs to two organizations: she picks acme (and the choice is remembered).
    carol.goto("/orgs")
    carol.get_by_role("link", name=re.compile("acme")).click()
    expect(carol).to_have_url(re.compile(r"/o/acme$"))
    expect(alice).to_have_url(re.compile(r"/o/acme$"))
    sidebar = alice.get_by_role("navigation", name="Tasks")

    task_id = open_new_task(carol, "Carol adds release notes")
    # alice did nothing: the task appears in her sidebar, owned by carol, and follows its status.
    row = sidebar.locator(f"a[data-task-id='{task_id}']")
    expect(row).to_contain_text("Carol adds release notes", timeout=30_000)
    expect(row).to_contain_text("Owner carol")
    expect(row).to_contain_text("Idle", timeout=60_000)

    # alice opens it and hands it back to herself; carol's view follows.
    row.click()
    expect(alice.get_by_role("log", name="Transcript")).to_contain_text(
        "Working on: Carol adds release notes"
    )
    alice.get_by_label("Owner").select_option(label="alice")
    expect(carol.get_by_label("Owner")).to_have_value(re.compile(".+"))
    expect(carol.locator("#owner-select option:checked")).to_have_text("alice", timeout=30_000)
    alice.screenshot(path=shots / "workspace-alice.png")

    # The organization choice was remembered: carol's next visit to / opens acme.
    carol.goto("/")
    expect(carol).to_have_url(re.compile(r"/o/acme$"))


def test_non_member_urls_show_the_same_not_found_as_made_up_ones(people: People, site_url: str) -> None:
    carol = people.page("carol")
    carol.goto("/o/acme")
    real_task = carol.locator("a[data-task-id]").first
    expect(real_task).to_be_visible(timeout=30_000)
    task_href = real_task.get_attribute("href")
    assert task_href

    bob = people.page("bob")  # a member of globex only
    texts = []
    for path in (
        "/o/acme",
        task_href,
        "/o/acme/settings",
        "/o/no-such-org",
        "/o/globex/t/no-such-task",
        "/nowhere",
    ):
        bob.goto(path)
        page_text = bob.get_by_test_id("not-found")
        expect(page_text).to_be_visible(timeout=30_000)
        texts.append(page_text.inner_text())
    assert len(set(texts)) == 1, texts
    # The server agrees: bob's API calls for acme are 404s, like a made-up organization's.
    cookies = {c["name"]: c["value"] for c in bob.context.cookies()}
    for path in ("/v1/organizations/acme", "/v1/organizations/no-such-org"):
        answer = httpx.get(site_url + path, cookies=cookies)
        assert answer.status_code == 404, answer.text


def test_signing_out_elsewhere_returns_to_sign_in_with_a_message(people: People) -> None:
    page = people.page("alice")
    expect(page).to_have_url(re.compile(r"/o/acme$"))
    # The same session, revoked from a second tab: the server closes this tab's live connection
    # with it, so this tab shows the sign-in page by itself, without waiting for a click.
    other = page.context.new_page()
    other.goto("/o/acme")
    other.get_by_role("button", name="Sign out").click()
    expect(other.get_by_role("heading", name="Sign in to Foundry")).to_be_visible()
    expect(page.get_by_role("heading", name="Sign in to Foundry")).to_be_visible(timeout=30_000)
    expect(page.get_by_test_id("signin-message")).to_contain_text("session has ended")
    # Signing in again returns to the page it was on.
    page.get_by_role("button", name=re.compile("Continue as alice")).click()
    expect(page).to_have_url(re.compile(r"/o/acme$"))
