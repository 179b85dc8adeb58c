"""Bearer tokens for ``liber serve``: one for the data endpoints, one for ``/admin/…``.

``--token`` / ``LIBER_SERVE_TOKEN`` guards ``POST /score`` and ``GET /users/…``: a user's scores
and interests are personal data, and a scorer reachable from a wider network than the ranker's
should not hand them to anyone who asks. ``/healthz`` and ``/metrics`` stay open (load balancers
and Prometheus probe them without credentials; neither names a user). ``/admin/reload`` keeps its
own token (``--admin-token``): the right to swap the model is not the right to read scores.

Checked by a plain ASGI wrapper before routing, admission and body parsing, so a request without
the token costs no queue slot and never reaches the store. Tokens are compared in constant time
(``hmac.compare_digest``) and never logged: the access line holds method, path and status only.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable

__all__ = ["RequireToken", "token_matches"]


def token_matches(header: str | None, token: str) -> bool:
    """``Authorization: Bearer <token>``, compared in constant time."""
    if not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[len("Bearer "):].encode(), token.encode())


class RequireToken:
    """ASGI wrapper: HTTP requests whose path starts with one of ``prefixes`` need the bearer token.

    401 (with ``WWW-Authenticate: Bearer``) when the header is missing, 403 when it is wrong;
    ``on_refused(path, status)`` counts them (the metrics live in the app).
    """

    def __init__(self, app, token: str, prefixes: tuple[str, ...],
                 on_refused: Callable[[str, int], None] | None = None) -> None:
        self.app, self.token, self.prefixes, self.on_refused = app, token, prefixes, on_refused

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefixes):
            await self.app(scope, receive, send)
            return
        header = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), None)
        if token_matches(header, self.token):
            await self.app(scope, receive, send)
            return
        status, error = (401, "token required") if header is None else (403, "wrong token")
        if self.on_refused is not None:
            self.on_refused(scope["path"], status)
        headers = [(b"content-type", b"application/json")]
        if status == 401:
            headers.append((b"www-authenticate", b"Bearer"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": json.dumps({"error": error}).encode()})
