"""Prometheus metrics: every family Foundry exports, in one place.

Each process keeps its own metrics in prometheus_client's default registry: the API process (HTTP,
websockets, webhooks received) and each host process (commands, instances, outboxes, sandboxes,
turns). ``GET /metrics`` on the API process answers for all of them: it asks every host process for
its exposition (`HostProcess.metrics`), labels each sample with ``process`` and merges the families
(`merged_exposition`). With the in-process runtime everything lives in one registry already.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

# --------------------------------------------------------------------------------------- API process
HTTP_REQUESTS = Counter(
    "foundry_http_requests",
    "HTTP requests answered, by route template and status.",
    ["method", "route", "status"],
)
HTTP_SECONDS = Histogram(
    "foundry_http_request_duration_seconds",
    "Time to answer an HTTP request, by route template.",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
WEBHOOKS_RECEIVED = Counter(
    "foundry_webhook_deliveries_received",
    "Webhook deliveries received, by source (github, stripe) and answer (accepted, rejected).",
    ["source", "outcome"],
)

# -------------------------------------------------------------------------------------- host process
COMMANDS = Counter(
    "foundry_commands",
    "Mailbox commands run, by role and outcome (ok, refused, failed).",
    ["role", "outcome"],
)
COMMAND_SECONDS = Histogram(
    "foundry_command_duration_seconds",
    "Time a mailbox command ran (its transaction included), by role.",
    ["role"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
TURNS_RUNNING = Gauge("foundry_agent_turns_running", "Agent turns running now.")
WEBHOOKS_PROCESSED = Counter(
    "foundry_webhook_deliveries_processed",
    "Webhook deliveries processed by the actors, by source and outcome (applied, ignored, failed, …).",
    ["source", "status"],
)

#: Hosts and sandbox admissions alive in this process, by id (weak: a closed runtime drops out by
#: itself; by id because an admission is a dataclass, which is not hashable).
_HOSTS: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()
_ADMISSIONS: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()


def track_host(host: Any) -> None:
    """Report this host's instances in this process's metrics (called when a host starts)."""
    _HOSTS[id(host)] = host


def track_admission(admission: Any) -> None:
    """Report this sandbox admission's counts in this process's metrics."""
    _ADMISSIONS[id(admission)] = admission


class _RuntimeCollector(Collector):
    """Gauges read at scrape time from the live hosts and sandbox admissions of this process."""

    def collect(self) -> Iterator[Metric]:
        awake = GaugeMetricFamily(
            "foundry_instances_awake", "Instances awake (database open).", labels=["role"]
        )
        depth = GaugeMetricFamily(
            "foundry_mailbox_depth", "Commands queued or running in awake instances.", labels=["role"]
        )
        pending = GaugeMetricFamily(
            "foundry_instances_pending",
            "Instances with queued commands or undelivered outbox sends, asleep ones included.",
            labels=["role"],
        )
        dead = GaugeMetricFamily(
            "foundry_outbox_dead_letters",
            "Outbox sends that gave up (see foundry actors ls).",
            labels=["role"],
        )
        totals: dict[str, list[int]] = {}
        for host in list(_HOSTS.values()):
            counts = totals.setdefault(host.role.name, [0, 0, 0, 0])
            stats = host.metrics_snapshot()
            for i, name in enumerate(("awake", "mailbox", "pending", "dead")):
                counts[i] += stats[name]
        for role, (a, m, p, d) in sorted(totals.items()):
            awake.add_metric([role], a)
            depth.add_metric([role], m)
            pending.add_metric([role], p)
            dead.add_metric([role], d)
        yield from (awake, depth, pending, dead)
        sandboxes = GaugeMetricFamily("foundry_sandboxes", "Sandboxes by state.", labels=["state"])
        starting = running = queued = 0
        for admission in list(_ADMISSIONS.values()):
            starting += len(admission.starting)
            running += admission.running_count()
            queued += len(admission.queue)
        for state, value in (("starting", starting), ("running", running), ("queued", queued)):
            sandboxes.add_metric([state], value)
        yield sandboxes


REGISTRY.register(_RuntimeCollector())


def count_files(directory: Path) -> int:
    """Entries of a marker directory (0 when it does not exist yet)."""
    try:
        return sum(1 for _ in directory.iterdir())
    except FileNotFoundError:
        return 0


def local_exposition() -> str:
    """This process's metrics in Prometheus text format."""
    return generate_latest(REGISTRY).decode()


class _Merged(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def merged_exposition(by_process: dict[str, str]) -> bytes:
    """One exposition from several processes' (process name → text): every sample gains a
    ``process`` label, and families of the same name are merged into one."""
    families: dict[str, Metric] = {}
    for process, text in by_process.items():
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
            for sample in family.samples:
                merged.samples.append(sample._replace(labels={**sample.labels, "process": process}))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(families.values()))
    return generate_latest(registry)
