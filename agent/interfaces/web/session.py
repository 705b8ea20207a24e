"""Sign-in with an API key, the signed session cookie and CSRF tokens of the web console.

The cookie holds a random session id and the SHA-256 digest of the key (never the key), signed
with itsdangerous and valid for :data:`SESSION_SECONDS`; it is HttpOnly, SameSite=Strict, and
Secure when the console is served over https. Each request looks the digest up in the API key
file again, so the principal is the one the HTTP API would give that key, with interface ``web``.
Every form carries a CSRF token bound to the session (an HMAC of its id); the sign-in form, before
any session, a double-submit token (a cookie and a field that must match).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass, replace
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer

from agent.interfaces.service import ApiKeys, key_digest
from agent.interfaces.web.render import WebError, page
from tools.access.principal import Principal

SESSION_COOKIE = "custctx_session"
LOGIN_COOKIE = "custctx_login_csrf"
SESSION_SECONDS = 8 * 3600
SECRET_ENV = "CUSTCTX_WEB_SESSION_SECRET"

router = APIRouter()


class SignInRequired(Exception):
    """No valid session: the browser is sent to the sign-in page."""

    def __init__(self, next_path: str):
        super().__init__(next_path)
        self.next_path = next_path


@dataclass(frozen=True)
class WebUser:
    """The signed-in principal and its session's CSRF token."""

    principal: Principal
    csrf: str

    @property
    def label(self) -> str:
        return f"{self.principal.user} ({self.principal.role})"


def session_secret() -> bytes:
    """``CUSTCTX_WEB_SESSION_SECRET`` (shared by every process behind one address), else a random
    secret of this process (sessions then end when it stops)."""
    configured = os.environ.get(SECRET_ENV, "").strip()
    return configured.encode() if configured else secrets.token_bytes(32)


def _serializer(request: Request) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(request.app.state.web_secret, salt="custctx-web-session")


def _csrf_of(request: Request, sid: str) -> str:
    return hmac.new(request.app.state.web_secret, b"csrf:" + sid.encode(), hashlib.sha256).hexdigest()


def _set_cookie(resp: Response, request: Request, name: str, value: str, max_age: int) -> None:
    """HttpOnly, SameSite=Strict, only under /web, and Secure when the console is served over https."""
    resp.set_cookie(name, value, max_age=max_age, path="/web", httponly=True, samesite="strict",
                    secure=request.url.scheme == "https")


def current_user(request: Request) -> WebUser | None:
    """The session's principal, or None (no cookie, a bad signature, expired, a key no longer known)."""
    raw = request.cookies.get(SESSION_COOKIE)
    if not raw:
        return None
    try:
        data = _serializer(request).loads(raw, max_age=SESSION_SECONDS)
    except BadSignature:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("sid"), str) or not isinstance(data.get("d"), str):
        return None
    keys: ApiKeys = request.app.state.keys
    who = keys.principal_of_digest(data["d"])
    if who is None:
        return None
    return WebUser(principal=replace(who, interface="web"), csrf=_csrf_of(request, data["sid"]))


def signed_in(request: Request) -> WebUser:
    """The dependency of every page: the signed-in user (else off to the sign-in page)."""
    user = current_user(request)
    if user is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise SignInRequired(target if request.method == "GET" else "/web/")
    request.state.web_user = user
    return user


User = Annotated[WebUser, Depends(signed_in)]


def check_csrf(user: WebUser, token: str | None) -> None:
    """Refuse a form whose CSRF token is not the session's (403)."""
    if not token or not hmac.compare_digest(token, user.csrf):
        raise WebError(403, "Form expired", "this form's security token is missing or stale: reload the page "
                       "and submit it again")


def safe_next(target: str | None) -> str:
    """A path inside the console to return to after sign-in (never another site)."""
    if target and target.startswith("/web/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/web/"


def to_sign_in(request: Request, exc: SignInRequired) -> RedirectResponse:
    return RedirectResponse(f"/web/login?next={quote(exc.next_path, safe='/')}", status_code=303)


@router.get("/login", response_class=HTMLResponse, include_in_schema=False)
async def login_form(request: Request, next: str = "/web/") -> Response:
    token = secrets.token_urlsafe(24)
    resp = page(request, "login.html", login_csrf=token, next=safe_next(next))
    _set_cookie(resp, request, LOGIN_COOKIE, token, 3600)
    return resp


@router.post("/login", response_class=HTMLResponse, include_in_schema=False)
async def login(request: Request, api_key: Annotated[str, Form()] = "", csrf: Annotated[str, Form()] = "",
                next: Annotated[str, Form()] = "/web/") -> Response:
    cookie = request.cookies.get(LOGIN_COOKIE, "")
    if not csrf or not cookie or not hmac.compare_digest(csrf, cookie):
        raise WebError(403, "Form expired", "the sign-in form's security token is missing or stale: reload the "
                       "sign-in page and try again")
    keys: ApiKeys = request.app.state.keys
    key = api_key.strip()
    if not key or keys.principal(key) is None:
        token = secrets.token_urlsafe(24)
        again = page(request, "login.html", 401, login_csrf=token, next=safe_next(next),
                     problem="Unknown API key." if key else "Enter your API key.")
        _set_cookie(again, request, LOGIN_COOKIE, token, 3600)
        return again
    value = _serializer(request).dumps({"sid": secrets.token_urlsafe(18), "d": key_digest(key)})
    resp = RedirectResponse(safe_next(next), status_code=303)
    _set_cookie(resp, request, SESSION_COOKIE, value, SESSION_SECONDS)
    resp.delete_cookie(LOGIN_COOKIE, path="/web", httponly=True, samesite="strict")
    return resp


@router.post("/logout", include_in_schema=False)
async def logout(request: Request, user: User, csrf: Annotated[str, Form()] = "") -> Response:
    check_csrf(user, csrf)
    resp = RedirectResponse("/web/login", status_code=303)
    resp.delete_cookie(SESSION_COOKIE, path="/web", httponly=True, samesite="strict")
    return resp
