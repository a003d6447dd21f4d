"""Titles and branches derived from a prompt's first line: what people write, in any language."""

from __future__ import annotations

import pytest

from actors.task.naming import derive_title, unique_branch

CASES = [
    ("alice's first prompt", "feat: alice's first prompt", "foundry/alice-s-first-prompt-1"),
    (
        "Überarbeite die **Doku** für v2",
        "feat: Überarbeite die Doku für v2",
        "foundry/uberarbeite-die-doku-fur-v2-1",
    ),
    ("# Fix the `parser` <script>", "fix: Fix the parser script", "foundry/fix-the-parser-script-1"),
    ("修复登录页面的错误", "feat: 修复登录页面的错误", "foundry/task-1"),
    ("> quoted ask\nsecond line", "feat: quoted ask", "foundry/quoted-ask-1"),
    ("\u202eevil\u0000 title", "feat: evil title", "foundry/evil-title-1"),
    ("____", "feat: update task", "foundry/update-task-1"),
]


@pytest.mark.parametrize(("prompt", "title", "branch"), CASES)
def test_a_prompt_gives_a_readable_title_and_a_valid_branch(prompt: str, title: str, branch: str) -> None:
    assert derive_title(prompt) == title
    assert unique_branch(title, set()) == branch


def test_a_long_first_line_is_cut_with_an_ellipsis() -> None:
    title = derive_title("word " * 40)
    assert title.startswith("feat: word word")
    assert title.endswith("…")
    assert len(title) <= len("feat: ") + 62
