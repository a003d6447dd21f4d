"""``foundry github-app``: create the GitHub App Foundry needs, from its manifest.

GitHub's manifest flow: a browser POSTs the manifest to GitHub (``manifest --html`` writes that
page), the owner confirms, GitHub redirects to the manifest's ``redirect_url`` with a one-hour
``code``, and ``convert`` trades the code for the new App's id, key and secrets.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

import click

from foundry.config import get_settings
from foundry.github_app import build_manifest


class _Refused(click.ClickException):
    """A missing or wrong setting: one line on stderr, exit code 2 like every configuration error."""

    exit_code = 2


@click.group("github-app")
def github_app() -> None:
    """The GitHub App: its manifest, and the credentials GitHub returns for it."""


def _manifest(name: str | None) -> dict[str, object]:
    app_url = get_settings().app_url
    if not app_url:
        raise _Refused(
            "FOUNDRY_APP_URL must be set to Foundry's public URL (e.g. https://foundry.example.com): "
            "the manifest's webhook and callback URLs are built from it"
        )
    try:
        return build_manifest(app_url, name)
    except ValueError as exc:
        raise _Refused(str(exc)) from exc


def _form(manifest: dict[str, object], org: str | None) -> str:
    """A page whose button POSTs ``manifest`` to GitHub's "new App" form (personal or ``org``'s)."""
    web = get_settings().github.web_url.rstrip("/")
    action = f"{web}/organizations/{org}/settings/apps/new" if org else f"{web}/settings/apps/new"
    value = html.escape(json.dumps(manifest), quote=True)
    owner = html.escape(f"the organization {org}" if org else "your personal account")
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        "<title>Create Foundry's GitHub App</title></head><body>\n"
        f'<form method="post" action="{html.escape(action, quote=True)}">\n'
        f'<input type="hidden" name="manifest" value="{value}">\n'
        f"<p>Creates the GitHub App {html.escape(str(manifest['name']))} owned by {owner}.</p>\n"
        '<button type="submit">Create the GitHub App on GitHub</button>\n</form>\n</body></html>\n'
    )


@github_app.command("manifest")
@click.option("--name", default=None, help="The App's name (unique on GitHub; default 'Foundry <host>').")
@click.option("--html", "as_html", is_flag=True, help="Print a page that submits the manifest to GitHub.")
@click.option("--org", default=None, help="With --html: create the App in this organization.")
def manifest_command(name: str | None, as_html: bool, org: str | None) -> None:
    """Print the GitHub App manifest (JSON) for this Foundry's FOUNDRY_APP_URL."""
    manifest = _manifest(name)
    click.echo(_form(manifest, org) if as_html else json.dumps(manifest, indent=2), nl=not as_html)


@github_app.command("convert")
@click.argument("code")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the settings to this new file (mode 0600) instead of standard output.",
)
def convert_command(code: str, out: Path | None) -> None:
    """Trade the manifest flow's CODE for the new App's settings (FOUNDRY_GITHUB__* lines)."""
    import httpx

    settings = get_settings()
    if not code.replace("_", "").replace("-", "").isalnum() or len(code) > 200:
        raise click.BadParameter("the code is the value of ?code= in the URL GitHub redirected to")
    url = f"{settings.github.api_url.rstrip('/')}/app-manifests/{code}/conversions"
    try:
        response = httpx.post(url, headers={"Accept": "application/vnd.github+json"}, timeout=30)
    except httpx.HTTPError as exc:
        raise click.ClickException(f"GitHub did not answer {url}: {exc}") from exc
    if response.status_code != 201:
        raise click.ClickException(
            f"GitHub refused the code ({response.status_code}): codes work once, for one hour; "
            "create the App again or configure it by hand"
        )
    app = response.json()
    lines = [
        f"# GitHub App {app.get('slug')} ({app.get('html_url')})",
        f"FOUNDRY_GITHUB__APP_ID={app['id']}",
        f"FOUNDRY_GITHUB__CLIENT_ID={app['client_id']}",
        f"FOUNDRY_GITHUB__CLIENT_SECRET={app['client_secret']}",
        f"FOUNDRY_GITHUB__WEBHOOK_SECRET={app['webhook_secret']}",
        # One line, its line breaks written as \n (Foundry turns them back): every env file format
        # (docker compose's env_file, docker run --env-file, systemd) reads it the same way.
        "FOUNDRY_GITHUB__PRIVATE_KEY=" + str(app["pem"]).strip().replace("\n", "\\n"),
    ]
    text = "\n".join(lines) + "\n"
    if out is None:
        click.echo(text, nl=False)
        return
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise click.ClickException(f"{out} exists; choose a new file") from None
    with os.fdopen(fd, "w") as f:
        f.write(text)
    click.echo(f"wrote the App's settings to {out}")
