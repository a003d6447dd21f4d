"""``GET /metrics`` as an operator's Prometheus sees it after people used Foundry."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from tests.tasks.conftest import create_task, idle_session, running_server, wait_task

TOKEN = "scrape-0123456789"


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Sample name → [(labels, value)]."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def value(found: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    matching = [v for got, v in found.get(name, []) if labels.items() <= got.items()]
    assert matching, f"no sample {name}{labels}; have {sorted(found)}"
    return sum(matching)


async def test_metrics_are_off_by_default_then_need_the_token_and_cover_a_task_flow(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server, server.client() as anonymous:
        off = await anonymous.get("/metrics")
        assert off.status_code == 404
        assert "FOUNDRY_METRICS_TOKEN" in off.json()["detail"]

        server.settings.metrics_token = SecretStr(TOKEN)
        assert (await anonymous.get("/metrics")).status_code == 401
        wrong = await anonymous.get("/metrics", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert wrong.json()["error"] == "unauthorized"

        # Counters count since this process started (other tests may share it): compare to before.
        before = samples((await anonymous.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})).text)
        async with server.signed_in("alice") as alice, server.websocket(alice):
            created = await create_task(alice)
            await wait_task(alice, created["taskId"], idle_session)
            assert (await alice.get("/v1/made-up/path")).status_code == 404
            delivery = await anonymous.post("/v1/webhooks/github", content=b"{}")  # unsigned: refused
            assert delivery.status_code in (400, 401)

            scraped = await anonymous.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
            assert scraped.status_code == 200
            assert scraped.headers["content-type"].startswith("text/plain")
            found = samples(scraped.text)
            assert value(found, "foundry_websocket_connections") == 1

        route = "/v1/organizations/{org}/tasks"

        def grew(name: str, **labels: str) -> float:
            was = value(before, name, **labels) if _has(before, name, **labels) else 0.0
            return value(found, name, **labels) - was

        assert grew("foundry_http_requests_total", method="POST", route=route, status="201") == 1
        assert grew("foundry_http_request_duration_seconds_count", method="POST", route=route) == 1
        # Made-up URLs never become labels of their own.
        assert grew("foundry_http_requests_total", route="unmatched", status="404") >= 1
        assert not [labels for labels, _ in found["foundry_http_requests_total"] if "made" in labels["route"]]
        assert grew("foundry_webhook_deliveries_received_total", source="github", outcome="rejected") == 1
        assert grew("foundry_commands_total", role="task", outcome="ok") >= 1
        assert grew("foundry_command_duration_seconds_count", role="organization") >= 1
        assert value(found, "foundry_instances_awake", role="task") >= 1
        assert value(found, "foundry_sandboxes", state="running") >= 1
        assert value(found, "foundry_agent_turns_running") == 0  # the turn ended
        # The task detail polled above came from the snapshot cache once warm; sessions from the
        # session cache.
        assert grew("foundry_api_cache_answers_total", cache="snapshot", outcome="hits") >= 1
        assert grew("foundry_api_cache_answers_total", cache="auth", outcome="hits") >= 1
        assert value(found, "foundry_api_snapshot_cache_bytes") > 0
        assert value(found, "foundry_outbox_dead_letters", role="organization") == 0
        # Everything in this process: one process label.
        assert {labels["process"] for labels, _ in found["foundry_http_requests_total"]} == {"api"}


def _has(found: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> bool:
    return any(labels.items() <= got.items() for got, _ in found.get(name, []))
