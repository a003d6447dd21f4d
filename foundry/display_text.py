"""Text from outside that Foundry shows as one line (pull request titles from GitHub, say).

What a person types is refused when it breaks the rules (`foundry.http.text_fields`); text mirrored
from another system cannot be refused without losing the item it belongs to, so it is cleaned:

* control characters go (they corrupt terminals and logs), and so do the invisible format
  characters (zero-width spaces, byte order marks, the bidirectional embedding and override
  characters that make a title read differently from what it is), except the zero-width joiner
  that emoji sequences need;
* a character keeps at most `MAX_MARKS` combining marks (a letter under thousands of them covers
  the lines around it);
* whitespace collapses to single spaces; an over-long text is cut with an ellipsis;
* text with nothing visible left becomes empty, so the caller's fallback (a branch name) shows.
"""

from __future__ import annotations

import unicodedata

#: Combining marks kept on one character (real scripts stack two or three).
MAX_MARKS = 4
_JOINER = "\u200d"
_MARKS = frozenset({"Mn", "Me", "Mc"})


def one_line(text: str, limit: int) -> str:
    """``text`` cleaned for display on one line, at most ``limit`` characters ("" when nothing
    visible is left)."""
    kept: list[str] = []
    marks = 0
    for ch in text:
        if ch in "\t\n\r":
            kept.append(" ")
            marks = 0
            continue
        category = unicodedata.category(ch)
        if category == "Cc" or (category == "Cf" and ch != _JOINER):
            continue
        if category in _MARKS:
            marks += 1
            if marks > MAX_MARKS:
                continue
        else:
            marks = 0
        kept.append(ch)
    cleaned = " ".join("".join(kept).split())
    if not any(unicodedata.category(ch) not in _MARKS and ch != _JOINER for ch in cleaned):
        return ""
    if len(cleaned) > limit:
        cleaned = cleaned[: limit - 1].rstrip() + "…"
    return cleaned
