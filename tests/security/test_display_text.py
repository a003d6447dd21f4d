"""Text mirrored from GitHub is cleaned for display rather than refused (the item would be lost)."""

from __future__ import annotations

import pytest

from foundry.display_text import MAX_MARKS, one_line

FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467"  # an emoji sequence joined by ZWJ


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("ctrl\u0000\u0007\u202etitle", "ctrltitle"),  # controls and a direction override go
        ("line one\nline  two\t!", "line one line two !"),  # one line, single spaces
        ("\u200b\ufeff\u2060", ""),  # nothing visible: the caller's fallback shows instead
        ("   ", ""),
        ("\u0301\u0301", ""),  # marks on nothing
        (f"{FAMILY} family", f"{FAMILY} family"),
        ("caf\u00e9 na\u0308ive", "caf\u00e9 na\u0308ive"),  # real accents are kept
    ],
)
def test_text_from_github_is_cleaned_for_one_line(raw: str, shown: str) -> None:
    assert one_line(raw, 1000) == shown


def test_stacked_marks_and_length_are_bounded() -> None:
    assert one_line("a" + "\u0301" * 9999, 1000) == "a" + "\u0301" * MAX_MARKS
    long = one_line("x" * 5000, 1000)
    assert len(long) == 1000
    assert long.endswith("…")
