"""Process checks shared by the tests that assert what is (still) running."""

from __future__ import annotations

from pathlib import Path


def alive(pids: list[int]) -> list[int]:
    """The pids still running (a zombie only waits to be reaped: it runs nothing)."""
    out = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            out.append(pid)
    return out
