"""Mount the web console on the HTTP API's app: its pages under ``/web``, its static files (the
stylesheet, htmx and the chat's script) under ``/web/static``."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from agent.interfaces.web import book, chat, customers, session, triage
from agent.interfaces.web.render import HERE, WebError, error_page


def install_web_console(app: FastAPI) -> None:
    """Add the console's routes, static files and error pages to ``app`` (the API's)."""
    app.state.web_secret = session.session_secret()
    for module in (session, customers, chat, triage, book):
        app.include_router(module.router, prefix="/web")
    app.mount("/web/static", StaticFiles(directory=str(HERE / "static")), name="web-static")

    @app.get("/web", include_in_schema=False)
    async def web_root() -> Response:
        return RedirectResponse("/web/", status_code=307)

    @app.exception_handler(WebError)
    async def web_error(request: Request, exc: WebError) -> HTMLResponse:
        user = session.current_user(request)
        if user is not None:  # the header shows who is signed in
            request.state.web_user = user
        return error_page(request, exc)

    @app.exception_handler(session.SignInRequired)
    async def sign_in(request: Request, exc: session.SignInRequired) -> Response:
        return session.to_sign_in(request, exc)
