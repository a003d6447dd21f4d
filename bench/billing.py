"""Stripe webhook and seat-sync figures; prints one JSON object.

    .venv/bin/python bench/billing.py [--backend ray|inprocess] [--events 2000] [--rate 100]
        [--members 40]

A Foundry on the chosen runtime (``ray``, as ``foundry serve`` runs, by default) with the fake Stripe
that the real SDK talks to. One organization upgrades to the team plan through Checkout. Then, at
the same time:

* a load generator in a separate process sends ``--events`` signed Stripe events at ``--rate``/s to
  ``POST /v1/webhooks/stripe``, open loop, through raw keep-alive connections: invoices finalized
  and paid, and subscription updates; 10 % are redeliveries of an earlier event and 10 % are sent
  out of order (the later event of a pair first). ``stripe_webhook_ack_ms_p50/p99`` are the 200
  latencies the sender saw; ``events`` the distinct events acknowledged; ``lost`` those acknowledged
  but never recorded by the organization; ``applied_twice`` events that reached the handler twice
  plus redeliveries not acknowledged as duplicates;
* ``--members`` members send their first prompts (each takes a seat) and a few seats are released:
  ``seat_changes`` is the organization's seat ledger, ``stripe_calls`` the subscription-item updates
  that took effect at Stripe (distinct idempotency keys), and ``stripe_requests`` every such request.

``stale_ignored`` counts subscription states that arrived after a newer one and were not applied.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import gc
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import wait_until  # noqa: E402 - after the path is set

ORG = "bench-billing"


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * p))], 2) if ordered else 0.0


# ------------------------------------------------------------------------------------------ load generator


def _plan(template: dict[str, Any], count: int, seed: int) -> tuple[list[dict[str, Any]], int]:
    """``count`` events in send order (10 % redeliveries, 10 % swapped pairs) and the created time of
    the newest subscription state."""
    from foundry.drivers.stripe.fake import FakeStripe

    rng = random.Random(seed)
    fake = FakeStripe()
    sub = template["subscription"]
    invoice = template["invoice"]
    base = int(time.time())
    unique: list[dict[str, Any]] = []
    newest = 0
    n_unique = int(count / 1.1)
    for i in range(n_unique):
        created = base + i
        if i % 3 == 0:
            state = copy.deepcopy(sub)
            state["items"]["data"][0]["quantity"] = 1 + i % 7
            evt = fake.event("customer.subscription.updated", state, created)
            newest = max(newest, created)
        else:
            inv = {**invoice, "id": f"in_bench{i:06d}", "number": f"B-{i:06d}", "created": created}
            evt = fake.event("invoice.paid" if i % 3 == 2 else "invoice.finalized", inv, created)
        evt["id"] = f"evt_bench_{seed}_{i:06d}"
        unique.append(evt)
    order = list(range(n_unique))
    for j in range(0, n_unique - 1, 10):  # one swapped pair in every ten events
        order[j], order[j + 1] = order[j + 1], order[j]
    sent = [unique[k] for k in order]
    while len(sent) < count:
        pos = rng.randrange(1, len(sent))
        sent.insert(pos, sent[rng.randrange(0, pos)])
    return sent, newest


async def _load(args: argparse.Namespace) -> dict[str, Any]:
    from urllib.parse import urlsplit

    from github_sync import _Connections  # raw keep-alive HTTP: httpx costs more CPU than the endpoint

    from foundry.drivers.stripe.fake import sign_payload

    template = json.loads(Path(args.template).read_text())
    events, newest = _plan(template, args.events, 11)
    url = urlsplit(args.url)
    pool = _Connections(url.hostname or "127.0.0.1", url.port or 80)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    acked: set[str] = set()
    fresh_acks: dict[str, int] = {}
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def send(i: int, evt: dict[str, Any]) -> None:
        await asyncio.sleep(max(0.0, start + i / args.rate - loop.time()))
        body = json.dumps(evt).encode()
        headers = {"content-type": "application/json", "stripe-signature": sign_payload(body, args.secret)}
        t0 = time.perf_counter()
        status, answer = await pool.post("/v1/webhooks/stripe", headers, body)
        latencies.append((time.perf_counter() - t0) * 1000)
        statuses[status] = statuses.get(status, 0) + 1
        if status == 200:
            acked.add(evt["id"])
            if not json.loads(answer).get("duplicate"):
                fresh_acks[evt["id"]] = fresh_acks.get(evt["id"], 0) + 1

    await asyncio.gather(*(send(i, e) for i, e in enumerate(events)))
    return {
        "latencies": latencies,
        "statuses": {str(k): v for k, v in statuses.items()},
        "acked": sorted(acked),
        # Deliveries of one event that were each acknowledged as new (must be none).
        "not_deduped": sum(n - 1 for n in fresh_acks.values() if n > 1),
        "sent": len(events),
        "elapsed_s": loop.time() - start,
        "newest_subscription_state": newest,
    }


# ------------------------------------------------------------------------------------------ server


async def main(args: argparse.Namespace) -> dict[str, Any]:
    import uvicorn

    from foundry.config import Settings
    from foundry.http.app import create_app
    from foundry.mock import start_fake_github, start_fake_stripe
    from foundry.wiring import build_runtime
    from tests.http.conftest import free_port

    data_dir = Path(tempfile.mkdtemp(prefix="foundry-bench-billing-"))
    port = free_port()
    base = Settings(
        data_dir=data_dir,
        port=port,
        log_level="WARNING",
        runtime={"backend": args.backend, "namespace": f"bench-{uuid.uuid4().hex[:6]}", "idle_seconds": 3600},  # type: ignore[arg-type]
        stripe={"retry_base_s": 0.2, "retry_cap_s": 5.0},  # type: ignore[arg-type]
    )
    fake_gh, settings = start_fake_github(base)
    stripe, settings = start_fake_stripe(settings)
    stripe.auto_deliver = False  # the load generator is the only webhook sender
    runtime = build_runtime(settings)
    await runtime.start()
    result: dict[str, Any] = {"backend": args.backend}
    uv: Any = None
    server_task: asyncio.Task[None] | None = None
    try:
        members = [
            {"userGithubId": 9000 + m, "login": f"member-{m:03d}", "role": "admin" if m == 0 else "member"}
            for m in range(args.members)
        ]
        await runtime.actor("organization", ORG).send(
            "sync_from_github",
            {
                "kind": "organization",
                "githubLogin": ORG,
                "githubAccountId": 8101,
                "displayName": "Bench Billing",
                "members": members,
            },
            wait=True,
            timeout=120,
        )
        app = create_app(settings, runtime=runtime, fake_github=fake_gh, fake_stripe=stripe)
        uv = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
        )
        server_task = asyncio.create_task(uv.serve())
        await wait_until(lambda: asyncio.sleep(0, uv.started), 30, "uvicorn")
        # ---- upgrade through Checkout (the hosted page's effect, then Stripe's redirect back)
        admin = "gh-9000"
        started = await runtime.call(
            "organization",
            ORG,
            "start_checkout",
            {"userId": admin, "plan": "team", "successUrl": "http://x/ok", "cancelUrl": "http://x/no"},
        )
        await asyncio.to_thread(stripe.complete_checkout, started["sessionId"])
        await runtime.call(
            "organization", ORG, "complete_checkout", {"userId": admin, "sessionId": started["sessionId"]}
        )
        sub = next(iter(stripe.subscriptions.values()))
        template = data_dir / "template.json"
        template.write_text(
            json.dumps({"subscription": sub, "invoice": next(iter(stripe.invoices.values()))})
        )
        # ---- load: webhooks from another process, seats from the members, at the same time
        # Move everything built so far out of the collector's way, as `foundry serve` does after start-up.
        gc.collect()
        gc.freeze()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--loadgen",
            "--url",
            f"http://127.0.0.1:{port}",
            "--secret",
            stripe.webhook_secret,
            "--template",
            str(template),
            "--events",
            str(args.events),
            "--rate",
            str(args.rate),
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )

        async def seats() -> None:
            for m in range(args.members):
                await runtime.call("organization", ORG, "ensure_seat", {"userId": f"gh-{9000 + m}"})
                await asyncio.sleep(args.events / args.rate / args.members / 2)
            for m in range(1, args.members, 10):
                await runtime.call(
                    "organization", ORG, "release_seat", {"userId": admin, "login": f"member-{m:03d}"}
                )

        seat_task = asyncio.create_task(seats())
        out, _ = await proc.communicate()
        await seat_task
        load = json.loads(out)

        async def drained() -> dict[str, Any] | None:
            stats: dict[str, Any] = await runtime.call("organization", ORG, "stripe_event_stats")
            billing = await runtime.call("organization", ORG, "billing")
            ok = stats["received"] >= len(load["acked"]) and billing["sync"]["pending"] == 0
            return {"stats": stats, "billing": billing} if ok else None

        try:
            final = await wait_until(drained, 300, "every event recorded and every seat synced")
        except TimeoutError:
            final = {
                "stats": await runtime.call("organization", ORG, "stripe_event_stats"),
                "billing": await runtime.call("organization", ORG, "billing"),
            }
        keys = {k for _, _, k in stripe.quantity_updates}
        item_requests = [r for r in stripe.requests if r[1].startswith("/v1/subscription_items/")]
        seat_changes = len(
            await runtime.call("audit-log", ORG, "list", {"kind": "billing.seat_taken", "limit": 1000})
        ) + len(
            await runtime.call("audit-log", ORG, "list", {"kind": "billing.seat_released", "limit": 1000})
        )
        result.update(
            stripe_webhook_ack_ms_p50=_pct(load["latencies"], 0.50),
            stripe_webhook_ack_ms_p99=_pct(load["latencies"], 0.99),
            events=len(load["acked"]),
            sent=load["sent"],
            rate_per_s=round(load["sent"] / load["elapsed_s"], 1),
            non_200=sum(v for k, v in load["statuses"].items() if k != "200"),
            lost=len(load["acked"]) - final["stats"]["received"],
            applied_twice=final["stats"]["appliedTwice"] + load["not_deduped"],
            outcomes=final["stats"]["byOutcome"],
            seat_changes=seat_changes,
            stripe_calls=len(keys),
            stripe_requests=len(item_requests),
            # Subscription states delivered after a newer one: recognised and not applied.
            stale_ignored=final["stats"]["byOutcome"].get("stale", 0),
        )
    finally:
        if server_task is not None:
            uv.should_exit = True
            await server_task
        await runtime.close()
        stripe.stop()
        fake_gh.stop()
    return result


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=["ray", "inprocess"], default="ray")
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--rate", type=int, default=100)
    parser.add_argument("--members", type=int, default=40)
    parser.add_argument("--loadgen", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--secret", help=argparse.SUPPRESS)
    parser.add_argument("--template", help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    import uvloop

    uvloop.install()  # as `foundry serve` (uvicorn.run) runs
    cli = _parse()
    if cli.loadgen:
        print(json.dumps(asyncio.run(_load(cli))))
    else:
        print(json.dumps(asyncio.run(main(cli))))
