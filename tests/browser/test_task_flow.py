"""A person drives a task end to end in the dashboard: create, watch, stop, diff, PR, archive."""

from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import Page, expect

from tests.browser.conftest import People


def open_new_task(page: Page, prompt: str) -> str:
    """Creates a task through the "New task" dialog; returns its id (from the URL it opens).

    Works from a task page too: it waits for the URL of the new task, not any task URL.
    """
    before = page.url
    page.get_by_role("button", name="New task").click()
    dialog = page.get_by_role("dialog", name="New task")
    dialog.get_by_label("Repository").select_option(label="acme/rocket")
    dialog.get_by_label("What should the agent do?").fill(prompt)
    dialog.get_by_label("Model").select_option("demo")
    dialog.get_by_role("button", name="Create task").click()
    task_url = re.compile(r"/o/acme/t/[0-9a-f]+$")
    page.wait_for_url(lambda url: url != before and task_url.search(url) is not None)
    return page.url.rsplit("/", 1)[1]


def transcript(page: Page):
    return page.get_by_role("log", name="Transcript")


def wait_idle(page: Page, timeout: float = 60_000) -> None:
    expect(page.locator("article.task")).to_have_attribute("data-status", "idle", timeout=timeout)


def test_task_from_prompt_to_archive(people: People, shots: Path) -> None:
    page = people.page("alice")
    # alice belongs to one organization: the app opens its workspace directly.
    expect(page).to_have_url(re.compile(r"/o/acme$"))
    expect(page.get_by_role("navigation", name="Tasks")).to_be_visible()

    task_id = open_new_task(page, "Write a **launch** checklist")
    log = transcript(page)
    # The demo agent streams its plan, its reply and a tool call, live.
    expect(log.get_by_text("Working on: Write a")).to_be_visible(timeout=60_000)
    expect(log.locator("strong", has_text="launch").first).to_be_visible()
    expect(log.locator("[data-kind=plan]")).to_contain_text("Update NOTES.md")
    expect(log.locator("[data-kind=tool]").first).to_contain_text("completed")
    wait_idle(page)
    expect(page.get_by_test_id("session-info")).to_contain_text("context")
    sidebar_row = page.locator(f"a[data-task-id='{task_id}']")
    expect(sidebar_row).to_contain_text("Idle")
    page.screenshot(path=shots / "task-transcript.png")

    # The draft is kept per user and session: it survives a reload.
    composer = page.get_by_label("Message to the agent")
    with page.expect_response(lambda r: r.url.endswith("/draft") and r.request.method == "PUT"):
        composer.fill("half-written thought")
    page.reload()
    expect(composer).to_have_value("half-written thought")

    # The agent asks before editing: the request shows its options, and the answer is recorded.
    composer.fill("Edit with permission")
    page.get_by_role("button", name="Send").click()
    prompt = log.get_by_role("group", name="Permission request")
    prompt.get_by_role("button", name="Allow once").click(timeout=30_000)
    expect(prompt).to_contain_text("Answered: Allow once")
    wait_idle(page)

    # A long turn, sent from the composer with Ctrl+Enter, then stopped.
    composer.fill("Now go slow please")
    composer.press("Control+Enter")
    expect(composer).to_have_value("")
    stop = page.get_by_role("button", name="Stop")
    expect(stop).to_be_visible(timeout=30_000)
    expect(log.get_by_text(".3", exact=False)).to_be_visible(timeout=30_000)
    stop.click()
    expect(log.get_by_text("Stopped", exact=False)).to_be_visible(timeout=30_000)
    wait_idle(page)

    # The diff of the first turn's edit: NOTES.md, untracked, its lines added.
    page.get_by_role("tab", name="Changes").click()
    diff = page.get_by_test_id("diff-view")
    expect(diff).to_contain_text("NOTES.md", timeout=30_000)
    expect(diff.locator(".add", has_text="launch").first).to_be_visible()
    page.screenshot(path=shots / "task-diff.png")
    page.get_by_role("tab", name="Files").click()
    expect(page.get_by_test_id("files-view")).to_contain_text("NOTES.md")

    # Create the pull request: the PR state and number show on the task and in the sidebar.
    page.get_by_role("button", name="Create pull request").click()
    pr = page.locator(".task-meta .badge", has_text=re.compile(r"#\d+ open"))
    expect(pr).to_be_visible(timeout=60_000)
    expect(sidebar_row).to_contain_text(re.compile(r"#\d+ open"))

    # New work after the PR is unpushed: archiving is refused until the rescue push.
    page.get_by_role("tab", name="Agent").click()
    composer.fill("One more note")
    page.get_by_role("button", name="Send").click()
    expect(log.get_by_text("Working on: One more note")).to_be_visible(timeout=30_000)
    wait_idle(page)
    page.get_by_role("button", name="Archive").click()
    page.get_by_role("dialog", name="Archive this task?").get_by_role("button", name="Archive").click()
    conflict = page.get_by_role("dialog", name="Unpushed work would be lost")
    expect(conflict.get_by_test_id("archive-conflict")).to_contain_text("unpushed work", timeout=30_000)
    page.screenshot(path=shots / "task-archive-conflict.png")
    conflict.get_by_role("button", name="Push to a rescue branch and archive").click()
    expect(page).to_have_url(re.compile(r"/o/acme$"), timeout=60_000)
    expect(page.locator(f"a[data-task-id='{task_id}']")).to_have_count(0)

    # Archived, it is listed under Archived tasks, and its transcript stays readable (read-only).
    page.get_by_text("Archived tasks").click()
    page.locator(f"a[data-task-id='{task_id}'][data-archived=true]").click()
    expect(log).to_contain_text("Working on: Write a", timeout=30_000)
    expect(composer).to_be_disabled()
    # The task's audit entries record what happened.
    page.goto(f"/o/acme/t/{task_id}")
    page.get_by_role("tab", name="Activity").click()
    audit = page.get_by_test_id("audit-list")
    expect(audit).to_contain_text("task.archive", timeout=30_000)
    assert page.errors == []  # type: ignore[attr-defined]
