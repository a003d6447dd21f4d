"""Shared fixtures. Tiers: unit (in-process runtime), ``ray`` (one local Ray per run), ``e2e``."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from foundry.clock import FakeClock
from foundry.config import Settings
from foundry.runtime.gc_policy import settle_long_lived
from foundry.runtime.inprocess import InProcessRuntime
from foundry.runtime.placement import DATA_LABEL
from foundry.services import Services

COUNTER_MODULE = "tests.runtime.counter_role"


def pytest_configure(config: pytest.Config) -> None:
    """Share one default TLS context among the httpx clients of this process.

    httpx builds a fresh one for every client (loading every CA certificate: about 50 ms of CPU),
    and the tests create thousands of clients, nearly all for plain-HTTP servers on 127.0.0.1.
    """
    import httpx._transports.default as transports

    build = transports.create_ssl_context  # type: ignore[attr-defined]
    shared: dict[str, Any] = {}

    def create_ssl_context(verify: Any = True, cert: Any = None, trust_env: bool = True) -> Any:
        if verify is True and cert is None and trust_env:
            if "default" not in shared:
                shared["default"] = build(verify=True, cert=None, trust_env=True)
            return shared["default"]
        return build(verify=verify, cert=cert, trust_env=trust_env)

    setattr(transports, "create_ssl_context", create_ssl_context)  # noqa: B010 - not an export


def pytest_collection_finish(session: pytest.Session) -> None:
    """Run under the garbage-collector policy of Foundry's own processes.

    Most tests serve Foundry inside this process (runtime, API, sandboxes' readers): with the
    interpreter's default thresholds a full collection over the test session's heap stalls that one
    event loop for a second on a loaded machine, which `foundry serve` never sees.
    """
    settle_long_lived()


#: Tiers that start real servers, a local Ray or sandbox fleets: under pytest-xdist each group runs
#: on one worker, one test after another, while the in-process tests spread over the other workers.
#: One group, not one per tier: run side by side, the fault runs starve the Ray tests of CPU on a
#: 2-core machine (measured: no faster overall, and timing bounds missed).
CLUSTER_GROUPS = {"faults": "cluster", "ray": "cluster", "e2e": "cluster"}


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the browser tests last, and keep the cluster tiers on one xdist worker.

    Playwright's sync API (pytest-playwright) keeps an event loop running in the main thread from its
    first test to the end of the session; every asyncio test collected after it would then fail with
    "Runner.run() cannot be called from a running event loop". `scripts/test.sh` therefore runs them
    in a pytest run of their own.
    """
    browser_dir = Path(__file__).parent / "browser"
    items.sort(key=lambda item: browser_dir in Path(str(item.path)).parents)
    for item in items:
        for marker, group in CLUSTER_GROUPS.items():
            if item.get_closest_marker(marker):
                item.add_marker(pytest.mark.xdist_group(group))
                break


REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def _schema_template_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("schema-templates")


@pytest.fixture(autouse=True)
def _shared_schema_templates(
    request: pytest.FixtureRequest, _schema_template_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Build each role's head-schema template once per test process, not once per test.

    Every test starts from an empty data directory, so every first wake of a role migrated a scratch
    database from nothing (alembic's import and every revision: 0.5-1 s of CPU per test that signs
    someone in). The template is a pure function of the role's migrations, so later tests get a copy
    of the first build. `tests/db` checks the build itself and keeps building.
    """
    if Path(str(request.node.path)).parent.name == "db":
        return
    import hashlib
    import shutil

    from foundry.db import migrate

    build = migrate._build_template

    async def build_once(template: Path, location: str) -> None:
        folder = _schema_template_cache / hashlib.sha256(location.encode()).hexdigest()[:16]
        cached = folder / template.name
        if cached.exists():
            await asyncio.to_thread(migrate._copy_atomically, cached, template)
            return
        await build(template, location)
        folder.mkdir(exist_ok=True)
        shutil.copyfile(template, cached)

    monkeypatch.setattr(migrate, "_build_template", build_once)


#: The data label of the shared test Ray's one node (tests pin host processes to it).
TEST_NODE_LABEL = "test-node"


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """One local Ray for every in-process Ray test of this pytest process (a cluster costs seconds of
    CPU to start). Tests share it, each in a namespace of its own, and end their host processes
    (`RayRuntime.stop_hosts`) when done."""
    import ray

    # Host processes must import test roles (tests.runtime.counter_role) too.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        namespace=f"test-{uuid.uuid4().hex[:8]}",
        object_store_memory=128 * 1024 * 1024,
        labels={DATA_LABEL: TEST_NODE_LABEL},
    )
    yield
    ray.shutdown()


def make_settings(data_dir: Path, **overrides: object) -> Settings:
    runtime = {"backend": "inprocess", "extra_roles": {"counter": COUNTER_MODULE}}
    runtime.update(overrides.pop("runtime", {}))  # type: ignore[arg-type]
    return Settings(data_dir=data_dir, runtime=runtime, **overrides)  # type: ignore[arg-type]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "data")


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[InProcessRuntime]:
    rt = InProcessRuntime(
        settings.data_dir,
        Services(settings=settings, clock=FakeClock()),
        idle_seconds=3600,
        extra_role_modules={"counter": COUNTER_MODULE},
    )
    yield rt
    await rt.close()
