"""Secrets stay out of Ray's actor arguments: hosts read them on their own node."""

from __future__ import annotations

import pickle
import stat
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from foundry.config import Settings
from foundry.runtime import ray_backend
from foundry.runtime.host_settings import SECRETS_FILE
from foundry.runtime.ray_backend import RayRuntime
from tests.conftest import make_settings

pytestmark = pytest.mark.ray

SECRETS = {
    "secret_key": "foundry-secret-key-value-0123456789",
    "private_key": "-----BEGIN RSA PRIVATE KEY-----\nsecret-pem-body\n-----END RSA PRIVATE KEY-----",
    "client_secret": "github-client-secret-value",
    "webhook_secret": "github-webhook-secret-value",
}


class RecordingHost:
    """Stands in for the remote host class: records what each actor creation receives, then creates
    the real actor."""

    def __init__(self, real: Any, seen: list[tuple[Any, ...]]) -> None:
        self.real = real
        self.seen = seen

    def options(self, **options: Any) -> Any:
        real_options = self.real.options(**options)
        seen = self.seen

        class Creator:
            def remote(self, *args: Any) -> Any:
                seen.append(args)
                return real_options.remote(*args)

        return Creator()


@pytest.fixture
def secret_settings(ray_session: None, tmp_path: Path) -> Settings:
    return make_settings(
        tmp_path / "data",
        secret_key=SECRETS["secret_key"],
        github={
            "app_id": "1",
            "client_id": "client",
            "private_key": SECRETS["private_key"],
            "client_secret": SECRETS["client_secret"],
            "webhook_secret": SECRETS["webhook_secret"],
        },
        runtime={"backend": "ray", "namespace": f"secrets-{uuid.uuid4().hex[:8]}", "idle_seconds": 3600},
    )


@pytest.fixture
async def recorded(
    secret_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[RayRuntime, list[tuple[Any, ...]]]]:
    seen: list[tuple[Any, ...]] = []
    monkeypatch.setattr(ray_backend, "_RemoteProcess", RecordingHost(ray_backend._RemoteProcess, seen))
    runtime = RayRuntime(secret_settings)
    await runtime.start()
    try:
        yield runtime, seen
    finally:
        await runtime.stop_hosts()


async def test_host_arguments_hold_no_secret_and_hosts_still_have_them(
    recorded: tuple[RayRuntime, list[tuple[Any, ...]]], secret_settings: Settings
):
    runtime, seen = recorded
    assert seen, "no host was created"
    for args in seen:
        shipped = pickle.dumps(args)
        for name, value in SECRETS.items():
            assert value.encode() not in shipped, f"{name} travels in a host's creation arguments"
    # The secrets file is Foundry's user's alone.
    mode = stat.S_IMODE((secret_settings.data_dir / SECRETS_FILE).stat().st_mode)
    assert mode == 0o600
    # Each host read the secrets on its node: it has the same values as the driver.
    handle = runtime.handle("organization", 0)

    def host_secrets(actor: Any) -> tuple[str, str]:
        settings = actor.settings
        return settings.secret_key.get_secret_value(), settings.github.private_key.get_secret_value()

    assert await handle.__ray_call__.remote(host_secrets) == (SECRETS["secret_key"], SECRETS["private_key"])
    assert (await runtime.host_info("organization"))["pid"] > 0
