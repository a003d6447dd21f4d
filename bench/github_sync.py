"""GitHub mirror figures; prints one JSON object.

    .venv/bin/python bench/github_sync.py [--backend ray|inprocess] [--repos 1000] [--prs 5000]
        [--members 200] [--rate 200] [--seconds 30]

Against the fake GitHub, through the real PyGithub driver (throttling off), on the chosen runtime
(``ray``, as ``foundry serve`` runs, by default):

* ``full_sync_s``: a first sync of an organization with ``--repos`` repositories, ``--prs`` open pull
  requests and ``--members`` members — from the installation showing up to the organization holding
  every repository and virtual task;
* ``resync_s`` and ``task_summary_writes``: a second sync with nothing changed on GitHub; writes are
  the organization's ``task_summaries`` row writes (its own count), cross-checked by comparing the
  rows before and after and by counting ``taskSummariesUpdated`` events (``task_summary_events``);
* webhook ingest at ``--rate`` deliveries/s for ``--seconds`` s through the real HTTP endpoint, from a
  separate load-generator process, open loop (sends are scheduled, not waiting for answers): a mix of
  review comments, PR synchronizes, check runs and pushes on the synced PRs, plus ~5 % redeliveries
  of earlier deliveries. ``webhook_ack_ms_p50/p99`` are the 202 latencies seen by the sender;
  ``delivered`` counts distinct deliveries acknowledged; ``lost`` those acknowledged but never applied;
  ``applied_twice`` deliveries whose handler ran more than once plus redeliveries not recognised as
  duplicates; ``delivery_outcomes`` how many were applied, ignored or failed; ``drain_after_load_s``
  and ``webhook_processed_per_s`` show how far processing (which runs behind the acknowledgements)
  lagged. Reaching 500/s takes ``--rate`` 500 or more: the figure cannot exceed the send rate.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
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

ORG = "bench-org"
INSTALLATION = 5001


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * p))], 2) if ordered else 0.0


# ------------------------------------------------------------------------------------------ load generator


def _payloads(
    repos: list[tuple[int, str]], prs_per_repo: int, count: int, seed: int
) -> list[tuple[str, str, bytes]]:
    """(event, delivery id, body) for ``count`` deliveries, ~5 % of them redeliveries."""
    from tests.fakes.webhooks import dumps, example

    rng = random.Random(seed)
    templates = {
        "comment": example("pull_request_review_comment", "created"),
        "pull": example("pull_request", "synchronize"),
        "check": example("check_run", "completed", 1),
        "push": example("push", None, 4),
    }
    out: list[tuple[str, str, bytes]] = []
    for i in range(count):
        if out and rng.random() < 0.05:
            out.append(out[rng.randrange(len(out))])  # GitHub redelivers: same id, same body
            continue
        repo_id, full_name = repos[rng.randrange(len(repos))]
        number = rng.randrange(1, prs_per_repo + 1)
        roll = rng.random()
        kind = "comment" if roll < 0.4 else "pull" if roll < 0.6 else "check" if roll < 0.8 else "push"
        payload: dict[str, Any] = json.loads(json.dumps(templates[kind]))
        payload["installation"] = {"id": INSTALLATION}
        payload["repository"].update(id=repo_id, full_name=full_name, name=full_name.split("/")[1])
        # The examples were recorded on another account: a repository of an account other than the
        # installation's is ignored, which would measure nothing but the refusal.
        payload["repository"]["owner"]["login"] = ORG
        sha = uuid.uuid4().hex + uuid.uuid4().hex[:8]
        if kind == "comment":
            payload["pull_request"].update(number=number, head={"ref": f"feature-{number}", "sha": sha})
            payload["pull_request"]["updated_at"] = "2020-01-01T00:00:00Z"  # older: the item is the news
            payload["comment"]["id"] = 1_000_000 + i
            event = "pull_request_review_comment"
        elif kind == "pull":
            payload["number"] = number
            payload["pull_request"].update(number=number, title=f"Bench PR {number} rev {i}")
            payload["pull_request"]["head"].update(ref=f"feature-{number}", sha=sha)
            payload["pull_request"]["updated_at"] = (
                f"2030-01-01T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}Z"
            )
            event = "pull_request"
        elif kind == "check":
            payload["check_run"].update(head_sha=sha, pull_requests=[])
            event = "check_run"
        else:
            payload.update(ref=f"refs/heads/feature-{number}", after=sha)
            event = "push"
        out.append((event, str(uuid.uuid4()), dumps(payload)))
    return out


class _Connections:
    """A pool of keep-alive HTTP/1.1 connections speaking just enough HTTP for this endpoint.

    httpx costs more CPU per request than the endpoint itself, and on a 2-core machine the load
    generator competes with the server it measures; its pool also degrades badly under a backlog.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def post(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        """POST on an idle connection; one the server closed meanwhile (uvicorn's keep-alive
        timeout) is replaced and the request sent again — safe, deliveries dedupe by id."""
        for attempt in (1, 2):
            fresh = attempt == 2 or not self.idle
            conn = await asyncio.open_connection(self.host, self.port) if fresh else self.idle.pop()
            try:
                answer = await self._exchange(conn, path, headers, body)
            except (ConnectionError, asyncio.IncompleteReadError):
                conn[1].close()
                if fresh or attempt == 2:
                    raise
                continue
            self.idle.append(conn)
            return answer
        raise AssertionError("unreachable")

    async def _exchange(
        self,
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        path: str,
        headers: dict[str, str],
        body: bytes,
    ) -> tuple[int, bytes]:
        reader, writer = conn
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Length: {len(body)}\r\n{head}\r\n".encode()
            + body
        )
        status_line = await reader.readline()
        if not status_line:
            raise ConnectionResetError("the server closed the connection")
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        return int(status_line.split()[1]), await reader.readexactly(length)


async def _load(args: argparse.Namespace) -> dict[str, Any]:
    from urllib.parse import urlsplit

    from tests.fakes.webhooks import signed_headers

    layout = json.loads(Path(args.layout).read_text())
    plan = _payloads([tuple(r) for r in layout["repos"]], layout["prsPerRepo"], args.rate * args.seconds, 7)
    signed = [
        (event, delivery, body, signed_headers(args.secret, body, event, delivery))
        for event, delivery, body in plan
    ]
    url = urlsplit(args.url)
    pool = _Connections(url.hostname or "127.0.0.1", url.port or 80)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    acked: set[str] = set()
    not_deduped = 0
    seen: set[str] = set()
    loop = asyncio.get_running_loop()

    async def send(
        scheduled: float, event: str, delivery: str, body: bytes, headers: dict[str, str], redelivery: bool
    ) -> None:
        nonlocal not_deduped
        try:
            status, answer = await pool.post("/v1/webhooks/github", headers, body)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            statuses[-1] = statuses.get(-1, 0) + 1
            print(f"send failed: {exc!r}", file=sys.stderr)
            return
        # From the moment the delivery was due: client-side delays count against the server.
        latencies.append((loop.time() - scheduled) * 1000)
        statuses[status] = statuses.get(status, 0) + 1
        if status == 202:
            acked.add(delivery)
            if redelivery and not json.loads(answer).get("duplicate"):
                # Only a redelivery whose first delivery was already acknowledged must dedupe.
                not_deduped += 1

    tasks = []
    start = loop.time()
    for i, (event, delivery, body, headers) in enumerate(signed):
        due = start + i / args.rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        redelivery = delivery in seen and delivery in acked
        seen.add(delivery)
        tasks.append(asyncio.create_task(send(due, event, delivery, body, headers, redelivery)))
    await asyncio.gather(*tasks)
    elapsed = loop.time() - start
    return {
        "latencies": latencies,
        "statuses": statuses,
        "acked": sorted(acked),
        "not_deduped": not_deduped,
        "elapsed_s": elapsed,
        "sent": len(plan),
    }


# ------------------------------------------------------------------------------------------ the bench


async def main(args: argparse.Namespace) -> dict[str, Any]:
    import uvicorn

    from foundry.config import Settings
    from foundry.drivers.github.fake import FakeGitHub
    from foundry.http.app import create_app
    from foundry.mock import start_fake_github
    from foundry.wiring import build_runtime
    from tests.http.conftest import free_port

    data_dir = Path(tempfile.mkdtemp(prefix="foundry-bench-github-"))
    port = free_port()
    base = Settings(
        data_dir=data_dir,
        port=port,
        log_level="WARNING",
        runtime={"backend": args.backend, "namespace": f"bench-{uuid.uuid4().hex[:6]}", "idle_seconds": 3600},  # type: ignore[arg-type]
    )
    fake, settings = start_fake_github(base)
    # The benchmark's own organization, next to the mock seed.
    fake.add_org(ORG, 8001)
    fake.add_installation(INSTALLATION, ORG)
    prs_per_repo = max(1, args.prs // args.repos)
    repos: list[tuple[int, str]] = []
    for r in range(args.repos):
        repo_id = fake.add_repo(INSTALLATION, ORG, f"repo-{r:04d}", id=3_000_000 + r)
        repos.append((repo_id, f"{ORG}/repo-{r:04d}"))
        for n in range(1, prs_per_repo + 1):
            fake.add_pull(f"{ORG}/repo-{r:04d}", n, f"Change {n} of repo {r}", f"feature-{n}", author=ORG)
    for m in range(args.members):
        fake.add_member(ORG, f"member-{m:03d}", "admin" if m < 5 else "member")

    runtime = build_runtime(settings)
    await runtime.start()
    result: dict[str, Any] = {"backend": args.backend, "repos": args.repos, "prs": prs_per_repo * args.repos}
    server_task: asyncio.Task[None] | None = None
    try:
        org = runtime.actor("organization", ORG)

        async def synced(generation: int) -> bool:
            status = await runtime.call("organization", ORG, "github_status")
            if status.get("syncGeneration", 0) < generation:
                return False
            data = await runtime.call("github-data", ORG, "status")
            return bool(data["syncStatus"] == "synced" and data["generation"] >= generation)

        # ---- full sync: the installation shows up (as discovery reports it), the sync runs
        started = time.perf_counter()
        await org.send(
            "sync_from_github",
            {
                "kind": "organization",
                "githubLogin": ORG,
                "githubAccountId": 8001,
                "displayName": "Bench Org",
                "installationId": INSTALLATION,
                "members": [],
            },
            wait=True,
            timeout=60,
        )
        await wait_until(lambda: synced(1), 600, "the full sync")
        result["full_sync_s"] = round(time.perf_counter() - started, 2)
        snapshot = await runtime.call("organization", ORG, "get")
        result["synced_repos"] = len(snapshot["repos"])
        result["synced_tasks"] = len(snapshot["taskSummaries"])
        result["synced_members"] = len(await runtime.call("organization", ORG, "members"))
        first = json.loads((await runtime.call("github-data", ORG, "status"))["lastSyncStats"])
        result["full_sync_phases_s"] = {k: first[k] for k in ("fetchS", "storeS", "applyS")}

        # ---- resync with nothing changed
        events: list[str] = []

        async def watch() -> None:
            shard = runtime.shard_for("organization", ORG)
            async for batch in runtime.subscribe("organization", shard):
                events.extend(e.event for e in batch if e.topic == f"organization:{ORG}")

        watcher = asyncio.create_task(watch())
        await asyncio.sleep(1.0)  # the stream attaches
        started = time.perf_counter()
        await runtime.actor("github-data", ORG).send("sync", {"reason": "bench"}, wait=True)
        await wait_until(lambda: synced(2), 600, "the resync")
        result["resync_s"] = round(time.perf_counter() - started, 2)
        await asyncio.sleep(0.5)
        watcher.cancel()
        stats = json.loads((await runtime.call("github-data", ORG, "status"))["lastSyncStats"])
        result["task_summary_writes"] = stats["taskSummaryWrites"]
        result["resync_phases_s"] = {k: stats[k] for k in ("fetchS", "storeS", "applyS")}
        result["task_summary_events"] = events.count("taskSummariesUpdated")
        after = await runtime.call("organization", ORG, "get")
        result["task_rows_unchanged"] = after["taskSummaries"] == snapshot["taskSummaries"]

        # ---- webhook ingest
        app = create_app(settings, runtime=runtime, fake_github=fake)
        uv = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
        )
        server_task = asyncio.create_task(uv.serve())
        await wait_until(lambda: asyncio.sleep(0, uv.started), 30, "uvicorn")
        layout = data_dir / "layout.json"
        layout.write_text(json.dumps({"repos": repos, "prsPerRepo": prs_per_repo}))
        secret = settings.github.webhook_secret.get_secret_value()
        before = await runtime.call("github-data", ORG, "status")
        # The fake GitHub lives in this (the server's) process only because of this harness: drop its
        # request log and move everything built so far out of the collector's way, as a server would
        # after start-up. Otherwise every gen-2 collection rescans the fake's 5,000 PRs and request log.
        fake.clear_requests()
        gc.collect()
        gc.freeze()
        result["server_gc_frozen_before_load"] = True
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--loadgen",
            "--url",
            f"http://127.0.0.1:{port}",
            "--secret",
            secret,
            "--layout",
            str(layout),
            "--rate",
            str(args.rate),
            "--seconds",
            str(args.seconds),
            "--out",
            str(data_dir / "load.json"),
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        # The figures go through a file: anything a library prints to stdout cannot corrupt them.
        if await proc.wait() != 0:
            raise RuntimeError(f"the load generator exited with status {proc.returncode}")
        load = json.loads((data_dir / "load.json").read_text())
        delivered = len(load["acked"])
        expected = before["deliveryCount"] + delivered

        async def drained() -> dict[str, Any] | None:
            status: dict[str, Any] = await runtime.call("github-data", ORG, "status")
            processed = status["deliveryCount"] - status["deliveriesQueued"]
            return status if processed >= expected else None

        drain_started = time.perf_counter()
        try:
            final = await wait_until(drained, 300, "every delivery processed")
        except TimeoutError:
            final = await runtime.call("github-data", ORG, "status")
        result.update(
            webhook_ack_ms_p50=_pct(load["latencies"], 0.50),
            webhook_ack_ms_p99=_pct(load["latencies"], 0.99),
            webhook_rate_per_s=round(load["sent"] / load["elapsed_s"], 1),
            sent=load["sent"],
            delivered=delivered,
            lost=expected - (final["deliveryCount"] - final["deliveriesQueued"]),
            applied_twice=final["deliveriesAppliedTwice"] + load["not_deduped"],
            non_202=sum(v for k, v in load["statuses"].items() if k != "202"),
            drain_after_load_s=round(time.perf_counter() - drain_started, 2),
            # Of every delivery recorded (the resync's and earlier ones included): an "ignored" or
            # "failed" majority would mean the benchmark measures refusals, not applies.
            delivery_outcomes=final["deliveryOutcomes"],
        )
        # Deliveries applied per second from the first send to the last one applied: processing
        # (batched, behind the acknowledgements) may lag a sustained burst and catch up after it.
        result["webhook_processed_per_s"] = round(
            delivered / (load["elapsed_s"] + result["drain_after_load_s"]), 1
        )
    finally:
        if server_task is not None:
            uv.should_exit = True
            await server_task
        await runtime.close()
        await asyncio.to_thread(FakeGitHub.stop, fake)
    return result


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=["ray", "inprocess"], default="ray")
    parser.add_argument("--repos", type=int, default=1000)
    parser.add_argument("--prs", type=int, default=5000)
    parser.add_argument("--members", type=int, default=200)
    parser.add_argument("--rate", type=int, default=200)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--loadgen", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--secret", help=argparse.SUPPRESS)
    parser.add_argument("--layout", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    import uvloop

    uvloop.install()  # as `foundry serve` (uvicorn.run) runs
    cli = _parse()
    if cli.loadgen:
        Path(cli.out).write_text(json.dumps(asyncio.run(_load(cli))))
    else:
        print(json.dumps(asyncio.run(main(cli)), indent=2))
