"""The billing page: an admin upgrades through (fake) Stripe Checkout and sees the result live,
changes the card in the (fake) Billing Portal; a member sees only the plan and status, read-only,
never the seats, invoices or payment method."""

from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import expect

from tests.browser.conftest import People


def test_an_admin_upgrades_to_team_and_a_member_sees_only_the_summary(people: People, shots: Path) -> None:
    carol = people.page("carol")
    carol.goto("/o/acme/billing")
    expect(carol.get_by_role("heading", name="Billing", exact=True)).to_be_visible()
    plan = carol.get_by_test_id("billing-plan-name")
    expect(plan).to_have_text("Free (10 seats)")
    expect(carol.get_by_test_id("billing-status")).to_have_text("Active")
    carol.screenshot(path=shots / "billing-free.png")

    alice = people.page("alice")
    alice.goto("/o/acme/billing")
    expect(alice.get_by_test_id("billing-plan-name")).to_have_text("Free (10 seats)")
    expect(alice.get_by_test_id("read-only-note")).to_be_visible()
    expect(alice.get_by_role("button", name="Upgrade to Team")).to_have_count(0)
    expect(alice.get_by_role("heading", name="Seats")).to_have_count(0)
    expect(alice.get_by_role("heading", name="Invoices")).to_have_count(0)

    # Checkout on Stripe's hosted page (the fake completes it at once), back to the billing page.
    carol.get_by_role("button", name="Upgrade to Team").click()
    expect(carol).to_have_url(re.compile(r"/o/acme/billing\?checkout=success$"), timeout=30_000)
    expect(carol.get_by_role("status").filter(has_text="team plan")).to_be_visible()
    expect(plan).to_have_text("Team (per seat)", timeout=30_000)
    expect(carol.get_by_test_id("billing-status")).to_have_text(re.compile("Active|Trial"))
    expect(carol.get_by_test_id("invoice-row").first).to_be_visible(timeout=30_000)
    expect(carol.get_by_role("button", name="Cancel plan")).to_be_visible()
    carol.screenshot(path=shots / "billing-team.png")
    expect(carol.get_by_text("Visa •••• 4242")).to_be_visible(timeout=30_000)

    # A new card in the Billing Portal (the fake's stand-in page), then back: the label follows.
    carol.get_by_role("button", name="Payment method and invoices").click()
    carol.get_by_role("button", name="Use mastercard as default").click()
    expect(carol).to_have_url(re.compile(r"/o/acme/billing$"), timeout=30_000)
    expect(carol.get_by_text("Mastercard •••• 4444")).to_be_visible(timeout=30_000)

    # alice's open page follows without a reload, and shows no billing details.
    expect(alice.get_by_test_id("billing-plan-name")).to_have_text("Team (per seat)", timeout=30_000)
    expect(alice.get_by_test_id("read-only-note")).to_contain_text("Ask an admin")
    expect(alice.get_by_test_id("invoice-row")).to_have_count(0)
    expect(alice.get_by_test_id("seat-row")).to_have_count(0)
    expect(alice.get_by_text("Mastercard")).to_have_count(0)
    expect(alice.get_by_text("Visa")).to_have_count(0)
    alice.screenshot(path=shots / "billing-member.png")

    # Cancel at period end, confirmed in a dialog; then keep the plan after all.
    carol.get_by_role("button", name="Cancel plan").click()
    dialog = carol.get_by_role("dialog", name="Cancel the team plan")
    dialog.get_by_role("button", name="Cancel at period end").click()
    expect(carol.get_by_test_id("billing-status")).to_have_text("Cancels at period end", timeout=30_000)
    carol.get_by_role("button", name="Keep the team plan").click()
    expect(carol.get_by_test_id("billing-status")).to_have_text(re.compile("Active|Trial"), timeout=30_000)
    assert carol.errors == []  # type: ignore[attr-defined]
    assert alice.errors == []  # type: ignore[attr-defined]
