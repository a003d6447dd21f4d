"""Instance keys: validation, stable hashing, partitions and shards.

A key becomes a file name, so anything that could escape the role's folder is refused before any
file is touched. Keys hash with blake2b (stable across processes, unlike ``hash()``) into 256
partitions; a partition maps to a shard. Re-sharding later moves whole partition folders.
"""

from __future__ import annotations

import hashlib
import re

from foundry.errors import InvalidInput

PARTITIONS = 256
_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+=-]{0,199}$")


def validate_key(key: object) -> str:
    """Return the key if it is safe as a file name, else raise `InvalidInput` naming the problem."""
    if not isinstance(key, str):
        raise InvalidInput(f"actor key must be a string, got {type(key).__name__}", ["key"])
    # Quoted at most 80 characters: the key may come from a request, and so may its length.
    shown = repr(key[:80]) + ("…" if len(key) > 80 else "")
    if "\x00" in key or "/" in key or "\\" in key or ".." in key:
        raise InvalidInput(f"actor key {shown} contains a path character ('/', '\\\\', '..' or NUL)", ["key"])
    if not _KEY_RE.match(key):
        raise InvalidInput(
            f"actor key {shown} must be 1-200 characters of letters, digits and ._:@+=- "
            "and start with a letter or digit",
            ["key"],
        )
    return key


def stable_hash(value: str) -> int:
    return int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8).digest(), "big")


def partition_of(key: str) -> int:
    return stable_hash(key) % PARTITIONS


def shard_of(key: str, shards: int) -> int:
    """The shard that hosts a key: its partition modulo the shard count."""
    return partition_of(key) % max(1, shards)


def partition_dir_name(partition: int) -> str:
    return f"{partition:02x}"
