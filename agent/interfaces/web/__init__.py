"""The web console: server-side pages (FastAPI + Jinja2, a little htmx) for support and account
teams, served by ``custctx serve api`` under ``/web`` (docs/WEB.md).

Every page reads through :class:`agent.interfaces.service.ContextService` as the signed-in
principal (interface ``web``), so the access gate, its row filter and the audit log apply as
they do to the HTTP API.
"""
