"""What each GitHub webhook delivery does to the cache, and what it tells the organization.

Every handler reads the trimmed payload (`foundry.webhooks.github.trim_payload`), writes github-data's
own tables inside the ``process_deliveries`` command's transaction and returns `Effects` (with the
`Delivery` it reads, in `actors.github_data.delivery`): the delivery's outcome plus the parts of one
``github_event`` command for the organization. Handlers never call GitHub; work that needs it (a
resync, a member-list refresh) is started as a job.

Out-of-order deliveries are expected (GitHub does not order them): pull requests and review items
carry GitHub's ``updated_at`` and an older version never overwrites a newer one.

Handlers run inside a savepoint per delivery (`actors.github_data.handlers`), so one that fails with
`MissingField` (or a bug) leaves no partial write behind.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from actors.github_data import webhook_sql as sql
from actors.github_data.delivery import Delivery, Effects, Handler, MissingField
from actors.github_data.schema import branches, ci_checks, members, pull_requests, repositories
from actors.github_data.state import (
    aggregate_ci,
    check_state,
    iso,
    iso_ms,
    pr_state,
    pr_title,
    pull_json,
    repo_json,
    update_meta,
)

log = logging.getLogger(__name__)

_COMMIT_STATES = {"pending", "success", "failure", "error"}
_INSTALLATION_STATUS = {
    "created": "connected",
    "unsuspend": "connected",
    "new_permissions_accepted": "connected",
    "suspend": "suspended",
    "deleted": "install_required",
}


# ------------------------------------------------------------------------------------ installation


async def on_ping(d: Delivery) -> Effects:
    return Effects("applied", f"ping from hook {d.opt('hook_id')}: {d.opt('zen') or ''}".strip())


async def on_installation(d: Delivery) -> Effects:
    action = d.cmd.action or ""
    status = _INSTALLATION_STATUS.get(action)
    if status is None:
        return Effects("ignored", f"installation.{action} changes nothing Foundry mirrors")
    installation_id = d.need_int("installation", "id")
    account = {
        "installationId": installation_id,
        "status": status,
        "accountLogin": d.need("installation", "account", "login"),
        "accountId": d.need_int("installation", "account", "id"),
        "accountType": "User" if d.need("installation", "account", "type") == "User" else "Organization",
        "avatarUrl": d.opt("installation", "account", "avatar_url"),
        # New permissions may make members or more repositories readable: read everything again.
        "resync": action == "new_permissions_accepted",
    }
    await update_meta(d.conn, d.now, installation_id=installation_id, installation_status=status)
    if status == "install_required":
        # Without the App nothing of the mirror can be refreshed or acted on.
        for table in (pull_requests, repositories, ci_checks, branches):
            await d.conn.execute(table.delete())
    return Effects("applied", org={"installation": account})


async def on_installation_repositories(d: Delivery) -> Effects:
    d.need_int("installation", "id")
    action = d.cmd.action or "changed"
    return Effects("applied", sync_reason=f"installation_repositories.{action}")


# ------------------------------------------------------------------------------------ repositories


def _repo_values(d: Delivery) -> dict[str, Any]:
    return {
        "full_name": d.need("repository", "full_name"),
        "name": d.need("repository", "name"),
        "owner_login": d.need("repository", "owner", "login"),
        "private": bool(d.opt("repository", "private")),
        "default_branch": d.need("repository", "default_branch"),
        "archived": bool(d.opt("repository", "archived")),
        "clone_url": d.need("repository", "clone_url"),
        "html_url": d.opt("repository", "html_url"),
        "gh_updated_at": iso(d.opt("repository", "updated_at")),
    }


async def _current_generation(d: Delivery) -> int:
    return int((await d.meta()).generation)


async def _upsert_repo(d: Delivery) -> dict[str, Any]:
    """Mirror the payload's repository; returns the organization's part of the event (the
    repository, and the one it displaced, if any)."""
    repo_id = d.repo_id()
    values = _repo_values(d)
    generation = await _current_generation(d)
    org: dict[str, Any] = {}
    displaced = (
        await d.conn.execute(
            sa.select(repositories.c.repo_id).where(
                repositories.c.full_name == values["full_name"], repositories.c.repo_id != repo_id
            )
        )
    ).all()
    if displaced:
        # Names are unique on GitHub at any moment: the repository that had this one was deleted
        # (or renamed) and its delivery never came. The newer news wins; a sync re-reads the rest.
        gone = [r.repo_id for r in displaced]
        await _forget_repos(d, gone)
        org["reposRemoved"] = gone
    stmt = sqlite_insert(repositories).values(
        repo_id=repo_id, **values, changed_generation=generation, written_at=d.now
    )
    await d.conn.execute(
        stmt.on_conflict_do_update(index_elements=["repo_id"], set_={**values, "written_at": d.now})
    )
    # A rename changes the name every pull request row shows.
    await d.conn.execute(
        pull_requests.update()
        .where(pull_requests.c.repo_id == repo_id, pull_requests.c.repo_full_name != values["full_name"])
        .values(repo_full_name=values["full_name"])
    )
    row = (await d.conn.execute(sa.select(repositories).where(repositories.c.repo_id == repo_id))).one()
    org["reposUpserted"] = [repo_json(row)]
    return org


async def _forget_repos(d: Delivery, repo_ids: list[str]) -> None:
    """Drop repositories from the mirror; their open pull requests are closed with them."""
    await d.conn.execute(repositories.delete().where(repositories.c.repo_id.in_(repo_ids)))
    await d.conn.execute(
        pull_requests.update()
        .where(pull_requests.c.repo_id.in_(repo_ids), pull_requests.c.state.in_(("open", "draft")))
        .values(state="closed", written_at=d.now)
    )


async def _known_repo(d: Delivery, repo_id: str) -> bool:
    found = await d.conn.execute(sa.select(repositories.c.repo_id).where(repositories.c.repo_id == repo_id))
    return found.first() is not None


async def on_repository(d: Delivery) -> Effects:
    action = d.cmd.action or ""
    repo_id = d.repo_id()
    meta = await d.meta()
    owner = str(d.opt("repository", "owner", "login") or "")
    moved_away = action == "transferred" and meta.github_login and owner.lower() != meta.github_login.lower()
    if action == "deleted" or moved_away:
        await _forget_repos(d, [repo_id])
        return Effects("applied", org={"reposRemoved": [repo_id]})
    return Effects("applied", org=await _upsert_repo(d))


# ------------------------------------------------------------------------------------ members


async def on_member_list_change(d: Delivery) -> Effects:
    """``member`` (repository collaborators) and ``membership`` (teams) cannot add or remove anyone
    from the organization, but they mean its people changed: re-read the authoritative member list
    (with roles) from GitHub instead of guessing from the event."""
    meta = await d.meta()
    if meta.kind == "personal":
        return Effects("ignored", "a personal account's only member is its owner")
    d.need("member", "login")
    return Effects("applied", refresh_members=True)


async def on_organization(d: Delivery) -> Effects:
    action = d.cmd.action or ""
    if action not in ("member_added", "member_removed"):
        return Effects("ignored", f"organization.{action} changes no membership")
    github_id = d.need_int("membership", "user", "id")
    if action == "member_removed":
        await d.conn.execute(members.delete().where(members.c.github_id == github_id))
    else:
        values = {
            "login": d.need("membership", "user", "login"),
            "avatar_url": d.opt("membership", "user", "avatar_url"),
            "role": "admin" if d.opt("membership", "role") == "admin" else "member",
        }
        generation = await _current_generation(d)
        stmt = sqlite_insert(members).values(github_id=github_id, changed_generation=generation, **values)
        await d.conn.execute(stmt.on_conflict_do_update(index_elements=["github_id"], set_=values))
    return Effects("applied", org={"membersChanged": True})


# ------------------------------------------------------------------------------------ pull requests


async def _upsert_pull(
    d: Delivery, pr_path: str = "pull_request"
) -> tuple[dict[str, Any] | None, str | None]:
    """Store the payload's pull request unless an equal or newer version is stored.

    Returns (the parts of the organization's event — the PR, and its repository if it was new —
    or None, the reason it changed nothing).
    """
    repo_id = d.repo_id()
    number = d.need_int(pr_path, "number")
    merged = bool(d.opt(pr_path, "merged")) or d.opt(pr_path, "merged_at") is not None
    values = {
        "github_id": d.opt(pr_path, "id"),
        "repo_full_name": d.need("repository", "full_name"),
        "title": pr_title(d.need_str(pr_path, "title")),
        "state": pr_state(d.need(pr_path, "state"), bool(d.opt(pr_path, "draft")), merged),
        "head_ref": d.need(pr_path, "head", "ref"),
        "head_sha": d.need(pr_path, "head", "sha"),
        "base_ref": d.opt(pr_path, "base", "ref"),
        "author_login": d.opt(pr_path, "user", "login"),
        "html_url": d.opt(pr_path, "html_url"),
        "gh_updated_at": iso(d.need(pr_path, "updated_at")),
    }
    if values["gh_updated_at"] is None:
        raise MissingField(f"payload field {pr_path}.updated_at is not a timestamp")
    stored = await sql.load_pull(d.conn, repo_id, number)
    if stored is not None:
        if values["gh_updated_at"] < stored.gh_updated_at:
            return None, f"{pr_path} #{number} is older than the stored version"
        if all(getattr(stored, k) == v for k, v in values.items()):
            return None, f"{pr_path} #{number} is unchanged"
    org: dict[str, Any] = {}
    if stored is None and not await _known_repo(d, repo_id):
        try:
            org.update(await _upsert_repo(d))
        except MissingField as exc:
            # The catalog learns the repository at the next sync; the PR is mirrored all the same.
            log.info("delivery %s: repository %s not catalogued yet: %s", d.cmd.delivery_id, repo_id, exc)
    generation = stored.changed_generation if stored is not None else await _current_generation(d)
    await sql.upsert_pull(d.conn, repo_id, number, values, generation, d.now)
    row = SimpleNamespace(repo_id=repo_id, number=number, **values)
    org["pulls"] = [pull_json(row, await _ci_state(d, repo_id, row.head_sha))]
    return org, None


async def _ci_state(d: Delivery, repo_id: str, sha: str | None) -> str | None:
    """The aggregated CI state of one commit (as `ci_state_of`, in one driver call)."""
    return aggregate_ci((await sql.ci_signals(d.conn, repo_id, sha)).values()) if sha else None


async def on_pull_request(d: Delivery) -> Effects:
    org, why_not = await _upsert_pull(d)
    if org is None:
        return Effects("ignored", why_not)
    return Effects("applied", org=org)


_ITEM_KINDS = {
    "pull_request_review": ("review", "review"),
    "pull_request_review_comment": ("review_comment", "comment"),
    "issue_comment": ("comment", "comment"),
}


async def on_pr_item(d: Delivery) -> Effects:
    """A review, a review comment or a conversation comment on a pull request: stored as an item of
    that PR (deduped by GitHub's id) for the agent and the UI; the task row's activity time moves."""
    kind, path = _ITEM_KINDS[d.cmd.event]
    repo_id = d.repo_id()
    if d.cmd.event == "issue_comment":
        if d.opt("issue", "pull_request") is None:
            return Effects("ignored", "a comment on an issue, not on a pull request")
        number = d.need_int("issue", "number")
    else:
        number = d.need_int("pull_request", "number")
    item_id = d.need_int(path, "id")
    deleted = d.cmd.action == "deleted"
    updated = iso(d.opt(path, "updated_at") or d.opt(path, "submitted_at"))
    values: dict[str, Any] = {
        "repo_id": repo_id,
        "number": number,
        "author_login": d.opt(path, "user", "login"),
        "body": None if deleted else d.opt(path, "body"),
        "state": d.opt(path, "state"),
        "path": d.opt(path, "path"),
        "line": d.opt(path, "line"),
        "html_url": d.opt(path, "html_url"),
        "gh_created_at": iso(d.opt(path, "created_at") or d.opt(path, "submitted_at")),
        "gh_updated_at": updated,
        "deleted": deleted,
    }
    if d.cmd.event == "pull_request_review" and d.cmd.action == "dismissed":
        values["state"] = "dismissed"
    stored = await sql.stored_item(d.conn, kind, item_id)
    if stored is not None and (stored.deleted or (updated or "") < (stored.gh_updated_at or "")):
        return Effects("ignored", f"{kind} {item_id} is older than the stored version")
    await sql.upsert_item(d.conn, kind, item_id, values)
    org: dict[str, Any] = {"touched": [{"repoId": repo_id, "number": number, "at": iso_ms(updated) or d.now}]}
    if d.cmd.event != "issue_comment":
        # Review payloads carry the pull request too: keep its state current as a side effect.
        try:
            pull_parts, _ = await _upsert_pull(d)
        except MissingField as exc:
            log.info("delivery %s: pull request not updated from the review: %s", d.cmd.delivery_id, exc)
            pull_parts = None
        org.update(pull_parts or {})
    return Effects("applied", org=org)


# ------------------------------------------------------------------------------------ CI


async def _record_ci(d: Delivery, sha: str, source: str, state: str, numbers: list[int]) -> Effects:
    repo_id = d.repo_id()
    signals = await sql.ci_signals(d.conn, repo_id, sha)
    if signals.get(source) == state:
        return Effects("applied", f"CI of {sha[:12]} unchanged ({aggregate_ci(signals.values())})")
    before = aggregate_ci(signals.values())
    await sql.upsert_ci(d.conn, repo_id, sha, source, state, d.now)
    after = aggregate_ci({**signals, source: state}.values())
    targets = sorted({*numbers, *await sql.open_pulls_at(d.conn, repo_id, sha)})
    if before == after or not targets:
        return Effects("applied", f"CI of {sha[:12]} is {after}; no pull request changed")
    return Effects(
        "applied",
        org={"ci": [{"repoId": repo_id, "number": n, "headSha": sha, "state": after} for n in targets]},
    )


def _pr_numbers(d: Delivery, path: str, sha: str) -> list[int]:
    listed = d.opt(path, "pull_requests") or []
    return [
        int(p["number"])
        for p in listed
        if isinstance(p, dict)
        and isinstance(p.get("number"), int)
        and (p.get("head") or {}).get("sha") == sha
    ]


async def on_check_suite(d: Delivery) -> Effects:
    sha = d.need("check_suite", "head_sha")
    app = (
        d.opt("check_suite", "app", "slug")
        or d.opt("check_suite", "app", "id")
        or d.need("check_suite", "id")
    )
    state = check_state(d.need("check_suite", "status"), d.opt("check_suite", "conclusion"))
    return await _record_ci(d, sha, f"suite:{app}", state, _pr_numbers(d, "check_suite", sha))


async def on_check_run(d: Delivery) -> Effects:
    sha = d.need("check_run", "head_sha")
    name = d.need("check_run", "name")
    state = check_state(d.need("check_run", "status"), d.opt("check_run", "conclusion"))
    return await _record_ci(d, sha, f"run:{name}", state, _pr_numbers(d, "check_run", sha))


async def on_status(d: Delivery) -> Effects:
    sha = d.need("sha")
    state = d.need("state")
    if state not in _COMMIT_STATES:
        raise MissingField(f"payload field state must be one of {sorted(_COMMIT_STATES)}, got {state!r}")
    return await _record_ci(d, sha, f"status:{d.opt('context') or 'default'}", state, [])


# ------------------------------------------------------------------------------------ branches


def _branch_of(d: Delivery) -> str | None:
    ref = str(d.need("ref"))
    if ref.startswith("refs/heads/"):
        return ref[len("refs/heads/") :]
    if ref.startswith("refs/"):
        return None
    return ref  # create/delete send the bare name with ref_type


async def on_push(d: Delivery) -> Effects:
    branch = _branch_of(d)
    if branch is None:
        return Effects("ignored", f"push to {d.need('ref')} is not a branch")
    repo_id = d.repo_id()
    if d.opt("deleted"):
        await d.conn.execute(
            branches.delete().where(branches.c.repo_id == repo_id, branches.c.name == branch)
        )
        return Effects("applied", f"branch {branch} deleted")
    sha = str(d.need("after"))
    await sql.upsert_branch(d.conn, repo_id, branch, sha, d.now)
    # An open pull request from this branch now has a new head (its `synchronize` may come later).
    rows = await sql.open_pulls_on_branch(d.conn, repo_id, branch, sha)
    views = []
    for row in rows:
        await d.conn.execute(
            pull_requests.update()
            .where(pull_requests.c.repo_id == repo_id, pull_requests.c.number == row.number)
            .values(head_sha=sha, written_at=d.now)
        )
        fresh = SimpleNamespace(**{**vars(row), "head_sha": sha})
        views.append(pull_json(fresh, await _ci_state(d, repo_id, sha)))
    return Effects("applied", org={"pulls": views} if views else {})


async def on_create_or_delete(d: Delivery) -> Effects:
    if d.need("ref_type") != "branch":
        return Effects("ignored", f"{d.cmd.event} of a {d.need('ref_type')}, not a branch")
    branch = _branch_of(d)
    repo_id = d.repo_id()
    if branch is None:
        return Effects("ignored", f"{d.need('ref')} is not a branch")
    if d.cmd.event == "delete":
        await d.conn.execute(
            branches.delete().where(branches.c.repo_id == repo_id, branches.c.name == branch)
        )
    else:
        stmt = sqlite_insert(branches).values(repo_id=repo_id, name=branch, head_sha=None, updated_at=d.now)
        await d.conn.execute(stmt.on_conflict_do_nothing())
    return Effects("applied", f"branch {branch} {'deleted' if d.cmd.event == 'delete' else 'created'}")


HANDLERS: dict[str, Handler] = {
    "ping": on_ping,
    "installation": on_installation,
    "installation_repositories": on_installation_repositories,
    "repository": on_repository,
    "member": on_member_list_change,
    "membership": on_member_list_change,
    "organization": on_organization,
    "pull_request": on_pull_request,
    "pull_request_review": on_pr_item,
    "pull_request_review_comment": on_pr_item,
    "issue_comment": on_pr_item,
    "check_suite": on_check_suite,
    "check_run": on_check_run,
    "status": on_status,
    "push": on_push,
    "create": on_create_or_delete,
    "delete": on_create_or_delete,
}


async def dispatch(d: Delivery) -> Effects:
    """Run the handler of the delivery's event; unknown events are recorded and ignored.

    Raises:
        MissingField: the delivery lacks a field its handler needs (the caller records it failed
            and rolls back whatever the handler wrote).
    """
    handler = HANDLERS.get(d.cmd.event)
    if handler is None:
        return Effects("ignored", f"event {d.cmd.event!r} is not used by Foundry")
    if d.payload.get("_trimmed"):
        return Effects("failed", str(d.payload["_trimmed"]))
    foreign = await _foreign_repository(d)
    if foreign is not None:
        log.warning("delivery %s (%s) ignored: %s", d.cmd.delivery_id, d.cmd.event, foreign)
        return Effects("ignored", foreign)
    return await handler(d)


async def _foreign_repository(d: Delivery) -> str | None:
    """Why the delivery's repository must not touch this account's mirror, or None.

    An installation only ever grants repositories of its own account, so a repository owned by
    anyone else (a stray or crafted payload, or one routed by an installation id that another
    account's event reused) would attach another organization's code and pull requests to this
    one. A repository transferred *away* is the exception: its new owner differs by definition, and
    its handler removes it.
    """
    owner = d.opt("repository", "owner", "login")
    if not isinstance(owner, str):
        return None
    if d.cmd.event == "repository" and d.cmd.action == "transferred":
        return None
    meta = await d.meta()
    expected = meta.github_login or d.opt("installation", "account", "login")
    if not isinstance(expected, str) or owner.lower() == expected.lower():
        return None
    name = d.opt("repository", "full_name") or owner
    return f"repository {name} belongs to {owner!r}, not to this installation's account {expected!r}"
