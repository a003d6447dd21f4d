"""`foundry backup` / `foundry restore` on real actor databases built by the roles' migrations: what
they copy, and every refusal (one line, exit status 1, nothing half-written)."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from alembic import command
from click.testing import CliRunner, Result

from foundry import backup as backup_module
from foundry.cli import main
from foundry.config import get_settings
from foundry.db.migrate import alembic_config, head_revision
from foundry.runtime.keys import partition_dir_name, partition_of
from foundry.runtime.role import load_role

KEYS = {"audit-log": ["acme", "globex"], "organization": ["acme", "globex", "app"]}


def db_path(data_dir: Path, role: str, key: str) -> Path:
    return data_dir / role / partition_dir_name(partition_of(key)) / f"{key}.sqlite3"


_BUILT: dict[tuple[str, str], Path] = {}


@pytest.fixture(scope="module")
def _schemas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Each (role, revision) is migrated once per module; databases are copies of those builds."""
    _BUILT.clear()
    _BUILT[("", "")] = tmp_path_factory.mktemp("schemas")
    yield
    _BUILT.clear()


def migrate(path: Path, role: str, revision: str = "head") -> None:
    """An actor database built by the role's real migrations up to ``revision``, with a probe row."""
    built = _BUILT.get((role, revision))
    if built is None:
        built = _BUILT[("", "")] / f"{role}-{revision}.sqlite3"
        cfg = alembic_config(load_role(role).migrations_location)
        cfg.set_main_option("sqlalchemy.url", f"sqlite:///{built}")
        try:
            command.upgrade(cfg, revision)
        finally:
            cfg.set_main_option("sqlalchemy.url", "")
        _BUILT[(role, revision)] = built
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(built, path)
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("INSERT INTO foundry_topic_seq (topic, seq) VALUES (?, ?)", (f"probe:{path.stem}", 7))


@pytest.fixture
def data_dir(tmp_path: Path, _schemas: None) -> Path:
    data = tmp_path / "data"
    for role, keys in KEYS.items():
        for key in keys:
            migrate(db_path(data, role, key), role)
    (data / "secret_key").write_text("mock-secret\n")
    (data / "host-secrets.json").write_text("{}")
    (data / "audit-log" / ".schema").mkdir()
    (data / "audit-log" / ".schema" / "audit_log-x.template").write_text("not copied")
    (data / "sandboxes" / "sbx-1" / "repo").mkdir(parents=True)
    # A repository checked out in a sandbox may hold SQLite files of its own: never an actor.
    sqlite3.connect(data / "sandboxes" / "sbx-1" / "repo" / "checkout.sqlite3").close()
    return data


@pytest.fixture(autouse=True)
def _fresh_settings() -> Iterator[None]:
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def cli(*args: str, data_dir: Path) -> Result:
    get_settings.cache_clear()
    return CliRunner().invoke(main, list(args), env={"FOUNDRY_DATA_DIR": str(data_dir)})


def one_line_error(result: Result) -> str:
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def probe(path: Path) -> int:
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn, conn:
        return int(conn.execute("SELECT seq FROM foundry_topic_seq WHERE topic LIKE 'probe:%'").fetchone()[0])


def test_backup_copies_every_actor_database_and_the_secret_key_only(data_dir: Path, tmp_path: Path) -> None:
    dest = tmp_path / "backup"
    result = cli("backup", str(dest), data_dir=data_dir)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["files"] == 6
    assert summary["skipped"] == []
    assert summary["bytes"] == sum(
        p.stat().st_size for p in dest.rglob("*") if p.is_file() and p.name != "manifest.json"
    )
    assert "backup: 5/5 files" in result.stderr
    manifest = json.loads((dest / "manifest.json").read_text())
    by_path = {f["path"]: f for f in manifest["files"]}
    assert set(by_path) == {
        str(db_path(Path(), role, key)) for role, keys in KEYS.items() for key in keys
    } | {"secret_key"}
    heads = {role: head_revision(load_role(role).migrations_location) for role in KEYS}
    for role, keys in KEYS.items():
        for key in keys:
            entry = by_path[str(db_path(Path(), role, key))]
            assert entry["role"] == role
            assert entry["revision"] == heads[role]
            assert probe(dest / entry["path"]) == 7
            # A self-contained copy: no WAL beside it.
            assert not (dest / (entry["path"] + "-wal")).exists()
    assert manifest["foundryVersion"]
    assert manifest["createdAt"]
    left_out = {"host-secrets.json", "sandboxes", ".schema", "checkout.sqlite3"}
    assert not {p.name for p in dest.rglob("*")} & left_out
    assert (dest / "secret_key").stat().st_mode & 0o077 == 0
    # Nothing of it is readable by other users: the manifest names organizations and tasks.
    assert [p for p in [dest, *dest.rglob("*")] if p.stat().st_mode & 0o077] == []


def test_restore_brings_the_data_back_and_rebuilds_the_runtime_indexes(
    data_dir: Path, tmp_path: Path
) -> None:
    # One database with a pending command and a dead letter, as a running server would leave it.
    org = db_path(data_dir, "organization", "acme")
    with closing(sqlite3.connect(org)) as conn, conn:
        conn.execute(
            "INSERT INTO foundry_mailbox (command_id, name, body, status, created_at) "
            "VALUES ('c1', 'noop', '{}', 'pending', 1)"
        )
        conn.execute(
            "INSERT INTO foundry_outbox (role, key, name, body, command_id, created_at, status) "
            "VALUES ('audit-log', 'acme', 'append', '{}', 'o1', 1, 'dead')"
        )
    assert cli("backup", str(tmp_path / "backup"), data_dir=data_dir).exit_code == 0
    target = tmp_path / "restored"
    result = cli("restore", str(tmp_path / "backup"), data_dir=target)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["files"] == 6
    for role, keys in KEYS.items():
        for key in keys:
            assert probe(db_path(target, role, key)) == 7
    assert (target / "secret_key").read_text() == "mock-secret\n"
    assert sorted(p.name for p in (target / "organization" / ".pending").iterdir()) == ["acme"]
    assert (target / "organization" / ".dead" / "acme").read_text() == "1"
    assert not (target / "host-secrets.json").exists()
    assert [p for p in [target, *target.rglob("*")] if p.stat().st_mode & 0o077] == []


def test_backup_into_a_non_empty_destination_is_refused(data_dir: Path, tmp_path: Path) -> None:
    dest = tmp_path / "backup"
    dest.mkdir()
    (dest / "notes.txt").write_text("keep me")
    line = one_line_error(cli("backup", str(dest), data_dir=data_dir))
    assert "is not empty" in line
    assert [p.name for p in dest.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup", "data"]  # no partial copy left


def test_backup_inside_the_data_dir_is_refused(data_dir: Path) -> None:
    line = one_line_error(cli("backup", str(data_dir / "bk"), data_dir=data_dir))
    assert "inside the data directory" in line
    assert not (data_dir / "bk").exists()


def test_restore_of_a_directory_without_manifest_is_refused(data_dir: Path, tmp_path: Path) -> None:
    line = one_line_error(cli("restore", str(data_dir), data_dir=tmp_path / "new"))
    assert "has no manifest.json" in line
    assert not (tmp_path / "new").exists()
    assert "no backup at" in one_line_error(cli("restore", str(tmp_path / "nope"), data_dir=tmp_path / "new"))


def test_restore_of_a_tampered_or_incomplete_backup_is_refused(data_dir: Path, tmp_path: Path) -> None:
    backup = tmp_path / "backup"
    assert cli("backup", str(backup), data_dir=data_dir).exit_code == 0
    victim = backup / db_path(Path(), "organization", "globex")
    raw = bytearray(victim.read_bytes())
    raw[-100] ^= 0xFF
    victim.write_bytes(bytes(raw))
    line = one_line_error(cli("restore", str(backup), data_dir=tmp_path / "new"))
    assert "does not match its sha256" in line
    assert "globex" in line
    victim.unlink()
    line = one_line_error(cli("restore", str(backup), data_dir=tmp_path / "new"))
    assert "missing from" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup", "data"]  # nothing half-written


def test_a_database_damaged_before_the_backup_is_named_in_one_line(data_dir: Path, tmp_path: Path) -> None:
    """Its checksum matches (the file was already damaged when it was copied): restore says which
    file it is instead of a traceback, and leaves nothing behind."""
    backup = tmp_path / "backup"
    assert cli("backup", str(backup), data_dir=data_dir).exit_code == 0
    rel = db_path(Path(), "organization", "globex")
    victim = backup / rel
    victim.write_bytes(victim.read_bytes()[:8192])
    manifest = json.loads((backup / "manifest.json").read_text())
    for entry in manifest["files"]:
        if entry["path"] == str(rel):
            entry["sha256"] = hashlib.sha256(victim.read_bytes()).hexdigest()
            entry["size"] = victim.stat().st_size
    (backup / "manifest.json").write_text(json.dumps(manifest))
    result = cli("restore", str(backup), data_dir=tmp_path / "new")
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if not line.startswith("restore: ")]
    assert len(errors) == 1, result.output  # the progress lines, then one error
    assert f"{rel} in the backup is not a readable SQLite database" in errors[0]
    assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup", "data"]


def test_restore_into_a_non_empty_data_dir_or_a_running_server_is_refused(
    data_dir: Path, tmp_path: Path
) -> None:
    backup = tmp_path / "backup"
    assert cli("backup", str(backup), data_dir=data_dir).exit_code == 0
    assert "is not empty" in one_line_error(cli("restore", str(backup), data_dir=data_dir))
    assert probe(db_path(data_dir, "audit-log", "acme")) == 7
    # A running `foundry serve` records its Ray address in the data dir.
    (data_dir / "ray-address").write_text('{"address": "127.0.0.1:6379"}')
    line = one_line_error(cli("restore", str(backup), data_dir=data_dir))
    assert "a Foundry server is running" in line


def test_restore_refuses_a_newer_schema_and_migrates_an_older_one(data_dir: Path, tmp_path: Path) -> None:
    older = db_path(data_dir, "audit-log", "old")
    migrate(older, "audit-log", "0001")
    newer = db_path(data_dir, "organization", "acme")
    with closing(sqlite3.connect(newer)) as conn, conn:
        conn.execute("UPDATE alembic_version SET version_num = '0099_from_the_future'")
    assert cli("backup", str(tmp_path / "b1"), data_dir=data_dir).exit_code == 0
    line = one_line_error(cli("restore", str(tmp_path / "b1"), data_dir=tmp_path / "new"))
    assert "newer than this Foundry knows" in line
    assert "0099_from_the_future" in line
    assert not (tmp_path / "new").exists()

    newer.unlink()
    assert cli("backup", str(tmp_path / "b2"), data_dir=data_dir).exit_code == 0
    result = cli("restore", str(tmp_path / "b2"), data_dir=tmp_path / "new")
    assert result.exit_code == 0, result.output
    upgraded = cli("db", "upgrade", "--role", "audit-log", data_dir=tmp_path / "new")
    assert "audit-log: 3 databases, 1 migrated" in upgraded.stdout
    assert probe(db_path(tmp_path / "new", "audit-log", "old")) == 7


def test_a_database_kept_unreadable_is_reported_and_the_rest_is_copied(
    data_dir: Path, tmp_path: Path
) -> None:
    locked = db_path(data_dir, "organization", "globex")
    holder = sqlite3.connect(locked, isolation_level=None)
    # An exclusive lock (another tool, not Foundry) keeps even WAL readers out.
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        result = cli(
            "backup", str(tmp_path / "backup"), "--lock-timeout", "0.05", "--attempts", "2", data_dir=data_dir
        )
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)
    assert [s["path"] for s in summary["skipped"]] == [str(db_path(Path(), "organization", "globex"))]
    assert summary["files"] == 5
    assert f"could not copy {db_path(Path(), 'organization', 'globex')}" in result.stderr
    # A partial backup restores only when asked to.
    line = one_line_error(cli("restore", str(tmp_path / "backup"), data_dir=tmp_path / "new"))
    assert "--allow-partial" in line
    result = cli("restore", str(tmp_path / "backup"), "--allow-partial", data_dir=tmp_path / "new")
    assert result.exit_code == 0, result.output
    assert probe(db_path(tmp_path / "new", "organization", "acme")) == 7
    assert not db_path(tmp_path / "new", "organization", "globex").exists()


def test_a_write_in_progress_neither_waits_for_nor_delays_the_backup(data_dir: Path, tmp_path: Path) -> None:
    """The copy is a read snapshot: the server's open write transaction goes on, uncopied."""
    path = db_path(data_dir, "audit-log", "acme")
    writer = sqlite3.connect(path, isolation_level=None, timeout=0)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("UPDATE foundry_topic_seq SET seq = 8")
    try:
        result = cli("backup", str(tmp_path / "backup"), "--lock-timeout", "0.05", data_dir=data_dir)
        assert result.exit_code == 0, result.output
        writer.execute("UPDATE foundry_topic_seq SET seq = 9")  # still holding its lock, never blocked
        writer.execute("COMMIT")
    finally:
        writer.close()
    assert json.loads(result.stdout)["skipped"] == []
    assert probe(tmp_path / "backup" / db_path(Path(), "audit-log", "acme")) == 7
    assert probe(path) == 9


@pytest.mark.parametrize("receiver_had_it", [False, True])
def test_a_send_delivered_between_two_snapshots_is_put_back_once(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, receiver_had_it: bool
) -> None:
    """A task's send to its organization, acknowledged while the snapshots are taken: the
    organization's snapshot (taken first) may miss it while the task's no longer holds it."""
    sender, receiver = db_path(data_dir, "task", "t1"), db_path(data_dir, "organization", "acme")
    migrate(sender, "task")
    with closing(sqlite3.connect(sender)) as conn, conn:
        conn.execute(
            "INSERT INTO foundry_outbox (role, key, name, body, command_id, created_at, status, attempts) "
            "VALUES ('organization', 'acme', 'task_updated', '{}', 'send-1', 1, 'pending', 3)"
        )

    def deliver() -> None:
        """What the runtime does: the receiver commits the command, then the sender forgets it."""
        with closing(sqlite3.connect(receiver)) as conn, conn:
            conn.execute(
                "INSERT INTO foundry_mailbox (command_id, name, body, status, created_at) "
                "VALUES ('send-1', 'task_updated', '{}', 'pending', 2)"
            )
        with closing(sqlite3.connect(sender)) as conn, conn:
            conn.execute("DELETE FROM foundry_outbox WHERE command_id = 'send-1'")

    real_pin = backup_module._pin

    def pin(conn: sqlite3.Connection) -> None:
        file = conn.execute("PRAGMA database_list").fetchone()[2]
        if file == str(receiver) and receiver_had_it:
            deliver()
        real_pin(conn)
        if file == str(receiver) and not receiver_had_it:
            deliver()

    monkeypatch.setattr(backup_module, "_pin", pin)
    result = cli("backup", str(tmp_path / "backup"), data_dir=data_dir)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["sendsPutBack"] == (0 if receiver_had_it else 1)
    assert cli("restore", str(tmp_path / "backup"), data_dir=tmp_path / "new").exit_code == 0
    with closing(sqlite3.connect(db_path(tmp_path / "new", "task", "t1"))) as conn, conn:
        rows = conn.execute("SELECT command_id, status, attempts FROM foundry_outbox").fetchall()
    with closing(sqlite3.connect(db_path(tmp_path / "new", "organization", "acme"))) as conn, conn:
        received = conn.execute(
            "SELECT count(*) FROM foundry_mailbox WHERE command_id = 'send-1'"
        ).fetchone()[0]
    # Exactly one of the two copies holds the send: delivered once after the restore, never twice.
    if receiver_had_it:
        assert (rows, received) == ([], 1)
    else:
        assert (rows, received) == ([("send-1", "pending", 0)], 0)
        assert (tmp_path / "new" / "task" / ".pending" / "t1").exists()  # the restart wakes it to send
