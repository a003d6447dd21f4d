"""Every page passes axe-core with no serious or critical violation and has no horizontal overflow,
at desktop and phone widths, and is saved as a screenshot (test-results/browser/)."""

from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import Page, expect

from tests.browser.conftest import People
from tests.browser.support import AXE

AXE_SOURCE = AXE.read_text() if AXE.exists() else ""


def axe_violations(page: Page) -> list[dict[str, object]]:
    assert AXE_SOURCE, f"{AXE} is missing: run scripts/bootstrap.sh (npm ci in foundry/dashboard)"
    if not page.evaluate("() => typeof window.axe !== 'undefined'"):
        page.add_script_tag(content=AXE_SOURCE)
    result = page.evaluate("async () => (await axe.run(document, {resultTypes: ['violations']})).violations")
    return [
        {"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"]][:5]}
        for v in result
        if v["impact"] in ("serious", "critical")
    ]


#: The page's horizontal overflow, and the widest elements that cause it (empty when none).
OVERFLOW_SCRIPT = """
() => {
  const width = document.documentElement.clientWidth;
  if (document.documentElement.scrollWidth <= width) return [];
  return [...document.querySelectorAll("body *")]
    .filter((el) => el.getBoundingClientRect().right > width + 1)
    .slice(0, 8)
    .map((el) => {
      const right = Math.round(el.getBoundingClientRect().right);
      return `${el.tagName.toLowerCase()}.${[...el.classList].join(".")} right=${right}`;
    });
}
"""

SIZES = {"desktop": (1280, 800), "phone": (390, 844)}


def check(page: Page, name: str, shots: Path, problems: dict[str, object]) -> None:
    """axe at every size, with a full-page screenshot of each."""
    for size, (width, height) in SIZES.items():
        page.set_viewport_size({"width": width, "height": height})
        page.wait_for_timeout(300)  # let the layout and the last live update settle
        page.screenshot(path=shots / f"{size}-{name}.png", full_page=True)
        found = axe_violations(page)
        if found:
            problems[f"{size}-{name}"] = found
        # Nothing sticks out sideways: the page never scrolls horizontally (long names, code and
        # tables scroll inside their own boxes).
        overflow = page.evaluate(OVERFLOW_SCRIPT)
        if overflow:
            problems[f"{size}-{name}-overflow"] = overflow
    page.set_viewport_size({"width": SIZES["desktop"][0], "height": SIZES["desktop"][1]})


def test_every_page_has_no_serious_accessibility_violation(people: People, shots: Path) -> None:
    problems: dict[str, object] = {}
    # axe-core is injected as an inline script, which the server's CSP rightly forbids.
    page = people.page(None, bypass_csp=True)
    page.goto("/")
    expect(page.get_by_role("heading", name="Sign in to Foundry")).to_be_visible()
    check(page, "sign-in", shots, problems)

    page.get_by_role("button", name=re.compile("Continue as carol")).click()
    expect(page.get_by_test_id("current-user")).to_have_text("carol")
    page.goto("/orgs")
    expect(page.get_by_role("heading", name="Choose an organization")).to_be_visible()
    check(page, "organizations", shots, problems)

    page.goto("/o/acme")
    expect(page.get_by_role("navigation", name="Tasks")).to_be_visible()
    check(page, "workspace", shots, problems)

    page.get_by_role("button", name="New task").click()
    dialog = page.get_by_role("dialog", name="New task")
    expect(dialog).to_be_visible()
    dialog.get_by_label("What should the agent do?").fill("Check the layout")
    dialog.get_by_label("Model").select_option("demo")
    check(page, "new-task", shots, problems)
    dialog.get_by_role("button", name="Create task").click()
    expect(page.get_by_role("log", name="Transcript")).to_contain_text("Working on", timeout=60_000)
    expect(page.locator("article.task")).to_have_attribute("data-status", "idle", timeout=60_000)
    check(page, "task", shots, problems)
    page.get_by_role("tab", name="Changes").click()
    check(page, "task-changes", shots, problems)
    page.get_by_role("tab", name="Activity").click()
    expect(page.get_by_test_id("audit-list")).to_be_visible()
    check(page, "task-activity", shots, problems)

    page.goto("/o/acme/settings")
    expect(page.get_by_role("heading", name="Organization settings")).to_be_visible()
    expect(page.get_by_role("heading", name="Members")).to_be_visible()
    # The agent credentials section with one credential listed, and its confirmation dialog.
    credentials = page.get_by_test_id("agent-credentials")
    credentials.get_by_label("Name", exact=True).fill("MISTRAL_API_KEY")
    credentials.get_by_label("Value", exact=True).fill("mistral-accessibility-check-value")
    credentials.get_by_role("button", name="Save credential").click()
    expect(credentials.locator("li[data-name='MISTRAL_API_KEY']")).to_be_visible()
    check(page, "settings", shots, problems)
    credentials.get_by_role("button", name="Remove MISTRAL_API_KEY").click()
    expect(page.get_by_role("dialog", name="Remove MISTRAL_API_KEY?")).to_be_visible()
    check(page, "settings-remove-credential", shots, problems)
    page.get_by_role("dialog").get_by_role("button", name="Remove", exact=True).click()
    expect(credentials.locator("li[data-name='MISTRAL_API_KEY']")).to_have_count(0)

    page.goto("/o/acme/billing")
    expect(page.get_by_role("heading", name="Billing")).to_be_visible()
    check(page, "billing", shots, problems)

    page.goto("/o/acme/nothing-here")
    expect(page.get_by_test_id("not-found")).to_be_visible()
    check(page, "not-found", shots, problems)

    assert problems == {}
