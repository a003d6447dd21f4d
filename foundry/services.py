"""The collaborators a role's code may use, built once per host process.

Drivers are swappable here (real or fake) without role code knowing which it got; the wiring lives in
one place, as in Ray Serve's control plane.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from foundry.clock import Clock, SystemClock
from foundry.config import Settings


class Drivers(MutableMapping[str, Any]):
    """Driver instances by name, each built on first use from the factory registered for it.

    A restarted host process answers only once its ``__init__`` is done; building every driver there
    (importing the GitHub and Stripe SDKs) made each restart that much slower although its first
    requests need neither.
    """

    def __init__(self) -> None:
        self._built: dict[str, Any] = {}
        self._factories: dict[str, Callable[[], Any]] = {}

    def register(self, name: str, factory: Callable[[], Any]) -> None:
        """Build driver ``name`` with ``factory`` when it is first used."""
        self._built.pop(name, None)
        self._factories[name] = factory

    def __getitem__(self, name: str) -> Any:
        if name not in self._built:
            # KeyError: no such driver. A factory that raises stays registered: the next use tries
            # again and raises the same error, instead of a misleading "no such driver".
            self._built[name] = self._factories[name]()
            del self._factories[name]
        return self._built[name]

    def __setitem__(self, name: str, driver: Any) -> None:
        self._factories.pop(name, None)
        self._built[name] = driver

    def __delitem__(self, name: str) -> None:
        if self._factories.pop(name, None) is None:
            del self._built[name]
        else:
            self._built.pop(name, None)

    def __contains__(self, name: object) -> bool:
        # Mapping's own would look the driver up, i.e. build it.
        return name in self._built or name in self._factories

    def __iter__(self) -> Iterator[str]:
        return iter({**self._factories, **self._built})

    def __len__(self) -> int:
        return len(self._factories.keys() | self._built.keys())


@dataclass
class Services:
    """Everything a handler may reach beyond its own database."""

    settings: Settings
    clock: Clock = field(default_factory=SystemClock)
    #: Driver instances by name (``github``, ``sandbox``, ``stripe``), added by the wiring.
    drivers: Drivers = field(default_factory=Drivers)

    def driver(self, name: str) -> Any:
        try:
            return self.drivers[name]
        except KeyError:
            raise RuntimeError(f"driver {name!r} is not configured in this process") from None


def build_services(settings: Settings) -> Services:
    """The services of one process for the given settings: drivers whose settings are present."""
    services = Services(settings=settings)
    gh = settings.github
    if gh.configured:

        def github() -> Any:
            from foundry.drivers.github.pygithub import PyGithubDriver

            return PyGithubDriver(
                gh.app_id,
                gh.private_key.get_secret_value(),
                gh.client_id,
                gh.client_secret.get_secret_value(),
                base_url=gh.api_url,
                web_url=gh.web_url,
                throttle=gh.throttle,
                clock=services.clock,
            )

        services.drivers.register("github", github)
    if settings.stripe.configured:

        def stripe() -> Any:
            from foundry.drivers.stripe.client import StripeDriver

            return StripeDriver(settings.stripe)

        services.drivers.register("stripe", stripe)
    services.drivers["sandbox"] = build_sandbox_provider(settings)
    return services


def build_sandbox_provider(settings: Settings) -> Any:
    """The configured sandbox provider (`foundry.drivers.sandbox.SandboxProvider`).

    Cheap: nothing starts until the first ``create``. In the sandbox role's host process the
    sandbox-agent servers are children of this provider; other processes never call ``create``.
    """
    from foundry.drivers.sandbox.local import LocalSandboxProvider

    launchers: dict[str, str] = {}
    if settings.demo_agent_enabled:
        # Not from foundry.mock, which loads the fake GitHub and its JWT stack: a restarted host
        # process would pay that before answering.
        from foundry.demo_agent.launcher import demo_agent_launchers

        launchers.update(demo_agent_launchers())
    for agent_id, command in settings.sandbox.agent_commands.items():
        launchers[agent_id] = f'#!/bin/sh\nexec {command} "$@"\n'
    return LocalSandboxProvider(
        settings.sandbox_root,
        settings.sandbox.binary or None,
        launchers,
        health_timeout=settings.sandbox.health_timeout,
        jail=sandbox_jail_policy(settings),
        limits=sandbox_limits(settings),
        agents_dir=settings.agents_dir,
    )


def sandbox_limits(settings: Settings) -> Any:
    """What each sandbox may use (`foundry.drivers.sandbox.limits.SandboxLimits`) under ``settings``."""
    from foundry.drivers.sandbox.limits import SandboxLimits

    sandbox = settings.sandbox
    return SandboxLimits(
        memory_mb=sandbox.memory_mb,
        max_processes=sandbox.max_processes,
        cpu_seconds=sandbox.cpu_seconds,
        disk_mb=sandbox.disk_mb,
        max_files=sandbox.max_files,
        check_interval_s=sandbox.limits_interval_s,
    )


def sandbox_jail_policy(settings: Settings) -> Any:
    """How sandboxes are isolated (`foundry.drivers.sandbox.jail.JailPolicy`) under ``settings``.

    Besides the system, a jail sees read-only the files that its agent launchers name (the provider
    finds them). In mock mode the organization's local git remotes stand in for GitHub: Foundry's
    own fetches and pushes reach them (`remote_git`), the agent's jail does not.
    """
    from foundry.drivers.sandbox.jail import JailPolicy

    remotes: Path | None = None
    if settings.mode == "mock":
        remotes = settings.data_dir / "mock-remotes"
        remotes.mkdir(parents=True, exist_ok=True)
    network = settings.sandbox_network
    return JailPolicy(
        isolation=settings.sandbox.isolation,
        network=network,
        accounts_root=remotes,
        bwrap=settings.sandbox.bwrap,
        pasta=settings.sandbox.pasta,
        egress_allow=tuple(settings.sandbox.egress_allow),
        # Only a default may fall back (to the network production had before egress existed).
        network_fallback="host" if network == "egress" and not settings.sandbox.network else None,
    )
