"""An organization's agent credentials reach the agents of its own tasks' sandboxes, and only
those; their values never appear in a log line."""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import re
from pathlib import Path

import pytest

from foundry.logging import REDACTED, TextFormatter
from tests.agent_credentials.conftest import (
    DEPLOYMENT_ANTHROPIC_KEY,
    DEPLOYMENT_OPENAI_KEY,
    credential_url,
    files_containing,
    shell_server_at,
    wait_output,
)
from tests.tasks.conftest import ACME_ROCKET, TaskServer, create_task

ACME_KEY = "sk-ant-acme-only-4f9c2e7d1b-tail"
GLOBEX_OPENAI_KEY = "sk-openai-globex-only-83d1a6c0"
ROTATED_KEY = "sk-ant-acme-rotated-5e0b7a2c9d"
ACME_OPENAI_KEY = "sk-openai-acme-2b8e4f1a77"
# The agent reports digests, not the values: a transcript that quoted them would put them in the
# test's own DEBUG log lines (SQLite parameters), which must show no value at all.
PRINT_KEYS = "for v in ANTHROPIC_API_KEY OPENAI_API_KEY; do printenv $v | sha256sum; done"
GLOBEX_HAMMOCK = "920001"


def digest(value: str) -> str:
    return hashlib.sha256(value.encode() + b"\n").hexdigest()


def digests(output: str) -> list[str]:
    """The ``sha256sum`` lines of the shell agent's answer."""
    return re.findall(r"([0-9a-f]{64})  -", output)


async def test_each_organization_s_agents_get_its_own_credentials_and_no_log_shows_them(
    shell_server: TaskServer, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.DEBUG)
    async with shell_server.signed_in("carol") as carol, shell_server.signed_in("dave") as dave:
        set_acme = await carol.put(credential_url("acme", "ANTHROPIC_API_KEY"), json={"value": ACME_KEY})
        assert set_acme.status_code == 204, set_acme.text
        set_globex = await dave.put(
            credential_url("globex", "OPENAI_API_KEY"), json={"value": GLOBEX_OPENAI_KEY}
        )
        assert set_globex.status_code == 204, set_globex.text

        acme_task, globex_task = await asyncio.gather(
            create_task(carol, repoId=ACME_ROCKET, prompt=PRINT_KEYS),
            create_task(dave, "globex", repoId=GLOBEX_HAMMOCK, prompt=PRINT_KEYS),
        )
        acme_out, globex_out = await asyncio.gather(
            wait_output(carol, "acme", acme_task["taskId"], acme_task["sessionId"]),
            wait_output(dave, "globex", globex_task["taskId"], globex_task["sessionId"]),
        )
    # acme's value replaces the deployment-wide one; what acme did not set stays the deployment's.
    assert digests(acme_out) == [digest(ACME_KEY), digest(DEPLOYMENT_OPENAI_KEY)], acme_out
    # globex never gets acme's key, and gets its own.
    assert digests(globex_out) == [digest(DEPLOYMENT_ANTHROPIC_KEY), digest(GLOBEX_OPENAI_KEY)], globex_out

    # Nothing the flow wrote holds a value: databases, sandbox records and logs, checkouts.
    for secret in (ACME_KEY, GLOBEX_OPENAI_KEY):
        assert files_containing(shell_server.settings.data_dir, secret) == []

    # No log line of the whole flow (API, organization, sandbox start, task) holds either value.
    records = caplog.records
    assert any("sandbox running" in r.getMessage() for r in records)
    for secret in (ACME_KEY, GLOBEX_OPENAI_KEY):
        assert secret not in caplog.text
        assert not [r for r in records if secret in str(r.args) or secret in str(r.msg)]

    # And a line that does quote one (a careless debug line, an error echoing a driver's
    # environment) comes out of Foundry's formatter redacted: setting and decrypting the values
    # registered them with this process's redaction.
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(TextFormatter([]))
    logger = logging.getLogger("tests.agent_credentials.careless")
    logger.addHandler(handler)
    try:
        logger.warning("starting with env=%s", {"ANTHROPIC_API_KEY": ACME_KEY, "OPENAI": GLOBEX_OPENAI_KEY})
        try:
            raise RuntimeError(f"driver said: bad key {ACME_KEY}")
        except RuntimeError:
            logger.exception("start failed")
    finally:
        logger.removeHandler(handler)
    written = out.getvalue()
    assert ACME_KEY not in written
    assert GLOBEX_OPENAI_KEY not in written
    assert written.count(REDACTED) == 3, written


async def stopped(server: TaskServer, task_id: str) -> None:
    """Wait until the task's sandbox was stopped for being idle."""
    for _ in range(300):
        if task_id not in server.provider.running_ids():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the sandbox of {task_id} never stopped")


async def test_a_changed_key_reaches_sandboxes_started_afterwards(tmp_path: Path):
    # Sandboxes stop after about 4 s without use.
    async with shell_server_at(tmp_path, idle_minutes=0.06) as server, server.signed_in("carol") as carol:
        anthropic = credential_url("acme", "ANTHROPIC_API_KEY")
        openai = credential_url("acme", "OPENAI_API_KEY")
        assert (await carol.put(anthropic, json={"value": ACME_KEY})).status_code == 204
        assert (await carol.put(openai, json={"value": ACME_OPENAI_KEY})).status_code == 204
        created = await create_task(carol, repoId=ACME_ROCKET, prompt=f"sleep 2; {PRINT_KEYS}")
        task_id, session_id = created["taskId"], created["sessionId"]
        for _ in range(600):
            if task_id in server.provider.running_ids():
                break
            await asyncio.sleep(0.05)

        # One key rotated, the other removed while the sandbox runs: it keeps the environment it
        # started with.
        assert (await carol.put(anthropic, json={"value": ROTATED_KEY})).status_code == 204
        assert (await carol.delete(openai)).status_code == 204
        first = await wait_output(carol, "acme", task_id, session_id)
        assert digests(first) == [digest(ACME_KEY), digest(ACME_OPENAI_KEY)], first

        # Once idle it stops; the next message starts it again with the rotated key, and the removed
        # one falls back to the deployment's value.
        await stopped(server, task_id)
        messages = f"/v1/organizations/acme/tasks/{task_id}/sessions/{session_id}/messages"
        assert (await carol.post(messages, json={"text": PRINT_KEYS})).status_code == 202
        second = await wait_output(carol, "acme", task_id, session_id, turns=2)
        assert digests(second)[2:] == [digest(ROTATED_KEY), digest(DEPLOYMENT_OPENAI_KEY)], second
