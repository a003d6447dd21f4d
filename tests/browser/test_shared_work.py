"""Working on one task together, and what stays readable: a pull request started from its page,
who wrote which message, messages that wait for the agent, closed sessions."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from tests.browser.conftest import People
from tests.browser.test_task_flow import open_new_task, transcript, wait_idle


def test_a_pull_request_task_started_in_its_page_shows_its_session_without_a_reload(people: People) -> None:
    page = people.page("alice")
    page.goto("/o/acme/t/pr-910001-1")
    task = page.locator("article.task")
    expect(task).to_have_attribute("data-status", "virtual")
    expect(task.locator(".task-title-row .badge")).to_have_text("Pull request, not started")
    page.get_by_role("button", name="+ New session").click()
    # The task became real: its own live topic now drives the page (it was refused while virtual).
    tabs = page.get_by_role("group", name="Agent sessions")
    expect(tabs.get_by_role("button", name="Session 1", exact=True)).to_be_visible(timeout=30_000)
    expect(task).not_to_have_attribute("data-status", "virtual", timeout=30_000)
    expect(page.get_by_label("Message to the agent")).to_be_enabled()
    assert page.errors == []  # type: ignore[attr-defined]


def test_messages_name_their_author_and_a_waiting_message_waits_below_the_reply(people: People) -> None:
    carol = people.page("carol")
    carol.goto("/o/acme")
    task_id = open_new_task(carol, "Shared notes for the launch")
    wait_idle(carol)
    alice = people.page("alice")
    alice.goto(f"/o/acme/t/{task_id}")
    wait_idle(alice)

    composer = alice.get_by_label("Message to the agent")
    composer.fill("Alice asks: go slow please")
    alice.get_by_role("button", name="Send").click()
    expect(alice.get_by_role("button", name="Stop")).to_be_visible(timeout=30_000)
    composer.fill("Alice again, while it works")
    alice.get_by_role("button", name="Send").click()

    for page, own, other in ((alice, "You", "carol"), (carol, "carol", "You")):
        log = transcript(page)
        first = log.locator("[data-kind=user]", has_text="Shared notes for the launch")
        expect(first.locator(".msg-role")).to_contain_text(other if page is alice else "You")
        asked = log.locator("[data-kind=user]", has_text="Alice asks")
        expect(asked.locator(".msg-role")).to_contain_text(own if page is alice else "alice")
        # The message sent during the turn waits after the running reply, not inside it.
        waiting = log.locator("[data-kind=user][data-state=queued]", has_text="Alice again")
        expect(waiting).to_be_visible(timeout=30_000)
        expect(waiting).to_contain_text("runs when the agent is free")
        assert log.locator("[data-kind]").last.get_attribute("data-state") == "queued"

    alice.get_by_role("button", name="Stop").click()
    for page in (alice, carol):
        log = transcript(page)
        dropped = log.locator("[data-kind=user][data-state=dropped]", has_text="Alice again")
        expect(dropped).to_contain_text("not sent", timeout=30_000)
        expect(log).to_contain_text("Stop discarded the waiting message")
    assert alice.errors == []  # type: ignore[attr-defined]


def test_closing_a_session_asks_first_and_its_transcript_stays_readable(people: People) -> None:
    page = people.page("alice")
    page.goto("/o/acme")
    open_new_task(page, "A note to keep")
    wait_idle(page)
    page.get_by_role("button", name="+ New session").click()
    tabs = page.get_by_role("group", name="Agent sessions")
    # The new tab shows (live) a moment before it becomes the session on screen: type once it is.
    expect(tabs.get_by_role("button", name="Session 2", exact=True)).to_have_attribute(
        "aria-pressed", "true", timeout=30_000
    )
    composer = page.get_by_label("Message to the agent")
    composer.fill("unsent words")
    page.get_by_role("button", name="Close session Session 2").click()
    dialog = page.get_by_role("dialog", name="Close this session?")
    dialog.get_by_role("button", name="Keep it open").click()
    expect(tabs.get_by_role("button", name="Session 2", exact=True)).to_be_visible()
    page.get_by_role("button", name="Close session Session 2").click()
    page.get_by_role("dialog", name="Close this session?").get_by_role("button", name="Close session").click()
    # The closed session stays on screen, read-only, with what was being typed.
    expect(transcript(page)).to_contain_text("Session closed.", timeout=30_000)
    expect(composer).to_be_disabled()
    expect(composer).to_have_value("unsent words")
    expect(tabs.get_by_role("button", name="Session 2", exact=True)).to_have_count(0)
    # Any closed session can be opened again to read.
    tabs.get_by_role("button", name="Session 1", exact=True).click()
    page.get_by_text(re.compile(r"Closed sessions \(1\)")).click()
    closed = page.get_by_role("group", name="Closed sessions")
    closed.get_by_role("button", name="Session 2", exact=True).click()
    expect(transcript(page)).to_contain_text("Session closed.")
    # The task's view is in the address (a reload or a link opens it), and the arrows move along.
    page.get_by_role("tab", name="Changes").click()
    expect(page).to_have_url(re.compile(r"\?tab=changes$"))
    page.reload()
    expect(page.get_by_role("tab", name="Changes")).to_have_attribute("aria-selected", "true")
    page.get_by_role("tab", name="Changes").press("ArrowRight")
    expect(page.get_by_role("tab", name="Files")).to_be_focused()
    expect(page).to_have_url(re.compile(r"\?tab=files$"))
    page.get_by_role("tab", name="Files").press("Home")
    expect(page).to_have_url(re.compile(r"/t/[0-9a-f]+$"))
    assert page.errors == []  # type: ignore[attr-defined]


def test_signing_out_does_not_hand_the_page_to_the_next_person(people: People) -> None:
    page = people.page("carol")
    page.goto("/o/globex")
    expect(page.get_by_role("navigation", name="Tasks")).to_be_visible()
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/sign-in$"))
    # alice is not in globex: she lands in her own workspace, not on "Page not found".
    page.get_by_role("button", name=re.compile("Continue as alice")).click()
    expect(page).to_have_url(re.compile(r"/o/acme$"))
    expect(page.get_by_role("navigation", name="Tasks")).to_be_visible()


def test_the_session_on_screen_stays_there_when_it_closes_however_it_was_reached(people: People) -> None:
    page = people.page("alice")
    page.goto("/o/acme")
    task_id = open_new_task(page, "A note on the default session")
    wait_idle(page)
    page.goto(f"/o/acme/t/{task_id}")  # Session 1 is shown because it is the task's, not clicked
    composer = page.get_by_label("Message to the agent")
    composer.fill("typed before the close")
    page.get_by_role("button", name="Close session Session 1").click()
    page.get_by_role("dialog", name="Close this session?").get_by_role("button", name="Close session").click()
    expect(transcript(page)).to_contain_text("Session closed.", timeout=30_000)
    expect(transcript(page)).to_contain_text("Working on: A note on the default session")
    expect(composer).to_have_value("typed before the close")
    expect(composer).to_be_disabled()
