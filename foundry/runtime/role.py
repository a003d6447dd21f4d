"""How a role declares itself to the runtime: schema, commands, actions and hooks."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, ValidationError

from foundry.errors import InvalidInput, NotFound

Body = dict[str, Any]


@dataclass(frozen=True)
class Handler:
    """A named command or action: its input model and the coroutine that serves it.

    The coroutine is called as ``fn(ctx, model_instance)`` and returns a pydantic model, a JSON-able
    value or None.

    ``batch`` (commands only): consecutive queued commands of such handlers may run in one
    transaction, a failing one rolled back alone (`foundry.runtime.command_batch`). For small commands
    that arrive by the hundred per second (webhook deliveries): the transaction, its outcome rows and
    the inbox bookkeeping are then paid once per batch. Their outcomes carry no topic seqs. When one
    command of a batch fails, the others run a second time (the first run is rolled back), so such a
    handler may do nothing outside its transaction that is not harmless to repeat.
    """

    name: str
    model: type[BaseModel]
    fn: Callable[[Any, Any], Awaitable[Any]]
    batch: bool = False


@dataclass(frozen=True)
class Role:
    """A kind of logical actor.

    Attributes:
        name: the role's public name (``audit-log``).
        package: the Python package under ``actors/`` and ``migrations/`` (``audit_log``).
        metadata: the SQLAlchemy schema of one instance's database (runtime tables included).
        commands: mailbox commands, run one at a time in a transaction.
        actions: direct calls, concurrent, for reads and cheap writes.
        on_wake: called once an instance is awake (to restart background jobs, for instance).
        on_host_start: called with the `Host` once it starts (in the background, beside recovery);
            for per-process resources of the role, e.g. reaping what a crashed process left behind.
        on_host_stop: called with the `Host` when it closes, after its instances closed; releases
            those per-process resources (e.g. stops the processes the role started).
        on_cluster_stop: called with the `Settings` in the process that owns the cluster, once every
            host has closed (or failed to); releases what hosts that died without closing left
            behind (a terminal's Ctrl-C or a service manager's stop may signal Ray's daemons too).
        resume_query: SQL over an instance's database that returns a row when its wake would
            resume work of a job (`on_wake`), not only of its mailbox or outbox. A running job
            keeps the instance's ``.pending`` marker while the host lives; `foundry restore`
            rebuilds the markers from the files, and asks this query for the jobs.
    """

    name: str
    package: str
    metadata: sa.MetaData
    #: The role's alembic environment; default ``migrations/<package>``.
    migrations: str = ""
    commands: tuple[Handler, ...] = ()
    actions: tuple[Handler, ...] = ()
    on_wake: Callable[[Any], Awaitable[None]] | None = None
    on_host_start: Callable[[Any], Awaitable[None]] | None = None
    on_host_stop: Callable[[Any], Awaitable[None]] | None = None
    on_cluster_stop: Callable[[Any], Awaitable[None]] | None = None
    resume_query: str | None = None
    _commands: dict[str, Handler] = field(init=False, repr=False, compare=False)
    _actions: dict[str, Handler] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_commands", {h.name: h for h in self.commands})
        object.__setattr__(self, "_actions", {h.name: h for h in self.actions})

    @property
    def migrations_location(self) -> str:
        """The folder of this role's alembic environment."""
        from foundry.db.migrate import migrations_dir

        return self.migrations or str(migrations_dir(self.package))

    def command(self, name: str) -> Handler:
        handler = self._commands.get(name)
        if handler is None:
            raise NotFound(f"role {self.name!r} has no command {name!r}; known: {sorted(self._commands)}")
        return handler

    def batches(self, name: str) -> bool:
        """Whether command ``name`` may share a transaction with its neighbours (`Handler.batch`)."""
        handler = self._commands.get(name)
        return handler is not None and handler.batch

    def action(self, name: str) -> Handler:
        handler = self._actions.get(name)
        if handler is None:
            raise NotFound(f"role {self.name!r} has no action {name!r}; known: {sorted(self._actions)}")
        return handler


def plain_message(msg: str) -> str:
    """A validation message without pydantic's "Value error, " preamble."""
    return msg.removeprefix("Value error, ")


def validate_body(handler: Handler, body: Any, role: str) -> BaseModel:
    """Parse a body into the handler's model, or raise `InvalidInput` naming every bad field."""
    if isinstance(body, handler.model):
        return body
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise InvalidInput(
            f"{role}.{handler.name}: body must be an object, got {type(body).__name__}", ["body"]
        )
    try:
        return handler.model.model_validate(body)
    except ValidationError as exc:
        fields = [".".join(str(p) for p in err["loc"]) or "body" for err in exc.errors()]
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {plain_message(err['msg'])}"
            for err in exc.errors()
        )
        # The detail reaches the person who sent the request: it names their fields, not the
        # internal command (which the log line of the refusal names).
        raise InvalidInput(f"invalid input: {problems}", fields) from None


#: Values `to_jsonable` returns as they are. Checked by exact type before any call: a page of
#: transcript events is thousands of scalars, and a call per scalar cost as much as reading the page.
_SCALARS = frozenset({str, int, float, bool, type(None)})


@dataclass(frozen=True, slots=True)
class PlainJson:
    """A handler's result that is plain JSON data already (read from stored JSON, say): returned as
    it is, without `to_jsonable`'s walk. For large results such as pages of transcript events."""

    value: Any


def to_jsonable(value: Any) -> Any:
    """A handler's return value as plain JSON data."""
    cls = type(value)
    if cls in _SCALARS:
        return value
    if cls is PlainJson:
        return value.value
    if cls is dict:
        return {
            (k if type(k) is str else str(k)): (v if type(v) in _SCALARS else to_jsonable(v))
            for k, v in value.items()
        }
    if cls is list:
        return [v if type(v) in _SCALARS else to_jsonable(v) for v in value]
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    return value


#: Role name → module that defines ``ROLE``. Roles load lazily so a host imports only its own.
ROLE_MODULES: dict[str, str] = {
    "audit-log": "actors.audit_log.role",
    "organization": "actors.organization.role",
    "user": "actors.user.role",
    "github-data": "actors.github_data.role",
    "task": "actors.task.role",
    "sandbox": "actors.sandbox.role",
}


def load_role(name: str, extra: dict[str, str] | None = None) -> Role:
    """Import and return the role called ``name`` (from `ROLE_MODULES` or ``extra``)."""
    module_name = (extra or {}).get(name) or ROLE_MODULES.get(name)
    if module_name is None:
        raise NotFound(f"unknown role {name!r}; known: {sorted(ROLE_MODULES)}")
    role = importlib.import_module(module_name).ROLE
    if not isinstance(role, Role):
        raise TypeError(f"{module_name}.ROLE is not a Role")
    return role


def available_roles() -> list[str]:
    """Roles whose package exists in this checkout."""
    out = []
    for name, module in ROLE_MODULES.items():
        if importlib.util.find_spec(module.rsplit(".", 1)[0]) is not None:
            out.append(name)
    return out


def host_name(role: str, shard: int) -> str:
    """The Ray actor name of host ``shard`` of ``role``."""
    return f"foundry.{role}.{shard}"
