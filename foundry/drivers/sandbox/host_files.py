"""Foundry's own reads and writes inside a sandbox directory, which the jailed agent can change.

The sandbox directory is the jail's writable mount: while Foundry (on the host, outside the jail) is
about to open a file there, the agent may have replaced it, or any directory on its path, with a
symbolic link to a file of the host (the data directory's secret key, another organization's
checkout), with a FIFO that blocks the opener, or with a hard link. Everything here therefore walks
the path one component at a time from a directory descriptor with ``O_NOFOLLOW``, never writes
through an existing file (it writes a new one and renames it into place), changes modes on its own
descriptor, and only appends to or reads a regular file with a single link. A link or special file
where Foundry expects its own is removed; Foundry then writes its own file, and a read says what it
found instead of following it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO

__all__ = ["append_handle", "ensure_dirs", "list_entries", "read_tail", "remove_entries", "replace_file"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: A directory entry that is not what Foundry put there (a link, a FIFO, a device…).
_NOT_OURS = (errno.ELOOP, errno.ENOTDIR, errno.ENXIO, errno.EISDIR)


def _remove(dir_fd: int, name: str) -> None:
    """Remove entry ``name`` of ``dir_fd`` whatever it is, without following it."""
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode):
        shutil.rmtree(name, dir_fd=dir_fd)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dir_fd)


def _open_child_dir(dir_fd: int, name: str) -> int:
    """Descriptor of directory ``name`` in ``dir_fd``, created if missing; a non-directory or a link
    in its place is removed first."""
    for _ in range(3):
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o755, dir_fd=dir_fd)
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno not in _NOT_OURS:
                raise
            _remove(dir_fd, name)
    raise OSError(errno.ELOOP, f"{name!r} keeps being replaced while Foundry prepares it")


@contextlib.contextmanager
def _directory(root: Path, parts: tuple[str, ...]) -> Iterator[int]:
    """A descriptor of ``root/parts…``, walked without following links (``root`` is Foundry's own:
    the sandbox directory, which the jail mounts but cannot replace)."""
    fd = os.open(root, _DIR_FLAGS)
    try:
        for part in parts:
            child = _open_child_dir(fd, part)
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def ensure_dirs(root: Path, *paths: tuple[str, ...]) -> None:
    """Create each directory path (a tuple of names) under ``root``; links in the way are removed."""
    for parts in paths:
        with _directory(root, parts):
            pass


def replace_file(root: Path, parts: tuple[str, ...], name: str, text: str, mode: int = 0o755) -> None:
    """Write ``text`` as file ``root/parts…/name`` with ``mode``: a new file renamed over whatever
    was there, so nothing the agent linked to is ever written."""
    with _directory(root, parts) as dir_fd:
        temporary = f".{name}.foundry-{secrets.token_hex(6)}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(temporary, flags, mode, dir_fd=dir_fd)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(text.encode())
                os.fchmod(handle.fileno(), mode)
            try:
                os.replace(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno not in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                    raise
                _remove(dir_fd, name)  # a directory in its place
                os.replace(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary, dir_fd=dir_fd)
            raise


def remove_entries(root: Path, parts: tuple[str, ...], names: list[str]) -> None:
    """Remove entries of ``root/parts…`` (links themselves, never what they point to)."""
    with _directory(root, parts) as dir_fd:
        for name in names:
            _remove(dir_fd, name)


def list_entries(root: Path, parts: tuple[str, ...]) -> list[tuple[str, bool]]:
    """``(name, is a regular file)`` of each entry of ``root/parts…``, links not followed."""
    with _directory(root, parts) as dir_fd:
        out = []
        for name in os.listdir(dir_fd):
            try:
                info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            out.append((name, stat.S_ISREG(info.st_mode)))
        return out


def append_handle(root: Path, name: str) -> IO[bytes]:
    """``root/name`` opened for appending, created if missing: a regular file with one link, or a new
    one in place of whatever else the agent put there."""
    with _directory(root, ()) as dir_fd:
        for _ in range(3):
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            try:
                fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno not in _NOT_OURS:
                    raise
                _remove(dir_fd, name)
                continue
            info = os.fstat(fd)
            if stat.S_ISREG(info.st_mode) and info.st_nlink == 1:
                os.set_blocking(fd, True)
                return os.fdopen(fd, "ab")
            os.close(fd)
            _remove(dir_fd, name)
    raise OSError(errno.ELOOP, f"{name!r} keeps being replaced while Foundry opens it")


def read_tail(root: Path, name: str, max_bytes: int) -> bytes | str:
    """The last ``max_bytes`` of regular file ``root/name``; a sentence instead when it is missing or
    is not a regular file (then it is not read: it would be the agent's choice of file)."""
    try:
        with _directory(root, ()) as dir_fd:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return "(no log file)"
    except OSError as exc:
        if exc.errno in _NOT_OURS:
            return "(the log was replaced by a link or a special file inside the sandbox; not read)"
        raise
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            return "(the log was replaced by a link or a special file inside the sandbox; not read)"
        handle.seek(max(0, info.st_size - max_bytes))
        return handle.read(max_bytes)
