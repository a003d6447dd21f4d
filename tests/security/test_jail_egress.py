"""``sandbox.network = egress``: a jail that reaches the internet and nothing of this machine.

There is no internet offline, so the test builds one: a network namespace ("the internet") joined to
the host by a veth pair, with the host routing a public test range (203.0.113.0/24), two private
ranges and the cloud metadata address to it. Servers there and on the host answer with their name.
From inside a real egress jail, through the process API an agent uses, each target is dialled:

* allowed: the public server (through pasta and the host's routing, exactly as a model API or
  GitHub would be reached), and a private server named in ``egress_allow``;
* blocked, and failing at once: the host's loopback, the host's primary address, an address the host
  owns on another interface, the metadata address and an unlisted private server, although each one
  answers the host itself (checked first, so no target can pass by being absent).

What this cannot prove offline: that a real internet host is reachable (a registry the machine
reaches, if any, is tried in a second test), and behaviour on hosts whose resolver is on loopback.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from foundry.demo_agent.launcher import launcher_script
from foundry.drivers.sandbox import SandboxIsolationUnavailable
from foundry.drivers.sandbox.binary import find_binary
from foundry.drivers.sandbox.client import SandboxAgentClient
from foundry.drivers.sandbox.egress_rules import host_network
from foundry.drivers.sandbox.jail import JailPolicy, find_pasta
from foundry.drivers.sandbox.local import LocalSandboxProvider
from foundry.drivers.sandbox.spawn import descendants
from tests.procs import alive as running
from tests.tasks.conftest import create_task, idle_session, running_server, wait_task

pytestmark = [
    pytest.mark.security,
    pytest.mark.skipif(find_pasta() is None, reason="pasta (Debian package passt) is not installed"),
]

PUBLIC = "203.0.113.10"
METADATA = "169.254.169.254"
LAN_ALLOWED = "10.123.45.10"
LAN_BLOCKED = "10.123.46.10"
HOST_OTHER = "198.51.100.1"  # an address of this machine on an interface pasta does not copy
PORT = 8080
# Answers each connection with the address it was made to, on every address given.
SERVER = """
import socket, sys, threading
def serve(sock):
    while True:
        conn, _ = sock.accept()
        conn.sendall(conn.getsockname()[0].encode()); conn.close()
for address in sys.argv[2:]:
    sock = socket.create_server((address, int(sys.argv[1])))
    threading.Thread(target=serve, args=(sock,), daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"""
# Run inside the jail: dial each target, report what answered (or the error) and how long it took.
DIAL = """
import json, socket, sys, time
out = {}
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    start = time.monotonic()
    try:
        with socket.create_connection((host, int(port)), timeout=5) as conn:
            answer = conn.recv(100).decode() or "connected"
    except OSError as exc:
        answer = "error: " + (type(exc).__name__ if exc.errno is None else f"errno {exc.errno}")
    out[target] = [answer, time.monotonic() - start]
print(json.dumps(out))
"""


def ip(*args: str, netns_pid: int | None = None) -> None:
    prefix = ["nsenter", f"--net=/proc/{netns_pid}/ns/net"] if netns_pid else []
    subprocess.run([*prefix, "ip", *args], check=True, capture_output=True, timeout=10)


@dataclass
class Internet:
    holder: subprocess.Popen[bytes]
    servers: list[subprocess.Popen[str]]
    host_ip: str
    #: The port of the host's own servers (the made-up internet's listen on `PORT`).
    host_port: int


def start_server(addresses: list[str], port: int, netns_pid: int | None = None) -> subprocess.Popen[str]:
    prefix = ["nsenter", f"--net=/proc/{netns_pid}/ns/net"] if netns_pid else []
    server = subprocess.Popen(
        [*prefix, sys.executable, "-I", "-c", SERVER, str(port), *addresses],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    assert server.stdout.readline().strip() == "ready"
    return server


@pytest.fixture(scope="module")
def internet() -> Iterator[Internet]:
    """The made-up internet, the host's own servers, and the host routes to it (removed after)."""
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("nsenter") is None:
        pytest.skip("building a test internet needs root, ip and nsenter")
    # The routes below are machine-wide: another run of this test (another worktree, another worker)
    # waits for this one instead of failing on "route exists".
    lock = open("/tmp/foundry-test-internet.lock", "w")  # noqa: SIM115 - held until the fixture ends
    fcntl.flock(lock, fcntl.LOCK_EX)
    holder = subprocess.Popen(["unshare", "--net", "sleep", "infinity"])
    outside, inside = f"eg{os.getpid() % 100000}h", f"eg{os.getpid() % 100000}i"
    servers: list[subprocess.Popen[str]] = []
    try:
        time.sleep(0.1)
        ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        ip("link", "set", inside, "netns", str(holder.pid))
        ip("addr", "add", f"{HOST_OTHER}/32", "dev", outside)
        ip("link", "set", outside, "up")
        for net in (f"{PUBLIC}/32", f"{METADATA}/32", f"{LAN_ALLOWED}/32", f"{LAN_BLOCKED}/32"):
            ip("route", "add", net, "dev", outside)
        ip("link", "set", "lo", "up", netns_pid=holder.pid)
        ip("link", "set", inside, "up", netns_pid=holder.pid)
        for address in (PUBLIC, METADATA, LAN_ALLOWED, LAN_BLOCKED):
            ip("addr", "add", f"{address}/32", "dev", inside, netns_pid=holder.pid)
        ip("route", "add", f"{HOST_OTHER}/32", "dev", inside, netns_pid=holder.pid)
        ip("route", "add", "default", "via", HOST_OTHER, "dev", inside, "onlink", netns_pid=holder.pid)
        servers.append(start_server([PUBLIC, METADATA, LAN_ALLOWED, LAN_BLOCKED], PORT, holder.pid))
        host_ip = next(
            str(net.network_address)
            for net in host_network().addresses
            if net.version == 4
            and not net.network_address.is_loopback
            and str(net.network_address) != HOST_OTHER
        )
        with socket.create_server(("127.0.0.1", 0)) as probe:
            host_port = probe.getsockname()[1]
        servers.append(start_server(["127.0.0.1", host_ip, HOST_OTHER], host_port))
        yield Internet(holder, servers, host_ip, host_port)
    finally:
        for server in servers:
            server.kill()
            server.wait()
        holder.kill()  # the veth pair and its routes go with the namespace
        holder.wait()
        subprocess.run(["ip", "link", "del", outside], capture_output=True, check=False)
        lock.close()


def dial_from_host(target: str) -> str:
    host, port = target.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=3) as conn:
        return conn.recv(100).decode()


async def dial_from(
    endpoint_provider: LocalSandboxProvider, sandbox_id: str, targets: list[str]
) -> dict[str, list]:
    endpoint = await endpoint_provider.create(sandbox_id)
    async with SandboxAgentClient(endpoint) as client:
        ran = await client.run_process(sys.executable, ["-I", "-c", DIAL, *targets], timeout_ms=60_000)
    assert ran.exit_code == 0, ran.stderr
    return json.loads(ran.stdout)


@pytest.fixture
async def provider(tmp_path: Path) -> AsyncIterator[LocalSandboxProvider]:
    exits: asyncio.Queue[tuple[str, int | None, str]] = asyncio.Queue()
    provider = LocalSandboxProvider(
        tmp_path / "sandboxes",
        find_binary(),
        {"mock": launcher_script()},
        on_exit=lambda *args: exits.put_nowait(args),
        # The last entry covers an address of this machine: allowing a range never opens the host.
        # The first two are the same range written twice, which must not stop the sandbox.
        jail=JailPolicy(
            network="egress", egress_allow=(f"{LAN_ALLOWED}/32", LAN_ALLOWED, f"{HOST_OTHER}/24")
        ),
    )
    provider.exits = exits  # type: ignore[attr-defined]
    yield provider
    await provider.aclose()


async def test_egress_reaches_the_internet_and_allowed_hosts_but_nothing_of_this_machine(
    internet: Internet, provider: LocalSandboxProvider
):
    allowed = {f"{PUBLIC}:{PORT}": PUBLIC, f"{LAN_ALLOWED}:{PORT}": LAN_ALLOWED}
    blocked = [
        f"127.0.0.1:{internet.host_port}",
        f"{internet.host_ip}:{internet.host_port}",
        f"{HOST_OTHER}:{internet.host_port}",
        f"{METADATA}:{PORT}",
        f"{LAN_BLOCKED}:{PORT}",
    ]
    for target in [*allowed, *blocked]:
        assert dial_from_host(target) == target.rsplit(":", 1)[0]  # each one is there for the host
    results = await dial_from(provider, "egress", [*allowed, *blocked])
    for target, name in allowed.items():
        assert results[target][0] == name, (target, results[target])
    for target in blocked:
        answer, seconds = results[target]
        assert answer.startswith("error"), (target, answer)
        assert seconds < 1.0, (target, seconds)  # refused at once, not a hang until a timeout
    status = await provider.isolation()
    assert (status.ok, status.network) == (True, "egress")
    assert "pasta" in status.detail
    assert LAN_ALLOWED in status.detail


async def test_egress_resolves_names_and_reaches_a_registry_this_machine_reaches(
    provider: LocalSandboxProvider,
):
    try:
        address = socket.getaddrinfo("pypi.org", 443, type=socket.SOCK_STREAM)[0][4][0]
        socket.create_connection((address, 443), timeout=5).close()
    except OSError as exc:
        pytest.skip(f"this machine does not reach pypi.org either ({exc})")
    endpoint = await provider.create("registry")
    code = "import urllib.request as u; print(u.urlopen('https://pypi.org/simple/pip/', timeout=20).status)"
    async with SandboxAgentClient(endpoint) as client:
        fetched = await client.run_process(sys.executable, ["-I", "-c", code], timeout_ms=60_000)
    assert (fetched.exit_code, fetched.stdout.strip()) == (0, "200"), fetched.stderr


def jail_of(provider: LocalSandboxProvider, sandbox_id: str) -> list[int]:
    leader = provider._sandboxes[sandbox_id].process.pid
    return [leader, *descendants(leader)]


def names(pids: list[int]) -> set[str]:
    """The processes' names, pasta's as ``pasta`` (it runs as ``passt``, or a CPU-specific build such
    as ``passt.avx2``, whatever name started it)."""
    found = set()
    for pid in pids:
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        found.add("pasta" if name.split(".")[0] in ("pasta", "passt") else name)
    return found


async def test_destroy_ends_pasta_with_the_jail(provider: LocalSandboxProvider):
    await provider.create("doomed")
    processes = jail_of(provider, "doomed")
    assert {"pasta", "bwrap", "sandbox-agent"} <= names(processes)
    await provider.destroy("doomed")
    assert running(processes) == []


async def test_pasta_dying_stops_the_sandbox_with_an_error_naming_it(provider: LocalSandboxProvider):
    await provider.create("netless")
    processes = jail_of(provider, "netless")
    pasta = next(pid for pid in processes if names([pid]) == {"pasta"})
    os.kill(pasta, signal.SIGKILL)
    sandbox_id, returncode, reason = await asyncio.wait_for(provider.exits.get(), 10)  # type: ignore[attr-defined]
    assert sandbox_id == "netless"
    assert returncode != 0
    assert "pasta, which connects the sandbox to the network, exited unexpectedly" in reason
    for _ in range(100):
        if not running(processes):
            break
        await asyncio.sleep(0.05)
    assert running(processes) == []


KILLED_PARENT = """
import asyncio, sys
from pathlib import Path
from foundry.drivers.sandbox.binary import find_binary
from foundry.drivers.sandbox.jail import JailPolicy
from foundry.drivers.sandbox.local import LocalSandboxProvider
from foundry.drivers.sandbox.spawn import descendants

async def main():
    provider = LocalSandboxProvider(Path(sys.argv[1]), find_binary(), jail=JailPolicy(network="egress"))
    await provider.create("orphan")
    leader = provider._sandboxes["orphan"].process.pid
    print(" ".join(map(str, [leader, *descendants(leader)])), flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_a_killed_foundry_leaves_no_pasta_behind(tmp_path: Path):
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", KILLED_PARENT, str(tmp_path / "sandboxes"), stdout=asyncio.subprocess.PIPE
    )
    assert parent.stdout is not None
    line = await asyncio.wait_for(parent.stdout.readline(), 60)
    processes = [int(pid) for pid in line.split()]
    assert {"pasta", "bwrap", "sandbox-agent"} <= names(processes)
    parent.kill()  # kill -9: nothing of Foundry runs to clean up
    await parent.wait()
    for _ in range(100):
        if not running(processes):
            break
        await asyncio.sleep(0.05)
    assert running(processes) == [], names(running(processes))


async def test_a_missing_pasta_fails_an_explicit_egress_and_a_default_one_falls_back(tmp_path: Path):
    missing = str(tmp_path / "no-such-pasta")
    explicit = LocalSandboxProvider(
        tmp_path / "explicit", find_binary(), jail=JailPolicy(network="egress", pasta=missing)
    )
    with pytest.raises(SandboxIsolationUnavailable, match="apt-get install passt"):
        await explicit.create("never")
    assert not explicit.sandbox_dir("never").exists()

    # A pasta that is there but cannot connect the jail (here: not pasta at all) is named too.
    broken = LocalSandboxProvider(
        tmp_path / "broken", find_binary(), jail=JailPolicy(network="egress", pasta="/bin/false")
    )
    with pytest.raises(SandboxIsolationUnavailable) as refused:
        await broken.create("never")
    assert "pasta (/bin/false) exited with code 1 before it connected the jail's network" in str(
        refused.value
    )
    assert "apt-get install passt" in str(refused.value)

    default = LocalSandboxProvider(
        tmp_path / "default",
        find_binary(),
        jail=JailPolicy(network="egress", pasta=missing, network_fallback="host"),
    )
    try:
        status = await default.isolation()
        assert (status.ok, status.network) == (True, "host")
        assert "because egress cannot start here" in status.detail
        assert missing in status.detail
        await default.create("on-host")  # starts, on the weaker network the status names
        assert default.jail.network == "host"
    finally:
        await default.aclose()


def test_production_defaults_to_egress_with_a_fallback_and_mock_to_none(tmp_path: Path):
    from foundry.config import Settings
    from foundry.services import sandbox_jail_policy

    production = sandbox_jail_policy(Settings(data_dir=tmp_path, mode="production"))
    assert (production.network, production.network_fallback) == ("egress", "host")
    chosen = sandbox_jail_policy(
        Settings(data_dir=tmp_path, mode="production", sandbox={"network": "egress"})
    )
    assert (chosen.network, chosen.network_fallback) == ("egress", None)
    mock = sandbox_jail_policy(Settings(data_dir=tmp_path, mode="mock"))
    assert mock.network == "none"


def test_a_bad_allow_entry_is_refused_at_start_naming_it(tmp_path: Path):
    from pydantic import ValidationError

    from foundry.config import Settings

    with pytest.raises(ValidationError, match=re.escape("'10.0.0.300' is not an address or CIDR")):
        Settings(data_dir=tmp_path, sandbox={"egress_allow": ["10.0.0.0/8", "10.0.0.300"]})


async def test_a_task_runs_in_an_egress_jail_and_readyz_says_so(tmp_path: Path):
    async with running_server(tmp_path, network="egress") as server, server.signed_in("alice") as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
        check = ready.json()["checks"]["isolation"]
        assert (check["ok"], check["isolation"], check["network"]) == (True, "bwrap", "egress")
        assert "pasta" in check["detail"]
        assert "cloud metadata" in check["detail"]
        created = await create_task(client, prompt="Work behind the egress fence")
        await wait_task(client, created["taskId"], idle_session)
        processes = jail_of(server.provider, created["taskId"])
        assert {"pasta", "bwrap", "sandbox-agent"} <= names(processes)
