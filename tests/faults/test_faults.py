"""Faults under mixed load: kills and restarts of a real `foundry serve`, invariants via the public API.

Each case is one seeded `run_once` (see `tests.faults.harness`): a real server in mock mode on real
Ray with real sandboxes, three HTTP clients and two websocket viewers, and faults injected at
seeded offsets. It then requires every acknowledged write applied exactly once, every task settled,
every session usable, no process left after the clean stop and no unexpected 5xx.

`bench/faults.py` runs the long version with more seeds and a longer load.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.harness import run_once

pytestmark = [pytest.mark.faults, pytest.mark.timeout(420)]

#: Seeds that found a product failure, kept as regression cases, with the fault mix that found it.
#: (seed, fault kinds, what failed before the fix)
REGRESSION_SEEDS: list[tuple[int, tuple[str, ...], str]] = []


@pytest.mark.parametrize(
    ("seed", "kinds"),
    [
        pytest.param(1, ("host", "sandbox"), id="host-and-sandbox-kills"),
        pytest.param(2, ("restart_term",), id="clean-restart"),
        pytest.param(3, ("restart_kill", "agent"), id="hard-restart-and-agent-kill"),
    ],
)
async def test_product_survives_seeded_faults_under_load(
    seed: int, kinds: tuple[str, ...], tmp_path: Path
) -> None:
    result = await run_once(seed, tmp_path / f"seed{seed}", duration=12, faults=2, kinds=kinds)
    assert result.kills >= 1, result.explain()
    assert result.acknowledged > 0, result.explain()
    assert result.ok, result.explain()
