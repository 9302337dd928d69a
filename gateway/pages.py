"""The browser pages: sign-in, the agent console, the supervisor wallboard and campaigns.

Server-rendered (Jinja2, autoescaped) shells; the live parts are small ES modules in
`agent_ui/static` talking to the same API and WebSockets as any integration, authenticated by
the session cookie plus the CSRF token the shell carries (see `gateway.sessions`). Every page
is sent with a strict Content-Security-Policy: scripts and styles only from our own origin, no
inline script, no plugins, no framing, so customer text that slipped through as markup still
could not run.
"""

from __future__ import annotations

import secrets
from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web

from gateway import sessions
from gateway.api import authenticate
from gateway.errors import ApiError
from gateway.keys import DATABASE, TOKENS
from timeline.models import Role

routes = web.RouteTableDef()

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "media-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
LOGIN_CSRF_COOKIE = "switchboard_login_csrf"
LOGIN_THROTTLE = web.AppKey("login_throttle", sessions.LoginThrottle)


def setup(app: web.Application) -> None:
    """Templates and static assets of `agent_ui`, and the page routes."""
    ui = Path(str(resources.files("agent_ui")))
    aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(ui / "templates"),
        autoescape=jinja2.select_autoescape(default=True),
    )
    app.router.add_static("/static/", ui / "static", name="static")
    app[LOGIN_THROTTLE] = sessions.LoginThrottle()
    app.add_routes(routes)
    app.on_response_prepare.append(_security_headers)


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    if response.content_type == "text/html" and request.path in _PAGES:
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Cache-Control"] = "no-store"


@routes.get("/login")
async def login_form(request: web.Request) -> web.StreamResponse:
    return _login_page(request)


@routes.post("/login")
async def login(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    email, password = str(form.get("email", "")), str(form.get("password", ""))
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not cookie or not secrets.compare_digest(cookie, str(form.get("csrf_token", ""))):
        return _login_page(request, "The form expired; please sign in again.", status=403)
    throttle = request.app[LOGIN_THROTTLE]
    keys = (f"account:{email.strip().lower()}", f"address:{request.remote}")
    if (wait := throttle.retry_after(*keys)) is not None:
        response = _login_page(request, _locked(wait), status=429)
        response.headers["Retry-After"] = str(wait)
        return response
    signed_in = await request.app[DATABASE].run(sessions.sign_in, email, password)
    if signed_in is None:
        throttle.failed(*keys)
        return _login_page(request, "Wrong e-mail address or password.", status=401)
    throttle.succeeded(keys[0])
    _, token = signed_in
    response = web.HTTPSeeOther(_next_page(request))
    sessions.set_session_cookie(response, request, token)
    response.del_cookie(LOGIN_CSRF_COOKIE, path="/login")
    raise response


@routes.post("/logout")
async def logout(request: web.Request) -> web.StreamResponse:
    token = sessions.session_cookie(request)
    if token is not None:
        form = await request.post()
        if not sessions.csrf_ok(request, token, str(form.get("csrf_token", ""))):
            raise ApiError(403, "csrf_failed", "The request lacks the page's CSRF token.")
        await request.app[DATABASE].run(sessions.sign_out, token)
        request.app[TOKENS].forget(token)
    response = web.HTTPSeeOther("/login")
    response.del_cookie(sessions.SESSION_COOKIE, path="/")
    raise response


@routes.get("/console")
async def console(request: web.Request) -> web.StreamResponse:
    return await _page(request, "console.html")


@routes.get("/wallboard")
async def wallboard(request: web.Request) -> web.StreamResponse:
    return await _page(request, "wallboard.html", Role.SUPERVISOR, Role.ADMIN)


@routes.get("/campaigns")
async def campaigns(request: web.Request) -> web.StreamResponse:
    return await _page(request, "campaigns.html", Role.SUPERVISOR, Role.ADMIN)


_PAGES = frozenset({"/login", "/console", "/wallboard", "/campaigns"})


async def _page(request: web.Request, template: str, *roles: Role) -> web.StreamResponse:
    """A page for the signed-in agent; the sign-in form for anybody else."""
    token = sessions.session_cookie(request)
    if token is None:
        raise web.HTTPSeeOther(f"/login?next={request.path}")
    try:
        principal = await authenticate(request)
    except ApiError:
        raise web.HTTPSeeOther(f"/login?next={request.path}") from None
    if roles:
        principal.require(*roles)
    context: dict[str, Any] = {
        "agent": {"id": principal.agent_id, "name": principal.name, "role": principal.role},
        "csrf_token": sessions.csrf_token(token),
        "supervisor": principal.role in (Role.SUPERVISOR, Role.ADMIN),
    }
    return aiohttp_jinja2.render_template(template, request, context)


def _login_page(request: web.Request, error: str | None = None, status: int = 200) -> web.Response:
    csrf = secrets.token_urlsafe(24)
    context = {"error": error, "csrf_token": csrf, "next": _next_page(request)}
    response = aiohttp_jinja2.render_template("login.html", request, context, status=status)
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        csrf,
        httponly=True,
        samesite="Strict",
        secure=sessions.is_https(request),
        path="/login",
    )
    return response


def _next_page(request: web.Request) -> str:
    """Where to go after signing in: one of our pages, never another site."""
    wanted = request.query.get("next", "/console")
    return wanted if wanted in _PAGES - {"/login"} else "/console"


def _locked(seconds: int) -> str:
    minutes = max(1, round(seconds / 60))
    return f"Too many failed sign-ins. Try again in {minutes} minute{'s' if minutes > 1 else ''}."
