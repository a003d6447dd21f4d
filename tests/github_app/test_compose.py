"""The production ``compose.yaml`` parses and keeps what the self-hosting guide relies on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

COMPOSE = Path(__file__).resolve().parents[2] / "compose.yaml"


def _compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_foundry_runs_in_production_with_its_data_in_a_named_volume_and_no_public_port() -> None:
    compose = _compose()
    foundry = compose["services"]["foundry"]
    assert foundry["environment"]["FOUNDRY_MODE"] == "production"
    assert foundry["env_file"] == "foundry.env"
    assert foundry["restart"] == "unless-stopped"
    assert "ports" not in foundry, "only the proxy may reach Foundry"
    assert foundry["expose"] == ["7741"]
    assert "foundry-data:/data" in foundry["volumes"]
    assert "foundry-data" in compose["volumes"]
    # Inside the volume, so that a restore can rename a new data dir into place.
    assert foundry["environment"]["FOUNDRY_DATA_DIR"].startswith("/data/")


def test_caddy_terminates_tls_and_proxies_everything_to_foundry() -> None:
    caddy = _compose()["services"]["caddy"]
    command = caddy["command"]
    assert command[:2] == ["caddy", "reverse-proxy"]
    assert command[command.index("--to") + 1] == "foundry:7741"
    assert "${FOUNDRY_DOMAIN:?" in command[command.index("--from") + 1]
    assert {"80:80", "443:443"} <= set(caddy["ports"])
    assert caddy["restart"] == "unless-stopped"
