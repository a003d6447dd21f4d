"""The ``foundry`` command line: serve, database maintenance, actor inspection."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click

from foundry import __version__
from foundry.bind import public_mock_refusal
from foundry.cli_agents import agents
from foundry.cli_db import db
from foundry.cli_github_app import github_app
from foundry.config import ConfigError, Settings, get_settings, load_settings
from foundry.logging import configure_logging, forward_host_lines_verbatim
from foundry.open_files import open_file_refusal, raise_open_file_limit
from foundry.supervise import is_supervised, supervise

T = TypeVar("T")


class ConfigRefused(click.ClickException):
    """A configuration error: one line on stderr, exit code 2 (a usage error), no traceback."""

    exit_code = 2


class _FoundryGroup(click.Group):
    """Notes whether a subcommand's ``--help`` was asked for: help is shown even when the
    configuration is wrong."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["foundry.help"] = "--help" in args
        return super().parse_args(ctx, args)


@click.group(cls=_FoundryGroup)
@click.version_option(__version__, prog_name="foundry", message="%(prog)s %(version)s")
@click.pass_context
def main(ctx: click.Context) -> None:
    """Foundry: orchestrate coding agents for teams."""
    # Everything a command writes (databases, backups and their manifests, restored directories)
    # is the operator's alone, whatever the shell's umask.
    os.umask(0o077)
    # Every command refuses a wrong configuration up front, in one line naming the variable, before
    # it imports or starts anything.
    if not ctx.meta.get("foundry.help") and not ctx.resilient_parsing:
        try:
            get_settings()
        except ConfigError as exc:
            raise ConfigRefused(str(exc)) from exc


@main.command()
@click.option("--host", default=None, help="Interface to bind (default FOUNDRY_HOST or 127.0.0.1).")
@click.option(
    "--port", default=None, type=click.IntRange(1, 65535), help="Port (default FOUNDRY_PORT or 7741)."
)
@click.option(
    "--allow-public-mock",
    is_flag=True,
    default=None,
    help="Bind mock mode (anyone can sign in as a seeded admin) to a non-loopback address "
    "(default FOUNDRY_ALLOW_PUBLIC_MOCK or false).",
)
def serve(host: str | None, port: int | None, allow_public_mock: bool | None) -> None:
    """Start the HTTP server, the actor runtime and (unless FOUNDRY_RUNTIME__RAY_ADDRESS) a local Ray."""
    overrides: dict[str, object] = {}
    if host:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    if allow_public_mock:
        overrides["allow_public_mock"] = True
    try:
        settings = load_settings(**overrides)
    except ConfigError as exc:
        raise ConfigRefused(str(exc)) from exc
    missing = settings.check_production()
    if missing:
        raise ConfigRefused(f"production mode needs these settings: {', '.join(missing)}")
    refusal = public_mock_refusal(settings)
    if refusal:
        raise ConfigRefused(refusal)
    if settings.mode == "mock" and settings.runtime.ray_address and not settings.github.configured:
        # Its own fake GitHub would overwrite the hosts' GitHub settings with another App's key, and
        # every GitHub call of a restarted host would then be refused.
        raise ConfigRefused(
            "a second API process in mock mode cannot share the first one's built-in fake GitHub (it "
            "lives in that process): joining a cluster (FOUNDRY_RUNTIME__RAY_ADDRESS) needs one GitHub "
            "App for every API process, configured with FOUNDRY_GITHUB__* (see Deployment files)"
        )
    configure_logging(
        settings.log_level, settings.log_format, process="api", secrets=settings.secret_values()
    )
    if not is_supervised():
        # Inherited by the server, Ray's daemons and the host processes.
        refusal = open_file_refusal(raise_open_file_limit())
        if refusal:
            raise ConfigRefused(refusal)
    if settings.runtime.backend == "ray" and not is_supervised():
        # A server that owns a local Ray would share its process group with Ray's daemons; one that
        # joined a cluster is ended by Ray without a word when its node's raylet dies. Either way the
        # server runs as a child in a session of its own, whose end the supervisor reports (see
        # foundry.supervise). Decided before the web stack is imported, which the supervisor never
        # needs (it stays at ~36 MB instead of ~92 MB).
        sys.exit(supervise(sys.argv[1:]))
    import uvicorn

    if settings.runtime.backend == "ray" and settings.runtime.ray_address:
        from foundry.runtime.cluster_file import prepare_join

        prepare_join(settings, settings.runtime.ray_address)  # before Ray is imported
    # Before Ray is imported: the operator reads the hosts' log lines in this output verbatim.
    forward_host_lines_verbatim()
    from foundry.http.app import create_app

    if settings.runtime.backend == "ray" and settings.runtime.ray_address:
        # Before anything starts: a cluster that is not there is a configuration mistake (one line).
        from foundry.errors import ActorUnavailable
        from foundry.runtime.ray_connect import probe_address

        try:
            probe_address(settings.runtime.ray_address)
        except ActorUnavailable as exc:
            raise ConfigRefused(str(exc)) from exc
    from foundry.data_dir_lock import keep_private

    keep_private(settings.data_dir)
    if not (settings.runtime.backend == "ray" and settings.runtime.ray_address):
        # This server starts the hosts on the data directory's files: it must be the only one.
        from foundry.data_dir_lock import DataDirInUse, lock_data_dir

        try:
            lock_data_dir(settings.data_dir)
        except DataDirInUse as exc:
            raise ConfigRefused(str(exc)) from exc
    from foundry.runtime import local_cluster_watch

    local_cluster_watch.enabled = True
    # A log record like every other line (JSON when the operator asked for it).
    logging.getLogger("foundry.serve").info(
        "foundry %s: %s mode, data in %s, http://%s:%d",
        __version__,
        settings.mode,
        settings.data_dir,
        settings.host,
        settings.port,
    )
    from foundry.http.serving import OrderlyStopServer

    server = OrderlyStopServer(
        uvicorn.Config(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            ws="websockets-sansio",
            # Frames are small JSON fanned out to many sockets; per-socket deflate costs CPU on every
            # frame for every subscriber and buys little.
            ws_per_message_deflate=False,
            log_level=settings.log_level.lower(),
            # Uvicorn's own lines go through Foundry's handler (one format, request ids, redaction).
            log_config=None,
        )
    )
    # A stop like Ctrl-C's (the same orderly shutdown), but ending in a failure status below.
    local_cluster_watch.on_lost = lambda: setattr(server, "should_exit", True)
    server.run()
    if local_cluster_watch.lost is not None:
        # Non-zero, so that the service manager starts Foundry again.
        message = f"{local_cluster_watch.lost}; start foundry serve again"
        if settings.runtime.ray_address:
            # Ray's exit handler would wait for the lost head (a minute) before the process ends,
            # and nothing of this process is left to save: end now.
            click.echo(f"Error: {message}", err=True)
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)
        raise click.ClickException(message)


# ------------------------------------------------------------------------------------------ backups


def _progress(verb: str) -> Callable[[int, int], None]:
    """Print ``<verb>: done/total files`` to stderr, at most twice a second and at the end."""
    last = 0.0

    def report(done: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if done == total or now - last >= 0.5:
            last = now
            click.echo(f"{verb}: {done}/{total} files", err=True)

    return report


@main.command("backup")
@click.argument("dest", type=click.Path(path_type=Path))
@click.option(
    "--lock-timeout",
    default=1.0,
    type=click.FloatRange(min=0.0, max=3600.0),
    show_default=True,
    help="Seconds to wait for a database another process keeps from being read (per try).",
)
@click.option(
    "--attempts",
    default=5,
    type=click.IntRange(1, 100),
    show_default=True,
    help="Tries before leaving such a database out.",
)
def backup_command(dest: Path, lock_timeout: float, attempts: int) -> None:
    """Copy every actor database into DEST (new or empty) while the server keeps running.

    The copies come from SQLite's backup API on read snapshots, which never hold up the server's
    writes; every write acknowledged before the backup started is in it, with its messages to other
    actors (those in flight are put back in their sender's outbox). DEST also gets manifest.json (version,
    time, and per file its role, schema revision, size and sha256). Progress goes to stderr, a JSON
    summary to stdout; a database that could not be copied is named and the exit status is 1.

    Included: the actor databases and, in mock mode, the data dir's secret_key (it decrypts the
    stored GitHub tokens and signs sessions), so DEST is as sensitive as the data dir and is made
    readable by its owner only. Left out: host-secrets.json (rewritten from the settings at every
    start), ray-address, schema templates, sandboxes (checkouts) and mock-remotes.
    """
    from foundry.backup import BackupError, backup

    settings = get_settings()
    try:
        result = backup(
            settings.data_dir,
            dest,
            _roles_of(settings),
            lock_timeout=lock_timeout,
            attempts=attempts,
            progress=_progress("backup"),
        )
    except BackupError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps(result.summary()))
    for skipped in result.skipped:
        click.echo(f"backup: could not copy {skipped['path']}: {skipped['reason']}", err=True)
    if result.skipped:
        sys.exit(1)


@main.command("restore")
@click.argument("src", type=click.Path(path_type=Path))
@click.option("--allow-partial", is_flag=True, help="Restore a backup that left some databases out.")
def restore_command(src: Path, allow_partial: bool) -> None:
    """Restore the backup SRC into the data dir (FOUNDRY_DATA_DIR), which must be new or empty.

    Checks first, writing nothing until all pass: no server running on the data dir, every file of
    the manifest present with its sha256, and no schema revision newer than this Foundry's (older
    ones are migrated when each actor first wakes). Prints a JSON summary.
    """
    from foundry.backup import BackupError
    from foundry.restore import restore, role_schemas

    settings = get_settings()
    try:
        schemas = role_schemas(_roles_of(settings), settings.runtime.extra_roles)
        summary = restore(
            src, settings.data_dir, schemas, allow_partial=allow_partial, progress=_progress("restore")
        )
    except BackupError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps(summary))


# ------------------------------------------------------------------------------------------ actors


@main.group()
def actors() -> None:
    """Inspect the actor runtime of a running Foundry."""


def _roles_of(settings: Settings) -> list[str]:
    from foundry.runtime.role import available_roles

    return available_roles() + [r for r in settings.runtime.extra_roles if r not in available_roles()]


def _on_ray(address: str | None, settings: Settings, work: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Join the running Foundry's Ray cluster, run ``work``, and leave."""
    from foundry.runtime.cluster_file import cluster_address

    # Before importing Ray, which fixes its authentication mode from the environment on import.
    address = address or cluster_address(settings)
    if address is None:
        raise click.ClickException(
            f"no running Foundry found for data dir {settings.data_dir} "
            "(start it with `foundry serve`, or pass --address / set the runtime's ray_address)"
        )
    import ray

    from foundry.errors import ActorUnavailable
    from foundry.runtime.ray_connect import init_ray

    async def joined() -> T:
        try:
            await init_ray(
                {"address": address, "namespace": settings.runtime.namespace, "log_to_driver": False}
            )
        except (ConnectionError, ActorUnavailable) as exc:
            raise click.ClickException(f"no running Foundry Ray cluster found at {address!r}: {exc}") from exc
        return await work()

    try:
        return asyncio.run(joined())
    finally:
        if ray.is_initialized():
            ray.shutdown()


#: How long `foundry actors ls` waits for one host's answer before listing it as unavailable.
HOST_INFO_TIMEOUT_S = 5.0


@actors.command("ls")
@click.option(
    "--address", default=None, help="Ray cluster address (default: the one this Foundry's data dir records)."
)
def actors_ls(address: str | None) -> None:
    """Which instances are awake on which host, and which instances hold dead letters.

    Per host: ``awake`` (keys), and ``deadLetters``: ``total`` and ``instances`` (key → count, asleep
    instances included). Looks hosts up; never creates one.
    """
    from foundry.runtime.placement import all_hosts, process_name, process_of
    from foundry.runtime.role import host_name

    settings = get_settings()
    namespace = settings.runtime.namespace

    async def _run() -> dict[str, object]:
        import ray  # imported by _on_ray, after it learned the cluster's authentication mode
        from ray.exceptions import RayError

        out: dict[str, object] = {}
        unanswered: dict[str, str] = {}
        for role, shard in all_hosts(settings):
            name = host_name(role, shard)
            process = process_name(process_of(settings, role, shard))
            try:
                handle = ray.get_actor(process, namespace=settings.runtime.namespace)
            except ValueError:
                out[name] = {
                    "running": False,
                    "process": process,
                    "unavailable": f"no host process {process} in Ray namespace {namespace!r}",
                }
                continue
            if process in unanswered:  # one host of it did not answer: its others will not either
                out[name] = {"running": False, "process": process, "unavailable": unanswered[process]}
                continue
            try:
                # Bounded: a host whose node left, or a process that hangs, must not hide the others.
                info: dict[str, Any] = await asyncio.wait_for(
                    handle.info.remote(role, shard), HOST_INFO_TIMEOUT_S
                )
                awake = await asyncio.wait_for(handle.awake.remote(role, shard), HOST_INFO_TIMEOUT_S)
            except (TimeoutError, RayError) as exc:
                why = (
                    f"no answer within {HOST_INFO_TIMEOUT_S:g} s"
                    if isinstance(exc, TimeoutError)
                    else str(exc)
                )
                unanswered[process] = why[:500]
                out[name] = {"running": False, "process": process, "unavailable": unanswered[process]}
                continue
            dead: dict[str, int] = info.get("deadLetters", {})
            out[name] = {
                "running": True,
                "process": process,
                "pid": info["pid"],
                "node": info["node"],
                # Instances with commands or sends waiting (asleep ones included), and commands
                # queued or running in the awake ones.
                "pending": info["pending"],
                "queued": info["queued"],
                "awake": awake,
                "deadLetters": {"total": sum(dead.values()), "instances": dead},
            }
        if not any(isinstance(v, dict) and v.get("running") for v in out.values()):
            elsewhere = sorted(
                {
                    str(actor["namespace"])
                    for actor in ray.util.list_named_actors(all_namespaces=True)
                    if str(actor.get("name", "")).startswith("foundry.")
                }
                - {settings.runtime.namespace}
            )
            hint = f"; host processes run in namespace(s) {', '.join(elsewhere)}" if elsewhere else ""
            out["$problem"] = (
                f"no host process of this deployment answers in Ray namespace {namespace!r}{hint}: "
                "is FOUNDRY_RUNTIME__NAMESPACE the deployment's?"
            )
        return out

    listing = _on_ray(address, settings, _run)
    click.echo(json.dumps(listing, indent=2))
    if isinstance(listing, dict) and "$problem" in listing:
        # A healthy cluster asked in the wrong namespace must not read as "all down, fine".
        raise click.ClickException(str(listing["$problem"]))


def _instance_op(address: str | None, role: str, key: str, method: str) -> object:
    """Run a host's operator action on one instance and return its result (or exit with its error)."""
    from foundry.errors import FoundryError
    from foundry.runtime.client import unwrap
    from foundry.runtime.keys import shard_of, validate_key
    from foundry.runtime.placement import process_name, process_of

    settings = get_settings()
    if role not in _roles_of(settings):
        raise click.BadParameter(f"unknown role {role!r}; choose from {', '.join(_roles_of(settings))}")
    try:
        validate_key(key)
    except FoundryError as exc:
        raise click.BadParameter(str(exc), param_hint="--key") from exc
    shard = shard_of(key, settings.runtime.shards_for(role))
    name = process_name(process_of(settings, role, shard))

    async def _run() -> object:
        import ray  # imported by _on_ray, after it learned the cluster's authentication mode

        try:
            handle = ray.get_actor(name, namespace=settings.runtime.namespace)
        except ValueError:
            raise click.ClickException(f"host process {name} is not running") from None
        try:
            return unwrap(await getattr(handle, method).remote(role, shard, key))
        except FoundryError as exc:
            raise click.ClickException(f"{exc.code}: {exc}") from exc

    return _on_ray(address, settings, _run)


@actors.command("dead")
@click.option("--role", required=True, help="Role of the instance whose outbox to read.")
@click.option("--key", required=True, help="Key of the instance.")
@click.option(
    "--address", default=None, help="Ray cluster address (default: the one this Foundry's data dir records)."
)
def actors_dead(role: str, key: str, address: str | None) -> None:
    """List an instance's dead letters: sends that failed too often and are no longer retried."""
    click.echo(json.dumps(_instance_op(address, role, key, "dead_letters"), indent=2))


@actors.command("retry-dead")
@click.option("--role", required=True, help="Role of the instance whose dead letters to retry.")
@click.option("--key", required=True, help="Key of the instance.")
@click.option(
    "--address", default=None, help="Ray cluster address (default: the one this Foundry's data dir records)."
)
def actors_retry_dead(role: str, key: str, address: str | None) -> None:
    """Deliver an instance's dead letters again, in order, with fresh attempt counts."""
    click.echo(json.dumps(_instance_op(address, role, key, "retry_dead_letters")))


# The GitHub App's manifest and the credentials GitHub returns for it (foundry/cli_github_app.py).
main.add_command(db)
main.add_command(github_app)
# The real agents sandboxes run: install and list them (foundry/cli_agents.py).
main.add_command(agents)


if __name__ == "__main__":
    main()
