"""Online backups of a Foundry data directory (`foundry.restore` brings one back).

A backup holds every actor database (``<role>/<partition>/<key>.sqlite3`` of each known role), copied
with SQLite's backup API while the server runs, and the mock-mode ``secret_key`` when there is one
(without it the restored GitHub tokens could not be decrypted and every session would be void).
``manifest.json`` lists each file with its role, alembic revision, size and sha256.

Left out on purpose: ``host-secrets.json`` and ``ray-address`` (rewritten at every start), each role's
``.schema`` templates (rebuilt on first use), ``.pending``/``.dead`` markers (derived again from the
restored databases), ``*.broken-*`` files (set aside for an operator, not live data), sandboxes
(checkouts and processes: large, and live; work that was not pushed is not in a backup) and
``mock-remotes`` (mock mode's stand-in for GitHub, which a backup does not hold either).
Each role's ``.inbox`` files (commands acknowledged and not yet run) are not copied as they are:
their commands are written into their instances' copies as pending mailbox rows, which a restored
instance runs at wake.

Consistency across files: actors talk through outboxes (the sender deletes its row once the receiver
has committed the message), and the files are snapshotted one after another. A send delivered
between the receiver's snapshot and the sender's would be in neither copy. So each database's
undelivered sends are read just before the snapshots are taken, and any of them that is gone from
the sender's copy but absent from the receiver's is put back in the sender's outbox copy, to be
delivered after a restore. Every write acknowledged before the backup started is therefore in it,
and so are the messages it had sent to other actors. The snapshots are WAL read transactions: the
server never waits on a backup, nor a backup on the server.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import resource
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tenacity import RetryError, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from foundry import __version__
from foundry.errors import FoundryError
from foundry.runtime import inbox
from foundry.runtime.keys import partition_dir_name, partition_of, validate_key

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = 1
SECRET_KEY_FILE = "secret_key"
#: A running server's record of its local Ray; its presence means the data dir is in use.
RUNNING_MARKER = "ray-address"
_PARTITION = re.compile(r"^[0-9a-f]{2}$")
DB_PATH = re.compile(r"^(?P<role>[a-z][a-z0-9-]*)/(?P<part>[0-9a-f]{2})/(?P<key>[^/]+)\.sqlite3$")
#: A pinned database holds its file, its WAL and its shared memory open.
_FDS_PER_DATABASE = 3
_FDS_RESERVED = 128
#: A send put back in an outbox starts its delivery attempts afresh.
_FRESH_SEND = {"status": "pending", "attempts": 0, "last_error": None, "next_attempt_at": None}

Progress = Callable[[int, int], None]


class BackupError(Exception):
    """A backup or restore refused or failed; the message is one line for the operator."""


@dataclass(frozen=True)
class _Database:
    rel: str
    role: str
    path: Path


@dataclass
class BackupResult:
    """What a backup wrote: ``files`` (manifest entries) and ``skipped`` (path and reason)."""

    files: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    #: Sends in flight while the snapshots were taken, put back in their sender's outbox copy.
    in_flight: int = 0
    #: Commands acknowledged but not yet run, written into their instance's copy as pending.
    waiting: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "files": len(self.files),
            "bytes": sum(f["size"] for f in self.files),
            "seconds": round(self.seconds, 3),
            "sendsPutBack": self.in_flight,
            "commandsWaiting": self.waiting,
            "skipped": self.skipped,
        }


# ------------------------------------------------------------------------------------------ backup


def _find_databases(data_dir: Path, roles: Iterable[str]) -> list[_Database]:
    found: list[_Database] = []
    for role in sorted(roles):
        root = data_dir / role
        if not root.is_dir():
            continue
        for part in sorted(p for p in root.iterdir() if _PARTITION.match(p.name) and p.is_dir()):
            for path in sorted(part.glob("*.sqlite3")):
                found.append(_Database(f"{role}/{part.name}/{path.name}", role, path))
    return found


def _check_destination(data_dir: Path, dest: Path) -> None:
    if not data_dir.is_dir():
        raise BackupError(f"no data directory at {data_dir} (set FOUNDRY_DATA_DIR)")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BackupError(f"{dest} is not empty: back up into a new or empty directory")
    if dest.resolve().is_relative_to(data_dir.resolve()):
        raise BackupError(f"{dest} is inside the data directory {data_dir}: choose a place outside it")


def _pin_budget() -> int:
    """How many databases can be held open at once (raising the soft file limit to the hard one)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    limit = soft if soft != resource.RLIM_INFINITY else 1 << 20
    return max(1, (limit - _FDS_RESERVED) // _FDS_PER_DATABASE)


def _open(path: Path, timeout: float) -> sqlite3.Connection:
    # mode=rw: a file that vanished must fail here, not be created empty.
    return sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=timeout, isolation_level=None)


def _skip(skipped: list[dict[str, str]], db: _Database, reason: str) -> None:
    log.warning("backup: leaving out %s: %s", db.rel, reason)
    skipped.append({"path": db.rel, "reason": reason})


def _undelivered(conn: sqlite3.Connection, rel: str) -> list[dict[str, Any]]:
    """The database's sends not yet acknowledged by their receiver (its pending outbox rows)."""
    conn.row_factory = sqlite3.Row
    try:
        rows = conn.execute("SELECT * FROM foundry_outbox WHERE status = 'pending'").fetchall()
    except sqlite3.OperationalError as exc:
        # Never migrated, or from before outbox rows had a status: its sends are not tracked here.
        log.debug("backup: no outbox status in %s (%s)", rel, exc)
        return []
    finally:
        conn.row_factory = None
    return [dict(row) for row in rows]


def _pin(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN")
    # The first read fixes the snapshot that the copy will see; WAL keeps it while the server writes.
    conn.execute("SELECT count(*) FROM sqlite_master").fetchone()


def _first_look(databases: list[_Database], timeout: float) -> dict[str, list[dict[str, Any]]]:
    """Every database's undelivered sends, read before any snapshot is pinned (see
    `_put_back_in_flight`)."""
    sends: dict[str, list[dict[str, Any]]] = {}
    for db in databases:
        try:
            conn = _open(db.path, timeout)
        except sqlite3.OperationalError as exc:
            log.debug("backup: cannot open %s for a first look (%s); its snapshot reports it", db.rel, exc)
            continue
        try:
            sends[db.rel] = _undelivered(conn, db.rel)
        except sqlite3.OperationalError as exc:
            log.warning("backup: cannot read %s's undelivered sends (%s); copying it as it is", db.rel, exc)
        finally:
            conn.close()
    return sends


def _snapshot(
    group: list[_Database], timeout: float, attempts: int, skipped: list[dict[str, str]]
) -> dict[str, sqlite3.Connection]:
    """Pin a read snapshot of every database of ``group``.

    Snapshots never block the server: a WAL reader takes no lock a writer waits on. Connections are
    opened and their schema read first, so the pins themselves follow each other within
    milliseconds. The audit log is pinned last: it only receives, so a send delivered to it while
    the pins are taken is in its snapshot. A database another process keeps from being read (an
    exclusive lock) is tried ``attempts`` times ``timeout`` seconds each, then left out.
    """
    conns: dict[str, sqlite3.Connection] = {}
    try:
        for db in group:
            try:
                conns[db.rel] = _open(db.path, timeout)
            except sqlite3.OperationalError as exc:
                _skip(skipped, db, "it disappeared" if not db.path.exists() else f"could not open it: {exc}")
        busy: list[_Database] = []
        for db in group:
            if db.rel in conns:
                try:  # reads the schema now, so that the pins below are quick
                    conns[db.rel].execute("SELECT count(*) FROM sqlite_master").fetchone()
                except sqlite3.OperationalError as exc:
                    log.info("backup: %s is busy (%s); trying it again after the others", db.rel, exc)
                    busy.append(db)
        for db in sorted(group, key=lambda d: (d.role == "audit-log", d.rel)):
            if db.rel in conns and db not in busy:
                try:
                    _pin(conns[db.rel])
                except sqlite3.OperationalError as exc:
                    log.info("backup: %s is busy (%s); trying it again after the others", db.rel, exc)
                    busy.append(db)
        for db in busy:
            conn = conns[db.rel]
            try:
                for attempt in Retrying(
                    retry=retry_if_exception_type(sqlite3.OperationalError),
                    wait=wait_exponential(multiplier=0.1, max=1.0),
                    stop=stop_after_attempt(attempts),
                    sleep=time.sleep,
                ):
                    with attempt:
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                        _pin(conn)
            except RetryError as exc:
                problem = exc.last_attempt.exception()
                _skip(skipped, db, f"still unreadable after {attempts} tries: {problem}")
                conns.pop(db.rel).close()
    except BaseException:
        for conn in conns.values():
            conn.close()
        raise
    return conns


def _receiver_has(staging: Path, role: str, key: str, command_id: str) -> bool:
    """Whether the copied database of the receiver ``role``/``key`` holds ``command_id``."""
    try:
        validate_key(key)
    except FoundryError as exc:
        log.warning("backup: an outbox row names an invalid receiver key %r (%s); not sent again", key, exc)
        return True
    path = staging / role / partition_dir_name(partition_of(key)) / f"{key}.sqlite3"
    if not path.exists():
        return False
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT 1 FROM foundry_mailbox WHERE command_id = ?", (command_id,)).fetchone()
    except sqlite3.OperationalError as exc:
        log.debug("backup: %s has no mailbox (%s)", path, exc)
        row = None
    finally:
        conn.close()
    return row is not None


def _read_inboxes(data_dir: Path, roles: Iterable[str]) -> dict[str, list[inbox.Queued]]:
    """Every command acknowledged and not yet run, by the database (``rel``) of its instance."""
    found: dict[str, list[inbox.Queued]] = {}
    for role in sorted(roles):
        for path in sorted((data_dir / role / ".inbox").glob("*.sqlite3")):
            for key, queued in inbox.read_all(path):
                rel = f"{role}/{partition_dir_name(partition_of(key))}/{key}.sqlite3"
                found.setdefault(rel, []).append(queued)
    return found


def _fold_waiting(staging: Path, rel: str, commands: list[inbox.Queued]) -> int:
    """Write a copy's acknowledged, not yet run commands into its mailbox as pending rows.

    A backup holds actor databases only; a restored instance runs its pending mailbox rows at wake.
    The inboxes are read after the first look and before any pin, so a command acknowledged before
    the backup started is either here or, having run, in its instance's copy (pinned later); a
    send delivered after the inbox read is in the first look, and put back if neither copy has it.
    Returns how many rows were added (a command the copy's mailbox holds already is left alone).
    """
    if not commands:
        return 0
    conn = sqlite3.connect(staging / rel, isolation_level=None)
    try:
        conn.execute("BEGIN")
        added = 0
        for queued in commands:
            added += conn.execute(
                "INSERT OR IGNORE INTO foundry_mailbox(command_id, name, body, status, created_at) "
                "VALUES (?, ?, ?, 'pending', ?)",
                (queued.command_id, queued.name, queued.body, queued.created_at),
            ).rowcount
        conn.execute("COMMIT")
    finally:
        conn.close()
    if added:
        log.info("backup: %s: %d acknowledged commands not yet run kept as pending", rel, added)
    return added


def _put_back_in_flight(staging: Path, rel: str, before: list[dict[str, Any]]) -> int:
    """Put back, into a copy's outbox, the sends acknowledged between the first look and the pin
    whose receiver's copy does not hold them.

    The sender deletes an outbox row once the receiver has committed the message, and the two
    databases are pinned one after the other: a send delivered between the receiver's pin and the
    sender's would be in neither copy. Put back, it is delivered again after a restore (a receiver
    that has it already ignores a duplicate command id). Returns how many rows were put back.
    """
    if not before:
        return 0
    conn = sqlite3.connect(staging / rel, isolation_level=None)
    try:
        present = {row[0] for row in conn.execute("SELECT command_id FROM foundry_outbox")}
        columns = {row[1] for row in conn.execute("PRAGMA table_info(foundry_outbox)")}
        missing = [
            row
            for row in before
            if row["command_id"] not in present
            and not _receiver_has(staging, row["role"], row["key"], row["command_id"])
        ]
        if not missing:
            return 0
        taken = {row[0] for row in conn.execute("SELECT id FROM foundry_outbox")}
        conn.execute("BEGIN")
        for row in missing:
            values = {k: v for k, v in row.items() if k in columns}
            values.update({k: v for k, v in _FRESH_SEND.items() if k in columns})
            if values.get("id") in taken:
                # Its id went to a newer row after the delete: it takes a new one (it then follows
                # that newer row to the same receiver, which only an unlucky few rows ever see).
                values.pop("id")
            names = ", ".join(values)
            marks = ", ".join("?" for _ in values)
            conn.execute(f"INSERT INTO foundry_outbox ({names}) VALUES ({marks})", tuple(values.values()))
        conn.execute("COMMIT")
    finally:
        conn.close()
    log.info("backup: %s: %d sends in flight put back in its outbox", rel, len(missing))
    return len(missing)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_pinned(pin: sqlite3.Connection, target: Path) -> str | None:
    """Copy a pinned snapshot to ``target``; returns the copy's alembic revision."""
    out = sqlite3.connect(target, isolation_level=None)
    try:
        # SQLite's own syncs cost about 15 ms per small file here; one fsync at the end is enough
        # for a file that nobody reads before the backup completes.
        out.execute("PRAGMA synchronous=OFF")
        pin.backup(out)
        # One self-contained file with no -wal beside it; Foundry turns WAL on again when it opens it.
        out.execute("PRAGMA journal_mode=DELETE")
        try:
            row = out.execute("SELECT version_num FROM alembic_version").fetchone()
        except sqlite3.OperationalError as exc:
            log.debug("backup: %s has no alembic_version (%s): it is migrated on its first wake", target, exc)
            row = None
    finally:
        out.close()
        pin.close()
    fsync_path(target)
    return None if row is None else str(row[0])


def backup(
    data_dir: Path,
    dest: Path,
    roles: Iterable[str],
    *,
    lock_timeout: float = 1.0,
    attempts: int = 5,
    progress: Progress | None = None,
) -> BackupResult:
    """Copy every actor database of ``data_dir`` (and the mock secret key) into ``dest``.

    ``dest`` must be absent or empty. The files are written to a sibling directory that becomes
    ``dest`` only once the manifest is complete, so an interrupted backup leaves no ``dest``.
    Databases that could not be copied are listed in the result's ``skipped`` (and the manifest's).

    Raises:
        BackupError: ``dest`` is not empty or is inside the data directory, there is no data dir,
            or writing the backup failed (then nothing of it is left).
    """
    started, started_at = time.monotonic(), datetime.now(UTC)
    _check_destination(data_dir, dest)
    databases = _find_databases(data_dir, roles)
    result = BackupResult()
    staging = dest.parent / f".{dest.name}.partial-{os.getpid()}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging.mkdir(mode=0o700)
    try:
        budget = _pin_budget()
        done = 0
        copied: list[tuple[_Database, str | None]] = []
        before = _first_look(databases, lock_timeout)
        # After the first look, before any pin: see `_fold_waiting`.
        waiting = _read_inboxes(data_dir, roles)
        for start in range(0, len(databases), budget):
            group = databases[start : start + budget]
            pins = _snapshot(group, lock_timeout, attempts, result.skipped)
            try:
                for db in group:
                    pin = pins.pop(db.rel, None)
                    if pin is not None:
                        target = staging / db.rel
                        target.parent.mkdir(parents=True, exist_ok=True)
                        copied.append((db, _copy_pinned(pin, target)))
                    done += 1
                    if progress is not None:
                        progress(done, len(databases))
            finally:
                for pin in pins.values():
                    pin.close()
        for db, _ in copied:
            result.waiting += _fold_waiting(staging, db.rel, waiting.pop(db.rel, []))
        for rel, commands in waiting.items():
            log.warning(
                "backup: %d acknowledged commands wait for %s, which was not copied", len(commands), rel
            )
        for db, revision in copied:
            target = staging / db.rel
            put_back = _put_back_in_flight(staging, db.rel, before.get(db.rel, []))
            if put_back:
                result.in_flight += put_back
                fsync_path(target)
            target.chmod(0o600)
            result.files.append(_entry(target, db.rel, db.role, revision))
        secret = data_dir / SECRET_KEY_FILE
        if secret.is_file():
            shutil.copyfile(secret, staging / SECRET_KEY_FILE)
            (staging / SECRET_KEY_FILE).chmod(0o600)
            fsync_path(staging / SECRET_KEY_FILE)
            result.files.append(_entry(staging / SECRET_KEY_FILE, SECRET_KEY_FILE, None, None))
        result.seconds = time.monotonic() - started
        _write_manifest(staging, data_dir, started_at, result)
        if dest.exists():
            dest.rmdir()  # empty, checked above; rename cannot replace it on every filesystem
        staging.rename(dest)
        fsync_path(dest.parent)
    except (OSError, sqlite3.Error) as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise BackupError(f"could not write the backup into {dest}: {exc}") from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return result


def _entry(path: Path, rel: str, role: str | None, revision: str | None) -> dict[str, Any]:
    return {
        "path": rel,
        "role": role,
        "revision": revision,
        "size": path.stat().st_size,
        "sha256": sha256_of(path),
    }


def _write_manifest(staging: Path, data_dir: Path, started_at: datetime, result: BackupResult) -> None:
    manifest = {
        "format": FORMAT,
        "foundryVersion": __version__,
        # When the backup started: every write acknowledged before then is in it.
        "createdAt": started_at.isoformat(timespec="seconds"),
        "dataDir": str(data_dir),
        "files": result.files,
        "skipped": result.skipped,
    }
    tmp = staging / f"{MANIFEST}.tmp"
    with tmp.open("w") as handle:
        json.dump(manifest, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.rename(staging / MANIFEST)
