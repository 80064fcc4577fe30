"""The dashboard in a real headless Chromium (Debian's ``chromium``, driven by Playwright).

A ``neuralsync serve`` subprocess on a free loopback port; the browser signs in,
searches, edits, forgets and restores a memory, and sees a write made by the
CLI (another process on the same store) arrive in the live feed. It also loads
/docs and checks that no request left the server. Skips, saying why, when
Playwright or ``/usr/bin/chromium`` is missing; Playwright never downloads a
browser here. ``NS_DASHBOARD_SCREENSHOTS=<dir>`` keeps the screenshots (the
README's come from this test).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("uvicorn")
pytest.importorskip("jinja2")
httpx = pytest.importorskip("httpx")
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright (pip)")

from _live import Server, live_server  # noqa: E402 - after the skips

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
WAIT_MS = 20_000

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium (apt-get install chromium)")]


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    monkeypatch.setenv("NEURALSYNC_EMBEDDER", "hashing")  # quick to start; meaning is not what is tested here
    with live_server(tmp_path / "store") as running:
        yield running


@pytest.fixture
def page(server: Server) -> Iterator[sync_api.Page]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True, timeout=60_000)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            context.set_default_timeout(WAIT_MS)
            yield context.new_page()
            context.close()
        finally:
            browser.close()


def shot(page: sync_api.Page, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"dashboard-{name}.png"
    page.screenshot(path=str(path), full_page=False)
    keep = os.environ.get("NS_DASHBOARD_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / path.name)


def test_sign_in_search_edit_forget_restore_and_live_feed(server: Server, page: sync_api.Page,
                                                          tmp_path: Path) -> None:
    expect = sync_api.expect
    requested: list[str] = []
    blocked: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.on("requestfailed", lambda request: blocked.append(request.url))
    api = httpx.Client(base_url=server.url, headers=server.auth, timeout=10)
    for text in ("the staging cluster is rebuilt every Monday", "deploys go out on Tuesday afternoons",
                 "the on-call rota lives in the team wiki"):
        api.post("/v1/memories", json={"content": text, "tags": ["ops"], "tool": "codex"}).raise_for_status()

    # Sign in: the page without a session is sent to the sign-in form.
    page.goto(f"{server.url}/ui/")
    expect(page).to_have_url(f"{server.url}/ui/login?next=/ui/")
    shot(page, tmp_path, "sign-in")
    page.fill("#token", server.token)
    page.click("#signin")
    expect(page).to_have_url(f"{server.url}/ui/")
    (cookie,) = page.context.cookies()
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict" and cookie["value"] != server.token
    assert server.token not in page.content()

    # Search, with the score and its parts.
    page.fill("#q", "staging cluster")
    page.select_option("#mode", "hybrid")
    page.click("#search")
    first = page.locator("#results a.content").first
    expect(first).to_have_text("the staging cluster is rebuilt every Monday")
    expect(page.locator("#results .part").first).to_be_visible()
    shot(page, tmp_path, "search")

    # Edit.
    first.click()
    expect(page.locator("#content")).to_have_value("the staging cluster is rebuilt every Monday")
    memory_id = page.url.rsplit("/", 1)[1]
    page.fill("#content", "the staging cluster is rebuilt every Monday at 06:00")
    page.fill("#tags", "ops, staging")
    page.click("#save")
    expect(page.locator("#status")).to_have_text("saved")
    stored = api.get(f"/v1/memories/{memory_id}").json()
    assert stored["content"] == "the staging cluster is rebuilt every Monday at 06:00"
    assert stored["tags"] == ["ops", "staging"]
    shot(page, tmp_path, "memory")

    # Forget (after the confirmation) and restore.
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#forget")
    expect(page.locator("#status")).to_have_text("forgotten")
    expect(page.locator("#restore")).to_be_visible()
    assert api.get(f"/v1/memories/{memory_id}").status_code == 404
    page.click("#restore")
    expect(page.locator("#status")).to_have_text("restored")
    expect(page.locator("#content")).to_have_value("the staging cluster is rebuilt every Monday at 06:00")
    assert api.get(f"/v1/memories/{memory_id}").status_code == 200

    # A write from the CLI, another process on the same store, appears in the live feed.
    page.goto(f"{server.url}/ui/")
    expect(page.locator("#feed-state")).to_have_text("live")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NS_")}
    env["NEURALSYNC_HOME"] = str(server.home)
    subprocess.run([sys.executable, "-m", "neuralsync.cli", "remember", "--tag", "cli",
                    "written from the CLI while the dashboard watched"],
                   env=env, check=True, timeout=120, capture_output=True)
    line = page.locator("#feed li[data-kind=create] .line a", has_text="written from the CLI while the dashboard")
    expect(line).to_be_visible()
    shot(page, tmp_path, "live-feed")

    # The other pages render; /docs works from the cookie alone, from local assets.
    for path, name in (("/ui/activity", "activity"), ("/ui/monitor", "monitor"), ("/ui/persona", None)):
        page.goto(f"{server.url}{path}")
        expect(page.locator("h1").first).to_be_visible()
        if name:
            shot(page, tmp_path, name)
    page.goto(f"{server.url}/docs")
    expect(page.locator(".swagger-ui .info .title").first).to_contain_text("neuralsync")
    shot(page, tmp_path, "docs")
    page.goto(f"{server.url}/redoc")
    expect(page.locator("h1").first).to_contain_text("neuralsync")
    page.wait_for_timeout(500)  # redoc draws its sidebar logo after the first render
    # Nothing is fetched from elsewhere: the one URL the redoc bundle names (its logo) is blocked by the
    # page's Content-Security-Policy before it leaves the browser.
    outside = [url for url in requested if not url.startswith((server.url, "data:", "blob:"))]
    assert all(url in blocked for url in outside), outside
    assert set(outside) <= {"https://cdn.redoc.ly/redoc/logo-mini.svg"}, outside
    api.close()
