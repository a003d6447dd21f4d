"""Routes of the fake GitHub that concern the App itself: the OAuth web flow, ``/app``, the manifest
conversion, installations and installation tokens.

These are the endpoints authenticated by the App's own credentials (JWT, client secret, one-time
codes) rather than by an installation or user token; the data routes live in ``_fake_data_routes``.
"""

from __future__ import annotations

import base64
import html
import secrets
from datetime import timedelta
from urllib.parse import urlencode

from foundry.drivers.github._fake_auth import FakeAuth
from foundry.drivers.github._fake_http import HttpError, Request, Response
from foundry.drivers.github._fake_records import APP_PERMISSIONS, JSON, Installation, node_id, rewrite, ts
from foundry.drivers.github._fake_state import InstallationGrant

__all__ = ["CODE_TTL", "TOKEN_TTL", "AppRoutes"]

TOKEN_TTL = timedelta(hours=1)
CODE_TTL = timedelta(minutes=10)  # GitHub's OAuth codes expire after 10 minutes


class AppRoutes(FakeAuth):
    """OAuth, App and installation endpoints of `FakeGitHub`."""

    # ------------------------------------------------------------------------------ routes: OAuth

    def _oauth_authorize(self, request: Request) -> Response:
        if request.query.get("client_id") != self.client_id:
            return Response(404, b"<h1>404 - client_id not found</h1>", {"Content-Type": "text/html"})
        login = request.query.get("login")
        if not login or login not in self._world.accounts or self._world.accounts[login].type != "User":
            return self._account_chooser(request)
        redirect_uri = request.query.get("redirect_uri")
        if not redirect_uri:
            raise HttpError(422, "redirect_uri is required by this fake")
        code = self.issue_oauth_code(login, redirect_uri)
        params = {"code": code}
        if "state" in request.query:
            params["state"] = request.query["state"]
        separator = "&" if "?" in redirect_uri else "?"
        return Response(302, b"", {"Location": f"{redirect_uri}{separator}{urlencode(params)}"})

    def _account_chooser(self, request: Request) -> Response:
        """The fake's stand-in for GitHub's sign-in page: pick a user (mock mode)."""
        users = sorted(a.login for a in self._world.accounts.values() if a.type == "User")
        base = [(k, v) for k, v in request.query_pairs if k != "login"]
        items = "".join(
            f'<li><a href="/login/oauth/authorize?{html.escape(urlencode([*base, ("login", u)]))}">'
            f"Sign in as {html.escape(u)}</a></li>"
            for u in users
        )
        page = (
            "<!doctype html><title>Sign in to GitHub (fake)</title>"
            f"<h1>Sign in to GitHub</h1><ul>{items}</ul>"
        )
        return Response(200, page.encode(), {"Content-Type": "text/html; charset=utf-8"})

    def _oauth_access_token(self, request: Request) -> Response:
        params = request.params()
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "basic":
            # GitHub also accepts the client credentials as HTTP Basic (authlib's default).
            try:
                client_id, _, client_secret = base64.b64decode(encoded).decode().partition(":")
            except ValueError as exc:
                raise HttpError(400, "Malformed Basic authorization header") from exc
            params.setdefault("client_id", client_id)
            params.setdefault("client_secret", client_secret)
        result: dict[str, str]
        if params.get("client_id") != self.client_id or params.get("client_secret") != self.client_secret:
            result = {
                "error": "incorrect_client_credentials",
                "error_description": "The client_id and/or client_secret passed are incorrect.",
                "error_uri": "https://docs.github.com/apps/managing-oauth-apps/troubleshooting-oauth-app"
                "-access-token-request-errors/#incorrect-client-credentials",
            }
        else:
            grant = self._codes.get(params.get("code", ""))
            if grant is None or grant.used or self._now() - grant.issued_at > CODE_TTL:
                result = {
                    "error": "bad_verification_code",
                    "error_description": "The code passed is incorrect or expired.",
                    "error_uri": "https://docs.github.com/apps/managing-oauth-apps/troubleshooting-oauth-app"
                    "-access-token-request-errors/#bad-verification-code",
                }
            elif grant.redirect_uri and params.get("redirect_uri") not in (None, grant.redirect_uri):
                result = {
                    "error": "redirect_uri_mismatch",
                    "error_description": "The redirect_uri MUST match the registered callback URL for this "
                    "application.",
                    "error_uri": "https://docs.github.com/apps/managing-oauth-apps/troubleshooting-"
                    "authorization-request-errors/#redirect-uri-mismatch",
                }
            else:
                grant.used = True
                result = {
                    "access_token": self.issue_user_token(grant.login),
                    "token_type": "bearer",
                    "scope": "",
                }
        # GitHub answers these errors with 200, and form-encoded unless JSON is asked for.
        if "json" in request.headers.get("accept", ""):
            return self._json(result)
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        return Response(200, urlencode(result).encode(), form)

    # ------------------------------------------------------------------------------ routes: App

    def _get_app(self, request: Request) -> Response:
        self._require_app_jwt(request)
        out = rewrite(
            self._render.template("apps/get-authenticated"), [("apps/octoapp", f"apps/{self.app_slug}")]
        )
        out.update(
            id=self.app_id,
            slug=self.app_slug,
            client_id=self.client_id,
            name="Foundry (fake)",
            node_id=node_id("Integration", self.app_id),
            permissions=dict(self.app_permissions),
            events=list(self.app_events),
            installations_count=len(self._world.installations),
        )
        return self._json(out)

    def manifest_code(self, manifest: JSON) -> str:
        """What GitHub does when the owner confirms a manifest: a one-time code for its conversion.
        The App created is this fake's own App, with the manifest's permissions and events."""
        code = secrets.token_hex(10)
        with self._lock:
            self._manifest_codes[code] = manifest
        return code

    def _convert_manifest(self, request: Request, code: str) -> Response:
        # No authentication: the code is the credential, usable once.
        manifest = self._manifest_codes.pop(code, None)
        if manifest is None:
            raise HttpError(404, "Not Found")
        self.app_permissions = dict(manifest.get("default_permissions") or {})
        self.app_events = list(manifest.get("default_events") or [])
        out = rewrite(
            self._render.template("apps/get-authenticated"), [("apps/octoapp", f"apps/{self.app_slug}")]
        )
        out.update(
            id=self.app_id,
            slug=self.app_slug,
            name=manifest.get("name"),
            client_id=self.client_id,
            client_secret=self.client_secret,
            webhook_secret=secrets.token_hex(20),
            pem=self.private_key_pem,
            permissions=dict(self.app_permissions),
            events=list(self.app_events),
        )
        return self._json(out, 201)

    def _list_installations(self, request: Request) -> Response:
        self._require_app_jwt(request)
        items = [self._render.render_installation(i) for _, i in sorted(self._world.installations.items())]
        return self._page(request, items)

    def _find_installation(self, installation_id: str) -> Installation:
        try:
            return self._world.installations[int(installation_id)]
        except (KeyError, ValueError) as exc:
            raise HttpError(404, "Not Found") from exc

    def _get_installation(self, request: Request, installation_id: str) -> Response:
        self._require_app_jwt(request)
        return self._json(self._render.render_installation(self._find_installation(installation_id)))

    def _create_token(self, request: Request, installation_id: str) -> Response:
        self._require_app_jwt(request)
        inst = self._find_installation(installation_id)
        if inst.suspended:
            raise HttpError(403, "This installation has been suspended")
        body = request.json()
        available = {r.id: r for r in self._world.repos.values() if r.installation_id == inst.id}
        wanted: set[int] | None = None
        if body.get("repository_ids") is not None:
            wanted = {int(i) for i in body["repository_ids"]}
        if body.get("repositories") is not None:
            by_name = {r.name: r.id for r in available.values()}
            if any(name not in by_name for name in body["repositories"]):
                wanted = {-1}
            else:
                wanted = (wanted or set()) | {by_name[name] for name in body["repositories"]}
        if wanted is not None and not wanted <= available.keys():
            raise HttpError(
                422,
                "There is at least one repository that does not exist or is not accessible "
                "to the parent installation.",
            )
        token = "ghs_" + secrets.token_urlsafe(27)
        expires_at = self._now() + TOKEN_TTL
        self._installation_tokens[token] = InstallationGrant(
            inst.id, expires_at, frozenset(wanted) if wanted is not None else None
        )
        out = self._render.template("apps/create-installation-access-token")
        out.update(
            token=token,
            expires_at=ts(expires_at),
            permissions=dict(APP_PERMISSIONS),
            repository_selection="selected" if wanted is not None else inst.repository_selection,
        )
        if wanted is not None:
            out["repositories"] = [self._render.render_repo(available[i]) for i in sorted(wanted)]
        else:
            out.pop("repositories", None)
        return self._json(out, 201)
