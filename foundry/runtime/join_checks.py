"""Checks an API process makes before it serves on a Ray cluster: that its hosts may run on the
data directory (no other deployment holds it), that every node label it pins a host to exists, that
the hosts already running were set up with the same settings, and that the hosts it started did
start. Each refuses with a `Conflict` or `InvalidInput` naming what to change."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import ray
from ray.exceptions import RayActorError

from foundry.config import Settings
from foundry.errors import Conflict, InvalidInput
from foundry.runtime.client import roundtrip
from foundry.runtime.holder_liveness import holder_gone_check
from foundry.runtime.host_lock import REFUSAL_MARK, Deployment, foreign_holder
from foundry.runtime.host_process import SECRET_KEY_SETTING, deployment_of
from foundry.runtime.placement import DATA_LABEL, hosts_by_process, missing_node_labels, process_name

log = logging.getLogger(__name__)


def check_data_dir_free(settings: Settings, ours: Deployment) -> None:
    """Refuse to start hosts on a data directory another deployment's hosts hold or may come back to."""
    foreign = foreign_holder(settings.data_dir, ours, holder_gone_check(ours))
    if foreign is not None:
        raise Conflict(foreign)


async def check_node_labels(settings: Settings) -> None:
    """Refuse to start when ``runtime.nodes`` pins a host process to a node label that no node
    of the cluster has: that process could never start, and every call to it would hang."""
    missing = missing_node_labels(settings, await asyncio.to_thread(ray.nodes))
    if missing:
        wanted = ", ".join(f"{DATA_LABEL}={label}" for label in missing)
        raise InvalidInput(
            f"runtime.nodes needs nodes labelled {wanted}, but no live node of the Ray cluster has "
            f"that label; start each such node with `ray start --labels {DATA_LABEL}=<value>` "
            "(on the machine whose disk holds that data) or correct runtime.nodes"
        )


async def check_cluster_key(settings: Settings, timeout: float) -> None:
    """Refuse to join hosts of a deployment set up otherwise than this process.

    Several API processes share the hosts: a session cookie signed by one must verify on every
    other, this process is about to rewrite the hosts' secrets file with its own values, and
    when it (re)starts a host it must be the same host on the same node with the same data
    directory, never one that opens empty databases elsewhere.
    """
    process = next(iter(hosts_by_process(settings)))
    try:
        handle = ray.get_actor(process_name(process), namespace=settings.runtime.namespace)
    except ValueError:
        return  # no hosts yet: this process starts them with its settings
    try:
        theirs: dict[str, Any] = await asyncio.wait_for(handle.deployment.remote(), timeout)
    except (TimeoutError, RayActorError) as exc:
        if REFUSAL_MARK in str(exc):
            # That host process was refused the data directory: so is this deployment.
            raise Conflict(refusal_reason(str(exc))) from None
        log.warning("could not compare settings with host process %s: %s", process, exc)
        return
    ours = roundtrip(deployment_of(settings))
    # A name the running hosts do not report (an older version of Foundry) is not compared.
    differ = [name for name, value in ours.items() if name in theirs and theirs[name] != value]
    if SECRET_KEY_SETTING in differ:
        # The other digests are keyed by the secret key: with another key they all differ, so
        # naming them would send the operator to check settings that may well be equal.
        differ = [name for name in differ if name == SECRET_KEY_SETTING or not _keyed(name)]
    if differ:
        raise Conflict(
            f"this process's {', '.join(differ)} differs from the running Foundry's (host process "
            f"{process_name(process)}): every API process of a deployment needs the same values, or "
            "its sessions would not verify elsewhere and the hosts it starts would use other "
            "databases. Start it with the same settings."
        )


async def check_hosts_started(settings: Settings, handle_of: Callable[[str], Any], timeout: float) -> None:
    """Refuse to serve when a host process could not start because another copy of it holds its
    data directory (`foundry.runtime.host_lock`): e.g. this process joined in another Ray
    namespace than the API processes already serving that directory."""

    async def started(process: str) -> str | None:
        try:
            await asyncio.wait_for(handle_of(process).deployment.remote(), timeout)
        except RayActorError as exc:
            if REFUSAL_MARK in str(exc):
                return refusal_reason(str(exc))
            log.warning("host process %s did not start: %s", process, exc)
        except TimeoutError:
            log.warning("host process %s did not answer within %.0f s of start", process, timeout)
        return None

    refusals = await asyncio.gather(*(started(process) for process in hosts_by_process(settings)))
    refused = [reason for reason in refusals if reason is not None]
    if refused:
        raise Conflict(refused[0])


def _keyed(setting: str) -> bool:
    """Whether `deployment_of` compares ``setting`` by a digest keyed by the secret key."""
    return setting.startswith("secret ") or setting.startswith("GitHub App")


def refusal_reason(text: str) -> str:
    """A host process's refusal of the data directory, out of Ray's report of its failed start."""
    start = text.rfind("the data directory ", 0, text.index(REFUSAL_MARK))
    return text[max(start, 0) :].splitlines()[0]
