"""Session ids (the bearer secret inside the session cookie) never reach a database file in plain:
the user actor keeps their SHA-256, the OAuth-callback record keeps them encrypted, and databases
written before keep working after their migration hashes them in place."""

from __future__ import annotations

import hashlib
from pathlib import Path

import sqlalchemy as sa
from alembic import command

from foundry.auth.cookies import SessionCookies
from foundry.db.engine import make_engine, no_transaction
from foundry.db.migrate import alembic_config, ensure_schema
from foundry.runtime.inprocess import InProcessRuntime
from foundry.runtime.role import load_role
from tests.http.conftest import Server
from tests.http.test_auth import _authorize


def files_containing(root: Path, *needles: bytes) -> list[str]:
    """Every file under ``root`` (databases, their WAL and journal files included) holding a needle."""
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        found.extend(
            f"{path.relative_to(root)} holds {needle[:12]!r}…" for needle in needles if needle in data
        )
    return found


async def test_no_database_file_holds_a_session_id_or_cookie(server: Server) -> None:
    cookies = SessionCookies(server.settings)
    async with server.client() as client:
        # OAuth sign-in: also records the outcome for retried callbacks on the app shell.
        callback = await _authorize(server, client, "carol")
        assert (await client.get(callback)).status_code == 302
        oauth_cookie = client.cookies["foundry_session"]
        # Mock sign-in, and a session that is then revoked.
        mock = await client.post("/v1/auth/mock/sign-in", json={"login": "alice"})
        mock_cookie = mock.cookies["foundry_session"]
        assert (await client.get("/v1/auth/session")).status_code == 200
        assert (await client.post("/v1/auth/sign-out")).status_code == 200
    session_ids = []
    for raw in (oauth_cookie, mock_cookie):
        async with server.client(cookies={"foundry_session": raw}) as probe:
            session_ids.append(cookies._serializer.loads(raw)["s"])
            answer = await probe.get("/v1/auth/session")
            # carol's session still works, alice's was revoked: lookups hash the presented id.
            assert answer.status_code == (200 if raw == oauth_cookie else 401), answer.text
    needles = [s.encode() for s in session_ids] + [oauth_cookie.encode(), mock_cookie.encode()]
    assert files_containing(server.settings.data_dir, *needles) == []
    digests = [hashlib.sha256(s.encode()).hexdigest().encode() for s in session_ids]
    assert files_containing(server.settings.data_dir, *digests), "the digests are what is stored"


async def test_sessions_written_before_are_hashed_in_place_and_keep_working(
    runtime: InProcessRuntime,
) -> None:
    """A user database from before the migration holds plain session ids: after the upgrade only
    their digests remain in the file, and the cookie that carries the plain id still signs in."""
    role = load_role("user")
    user_id = "gh-5001"
    plain = "plain-session-id-0123456789abcdefghijklmnopqrstu"
    path = runtime.host("user", runtime.shard_for("user", user_id)).path_for(user_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = alembic_config(role.migrations_location)
    cfg.set_main_option("sqlalchemy.url", f"sqlite:///{path}")
    try:
        command.upgrade(cfg, "0001")
    finally:
        cfg.set_main_option("sqlalchemy.url", "")
    engine = make_engine(path)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                sa.text("INSERT INTO sessions(id, created_at, expires_at) VALUES (:id, 1, :expires)"),
                {"id": plain, "expires": 2**62},
            )
        assert await ensure_schema(engine, role.migrations_location) is True
        # Outside a transaction: SQLite refuses a checkpoint inside one.
        async with no_transaction(engine).connect() as conn:
            stored = (await conn.execute(sa.text("SELECT id FROM sessions"))).scalars().all()
            await conn.execute(sa.text("PRAGMA wal_checkpoint(TRUNCATE)"))
    finally:
        await engine.dispose()
    assert stored == [hashlib.sha256(plain.encode()).hexdigest()]
    assert files_containing(path.parent, plain.encode()) == []
    session = await runtime.call("user", user_id, "get_session", {"sessionId": plain})
    assert session == {"userId": user_id, "sessionId": plain, "expiresAt": 2**62}
