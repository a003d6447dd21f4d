"""Which branch names Foundry accepts: one rule for the API, the actors and the git driver."""

from __future__ import annotations

import re

_BRANCH_CHARS = re.compile(r"[A-Za-z0-9._/+-]{1,200}")


def branch_problem(branch: str) -> str | None:
    """Why ``branch`` is not a branch name Foundry will use, or None.

    Git's own rules (``git check-ref-format --branch``) over a plain character set, plus: no name
    that starts with ``refs/``, which git would take as a branch literally called ``refs/heads/…``.
    """
    if not _BRANCH_CHARS.fullmatch(branch):
        return "use 1 to 200 letters, digits and . _ / + - only"
    parts = branch.split("/")
    problems = [
        (branch.startswith("-"), "it must not start with '-'"),
        (branch in ("HEAD", "@"), f"{branch!r} is reserved by git"),
        (branch.lower().startswith("refs/"), "give the branch's own name, without 'refs/' (e.g. 'main')"),
        ("" in parts, "it must not start or end with '/' nor contain '//'"),
        (any(p.startswith(".") for p in parts), "no part of it may start with '.'"),
        (any(p.endswith(".lock") for p in parts), "no part of it may end with '.lock'"),
        (".." in branch, "it must not contain '..'"),
        (branch.endswith("."), "it must not end with '.'"),
    ]
    return next((why for bad, why in problems if bad), None)
