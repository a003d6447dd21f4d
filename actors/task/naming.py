"""Pure rules for naming tasks: keys, titles, branch names and agent/model choice.

The organization uses them when it creates a task (title and branch are decided there, in one
transaction with the uniqueness check); they have no I/O.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from collections.abc import Container

from foundry.branch_names import branch_problem
from foundry.display_text import one_line
from foundry.errors import InvalidInput
from foundry.models_catalog import KNOWN_MODELS, MODEL_GROUPS, agent_for_model

#: Longest prompt a task or message accepts (the issue's bad-input rule: longer → 422).
MAX_PROMPT_CHARS = 100_000
BRANCH_PREFIX = "foundry/"
RESCUE_PREFIX = "foundry/rescue/"
_TITLE_TYPES = ("feat", "fix", "docs", "refactor")
#: What a derived title drops from the prompt's first line: markup and symbols. Words of any script,
#: digits, apostrophes and plain punctuation stay ("Überarbeite alice's README (v2)").
_TITLE_NOISE = re.compile(r"[^\w\s'\u2019.,:;!?()/#&+@-]|_")
_TITLE_MAX = 62
_SLUG_MAX = 40
# A conservative subset of `git check-ref-format --branch`: what a task branch may be called.
TASK_ID_RE = re.compile(r"^(?:[0-9a-f]{32}|pr-[0-9]+-[0-9]+)$")


def new_task_id() -> str:
    """A new task id: a UUID4 in hex."""
    return uuid.uuid4().hex


def task_key(organization_id: str, task_id: str) -> str:
    """The actor key of a task (and of its sandbox): ``<orgId>:<taskId>``."""
    return f"{organization_id}:{task_id}"


def split_task_key(key: str) -> tuple[str, str]:
    """``(organization_id, task_id)`` of a task key."""
    organization_id, _, task_id = key.rpartition(":")
    return organization_id, task_id


def derive_title(prompt: str, explicit: str | None = None) -> str:
    """The task title: ``<type>: <summary>`` from an explicit title or the prompt.

    The source is the explicit title, else the first non-empty line of the prompt, else "update task".
    A leading ``feat:``/``fix:``/``docs:``/``refactor:`` is kept; otherwise the type is guessed from
    the words (fix/bug → fix, doc/readme → docs, refactor → refactor, else feat). The summary keeps
    words of any script, digits and plain punctuation, on one line, cut to 62 characters.
    """
    if explicit is not None and explicit.strip():
        return " ".join(explicit.split())[:200]
    source = next((line.strip() for line in prompt.splitlines() if line.strip()), "update task")
    kind = None
    match = re.match(r"^\s*(feat|fix|docs|refactor)\s*:\s*(.*)$", source, re.IGNORECASE)
    if match:
        kind, source = match.group(1).lower(), match.group(2)
    lowered = source.lower()
    if kind is None:
        if "fix" in lowered or "bug" in lowered:
            kind = "fix"
        elif "doc" in lowered or "readme" in lowered:
            kind = "docs"
        elif "refactor" in lowered:
            kind = "refactor"
        else:
            kind = "feat"
    source = source.lstrip("#>*- \t")  # a Markdown heading, quote or list marker is not the title
    summary = one_line(_TITLE_NOISE.sub(" ", source), _TITLE_MAX).strip()
    return f"{kind}: {summary or 'update task'}"


def _slug(title: str) -> str:
    summary = title.split(":", 1)[1] if ":" in title and title.split(":", 1)[0] in _TITLE_TYPES else title
    # Accents go rather than the letter ("Überarbeite" → "uberarbeite"); other scripts give "task".
    ascii_summary = unicodedata.normalize("NFKD", summary).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_summary.lower()).strip("-")[:_SLUG_MAX].strip("-")
    return slug or "task"


def check_branch_name(branch: str) -> str:
    """Return ``branch`` if git accepts it as a branch name, else raise `InvalidInput`."""
    problem = branch_problem(branch)
    if problem is not None:
        raise InvalidInput(f"invalid branch name {branch!r}: {problem}", ["branch"])
    return branch


def unique_branch(title: str, taken: Container[str]) -> str:
    """``foundry/<slug>-<n>`` with the smallest ``n >= 1`` not in ``taken``."""
    base = f"{BRANCH_PREFIX}{_slug(title)}"
    n = 1
    while f"{base}-{n}" in taken:
        n += 1
    return f"{base}-{n}"


def rescue_branch(task_id: str, now_ms: int) -> str:
    """The branch an archive with ``force`` pushes unpushed work to: ``foundry/rescue/<taskId>-<ts>``."""
    return f"{RESCUE_PREFIX}{task_id}-{now_ms}"


def agents() -> list[str]:
    """Agent ids of the catalog, in order."""
    return [str(group["agent"]) for group in MODEL_GROUPS]


def resolve_agent_model(agent: str | None, model: str | None, fallback_model: str) -> tuple[str, str]:
    """``(agent, model)`` for a new session: the given model (and its agent), else the first model of
    the given agent, else ``fallback_model``.

    Raises:
        InvalidInput: an unknown model or agent, or a model that the given agent does not run.
    """
    if model is not None:
        if model not in KNOWN_MODELS:
            raise InvalidInput(
                f"unknown model {model!r}; known: {', '.join(sorted(KNOWN_MODELS))}", ["model"]
            )
        model_agent = agent_for_model(model)
        if agent is not None and agent != model_agent:
            raise InvalidInput(f"model {model!r} runs on agent {model_agent!r}, not {agent!r}", ["agent"])
        return model_agent, model
    if agent is not None:
        for group in MODEL_GROUPS:
            if group["agent"] == agent:
                return agent, str(group["models"][0])  # type: ignore[index]
        raise InvalidInput(f"unknown agent {agent!r}; known: {', '.join(agents())}", ["agent"])
    if fallback_model not in KNOWN_MODELS:
        raise InvalidInput(f"the default model {fallback_model!r} is not in the catalog", ["model"])
    return agent_for_model(fallback_model), fallback_model
