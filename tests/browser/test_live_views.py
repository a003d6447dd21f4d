"""Live views shared by two people: session tabs (new, rename, close), the GitHub sync progress with
Resync, and the organization settings (admins edit, members read)."""

from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import Page, expect

from tests.browser.conftest import People
from tests.browser.test_task_flow import open_new_task, wait_idle


def session_tabs(page: Page):
    return page.get_by_role("group", name="Agent sessions").locator("button[data-session-id]")


def test_session_rename_and_close_show_live_in_another_window(people: People, shots: Path) -> None:
    alice = people.page("alice")
    expect(alice).to_have_url(re.compile(r"/o/acme$"))
    task_id = open_new_task(alice, "Sessions to rename and close")
    wait_idle(alice)
    carol = people.page("carol")
    carol.goto(f"/o/acme/t/{task_id}")
    expect(session_tabs(carol)).to_have_count(1, timeout=30_000)

    # alice opens a second session: a tab appears in both windows.
    alice.get_by_role("button", name="+ New session").click()
    expect(session_tabs(alice)).to_have_count(2, timeout=30_000)
    expect(session_tabs(carol)).to_have_count(2, timeout=30_000)
    # The new session becomes hers on screen. (Its tab can show, from the live update, before her
    # request returns and selects it: read the selected tab only once the selection moved.)
    new_tab = session_tabs(alice).and_(alice.locator("[aria-pressed=true]"))
    expect(new_tab).to_have_text("Session 2", timeout=30_000)
    session_id = new_tab.get_attribute("data-session-id")
    old_name = (new_tab.text_content() or "").strip()
    assert session_id
    assert old_name

    # She renames it: the new name shows in both windows.
    alice.get_by_role("button", name=f"Rename session {old_name}").click()
    dialog = alice.get_by_role("dialog", name="Rename session")
    dialog.get_by_label("Session name").fill("Review notes")
    dialog.get_by_role("button", name="Rename").click()
    expect(dialog).to_be_hidden()
    for page in (alice, carol):
        expect(page.locator(f"button[data-session-id='{session_id}']")).to_have_text(
            "Review notes", timeout=30_000
        )
    carol.screenshot(path=shots / "task-sessions-renamed.png")

    # carol closes it (after confirming): the tab goes away in both windows; the first session stays.
    carol.get_by_role("button", name="Close session Review notes").click()
    confirm = carol.get_by_role("dialog", name="Close this session?")
    confirm.get_by_role("button", name="Close session").click()
    for page in (alice, carol):
        open_tab = session_tabs(page).and_(page.locator(f"[data-session-id='{session_id}']"))
        expect(open_tab).to_have_count(0, timeout=30_000)
        expect(session_tabs(page)).to_have_count(1)
    # alice had it on screen: it stays, read-only, saying it was closed; it is listed as closed.
    expect(alice.get_by_role("log", name="Transcript")).to_contain_text("Session closed.")
    expect(alice.get_by_label("Message to the agent")).to_be_disabled()
    expect(alice.get_by_text("Closed sessions (1)")).to_be_visible()
    assert alice.errors == []  # type: ignore[attr-defined]
    assert carol.errors == []  # type: ignore[attr-defined]


#: Records every text the sync box shows (the progress steps can be shorter than a poll interval).
RECORD_SYNC_TEXTS = """
() => {
  window.__syncTexts = [];
  const nav = document.querySelector("nav.sidebar");
  const note = () => {
    const box = document.querySelector("[data-testid=sync-status]");
    const text = box ? box.textContent : "";
    if (window.__syncTexts[window.__syncTexts.length - 1] !== text) window.__syncTexts.push(text);
  };
  note();
  new MutationObserver(note).observe(nav, { subtree: true, childList: true, characterData: true });
}
"""


def test_github_sync_progress_and_resync(people: People, shots: Path) -> None:
    carol = people.page("carol")
    carol.goto("/o/acme")
    status = carol.get_by_test_id("sync-status")
    expect(status).to_contain_text("Synced", timeout=30_000)
    carol.evaluate(RECORD_SYNC_TEXTS)

    carol.get_by_role("button", name="Resync").click()
    # The sync runs in phases (repositories, members, pull requests) with counts, shown live, and
    # ends synced again.
    carol.wait_for_function("() => window.__syncTexts.some((t) => t.startsWith('Syncing'))", timeout=30_000)
    expect(status).to_contain_text("Synced", timeout=60_000)
    expect(carol.get_by_role("button", name="Resync")).to_be_enabled()
    texts: list[str] = carol.evaluate("window.__syncTexts")
    progress = [t for t in texts if re.search(r"Syncing pull requests: \d+ of \d+ repositories", t)]
    assert progress, texts
    counts = [tuple(map(int, re.findall(r"\d+", t)[:2])) for t in progress]
    assert all(done <= total for done, total in counts), counts
    assert counts[-1][0] == counts[-1][1], counts  # the last step counted every repository
    assert any("Syncing repositories" in t for t in texts), texts
    carol.screenshot(path=shots / "workspace-synced.png")


def test_admin_saves_settings_and_member_sees_them_read_only_live(people: People, shots: Path) -> None:
    carol = people.page("carol")  # an admin of acme
    alice = people.page("alice")  # a member
    carol.goto("/o/acme/settings")
    alice.goto("/o/acme/settings")
    name = carol.get_by_label("Display name")
    expect(name).to_be_editable(timeout=30_000)
    original_name = name.input_value()
    model = carol.get_by_label("Default model")
    original_model = model.input_value()
    other_model = carol.evaluate(
        "(current) => [...document.querySelectorAll('#set-model option')].map((o) => o.value)"
        ".find((v) => v && v !== current)",
        original_model,
    )
    assert other_model, "the model catalog has a single model"

    # alice reads the settings but cannot change them.
    expect(alice.get_by_test_id("read-only-note")).to_be_visible()
    expect(alice.get_by_label("Display name")).to_be_disabled()
    expect(alice.get_by_label("Default model")).to_be_disabled()
    expect(alice.get_by_role("button", name="Save", exact=True)).to_have_count(0)

    try:
        name.fill("Acme Rocketry")
        model.select_option(other_model)
        carol.get_by_role("button", name="Save", exact=True).click()
        expect(carol.get_by_role("status").filter(has_text="Settings saved.")).to_be_visible()
        # alice's open page follows, live.
        expect(alice.get_by_label("Display name")).to_have_value("Acme Rocketry", timeout=30_000)
        expect(alice.get_by_label("Default model")).to_have_value(other_model)
        alice.screenshot(path=shots / "settings-member-live.png")
        # The new name is the organization's everywhere: the workspace shows it too.
        alice.get_by_role("link", name="Workspace").click()
        expect(alice.get_by_role("heading", name="Acme Rocketry", exact=True)).to_be_visible()
    finally:
        name.fill(original_name)
        model.select_option(original_model)
        carol.get_by_role("button", name="Save", exact=True).click()
        expect(carol.get_by_role("status").filter(has_text="Settings saved.")).to_be_visible()
    expect(alice.get_by_role("heading", name=original_name, exact=True)).to_be_visible(timeout=30_000)
    assert alice.errors == []  # type: ignore[attr-defined]
