"""The static catalog of agents and models, used when no sandbox is up to ask."""

from __future__ import annotations

MODEL_GROUPS: list[dict[str, object]] = [
    {"provider": "Claude", "agent": "claude", "models": ["default", "sonnet", "opus", "haiku"]},
    {
        "provider": "Codex",
        "agent": "codex",
        "models": [
            "gpt-5.3-codex",
            "gpt-5.3-codex-spark",
            "gpt-5.2-codex",
            "gpt-5.1-codex-max",
            "gpt-5.2",
            "gpt-5.1-codex-mini",
        ],
    },
    # OpenCode picks its model from the provider keys it finds (the organization's credentials).
    {"provider": "OpenCode", "agent": "opencode", "models": ["opencode-default"]},
    # Foundry's deterministic demo agent (mock mode and tests).
    {"provider": "Demo", "agent": "mock", "models": ["demo"]},
]
DEFAULT_MODEL = "gpt-5.3-codex"
KNOWN_MODELS = frozenset(m for g in MODEL_GROUPS for m in g["models"])  # type: ignore[attr-defined]


def agent_for_model(model: str) -> str:
    """The sandbox-agent agent id that runs ``model`` (the first group when unknown)."""
    for group in MODEL_GROUPS:
        if model in group["models"]:  # type: ignore[operator]
            return str(group["agent"])
    return str(MODEL_GROUPS[0]["agent"])
