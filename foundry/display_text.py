"""Text from outside that Foundry shows as one line (pull request titles from GitHub, say).

What a person types is refused when it breaks the rules (`foundry.http.text_fields`); text mirrored
from another system cannot be refused without losing the item it belongs to, so it is cleaned:
control characters go (they corrupt terminals and logs), as do the bidirectional embedding and
override characters (U+202A to U+202E, U+2066 to U+2069) that make a title read differently from what it
is; whitespace collapses to single spaces; an over-long text is cut with an ellipsis.
"""

from __future__ import annotations

import unicodedata

_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def one_line(text: str, limit: int) -> str:
    """``text`` cleaned for display on one line, at most ``limit`` characters."""
    kept = "".join(
        " " if ch in "\t\n\r" else ch
        for ch in text
        if ch in "\t\n\r" or (unicodedata.category(ch) != "Cc" and ch not in _BIDI_CONTROLS)
    )
    cleaned = " ".join(kept.split())
    if len(cleaned) > limit:
        cleaned = cleaned[: limit - 1].rstrip() + "…"
    return cleaned
