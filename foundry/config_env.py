"""Checks the ``FOUNDRY_*`` environment against the settings model, for one-line start-up errors.

pydantic-settings silently ignores variables it does not know (a typo such as ``FOUNDRY_PORTT``
leaves the default in force) and reports malformed JSON as "error parsing value for field
'runtime'" without naming the variable. These helpers name the variable, suggest the closest known
one, and turn validation errors into one sentence, so that every command can refuse a bad
configuration with one line instead of a traceback.
"""

from __future__ import annotations

import difflib
import json
import types
from collections.abc import Iterable, Mapping
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, SecretStr, ValidationError

PREFIX = "FOUNDRY_"
DELIMITER = "__"

#: ``FOUNDRY_*`` variables that are not settings: Foundry sets or reads them for its own child
#: processes (the supervised server, the sandbox launcher and relay, the demo agent, git inside a
#: sandbox), and the test runner's knobs, which reach the servers the tests start.
NOT_SETTINGS = frozenset(
    {
        "FOUNDRY_SERVE_SUPERVISED",
        "FOUNDRY_SERVE_RAY_LOG_DIR_FILE",
        "FOUNDRY_SANDBOX_AGENT_TOKEN",
        "FOUNDRY_SANDBOX_RELAY_FD",
        "FOUNDRY_SANDBOX_RELAY_PORT",
        "FOUNDRY_SANDBOX_RLIMITS",
        "FOUNDRY_GIT_TOKEN",
        "FOUNDRY_DEMO_AGENT_DELAY",
        "FOUNDRY_DEMO_AGENT_LOG_LEVEL",
        "FOUNDRY_TEST_WORKERS",
        "FOUNDRY_FAULTS_LONG",
    }
)


class ConfigError(ValueError):
    """A configuration that Foundry refuses; the message is one line naming the variable."""


def _unwrap_optional(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _kind(annotation: Any) -> str:
    """``model``, ``dict``, ``list`` (each read as JSON) or ``scalar``."""
    annotation = _unwrap_optional(annotation)
    if _is_model(annotation):
        return "model"
    origin = get_origin(annotation) or annotation
    if origin is dict:
        return "dict"
    if origin in (list, set, tuple, frozenset):
        return "list"
    return "scalar"


def _contains_secret(annotation: Any) -> bool:
    annotation = _unwrap_optional(annotation)
    return annotation is SecretStr or any(_contains_secret(a) for a in get_args(annotation))


class SettingsNames:
    """Every environment variable a settings model reads, and how each is read."""

    def __init__(self, model: type[BaseModel]) -> None:
        #: variable → ``model``/``dict``/``list``/``scalar``
        self.kinds: dict[str, str] = {}
        #: variables that hold a secret (their values are never echoed)
        self.secrets: set[str] = set()
        self._walk(model, PREFIX)

    def _walk(self, model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            var = f"{prefix}{name.upper()}"
            kind = _kind(field.annotation)
            self.kinds[var] = kind
            if _contains_secret(field.annotation):
                self.secrets.add(var)
            if kind == "model":
                self._walk(_unwrap_optional(field.annotation), var + DELIMITER)

    def known(self, var: str) -> bool:
        """Whether ``var`` (upper case) is read: a field, or a key below a dict field."""
        if var in self.kinds or var in NOT_SETTINGS:
            return True
        # pydantic-settings also reads one key of a dict setting from its own variable:
        # FOUNDRY_RUNTIME__SHARDS__TASK=4 sets runtime.shards["task"].
        head, sep, _ = var.rpartition(DELIMITER)
        while sep:
            if self.kinds.get(head) == "dict":
                return True
            head, sep, _ = head.rpartition(DELIMITER)
        return False

    def suggest(self, var: str) -> str | None:
        """The known variable closest to ``var``, if one is close."""
        close = difflib.get_close_matches(var, [*self.kinds, *NOT_SETTINGS], n=1, cutoff=0.75)
        return close[0] if close else None


def _foundry_vars(environ: Mapping[str, str]) -> dict[str, str]:
    # pydantic-settings matches names case-insensitively; so does this check.
    return {k.upper(): v for k, v in environ.items() if k.upper().startswith(PREFIX)}


def check_environment(names: SettingsNames, environ: Mapping[str, str]) -> None:
    """Refuse unknown ``FOUNDRY_*`` variables and malformed JSON, naming each variable.

    Raises:
        ConfigError: one line, every problem found, separated by ``; ``.
    """
    problems: list[str] = []
    for var, value in sorted(_foundry_vars(environ).items()):
        if not names.known(var):
            hint = names.suggest(var)
            problems.append(f"unknown setting {var}" + (f"; did you mean {hint}?" if hint else ""))
            continue
        kind = names.kinds.get(var)
        if kind in ("model", "dict", "list"):
            try:
                json.loads(value)
            except ValueError as exc:
                what = "a JSON list" if kind == "list" else "a JSON object"
                problems.append(f"{var} must be {what}: {exc}")
    if problems:
        raise ConfigError("; ".join(problems))


def _variable_for(loc: Iterable[Any], names: SettingsNames, environ: Mapping[str, str]) -> str:
    """The variable that set the value at ``loc``: the deepest one present in the environment."""
    parts = [str(p).upper() for p in loc]
    present = _foundry_vars(environ)
    for n in range(len(parts), 0, -1):
        var = PREFIX + DELIMITER.join(parts[:n])
        if var in present:
            return var
    return PREFIX + DELIMITER.join(parts)


def describe_validation_error(exc: ValidationError, names: SettingsNames, environ: Mapping[str, str]) -> str:
    """One line naming each invalid variable, its value (unless secret) and what is expected."""
    problems = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        var = _variable_for(loc, names, environ)
        full = PREFIX + DELIMITER.join(loc).upper()
        secret = any(full == s or full.startswith(s + DELIMITER) for s in names.secrets)
        value = err.get("input")
        shown = "" if secret or isinstance(value, dict | list) else f"={str(value)[:80]!r}"
        # A value inside a JSON setting: say where in it.
        inner = loc[var.count(DELIMITER) + 1 :] if var != full else []
        where = f" (at {'.'.join(inner)}{shown})" if inner else shown
        message = str(err.get("msg", "invalid value"))
        problems.append(f"invalid setting {var}{where}: {message[:1].lower()}{message[1:]}")
    return "; ".join(problems)
