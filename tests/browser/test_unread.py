"""The unread dot: a turn that ends while its owner looks elsewhere marks the task in the owner's
sidebar, live; opening it clears the dot for that person only."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Locator, Page, expect

from tests.browser.conftest import People
from tests.browser.test_task_flow import open_new_task, wait_idle

#: A "slow" turn of the demo agent streams for about 10 s: long enough to look at another task.
SLOW_TURN_MS = 90_000


def row(page: Page, task_id: str) -> Locator:
    return page.get_by_role("navigation", name="Tasks").locator(f"a[data-task-id='{task_id}']")


def dot(page: Page, task_id: str) -> Locator:
    return row(page, task_id).get_by_test_id("unread-dot")


def open_task(page: Page, task_id: str) -> None:
    """Opens a task from the sidebar and waits until the page has marked its session read."""
    with page.expect_response(lambda r: r.url.endswith("/read") and r.request.method == "POST") as read:
        row(page, task_id).click()
    assert read.value.ok, read.value.text()


@pytest.mark.timeout(300)  # two slow turns and three tasks on a shared 2-core machine
def test_unread_dot_appears_live_and_clears_for_the_viewer_only(people: People, shots: Path) -> None:
    alice = people.page("alice")
    expect(alice).to_have_url(re.compile(r"/o/acme$"))
    carol = people.page("carol")
    carol.goto("/o/acme")
    expect(carol.get_by_role("navigation", name="Tasks")).to_be_visible()

    # Each owns a slow task and looks elsewhere while it runs: alice at another task of hers,
    # carol at the task list.
    slow_a = open_new_task(alice, "slow alice unread")
    slow_c = open_new_task(carol, "slow carol unread")
    carol.goto("/o/acme")
    other = open_new_task(alice, "Quick look elsewhere")
    wait_idle(alice)
    expect(row(alice, slow_a)).to_be_visible()
    expect(dot(alice, slow_a)).to_have_count(0)  # still running: nothing new yet

    # The turns end: each owner's sidebar gets the dot live, on their own task only.
    expect(dot(alice, slow_a)).to_be_visible(timeout=SLOW_TURN_MS)
    expect(dot(carol, slow_c)).to_be_visible(timeout=SLOW_TURN_MS)
    expect(row(alice, slow_c)).to_be_visible()
    expect(dot(alice, slow_c)).to_have_count(0)
    expect(dot(carol, slow_a)).to_have_count(0)
    # The task alice was looking at when its turn ended is read.
    expect(dot(alice, other)).to_have_count(0)
    alice.screenshot(path=shots / "workspace-unread.png")

    # alice opens her task: her dot clears, and stays cleared after a reload.
    open_task(alice, slow_a)
    expect(dot(alice, slow_a)).to_have_count(0)
    # alice reads carol's task too: carol's own dot on it is untouched.
    open_task(alice, slow_c)
    expect(alice.get_by_role("log", name="Transcript")).to_contain_text("Working on: slow carol unread")
    carol.reload()
    expect(dot(carol, slow_c)).to_be_visible()
    alice.reload()
    expect(row(alice, slow_a)).to_be_visible()
    expect(dot(alice, slow_a)).to_have_count(0)

    # carol opens hers: it clears for her.
    open_task(carol, slow_c)
    expect(dot(carol, slow_c)).to_have_count(0)
    assert alice.errors == []  # type: ignore[attr-defined]
    assert carol.errors == []  # type: ignore[attr-defined]
