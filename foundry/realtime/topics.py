"""Realtime topics: their grammar and which actor owns each one.

A topic is ``<prefix>:<id>[:<id>...]`` (``organization:acme``, ``session:acme:t1:s1``). The
`TopicRegistry` maps it to the (role, key) of the actor that publishes on it and answers its
``snapshot`` action. Topics come from browsers, so everything here validates and raises
`InvalidTopic`, which the gateway turns into an error frame; nothing a client sends can raise
anything else.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from foundry.errors import InvalidInput
from foundry.runtime.keys import validate_key

#: Longer topics are refused before any parsing (they are built from a few ids).
MAX_TOPIC_LENGTH = 512
_PREFIX = r"[a-z][a-z0-9-]{0,31}"
#: One id segment: the actor-key alphabet minus ``:`` (the separator).
_SEGMENT = r"[A-Za-z0-9][A-Za-z0-9._@+=-]{0,127}"
_PREFIX_RE = re.compile(f"^{_PREFIX}$")
_SEGMENT_RE = re.compile(f"^{_SEGMENT}$")
#: The shape of every topic, for documentation (`TopicRegistry.resolve` checks one part at a time
#: to say precisely what is wrong).
TOPIC_PATTERN = f"^{_PREFIX}(:{_SEGMENT})+$"


class InvalidTopic(InvalidInput):
    """A topic that is malformed or that no registered owner serves."""

    code = "invalid_topic"

    def __init__(self, detail: str, fields: list[str] | None = None) -> None:
        super().__init__(detail, fields if fields is not None else ["topic"])


def _first_id(ids: tuple[str, ...]) -> str:
    return ids[0]


@dataclass(frozen=True)
class TopicSpec:
    """One family of topics and its owner.

    Attributes:
        prefix: the part before the first ``:`` (``organization``).
        role: the role of the owning actor.
        key_of: the owner's actor key from the topic's id segments (the ids after the prefix);
            by default the first id.
        parts: how many id segments the topic has (``task:<org>:<task>`` has 2).
    """

    prefix: str
    role: str
    key_of: Callable[[tuple[str, ...]], str] = _first_id
    parts: int = 1

    def __post_init__(self) -> None:
        if not _PREFIX_RE.match(self.prefix):
            raise ValueError(f"topic prefix {self.prefix!r} must be lowercase letters, digits and '-'")
        if self.parts < 1:
            raise ValueError(f"topic prefix {self.prefix!r} needs at least one id segment")


@dataclass(frozen=True)
class TopicRoute:
    """Where a valid topic lives: the owner actor (role, key) and the topic's id segments."""

    topic: str
    role: str
    key: str
    ids: tuple[str, ...]


class TopicRegistry:
    """Parses topics and names their owner actor.

    Args:
        specs: one `TopicSpec` per prefix; a prefix may be registered once.
    """

    def __init__(self, specs: Iterable[TopicSpec] = ()) -> None:
        self._specs: dict[str, TopicSpec] = {}
        for spec in specs:
            self.register(spec)

    def register(self, spec: TopicSpec) -> None:
        """Add a topic family. Raises `ValueError` if its prefix is already registered."""
        if spec.prefix in self._specs:
            raise ValueError(f"topic prefix {spec.prefix!r} is registered twice")
        self._specs[spec.prefix] = spec

    @property
    def prefixes(self) -> list[str]:
        return sorted(self._specs)

    def resolve(self, topic: object) -> TopicRoute:
        """The owner of ``topic``.

        Raises:
            InvalidTopic: not a string, too long, unknown prefix, wrong number of ids, an id with
                characters outside ``A-Za-z0-9._@+=-``, or a derived key that is not a valid actor key.
        """
        if not isinstance(topic, str):
            raise InvalidTopic(f"topic must be a string, got {type(topic).__name__}")
        if not topic or len(topic) > MAX_TOPIC_LENGTH:
            raise InvalidTopic(f"topic must be 1-{MAX_TOPIC_LENGTH} characters")
        prefix, _, rest = topic.partition(":")
        spec = self._specs.get(prefix)
        if spec is None:
            raise InvalidTopic(f"unknown topic kind {prefix[:40]!r}; known: {', '.join(self.prefixes)}")
        ids = tuple(rest.split(":")) if rest else ()
        if len(ids) != spec.parts:
            raise InvalidTopic(
                f"a {prefix!r} topic has {spec.parts} id(s) after the prefix "
                f"({prefix}{':<id>' * spec.parts}), got {len(ids)}"
            )
        for segment in ids:
            if not _SEGMENT_RE.match(segment):
                raise InvalidTopic(
                    f"topic id {segment[:40]!r} must be 1-128 characters of letters, digits and ._@+=- "
                    "and start with a letter or digit"
                )
        try:
            key = validate_key(spec.key_of(ids))
        except InvalidInput as exc:
            raise InvalidTopic(f"topic {topic!r} does not name a valid actor: {exc.detail}") from exc
        return TopicRoute(topic=topic, role=spec.role, key=key, ids=ids)


def standard_registry(task_key: Callable[[str, str], str]) -> TopicRegistry:
    """The product's topics.

    ``app:<userId>`` → user actor; ``organization:<orgId>`` and ``billing:<orgId>`` (the whole
    billing state; admins only) → organization actor;
    ``task:<orgId>:<taskId>`` and ``session:<orgId>:<taskId>:<sessionId>`` → the task actor whose key
    is ``task_key(orgId, taskId)`` (session transcripts live in the task's database).
    """
    return TopicRegistry(
        [
            TopicSpec("app", "user"),
            TopicSpec("organization", "organization"),
            TopicSpec("billing", "organization"),
            TopicSpec("task", "task", lambda ids: task_key(ids[0], ids[1]), parts=2),
            TopicSpec("session", "task", lambda ids: task_key(ids[0], ids[1]), parts=3),
        ]
    )
