"""The live transcript: a long reply renders completely and smoothly, and a network drop in the
middle of a reply leaves no gap and no duplicate."""

from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import Page, expect

from tests.browser.conftest import People, long_tasks_between, text_shown_at
from tests.browser.support import CuttableProxy
from tests.browser.test_task_flow import open_new_task, wait_idle


def flood_text(n: int) -> str:
    return "".join(f" w{i}" for i in range(1, n + 1))


def first_agent_text(page: Page) -> str:
    return page.get_by_test_id("agent-text").first.text_content() or ""


def server_seq(page: Page, task_id: str) -> int:
    detail = page.request.get(f"/v1/organizations/acme/tasks/{task_id}").json()
    return int(detail["sessions"][0]["lastSeq"])


def test_a_2000_chunk_reply_renders_completely_without_long_tasks(people: People, shots: Path) -> None:
    page = people.page("alice")
    expect(page).to_have_url(re.compile(r"/o/acme$"))
    task_id = open_new_task(page, "flood 2000")
    # Measured: the main thread while the reply streams, from its first chunk on screen to its
    # last; not the page load or the opening of the task before it.
    started = text_shown_at(page, " w1")
    ended = text_shown_at(page, " w2000")
    long_tasks = long_tasks_between(page, started, ended)
    wait_idle(page)
    assert flood_text(2000) in first_agent_text(page)
    log = page.get_by_role("log", name="Transcript")
    expect(log).to_have_attribute("data-last-seq", str(server_seq(page, task_id)))
    assert ended - started > 1000, (started, ended)  # a real stream (2,000 paced chunks), not a jump
    assert max(long_tasks, default=0) < 200, long_tasks
    page.screenshot(path=shots / "task-flood.png")


def test_after_a_network_drop_the_transcript_has_no_gap_and_no_duplicate(
    people: People, proxy: CuttableProxy
) -> None:
    page = people.page("alice")
    expect(page).to_have_url(re.compile(r"/o/acme$"))
    task_id = open_new_task(page, "flood 800")
    log = page.get_by_role("log", name="Transcript")
    expect(log).to_contain_text(" w100", timeout=60_000)

    proxy.cut()  # every connection drops; new ones are refused for a while
    expect(page.get_by_test_id("reconnecting")).to_be_visible(timeout=15_000)
    seq_before = int(log.get_attribute("data-last-seq") or 0)
    page.wait_for_timeout(1500)  # the agent keeps streaming on the server meanwhile
    proxy.restore()

    expect(page.get_by_test_id("reconnecting")).to_be_hidden(timeout=30_000)
    expect(log).to_contain_text(" w800", timeout=120_000)
    wait_idle(page)
    final_seq = server_seq(page, task_id)
    assert final_seq > seq_before
    expect(log).to_have_attribute("data-last-seq", str(final_seq))
    # Every chunk exactly once, in order: what the server holds is what the page shows.
    assert flood_text(800) in first_agent_text(page)
    assert first_agent_text(page).count(" w800") == 1
