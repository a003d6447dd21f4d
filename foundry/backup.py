"""Online backups of a Foundry data directory, and restoring one into an empty data directory.

A backup holds every actor database (``<role>/<partition>/<key>.sqlite3`` of each known role), copied
with SQLite's backup API while the server runs, and the mock-mode ``secret_key`` when there is one
(without it the restored GitHub tokens could not be decrypted and every session would be void).
``manifest.json`` lists each file with its role, alembic revision, size and sha256.

Left out on purpose: ``host-secrets.json`` and ``ray-address`` (rewritten at every start), each role's
``.schema`` templates (rebuilt on first use), ``.pending``/``.dead`` markers (derived again from the
restored databases), ``*.broken-*`` files (set aside for an operator, not live data), sandboxes
(checkouts and processes, which can be large and are rebuilt from the repository) and
``mock-remotes`` (mock mode's stand-in for GitHub, which a backup does not hold either).

Consistency across files: actors talk through outboxes (the sender deletes its row once the receiver
has committed the message). Copying files one after another could take a receiver before a
delivery and its sender after the acknowledgement, losing the message. So every database is first
write-locked (``BEGIN IMMEDIATE``), and while all of them are locked a read transaction is opened on
each; the locks are then released at once and the copies are taken from those read snapshots (WAL
keeps them stable while the server writes on). Writers therefore wait only while the locks are
taken, well under the server's 5 s busy timeout, and the copies form one consistent cut.
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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from foundry import __version__
from foundry.errors import FoundryError
from foundry.runtime.keys import partition_dir_name, partition_of, validate_key

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = 1
SECRET_KEY_FILE = "secret_key"
#: A running server's record of its local Ray; its presence means the data dir is in use.
RUNNING_MARKER = "ray-address"
_PARTITION = re.compile(r"^[0-9a-f]{2}$")
_DB_PATH = re.compile(r"^(?P<role>[a-z][a-z0-9-]*)/(?P<part>[0-9a-f]{2})/(?P<key>[^/]+)\.sqlite3$")
#: While frozen, each database has two connections, each holding its file, WAL and shared memory.
_FDS_PER_DATABASE = 6
_FDS_RESERVED = 128

Progress = Callable[[int, int], None]


class BackupError(Exception):
    """A backup or restore refused or failed; the message is one line for the operator."""


@dataclass(frozen=True)
class RoleSchema:
    """What this code knows about one role's migrations."""

    head: str | None
    known: frozenset[str]


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
    #: The longest freeze: how long the server's writers may have waited on the backup's locks.
    freeze_seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "files": len(self.files),
            "bytes": sum(f["size"] for f in self.files),
            "seconds": round(self.seconds, 3),
            "freezeSeconds": round(self.freeze_seconds, 3),
            "skipped": self.skipped,
        }


def role_schemas(roles: Iterable[str], extra: Mapping[str, str] | None = None) -> dict[str, RoleSchema]:
    """The migration heads and known revisions of ``roles``, read from this code's migrations."""
    from foundry.db.migrate import script_directory
    from foundry.runtime.role import load_role

    out: dict[str, RoleSchema] = {}
    for name in roles:
        script = script_directory(load_role(name, dict(extra or {})).migrations_location)
        out[name] = RoleSchema(
            script.get_current_head(), frozenset(r.revision for r in script.walk_revisions())
        )
    return out


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


def _lock(db: _Database, timeout: float) -> sqlite3.Connection:
    conn = _open(db.path, timeout)
    try:
        conn.execute("BEGIN IMMEDIATE")
    except BaseException:
        conn.close()
        raise
    return conn


def _skip(skipped: list[dict[str, str]], db: _Database, reason: str) -> None:
    log.warning("backup: leaving out %s: %s", db.rel, reason)
    skipped.append({"path": db.rel, "reason": reason})


def _freeze(
    group: list[_Database], lock_timeout: float, attempts: int, skipped: list[dict[str, str]]
) -> dict[str, sqlite3.Connection]:
    """Open a read snapshot of every database of ``group``, all taken while all were write-locked.

    When the server holds one database's write lock past ``lock_timeout``, every lock is released
    (the server must not wait on the backup) and the freeze starts over, up to ``attempts`` times;
    a database still locked then, or one that vanished, is left out and recorded in ``skipped``.
    """
    candidates = list(group)
    for attempt in range(1, attempts + 1):
        final = attempt == attempts
        locks: list[tuple[_Database, sqlite3.Connection]] = []
        try:
            busy: _Database | None = None
            for db in list(candidates):
                try:
                    locks.append((db, _lock(db, lock_timeout)))
                except sqlite3.OperationalError as exc:
                    if exc.sqlite_errorname != "SQLITE_BUSY" or final:
                        gone = "it disappeared" if not db.path.exists() else str(exc)
                        when = f" after {attempts} tries" if exc.sqlite_errorname == "SQLITE_BUSY" else ""
                        _skip(skipped, db, f"could not lock it{when}: {gone}")
                        candidates.remove(db)
                        continue
                    busy = db
                    break
            if busy is None:
                return _pin_all(locks, lock_timeout)
        finally:
            for _db, lock in locks:
                with contextlib.suppress(sqlite3.Error):
                    lock.execute("ROLLBACK")
                lock.close()
        log.info(
            "backup: %s is busy (try %d of %d); releasing the locks and trying again",
            busy.rel,
            attempt,
            attempts,
        )
        time.sleep(min(0.05 * 2**attempt, 1.0))
    return {}  # not reached: the final attempt never retries


def _pin_all(
    locks: list[tuple[_Database, sqlite3.Connection]], timeout: float
) -> dict[str, sqlite3.Connection]:
    pins: dict[str, sqlite3.Connection] = {}
    try:
        for db, _lock_conn in locks:
            pin = _open(db.path, timeout)
            pins[db.rel] = pin
            pin.execute("BEGIN")
            # The first read fixes the snapshot that the copy will see (WAL keeps it while others write).
            pin.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except BaseException:
        for pin in pins.values():
            pin.close()
        raise
    return pins


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
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
    _fsync(target)
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
        BackupError: ``dest`` is not empty or is inside the data directory, or there is no data dir.
    """
    started = time.monotonic()
    _check_destination(data_dir, dest)
    databases = _find_databases(data_dir, roles)
    result = BackupResult()
    staging = dest.parent / f".{dest.name}.partial-{os.getpid()}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging.mkdir(mode=0o700)
    try:
        budget = _pin_budget()
        done = 0
        for start in range(0, len(databases), budget):
            group = databases[start : start + budget]
            frozen = time.monotonic()
            pins = _freeze(group, lock_timeout, attempts, result.skipped)
            result.freeze_seconds = max(result.freeze_seconds, time.monotonic() - frozen)
            try:
                for db in group:
                    pin = pins.pop(db.rel, None)
                    if pin is not None:
                        target = staging / db.rel
                        target.parent.mkdir(parents=True, exist_ok=True)
                        revision = _copy_pinned(pin, target)
                        target.chmod(0o600)
                        result.files.append(_entry(target, db.rel, db.role, revision))
                    done += 1
                    if progress is not None:
                        progress(done, len(databases))
            finally:
                for pin in pins.values():
                    pin.close()
        secret = data_dir / SECRET_KEY_FILE
        if secret.is_file():
            shutil.copyfile(secret, staging / SECRET_KEY_FILE)
            (staging / SECRET_KEY_FILE).chmod(0o600)
            _fsync(staging / SECRET_KEY_FILE)
            result.files.append(_entry(staging / SECRET_KEY_FILE, SECRET_KEY_FILE, None, None))
        result.seconds = time.monotonic() - started
        _write_manifest(staging, data_dir, result)
        if dest.exists():
            dest.rmdir()  # empty, checked above; rename cannot replace it on every filesystem
        staging.rename(dest)
        _fsync(dest.parent)
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
        "sha256": _sha256(path),
    }


def _write_manifest(staging: Path, data_dir: Path, result: BackupResult) -> None:
    manifest = {
        "format": FORMAT,
        "foundryVersion": __version__,
        "createdAt": datetime.now(UTC).isoformat(timespec="seconds"),
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


# ------------------------------------------------------------------------------------------ restore


def _load_manifest(src: Path) -> dict[str, Any]:
    if not src.is_dir():
        raise BackupError(f"no backup at {src}")
    path = src / MANIFEST
    if not path.is_file():
        raise BackupError(f"{src} has no {MANIFEST}: not a Foundry backup, or one that never finished")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BackupError(f"{path} is unreadable: {exc}") from exc
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != FORMAT
        or not isinstance(manifest.get("files"), list)
        or not isinstance(manifest.get("skipped", []), list)
    ):
        raise BackupError(f"{path} is not a format-{FORMAT} Foundry backup manifest")
    return manifest


def _check_entry(entry: Any, schemas: Mapping[str, RoleSchema], made_by: str) -> dict[str, Any]:
    """One manifest entry, refused unless it names a file this Foundry can use as it is or migrate."""
    if not (
        isinstance(entry, dict)
        and isinstance(entry.get("path"), str)
        and isinstance(entry.get("sha256"), str)
        and isinstance(entry.get("size"), int)
        and isinstance(entry.get("revision"), str | None)
    ):
        raise BackupError(f"malformed manifest entry: {json.dumps(entry)[:200]}")
    rel: str = entry["path"]
    if rel == SECRET_KEY_FILE:
        return entry
    match = _DB_PATH.match(rel)
    if match is None:
        raise BackupError(f"manifest names an unexpected file {rel!r}")
    role, key = match["role"], match["key"]
    if role not in schemas or entry.get("role") != role:
        raise BackupError(f"{rel}: role {role!r} is not one of this Foundry's ({', '.join(sorted(schemas))})")
    try:
        validate_key(key)
    except FoundryError as exc:
        raise BackupError(f"{rel}: {exc}") from exc
    if partition_dir_name(partition_of(key)) != match["part"]:
        raise BackupError(f"{rel}: key {key!r} does not belong in partition {match['part']}")
    revision = entry["revision"]
    if revision is not None and revision not in schemas[role].known:
        raise BackupError(
            f"{rel} has {role} schema revision {revision!r}, newer than this Foundry knows "
            f"(its head is {schemas[role].head!r}); restore it with Foundry {made_by} or later"
        )
    return entry


def verify(src: Path, schemas: Mapping[str, RoleSchema]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Check a backup without writing anything: its manifest, schema revisions, sizes and sha256.

    Returns the manifest and its checked file entries. Raises `BackupError` naming the first problem.
    """
    manifest = _load_manifest(src)
    made_by = str(manifest.get("foundryVersion", "?"))
    entries = [_check_entry(entry, schemas, made_by) for entry in manifest["files"]]
    for entry in entries:
        path = src / entry["path"]
        if not path.is_file():
            raise BackupError(f"{entry['path']} is listed in the manifest but missing from {src}")
        if path.stat().st_size != entry["size"] or _sha256(path) != entry["sha256"]:
            raise BackupError(
                f"{entry['path']} does not match its sha256 in the manifest: the backup is damaged"
            )
    return manifest, entries


def _copy_verified(source: Path, target: Path, sha256: str) -> None:
    """Copy and hash in one pass, so a file changed after `verify` is still caught."""
    digest = hashlib.sha256()
    target.parent.mkdir(parents=True, exist_ok=True)
    with source.open("rb") as src, target.open("wb") as out:
        for chunk in iter(lambda: src.read(1 << 20), b""):
            digest.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    target.chmod(0o600)
    if digest.hexdigest() != sha256:
        raise BackupError(f"{source} changed while it was being restored")


def _dead_letters(path: Path) -> int:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM foundry_outbox WHERE status = 'dead'").fetchone()[0])
    except sqlite3.OperationalError as exc:
        log.debug("restore: %s has no outbox status (%s): no dead letters", path, exc)
        return 0
    finally:
        conn.close()


def _write_markers(root: Path, databases: list[Path]) -> None:
    """Rebuild the runtime's indexes from the restored files: the recovery scan wakes the instances
    with ``.pending`` markers (pending commands or sends), and ``.dead`` holds dead-letter counts."""
    from foundry.runtime.host import _has_pending_work  # the runtime's own test for pending work

    for path in databases:
        role_dir, key = path.parent.parent, path.name.removesuffix(".sqlite3")
        (role_dir / ".pending").mkdir(exist_ok=True)
        (role_dir / ".dead").mkdir(exist_ok=True)
        if _has_pending_work(path):
            (role_dir / ".pending" / key).touch()
        if dead := _dead_letters(path):
            (role_dir / ".dead" / key).write_text(str(dead))


def restore(
    src: Path,
    data_dir: Path,
    schemas: Mapping[str, RoleSchema],
    *,
    allow_partial: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Restore the backup ``src`` into ``data_dir``, which must be absent or empty.

    Everything is checked before anything is written; the files go to a sibling directory that
    becomes ``data_dir`` at the end, so a failed restore leaves ``data_dir`` as it was. Databases at
    older schema revisions are migrated when their instances first wake. Returns a summary.

    Raises:
        BackupError: a server runs on ``data_dir``, it is not empty, the backup is incomplete,
            damaged, partial (unless ``allow_partial``) or from a newer schema.
    """
    started = time.monotonic()
    if (data_dir / RUNNING_MARKER).exists():
        raise BackupError(
            f"a Foundry server is running on {data_dir} ({RUNNING_MARKER} exists): stop it, "
            "and restore into an empty data directory"
        )
    if data_dir.exists() and (not data_dir.is_dir() or any(data_dir.iterdir())):
        raise BackupError(f"{data_dir} is not empty: restore into a new or empty data directory")
    manifest, entries = verify(src, schemas)
    if manifest.get("skipped") and not allow_partial:
        first = manifest["skipped"][0]
        raise BackupError(
            f"the backup left out {len(manifest['skipped'])} database(s) (first: {first.get('path')}: "
            f"{first.get('reason')}); pass --allow-partial to restore it anyway"
        )
    staging = data_dir.parent / f".{data_dir.name}.restore-{os.getpid()}"
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    staging.mkdir(mode=0o700)
    try:
        for done, entry in enumerate(entries, 1):
            _copy_verified(src / entry["path"], staging / entry["path"], entry["sha256"])
            if progress is not None:
                progress(done, len(entries))
        _write_markers(staging, [staging / e["path"] for e in entries if e["path"] != SECRET_KEY_FILE])
        if data_dir.exists():
            data_dir.rmdir()  # empty, checked above
        staging.rename(data_dir)
        _fsync(data_dir.parent)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise BackupError(f"could not restore into {data_dir}: {exc}") from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {
        "files": len(entries),
        "bytes": sum(e["size"] for e in entries),
        "seconds": round(time.monotonic() - started, 3),
        "dataDir": str(data_dir),
        "backupCreatedAt": manifest.get("createdAt"),
    }
