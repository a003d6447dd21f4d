"""The strict JSON parser's nesting limit, at its edge and far past it (every body the API reads)."""

from __future__ import annotations

import json

import pytest

from foundry.strict_json import MAX_DEPTH, BadJson, loads


def arrays(depth: int) -> str:
    return "[" * depth + "]" * depth


def objects(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


@pytest.mark.parametrize("nest", [arrays, objects])
def test_the_limit_is_exact(nest: object) -> None:
    assert loads(nest(MAX_DEPTH)) is not None  # type: ignore[operator]
    with pytest.raises(BadJson, match=f"deeper than {MAX_DEPTH}"):
        loads(nest(MAX_DEPTH + 1))  # type: ignore[operator]


@pytest.mark.parametrize("depth", [500, 5_000, 200_000])
def test_far_too_deep_is_refused_without_a_crash(depth: int) -> None:
    with pytest.raises(BadJson, match="deeper than"):
        loads(arrays(depth).encode())


def test_mixed_nesting_counts_every_container_and_brackets_in_strings_count_for_nothing() -> None:
    mixed = '{"a":[' * 33 + "1" + "]}" * 33  # 66 levels
    with pytest.raises(BadJson):
        loads(mixed)
    wide = {"k": [{"s": "[[[[{{{{" * 50}] * 200}
    assert loads(json.dumps(wide)) == wide  # many brackets, in strings and side by side, no depth
