"""An organization's agent credentials: provider API keys its agents get, encrypted at rest.

Admins set a value per allowed variable name (authorization is the HTTP layer's); the organization
keeps only a Fernet token of it, under a key derived from the app secret with a label of its own, so
the GitHub-token key and this key are independent. The plaintext leaves the organization's host
only through `agent_environment`, which the sandbox role calls to start one of this organization's
sandboxes. Writes are actions, not mailbox commands, so the value is never stored in the mailbox;
every value seen here is registered with the log redaction of this process.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import logging
from typing import Any

import sqlalchemy as sa
from cryptography.fernet import Fernet, InvalidToken
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from actors.organization.schema import agent_credentials, members
from actors.organization.state import assert_real_organization
from foundry.errors import InvalidInput, NotFound
from foundry.logging import redact_value
from foundry.runtime.context import InstanceContext

log = logging.getLogger(__name__)

#: Variable names an organization may set: the provider keys of the agents sandbox-agent drives
#: (claude, codex, opencode, amp, pi, cursor). Anything else could change how the sandbox's server
#: or its jail behaves (PATH, HOME, LD_PRELOAD...), so the list is closed.
ALLOWED_NAMES: tuple[str, ...] = (
    "ANTHROPIC_API_KEY",
    "CLAUDE_CODE_OAUTH_TOKEN",
    "OPENAI_API_KEY",
    "CODEX_API_KEY",
    "OPENROUTER_API_KEY",
    "GEMINI_API_KEY",
    "GOOGLE_API_KEY",
    "GROQ_API_KEY",
    "XAI_API_KEY",
    "MISTRAL_API_KEY",
    "DEEPSEEK_API_KEY",
    "AMP_API_KEY",
    "CURSOR_API_KEY",
)
MAX_VALUE_CHARS = 4096
#: Shorter values show no ``last4``: four characters would be too large a share of them.
LAST4_MIN_CHARS = 12
AUDIT_ROLE = "audit-log"
_STRICT = ConfigDict(extra="forbid", populate_by_name=True)


def check_name(name: str) -> str:
    """``name`` if it is allowed; else `InvalidInput` naming the field and the allowed names."""
    if name not in ALLOWED_NAMES:
        raise InvalidInput(
            f"name: {name[:100]!r} is not an agent credential; allowed: {', '.join(ALLOWED_NAMES)}",
            ["name"],
        )
    return name


def check_value(value: str) -> str:
    """``value`` if it can be an environment variable's value; else `InvalidInput` (never quoting it)."""
    if not 1 <= len(value) <= MAX_VALUE_CHARS:
        raise InvalidInput(f"value: must be 1 to {MAX_VALUE_CHARS} characters", ["value"])
    if any(c in value for c in "\n\r\x00"):
        raise InvalidInput("value: must not contain newlines or NUL characters", ["value"])
    return value


class SetAgentCredential(BaseModel):
    """Set (or replace) one credential."""

    model_config = _STRICT
    name: str = Field(max_length=100)
    value: str = Field(max_length=MAX_VALUE_CHARS)
    actor_user_id: str = Field(alias="actorUserId", max_length=200)


class RemoveAgentCredential(BaseModel):
    """Remove one credential."""

    model_config = _STRICT
    name: str = Field(max_length=100)
    actor_user_id: str = Field(alias="actorUserId", max_length=200)


class AgentCredentialsRef(BaseModel):
    model_config = _STRICT


@functools.lru_cache(maxsize=4)
def _fernet(secret: str) -> Fernet:
    # Its own derivation label: this key and the GitHub-token key never decrypt each other's data.
    digest = hashlib.sha256(b"foundry/agent-credentials/v1\x00" + secret.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def _cipher(ctx: InstanceContext) -> Fernet:
    return _fernet(ctx.services.settings.effective_secret_key())


async def set_agent_credential(ctx: InstanceContext, cmd: SetAgentCredential) -> dict[str, Any]:
    """Store ``value`` encrypted under ``name`` (replacing an earlier one) and audit the change
    (name only). Applies to sandboxes started afterwards. Returns the listing entry."""
    assert_real_organization(ctx.key)
    check_name(cmd.name)
    check_value(cmd.value)
    redact_value(cmd.value)
    ciphertext = _cipher(ctx).encrypt(cmd.value.encode()).decode()
    last4 = cmd.value[-4:] if len(cmd.value) >= LAST4_MIN_CHARS else None
    now = ctx.now_ms()
    async with ctx.write() as conn:
        login = (
            await conn.execute(sa.select(members.c.login).where(members.c.user_id == cmd.actor_user_id))
        ).scalar()
        row = {
            "ciphertext": ciphertext,
            "last4": last4,
            "set_at": now,
            "set_by_user_id": cmd.actor_user_id,
            "set_by_login": login,
        }
        await conn.execute(
            sqlite_insert(agent_credentials)
            .values(name=cmd.name, **row)
            .on_conflict_do_update(index_elements=["name"], set_=row)
        )
        ctx.send_after_commit(
            AUDIT_ROLE,
            ctx.key,
            "append",
            {
                "kind": "organization.agent_credential_set",
                "actorUserId": cmd.actor_user_id,
                "payload": {"name": cmd.name},
            },
        )
    log.info("agent credential set org=%s name=%s by=%s", ctx.key, cmd.name, cmd.actor_user_id)
    return {"name": cmd.name, "setAt": now, "setBy": login, "last4": last4}


async def remove_agent_credential(ctx: InstanceContext, cmd: RemoveAgentCredential) -> dict[str, Any]:
    """Delete ``name``'s value and audit it; `NotFound` when it is not set."""
    assert_real_organization(ctx.key)
    check_name(cmd.name)
    async with ctx.write() as conn:
        deleted = await conn.execute(agent_credentials.delete().where(agent_credentials.c.name == cmd.name))
        if deleted.rowcount == 0:
            raise NotFound(f"agent credential {cmd.name} is not set in {ctx.key!r}")
        ctx.send_after_commit(
            AUDIT_ROLE,
            ctx.key,
            "append",
            {
                "kind": "organization.agent_credential_removed",
                "actorUserId": cmd.actor_user_id,
                "payload": {"name": cmd.name},
            },
        )
    log.info("agent credential removed org=%s name=%s by=%s", ctx.key, cmd.name, cmd.actor_user_id)
    return {"name": cmd.name}


async def list_agent_credentials(ctx: InstanceContext, _: AgentCredentialsRef) -> list[dict[str, Any]]:
    """``[{name, setAt, setBy, last4}]`` by name; never a value."""
    assert_real_organization(ctx.key)
    async with ctx.read() as conn:
        rows = (
            await conn.execute(
                sa.select(
                    agent_credentials.c.name,
                    agent_credentials.c.set_at,
                    agent_credentials.c.set_by_login,
                    agent_credentials.c.last4,
                ).order_by(agent_credentials.c.name)
            )
        ).all()
    return [{"name": r.name, "setAt": r.set_at, "setBy": r.set_by_login, "last4": r.last4} for r in rows]


async def agent_environment(ctx: InstanceContext, _: AgentCredentialsRef) -> dict[str, str]:
    """The decrypted credentials as environment variables, for starting one of this organization's
    sandboxes only (the sandbox role is the one caller; no route exposes it).

    A value that no longer decrypts (the app secret changed) is left out with a warning naming it,
    so the agent reports a missing key rather than the sandbox failing to start; an admin sets it
    again.
    """
    assert_real_organization(ctx.key)
    async with ctx.read() as conn:
        rows = (await conn.execute(sa.select(agent_credentials.c.name, agent_credentials.c.ciphertext))).all()
    cipher = _cipher(ctx)
    env: dict[str, str] = {}
    for row in rows:
        try:
            value = cipher.decrypt(row.ciphertext.encode()).decode()
        except InvalidToken:
            log.warning(
                "agent credential %s of %s cannot be decrypted (was the app secret changed?); "
                "left out of the sandbox environment until an admin sets it again",
                row.name,
                ctx.key,
            )
            continue
        redact_value(value)
        env[row.name] = value
    return env
