"""The dashboard (``/ui/``) and the API's documentation (``/docs``, ``/redoc``), served offline.

Server-rendered Jinja2 pages (autoescaped: memory content is shown as text,
never as markup) with htmx (vendored in ``static/``) for the in-page actions:
edit, forget, restore, the persona. A small script of ours (``static/dashboard.js``)
follows the change feed with an ``EventSource``. Every list is a page the
server cuts: browsing walks the creation-time index by keyset, searching asks
the facade for at most ``max_top_k`` results, so a page costs the same at a
thousand memories and at a million.

Sign-in and the cookie are :mod:`~neuralsync.server.websession`'s; the gate
has checked the session (and, for a change, the CSRF token) before any route
here runs. Like every adapter, this module reaches the store only through the facade.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool

from ..errors import InvalidInput, NeuralSyncError, NotFound
from ..model import Memory
from ..unified_memory_api import UnifiedMemoryAPI
from . import websession as web
from .auth import token_matches
from .common import api_of

HERE = Path(__file__).parent
STATIC = HERE / "static"
PAGE_SIZE = 50
MODES = ("hybrid", "text", "semantic")
FEED_KINDS = ("create", "update", "delete", "tag_add", "tag_remove", "merge", "unmerge", "persona")
# No script, style, font or frame from anywhere but this server; no page of another site may frame these.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:;"
       " connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
# The docs' bundles build their UI with inline styles, blobs and workers (redoc), still all from here.
DOCS_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline';"
            " img-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; frame-ancestors 'none'")

_env = Environment(loader=FileSystemLoader(str(HERE / "templates")), autoescape=select_autoescape(default=True),
                   trim_blocks=True, lstrip_blocks=True)
_env.filters["when"] = lambda ms: "" if ms is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))

router = APIRouter(prefix="/ui", include_in_schema=False)


def install(app: FastAPI) -> None:
    """Add the dashboard, its static files, and the offline /docs and /redoc to ``app``."""
    app.mount("/ui/static", StaticFiles(directory=str(STATIC)), name="ui-static")
    app.include_router(router)
    app.add_api_route("/docs", swagger_page, methods=["GET"], include_in_schema=False)
    app.add_api_route("/redoc", redoc_page, methods=["GET"], include_in_schema=False)
    app.add_api_route("/ui", lambda: RedirectResponse("/ui/", status_code=303), methods=["GET"],
                      include_in_schema=False)


def swagger_page() -> Response:
    page = get_swagger_ui_html(openapi_url="/openapi.json", title="neuralsync API",
                               swagger_js_url="/ui/static/swagger-ui-bundle.js",
                               swagger_css_url="/ui/static/swagger-ui.css",
                               swagger_favicon_url="/ui/static/favicon.svg")
    page.headers["Content-Security-Policy"] = DOCS_CSP
    return page


def redoc_page() -> Response:
    page = get_redoc_html(openapi_url="/openapi.json", title="neuralsync API",
                          redoc_js_url="/ui/static/redoc.standalone.js",
                          redoc_favicon_url="/ui/static/favicon.svg", with_google_fonts=False)
    page.headers["Content-Security-Policy"] = DOCS_CSP
    return page


# ------------------------------------------------------------------ rendering
def render(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    """A template as a response; pages get the session's CSRF token (never the server's token)."""
    session = request.scope.get("state", {}).get("web_session")
    context.setdefault("csrf", session.csrf if isinstance(session, web.WebSession) else "")
    context.setdefault("nav", "")
    html = _env.get_template(name).render(request=request, **context)
    return HTMLResponse(html, status_code=status,
                        headers={"Content-Security-Policy": CSP, "Cache-Control": "no-store",
                                 "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin"})


async def form_of(request: Request) -> dict[str, str]:
    """An urlencoded form body (the gate has bounded it already): first value of each field."""
    body = (await request.body()).decode("utf-8", "replace")
    return {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}


# ------------------------------------------------------------------ sign-in
@router.get("/login")
def login_page(request: Request, next: str | None = None) -> HTMLResponse:
    return render(request, "login.html", next=web.safe_next(next), error=None)


@router.post("/login")
async def login(request: Request) -> Response:
    if not web.same_origin(request.scope):
        return render(request, "login.html", 403, next="/ui/", error="cross-site sign-in refused")
    form = await form_of(request)
    gate_token = request.app.state.neuralsync_token
    if not token_matches(gate_token, form.get("token", "").strip()):
        return render(request, "login.html", 403, next=web.safe_next(form.get("next")),
                      error="wrong token (see 'neuralsync token')")
    session = request.app.state.neuralsync_sessions.create()
    response = RedirectResponse(web.safe_next(form.get("next")), status_code=303)
    name, value = web.set_cookie_header(request.scope, session)
    response.raw_headers.append((name, value))
    return response


@router.post("/logout")
def logout(request: Request) -> Response:
    session = request.scope.get("state", {}).get("web_session")
    request.app.state.neuralsync_sessions.drop(session.id if session else None)
    response = Response(status_code=204, headers={"HX-Redirect": "/ui/login"})
    response.raw_headers.append(web.set_cookie_header(request.scope, None))
    return response


# ------------------------------------------------------------------ memories
@dataclass
class Row:
    """A memory on a list page, with what its score is made of (when searched)."""

    memory: Memory
    parts: dict[str, float | None]


@router.get("/")
def memories(request: Request, q: str = "", mode: str = "hybrid", scope: str = "", tag: str = "", kind: str = "",
             page: int = Query(1, ge=1, le=1000), before: str = "") -> HTMLResponse:
    api = api_of(request)
    mode = mode if mode in MODES else "hybrid"
    filters = {"q": q, "mode": mode, "scope": scope, "tag": tag, "kind": kind}
    error = None
    rows: list[Row] = []
    next_link = prev_link = None
    try:
        if q.strip() or tag or kind:
            rows, more = _search(api, q, mode, scope, tag, kind, page)
            if more:
                next_link = "?" + urlencode({**filters, "page": page + 1})
            if page > 1:
                prev_link = "?" + urlencode({**filters, "page": page - 1})
        else:
            rows, cursor = _browse(api, scope, before)
            if cursor:
                next_link = "?" + urlencode({"scope": scope, "before": cursor})
            if before:
                prev_link = "?" + urlencode({"scope": scope})
    except InvalidInput as exc:
        error = f"{exc.field}: {exc.message}"
    return render(request, "memories.html", nav="memories", rows=rows, filters=filters, modes=MODES, error=error,
                  next_link=next_link, prev_link=prev_link, searched=bool(q.strip()), page=page)


def _search(api: UnifiedMemoryAPI, q: str, mode: str, scope: str, tag: str, kind: str,
            page: int) -> tuple[list[Row], bool]:
    """One page of a search: the facade ranks the first ``page * PAGE_SIZE`` (+1 to know if more follow)."""
    top_k = min(page * PAGE_SIZE + 1, api.config.max_top_k)
    args: dict[str, Any] = {"scope": scope or None, "tags": [tag] if tag else None, "kinds": [kind] if kind else None}
    found = api.recall(q, top_k=top_k, mode=mode, **args)
    shown = found[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]
    parts: dict[str, dict[str, float | None]] = {m.id: {mode: m.score} for m in shown}
    if q.strip() and mode == "hybrid" and shown:
        # The hybrid score's parts: the same query ranked by words alone and by meaning alone.
        for part in ("text", "semantic"):
            try:
                scores = {m.id: m.score for m in api.recall(q, top_k=top_k, mode=part, **args)}
            except NeuralSyncError:  # e.g. no embedder: that part is unknown, the search still stands
                scores = {}
            for m in shown:
                parts[m.id][part] = scores.get(m.id)
    more = len(found) > page * PAGE_SIZE and page * PAGE_SIZE < api.config.max_top_k
    return [Row(m, parts[m.id]) for m in shown], more


def _browse(api: UnifiedMemoryAPI, scope: str, before: str) -> tuple[list[Row], str]:
    """Newest first, a keyset page: ``before`` is ``<created_at>.<skip>`` (the last row's time and how many
    rows of that time were shown), so a page reads ``PAGE_SIZE`` rows of an index whatever the depth."""
    end: int | None = None
    skip = 0
    if before:
        stamp, _, skipped = before.partition(".")
        if not (stamp.isdigit() and skipped.isdigit() and len(stamp) < 16 and len(skipped) < 6):
            raise InvalidInput("before", "is not a page cursor")
        end, skip = int(stamp), int(skipped)
    found = api.range_recall(None, end, scope or None, limit=skip + PAGE_SIZE + 1, newest_first=True)[skip:]
    shown = found[:PAGE_SIZE]
    cursor = ""
    if len(found) > PAGE_SIZE:
        last = shown[-1].created_at
        ties = sum(1 for m in shown if m.created_at == last) + (skip if end == last else 0)
        cursor = f"{last}.{ties}"
    return [Row(m, {}) for m in shown], cursor


@router.get("/memory/{memory_id}")
def memory_page(request: Request, memory_id: str) -> HTMLResponse:
    return render(request, "memory.html", nav="memories", memory_id=memory_id, **_memory_state(request, memory_id))


def _memory_state(request: Request, memory_id: str) -> dict[str, Any]:
    try:
        return {"memory": api_of(request).get(memory_id), "gone": False}
    except NotFound:
        return {"memory": None, "gone": True}
    except InvalidInput:
        return {"memory": None, "gone": False}


def _panel(request: Request, memory_id: str, message: str | None = None, error: str | None = None,
           status: int = 200) -> HTMLResponse:
    return render(request, "memory_panel.html", status, memory_id=memory_id, message=message, error=error,
                  **_memory_state(request, memory_id))


@router.post("/memory/{memory_id}")
async def memory_edit(request: Request, memory_id: str) -> HTMLResponse:
    form = await form_of(request)
    return await run_in_threadpool(_edit, request, memory_id, form)


def _edit(request: Request, memory_id: str, form: dict[str, str]) -> HTMLResponse:
    """Write only the fields the form changed: an untouched field keeps its clock, so a concurrent write
    to it on another replica is not overridden by a value that was merely shown."""
    api = api_of(request)
    try:
        current = api.get(memory_id)
        fields: dict[str, Any] = {name: form[name] for name in ("content", "scope", "kind")
                                  if name in form and form[name] != getattr(current, name)}
        if "tags" in form:
            tags = sorted({t.strip() for t in form["tags"].split(",") if t.strip()})
            if tuple(tags) != tuple(sorted(current.tags)):
                fields["tags"] = tags
        for name in ("priority", "confidence"):
            if form.get(name, "").strip():
                value = float(form[name])
                if not math.isfinite(value):
                    raise InvalidInput(name, "must be a number from 0 to 1")
                if value != getattr(current, name):
                    fields[name] = value
        if not fields:
            return _panel(request, memory_id, message="nothing changed")
        api.update(memory_id, **fields)
    except ValueError:
        return _panel(request, memory_id, error="priority and confidence are numbers from 0 to 1", status=422)
    except InvalidInput as exc:
        return _panel(request, memory_id, error=f"{exc.field}: {exc.message}", status=422)
    except NotFound:
        return _panel(request, memory_id, error="this memory is gone", status=404)
    return _panel(request, memory_id, message="saved")


@router.post("/memory/{memory_id}/forget")
def memory_forget(request: Request, memory_id: str) -> HTMLResponse:
    try:
        api_of(request).forget(memory_id)
    except (NotFound, InvalidInput):
        return _panel(request, memory_id, error="nothing to forget: no such live memory", status=404)
    return _panel(request, memory_id, message="forgotten")


@router.post("/memory/{memory_id}/restore")
def memory_restore(request: Request, memory_id: str) -> HTMLResponse:
    try:
        api_of(request).restore(memory_id)
    except InvalidInput as exc:  # e.g. compacted: its old values are gone
        return _panel(request, memory_id, error=f"cannot restore: {exc.message}", status=422)
    except NotFound:
        return _panel(request, memory_id, error="nothing to restore: this memory was not forgotten", status=404)
    return _panel(request, memory_id, message="restored")


@router.get("/memory/{memory_id}/line")
def memory_line(request: Request, memory_id: str) -> HTMLResponse:
    """One line about a memory for the live feed (its content, escaped), or that it is gone."""
    return render(request, "memory_line.html", memory_id=memory_id, **_memory_state(request, memory_id))


# ------------------------------------------------------------------ persona
@router.get("/persona")
def persona_page(request: Request) -> HTMLResponse:
    return render(request, "persona.html", nav="persona", info=api_of(request).get_persona_info(), message=None)


@router.post("/persona")
async def persona_set(request: Request) -> HTMLResponse:
    form = await form_of(request)
    return await run_in_threadpool(_set_persona, request, form.get("text", ""))


def _set_persona(request: Request, text: str) -> HTMLResponse:
    api = api_of(request)
    message = "saved"
    try:
        api.set_persona(text)
    except InvalidInput as exc:
        message = f"{exc.field}: {exc.message}"
    return render(request, "persona_panel.html", info=api.get_persona_info(), message=message)


# ------------------------------------------------------------------ activity
@router.get("/activity")
def activity(request: Request) -> HTMLResponse:
    api = api_of(request)
    try:
        peers: list[dict[str, Any]] = api.list_peers()
    except NeuralSyncError:
        peers = []
    return render(request, "activity.html", nav="activity", sessions=api.sessions(), peers=peers,
                  teams=api.teams_list(),
                  merges=api.merges(limit=50), conflicts=api.conflicts(limit=50),
                  changes=list(reversed(api.changes_since(max(0, api.last_seq() - 30), 30))))


# ------------------------------------------------------------------ monitor
@router.get("/monitor")
def monitor(request: Request, days: int = Query(30, ge=1, le=365)) -> HTMLResponse:
    api = api_of(request)
    growth = api.growth(days)
    stats = api.get_system_stats()
    perf = stats.get("performance_stats", {})
    operations = sorted((perf.get("operations") or {}).keys())
    latency = {op: api.performance_trend(op, 240) for op in operations if op in ("recall", "remember", "get",
                                                                                  "update", "forget")}
    return render(request, "monitor.html", nav="monitor", growth=growth, days=days,
                  growth_chart=bar_chart(_daily(growth, "memories", days)),
                  bytes_chart=bar_chart(_daily(growth, "bytes", days)),
                  latency_charts={op: line_chart(points) for op, points in latency.items()},
                  perf=perf, storage=stats.get("storage", {}), counts=stats)


def _daily(growth: dict[str, Any], key: str, days: int) -> list[tuple[str, float]]:
    """One point per day of the window, oldest first, days without writes at zero."""
    known = {str(d["day"]): float(d.get(key) or 0) for d in growth.get("per_day", [])}
    today = time.time()
    labels = [time.strftime("%Y-%m-%d", time.localtime(today - 86400 * back)) for back in range(days - 1, -1, -1)]
    extra = sorted(set(known) - set(labels))  # a day the store counts in another time zone: still shown
    return [(day, known.get(day, 0.0)) for day in sorted([*labels, *extra])]


@dataclass
class Chart:
    """An SVG chart's geometry, computed here so the template only draws."""

    width: int
    height: int
    bars: list[dict[str, Any]]
    lines: dict[str, str]
    top: float
    dots: list[tuple[float, float]]
    labels: list[tuple[float, str]]


CHART_W, CHART_H = 560, 140


def bar_chart(points: list[tuple[str, float]]) -> Chart:
    """Bars for (label, value) points, scaled to the largest."""
    top = max((v for _, v in points), default=0.0) or 1.0
    width = CHART_W / max(1, len(points))
    bars: list[dict[str, Any]] = [{"x": round(i * width + 1, 1), "w": round(max(1.0, width - 2), 1),
             "h": round(v / top * (CHART_H - 20), 1), "y": round(CHART_H - v / top * (CHART_H - 20), 1),
             "label": label, "value": v} for i, (label, v) in enumerate(points)]
    labels = [(0.0, points[0][0]), (float(CHART_W), points[-1][0])] if len(points) > 1 else [
        (0.0, label) for label, _ in points]
    return Chart(CHART_W, CHART_H, bars, {}, top, [], labels)


def _y(value: float, top: float) -> float:
    return round(CHART_H - value / top * (CHART_H - 20), 1)


def line_chart(trend: list[dict[str, Any]]) -> Chart:
    """p50/p95/p99 per minute as polylines, scaled to the largest p99."""
    top = max((float(p.get("p99_ms") or 0) for p in trend), default=0.0) or 1.0
    n = max(1, len(trend) - 1)
    lines = {}
    for key in ("p50_ms", "p95_ms", "p99_ms"):
        lines[key] = " ".join(f"{round(i / n * CHART_W, 1)},{_y(float(p.get(key) or 0), top)}"
                              for i, p in enumerate(trend))
    labels = []
    if trend:
        labels = [(0.0, time.strftime("%H:%M", time.localtime(trend[0]["minute"]))),
                  (CHART_W - 40.0, time.strftime("%H:%M", time.localtime(trend[-1]["minute"])))]
    dots = [(round(i / n * CHART_W, 1), _y(float(p.get("p99_ms") or 0), top)) for i, p in enumerate(trend)]
    return Chart(CHART_W, CHART_H, [], lines, round(top, 2), dots, labels)
