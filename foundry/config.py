"""Settings, read from the environment (prefix ``FOUNDRY_``) by pydantic-settings.

Nested groups use ``__``: ``FOUNDRY_RUNTIME__BACKEND=inprocess``. Secrets are `SecretStr`. In production
mode the settings that have no safe default must be given; `Settings.check_production` names the missing
variables so start-up fails with a sentence instead of a traceback.
"""

from __future__ import annotations

import functools
import os
import re
import secrets
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from foundry.config_env import ConfigError as ConfigError  # re-exported: callers catch it here
from foundry.config_env import SettingsNames, check_environment, describe_validation_error

ROLE_NAMES = ("organization", "task", "user", "github-data", "audit-log", "sandbox")


#: Environment variable names whose values are credentials (redacted from logs).
_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL", re.IGNORECASE)
#: A host process's name (part of its Ray actor name ``foundry.<name>``).
PROCESS_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")
#: A placement key: a role (``task``) or one shard of it (``audit-log.1``).
PLACED_HOST = re.compile(r"[a-z][a-z0-9-]*(\.[0-9]+)?")
#: A Ray node label value (Kubernetes label syntax).
NODE_LABEL_VALUE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?")


class RuntimeSettings(BaseModel):
    """How the virtual-actor runtime runs."""

    # A key no setting has (a typo inside the group's JSON) is refused, as an unknown variable is;
    # so are infinite and NaN numbers.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    backend: Literal["ray", "inprocess"] = "ray"
    #: Address of an existing Ray cluster; empty starts a local one for this process.
    ray_address: str = ""
    namespace: str = Field(default="foundry", min_length=1, max_length=100)
    #: Host actors per role; more shards spread load over more processes (and nodes).
    shards: dict[str, int] = Field(default_factory=dict)
    default_shards: int = Field(default=1, ge=1, le=1024)
    #: An instance that handled nothing for this long closes its database and leaves memory.
    idle_seconds: float = Field(default=120.0, gt=0)
    #: Ray object store size for the local cluster (bytes); small, Foundry passes little data.
    object_store_bytes: int = Field(default=256 * 1024 * 1024, ge=80 * 1024 * 1024)  # Ray's minimum is 75 MiB
    #: Extra roles by name → module defining ``ROLE`` (tests add their own roles this way).
    extra_roles: dict[str, str] = Field(default_factory=dict)
    #: A send to another actor that failed this many times becomes a dead letter: kept in the
    #: sender's outbox, no longer retried until an operator asks (``foundry actors retry-dead``).
    outbox_max_attempts: int = Field(default=20, ge=1)
    #: Delay before the second attempt of a send; it doubles per failure up to the cap (with jitter).
    outbox_backoff_base_s: float = Field(default=0.1, gt=0)
    outbox_backoff_cap_s: float = Field(default=30.0, gt=0)
    #: Which host process runs which hosts: a role name, or ``role.shard`` for one shard, → the name
    #: of a process. Hosts not named here run in ``default_process``. Each named process is one Ray
    #: actor (one Python process of ~100 MB that takes seconds to start): few processes cost little
    #: memory and start fast; a busy role in a process of its own gets a core of its own. By default
    #: the transcript-heavy task role and the sandboxes it drives share one process, everything else
    #: another.
    placement: dict[str, str] = Field(default_factory=lambda: {"task": "tasks", "sandbox": "tasks"})
    default_process: str = "main"
    #: In a cluster of several nodes: host process name → the value of the ``foundry-data`` label of
    #: the node that holds its data (``ray start --labels foundry-data=<value>``). A host's SQLite
    #: files live on its node's disk, so Ray may start (or restart) that process on this node only;
    #: anywhere else it would open empty databases. Processes not named run on any node (fine
    #: with one node). A local cluster started by ``foundry serve`` is labelled with the one value
    #: named here.
    nodes: dict[str, str] = Field(default_factory=dict)
    #: Print the hosts' log lines in the output of the process that connects to Ray (``foundry
    #: serve``); otherwise they stay in Ray's session log files only.
    forward_host_logs: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> RuntimeSettings:
        roles = set(ROLE_NAMES) | set(self.extra_roles)
        for role, count in self.shards.items():
            if role not in roles:
                raise ValueError(f"shards names {role!r}, which is not a role ({', '.join(sorted(roles))})")
            if not 1 <= count <= 1024:
                raise ValueError(f"shards of {role!r} must be 1-1024, not {count}")
        if self.outbox_backoff_base_s > self.outbox_backoff_cap_s:
            raise ValueError("outbox_backoff_base_s must not be larger than outbox_backoff_cap_s")
        return self

    def shards_for(self, role: str) -> int:
        return max(1, int(self.shards.get(role, self.default_shards)))

    @field_validator("default_process")
    @classmethod
    def _process_name(cls, value: str) -> str:
        if not PROCESS_NAME.fullmatch(value):
            raise ValueError(f"process name {value!r} must be lowercase letters, digits and '-'")
        return value

    @field_validator("nodes")
    @classmethod
    def _nodes(cls, value: dict[str, str]) -> dict[str, str]:
        for process, label in value.items():
            cls._process_name(process)
            if not NODE_LABEL_VALUE.fullmatch(label):
                raise ValueError(
                    f"node label value {label!r} (for process {process!r}) must be 1-63 letters, digits, "
                    "'-', '_' or '.', starting and ending with a letter or digit"
                )
        return value

    @field_validator("placement")
    @classmethod
    def _placement(cls, value: dict[str, str]) -> dict[str, str]:
        for host, process in value.items():
            if not PLACED_HOST.fullmatch(host):
                raise ValueError(f"placement key {host!r} must be a role name or 'role.shard'")
            cls._process_name(process)
        return value


def _http_url(value: str, *, empty_ok: bool = False) -> str:
    """``value`` if it is an absolute http(s) URL with a host (OAuth redirects, API bases)."""
    if empty_ok and not value:
        return value
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or any(c.isspace() for c in value):
        raise ValueError(
            f"must be an absolute http(s) URL such as https://foundry.example.com, not {value!r}"
        )
    return value


class GitHubSettings(BaseModel):
    """The GitHub App (repository access, webhooks) and its OAuth client (sign-in)."""

    # A key no setting has (a typo inside the group's JSON) is refused, as an unknown variable is;
    # so are infinite and NaN numbers.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    app_id: int = Field(default=0, ge=0)
    private_key: SecretStr = SecretStr("")
    client_id: str = ""
    client_secret: SecretStr = SecretStr("")
    webhook_secret: SecretStr = SecretStr("")
    api_url: str = "https://api.github.com"
    web_url: str = "https://github.com"
    #: PyGithub's own pacing between requests; off against the local fake.
    throttle: bool = True

    @field_validator("api_url", "web_url")
    @classmethod
    def _urls(cls, value: str) -> str:
        return _http_url(value)

    @field_validator("private_key")
    @classmethod
    def _pem_line_breaks(cls, value: SecretStr) -> SecretStr:
        # Env files (docker's --env-file, systemd's EnvironmentFile) hold one line per variable, so a
        # PEM is often written with "\n" escapes; a PEM never holds a backslash, so they are its lines.
        text = value.get_secret_value()
        if "\\n" in text and "\n" not in text.strip():
            return SecretStr(text.strip().replace("\\n", "\n") + "\n")
        return value

    @property
    def configured(self) -> bool:
        return bool(self.app_id and self.private_key.get_secret_value() and self.client_id)


class AuthSettings(BaseModel):
    """Sessions and cookies."""

    # A key no setting has (a typo inside the group's JSON) is refused, as an unknown variable is;
    # so are infinite and NaN numbers.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    session_ttl_seconds: int = Field(default=14 * 24 * 3600, ge=60)
    #: An HTTP cookie name (RFC 6265 token): anything else would fail every sign-in.
    cookie_name: str = Field(default="foundry_session", pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$")
    #: Allowed browser origins for writes besides the app URL (comma-free list).
    extra_origins: list[str] = Field(default_factory=list)


class SandboxSettings(BaseModel):
    """Where tasks' sandboxes run: the provider and what every sandbox gets."""

    # A key no setting has (a typo inside the group's JSON) is refused, as an unknown variable is;
    # so are infinite and NaN numbers.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    #: ``local`` runs one sandbox-agent process per sandbox; ``docker`` and ``e2b`` are to follow.
    provider: Literal["local"] = "local"
    #: Directory of the local provider's sandboxes; empty means ``<data_dir>/sandboxes``.
    root_dir: str = ""
    #: The sandbox-agent executable; empty looks in ``.tools/`` (scripts/bootstrap.sh) and on PATH.
    binary: str = ""
    #: Agent and model of sessions that name neither; empty: ``mock``/``demo`` in mock mode, else the
    #: organization's default model.
    default_agent: str = ""
    default_model: str = ""
    #: Ship Foundry's demo agent as the ``mock`` agent; None means "in mock mode".
    demo_agent: bool | None = None
    #: Extra environment for every sandbox (never the backend's own secrets), e.g.
    #: ``{"FOUNDRY_DEMO_AGENT_DELAY": "0"}``.
    agent_env: dict[str, str] = Field(default_factory=dict)
    #: Extra agents for every sandbox: agent id → shell command that runs an ACP agent on stdio. Each
    #: becomes sandbox-agent's launcher for that id (a ``mock`` entry replaces the demo agent).
    agent_commands: dict[str, str] = Field(default_factory=dict)
    #: Where ``foundry agents install`` puts Claude Code, Codex and OpenCode (one directory each),
    #: which every sandbox then runs; empty means ``<checkout>/.tools/agents``.
    agents_dir: str = ""
    #: Seconds to wait for a new sandbox's ``/v1/health``.
    health_timeout: float = Field(default=30.0, gt=0)
    #: Per sandbox host process (one per node with the default single sandbox shard): how many
    #: sandboxes may be starting at once (CPU-bound: spawn, health, agent start), and how many may run
    #: at once (memory-bound: a server plus its agents). Beyond either, tasks wait in a FIFO queue and
    #: show ``queued`` with their position. Defaults suit a 2-core / 24 GB machine.
    max_starting: int = Field(default=3, ge=1)
    max_running: int = Field(default=24, ge=1)
    #: A sandbox with no running turn or other use for this long is stopped (its directory is kept;
    #: the next message restarts it and resumes its sessions).
    idle_minutes: float = Field(default=15.0, gt=0)
    #: How each sandbox is isolated: ``bwrap`` jails it with bubblewrap (new user, pid, ipc, uts
    #: namespaces, a read-only system, only its own directory writable); ``none`` runs it as
    #: Foundry's own user with the whole machine in reach, and is logged as a warning at every start.
    isolation: Literal["bwrap", "none"] = "bwrap"
    #: A jailed sandbox's network: ``none`` (its own namespace with only a loopback: nothing on this
    #: machine is reachable, Foundry reaches the server through a relay), ``egress`` (the same, plus
    #: the internet through ``pasta``; this machine, its LAN, loopback, link-local/cloud metadata and
    #: private ranges stay blocked) or ``host`` (the host's network, every local port in reach).
    #: Empty: ``none`` in mock mode; ``egress`` in production, or ``host`` when pasta cannot start
    #: here (``/readyz`` then says why).
    network: Literal["", "host", "egress", "none"] = ""
    #: Addresses or CIDR ranges an ``egress`` sandbox may reach although they are in a blocked range
    #: (e.g. ``["10.0.5.20/32"]`` for a git server on the LAN); never this machine's own addresses.
    egress_allow: list[str] = Field(default_factory=list)
    #: The bubblewrap executable; empty looks for ``bwrap`` on PATH.
    bwrap: str = ""
    #: The pasta executable (network ``egress``); empty looks for ``pasta`` on PATH.
    pasta: str = ""

    @field_validator("egress_allow")
    @classmethod
    def _allow_is_networks(cls, value: list[str]) -> list[str]:
        from foundry.drivers.sandbox.egress_rules import parse_allow

        parse_allow(value)  # a ValueError names the bad entry
        return value

    # Limits of each sandbox (0 turns one off). A sandbox that hits one is stopped and its task shows
    # which; its files are kept. Enforced with cgroups where Foundry may create them, else rlimits.
    #: Memory of the whole sandbox (a memory cgroup), else of each of its processes.
    memory_mb: int = Field(default=4096, ge=0)
    #: Processes and threads of the sandbox at once (a fork bomb stops here).
    max_processes: int = Field(default=512, ge=0)
    #: CPU time of each process of the sandbox, in seconds.
    cpu_seconds: int = Field(default=4 * 3600, ge=0)
    #: Disk usage of the sandbox directory (checked every ``limits_interval_s``); also the largest
    #: file a process may write.
    disk_mb: int = Field(default=20 * 1024, ge=0)
    #: Files and directories in the sandbox directory: empty files take no disk space but each
    #: takes one of the file system's inodes, which every sandbox and Foundry's databases share.
    max_files: int = Field(default=1_000_000, ge=0)
    #: How often each running sandbox is measured against its limits.
    limits_interval_s: float = Field(default=2.0, gt=0)
    #: Longest an agent turn may run; it is then cancelled and fails naming this limit.
    turn_minutes: float = Field(default=60.0, ge=0)


class StripeSettings(BaseModel):
    """Stripe: per-seat billing. Empty keys disable the billing routes (503 naming the setting)."""

    # A key no setting has (a typo inside the group's JSON) is refused, as an unknown variable is;
    # so are infinite and NaN numbers.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    secret_key: SecretStr = SecretStr("")
    #: Every secret a webhook signature may be made with; more than one while a secret is rotated.
    webhook_secrets: list[SecretStr] = Field(default_factory=list)
    #: The per-seat recurring price of the ``team`` plan.
    price_team: str = ""
    #: Stripe's API base; tests and mock mode point it at the fake Stripe.
    api_base: str = "https://api.stripe.com"

    @field_validator("api_base")
    @classmethod
    def _api_base(cls, value: str) -> str:
        return _http_url(value)

    @model_validator(mode="after")
    def _backoff(self) -> StripeSettings:
        if self.retry_base_s > self.retry_cap_s:
            raise ValueError("retry_base_s must not be larger than retry_cap_s")
        return self

    #: Seats of the ``free`` plan.
    free_seats: int = Field(default=1, ge=1)
    #: Days a ``past_due`` subscription keeps accepting new prompts.
    grace_days: int = Field(default=7, ge=0, le=365)
    #: Seconds one Stripe request may take before it counts as failed (and is retried later).
    timeout_s: float = Field(default=20.0, gt=0)
    #: Seconds between the first and second attempt of a failed seat sync; doubles per failure.
    retry_base_s: float = Field(default=1.0, gt=0)
    retry_cap_s: float = Field(default=300.0, gt=0)

    def missing(self) -> list[str]:
        """Environment variables that billing needs and that are empty."""
        out = []
        if not self.secret_key.get_secret_value():
            out.append("FOUNDRY_STRIPE__SECRET_KEY")
        if not [s for s in self.webhook_secrets if s.get_secret_value()]:
            out.append("FOUNDRY_STRIPE__WEBHOOK_SECRETS")
        if not self.price_team:
            out.append("FOUNDRY_STRIPE__PRICE_TEAM")
        return out

    @property
    def configured(self) -> bool:
        return not self.missing()


class Settings(BaseSettings):
    """All of Foundry's configuration."""

    model_config = SettingsConfigDict(env_prefix="FOUNDRY_", env_nested_delimiter="__", extra="ignore")

    mode: Literal["mock", "production"] = "mock"
    host: str = "127.0.0.1"
    port: int = Field(default=7741, ge=1, le=65535)
    data_dir: Path = Path(".data")
    #: Public URL of the app (used for OAuth redirects and the Secure cookie flag).
    app_url: str = ""
    #: Signs cookies and derives the key that encrypts GitHub tokens at rest.
    secret_key: SecretStr = SecretStr("")
    #: The stdlib level of every process; uvicorn takes the same names, lower-cased.
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    #: ``text`` for people, ``json`` (one object per line) for log shippers.
    log_format: Literal["text", "json"] = "text"
    #: Bearer token that ``GET /metrics`` requires; empty turns metrics off (404): they span every
    #: organization.
    metrics_token: SecretStr = SecretStr("")
    #: Mock mode signs anyone in as a seeded user (an admin among them), so `foundry serve` refuses
    #: to bind it to anything but a loopback address unless this is set.
    allow_public_mock: bool = False
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    github: GitHubSettings = Field(default_factory=GitHubSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    sandbox: SandboxSettings = Field(default_factory=SandboxSettings)
    stripe: StripeSettings = Field(default_factory=StripeSettings)
    #: Largest JSON request body the API accepts (webhooks have their own, larger limit).
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("app_url")
    @classmethod
    def _app_url(cls, value: str) -> str:
        return _http_url(value, empty_ok=True)

    @field_validator("data_dir")
    @classmethod
    def _absolute_data_dir(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def sandbox_root(self) -> Path:
        """The local provider's sandbox directory (``<data_dir>/sandboxes`` unless configured)."""
        if self.sandbox.root_dir:
            return Path(self.sandbox.root_dir).expanduser()
        return self.data_dir / "sandboxes"

    @property
    def agents_dir(self) -> Path:
        """Where the real agents are installed (``sandbox.agents_dir``, else ``.tools/agents``)."""
        if self.sandbox.agents_dir:
            return Path(self.sandbox.agents_dir).expanduser().resolve()
        from foundry.drivers.sandbox.agents import default_agents_dir

        return default_agents_dir()

    @property
    def sandbox_network(self) -> Literal["host", "egress", "none"]:
        """The jailed sandboxes' network (``sandbox.network``, or the mode's default)."""
        if self.sandbox.network:
            return self.sandbox.network
        return "none" if self.mode == "mock" else "egress"

    @property
    def demo_agent_enabled(self) -> bool:
        """Whether sandboxes get Foundry's demo agent as their ``mock`` agent."""
        return self.mode == "mock" if self.sandbox.demo_agent is None else self.sandbox.demo_agent

    @property
    def base_url(self) -> str:
        return self.app_url.rstrip("/") or f"http://{self.host}:{self.port}"

    def effective_secret_key(self) -> str:
        """The configured secret, or in mock mode a per-data-dir random one kept on disk."""
        if self.secret_key.get_secret_value():
            return self.secret_key.get_secret_value()
        if self.mode == "production":
            raise RuntimeError("FOUNDRY_SECRET_KEY must be set in production mode")
        path = self.data_dir / "secret_key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(48))
            path.chmod(0o600)
        return path.read_text().strip()

    def secret_values(self) -> list[str]:
        """Every secret value configured (for redaction from logs)."""
        found: list[str] = []

        def walk(value: object) -> None:
            if isinstance(value, SecretStr):
                found.append(value.get_secret_value())
            elif isinstance(value, BaseModel):
                for name in type(value).model_fields:
                    walk(getattr(value, name))
            elif isinstance(value, (list, tuple)):
                for item in value:
                    walk(item)
            elif isinstance(value, dict):
                for item in value.values():
                    walk(item)

        walk(self)
        # Provider API keys handed to agents are plain strings in the sandbox settings.
        found += [v for k, v in self.sandbox.agent_env.items() if _SECRET_NAME.search(k)]
        return [v for v in found if v]

    def check_production(self) -> list[str]:
        """Names of environment variables that production mode needs and that are missing."""
        missing: list[str] = []
        if self.mode != "production":
            return missing
        key = self.secret_key.get_secret_value().strip()
        if not key:
            missing.append("FOUNDRY_SECRET_KEY")
        elif len(key) < MIN_SECRET_KEY_CHARS:
            # It signs every session and derives the key that encrypts GitHub tokens at rest.
            missing.append(f"FOUNDRY_SECRET_KEY (at least {MIN_SECRET_KEY_CHARS} characters)")
        if not self.app_url:
            missing.append("FOUNDRY_APP_URL")
        gh = self.github
        for name, value in (
            ("APP_ID", gh.app_id),
            ("PRIVATE_KEY", gh.private_key.get_secret_value().strip()),
            ("CLIENT_ID", gh.client_id.strip()),
            ("CLIENT_SECRET", gh.client_secret.get_secret_value().strip()),
            ("WEBHOOK_SECRET", gh.webhook_secret.get_secret_value().strip()),
        ):
            if not value:
                missing.append(f"FOUNDRY_GITHUB__{name}")
        return missing


#: The shortest ``FOUNDRY_SECRET_KEY`` production accepts.
MIN_SECRET_KEY_CHARS = 32


@functools.lru_cache(maxsize=1)
def settings_names() -> SettingsNames:
    """Every ``FOUNDRY_*`` variable the settings read."""
    return SettingsNames(Settings)


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment (plus ``overrides``), or one sentence saying what is wrong.

    Raises:
        ConfigError: an unknown ``FOUNDRY_*`` variable (with the closest known name), malformed JSON
            in a dict or list setting, or an invalid value; the message names each variable.
    """
    names = settings_names()
    check_environment(names, os.environ)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, names, os.environ)) from exc


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once (see `load_settings` for the errors)."""
    return load_settings()
