"""The session cookie: a signed reference to a server-side session record.

The cookie carries ``{user id, session id}`` signed with the app secret, so a request reaches the
right user actor in one call; the record there decides expiry and revocation.
"""

from __future__ import annotations

from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeSerializer
from starlette.requests import HTTPConnection
from starlette.responses import Response

from foundry.config import Settings


@dataclass(frozen=True)
class SessionCookie:
    user_id: str
    session_id: str


class SessionCookies:
    """Issues, reads and clears the session cookie."""

    def __init__(self, settings: Settings) -> None:
        self._serializer = URLSafeSerializer(settings.effective_secret_key(), salt="foundry.session")
        self.name = settings.auth.cookie_name
        self.secure = settings.base_url.startswith("https://")

    def read(self, conn: HTTPConnection) -> SessionCookie | None:
        """The signed session reference of a request or websocket, or None (absent or tampered)."""
        raw = conn.cookies.get(self.name)
        if not raw:
            return None
        try:
            data = self._serializer.loads(raw)
        except BadSignature:
            return None
        if (
            not isinstance(data, dict)
            or not isinstance(data.get("u"), str)
            or not isinstance(data.get("s"), str)
        ):
            return None
        return SessionCookie(data["u"], data["s"])

    def issue(self, response: Response, user_id: str, session_id: str, max_age_s: int) -> None:
        response.set_cookie(
            self.name,
            self._serializer.dumps({"u": user_id, "s": session_id}),
            max_age=max(0, max_age_s),
            httponly=True,
            samesite="lax",
            secure=self.secure,
            path="/",
        )

    def clear(self, response: Response) -> None:
        response.delete_cookie(self.name, path="/", httponly=True, samesite="lax", secure=self.secure)
