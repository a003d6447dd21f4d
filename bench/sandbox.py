"""Sandbox start-up and isolation figures of the local provider; prints one JSON object.

    .venv/bin/python bench/sandbox.py [--starts 10]

Real `sandbox-agent` servers with the demo agent, started by `LocalSandboxProvider` in a temporary
directory, one after another (the starts alternate between jailed and unjailed, so that a busy moment
of the machine hits both alike). Figures:

* ``sandbox_start_ms_p50``: ``create`` of a jailed sandbox (bubblewrap, own network namespace) until
  its server answers ``/v1/health``; ``sandbox_start_ms_p50_unjailed``: the same with
  ``isolation = "none"``; ``jail_overhead``: their ratio (target: at most 1.2);
* ``sandbox_start_ms_p50_egress`` / ``egress_overhead``: the same for a jail whose network is
  ``egress`` (pasta attached, this machine fenced off; production's default), when pasta is here;
* ``first_event_s_p50``: ``create`` of a jailed sandbox until the agent's first ACP answer
  (``initialize`` of the demo agent through the server);
* ``escape_attempts`` / ``escapes``: the escape attempts of ``tests/security/test_jail_escapes.py``
  run from inside a jailed sandbox of a real Foundry, and how many got through (target: 0).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from foundry.demo_agent.launcher import launcher_script
from foundry.drivers.sandbox.binary import find_binary
from foundry.drivers.sandbox.client import SandboxAgentClient
from foundry.drivers.sandbox.jail import JailPolicy, find_pasta
from foundry.drivers.sandbox.local import LocalSandboxProvider


async def starts(root: Path, count: int) -> dict[str, list[float]]:
    binary = find_binary()
    providers = {
        "jailed": LocalSandboxProvider(root / "jailed", binary, {"mock": launcher_script()}),
        "unjailed": LocalSandboxProvider(
            root / "unjailed", binary, {"mock": launcher_script()}, jail=JailPolicy(isolation="none")
        ),
    }
    if find_pasta() is not None:
        providers["egress"] = LocalSandboxProvider(
            root / "egress", binary, {"mock": launcher_script()}, jail=JailPolicy(network="egress")
        )
    figures: dict[str, list[float]] = {kind: [] for kind in providers}
    figures["first_event"] = []
    try:
        for provider in providers.values():
            await provider.isolation()  # the one-off probe is not part of a start
            # A first start warms the file system cache for both.
            await provider.create("warm-up")
            await provider.destroy("warm-up")
        for n in range(count):
            for kind, provider in providers.items():
                started = time.perf_counter()
                endpoint = await provider.create(f"bench-{n}")
                figures[kind].append((time.perf_counter() - started) * 1000)
                if kind == "jailed":
                    async with SandboxAgentClient(endpoint) as client:
                        await client.acp(f"bench-{n}", "mock").initialize()
                    figures["first_event"].append(time.perf_counter() - started)
                await provider.destroy(f"bench-{n}")
    finally:
        for provider in providers.values():
            await provider.aclose()
    return figures


async def escapes(root: Path) -> tuple[int, int]:
    from tests.security.test_jail_escapes import attempt_all, scene

    running = scene(root, "bwrap")
    try:
        got_through = await attempt_all(await anext(running))
    finally:
        await running.aclose()  # stops that Foundry and its sandboxes
    return len(got_through), sum(got_through.values())


async def main(count: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="bench-sandbox-") as tmp:
        figures = await starts(Path(tmp), count)
        attempts, got_through = await escapes(Path(tmp) / "escapes")
    jailed = statistics.median(figures["jailed"])
    unjailed = statistics.median(figures["unjailed"])
    return {
        "sandbox_start_ms_p50": round(jailed, 1),
        "sandbox_start_ms_p50_unjailed": round(unjailed, 1),
        "jail_overhead": round(jailed / unjailed, 2),
        **(
            {
                "sandbox_start_ms_p50_egress": round(statistics.median(figures["egress"]), 1),
                "egress_overhead": round(statistics.median(figures["egress"]) / unjailed, 2),
            }
            if figures.get("egress")
            else {}
        ),
        "first_event_s_p50": round(statistics.median(figures["first_event"]), 3),
        "escape_attempts": attempts,
        "escapes": got_through,
        "starts": count,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=10)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.starts))))
