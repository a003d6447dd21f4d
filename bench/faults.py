"""Fault injection, the long version: seeded runs of kills and restarts of `foundry serve` under load.

Usage: ``python bench/faults.py [--runs N] [--seed S] [--duration SECONDS] [--faults K] [--kinds a,b]``

Each run starts a real server (mock mode, real Ray, real sandboxes) on its own data dir and port,
drives task creations, session messages, signed webhooks and websocket viewers, injects faults at
seeded offsets (run i uses seed S+i), checks the invariants through the public API and stops the
server. Prints one JSON object summed over the runs; ``--verbose`` adds every run's details (failing
runs' problems always go to stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tests.faults.harness import FAULT_KINDS, RunResult, run_once  # noqa: E402

COUNTS = (
    "kills",
    "acknowledged",
    "applied",
    "applied_twice",
    "stuck_tasks",
    "dead_sessions",
    "orphans",
    "unexpected_5xx",
)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load per run")
    parser.add_argument("--faults", type=int, default=None, help="faults per run (default: one per 10 s)")
    parser.add_argument("--kinds", default=",".join(FAULT_KINDS), help="fault kinds to draw from")
    parser.add_argument("--workdir", default=None, help="keep each run's data dir and log here")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    kinds = tuple(k for k in args.kinds.split(",") if k)
    unknown = set(kinds) - set(FAULT_KINDS)
    if unknown:
        parser.error(f"unknown fault kinds {sorted(unknown)}; choose from {', '.join(FAULT_KINDS)}")

    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="foundry-faults-"))
    results: list[RunResult] = []
    began = time.monotonic()
    for i in range(args.runs):
        seed = args.seed + i
        result = await run_once(seed, root / f"seed{seed}", args.duration, args.faults, kinds)
        results.append(result)
        if not result.ok:
            print(result.explain()[:20000], file=sys.stderr)
    out: dict[str, object] = {"runs": len(results)}
    for key in COUNTS:
        out[key] = sum(getattr(r, key) for r in results)
    out["max_recovery_s"] = max((r.max_recovery_s for r in results), default=0.0)
    # Whole-server restarts: seconds from starting the new process to ready (Ray's boot included).
    out["max_boot_s"] = max((r.max_boot_s for r in results), default=0.0)
    out["failing_seeds"] = [r.seed for r in results if not r.ok]
    out["seconds"] = round(time.monotonic() - began, 1)
    out["workdir"] = str(root)
    if args.verbose:
        out["details"] = [r.summary() for r in results]
    print(json.dumps(out, indent=2 if args.verbose else None))


if __name__ == "__main__":
    asyncio.run(main())
