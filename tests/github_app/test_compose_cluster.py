"""``compose.cluster.yaml`` (two Ray data nodes, two API processes, Caddy) keeps a working layout.

No Docker engine runs here, so the file is read, not run. The checks take the host processes, the
node label and the settings' format from Foundry's own placement and settings code: a change to the
default placement, or a label or process misspelt in the file, fails here rather than at the first
start of a real cluster. Each check is a function of the parsed file so that the last test can show
it rejecting a broken copy.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from foundry.config import Settings
from foundry.runtime.placement import (
    DATA_LABEL,
    check_nodes_named,
    check_placement,
    hosts_by_process,
    missing_node_labels,
)

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.cluster.yaml"
HEAD, WORKER = "ray-head", "ray-worker"
DATA_NODES = (HEAD, WORKER)
APIS = ("api-1", "api-2")
#: The port `foundry serve` listens on when FOUNDRY_PORT is not set (the compose file sets none).
API_PORT = Settings.model_fields["port"].default


def _compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service["environment"]
    assert isinstance(env, dict), "environment as a mapping, so that the checks can read it"
    return {key: str(value) for key, value in env.items()}


def _shell_words(service: dict[str, Any]) -> list[str]:
    """The service's command as words: a list, or the script of ``sh -c``."""
    command = service["command"]
    if command[:2] == ["sh", "-c"]:
        return shlex.split(command[2])
    return [str(word) for word in command]


def _ray_start(service: dict[str, Any]) -> dict[str, str]:
    """The options of the service's ``ray start`` (``--opt=value``, ``--opt value``, or a flag: "")."""
    words = _shell_words(service)
    assert words[:2] == ["ray", "start"], f"not a Ray node: {words}"
    options: dict[str, str] = {}
    rest = words[2 : words.index("&&")] if "&&" in words else words[2:]
    i = 0
    while i < len(rest):
        name, eq, value = rest[i].partition("=")
        assert name.startswith("--"), f"unexpected word {rest[i]!r} in ray start"
        if not eq and i + 1 < len(rest) and not rest[i + 1].startswith("--"):
            value = rest[i + 1]
            i += 1
        options[name] = value
        i += 1
    return options


def _labels(service: dict[str, Any]) -> dict[str, str]:
    """The node labels ``ray start --labels k=v,k=v`` gives the service's Ray node."""
    raw = _ray_start(service).get("--labels", "")
    return dict(pair.split("=", 1) for pair in raw.split(",") if pair)


def _data_volume(compose: dict[str, Any], name: str) -> str:
    """The named volume mounted at /data in service ``name``."""
    mounts = [m for m in compose["services"][name].get("volumes", []) if m.split(":")[1] == "/data"]
    assert len(mounts) == 1, f"{name}: one volume at /data, got {mounts}"
    volume = mounts[0].split(":")[0]
    assert volume in compose["volumes"], f"{name}: /data is not a named volume ({volume})"
    return str(volume)


def _api_settings(service: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings `foundry serve` reads from the service's environment (its FOUNDRY_* only)."""
    with monkeypatch.context() as env:
        for key in [k for k in os.environ if k.startswith("FOUNDRY_")]:
            env.delenv(key)
        for key, value in _env(service).items():
            if key.startswith("FOUNDRY_"):
                env.setenv(key, value)
        return Settings()


def check_data_nodes(compose: dict[str, Any]) -> None:
    """A head and a worker that joins it, with distinct data labels and distinct data volumes."""
    services = compose["services"]
    head, worker = _ray_start(services[HEAD]), _ray_start(services[WORKER])
    assert "--head" in head
    assert "--block" in head
    assert "--block" in worker
    assert worker["--address"] == f"{HEAD}:{head['--port']}"
    labels = [_labels(services[name]).get(DATA_LABEL) for name in DATA_NODES]
    assert None not in labels, f"every data node carries a {DATA_LABEL} label: {labels}"
    assert len(set(labels)) == 2, f"distinct {DATA_LABEL} labels: {labels}"
    assert _data_volume(compose, HEAD) != _data_volume(compose, WORKER)


def check_ray_nodes(compose: dict[str, Any]) -> None:
    """Every Ray node (API containers included) has the same token, niceness 0, shared memory and
    the same data directory path inside /data."""
    services = compose["services"]
    nodes = [services[name] for name in DATA_NODES + APIS]
    tokens = set()
    for node in nodes:
        env = _env(node)
        assert env["RAY_AUTH_MODE"] == "token"
        tokens.add(env["RAY_AUTH_TOKEN"])
        assert env["RAY_worker_niceness"] == "0"
        assert env["FOUNDRY_DATA_DIR"] == "/data/foundry"
        assert node["shm_size"] == "1gb"
        # Below the shared memory: Ray would fall back to /tmp otherwise.
        assert int(_ray_start(node)["--object-store-memory"]) < 1024**3
        # The hosts read their secrets from their node's environment, the API processes from theirs.
        assert node["env_file"] == "foundry.env"
        assert node["restart"] == "unless-stopped"
    assert len(tokens) == 1, "one Ray token for the whole cluster"
    assert "${RAY_AUTH_TOKEN:?" in tokens.pop()


def check_api_processes(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Both API processes join the head, in production, with every host process of the default
    placement pinned to a label that a data node carries, and no port published."""
    services = compose["services"]
    head_address = f"{HEAD}:{_ray_start(services[HEAD])['--port']}"
    labels = [_labels(services[name]) for name in DATA_NODES]
    carried = {node_labels.get(DATA_LABEL) for node_labels in labels}
    # Ray's node table as the cluster would show it once both data nodes have joined.
    node_table: list[dict[str, object]] = [{"Alive": True, "Labels": node_labels} for node_labels in labels]
    first = services[APIS[0]]
    for name in APIS:
        api = services[name]
        assert api["command"] == first["command"], f"{name} runs another command"
        assert _env(api) == _env(first), f"{name} has other settings"
        words = _shell_words(api)
        assert words[-3:] == ["exec", "foundry", "serve"], words
        ray = _ray_start(api)
        assert ray["--address"] == head_address
        assert ray["--num-cpus"] == "0"
        assert DATA_LABEL not in _labels(api)
        settings = _api_settings(api, monkeypatch)
        assert settings.mode == "production"
        assert settings.runtime.ray_address == head_address
        check_placement(settings)
        check_nodes_named(settings)
        processes = set(hosts_by_process(settings))
        assert set(settings.runtime.nodes) == processes, "every host process pinned to a data node"
        assert missing_node_labels(settings, node_table) == []
        assert set(settings.runtime.nodes.values()) == carried, "each data node holds a process"
        assert "ports" not in api, "only the proxy may reach the API processes"
        assert api["expose"] == [str(API_PORT)]
        assert {HEAD, WORKER} <= set(api["depends_on"])
    published = [name for name, service in services.items() if "ports" in service]
    assert published == ["proxy"]


def _caddy_upstreams(caddyfile: str) -> tuple[str, list[str], str]:
    """The site address, the reverse_proxy upstreams and the proxy block's text of a Caddyfile."""
    text = "\n".join(line.split("#", 1)[0] for line in caddyfile.splitlines())
    site = text.split("{\n", 1)[0].strip()
    match = re.search(r"^\s*reverse_proxy\s+([^{\n]+)\{([^}]*)\}", text, re.MULTILINE)
    assert match, "a reverse_proxy block"
    return site, match.group(1).split(), match.group(2)


def check_proxy(compose: dict[str, Any]) -> None:
    """Caddy serves FOUNDRY_DOMAIN and balances every path over both API services."""
    proxy = compose["services"]["proxy"]
    command = proxy["command"]
    config = command[command.index("--config") + 1]
    mounted = {m.split(":")[1]: m.split(":")[0] for m in proxy["volumes"]}
    caddyfile = ROOT / mounted[config]
    site, upstreams, block = _caddy_upstreams(caddyfile.read_text())
    assert site == "{$FOUNDRY_DOMAIN}"
    assert "${FOUNDRY_DOMAIN:?" in proxy["environment"]["FOUNDRY_DOMAIN"]
    assert sorted(upstreams) == [f"{name}:{API_PORT}" for name in APIS]
    assert set(APIS) <= set(proxy["depends_on"])
    # Why the file exists: a request is retried on the other API process when one is down.
    assert "lb_try_duration" in block
    assert "health_uri /healthz" in block
    assert {"80:80", "443:443"} <= set(proxy["ports"])


def test_two_data_nodes_with_their_own_labels_and_volumes() -> None:
    check_data_nodes(_compose())


def test_every_ray_node_shares_the_token_niceness_shared_memory_and_data_path() -> None:
    check_ray_nodes(_compose())


def test_api_processes_join_the_head_with_every_host_process_pinned(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    check_api_processes(_compose(), monkeypatch)


def test_the_proxy_balances_over_both_api_processes() -> None:
    check_proxy(_compose())


def test_the_checks_reject_a_misspelt_label_or_an_unpinned_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compose = _compose()
    misspelt = copy.deepcopy(compose)
    head = misspelt["services"][HEAD]["command"]
    head[head.index("--labels=foundry-data=node-a")] = "--labels=foundry-data=node-A"
    with pytest.raises(AssertionError):
        check_api_processes(misspelt, monkeypatch)
    unpinned = copy.deepcopy(compose)
    for name in APIS:
        unpinned["services"][name]["environment"]["FOUNDRY_RUNTIME__NODES"] = json.dumps({"main": "node-a"})
    with pytest.raises(AssertionError):
        check_api_processes(unpinned, monkeypatch)
