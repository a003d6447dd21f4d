"""``runtime.placement``: which process runs which host, and the mistakes it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from foundry.config import Settings
from foundry.runtime.placement import hosts_by_process, process_of


def test_the_default_packs_every_role_into_two_processes(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, runtime={"shards": {"audit-log": 2}})  # type: ignore[arg-type]
    processes = hosts_by_process(settings)
    assert sorted(processes) == ["main", "tasks"]
    assert sorted(processes["tasks"]) == [("sandbox", 0), ("task", 0)]
    assert ("audit-log", 1) in processes["main"]


def test_a_shard_entry_wins_over_its_role_and_the_default(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        runtime={"shards": {"audit-log": 2}, "placement": {"audit-log": "audit", "audit-log.1": "audit2"}},  # type: ignore[arg-type]
    )
    assert process_of(settings, "audit-log", 0) == "audit"
    assert process_of(settings, "audit-log", 1) == "audit2"
    assert process_of(settings, "user", 0) == "main"


@pytest.mark.parametrize(
    ("placement", "named"),
    [({"task": "Has Spaces"}, "Has Spaces"), ({"task.x": "t"}, "task.x"), ({"task": ""}, "''")],
)
def test_bad_names_are_refused_naming_them(tmp_path: Path, placement: dict[str, str], named: str) -> None:
    with pytest.raises(ValidationError, match=named):
        Settings(data_dir=tmp_path, runtime={"placement": placement})  # type: ignore[arg-type]
