"""A data directory is served by one deployment's host processes, one copy of each: hosts of another
deployment (another Ray namespace, whatever their process names; another Ray cluster) are refused
while the first one's run, naming them, and an API process learns it before it writes anything."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from foundry.runtime import holder_liveness, host_lock
from foundry.runtime.holder_liveness import holder_gone_check
from foundry.runtime.host_lock import Deployment, HostsConflict, foreign_holder, hold_host_lock

OURS = Deployment("foundry", "10.0.0.5:6379")
HOLDER = """
import sys, time
from pathlib import Path
from foundry.runtime import holder_liveness, host_lock
from foundry.runtime.host_lock import Deployment, hold_host_lock
host_lock.HEARTBEAT_S = float(sys.argv[5])
locks = hold_host_lock(Path(sys.argv[1]), sys.argv[2], Deployment(sys.argv[3], sys.argv[4]))
print("held", flush=True)
time.sleep(600)
"""


def _holder(
    data_dir: Path, process: str, deployment: Deployment, heartbeat_s: float = 10.0
) -> subprocess.Popen[str]:
    args = [str(data_dir), process, deployment.namespace, deployment.cluster, str(heartbeat_s)]
    child = subprocess.Popen([sys.executable, "-c", HOLDER, *args], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "held"
    return child


@pytest.mark.parametrize(
    ("theirs", "process"),
    [
        (Deployment("otherns", OURS.cluster), "foundry.main"),  # another namespace
        (Deployment("otherns", OURS.cluster), "foundry.m2"),  # …with other process names
        (Deployment(OURS.namespace, "10.0.0.9:6379"), "foundry.main"),  # another Ray cluster
    ],
)
def test_hosts_of_another_deployment_are_refused_while_the_first_ones_run(
    tmp_path: Path, theirs: Deployment, process: str
) -> None:
    child = _holder(tmp_path, "foundry.main", OURS)
    try:
        started = time.monotonic()
        with pytest.raises(HostsConflict) as refused:
            hold_host_lock(tmp_path, process, theirs)
        assert time.monotonic() - started < 10
        assert OURS.describe() in str(refused.value)
        assert "is already served by" in str(refused.value)
        # The API process's own look, before it writes the hosts' secrets: the same answer…
        reason = foreign_holder(tmp_path, theirs)
        assert reason is not None
        assert OURS.describe() in reason
        # …and none for the deployment that runs there.
        assert foreign_holder(tmp_path, OURS) is None
    finally:
        child.kill()
        child.wait()


def test_the_hosts_of_one_deployment_share_it_and_the_next_takes_it_once_they_ended(tmp_path: Path) -> None:
    child = _holder(tmp_path, "foundry.main", OURS)
    sibling = hold_host_lock(tmp_path, "foundry.tasks", OURS)  # another process of the same one
    sibling.close()
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    nobody = time.monotonic()
    successor = Deployment("renamed", "10.0.0.9:6379")  # e.g. restarted in another namespace
    locks = hold_host_lock(tmp_path, "foundry.main", successor, _known_gone)
    assert time.monotonic() - nobody < 5
    assert foreign_holder(tmp_path, successor) is None
    assert foreign_holder(tmp_path, OURS) is not None
    locks.close()
    assert foreign_holder(tmp_path, OURS, _known_gone) is None


def _known_gone(holder: Deployment) -> bool:
    return True


def _maybe_restarting(holder: Deployment) -> bool:
    return False


def test_hosts_that_all_died_at_once_keep_their_claim_while_ray_may_restart_them(tmp_path: Path) -> None:
    # Every host of a deployment killed at once (a node's OOM killer): Ray restarts them, which can
    # take most of a minute. Another deployment must not take the directory meanwhile, neither its
    # hosts nor its API process, while the first one's hosts get it back at once.
    child = _holder(tmp_path, "foundry.main", OURS)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    other = Deployment("foundry", "10.0.0.9:6379")
    with pytest.raises(HostsConflict) as refused:
        hold_host_lock(tmp_path, "foundry.main", other, _maybe_restarting)
    assert OURS.describe() in str(refused.value)
    assert "restarting" in str(refused.value)
    reason = foreign_holder(tmp_path, other, _maybe_restarting)
    assert reason is not None
    assert "is already served by" in reason
    back = hold_host_lock(tmp_path, "foundry.main", OURS, _maybe_restarting)  # Ray's restart
    back.close()
    # Once the first deployment is known to be gone (its cluster refuses connections, its namespace
    # has no host process), or its claim lapsed, the other one takes over.
    assert foreign_holder(tmp_path, other, _known_gone) is None
    record = tmp_path / ".deployment.json"
    stale = time.time() - host_lock.CLAIM_LAPSES_S - 1
    os.utime(record, (stale, stale))
    assert foreign_holder(tmp_path, other, _maybe_restarting) is None
    hold_host_lock(tmp_path, "foundry.main", other, _maybe_restarting).close()
    assert foreign_holder(tmp_path, OURS, _maybe_restarting) is not None


def test_live_hosts_renew_their_claim(tmp_path: Path) -> None:
    child = _holder(tmp_path, "foundry.main", OURS, heartbeat_s=0.2)
    try:
        record = tmp_path / ".deployment.json"
        stale = time.time() - 1000
        os.utime(record, (stale, stale))
        time.sleep(1.0)
        assert time.time() - record.stat().st_mtime < 5
    finally:
        child.kill()
        child.wait()


def test_a_second_copy_of_a_host_process_waits_for_the_first_to_exit(tmp_path: Path) -> None:
    child = _holder(tmp_path, "foundry.main", OURS)
    try:
        killer = subprocess.Popen(["sh", "-c", f"sleep 1; kill -9 {child.pid}"])
        started = time.monotonic()
        locks = hold_host_lock(tmp_path, "foundry.main", OURS)
        assert 0.5 < time.monotonic() - started < 20
        locks.close()
        killer.wait()
    finally:
        child.kill()
        child.wait()


def test_a_holder_in_another_cluster_is_gone_when_its_cluster_refuses_connections() -> None:
    ours = Deployment("foundry", "127.0.0.1:1")
    gone = holder_gone_check(ours)
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        address = f"127.0.0.1:{listening.getsockname()[1]}"
        assert not gone(Deployment("foundry", address))  # its GCS answers: it may restart its hosts
    assert gone(Deployment("foundry", address))  # nothing listens there any more


def test_a_local_cluster_is_gone_once_its_head_process_is_even_if_its_port_answers(tmp_path: Path) -> None:
    # A `foundry serve` killed with its local Ray: the old head's port may be anyone's by then (a
    # connection to it succeeds), which kept the data directory locked for 120 s. Its recorded head
    # process tells for sure.
    head_binary = tmp_path / "gcs_server"
    shutil.copy("/bin/sleep", head_binary)
    head = subprocess.Popen([str(head_binary), "600"])
    try:
        with socket.socket() as squatter:
            squatter.bind(("127.0.0.1", 0))
            squatter.listen()
            old = Deployment(
                "foundry",
                f"127.0.0.1:{squatter.getsockname()[1]}",
                host=socket.gethostname(),
                gcs_pid=head.pid,
            )
            locks = hold_host_lock(tmp_path / "data", "foundry.main", old)
            locks.close()
            gone = holder_gone_check(Deployment("foundry", "127.0.0.1:1"))
            recorded = host_lock._record(tmp_path / "data")
            assert recorded is not None
            assert recorded.gcs_pid == head.pid
            assert not gone(recorded)  # its head runs: its hosts may be restarting
            head.kill()
            head.wait()
            assert gone(recorded)
            nobody = time.monotonic()
            hold_host_lock(
                tmp_path / "data", "foundry.main", Deployment("foundry", "127.0.0.1:2"), gone
            ).close()
            assert time.monotonic() - nobody < 5
    finally:
        head.kill()
        head.wait()


def test_a_holder_in_this_cluster_is_not_taken_for_gone_when_its_head_does_not_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def unanswered(all_namespaces: bool = False) -> list[object]:
        raise TimeoutError("the GCS did not answer")

    monkeypatch.setattr(holder_liveness.ray.util, "list_named_actors", unanswered)
    ours = Deployment("other", "127.0.0.1:6379")
    assert not holder_gone_check(ours)(Deployment("foundry", ours.cluster))
