"""The events that keep the API processes' session, membership and snapshot caches honest.

They go on internal topics (not in the realtime topic registry, so no browser can subscribe): the
user and organization actors publish them in the transaction that changes what they describe, and
every API process hears them on the host streams it already holds (`foundry.http.auth_cache`,
`foundry.http.snapshot_cache`).
"""

from __future__ import annotations

import hashlib

#: ``sessionRevoked`` ``{"session": <digest>}`` on ``auth-sessions:<userId>``: a sign-out.
SESSIONS_PREFIX = "auth-sessions:"
SESSION_REVOKED = "sessionRevoked"
#: ``membersChanged`` ``{}`` on ``auth-members:<organizationId>``: a member left or changed role.
MEMBERS_PREFIX = "auth-members:"
MEMBERS_CHANGED = "membersChanged"
#: The user's organization list travels whole in ``appUpdated`` on ``app:<userId>``.
APP_PREFIX = "app:"
APP_UPDATED = "appUpdated"
#: ``viewerStateChanged`` ``{"organizationId", "taskId"}`` on ``viewer-state:<userId>``: the user's own
#: state of a task (active session, unread flags, drafts) changed.
VIEWER_PREFIX = "viewer-state:"
VIEWER_STATE_CHANGED = "viewerStateChanged"


def sessions_topic(user_id: str) -> str:
    return f"{SESSIONS_PREFIX}{user_id}"


def members_topic(organization_id: str) -> str:
    return f"{MEMBERS_PREFIX}{organization_id}"


def viewer_topic(user_id: str) -> str:
    return f"{VIEWER_PREFIX}{user_id}"


def session_digest(session_id: str) -> str:
    """What the database (and any event) keeps of a session id: its SHA-256 (hex).

    The id is the bearer secret inside the session cookie. Stored as a digest, a copy of the
    database file (a backup, a support bundle) signs nobody in; the id itself is 256 random bits,
    so an unsalted fast hash is enough to make it unrecoverable.
    """
    return hashlib.sha256(session_id.encode()).hexdigest()
