"""Routes of the fake GitHub that serve data to installation and user tokens: the installation's
repositories, the signed-in user, users, organizations and their members, repositories and pull
requests.

Kept apart from the App routes (``_fake_app_routes``): these only read or add to the world, each
answer filtered by what the caller's token may see.
"""

from __future__ import annotations

import copy
import html
from collections.abc import Callable
from typing import Any

from foundry.drivers.github._fake_auth import FakeAuth, InstallationPrincipal, UserPrincipal
from foundry.drivers.github._fake_http import HttpError, Request, Response
from foundry.drivers.github._fake_records import Account, Pull

__all__ = ["DataRoutes"]


class DataRoutes(FakeAuth):
    """User, organization, repository and pull request endpoints of `FakeGitHub`."""

    # ------------------------------------------------------------------------------ routes: data

    def _list_installation_repos(self, request: Request) -> Response:
        principal = self._principal(request)
        if not isinstance(principal, InstallationPrincipal):
            raise HttpError(
                403,
                "You must authenticate with an installation access token in order to list "
                "repositories for an installation.",
            )
        repos = [r for _, r in sorted(self._world.repos.items()) if self._can_see_repo(principal, r)]
        inst = self._world.installations[principal.installation_id]
        return self._page(
            request,
            [self._render.render_repo(r) for r in repos],
            "repositories",
            {"repository_selection": inst.repository_selection},
        )

    def _get_user(self, request: Request) -> Response:
        return self._json(self._render.render_user(self._require_user(request), "users/get-authenticated"))

    def _list_emails(self, request: Request) -> Response:
        return self._page(request, copy.deepcopy(self._require_user(request).emails))

    def _user_orgs(self, login: str) -> list[Account]:
        return [
            self._world.accounts[org]
            for org, members in sorted(self._world.members.items())
            if login in members
        ]

    def _list_user_orgs(self, request: Request) -> Response:
        user = self._require_user(request)
        orgs = [
            self._render.render_org(o, "orgs/list-for-authenticated-user")
            for o in self._user_orgs(user.login)
        ]
        return self._page(request, orgs)

    def _list_user_installations(self, request: Request) -> Response:
        user = self._require_user(request)
        visible = {user.login} | {o.login for o in self._user_orgs(user.login)}
        items = [
            self._render.render_installation(i)
            for _, i in sorted(self._world.installations.items())
            if i.account_login in visible
        ]
        return self._page(request, items, "installations")

    def _get_public_user(self, request: Request, username: str) -> Response:
        self._principal(request)
        account = self._world.accounts.get(username)
        if account is None:
            raise HttpError(404, "Not Found")
        if account.type == "Organization":
            return self._json(self._render.render_org(account, "orgs/get"))
        return self._json(self._render.render_user(account, "users/get-by-username"))

    def _get_avatar(self, request: Request, user_id: str) -> Response:
        """An account's avatar (public, like GitHub's): its initial on a colour of its own."""
        account = next((a for a in self._world.accounts.values() if str(a.id) == user_id), None)
        if account is None:
            raise HttpError(404, "Not Found")
        hue = account.id * 47 % 360
        svg = (
            '<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64" viewBox="0 0 64 64">'
            f'<rect width="64" height="64" fill="hsl({hue},45%,45%)"/>'
            '<text x="32" y="43" font-family="sans-serif" font-size="30" fill="#fff" '
            f'text-anchor="middle">{html.escape(account.login[:1].upper())}</text></svg>'
        )
        return Response(200, svg.encode(), {"Content-Type": "image/svg+xml", "Cache-Control": "max-age=300"})

    def _get_org(self, request: Request, org: str) -> Response:
        self._principal(request)
        account = self._world.accounts.get(org)
        if account is None or account.type != "Organization":
            raise HttpError(404, "Not Found")
        return self._json(self._render.render_org(account, "orgs/get"))

    def _list_members(self, request: Request, org: str) -> Response:
        principal = self._principal(request)
        account = self._world.accounts.get(org)
        if account is None or account.type != "Organization":
            raise HttpError(404, "Not Found")
        if isinstance(principal, InstallationPrincipal):
            if self._world.installations[principal.installation_id].account_login != org:
                raise HttpError(403, "Resource not accessible by integration")
        elif principal.login not in self._world.members.get(org, {}):
            raise HttpError(403, "Must have admin rights to Repository.")
        role = request.query.get("role", "all")
        if role not in {"all", "admin", "member"}:
            raise HttpError(422, "Validation Failed")
        members = [
            self._render.render_account(self._world.accounts[login])
            for login, member_role in sorted(self._world.members.get(org, {}).items())
            if role == "all" or member_role == role
        ]
        return self._page(request, members)

    def _get_repo(self, request: Request, owner: str, repo: str) -> Response:
        _, found = self._visible_repo(request, owner, repo)
        return self._json(self._render.render_repo(found, "repos/get"))

    def _list_pulls(self, request: Request, owner: str, repo: str) -> Response:
        _, found = self._visible_repo(request, owner, repo)
        state = request.query.get("state", "open")
        pulls = [p for p in self._world.pulls[found.full_name].values() if state == "all" or p.state == state]
        if "head" in request.query:
            head_owner, _, head_ref = request.query["head"].rpartition(":")
            pulls = [p for p in pulls if p.head_ref == head_ref and head_owner in ("", found.owner)]
        if "base" in request.query:
            pulls = [p for p in pulls if p.base_ref == request.query["base"]]
        sort = request.query.get("sort", "created")
        key: Callable[[Pull], Any] = (
            (lambda p: (p.updated_at, p.number))
            if sort == "updated"
            else (lambda p: (p.created_at, p.number))
        )
        direction = request.query.get("direction", "desc" if sort in ("created", "updated") else "asc")
        pulls.sort(key=key, reverse=direction == "desc")
        return self._page(request, [self._render.render_pull(p, "pulls/list") for p in pulls])

    def _get_pull(self, request: Request, owner: str, repo: str, number: str) -> Response:
        _, found = self._visible_repo(request, owner, repo)
        pull = self._world.pulls[found.full_name].get(int(number)) if number.isdigit() else None
        if pull is None:
            raise HttpError(404, "Not Found")
        return self._json(self._render.render_pull(pull, "pulls/get"))

    def _create_pull(self, request: Request, owner: str, repo: str) -> Response:
        principal, found = self._visible_repo(request, owner, repo)
        body = request.json()
        missing = [name for name in ("head", "base") if not body.get(name)]
        if missing or not (body.get("title") or body.get("issue")):
            fields = missing + ([] if body.get("title") else ["title"])
            raise HttpError(
                422,
                "Validation Failed",
                errors=[
                    {"resource": "PullRequest", "field": name, "code": "missing_field"} for name in fields
                ],
            )
        head_owner, _, head_ref = str(body["head"]).rpartition(":")
        base_ref = str(body["base"])
        if head_owner not in ("", found.owner):
            raise HttpError(
                422,
                "Validation Failed",
                errors=[{"resource": "PullRequest", "field": "head", "code": "invalid"}],
            )
        if head_ref == base_ref:
            raise HttpError(
                422,
                "Validation Failed",
                errors=[
                    {
                        "resource": "PullRequest",
                        "code": "custom",
                        "message": f"No commits between {base_ref} and {head_ref}",
                    }
                ],
            )
        for existing in self._world.pulls[found.full_name].values():
            if existing.state == "open" and existing.head_ref == head_ref and existing.base_ref == base_ref:
                raise HttpError(
                    422,
                    "Validation Failed",
                    errors=[
                        {
                            "resource": "PullRequest",
                            "code": "custom",
                            "message": f"A pull request already exists for {found.owner}:{head_ref}.",
                        }
                    ],
                )
        if isinstance(principal, UserPrincipal):
            author = principal.login
        else:
            author = f"{self.app_slug}[bot]"
            if author not in self._world.accounts:
                self._world.accounts[author] = Account(author, next(self._ids), "User")
        number = self.add_pull(
            found.full_name,
            None,
            str(body.get("title") or ""),
            head_ref,
            base_ref=base_ref,
            body=body.get("body"),
            author=author,
            draft=bool(body.get("draft", False)),
        )
        if self.on_pull_created is not None:
            self.on_pull_created(
                {
                    "repo": found.full_name,
                    "number": number,
                    "title": str(body.get("title") or ""),
                    "head": head_ref,
                    "base": base_ref,
                    "body": body.get("body"),
                    "author": author,
                    "draft": bool(body.get("draft", False)),
                }
            )
        return self._json(
            self._render.render_pull(self._world.pulls[found.full_name][number], "pulls/create"), 201
        )
