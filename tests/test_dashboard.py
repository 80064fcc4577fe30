"""The dashboard and the docs pages over HTTP (no browser): sign-in, the cookie, CSRF, paging, escaping.

The browser itself (htmx, the live feed, EventSource) is tested in ``test_dashboard_browser.py``.
"""

from __future__ import annotations

import html
import json
import os
import re
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("jinja2")
from fastapi.testclient import TestClient

from neuralsync.server.app import create_app
from neuralsync.unified_memory_api import UnifiedMemoryAPI

TOKEN = "dashboard-token-0123456789"
BASE = "http://127.0.0.1:8373"
ORIGIN = {"Origin": BASE}
MakeApi = Any


@pytest.fixture
def store(make_api: MakeApi) -> UnifiedMemoryAPI:
    return make_api(embedder="hashing")  # quick to embed: these tests are about pages, not meaning


@pytest.fixture
def anon(store: UnifiedMemoryAPI) -> Iterator[TestClient]:
    with TestClient(create_app(store, TOKEN), base_url=BASE) as client:
        yield client


def sign_in(client: TestClient) -> str:
    """Sign the client in; the page's CSRF token."""
    answer = client.post("/ui/login", data={"token": TOKEN, "next": "/ui/"}, headers=ORIGIN, follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/"
    return csrf_of(client.get("/ui/").text)


def csrf_of(page: str) -> str:
    found = re.search(r"hx-headers='([^']*)'", page)
    assert found is not None
    return str(json.loads(html.unescape(found.group(1)))["X-CSRF-Token"])


def test_sign_in_sets_an_httponly_samesite_strict_cookie_that_is_not_the_token(anon: TestClient) -> None:
    assert anon.get("/ui/", follow_redirects=False).headers["location"] == "/ui/login?next=/ui/"
    wrong = anon.post("/ui/login", data={"token": "nope"}, headers=ORIGIN, follow_redirects=False)
    assert wrong.status_code == 403 and "set-cookie" not in wrong.headers
    answer = anon.post("/ui/login", data={"token": TOKEN, "next": "/ui/persona"}, headers=ORIGIN,
                       follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/persona"
    cookie = answer.headers["set-cookie"]
    name, _, rest = cookie.partition("=")
    value, *flags = [part.strip() for part in rest.split(";")]
    assert name == "ns_session_8373" and len(value) >= 40 and TOKEN not in cookie
    assert {"HttpOnly", "SameSite=Strict", "Path=/"} <= set(flags)
    for path in ("/ui/", "/ui/persona", "/ui/activity", "/ui/monitor"):
        page = anon.get(path)
        assert page.status_code == 200 and TOKEN not in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]


def test_next_after_sign_in_stays_on_this_server(anon: TestClient) -> None:
    for bad in ("//evil.example/", "https://evil.example/", "/v1/memories", "\\\\evil"):
        answer = anon.post("/ui/login", data={"token": TOKEN, "next": bad}, headers=ORIGIN, follow_redirects=False)
        assert answer.headers["location"] == "/ui/"


def test_cross_site_requests_are_refused(anon: TestClient, store: UnifiedMemoryAPI) -> None:
    mid = store.remember("keep me")
    cross = anon.post("/ui/login", data={"token": TOKEN}, headers={"Origin": "http://evil.example"},
                      follow_redirects=False)
    assert cross.status_code == 403 and "set-cookie" not in cross.headers  # no login CSRF either
    csrf = sign_in(anon)
    forget = f"/ui/memory/{mid}/forget"
    assert anon.post(forget, headers=ORIGIN).status_code == 403  # the cookie alone: no CSRF token
    assert anon.post(forget, headers={**ORIGIN, "X-CSRF-Token": "guess"}).status_code == 403
    assert anon.post(forget, headers={"Origin": "http://evil.example", "X-CSRF-Token": csrf}).status_code == 403
    assert anon.post(forget, headers={"Sec-Fetch-Site": "cross-site", "X-CSRF-Token": csrf}).status_code == 403
    assert store.get(mid).content == "keep me"
    done = anon.post(forget, headers={**ORIGIN, "Sec-Fetch-Site": "same-origin", "X-CSRF-Token": csrf})
    assert done.status_code == 200 and 'id="restore"' in done.text


def test_the_api_still_needs_the_bearer_token(anon: TestClient, store: UnifiedMemoryAPI) -> None:
    mid = store.remember("api fact")
    csrf = sign_in(anon)
    with_cookie = {**ORIGIN, "X-CSRF-Token": csrf}
    assert anon.get(f"/v1/memories/{mid}").status_code == 401
    assert anon.post("/v1/recall", json={"query": "api"}, headers=with_cookie).status_code == 401
    assert anon.post("/v1/memories", json={"content": "x"}, headers=with_cookie).status_code == 401
    assert anon.get("/v1/changes").status_code == 401
    assert anon.get("/metrics").status_code == 401
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert anon.get(f"/v1/memories/{mid}", headers=bearer).status_code == 200
    assert anon.get(f"/v1/memories/{mid}", headers={"Authorization": "Bearer wrong"}).status_code == 403


def test_the_cookie_admits_the_change_stream(anon: TestClient, store: UnifiedMemoryAPI) -> None:
    assert anon.get("/v1/changes/stream").status_code == 401
    sign_in(anon)
    mid = store.remember("streamed")
    with anon.stream("GET", "/v1/changes/stream", params={"since": 0}) as response:
        assert response.status_code == 200
        data = next(line for line in response.iter_lines() if line.startswith("data:"))
    assert json.loads(data[5:])["record_id"] == mid


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.refs += [value for name, value in attrs if name in ("src", "href") and value]


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_docs_load_offline_from_local_assets(anon: TestClient, path: str) -> None:
    sign_in(anon)
    page = anon.get(path)
    assert page.status_code == 200
    parser = _Refs()
    parser.feed(page.text)
    assert parser.refs and all(ref.startswith("/") and not ref.startswith("//") for ref in parser.refs)
    assert "://" not in page.text  # no CDN, no fonts, no favicon from elsewhere
    assert "/openapi.json" in page.text and anon.get("/openapi.json").status_code == 200
    anonymous = TestClient(anon.app, base_url=BASE)
    for ref in parser.refs:  # the assets themselves are public and in the package
        asset = anonymous.get(ref)
        assert asset.status_code == 200 and len(asset.content) > 100, ref
    assert "default-src 'self'" in page.headers["content-security-policy"]


def test_content_is_escaped(anon: TestClient, store: UnifiedMemoryAPI) -> None:
    mid = store.remember('<script>alert("x")</script> and <img src=x onerror=alert(1)>')
    sign_in(anon)
    for page in (anon.get("/ui/").text, anon.get(f"/ui/memory/{mid}").text, anon.get(f"/ui/memory/{mid}/line").text):
        assert "<script>alert" not in page and "<img src=x" not in page
        assert "&lt;script&gt;alert" in page


def test_edit_forget_restore_and_persona(anon: TestClient, store: UnifiedMemoryAPI) -> None:
    mid = store.remember("first draft", tags=["a"])
    csrf = sign_in(anon)
    headers = {**ORIGIN, "X-CSRF-Token": csrf}
    ops = store.counts()["ops"]
    same = {"content": "first draft", "tags": "a", "scope": "global", "kind": "fact", "priority": "0.5"}
    unchanged = anon.post(f"/ui/memory/{mid}", data=same, headers=headers)
    assert "nothing changed" in unchanged.text and store.counts()["ops"] == ops  # shown values are not rewritten
    saved = anon.post(f"/ui/memory/{mid}", data={"content": "second draft", "tags": "a, b", "priority": "0.9"},
                      headers=headers)
    assert saved.status_code == 200 and "saved" in saved.text
    assert store.get(mid).content == "second draft" and store.get(mid).tags == ("a", "b")
    bad = anon.post(f"/ui/memory/{mid}", data={"priority": "7"}, headers=headers)
    assert bad.status_code == 422 and "priority" in bad.text
    assert anon.post(f"/ui/memory/{mid}/forget", headers=headers).status_code == 200
    assert 'id="restore"' in anon.get(f"/ui/memory/{mid}").text
    restored = anon.post(f"/ui/memory/{mid}/restore", headers=headers)
    assert restored.status_code == 200 and "second draft" in restored.text
    assert store.get(mid).content == "second draft"
    assert anon.post(f"/ui/memory/{mid}/restore", headers=headers).status_code == 404
    assert anon.post("/ui/persona", data={"text": "terse, British spelling"}, headers=headers).status_code == 200
    assert store.get_persona() == "terse, British spelling"
    assert "terse, British spelling" in anon.get("/ui/persona").text


def test_sign_out_ends_the_session(anon: TestClient) -> None:
    csrf = sign_in(anon)
    out = anon.post("/ui/logout", headers={**ORIGIN, "X-CSRF-Token": csrf})
    assert out.status_code == 204 and "Max-Age=0" in out.headers["set-cookie"]
    assert anon.get("/ui/", follow_redirects=False).status_code == 303


def test_paging_a_few_thousand_memories_is_quick(store: UnifiedMemoryAPI, anon: TestClient) -> None:
    total = 3000
    with store.batch_operations():
        for i in range(total):
            store.remember(f"note {i} about topic{i % 7}", tags=[f"t{i % 5}"], scope="paging")
    sign_in(anon)
    seen: list[str] = []
    url = "/ui/?scope=paging"
    slowest = 0.0
    while url:
        started = time.perf_counter()
        page = anon.get(url)
        slowest = max(slowest, time.perf_counter() - started)
        assert page.status_code == 200
        seen += re.findall(r'href="/ui/memory/([0-9a-f]{32})" class="content"', page.text)
        found = re.search(r'href="(\?[^"]*)" id="next"', page.text)
        url = "/ui/" + html.unescape(found.group(1)) if found else ""
    assert len(seen) == total and len(set(seen)) == total  # every memory once, newest first, keyset pages
    assert slowest < 1.0, f"a page took {slowest:.2f}s"
    started = time.perf_counter()
    second = anon.get("/ui/", params={"q": "topic3", "mode": "text", "page": 2})
    assert time.perf_counter() - started < 2.0
    rows = re.findall(r'class="content">([^<]*)<', second.text)
    assert len(rows) == 50 and all("topic3" in row for row in rows)
    assert 'id="prev"' in second.text and 'id="next"' in second.text
    hybrid = anon.get("/ui/", params={"q": "topic3", "mode": "hybrid"}).text
    assert 'title="text"' in hybrid and 'title="semantic"' in hybrid and 'title="hybrid"' in hybrid
    assert anon.get("/ui/", params={"before": "junk"}).status_code == 200  # a bad cursor is said, not a 500


def test_sessions_expire_and_are_bounded() -> None:
    from neuralsync.server.websession import WebSessions

    bounded = WebSessions(ttl_s=60, max_sessions=2)
    first, second = bounded.create(), bounded.create()
    assert bounded.get(first.id) is first and first.csrf != second.csrf  # first's idle timer restarts
    third = bounded.create()  # over the bound: the one closest to expiring (second) goes
    assert bounded.get(second.id) is None and bounded.get(first.id) is first and bounded.get(third.id) is third
    short = WebSessions(ttl_s=0.05)
    session = short.create()
    time.sleep(0.1)
    assert short.get(session.id) is None and short.get("") is None


def test_activity_shows_sessions_merges_conflicts_and_monitor_charts(anon: TestClient, store: UnifiedMemoryAPI) -> None:
    kept = store.remember("the deploy key rotates monthly")
    store.remember("the deploy key rotates monthly")  # an exact repeat: merged into the first
    gone = store.remember("short-lived note")
    store.forget(gone)
    store.restore(gone)  # recorded as a conflict: the restore won over the delete
    sign_in(anon)
    page = anon.get("/ui/activity").text
    assert f'href="/ui/memory/{kept}"' in page and "No merges." not in page
    assert f'href="/ui/memory/{gone}"' in page and "_deleted" in page and "No conflicts." not in page
    assert f"<td>{os.getpid()}</td>" in page  # this process's session on the store, with its pid
    assert "neuralsync team create" in page  # no shared scope yet
    store.team_create("platform")
    assert "<td>team:platform</td><td>admin</td>" in anon.get("/ui/activity").text
    monitor = anon.get("/ui/monitor", params={"days": 7}).text
    assert monitor.count("<rect") == 14 and "<polyline" in monitor  # 7 days x 2 charts; latency lines


SECRETS_IN_EVERY_FORM = {
    "api key": "sk-" + "Zq8wE3rT6yU9iO2pA5sD8fG1hJ4kL7zX",
    "assignment": "password=hunter2-" + "dash",
    "yaml": "db:\n  password: Tr0ub4dor-" + "dash",
    "connection string": "postgres://app:" + "S3cretConn" + "@db.internal/app",
    "query token": "GET /cb?access_token=" + "tok3nValue9",
}
NEEDLES = ("Zq8wE3rT6yU9iO2pA5sD8fG1hJ4kL7zX", "hunter2-dash", "Tr0ub4dor-dash", "S3cretConn", "tok3nValue9")


def test_secrets_written_through_every_http_door_reach_no_answer_page_or_disk(anon: TestClient,
                                                                              store: UnifiedMemoryAPI) -> None:
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    answers: list[str] = []
    ids = []
    for form, secret in SECRETS_IN_EVERY_FORM.items():
        made = anon.post("/v1/memories", json={"content": f"{form} note: {secret}", "metadata": {"env": secret}},
                         headers=bearer)
        legacy = anon.post("/remember", json={"text": f"legacy {form}: {secret}", "scope": "global"}, headers=bearer)
        assert made.status_code == 201 and legacy.status_code in (200, 201), (made.text, legacy.text)
        answers += [made.text, legacy.text]
        ids.append(made.json()["id"])
    csrf = sign_in(anon)
    headers = {**ORIGIN, "X-CSRF-Token": csrf}
    edited = anon.post(f"/ui/memory/{ids[0]}", data={"content": "edited: " + SECRETS_IN_EVERY_FORM["assignment"]},
                       headers=headers)
    persona = anon.post("/ui/persona", data={"text": "terse; " + SECRETS_IN_EVERY_FORM["connection string"]},
                        headers=headers)
    assert edited.status_code == 200 and persona.status_code == 200
    answers += [edited.text, persona.text, anon.get("/v1/memories", headers=bearer).text]
    answers += [anon.get("/ui/", params={"q": q, "mode": mode}).text
                for q in ("note", "password", "postgres") for mode in ("text", "hybrid")]
    answers += [anon.get(f"/ui/memory/{mid}").text for mid in ids] + [anon.get("/ui/persona").text]
    assert "[REDACTED:" in anon.get(f"/ui/memory/{ids[1]}").text
    store.close()
    raw = b"".join(p.read_bytes() for p in store.config.home.glob("memory.db*"))
    for needle in NEEDLES:
        assert all(needle not in text for text in answers), needle
        assert needle.encode() not in raw, needle
