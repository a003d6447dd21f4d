"""The fake GitHub's records, and how they look on the wire.

Every body is a deep copy of GitHub's own example for the operation (``examples.json``, extracted from
``@octokit/openapi`` by ``scripts/extract_github_examples.py``) with identity, URL and state fields
overwritten from a record. Canonical ``https://api.github.com`` / ``https://github.com`` URLs are kept
while rendering; `localize` points them at the fake's own host when a response is sent.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from typing import Any, Literal

from foundry.github_app import OPTIONAL_PERMISSIONS, REQUIRED_EVENTS, REQUIRED_PERMISSIONS

JSON = Any
AccountType = Literal["Organization", "User"]

#: The fake App holds exactly what Foundry asks of a real one (tests take some away).
APP_PERMISSIONS: dict[str, str] = {**REQUIRED_PERMISSIONS, **OPTIONAL_PERMISSIONS}
APP_EVENTS: list[str] = list(REQUIRED_EVENTS)


def load_examples() -> dict[str, Any]:
    """GitHub's example response body per operation id (``examples.json``, shipped as package data)."""
    text = resources.files(__package__).joinpath("examples.json").read_text(encoding="utf-8")
    operations: dict[str, Any] = json.loads(text)["operations"]
    return {op_id: entry["example"] for op_id, entry in operations.items()}


# ----------------------------------------------------------------------------------------- records


@dataclass
class Account:
    """A user or an organization (GitHub ids share one space)."""

    login: str
    id: int
    type: AccountType
    name: str | None = None
    email: str | None = None  # the public profile email; None = private
    emails: list[dict[str, Any]] = field(default_factory=list)
    description: str | None = None
    created_at: datetime = field(default_factory=lambda: datetime(2020, 1, 1, tzinfo=UTC))


@dataclass
class Installation:
    """The App installed on an account."""

    id: int
    account_login: str
    suspended: bool
    repository_selection: str
    created_at: datetime


@dataclass
class Repo:
    """A repository; ``installation_id`` is the installation that can see it, if any."""

    id: int
    owner: str
    name: str
    installation_id: int | None
    private: bool
    default_branch: str
    archived: bool
    description: str | None
    created_at: datetime
    updated_at: datetime
    clone_url: str | None  # an override (e.g. a local file:// remote in mock mode)

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"


@dataclass
class Pull:
    """A pull request; ``repo`` is the repository's full name."""

    number: int
    id: int
    repo: str
    title: str
    body: str | None
    state: str
    draft: bool
    merged: bool
    head_ref: str
    head_sha: str
    base_ref: str
    author: str
    created_at: datetime
    updated_at: datetime
    closed_at: datetime | None = None
    merged_at: datetime | None = None


@dataclass
class World:
    """Everything the fake knows. Mutated only under `FakeGitHub`'s lock."""

    accounts: dict[str, Account] = field(default_factory=dict)  # users and organizations by login
    installations: dict[int, Installation] = field(default_factory=dict)
    repos: dict[str, Repo] = field(default_factory=dict)  # by full name
    members: dict[str, dict[str, str]] = field(default_factory=dict)  # org -> login -> role
    pulls: dict[str, dict[int, Pull]] = field(default_factory=dict)  # repo full name -> number -> PR


@dataclass(frozen=True)
class AppIdentity:
    """The GitHub App the fake plays host to."""

    app_id: int
    app_slug: str
    client_id: str


# ----------------------------------------------------------------------------------------- helpers


def ts(value: datetime | None) -> str | None:
    """GitHub's timestamp format: ISO 8601 in UTC with a ``Z``."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if value is not None else None


def node_id(kind: str, ident: int) -> str:
    # GitHub's legacy global ids are base64("<len>:<Type><id>"), e.g. MDQ6VXNlcjE= for user 1.
    return base64.b64encode(f"{len(kind):02d}:{kind}{ident}".encode()).decode()


def sha(*parts: object) -> str:
    """A stable fake commit sha derived from ``parts``."""
    return hashlib.sha1(":".join(map(str, parts)).encode()).hexdigest()


def rewrite(node: JSON, pairs: Iterable[tuple[str, str]]) -> JSON:
    """Replace example identities (``octocat/Hello-World``…) inside every string of ``node``."""
    pairs = list(pairs)
    if isinstance(node, str):
        for old, new in pairs:
            node = node.replace(old, new)
        return node
    if isinstance(node, list):
        return [rewrite(item, pairs) for item in node]
    if isinstance(node, dict):
        return {key: rewrite(value, pairs) for key, value in node.items()}
    return node


#: GitHub's hosts and where the fake serves them. Avatars too: mock mode runs offline, and a page
#: showing people must not wait on (or fail to load) images from the internet.
_LOCAL_PATHS = (
    ("https://api.github.com", ""),
    ("https://github.com", ""),
    ("https://avatars.githubusercontent.com", "/avatars"),
)


def localize(node: JSON, base_url: str) -> JSON:
    """Point GitHub's own URLs at ``base_url`` (PyGithub refuses to follow foreign hosts)."""
    if isinstance(node, str):
        for prefix, local in _LOCAL_PATHS:
            if node == prefix or node.startswith(prefix + "/"):
                return base_url + local + node[len(prefix) :]
        return node
    if isinstance(node, list):
        return [localize(item, base_url) for item in node]
    if isinstance(node, dict):
        return {key: localize(value, base_url) for key, value in node.items()}
    return node


# --------------------------------------------------------------------------------------- rendering


class Renderer:
    """Renders records into GitHub's response shapes, templated from GitHub's examples."""

    def __init__(self, world: World, app: AppIdentity) -> None:
        self._world = world
        self._app = app
        self._examples = load_examples()

    def template(self, operation_id: str) -> JSON:
        """A deep copy of GitHub's example body for ``operation_id`` (the first item of a list)."""
        example = self._examples[operation_id]
        if isinstance(example, list):
            example = example[0]
        return copy.deepcopy(example)

    def render_account(self, account: Account) -> JSON:
        """The ``simple-user`` shape (also used for organizations as repository owners)."""
        out = rewrite(self.template("orgs/list-members"), self._account_pairs(account.login))
        out.update(
            login=account.login,
            id=account.id,
            node_id=node_id("User" if account.type == "User" else "Organization", account.id),
            avatar_url=f"https://avatars.githubusercontent.com/u/{account.id}?v=4",
            gravatar_id="",
            type=account.type,
            site_admin=False,
        )
        return out

    @staticmethod
    def _account_pairs(login: str) -> list[tuple[str, str]]:
        return [
            ("/users/octocat", f"/users/{login}"),
            ("https://github.com/octocat", f"https://github.com/{login}"),
        ]

    def render_user(self, account: Account, operation_id: str) -> JSON:
        """``users/get-authenticated`` (private-user) or ``users/get-by-username`` (public-user)."""
        out = rewrite(self.template(operation_id), self._account_pairs(account.login))
        out.update(self.render_account(account))
        out.update(
            name=account.name,
            email=account.email,
            company=None,
            blog="",
            location=None,
            bio=None,
            twitter_username=None,
            hireable=None,
            created_at=ts(account.created_at),
            updated_at=ts(account.created_at),
            followers=0,
            following=0,
            public_gists=0,
            public_repos=self._public_repo_count(account.login),
        )
        return out

    def _public_repo_count(self, login: str) -> int:
        return sum(1 for r in self._world.repos.values() if r.owner == login and not r.private)

    def render_org(self, account: Account, operation_id: str) -> JSON:
        """``orgs/list-for-authenticated-user`` (organization-simple) or ``orgs/get`` (full)."""
        pairs = [
            ("/orgs/github", f"/orgs/{account.login}"),
            ("https://github.com/octocat", f"https://github.com/{account.login}"),
        ]
        out = rewrite(self.template(operation_id), pairs)
        out.update(
            login=account.login,
            id=account.id,
            node_id=node_id("Organization", account.id),
            avatar_url=f"https://avatars.githubusercontent.com/u/{account.id}?v=4",
            description=account.description,
        )
        if operation_id == "orgs/get":
            out.update(
                name=account.name,
                company=None,
                blog=None,
                location=None,
                email=None,
                twitter_username=None,
                is_verified=False,
                html_url=f"https://github.com/{account.login}",
                created_at=ts(account.created_at),
                updated_at=ts(account.created_at),
                type="Organization",
                public_repos=self._public_repo_count(account.login),
            )
        return out

    def render_repo(
        self, repo: Repo, operation_id: str = "apps/list-repos-accessible-to-installation"
    ) -> JSON:
        """``repository`` (lists, nested) or ``full-repository`` (``repos/get``)."""
        example = self._examples[operation_id]
        template = (
            example["repositories"][0] if isinstance(example, dict) and "repositories" in example else example
        )
        full = repo.full_name
        pairs = [
            ("repos/octocat/Hello-World", f"repos/{full}"),
            ("github.com/octocat/Hello-World", f"github.com/{full}"),
            ("github.com:octocat/Hello-World", f"github.com:{full}"),
        ]
        out = rewrite(copy.deepcopy(template), pairs)
        owner = self._world.accounts[repo.owner]
        open_pulls = sum(1 for p in self._world.pulls.get(full, {}).values() if p.state == "open")
        out.update(
            id=repo.id,
            node_id=node_id("Repository", repo.id),
            name=repo.name,
            full_name=full,
            owner=self.render_account(owner),
            private=repo.private,
            visibility="private" if repo.private else "public",
            description=repo.description,
            fork=False,
            homepage=None,
            language=None,
            mirror_url=None,
            default_branch=repo.default_branch,
            archived=repo.archived,
            disabled=False,
            is_template=False,
            template_repository=None,
            topics=[],
            license=None,
            forks_count=0,
            forks=0,
            stargazers_count=0,
            watchers_count=0,
            watchers=0,
            open_issues_count=open_pulls,
            open_issues=open_pulls,
            created_at=ts(repo.created_at),
            updated_at=ts(repo.updated_at),
            pushed_at=ts(repo.updated_at),
            permissions={"admin": False, "maintain": False, "push": True, "triage": True, "pull": True},
        )
        out.pop("temp_clone_token", None)
        out.pop("parent", None)  # present only for forks
        out.pop("source", None)
        if "organization" in out:
            out["organization"] = self.render_account(owner) if owner.type == "Organization" else None
        if "subscribers_count" in out:
            out.update(subscribers_count=0, network_count=0)
        if "custom_properties" in out:
            out["custom_properties"] = {}
        if repo.clone_url is not None:
            out["clone_url"] = repo.clone_url
        return out

    def render_installation(self, inst: Installation) -> JSON:
        account = self._world.accounts[inst.account_login]
        out = self.template("apps/list-installations")
        out.update(
            id=inst.id,
            account=self.render_account(account),
            access_tokens_url=f"https://api.github.com/app/installations/{inst.id}/access_tokens",
            repositories_url="https://api.github.com/installation/repositories",
            html_url=(
                f"https://github.com/organizations/{account.login}/settings/installations/{inst.id}"
                if account.type == "Organization"
                else f"https://github.com/settings/installations/{inst.id}"
            ),
            app_id=self._app.app_id,
            app_slug=self._app.app_slug,
            client_id=self._app.client_id,
            target_id=account.id,
            target_type=account.type,
            permissions=dict(APP_PERMISSIONS),
            events=list(APP_EVENTS),
            single_file_name=None,
            has_multiple_single_files=False,
            single_file_paths=[],
            repository_selection=inst.repository_selection,
            created_at=ts(inst.created_at),
            updated_at=ts(inst.created_at),
            suspended_at=ts(inst.created_at) if inst.suspended else None,
            suspended_by=None,
        )
        return out

    def render_pull(self, pull: Pull, operation_id: str) -> JSON:
        """``pulls/list`` items (pull-request-simple) or ``pulls/get``/``pulls/create`` (pull-request)."""
        repo = self._world.repos[pull.repo]
        full, n = repo.full_name, pull.number
        pairs = [
            (f"repos/octocat/Hello-World/pulls/{1347}", f"repos/{full}/pulls/{n}"),
            (f"repos/octocat/Hello-World/issues/{1347}", f"repos/{full}/issues/{n}"),
            (f"octocat/Hello-World/pull/{1347}", f"{full}/pull/{n}"),
            ("repos/octocat/Hello-World", f"repos/{full}"),
            ("6dcb09b5b57875f334f61aebed695e2e4193db5e", pull.head_sha),
        ]
        out = rewrite(self.template(operation_id), pairs)
        author = self._world.accounts[pull.author]
        owner = self._world.accounts[repo.owner]
        rendered_repo = self.render_repo(repo)
        role = self._world.members.get(repo.owner, {}).get(pull.author)
        association = "OWNER" if pull.author == repo.owner else ("MEMBER" if role else "CONTRIBUTOR")
        base_sha = sha(full, pull.base_ref)
        out.update(
            id=pull.id,
            node_id=node_id("PullRequest", pull.id),
            number=n,
            state=pull.state,
            locked=False,
            title=pull.title,
            user=self.render_account(author),
            body=pull.body,
            labels=[],
            milestone=None,
            active_lock_reason=None,
            created_at=ts(pull.created_at),
            updated_at=ts(pull.updated_at),
            closed_at=ts(pull.closed_at),
            merged_at=ts(pull.merged_at),
            merge_commit_sha=sha(full, n, "merge") if pull.merged else None,
            assignee=None,
            assignees=[],
            requested_reviewers=[],
            requested_teams=[],
            head={
                "label": f"{repo.owner}:{pull.head_ref}",
                "ref": pull.head_ref,
                "sha": pull.head_sha,
                "user": self.render_account(owner),
                "repo": rendered_repo,
            },
            base={
                "label": f"{repo.owner}:{pull.base_ref}",
                "ref": pull.base_ref,
                "sha": base_sha,
                "user": self.render_account(owner),
                "repo": rendered_repo,
            },
            author_association=association,
            auto_merge=None,
            draft=pull.draft,
        )
        if "merged" in out:  # the full pull-request shape only
            out.update(
                merged=pull.merged,
                mergeable=None if pull.state == "closed" else True,
                rebaseable=True,
                mergeable_state="draft" if pull.draft else "clean",
                merged_by=self.render_account(author) if pull.merged else None,
                comments=0,
                review_comments=0,
                maintainer_can_modify=False,
            )
        return out
