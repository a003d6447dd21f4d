"""Edges of a page a person reaches by a link or through a proxy: a view that does not exist, and
a failure that is not Foundry's JSON (a proxy's error page)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Route, WebSocketRoute, expect

from tests.browser.conftest import People
from tests.browser.support import Server
from tests.browser.test_task_flow import open_new_task, transcript, wait_idle

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
        alice.goto(f"/o/acme/t/{task_id}")
        expect(alice.get_by_label("Message to the agent")).to_be_enabled()
        assert carol.request.delete("/v1/organizations/acme/billing/seats/alice").status == 200
        expect(carol.get_by_test_id("seat-notice")).to_have_count(0)
        # carol takes it with her first message; the plan is as full as before, but alice no longer
        # holds a seat: her page says so, live.
        carol.get_by_label("Message to the agent").fill("My first message")
        carol.get_by_role("button", name="Send").click()
        expect(alice.get_by_test_id("seat-notice")).to_contain_text("alice needs a seat to send prompts")
    finally:
        people.close()


def test_a_draft_survives_switching_sessions_and_views_even_when_typed_just_before(people: People) -> None:
    page = people.page("alice")
    page.goto("/o/acme")
    task_id = open_new_task(page, "Drafts across tabs")
    wait_idle(page)
    # The turn is over: its plan shows no step as still running.
    plan = transcript(page).locator("[data-kind=plan]")
    expect(plan.locator("li").first).to_be_visible()
    expect(plan.locator(".plan-in_progress")).to_have_count(0)
    expect(plan.locator(".plan-not_done").first).to_be_visible()
    composer = page.get_by_label("Message to the agent")
    composer.fill("Draft of session one")
    page.get_by_role("button", name="+ New session").click()
    tabs = page.get_by_role("group", name="Agent sessions")
    expect(tabs.get_by_role("button", name="Session 2", exact=True)).to_be_visible(timeout=30_000)
    # Session 2 is the one on screen (on a loaded machine the tab shows a moment before it opens).
    expect(tabs.get_by_role("button", name="Session 2", exact=True)).to_have_attribute("aria-pressed", "true")
    expect(composer).to_have_value("")
    composer.fill("Typed right before switching")
    tabs.get_by_role("button", name="Session 1", exact=True).click()  # within the save delay
    expect(composer).to_have_value("Draft of session one")
    page.get_by_role("tab", name="Changes").click()
    page.get_by_role("tab", name="Agent").click()
    expect(composer).to_have_value("Draft of session one")
    tabs.get_by_role("button", name="Session 2", exact=True).click()
    expect(composer).to_have_value("Typed right before switching")
    # ... and it reached the server: a reload shows both.
    page.reload()
    expect(page.get_by_label("Message to the agent")).to_have_value("Typed right before switching")
    detail = page.request.get(f"/v1/organizations/acme/tasks/{task_id}").json()
    assert sorted(s["draft"]["text"] for s in detail["sessions"]) == [
        "Draft of session one",
        "Typed right before switching",
    ]


def test_another_admins_save_does_not_overwrite_what_this_form_has_not_saved(people: People) -> None:
    first, second = people.page("carol"), people.page("carol")
    for page in (first, second):
        page.goto("/o/acme/settings")
        expect(page.get_by_label("Display name")).to_be_enabled()
    original = first.get_by_label("Display name").input_value()
    save = second.get_by_role("region", name="General").get_by_role("button", name="Save")
    try:
        first.get_by_label("Display name").fill("Typed here, not saved")
        second.get_by_label("Display name").fill("Saved over there")
        save.click()
        expect(second.get_by_role("status")).to_contain_text("Settings saved")
        expect(first.get_by_role("combobox", name="Organization").locator("option[value=acme]")).to_have_text(
            "Saved over there"
        )
        expect(first.get_by_label("Display name")).to_have_value("Typed here, not saved")
    finally:
        second.get_by_label("Display name").fill(original)
        save.click()
        expect(
            second.get_by_role("combobox", name="Organization").locator("option[value=acme]")
        ).to_have_text(original)


def test_a_long_organization_name_does_not_widen_a_phone_screen(
    browser: Browser, one_seat_server: Server
) -> None:
    people = People(browser, one_seat_server.url)
    try:
        carol = people.page("carol", width=375, height=740)
        carol.goto("/o/acme/settings")
        name = carol.get_by_label("Display name")
        expect(name).to_be_enabled()
        long_name = "The Extremely Long Organization Name Of A Company With Many Departments And Divisions"
        name.fill(long_name)
        carol.get_by_role("region", name="General").get_by_role("button", name="Save").click()
        expect(carol.get_by_role("combobox", name="Organization").locator("option[value=acme]")).to_have_text(
            long_name
        )
        for path in ("/o/acme", "/o/acme/settings", "/o/acme/billing"):
            carol.goto(path)
            expect(carol.get_by_role("combobox", name="Organization")).to_be_visible()
            assert carol.evaluate("document.documentElement.scrollWidth") <= 375, path
    finally:
        people.close()


def test_losing_a_seat_on_a_plan_that_stays_full_shows_the_notice_live(
    browser: Browser, one_seat_server: Server
) -> None:
    """Back on the free plan with two seats held (one more than it has): releasing alice's seat
    leaves the plan exactly as full, and alice's open task says at once that her messages wait."""
    people = People(browser, one_seat_server.url)
    try:
        carol, alice = people.page("carol"), people.page("alice")
        base = "/v1/organizations/acme/billing"
        started = carol.request.post(f"{base}/checkout", data={"plan": "team"})
        assert started.ok, started.text()
        paid = carol.request.get(started.json()["url"], max_redirects=0)
        assert paid.status == 303
        assert carol.request.get(paid.headers["location"], max_redirects=0).status == 302
        expect_plan = lambda: carol.request.get(base).json()["plan"]  # noqa: E731
        for _ in range(100):
            if expect_plan() == "team":
                break
            carol.wait_for_timeout(100)
        created = alice.request.post(
            "/v1/organizations/acme/tasks", data={"repoId": "910001", "prompt": "Alice on the team plan"}
        )
        assert created.status == 201, created.text()
        # carol holds one too (she may already, from an earlier test on this server).
        own = carol.request.post(
            "/v1/organizations/acme/tasks", data={"repoId": "910001", "prompt": "Carol's"}
        )
        assert own.status == 201, own.text()
        assert carol.request.post(f"{base}/plan", data={"plan": "free"}).ok
        seats = carol.request.get(base).json()["seats"]
        assert (seats["used"], seats["limit"]) == (2, 1)
        carol.goto("/o/acme/billing")
        expect(carol.get_by_test_id("billing-plan-name")).to_have_text("Free (1 seat)")
        expect(carol.get_by_test_id("over-limit")).to_contain_text(
            "2 members hold seats, more than the 1 seat"
        )
        alice.goto(f"/o/acme/t/{created.json()['taskId']}")
        expect(alice.get_by_label("Message to the agent")).to_be_enabled()
        expect(alice.get_by_test_id("seat-notice")).to_have_count(0)
        assert carol.request.delete(f"{base}/seats/alice").ok
        expect(alice.get_by_test_id("seat-notice")).to_contain_text("alice needs a seat to send prompts")
    finally:
        people.close()


def test_people_have_their_pictures_in_mock_mode_without_the_internet(people: People) -> None:
    """Mock mode's GitHub serves the avatars it names: the page shows a picture, not a broken image
    or a request to the internet."""
    page = people.page("alice")
    outside: list[str] = []
    page.on("request", lambda r: outside.append(r.url) if "githubusercontent" in r.url else None)
    page.goto("/o/acme")
    picture = page.locator(".user-menu img.avatar")
    expect(picture).to_be_visible()
    page.wait_for_function("() => document.querySelector('.user-menu img.avatar')?.naturalWidth > 0")
    expect(page.locator(".user-menu .avatar-fallback")).to_have_count(0)
    assert outside == []


def test_a_message_whose_answer_was_lost_is_sent_again_once(people: People) -> None:
    """The message reached Foundry but its answer did not reach the page (a proxy's 503): the text
    stays, and pressing Send again does not make the agent read it twice."""
    page = people.page("alice")
    page.goto("/o/acme")
    open_new_task(page, "A first note")
    wait_idle(page)
    keys: list[str | None] = []

    def answer_lost(route: Route) -> None:
        keys.append(route.request.headers.get("idempotency-key"))
        if len(keys) == 1:
            route.fetch()  # Foundry queues it ...
            route.fulfill(
                status=503, content_type="text/html", body="<html>503</html>"
            )  # ... the page never hears
        else:
            route.continue_()

    page.route("**/sessions/*/messages", answer_lost)
    composer = page.get_by_label("Message to the agent")
    composer.fill("Say this only once")
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_role("alert")).to_contain_text("Foundry is not answering right now")
    expect(composer).to_have_value("Say this only once")
    page.get_by_role("button", name="Send").click()
    expect(composer).to_have_value("")
    wait_idle(page)
    assert len(keys) == 2
    assert keys[0] is not None
    assert keys[0] == keys[1]
    expect(transcript(page).get_by_text("Say this only once", exact=True)).to_have_count(1)


def test_a_task_whose_creation_answer_was_lost_is_created_once(people: People) -> None:
    """The create reached Foundry but its answer did not reach the page: pressing Create task again
    opens the task that was made, not a second one."""
    page = people.page("alice")
    page.goto("/o/acme")
    keys: list[str | None] = []

    def answer_lost(route: Route) -> None:
        if route.request.method != "POST":
            route.continue_()
            return
        keys.append(route.request.headers.get("idempotency-key"))
        if len(keys) == 1:
            route.fetch()  # Foundry creates it ...
            route.fulfill(status=503, content_type="text/html", body="<html>503</html>")  # ... unheard
        else:
            route.continue_()

    page.route("**/v1/organizations/acme/tasks", answer_lost)
    page.get_by_role("button", name="New task").click()
    dialog = page.get_by_role("dialog", name="New task")
    dialog.get_by_label("Repository").select_option(label="acme/rocket")
    dialog.get_by_label("What should the agent do?").fill("Make exactly one of me")
    dialog.get_by_role("button", name="Create task").click()
    expect(dialog.get_by_role("alert")).to_contain_text("Foundry is not answering right now")
    dialog.get_by_role("button", name="Create task").click()
    expect(page).to_have_url(re.compile(r"/o/acme/t/[0-9a-f]+$"))
    assert len(keys) == 2
    assert keys[0] is not None
    assert keys[0] == keys[1]
    listed = page.request.get("/v1/organizations/acme/tasks", params={"q": "Make exactly one of me"})
    assert len(listed.json()["tasks"]) == 1


def test_a_page_opened_while_a_part_of_foundry_hangs_says_so_plainly_and_recovers_by_itself(
    people: People,
) -> None:
    """A host process that stopped answering makes Foundry answer 503 with a detail for API clients
    (which host, resend with an Idempotency-Key): the page used to show that text and stay on it
    until "Try again" was clicked."""
    page = people.page("alice")
    hung = {"left": 2}

    def app_snapshot(route: Route) -> None:
        if hung["left"] > 0:
            hung["left"] -= 1
            route.fulfill(
                status=503,
                json={
                    "error": "actor_unavailable",
                    "detail": "host process foundry.main is not answering (stopped, or too busy to answer "
                    "within 5 s). … repeat it with the same Idempotency-Key header",
                },
            )
        else:
            route.continue_()

    page.route("**/v1/app", app_snapshot)
    page.goto("/o/acme")
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("Foundry is not answering right now")
    expect(alert).not_to_contain_text("Idempotency-Key")
    expect(alert).to_contain_text("Trying again")
    # Once it answers, the page loads by itself.
    expect(page.get_by_role("navigation", name="Tasks")).to_be_visible(timeout=20_000)
    assert hung["left"] == 0


def test_changes_cut_short_say_that_not_every_change_is_shown(people: People) -> None:
    page = people.page("alice")
    page.goto("/o/acme")

    def cut(route: Route) -> None:
        answer = route.fetch().json()
        answer.update(filesTruncated=True, diffTruncated=True)
        route.fulfill(json=answer)

    page.route("**/v1/organizations/acme/tasks/*/diff", cut)
    open_new_task(page, "A note to review")
    wait_idle(page)
    page.get_by_role("tab", name=re.compile("Changes", re.I)).click()
    expect(page.get_by_test_id("diff-truncated")).to_contain_text("this is not all of them")


def test_the_task_filter_narrows_the_list_once_typing_pauses(people: People) -> None:
    page = people.page("alice")
    page.goto("/o/acme")
    rows = page.locator("nav.sidebar a.task-row")
    expect(rows.first).to_be_visible()
    everything = rows.count()
    page.get_by_label("Filter tasks").press_sequentially("no-task-is-called-this", delay=20)
    expect(page.get_by_text("No task matches the filter.")).to_be_visible()
    expect(rows).to_have_count(0)
    page.get_by_label("Filter tasks").fill("")
    expect(rows).to_have_count(everything)


def test_a_send_that_failed_while_foundry_hung_says_when_it_answers_again(people: People) -> None:
    """A message sent while a part of Foundry hung fails with "not answering"; that note used to stay
    on screen long after Foundry answered again. The text stays in the box, and a resend (the same
    Idempotency-Key) is applied once."""
    page = people.page("alice")
    page.goto("/o/acme")
    open_new_task(page, "A first note")
    wait_idle(page)
    hung = {"sends": 1, "probes": 1}

    def messages(route: Route) -> None:
        if route.request.method == "POST" and hung["sends"] > 0:
            hung["sends"] -= 1
            route.fulfill(
                status=503,
                json={"error": "actor_unavailable", "detail": "host process foundry.main is not answering"},
            )
        else:
            route.continue_()

    def probe(route: Route) -> None:
        if hung["probes"] > 0:
            hung["probes"] -= 1
            route.fulfill(status=503, json={"error": "actor_unavailable", "detail": "still not answering"})
        else:
            route.continue_()

    page.route("**/sessions/*/messages", messages)
    page.route("**/sessions/*/events?limit=1", probe)
    composer = page.get_by_label("Message to the agent")
    composer.fill("A second note")
    page.get_by_role("button", name="Send").click()
    expect(page.locator("form.composer").get_by_role("alert")).to_contain_text("Foundry is not answering")
    expect(composer).to_have_value("A second note")
    # It answers again (the first look still fails): the note says so by itself.
    expect(page.get_by_test_id("composer-info")).to_contain_text("Foundry answers again", timeout=15_000)
    expect(page.locator("form.composer").get_by_role("alert")).to_have_count(0)
    assert hung == {"sends": 0, "probes": 0}
    page.get_by_role("button", name="Send").click()
    expect(composer).to_have_value("")
    expect(page.get_by_test_id("composer-info")).to_have_count(0)
    expect(page.get_by_text("A second note", exact=True)).to_have_count(1)


def test_a_page_whose_part_of_foundry_stops_answering_says_so_until_it_answers(people: People) -> None:
    """The server tells a subscriber that a topic's owner does not answer (`waiting`); the page used
    to ignore it and simply stopped changing. It now says so, and stops saying so once the topic is
    heard from again."""
    page = people.page("alice")
    sockets: list[WebSocketRoute] = []

    def through(ws: WebSocketRoute) -> None:
        ws.connect_to_server()  # every frame passes both ways, as without the route
        sockets.append(ws)

    page.route_web_socket(re.compile(r"/v1/realtime$"), through)
    page.goto("/o/acme")
    task_id = open_new_task(page, "A first note")
    wait_idle(page)
    assert sockets
    banner = page.get_by_test_id("waiting")
    expect(banner).to_have_count(0)
    sockets[-1].send(
        json.dumps({"op": "waiting", "topic": f"task:acme:{task_id}", "detail": "host process foundry.main…"})
    )
    expect(banner).to_contain_text("Part of Foundry is not answering right now")
    # The next frame of that topic (a rename here) means its owner answers again.
    page.get_by_role("button", name="Rename task").click()
    dialog = page.get_by_role("dialog", name="Rename task")
    dialog.get_by_label("Title").fill("Renamed while it waited")
    dialog.get_by_role("button", name="Rename").click()
    expect(page.get_by_role("heading", name="Renamed while it waited")).to_be_visible(timeout=30_000)
    expect(banner).to_have_count(0)
