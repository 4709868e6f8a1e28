"""The dashboard in a real browser: headless Chromium (Debian's) driven by Playwright, against
gunicorn serving the app and the emulator running the jobs."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image
from playwright.sync_api import Browser, Page, sync_playwright
from sqlalchemy.engine import Engine

from api.web import auth
from tests.e2e.conftest import Stack, second_server

CHROMIUM = "/usr/bin/chromium"
# Headless, and quiet: no GPU, no QUIC, no calls home (updates, sync, field trials).
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium; installed with apt-get when missing and we may (root on Debian)."""
    if os.path.exists(CHROMIUM):
        return CHROMIUM
    can_install = (
        hasattr(os, "geteuid")
        and os.geteuid() == 0
        and Path("/etc/debian_version").exists()
        and shutil.which("apt-get") is not None
    )
    if not can_install:
        pytest.fail(
            f"{CHROMIUM} is missing and this is not root on Debian, so it cannot be installed here: "
            "run `sudo apt-get update && sudo apt-get install -y chromium` (never `playwright install`)"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run(
        "apt-get update && apt-get install -y chromium",
        shell=True,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if done.returncode != 0 or not os.path.exists(CHROMIUM):
        pytest.fail(
            f"apt-get could not install chromium:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        )
    return CHROMIUM


@pytest.fixture(scope="session")
def browser(chromium: str) -> Iterator[Browser]:
    """One headless Chromium for the module's tests."""
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser, stack: Stack) -> Iterator[Page]:
    """A fresh page that records CSP complaints and any request to another host."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    problems: list[str] = []
    pg.on(
        "console",
        lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None,
    )
    pg.on(
        "request",
        lambda r: None if r.url.startswith((stack.url, "data:")) else problems.append(r.url),
    )
    pg.problems = problems  # type: ignore[attr-defined]
    yield pg
    context.close()


def create(url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> str:
    resp = requests.post(url + "/v1/jobs", json=body, headers=headers or {}, timeout=10)
    assert resp.status_code == 202, resp.text
    return str(resp.json()["id"])


@pytest.mark.timeout(900)  # the first run may install chromium; the test itself takes seconds
def test_browse_jobs_a_job_and_the_reports(
    page: Page, stack: Stack, db: Engine, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:8]
    labels = {"run": run}
    echo = create(
        stack.url, {"type": "echo", "payload": {"hello": "<b>world</b>"}, "labels": labels}
    )
    flaky = create(stack.url, {"type": "flaky", "payload": {"failures": 1}, "labels": labels})
    doomed = create(stack.url, {"type": "flaky", "payload": {"failures": 9}, "labels": labels})
    for job_id in (echo, flaky, doomed):
        stack.wait_for(job_id, lambda j: j["done"])

    page.goto(f"{stack.url}/ui?label=run:{run}")
    assert page.title().startswith("Jobs")
    rows = page.locator("table.jobs tbody tr")
    assert rows.count() == 3
    assert page.locator("table.jobs").inner_text().count("COMPLETED") == 2
    assert "FAILED" in page.locator("table.jobs").inner_text()

    page.click(f'a[href="/ui/jobs/{flaky}"]')
    page.wait_for_url(f"**/ui/jobs/{flaky}")
    assert page.locator("#job-state").inner_text() == "COMPLETED"
    attempts = page.locator("table.attempts tbody tr")
    assert attempts.count() == 2
    assert "RETRY" in attempts.nth(0).inner_text() and "COMPLETED" in attempts.nth(1).inner_text()

    page.goto(f"{stack.url}/ui/jobs/{echo}")
    assert "<b>world</b>" in page.locator("#payload").inner_text()  # shown as text, not markup
    assert page.locator("#payload b").count() == 0

    page.click("header >> text=Reports")
    page.wait_for_url("**/ui/reports")
    assert page.locator("svg.chart").count() == 3
    assert page.locator("svg.chart rect[fill='#16a34a']").count() >= 1  # a completed bar
    shot = page.screenshot(full_page=True)
    (tmp_path / "reports.png").write_bytes(shot)
    image = Image.open(io.BytesIO(shot)).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50, "the screenshot is (nearly) blank"
    assert max(n for n, _ in colours) < 0.95 * image.width * image.height
    assert page.problems == []  # type: ignore[attr-defined]


@pytest.fixture
def keys_stack(stack: Stack, migrated_url: str) -> Iterator[str]:
    """A second gunicorn on the same database and emulator, with AUTH=keys."""
    # tasks run on the first stack; this one only serves pages
    with second_server(stack, migrated_url, tasks_to_self=False, AUTH="keys") as url:
        yield url


@pytest.mark.timeout(900)
def test_log_in_with_a_key_see_only_its_jobs_and_log_out(
    browser: Browser, keys_stack: str, db: Engine
) -> None:
    with db.begin() as conn:
        mine, theirs = auth.create_key(conn, "ui-mine"), auth.create_key(conn, "ui-theirs")
    my_job = create(keys_stack, {"type": "echo"}, {"Authorization": f"Bearer {mine}"})
    their_job = create(keys_stack, {"type": "echo"}, {"Authorization": f"Bearer {theirs}"})
    context = browser.new_context()
    page = context.new_page()
    try:
        page.goto(f"{keys_stack}/ui")
        page.wait_for_url("**/ui/login")
        page.fill("#key", mine)
        page.click(
            "main button[type=submit]"
        )  # a real browser's POST: Origin, Referrer-Policy and all
        page.wait_for_url("**/ui/jobs")
        assert page.locator(f'a[href="/ui/jobs/{my_job}"]').count() == 1
        assert page.locator(f'a[href="/ui/jobs/{their_job}"]').count() == 0
        cookies = {c["name"]: c for c in context.cookies()}
        assert set(cookies) == {"cloudjobs_key", "cloudjobs_csrf"}  # the key, and the forms' CSRF secret
        assert all(c["httpOnly"] and c["sameSite"] == "Strict" for c in cookies.values())
        assert page.evaluate("document.cookie") == ""  # HttpOnly: no script can read it
        page.goto(f"{keys_stack}/ui/jobs/{their_job}")
        assert "404" in page.title()
        page.goto(f"{keys_stack}/ui")
        page.click("header >> text=Log out")
        page.wait_for_url("**/ui/login")
        assert [c["name"] for c in context.cookies()] == ["cloudjobs_csrf"]  # the key is gone
        page.goto(f"{keys_stack}/ui/reports")
        page.wait_for_url("**/ui/login")
    finally:
        context.close()


@pytest.mark.timeout(900)
def test_click_retry_and_see_the_job_run_again(page: Page, stack: Stack, db: Engine) -> None:
    # a job that fails its first run (one attempt allowed) and succeeds on the next attempt
    job = create(stack.url, {"type": "flaky", "queue": "unlimited", "payload": {"failures": 1}, "max_attempts": 1})
    stack.wait_for(job, lambda j: j["done"])
    page.goto(f"{stack.url}/ui/jobs/{job}")
    assert page.locator("#job-state").inner_text() == "FAILED"
    page.click("#retry-job")
    page.wait_for_url(f"**/ui/jobs/{job}?notice=*")
    assert page.locator("#notice").inner_text() == "Sent to run again."
    stack.wait_for(job, lambda j: j["done"])
    page.reload()
    assert page.locator("#job-state").inner_text() == "COMPLETED"
    assert page.locator("table.attempts tbody tr").count() == 2
    # the bulk form: cancel what the filter matches, after a confirmation showing the count
    for _ in range(2):  # due in an hour: still QUEUED when cancelled
        create(stack.url, {"type": "echo", "queue": "slow", "run_at": _later(), "labels": {"browser": "bulk"}})
    page.goto(f"{stack.url}/ui/jobs?label=browser:bulk")
    page.click("#bulk-cancel")
    assert "Cancel 2 jobs" in page.locator("#confirm-bulk").inner_text()
    page.click("#confirm-bulk")
    page.wait_for_url("**/ui/operations/*")
    assert page.locator("#operation-succeeded").inner_text() == "2"
    assert page.problems == []  # type: ignore[attr-defined]


def _later() -> str:
    return (datetime.now(UTC) + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
