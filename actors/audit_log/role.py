"""The audit-log role, keyed by organization id."""

from __future__ import annotations

from actors.audit_log import actions, handlers
from actors.audit_log.commands import AppendEvent, ListEvents
from actors.audit_log.schema import metadata
from foundry.runtime.role import Handler, Role

ROLE = Role(
    name="audit-log",
    package="audit_log",
    metadata=metadata,
    commands=(Handler("append", AppendEvent, handlers.handle_append),),
    actions=(Handler("list", ListEvents, actions.list_events),),
)
