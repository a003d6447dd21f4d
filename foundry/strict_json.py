"""One JSON parser for everything that arrives from outside: HTTP bodies, webhooks, websocket frames.

Python's `json.loads` accepts things Foundry cannot store or pass on safely, and fails on others
with exceptions that are not `ValueError`:

* ``NaN``/``Infinity`` and floats that overflow to infinity are not JSON and break re-serialization;
* integers beyond SQLite's signed 64-bit range raise `OverflowError` at the first query;
* lone UTF-16 surrogates (``"\\ud800"``) are valid JSON escapes but cannot be encoded as UTF-8, so
  the first write of such a string fails deep inside a handler;
* deeply nested arrays raise `RecursionError`;
* bytes that are not UTF-8 raise `UnicodeDecodeError`.

`loads` turns every one of these into `BadJson` (a `ValueError`) with a sentence saying what was
wrong, so each edge maps it to a 4xx (or an error frame) instead of a crash.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

#: SQLite integers are signed 64-bit.
MAX_INT = 2**63 - 1
MIN_INT = -(2**63)
#: With ``wide_ints``, integers up to this many digits are parsed for the caller to range-check.
WIDE_INT_DIGITS = 1000
#: Deeper documents are refused before parsing; no Foundry input nests anywhere near this.
MAX_DEPTH = 64

# A "\uD800"-"\uDFFF" escape: only documents containing one need the (slower) surrogate check.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


class BadJson(ValueError):
    """A document that is not acceptable JSON; the message says why."""


def _int(text: str) -> int:
    # Checked on the literal first: converting a 100,000-digit literal is itself slow.
    if len(text.lstrip("-")) > 19:
        raise BadJson(f"integer {text[:24]}… is out of range (at most 64-bit signed)")
    value = int(text)
    if not MIN_INT <= value <= MAX_INT:
        raise BadJson(f"integer {text} is out of range (at most 64-bit signed)")
    return value


def _wide_int(text: str) -> int:
    # Any size Python converts quickly; the caller checks the range and can name the field.
    if len(text.lstrip("-")) > WIDE_INT_DIGITS:
        raise BadJson(f"integer {text[:24]}… has more than {WIDE_INT_DIGITS} digits")
    return int(text)


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadJson(f"number {text[:24]} is too large")
    return value


def _constant(name: str) -> Any:
    raise BadJson(f"{name} is not valid JSON")


def _too_deep(value: Any, limit: int) -> bool:
    """True when containers nest deeper than ``limit`` (the top level is 1). Walks the parsed value
    without recursion, looking at containers only: about 30 µs for a 22 KB GitHub payload, against
    0.3-0.9 ms for stripping strings from the text with a regex to count brackets, which cost the
    webhook path a seventh of its CPU."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        for child in item.values() if isinstance(item, dict) else item:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
    return False


def _check_strings(value: Any) -> None:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise BadJson("a string contains a lone UTF-16 surrogate escape (\\ud800-\\udfff)") from None
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise BadJson(f"key {key[:80]!r} appears more than once in an object")
            seen.add(key)
    return value


def loads(
    data: bytes | str, *, max_depth: int = MAX_DEPTH, unique_keys: bool = False, wide_ints: bool = False
) -> Any:
    """Parse ``data`` strictly (see the module docstring).

    ``wide_ints`` keeps integers beyond 64 bits (up to `WIDE_INT_DIGITS` digits) for a caller that
    validates every integer field it reads against its own range, so its error can name the field.

    ``unique_keys`` refuses an object that repeats a key: parsers disagree on which value wins, so a
    client could show one value to a proxy and another to Foundry. For requests (small); webhook
    payloads are signed by their sender and skip the per-object check.

    Raises:
        BadJson: not UTF-8, not JSON, nested deeper than ``max_depth``, NaN/Infinity, a number out
            of range, a lone surrogate, or (with ``unique_keys``) a repeated key.
    """
    if isinstance(data, bytes | bytearray):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadJson(f"the body is not UTF-8 (byte {exc.start})") from None
    else:
        text = data
    try:
        # The C scanner guards its own recursion (RecursionError, well before the C stack is at
        # risk), so the depth limit is checked on the parsed value.
        value = json.loads(
            text,
            parse_int=_wide_int if wide_ints else _int,
            parse_float=_float,
            parse_constant=_constant,
            object_pairs_hook=_unique_keys if unique_keys else None,
        )
    except BadJson:
        raise
    except RecursionError:
        raise BadJson(f"JSON nested deeper than {max_depth} levels") from None
    except ValueError as exc:  # json.JSONDecodeError, and int() over the digit limit
        raise BadJson(str(exc)) from None
    deep_enough = text.count("[") + text.count("{") > max_depth  # too few brackets to nest that far
    if deep_enough and isinstance(value, (dict, list)) and _too_deep(value, max_depth):
        raise BadJson(f"JSON nested deeper than {max_depth} levels")
    if _SURROGATE_ESCAPE.search(text):
        _check_strings(value)
    return value
