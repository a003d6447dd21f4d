"""A pinned host process whose node leaves the cluster: its callers learn it at once, by name.

The node table is the one input here, given as Ray's ``ray.nodes()`` shapes it; the real-Ray side (a
process pinned by label, a start refused for a label no node has) is in tests/integration.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from foundry.config import Settings
from foundry.errors import ActorUnavailable
from foundry.runtime.node_watch import NodeWatch
from foundry.runtime.placement import DATA_LABEL, missing_node_labels


def node(label: str | None, alive: bool = True) -> dict[str, Any]:
    return {"NodeID": f"id-{label}", "Alive": alive, "Labels": {DATA_LABEL: label} if label else {}}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, runtime={"nodes": {"main": "disk-a", "tasks": "disk-b"}})  # type: ignore[arg-type]


def test_labels_count_only_on_live_nodes(settings: Settings) -> None:
    assert missing_node_labels(settings, [node("disk-a"), node("disk-b")]) == []
    assert missing_node_labels(settings, [node("disk-a"), node("disk-b", alive=False)]) == ["disk-b"]
    assert missing_node_labels(settings, [node(None)]) == ["disk-a", "disk-b"]


async def test_a_call_waiting_on_a_process_whose_node_leaves_fails_naming_the_node(
    settings: Settings,
) -> None:
    table = [node("disk-a"), node("disk-b")]
    watch = NodeWatch(settings, lambda: list(table))
    await watch.refresh()
    assert await watch.guard("tasks", asyncio.sleep(0, result="answered")) == "answered"

    never: asyncio.Future[str] = asyncio.get_running_loop().create_future()  # a call Ray holds
    waiting = asyncio.create_task(watch.guard("tasks", never))
    await asyncio.sleep(0.01)
    table[1] = node("disk-b", alive=False)
    await watch.refresh()
    with pytest.raises(ActorUnavailable, match=f"{DATA_LABEL}=disk-b"):
        await asyncio.wait_for(waiting, 1)
    assert never.cancelled()
    # New calls fail before they are sent; the other node's process is not affected.
    assert watch.reason("tasks") is not None
    assert watch.reason("main") is None
    assert await watch.guard("main", asyncio.sleep(0, result="fine")) == "fine"

    table[1] = node("disk-b")
    await watch.refresh()
    assert watch.reason("tasks") is None
    assert await watch.guard("tasks", asyncio.sleep(0, result="back")) == "back"


def test_node_label_values_are_checked_like_ray_labels(tmp_path: Path) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="not a label!"):
        Settings(data_dir=tmp_path, runtime={"nodes": {"main": "not a label!"}})  # type: ignore[arg-type]
