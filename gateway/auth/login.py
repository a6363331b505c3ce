"""The gateway's login and consent page: where /authorize sends a person's browser.

`GET <issuer>/login?request=...` shows which client asks, for which scopes, and asks for the
user's name and password (`gateway.auth.users`, scrypt hashes). `POST` with "allow" and the
right password sends the browser back to the client's registered redirect URI with a code;
"deny" sends it back with `error=access_denied`. A login request is unguessable (256 bits),
lives 10 minutes, is answered once, and is dropped after 5 wrong passwords; a POST from another
origin is refused (a page elsewhere cannot submit the form for a logged-in user).
"""

from __future__ import annotations

import html
import logging
from urllib.parse import parse_qsl, urlparse

import anyio
from mcp.server.auth.provider import construct_redirect_uri
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from gateway.auth.grants import MAX_LOGIN_TRIES, Pending
from gateway.auth.interactive import InteractiveProvider
from gateway.auth.passwords import dummy_hash, verify_secret

log = logging.getLogger(__name__)
MAX_FORM_BYTES = 4096
HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>agentful: sign in</title>
<style>body{{font-family:system-ui,sans-serif;max-width:28rem;margin:3rem auto;padding:0 1rem}}
label{{display:block;margin:.8rem 0 .2rem}}input{{width:100%;padding:.4rem}}
button{{margin:1rem .5rem 0 0;padding:.5rem 1.2rem}}.error{{color:#b00}}code{{font-size:.9em}}</style>
</head><body>
<h1>Sign in to agentful</h1>
<p><strong>{client}</strong> asks to use this gateway's MCP tools for you, and will be sent back to
<code>{host}</code>.</p>
<p>It asks for: {scopes}</p>
{error}
<form method="post" action="{action}">
<input type="hidden" name="request" value="{request}">
<label for="username">User</label><input id="username" name="username" autocomplete="username" required>
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required>
<button type="submit" name="action" value="allow">Allow</button>
<button type="submit" name="action" value="deny" formnovalidate>Deny</button>
</form></body></html>
"""


def _message(status: int, text: str) -> HTMLResponse:
    body = f"<!doctype html><title>agentful</title><p>{html.escape(text)}</p>"
    return HTMLResponse(body, status, headers=HEADERS)


class LoginPage:
    def __init__(self, provider: InteractiveProvider, *, action: str) -> None:
        self.provider, self.action = provider, action
        issuer = urlparse(provider.issuer)
        self.origin = f"{issuer.scheme}://{issuer.netloc}"

    async def handle(self, request: Request) -> Response:
        if request.method == "GET":
            request_id = request.query_params.get("request", "")
            pending = await self._pending(request_id)
            if pending is None:
                return _expired()
            return self._page(request_id, pending, None, 200)
        return await self._post(request)

    async def _pending(self, request_id: str) -> Pending | None:
        if not request_id or len(request_id) > 128:
            return None
        return await self.provider.store.get_pending(request_id)

    def _page(self, request_id: str, pending: Pending, error: str | None, status: int) -> HTMLResponse:
        scopes = pending.scopes or ["everything your roles allow"]
        body = PAGE.format(
            client=html.escape(pending.client_name),
            host=html.escape(urlparse(pending.redirect_uri).netloc or pending.redirect_uri),
            scopes=", ".join(f"<code>{html.escape(s)}</code>" for s in scopes[:50]),
            error=f'<p class="error">{html.escape(error)}</p>' if error else "",
            action=html.escape(self.action),
            request=html.escape(request_id),
        )
        return HTMLResponse(body, status, headers=HEADERS)

    async def _post(self, request: Request) -> Response:
        origin = request.headers.get("origin")
        if origin is not None and origin != self.origin:
            log.warning("login refused: a form posted from another origin (%.100s)", origin)
            return _message(403, "This form may only be sent from the gateway's own login page.")
        form = await _form(request)
        if form is None:
            return _message(400, "The form could not be read (too big, or not a form).")
        request_id = form.get("request", "")
        pending = await self._pending(request_id)
        if pending is None:
            return _expired()
        if form.get("action") == "deny":
            taken = await self.provider.store.take_pending(request_id)
            if taken is None:
                return _expired()
            log.info("login: access to client %s denied by the user", taken.client_id)
            return self._back(taken, error="access_denied", error_description="the user denied access")
        user = form.get("username", "")
        spec = self.provider.auth.users.get(user)
        stored = spec.password_hash if spec is not None else dummy_hash()
        password = form.get("password", "")
        # scrypt takes about 0.1 s: off the event loop, and as long for an unknown user.
        if not (await anyio.to_thread.run_sync(verify_secret, password, stored) and spec is not None):
            tries = await self.provider.store.failed_try(request_id)
            log.info("login: wrong user or password for client %s (try %d)", pending.client_id, tries)
            if tries >= MAX_LOGIN_TRIES:
                return _message(400, "Too many wrong passwords: start the sign-in again from your client.")
            return self._page(request_id, pending, "Wrong user name or password.", 401)
        taken = await self.provider.store.take_pending(request_id)
        if taken is None:  # answered meanwhile, in another tab
            return _expired()
        code = await self.provider.approve(taken, user)
        if code is None:
            none = "none of the scopes asked for is yours"
            return self._back(taken, error="invalid_scope", error_description=none)
        return self._back(taken, code=code)

    def _back(self, pending: Pending, **params: str) -> RedirectResponse:
        """To the client's redirect URI (checked against its registration at /authorize), with
        `iss` (RFC 9207: a client talking to two servers can tell whose answer this is)."""
        issuer = self.provider.issuer
        url = construct_redirect_uri(pending.redirect_uri, **params, state=pending.state, iss=issuer)
        return RedirectResponse(url, 303, headers={"Cache-Control": "no-store"})


def _expired() -> HTMLResponse:
    return _message(
        400, "This sign-in request has expired or was answered already: start again from your client."
    )


async def _form(request: Request) -> dict[str, str] | None:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return None
    try:
        return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
    except (UnicodeDecodeError, ValueError):
        return None
