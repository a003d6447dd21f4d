"""The real PyGithub driver against the fake GitHub, over real HTTP.

Every test starts a fresh fake seeded with the mock-mode world (orgs acme/1001 and globex/1002, users
alice, bob, carol); the driver runs unthrottled with an injected clock and a recording sleep, so
rate-limit waits are asserted, never slept.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
from authlib.integrations.httpx_client import AsyncOAuth2Client
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from foundry.clock import FakeClock, SystemClock
from foundry.drivers.github import GitHubDriver, GitHubUser, Installation, Member
from foundry.drivers.github.fake import FakeGitHub, seed_mock
from foundry.drivers.github.pygithub import PyGithubDriver
from foundry.errors import DriverError, NotFound, RateLimited


def _new_key() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


_APP_KEY = _new_key()  # one key for the module: RSA generation is the slowest part of a fake's start


class RecordingSleep:
    """Stands in for asyncio.sleep: records how long the driver wanted to wait."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture
def fake() -> Iterator[FakeGitHub]:
    with FakeGitHub(private_key_pem=_APP_KEY) as server:
        seed_mock(server)
        yield server


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start_ms=SystemClock().now_ms())


@pytest.fixture
def sleeps() -> RecordingSleep:
    return RecordingSleep()


def make_driver(
    fake: FakeGitHub, clock: FakeClock, sleeps: RecordingSleep, **options: object
) -> PyGithubDriver:
    return PyGithubDriver(
        fake.app_id,
        fake.private_key_pem,
        fake.client_id,
        fake.client_secret,
        base_url=fake.base_url,
        web_url=fake.base_url,
        throttle=False,
        clock=clock,
        sleep=sleeps,
        **options,  # type: ignore[arg-type]
    )


@pytest.fixture
async def driver(fake: FakeGitHub, clock: FakeClock, sleeps: RecordingSleep) -> AsyncIterator[PyGithubDriver]:
    github = make_driver(fake, clock, sleeps)
    yield github
    await github.aclose()


def test_the_driver_implements_the_protocol(driver: PyGithubDriver) -> None:
    assert isinstance(driver, GitHubDriver)


# ------------------------------------------------------------------------------------- App level


async def test_list_installations_signs_a_real_app_jwt(driver: PyGithubDriver, fake: FakeGitHub) -> None:
    installations = await driver.list_installations()

    assert installations == [
        Installation(1001, "acme", 7001, "Organization", False, "all"),
        Installation(1002, "globex", 7002, "Organization", False, "all"),
    ]
    [request] = fake.requests_to("/app/installations")
    scheme, _, token = request.headers["authorization"].partition(" ")
    public_key = serialization.load_pem_private_key(_APP_KEY.encode(), None).public_key()
    claims = jwt.decode(token, public_key, algorithms=["RS256"])  # type: ignore[arg-type]
    assert scheme == "Bearer"
    assert claims["iss"] == str(fake.app_id)
    assert claims["exp"] - claims["iat"] == 600  # iat = now - 60 s, exp = now + 540 s


async def test_a_jwt_from_the_wrong_key_is_refused(
    fake: FakeGitHub, clock: FakeClock, sleeps: RecordingSleep
) -> None:
    impostor = PyGithubDriver(
        fake.app_id,
        _new_key(),
        fake.client_id,
        fake.client_secret,
        base_url=fake.base_url,
        throttle=False,
        clock=clock,
        sleep=sleeps,
    )

    with pytest.raises(DriverError) as caught:
        await impostor.list_installations()

    assert caught.value.status == 401
    assert caught.value.vendor == "github"
    assert "listing the App's installations" in caught.value.detail
    await impostor.aclose()


async def test_a_private_key_that_does_not_parse_is_named_as_the_setting(
    fake: FakeGitHub, clock: FakeClock, sleeps: RecordingSleep
) -> None:
    fake.private_key_pem, real = "notapem-but-long-SECRETPK123", fake.private_key_pem
    try:
        broken = make_driver(fake, clock, sleeps)
    finally:
        fake.private_key_pem = real
    with pytest.raises(DriverError) as caught:
        await broken.list_installations()
    assert "FOUNDRY_GITHUB__PRIVATE_KEY" in caught.value.detail
    assert "does not parse" in caught.value.detail
    assert "SECRETPK123" not in caught.value.detail
    await broken.aclose()


async def test_list_installations_follows_every_page(driver: PyGithubDriver, fake: FakeGitHub) -> None:
    for n in range(150):
        fake.add_installation(5000 + n, f"org-{n}")

    installations = await driver.list_installations()

    assert len(installations) == 152
    assert len(fake.requests_to("/app/installations")) == 2  # per_page=100


async def test_installation_token_is_cached_until_five_minutes_before_expiry(
    driver: PyGithubDriver, fake: FakeGitHub, clock: FakeClock
) -> None:
    first = await driver.get_installation_token(1001)
    again = await driver.get_installation_token(1001)
    clock.advance(int(timedelta(minutes=54).total_seconds() * 1000))
    still = await driver.get_installation_token(1001)

    assert first.token.startswith("ghs_")
    assert first.repository_ids is None
    assert first.expires_at > datetime.now(UTC) + timedelta(minutes=59)
    assert again is first
    assert still is first
    assert len(fake.requests_to("/app/installations/1001/access_tokens")) == 1

    clock.advance(int(timedelta(minutes=2).total_seconds() * 1000))  # 56 min: inside the margin
    refreshed = await driver.get_installation_token(1001)

    assert refreshed.token != first.token
    assert len(fake.requests_to("/app/installations/1001/access_tokens")) == 2


async def test_concurrent_callers_share_one_token_mint(driver: PyGithubDriver, fake: FakeGitHub) -> None:
    tokens = await asyncio.gather(*(driver.get_installation_token(1002) for _ in range(8)))

    assert len({t.token for t in tokens}) == 1
    assert len(fake.requests_to("/app/installations/1002/access_tokens")) == 1


async def test_narrowed_token_only_sees_its_repositories(driver: PyGithubDriver, fake: FakeGitHub) -> None:
    narrowed = await driver.get_installation_token(1001, [910001])
    full = await driver.get_installation_token(1001)

    assert narrowed.repository_ids == (910001,)
    assert narrowed.token != full.token
    [mint, _] = fake.requests_to("/app/installations/1001/access_tokens")
    assert json.loads(mint.body) == {"repository_ids": [910001]}
    async with httpx.AsyncClient(
        base_url=fake.base_url, headers={"Authorization": f"token {narrowed.token}"}
    ) as http:
        assert (await http.get("/repos/acme/rocket")).status_code == 200
        assert (await http.get("/repos/acme/anvil")).status_code == 404
    assert await driver.get_installation_token(1001, [910001]) is narrowed


async def test_token_for_an_unknown_repository_is_refused(driver: PyGithubDriver) -> None:
    with pytest.raises(DriverError) as caught:
        await driver.get_installation_token(1001, [920001])  # globex/hammock: not acme's

    assert caught.value.status == 422


async def test_suspended_installation_cannot_mint(driver: PyGithubDriver, fake: FakeGitHub) -> None:
    fake.set_suspended(1002, True)

    assert (await driver.list_installations())[1].suspended
    with pytest.raises(DriverError) as caught:
        await driver.get_installation_token(1002)
    assert caught.value.status == 403


# ---------------------------------------------------------------------------- installation level


async def test_repositories_across_pages(driver: PyGithubDriver, fake: FakeGitHub) -> None:
    for n in range(230):
        fake.add_repo(1001, "acme", f"service-{n:03d}")

    repos = await driver.list_installation_repositories(1001)

    assert len(repos) == 233
    assert len(fake.requests_to("/installation/repositories")) == 3
    rocket = next(r for r in repos if r.full_name == "acme/rocket")
    assert rocket.id == 910001
    assert rocket.owner_login == "acme"
    assert rocket.private
    assert not rocket.archived
    assert rocket.default_branch == "main"
    assert rocket.clone_url == f"{fake.base_url}/acme/rocket.git"
    assert rocket.html_url == f"{fake.base_url}/acme/rocket"
    assert rocket.updated_at == datetime(2026, 1, 5, 15, 30, tzinfo=UTC)
    assert all(r.owner_login == "acme" for r in repos)  # never globex's


async def test_member_roles_come_from_two_list_calls(driver: PyGithubDriver, fake: FakeGitHub) -> None:
    for n in range(240):
        fake.add_member("acme", f"dev-{n:03d}", "admin" if n % 60 == 0 else "member")

    members = await driver.list_org_members(1001, "acme")

    by_login = {m.login: m for m in members}
    assert len(members) == 242
    assert by_login["carol"].role == "admin"
    assert by_login["alice"] == Member(5001, "alice", f"{fake.base_url}/avatars/u/5001?v=4", "member")
    assert sorted(m.login for m in members if m.role == "admin") == [
        "carol",
        "dev-000",
        "dev-060",
        "dev-120",
        "dev-180",
    ]
    member_calls = fake.requests_to("/orgs/acme/members")
    assert [r.query.get("role") for r in member_calls] == ["admin", "all", "all", "all"]
    assert fake.requests_to("/users/") == []  # no per-member lookups: two list calls cover roles


async def test_members_of_another_installations_org_are_refused(driver: PyGithubDriver) -> None:
    with pytest.raises(DriverError) as caught:
        await driver.list_org_members(1001, "globex")

    assert caught.value.status == 403


async def test_open_pull_requests_across_pages_without_per_pr_calls(
    driver: PyGithubDriver, fake: FakeGitHub
) -> None:
    start = datetime(2026, 2, 1, tzinfo=UTC)
    for n in range(3, 253):
        fake.add_pull(
            "acme/rocket",
            n,
            f"Change {n}",
            f"feat/change-{n}",
            author="alice",
            updated_at=start + timedelta(minutes=n),
        )
    fake.add_pull("acme/rocket", 300, "Old idea", "feat/old", state="closed")

    pulls = await driver.list_open_pull_requests(1001, "acme/rocket")

    assert len(pulls) == 252
    assert [p.number for p in pulls[:3]] == [252, 251, 250]  # most recently updated first
    assert pulls[0].updated_at == start + timedelta(minutes=252)  # GitHub's own
    assert pulls[0].head_ref == "feat/change-252"
    assert pulls[0].base_ref == "main"
    assert pulls[0].author_login == "alice"
    assert pulls[0].html_url == f"{fake.base_url}/acme/rocket/pull/252"
    assert not any(p.merged or p.state != "open" for p in pulls)
    list_calls = fake.requests_to("/repos/acme/rocket/pulls")
    assert len(list_calls) == 3
    assert {r.path for r in list_calls} == {"/repos/acme/rocket/pulls"}  # no /pulls/<n> (N+1)


async def test_get_pull_request_reports_merges(driver: PyGithubDriver, fake: FakeGitHub) -> None:
    fake.update_pull("acme/rocket", 1, merged=True)

    pull = await driver.get_pull_request(1001, "acme/rocket", 1)

    assert pull.merged
    assert pull.state == "closed"
    assert pull.merged_at is not None
    assert pull.closed_at == pull.merged_at
    assert pull.title == "Add launch countdown"


async def test_create_pull_request(driver: PyGithubDriver, fake: FakeGitHub) -> None:
    created = await driver.create_pull_request(
        1001, "acme/anvil", "feat/heavier", "main", "Heavier anvil", "More mass.", draft=True
    )

    assert created.number == 1
    assert created.draft
    assert created.state == "open"
    assert (created.head_ref, created.base_ref) == ("feat/heavier", "main")
    assert created.author_login == "foundry-dev[bot]"
    assert [p.number for p in await driver.list_open_pull_requests(1001, "acme/anvil")] == [1]

    with pytest.raises(DriverError) as caught:
        await driver.create_pull_request(1001, "acme/anvil", "feat/heavier", "main", "Again", "")
    assert caught.value.status == 422


async def test_get_repository(driver: PyGithubDriver) -> None:
    repo = await driver.get_repository(1002, "globex/doomsday-device")

    assert repo.full_name == "globex/doomsday-device"
    assert repo.archived
    assert repo.id == 920002


async def test_404_is_not_found(driver: PyGithubDriver) -> None:
    with pytest.raises(NotFound):
        await driver.get_repository(1001, "acme/missing")
    with pytest.raises(NotFound):
        await driver.get_repository(1001, "globex/hammock")  # exists, but not for this installation
    with pytest.raises(NotFound):
        await driver.get_pull_request(1001, "acme/rocket", 999)


async def test_server_error_is_a_driver_error_naming_the_status(
    driver: PyGithubDriver, fake: FakeGitHub
) -> None:
    fake.fail_next("/repos/acme/rocket", 500)

    with pytest.raises(DriverError) as caught:
        await driver.get_repository(1001, "acme/rocket")

    assert caught.value.status == 500
    assert "500" in caught.value.detail
    assert "acme/rocket" in caught.value.detail


async def test_unreachable_github_is_a_driver_error(clock: FakeClock, sleeps: RecordingSleep) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    offline = PyGithubDriver(
        1,
        _APP_KEY,
        "id",
        "secret",
        base_url=f"http://127.0.0.1:{port}",
        throttle=False,
        clock=clock,
        sleep=sleeps,
    )

    with pytest.raises(DriverError) as caught:
        await offline.list_installations()

    assert caught.value.status is None
    assert "unreachable" in caught.value.detail
    await offline.aclose()


async def test_a_revoked_token_is_replaced_once(driver: PyGithubDriver, fake: FakeGitHub) -> None:
    await driver.get_repository(1001, "acme/rocket")
    fake.revoke_installation_tokens(1001)

    repo = await driver.get_repository(1001, "acme/rocket")

    assert repo.name == "rocket"
    assert len(fake.requests_to("/app/installations/1001/access_tokens")) == 2


async def test_concurrency_is_bounded_per_installation(
    fake: FakeGitHub, clock: FakeClock, sleeps: RecordingSleep
) -> None:
    github = make_driver(fake, clock, sleeps, max_concurrency_per_installation=2)
    await github.get_installation_token(1001)
    fake.latency = 0.05

    await asyncio.gather(*(github.get_repository(1001, "acme/rocket") for _ in range(8)))

    assert fake.max_in_flight == 2
    await github.aclose()


# ------------------------------------------------------------------------------------ rate limits


async def test_retry_after_is_honoured(
    driver: PyGithubDriver, fake: FakeGitHub, sleeps: RecordingSleep
) -> None:
    fake.fail_next("/repos/acme/rocket", 403, {"retry-after": "1"})

    repo = await driver.get_repository(1001, "acme/rocket")

    assert repo.name == "rocket"
    assert sleeps.calls == [1.0]
    assert [r.status for r in fake.requests_to("/repos/acme/rocket")] == [403, 200]


async def test_a_rate_limited_page_resumes_where_it_failed(
    driver: PyGithubDriver, fake: FakeGitHub, sleeps: RecordingSleep
) -> None:
    for n in range(3, 253):
        fake.add_pull("acme/rocket", n, f"Change {n}", f"feat/change-{n}")
    fake.fail_next("/repos/acme/rocket/pulls", 429, {"retry-after": "2"}, after=1)  # page 2

    pulls = await driver.list_open_pull_requests(1001, "acme/rocket")

    assert len(pulls) == 252
    assert sleeps.calls == [2.0]
    calls = fake.requests_to("/repos/acme/rocket/pulls")
    assert [(r.query.get("page", "1"), r.status) for r in calls] == [
        ("1", 200),
        ("2", 429),
        ("2", 200),
        ("3", 200),
    ]


async def test_exhausted_quota_waits_until_reset(
    driver: PyGithubDriver, fake: FakeGitHub, clock: FakeClock, sleeps: RecordingSleep
) -> None:
    reset = clock.now_ms() // 1000 + 5
    fake.fail_next("/orgs/acme/members", 403, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(reset)})

    members = await driver.list_org_members(1001, "acme")

    assert {m.login for m in members} == {"alice", "carol"}
    assert sleeps.calls == [pytest.approx(6.0, abs=1.0)]  # until reset, plus a second of slack


async def test_rate_limit_outlasting_the_budget_raises_rate_limited(
    driver: PyGithubDriver, fake: FakeGitHub, sleeps: RecordingSleep
) -> None:
    fake.fail_next("/repos/acme/rocket", 403, {"retry-after": "25"}, times=10)

    with pytest.raises(RateLimited, match="acme/rocket"):
        await driver.get_repository(1001, "acme/rocket")

    assert sleeps.calls == [25.0, 25.0]  # a third wait would pass the 60 s budget
    assert len(fake.requests_to("/repos/acme/rocket")) == 3


async def test_a_plain_403_is_not_retried(
    driver: PyGithubDriver, fake: FakeGitHub, sleeps: RecordingSleep
) -> None:
    fake.fail_next("/repos/acme/rocket", 403, body={"message": "Resource not accessible by integration"})

    with pytest.raises(DriverError, match="Resource not accessible by integration") as caught:
        await driver.get_repository(1001, "acme/rocket")

    assert caught.value.status == 403
    assert sleeps.calls == []


# ------------------------------------------------------------------------------------- user level


async def _authorize(fake: FakeGitHub, driver: PyGithubDriver, login: str) -> str:
    """Walk GitHub's authorize redirect as a browser would; returns the code."""
    async with httpx.AsyncClient() as http:
        response = await http.get(
            driver.authorize_url,
            params={
                "client_id": fake.client_id,
                "redirect_uri": "http://app.test/callback",
                "state": "st-1",
                "login": login,
            },
        )
    assert response.status_code == 302
    location = urlsplit(response.headers["location"])
    query = parse_qs(location.query)
    assert f"{location.scheme}://{location.netloc}{location.path}" == "http://app.test/callback"
    assert query["state"] == ["st-1"]
    return query["code"][0]


async def test_oauth_code_exchange_and_user_endpoints(driver: PyGithubDriver, fake: FakeGitHub) -> None:
    code = await _authorize(fake, driver, "carol")

    token = await driver.exchange_oauth_code(code)
    user = await driver.get_authenticated_user(token)
    orgs = await driver.list_user_orgs(token)
    installations = await driver.list_user_installations(token)

    assert token.startswith("ghu_")
    assert user == GitHubUser(
        5003, "carol", "Carol Chen", f"{fake.base_url}/avatars/u/5003?v=4", "carol@acme.example"
    )
    # Served by the fake itself: mock mode shows people's pictures without the internet.
    async with httpx.AsyncClient() as client:
        avatar = await client.get(user.avatar_url)
    assert avatar.status_code == 200
    assert avatar.headers["content-type"] == "image/svg+xml"
    assert b">C</text>" in avatar.content
    assert fake.requests_to("/user/emails") == []  # public email: no extra call
    assert [(o.login, o.id) for o in orgs] == [("acme", 7001), ("globex", 7002)]
    assert [i.id for i in installations] == [1001, 1002]


async def test_a_used_code_is_refused(driver: PyGithubDriver, fake: FakeGitHub) -> None:
    code = fake.issue_oauth_code("alice")
    await driver.exchange_oauth_code(code)

    with pytest.raises(DriverError, match="bad_verification_code") as caught:
        await driver.exchange_oauth_code(code)

    assert caught.value.status == 401


async def test_private_email_falls_back_to_the_primary_verified_one(
    driver: PyGithubDriver, fake: FakeGitHub
) -> None:
    token = fake.issue_user_token("bob")

    user = await driver.get_authenticated_user(token)
    installations = await driver.list_user_installations(token)

    assert user.email == "bob@globex.example"
    assert len(fake.requests_to("/user/emails")) == 1
    assert [i.account_login for i in installations] == ["globex"]


async def test_a_bad_user_token_is_a_401(driver: PyGithubDriver) -> None:
    with pytest.raises(DriverError) as caught:
        await driver.get_authenticated_user("ghu_not-a-token")

    assert caught.value.status == 401


async def test_authlib_signs_in_with_the_driver_urls(driver: PyGithubDriver, fake: FakeGitHub) -> None:
    """The way foundry.auth uses it: authlib does the web flow with the driver's URLs."""
    async with AsyncOAuth2Client(
        fake.client_id, fake.client_secret, redirect_uri="http://app.test/callback"
    ) as oauth:
        url, state = oauth.create_authorization_url(driver.authorize_url, state="st-1")
        async with httpx.AsyncClient() as http:
            redirect = await http.get(url + "&login=alice")
        code = parse_qs(urlsplit(redirect.headers["location"]).query)["code"][0]
        token = await oauth.fetch_token(driver.access_token_url, code=code, state=state)
        me = (await oauth.get(driver.api_base_url + "user")).json()

    assert token["token_type"] == "bearer"
    assert me["login"] == "alice"


# ------------------------------------------------------------------------------ the fake itself


async def test_fake_speaks_githubs_error_shapes(fake: FakeGitHub) -> None:
    async with httpx.AsyncClient(base_url=fake.base_url) as http:
        unknown = await http.get("/nope", headers={"Authorization": "token x"})
        no_jwt = await http.get("/app/installations")
        no_token = await http.get("/installation/repositories")

    assert unknown.status_code == 404
    assert unknown.json()["message"] == "Not Found"
    assert unknown.json()["documentation_url"].startswith("https://docs.github.com/")
    assert no_jwt.status_code == 401
    assert no_token.status_code == 401


async def test_fake_paginates_with_link_headers_on_its_own_host(fake: FakeGitHub) -> None:
    token = fake.issue_user_token("carol")
    for n in range(5):
        fake.add_member("acme", f"dev-{n}")
    async with httpx.AsyncClient(base_url=fake.base_url, headers={"Authorization": f"token {token}"}) as http:
        first = await http.get("/orgs/acme/members", params={"per_page": 3})
        second = await http.get(first.links["next"]["url"])

    assert [m["login"] for m in first.json()] == ["alice", "carol", "dev-0"]
    assert first.links["last"]["url"].startswith(fake.base_url)
    assert "page=3" in first.links["last"]["url"]
    assert [m["login"] for m in second.json()] == ["dev-1", "dev-2", "dev-3"]
    assert {"prev", "next", "last", "first"} <= set(second.links)
    assert all(u["url"].startswith(fake.base_url) for u in second.json())
