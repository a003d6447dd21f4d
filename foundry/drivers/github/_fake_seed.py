"""The demo world of Foundry's mock mode, seeded into a `FakeGitHub`.

Apart from the fake itself: it is data, not behaviour, and mock mode, tests and benchmarks share it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from foundry.drivers.github.fake import FakeGitHub

__all__ = ["MOCK_TIME", "seed_mock"]

MOCK_TIME = datetime(2026, 1, 5, 9, 30, tzinfo=UTC)


def seed_mock(fake: FakeGitHub) -> FakeGitHub:
    """Seed the demo world of Foundry's mock mode. Call once on an empty fake; returns it.

    * organizations ``acme`` (installation 1001) and ``globex`` (installation 1002), App installed;
    * users ``alice`` (member of acme), ``bob`` (member of globex), ``carol`` (admin of acme, member
      of globex);
    * repositories ``acme/rocket``, ``acme/anvil``, ``acme/portable-hole``, ``globex/hammock``,
      ``globex/doomsday-device``;
    * open pull requests on ``acme/rocket`` (#1 by alice, #2 draft by carol) and ``globex/hammock``
      (#1 by bob).
    """
    fake.add_org("acme", 7001, name="ACME Corporation", description="Rockets, anvils and portable holes")
    fake.add_org("globex", 7002, name="Globex Corporation", description="World domination, comfortably")
    fake.add_user("alice", 5001, name="Alice Anderson", email="alice@acme.example")
    fake.add_user("bob", 5002, name="Bob Brown", email=None, emails=["bob@globex.example"])
    fake.add_user("carol", 5003, name="Carol Chen", email="carol@acme.example")
    fake.add_member("acme", "alice", "member")
    fake.add_member("acme", "carol", "admin")
    fake.add_member("globex", "bob", "member")
    fake.add_member("globex", "carol", "member")
    fake.add_installation(1001, "acme")
    fake.add_installation(1002, "globex")

    def at(hours: int) -> datetime:
        return MOCK_TIME + timedelta(hours=hours)

    fake.add_repo(
        1001, "acme", "rocket", id=910001, description="Rocket-powered roller skates", updated_at=at(6)
    )
    fake.add_repo(
        1001, "acme", "anvil", id=910002, description="Anvils, dropped from great heights", updated_at=at(4)
    )
    fake.add_repo(
        1001, "acme", "portable-hole", id=910003, description="Holes you can carry", updated_at=at(1)
    )
    fake.add_repo(
        1002, "globex", "hammock", id=920001, description="Hammock district services", updated_at=at(5)
    )
    fake.add_repo(1002, "globex", "doomsday-device", id=920002, archived=True, updated_at=at(0))
    fake.add_pull(
        "acme/rocket",
        1,
        "Add launch countdown",
        "feat/countdown",
        author="alice",
        body="Counts down from ten before ignition.",
        created_at=at(2),
        updated_at=at(6),
    )
    fake.add_pull(
        "acme/rocket",
        2,
        "Tune thruster ratio",
        "feat/thrusters",
        author="carol",
        draft=True,
        body="Work in progress.",
        created_at=at(3),
        updated_at=at(5),
    )
    fake.add_pull(
        "globex/hammock",
        1,
        "Fix hammock sway",
        "fix/sway",
        author="bob",
        body="Less sway, more rest.",
        created_at=at(1),
        updated_at=at(4),
    )
    return fake
