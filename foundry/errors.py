"""The one exception tree of Foundry.

Domain errors carry no HTTP status: `foundry/http/errors.py` maps them at the edge. Every error is
picklable (all state passes through positional ``args``) so it survives a Ray hop, and can be turned
into a JSON-able dict and back (`to_payload` / `from_payload`) for the durable mailbox.
"""

from __future__ import annotations

from typing import Any


class FoundryError(Exception):
    """Base of every error Foundry raises on purpose."""

    code = "internal_error"

    def __init__(self, detail: str, *extra: Any) -> None:
        super().__init__(detail, *extra)

    @property
    def detail(self) -> str:
        return str(self.args[0])

    def __str__(self) -> str:
        return self.detail

    def to_payload(self) -> dict[str, Any]:
        """A JSON-able description that `from_payload` turns back into the same class."""
        return {"type": type(self).__name__, "code": self.code, "args": list(self.args)}

    @staticmethod
    def from_payload(payload: dict[str, Any]) -> FoundryError:
        cls: type[FoundryError] = _REGISTRY.get(str(payload.get("type")), CommandFailed)
        args = payload.get("args") or [payload.get("detail", "command failed")]
        try:
            return cls(*args)
        except TypeError:
            return CommandFailed(str(args[0]))


class NotFound(FoundryError):
    code = "not_found"


class Unauthorized(FoundryError):
    code = "unauthorized"


class Forbidden(FoundryError):
    code = "forbidden"


class Conflict(FoundryError):
    code = "conflict"


class InvalidInput(FoundryError):
    """Input that failed validation. ``fields`` names the offending fields (dotted paths)."""

    code = "invalid_input"

    def __init__(self, detail: str, fields: list[str] | None = None) -> None:
        super().__init__(detail, list(fields or []))

    @property
    def fields(self) -> list[str]:
        return list(self.args[1]) if len(self.args) > 1 else []


class PayloadTooLarge(FoundryError):
    code = "payload_too_large"


class RateLimited(FoundryError):
    code = "rate_limited"


class PaymentRequired(FoundryError):
    """The organization's plan or billing state refuses this (new prompts); the detail says how to fix it."""

    code = "payment_required"


class SeatLimitReached(PaymentRequired):
    """Another member would need a seat and the plan has none left."""

    code = "seat_limit"


class BillingInactive(PaymentRequired):
    """The subscription is canceled, or past due beyond its grace period."""

    code = "billing_inactive"


class NotConfigured(FoundryError):
    """A capability whose settings are missing (the detail names them); the rest keeps working."""

    code = "not_configured"


class CommandFailed(FoundryError):
    """A command handler raised something that is not a FoundryError; the message is kept."""

    code = "command_failed"


class CommandTimeout(FoundryError):
    """A ``send(wait=True)`` did not complete in time. The command stays queued and will still run."""

    code = "command_timeout"


class ActorUnavailable(FoundryError):
    """The host of an actor is restarting or unreachable; retry with the same command id."""

    code = "actor_unavailable"


class DriverError(FoundryError):
    """An external system (GitHub, Stripe, a sandbox) failed. ``status`` is the vendor's HTTP status."""

    code = "driver_error"

    def __init__(self, detail: str, status: int | None = None, vendor: str = "") -> None:
        super().__init__(detail, status, vendor)

    @property
    def status(self) -> int | None:
        return self.args[1] if len(self.args) > 1 else None

    @property
    def vendor(self) -> str:
        return str(self.args[2]) if len(self.args) > 2 else ""


def _all_subclasses(cls: type[FoundryError]) -> list[type[FoundryError]]:
    out = [cls]
    for sub in cls.__subclasses__():
        out.extend(_all_subclasses(sub))
    return out


class _Registry(dict[str, type[FoundryError]]):
    """Resolves error class names lazily so subclasses defined later are found too."""

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        for cls in _all_subclasses(FoundryError):
            if cls.__name__ == name:
                return cls
        return default


_REGISTRY = _Registry()
