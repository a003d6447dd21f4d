"""Branch names: Foundry refuses every name real git refuses (so a task never fails at checkout
over a name the API accepted), and names starting with ``refs/``, which git would take literally."""

from __future__ import annotations

import subprocess

import pytest

from foundry.branch_names import branch_problem

NAMES = [
    "main",
    "feature/x",
    "a.b",
    "v1.2+build",
    "x-y_z",
    "a/b/c",
    "foundry/rescue/abc-123",
    "HEAD",
    "@",
    "-x",
    "/a",
    "a/",
    "a//b",
    ".hidden",
    "a/.b",
    "a.lock",
    "a/b.lock/c",
    "a..b",
    "a.",
    "a/.",
    "..",
    ".",
    "a b",
    "a~1",
    "a^",
    "a:b",
    "a?",
    "a*",
    "a[1]",
    "a\\\\b",
    "a@{1}",
    "é",
    "a\\tb",
    "HEAD/x",
    "x/HEAD",
    "lock.a",
    ".lock",
    "a.lock.b",
    "-",
    "+",
    "_",
    "a" * 200,
    "a" * 201,
]


def git_accepts(name: str) -> bool:
    result = subprocess.run(["git", "check-ref-format", "--branch", name], capture_output=True, check=False)
    return result.returncode == 0


@pytest.mark.parametrize("name", NAMES)
def test_what_git_refuses_foundry_refuses(name: str) -> None:
    if not git_accepts(name):
        assert branch_problem(name) is not None, f"git refuses {name!r}, Foundry accepted it"


def test_the_usual_names_are_accepted_and_refs_prefixes_are_not() -> None:
    for name in ("main", "feature/login-form", "foundry/fix-bug-2", "release/v1.2.3", "user+topic"):
        assert branch_problem(name) is None, name
    assert git_accepts("refs/heads/main")  # git would make a branch named "refs/heads/main"
    assert "without 'refs/'" in (branch_problem("refs/heads/main") or "")
    assert branch_problem("REFS/heads/x") is not None
