"""Restoring a backup (`foundry.backup`) into a new or empty data directory.

Everything is checked before anything is written: the manifest, each file's presence, size and
sha256, and each database's schema revision against this code's migrations (an older revision is
fine: the instance migrates itself when it first wakes; a newer one is refused). The files are
written to a sibling directory renamed into place at the end, and the runtime's recovery index
(``.pending``) and dead-letter counts (``.dead``) are derived from the restored databases.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from foundry.backup import (
    DB_PATH,
    FORMAT,
    MANIFEST,
    RUNNING_MARKER,
    SECRET_KEY_FILE,
    BackupError,
    Progress,
    fsync_path,
    sha256_of,
)
from foundry.errors import FoundryError
from foundry.runtime.keys import partition_dir_name, partition_of, validate_key

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoleSchema:
    """What this code knows about one role's migrations."""

    head: str | None
    known: frozenset[str]


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
    match = DB_PATH.match(rel)
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
        try:
            intact = path.stat().st_size == entry["size"] and sha256_of(path) == entry["sha256"]
        except OSError as exc:
            raise BackupError(f"cannot read {path}: {exc}") from exc
        if not intact:
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


def _resume_query(role_name: str) -> str | None:
    """The role's test for a job its wake resumes (a task waiting for a sandbox slot, say): the
    backup has no record of running jobs, only their state in the databases."""
    from foundry.runtime.role import load_role

    try:
        return load_role(role_name).resume_query
    except FoundryError:
        log.warning(
            "restore: %s is not a role of this Foundry; only its pending commands are resumed", role_name
        )
        return None


def _write_markers(root: Path, databases: list[Path]) -> None:
    """Rebuild the runtime's indexes from the restored files: the recovery scan wakes the instances
    with ``.pending`` markers (pending commands or sends), and ``.dead`` holds dead-letter counts."""
    from foundry.runtime.host import _has_pending_work  # the runtime's own test for pending work

    resume_queries: dict[str, str | None] = {}
    for path in databases:
        role_dir, key = path.parent.parent, path.name.removesuffix(".sqlite3")
        (role_dir / ".pending").mkdir(exist_ok=True)
        (role_dir / ".dead").mkdir(exist_ok=True)
        if role_dir.name not in resume_queries:
            resume_queries[role_dir.name] = _resume_query(role_dir.name)
        try:
            if _has_pending_work(path, resume_queries[role_dir.name]):
                (role_dir / ".pending" / key).touch()
            dead = _dead_letters(path)
        except sqlite3.DatabaseError as exc:
            # Its checksum matched: the file was already damaged when the backup was made.
            raise BackupError(
                f"{path.relative_to(root)} in the backup is not a readable SQLite database ({exc}); "
                "restore an older backup"
            ) from exc
        if dead:
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
        fsync_path(data_dir.parent)
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
