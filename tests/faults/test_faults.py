"""Faults under mixed load: kills and restarts of a real `foundry serve`, invariants via the public API.

Each case is one seeded `run_once` (see `tests.faults.harness`): a real server in mock mode on real
Ray with real sandboxes, three HTTP clients and two websocket viewers, and faults injected at
seeded offsets. It then requires every acknowledged write applied exactly once, every task settled,
every session usable, no process left after the clean stop and no unexpected 4xx/5xx.

A seed fixes the fault kinds and offsets and the load's choices; which pid a kill hits and how the
product's timing interleaves with it vary from run to run, so a seed finds a failure class, not one
exact interleaving. `bench/faults.py` runs the long version with more seeds and a longer load.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.faults.harness import FAULT_KINDS, RunResult, run_once

pytestmark = [pytest.mark.faults, pytest.mark.timeout(600)]

#: The CI seed: one short run with ordered faults of every kind that failed on the code this suite
#: was first run against; it stays as a regression case. One run keeps the CI part under three
#: minutes (most of a run is `foundry serve` booting a local Ray, again after the hard restart). The
#: clean stop at the end of every run is checked too. What each kind found:
#: - kill -9 of a sandbox-agent server: the sandbox is restarted but the session keeps the ACP
#:   server/session ids of the dead one, so its next turn fails with "unknown session" and the task
#:   settles in error. Every sandbox-agent server and agent outlives the clean stop.
#: - kill -9 of the agent while its session starts: the ACP request waits out its read timeout, the
#:   session goes to error and the messages already queued (acknowledged with 202) never run until
#:   someone sends another message.
#: - kill -9 of a host, then a SIGKILL of the whole server and a restart: sandbox-agent servers and
#:   agents of the first server are never stopped or re-adopted (new ones are started beside them).
#: The SIGTERM restart (`restart_term`) runs in `bench/faults.py` and the long regression seeds.
CI_CASES = [
    pytest.param(
        1, ("host", "sandbox", "agent", "restart_kill"), 16, id="host-sandbox-agent-kills-and-hard-restart"
    ),
]

#: Long runs (`bench/faults.py --seed S --runs 1 --duration 40`, every fault kind) that failed and
#: are kept as regression cases; run by `test_long_regression_seed` when FOUNDRY_FAULTS_LONG=1.
REGRESSION_SEEDS: list[tuple[int, str]] = [
    (100, "sandbox-agent servers and agents left running after the clean stop"),
    (101, "audit-log host kill: readiness fails for ~20 s; orphans after the clean stop"),
    (
        102,
        "after a SIGTERM restart one task's database is half-migrated: every call to it answers 500 "
        "(sqlite3.OperationalError: table foundry_mailbox already exists), forever",
    ),
]


def _workdir(seed: int) -> Path:
    # Not pytest's tmp_path: parallel pytest runs on this machine rotate those away, and a failing
    # run's data dir and server log must stay for the post-mortem (kept and named on failure).
    return Path(tempfile.mkdtemp(prefix=f"foundry-faults-seed{seed}-"))


def _require_clean(result: RunResult, workdir: Path) -> None:
    detail = f"{result.explain()}\n(data dir and full server log kept in {workdir})"
    assert result.kills >= 1, detail
    assert result.acknowledged > 0, detail
    assert result.ok, detail
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.parametrize(("seed", "kinds", "duration"), CI_CASES)
async def test_product_survives_seeded_faults_under_load(
    seed: int, kinds: tuple[str, ...], duration: float
) -> None:
    workdir = _workdir(seed)
    result = await run_once(seed, workdir, duration=duration, faults=len(kinds), kinds=kinds, ordered=True)
    _require_clean(result, workdir)


@pytest.mark.skipif(
    os.environ.get("FOUNDRY_FAULTS_LONG") != "1", reason="long fault runs: set FOUNDRY_FAULTS_LONG=1"
)
@pytest.mark.timeout(1800)
@pytest.mark.parametrize(("seed", "found"), REGRESSION_SEEDS, ids=[str(s) for s, _ in REGRESSION_SEEDS])
async def test_long_regression_seed(seed: int, found: str) -> None:
    workdir = _workdir(seed)
    result = await run_once(seed, workdir, duration=40, kinds=FAULT_KINDS)
    _require_clean(result, workdir)
