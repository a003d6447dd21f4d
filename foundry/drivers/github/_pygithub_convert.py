"""What PyGithub gives back, in Foundry's terms: GitHub errors → Foundry errors, PyGithub objects →
the driver's records (`Installation`, `Repository`, `Organization`, `PullRequest`).

Pure functions with no I/O, kept apart from the driver so the one error mapping and the field choices
(e.g. reading only what a list item carries) can be read in one place.
"""

from __future__ import annotations

from datetime import datetime

from foundry.drivers.github import VENDOR, Installation, Organization, PullRequest, Repository
from foundry.errors import DriverError, NotFound
from github import GithubException
from github.Installation import Installation as GhInstallation
from github.Organization import Organization as GhOrganization
from github.PullRequest import PullRequest as GhPullRequest
from github.Repository import Repository as GhRepository

__all__ = [
    "error_message",
    "required",
    "to_installation",
    "to_organization",
    "to_pull_request",
    "to_repository",
    "translate_error",
]

# ------------------------------------------------------------------------------------ errors


def error_message(exc: GithubException) -> str:
    """GitHub's own words for a failure (``message``, or the OAuth ``error: description``)."""
    data = exc.data
    if isinstance(data, dict):
        if "error" in data:  # the OAuth endpoints' error shape
            return f"{data['error']}: {data.get('error_description', '')}".strip(": ")
        if data.get("message"):
            return str(data["message"])
    return exc.message or str(data or "no details")


def translate_error(exc: GithubException, doing: str) -> DriverError | NotFound:
    """The one error mapping: 404 → `NotFound`, anything else → `DriverError` with the status."""
    status = exc.status
    if status == 404:
        return NotFound(f"GitHub: not found while {doing}")
    if status == 200 and isinstance(exc.data, dict) and "error" in exc.data:
        # The OAuth token endpoint answers 200 with an error body; the credentials were refused.
        return DriverError(f"GitHub refused the credentials while {doing}: {error_message(exc)}", 401, VENDOR)
    return DriverError(f"GitHub answered {status} while {doing}: {error_message(exc)}", status, VENDOR)


# ------------------------------------------------------------------------------------ conversions


def required(value: datetime | None, what: str) -> datetime:
    if value is None:
        raise DriverError(f"GitHub returned no {what}", None, VENDOR)
    return value


def to_installation(inst: GhInstallation) -> Installation:
    account = inst.account
    return Installation(
        id=inst.id,
        account_login=account.login,
        account_id=account.id,
        account_type="User" if inst.target_type == "User" else "Organization",
        suspended=inst.suspended_at is not None,
        repository_selection=inst.repository_selection,
    )


def to_repository(repo: GhRepository) -> Repository:
    return Repository(
        id=repo.id,
        full_name=repo.full_name,
        name=repo.name,
        owner_login=repo.owner.login,
        private=repo.private,
        default_branch=repo.default_branch,
        archived=repo.archived,
        clone_url=repo.clone_url,
        html_url=repo.html_url,
        updated_at=repo.updated_at,
    )


def to_organization(org: GhOrganization) -> Organization:
    return Organization(id=org.id, login=org.login, avatar_url=org.avatar_url, description=org.description)


def to_pull_request(pr: GhPullRequest) -> PullRequest:
    # Only fields present in list items (pull-request-simple) are read: touching one that is missing
    # (e.g. ``merged``) would make PyGithub fetch every PR one by one. merged ⇔ merged_at is set.
    user = pr.user
    return PullRequest(
        number=pr.number,
        id=pr.id,
        title=pr.title,
        body=pr.body,
        state=pr.state,
        draft=bool(pr.draft),
        merged=pr.merged_at is not None,
        head_ref=pr.head.ref,
        head_sha=pr.head.sha,
        base_ref=pr.base.ref,
        author_login=user.login if user is not None else None,
        html_url=pr.html_url,
        updated_at=required(pr.updated_at, f"updated_at of pull request #{pr.number}"),
        closed_at=pr.closed_at,
        merged_at=pr.merged_at,
    )
