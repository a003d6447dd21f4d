"""Topic grammar and ownership: every malformed topic is an `InvalidTopic`, never another error."""

from __future__ import annotations

import re

import pytest

from foundry.realtime import InvalidTopic, TopicRegistry, TopicRoute, TopicSpec, standard_registry
from foundry.realtime.frames import TOPIC_DESCRIPTION
from foundry.realtime.topics import TOPIC_PATTERN

REGISTRY = standard_registry(lambda org, task: f"{org}.{task}")


@pytest.mark.parametrize(
    ("topic", "role", "key"),
    [
        ("app:user-1", "user", "user-1"),
        ("organization:acme", "organization", "acme"),
        ("billing:acme", "organization", "acme"),
        ("task:acme:t1", "task", "acme.t1"),
        ("session:acme:t1:s1", "task", "acme.t1"),
    ],
)
def test_standard_topics_route_to_their_owner(topic: str, role: str, key: str) -> None:
    route = REGISTRY.resolve(topic)
    assert route == TopicRoute(topic=topic, role=role, key=key, ids=tuple(topic.split(":")[1:]))


@pytest.mark.parametrize(
    "topic",
    [
        None,
        7,
        "",
        "organization",
        "organization:",
        "organization:a:b",
        "session:acme:t1",
        "unknown:x",
        "Organization:acme",
        "organization:../x",
        "organization:a/b",
        "organization:-a",
        "organization:" + "a" * 200,
        "task:acme:" + "\x00",
        "x" * 10_000,
    ],
)
def test_malformed_topics_are_invalid_topic_errors(topic: object) -> None:
    with pytest.raises(InvalidTopic) as info:
        REGISTRY.resolve(topic)
    assert info.value.code == "invalid_topic"
    assert info.value.detail


def test_a_derived_key_must_be_a_valid_actor_key() -> None:
    registry = TopicRegistry([TopicSpec("pair", "task", lambda ids: f"{ids[0]}/{ids[1]}", parts=2)])
    with pytest.raises(InvalidTopic, match="valid actor"):
        registry.resolve("pair:a:b")


def test_the_documented_topic_list_names_every_registered_kind() -> None:
    documented = set(re.findall(r"`([a-z][a-z0-9-]*):<", TOPIC_DESCRIPTION))
    assert documented == set(REGISTRY.prefixes)


def test_prefixes_are_registered_once_and_well_formed() -> None:
    with pytest.raises(ValueError, match="twice"):
        TopicRegistry([TopicSpec("app", "user"), TopicSpec("app", "user")])
    with pytest.raises(ValueError, match="lowercase"):
        TopicSpec("Bad Prefix", "user")


@pytest.mark.parametrize(
    "topic",
    [
        "app:u1",
        "organization:acme",
        "task:acme:t-1",
        "session:acme:t1:s.1",
        "organization",
        "Organization:acme",
        "organization:",
        "organization:../x",
        "organization:-x",
        "organization:" + "a" * 129,
        "task:acme:t1:",
    ],
)
def test_the_documented_topic_pattern_agrees_with_the_registry(topic: str) -> None:
    try:
        REGISTRY.resolve(topic)
        valid = True
    except InvalidTopic:
        valid = False
    assert bool(re.match(TOPIC_PATTERN, topic)) == valid
