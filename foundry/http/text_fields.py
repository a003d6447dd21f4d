"""What a person may type into Foundry: one set of rules for every request field that takes text.

A value refused in one place must not be accepted in another (a session could be created with the
name ``"   "`` that renaming it refused), and text that reaches git, an agent or another person's
screen must be worth sending:

* `LABEL` — task titles, session names, display names, pull request titles: one line, shown in
  lists. Runs of whitespace collapse to one space; control characters (NUL, ESC, BEL, DEL…) are
  refused, since they corrupt terminals and logs and a NUL cannot be passed to git at all.
* `PROMPT` — what goes to an agent: kept as typed (newlines, tabs and pasted terminal output
  included) except NUL, and refused when nothing visible is left once whitespace and invisible
  characters (zero-width spaces, byte order marks…) are removed.
* `SECRET` — an agent credential: visible characters and plain spaces only.
"""

from __future__ import annotations

import unicodedata

from pydantic import AfterValidator

#: Unicode categories with nothing to read: controls, format characters (zero-width space, BOM,
#: direction marks), separators.
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})
#: Marks that only modify the character before them (combining marks, variation selectors): text
#: of nothing else has nothing to read either.
_MARK_CATEGORIES = frozenset({"Mn", "Me", "Mc"})
#: Letters and symbols that render as blank space: Hangul fillers, the blank Braille pattern.
_BLANK_CHARACTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")


def _has_visible(text: str) -> bool:
    return any(
        not ch.isspace()
        and ch not in _BLANK_CHARACTERS
        and unicodedata.category(ch) not in _INVISIBLE_CATEGORIES
        and unicodedata.category(ch) not in _MARK_CATEGORIES
        for ch in text
    )


def _first_control(text: str) -> str | None:
    return next((ch for ch in text if unicodedata.category(ch) == "Cc" and ch not in "\t\n\r"), None)


def _label(value: str) -> str:
    control = _first_control(value)
    if control is not None:
        raise ValueError(f"must not contain control characters (found U+{ord(control):04X})")
    cleaned = " ".join(value.split())
    if not _has_visible(cleaned):
        raise ValueError("must contain more than whitespace")
    return cleaned


def _prompt(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters (U+0000)")
    if not _has_visible(value):
        raise ValueError("must contain more than whitespace")
    return value


def _secret(value: str) -> str:
    bad = next((ch for ch in value if unicodedata.category(ch) in _INVISIBLE_CATEGORIES and ch != " "), None)
    if bad is not None:
        raise ValueError(f"must not contain control or invisible characters (found U+{ord(bad):04X})")
    if not value.strip():
        raise ValueError("must contain more than whitespace")
    return value


#: Validators to put in a field's ``Annotated[str, Field(...), …]`` (lengths stay with each field).
LABEL = AfterValidator(_label)
PROMPT = AfterValidator(_prompt)
SECRET = AfterValidator(_secret)
