"""How a Ray host gets its settings without secrets travelling in pickled actor arguments.

Ray stores an actor's creation arguments in its control store (GCS) and ships them to whichever node
runs the actor; anything that can talk to the cluster can read them back. So the driver passes only
the settings without their secret values (`public_settings`), and writes the secrets to a file only
Foundry's user can read (`SECRETS_FILE` in the data directory, mode 0600) on its own node; each host
reads them there (`host_settings`). A host on a node without that file takes its secrets from its own
environment (``FOUNDRY_*`` variables), as any Foundry process does.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr

from foundry.config import Settings

__all__ = ["SECRETS_FILE", "host_settings", "public_settings", "secret_digests", "write_secrets"]

log = logging.getLogger(__name__)

SECRETS_FILE = "host-secrets.json"


def _split(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    public: dict[str, Any] = {}
    secret: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, SecretStr):
            secret[key] = value.get_secret_value()
        elif isinstance(value, list) and any(isinstance(item, SecretStr) for item in value):
            # A list of secrets (e.g. Stripe's webhook secrets while one is being rotated).
            secret[key] = [item.get_secret_value() if isinstance(item, SecretStr) else item for item in value]
        elif isinstance(value, dict):
            inner_public, inner_secret = _split(value)
            public[key] = inner_public
            if inner_secret:
                secret[key] = inner_secret
        else:
            public[key] = value
    return public, secret


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _secret_paths(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every field of ``model`` (nested models included) that holds a secret, set or not."""
    paths: list[tuple[str, ...]] = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            paths += _secret_paths(annotation, (*prefix, name))
        elif "SecretStr" in str(annotation):
            paths.append((*prefix, name))
    return paths


def secret_digests(settings: Settings) -> dict[str, str]:
    """A digest of each secret the hosts read from `SECRETS_FILE`, keyed by the secret key, named by
    its environment variable (e.g. ``FOUNDRY_STRIPE__SECRET_KEY``); "unset" when it has no value.

    Two API processes compare these: each rewrites the file, so a joined process with another value
    would hand it to the next host that (re)starts."""
    secret = _split(settings.model_dump())[1]
    key = settings.effective_secret_key().encode()
    out: dict[str, str] = {}
    for path in _secret_paths(type(settings)):
        value: Any = secret
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        name = "FOUNDRY_" + "__".join(part.upper() for part in path)
        if value in (None, "", []):
            out[name] = "unset"
        else:
            encoded = json.dumps(value, sort_keys=True).encode()
            out[name] = hmac.new(key, encoded, hashlib.sha256).hexdigest()[:16]
    return out


def public_settings(settings: Settings) -> dict[str, Any]:
    """``settings`` as plain values without any secret field (every `SecretStr` is left out)."""
    return _split(settings.model_dump())[0]


def write_secrets(settings: Settings) -> Path:
    """Write the secret fields of ``settings`` to `SECRETS_FILE` (0600 from its creation on)."""
    secret = _split(settings.model_dump())[1]
    path = settings.data_dir / SECRETS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(secret, handle)
    os.chmod(tmp, 0o600)  # an existing file keeps its mode through O_CREAT
    os.replace(tmp, path)
    return path


def host_settings(public: dict[str, Any]) -> Settings:
    """The settings of a host: ``public`` plus the secrets read on this node (the data directory's
    `SECRETS_FILE`, else this process's environment)."""
    path = Path(public["data_dir"]) / SECRETS_FILE
    try:
        secret = json.loads(path.read_text())
    except FileNotFoundError:
        log.info("no %s on this node: secrets come from the environment", path)
        return Settings(**public)
    return Settings(**_merge(public, secret))
