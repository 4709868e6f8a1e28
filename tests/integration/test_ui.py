"""The dashboard (/ui) through Flask's test client: pages, scoping, login, CSRF, CSP, escaping."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.engine import Engine

from api.store import jobs as store
from api.ui.views import COOKIE, CSP
from api.web import auth


def create(
    client: FlaskClient, body: dict[str, Any], headers: dict[str, str] | None = None
) -> dict[str, Any]:
    resp = client.post(
        "/v1/jobs", data=json.dumps(body), content_type="application/json", headers=headers or {}
    )
    assert resp.status_code == 202, resp.get_data(as_text=True)
    return resp.get_json()  # type: ignore[no-any-return]


def make_key(db: Engine, name: str, *, admin: bool = False) -> str:
    with db.begin() as conn:
        return auth.create_key(conn, name, admin=admin)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def job_ids(html: str) -> list[str]:
    """The full ids of the jobs a list page links to, in order."""
    return re.findall(r'href="/ui/jobs/([0-9a-f-]{36})"', html)


def run_attempts(
    db: Engine, job_id: str, outcomes: list[tuple[str, str, dict[str, str] | None]]
) -> None:
    """Claim and finish the job once per (state, outcome, error), as the handler would."""
    jid = uuid.UUID(job_id)
    for n, (state, outcome, error) in enumerate(outcomes, start=1):
        with db.begin() as conn:
            [row] = store.claim_jobs(conn, [jid])
            assert row.attempts == n
            store.finish_jobs(
                conn,
                [
                    store.Finish(
                        job_id=jid,
                        attempt=n,
                        state=state,
                        outcome=outcome,
                        error=error,
                        result={"n": n} if state == "COMPLETED" else None,
                    )
                ],
            )


@pytest.fixture
def keys_app(make_app: Callable[..., Flask]) -> Flask:
    return make_app(api_auth="keys")


def test_the_list_shows_every_job_newest_first_each_linking_to_it(client: FlaskClient) -> None:
    made = [create(client, {"type": "echo", "payload": {"i": i}})["id"] for i in range(3)]
    for path in ("/ui", "/ui/", "/ui/jobs"):
        resp = client.get(path)
        assert resp.status_code == 200, path
        assert resp.mimetype == "text/html"
        assert job_ids(resp.get_data(as_text=True)) == made[::-1]


def test_filters_narrow_the_list(client: FlaskClient) -> None:
    echo = create(client, {"type": "echo", "labels": {"team": "a"}})["id"]
    sleep = create(client, {"type": "sleep", "payload": {"worktime": 1}, "labels": {"team": "b"}})[
        "id"
    ]
    assert job_ids(client.get("/ui/jobs?type=echo").get_data(as_text=True)) == [echo]
    assert job_ids(client.get("/ui/jobs?label=team:b").get_data(as_text=True)) == [sleep]
    assert job_ids(client.get("/ui/jobs?label=team=b").get_data(as_text=True)) == [sleep]  # either syntax
    assert job_ids(client.get("/ui/jobs?queue=slow").get_data(as_text=True)) == [sleep]
    assert job_ids(client.get("/ui/jobs?state=QUEUED&type=").get_data(as_text=True)) == [
        sleep,
        echo,
    ]
    assert job_ids(client.get("/ui/jobs?state=FAILED").get_data(as_text=True)) == []
    # the form sends every field, empty ones included: they mean "any"
    html = client.get("/ui/jobs?state=&type=echo&queue=&label=").get_data(as_text=True)
    assert job_ids(html) == [echo]
    assert '<option value="echo" selected>' in html


def test_a_bad_filter_is_a_400_page(client: FlaskClient) -> None:
    for query in ("state=NOPE", "label=nocolon", "page_token=garbage", "stat=FAILED"):
        resp = client.get(f"/ui/jobs?{query}")
        assert resp.status_code == 400, query
        assert resp.mimetype == "text/html"


def test_pages_follow_the_keyset_to_the_end_keeping_the_filters(client: FlaskClient) -> None:
    made = [create(client, {"type": "echo", "payload": {"i": i}})["id"] for i in range(5)]
    create(client, {"type": "sleep", "payload": {"worktime": 1}})
    seen: list[str] = []
    url: str | None = "/ui/jobs?type=echo&page_size=2"
    while url:
        html = client.get(url).get_data(as_text=True)
        seen += job_ids(html)
        m = re.search(r'<a href="([^"]+)" rel="next">', html)
        url = m.group(1).replace("&amp;", "&") if m else None
        if url:
            assert "type=echo" in url and "page_size=2" in url
    assert seen == made[::-1]


def test_a_job_page_shows_the_job_and_its_attempts_with_errors(
    client: FlaskClient, db: Engine
) -> None:
    job = create(client, {"type": "flaky", "payload": {"failures": 1}, "labels": {"env": "test"}})
    run_attempts(
        db,
        job["id"],
        [
            ("QUEUED", "RETRY", {"code": "FLAKY", "message": "attempt 1 failed on purpose"}),
            ("COMPLETED", "COMPLETED", None),
        ],
    )
    resp = client.get(f"/ui/jobs/{job['id']}")
    assert resp.status_code == 200
    html = resp.get_data(as_text=True)
    assert job["id"] in html and "COMPLETED" in html and "env:test" in html
    assert "&#34;failures&#34;: 1" in html  # the payload, pretty-printed and escaped
    attempts = html.split('<table class="attempts">')[1]
    assert attempts.count("<tr>") == 3  # the header and two attempts
    assert "RETRY" in attempts and "FLAKY" in attempts and "attempt 1 failed on purpose" in attempts
    assert 'http-equiv="refresh"' not in html  # a finished job does not refresh


def test_a_running_job_page_refreshes_itself(client: FlaskClient) -> None:
    job = create(client, {"type": "echo"})
    html = client.get(f"/ui/jobs/{job['id']}").get_data(as_text=True)
    assert 'http-equiv="refresh"' in html and "No attempt has reached the handler yet" in html


@pytest.mark.parametrize("job_id", [str(uuid.uuid4()), "not-a-uuid"])
def test_an_unknown_job_is_a_404_page(client: FlaskClient, job_id: str) -> None:
    resp = client.get(f"/ui/jobs/{job_id}")
    assert resp.status_code == 404
    assert resp.mimetype == "text/html"


def test_another_principals_job_is_a_404_and_not_listed(keys_app: Flask, db: Engine) -> None:
    client = keys_app.test_client()
    a, b, admin = make_key(db, "team-a"), make_key(db, "team-b"), make_key(db, "ops", admin=True)
    job_a = create(client, {"type": "echo"}, bearer(a))["id"]
    job_b = create(client, {"type": "echo"}, bearer(b))["id"]
    assert client.get(f"/ui/jobs/{job_a}", headers=bearer(a)).status_code == 200
    assert client.get(f"/ui/jobs/{job_a}", headers=bearer(b)).status_code == 404
    assert job_ids(client.get("/ui/jobs", headers=bearer(a)).get_data(as_text=True)) == [job_a]
    assert job_ids(client.get("/ui/jobs", headers=bearer(admin)).get_data(as_text=True)) == [
        job_b,
        job_a,
    ]
    # the reports count the caller's jobs only
    html = client.get("/ui/reports", headers=bearer(b)).get_data(as_text=True)
    assert re.search(r"<td>1</td>", html.split('<table class="summary">')[1])


def test_without_credentials_pages_send_the_browser_to_the_login_form(
    keys_app: Flask, db: Engine
) -> None:
    client = keys_app.test_client()
    for path in ("/ui", "/ui/jobs", "/ui/reports", f"/ui/jobs/{uuid.uuid4()}"):
        resp = client.get(path)
        assert resp.status_code == 303, path
        assert resp.headers["Location"].endswith("/ui/login")
    login = client.get("/ui/login")
    assert login.status_code == 200 and 'name="key"' in login.get_data(as_text=True)


def test_login_sets_a_strict_httponly_cookie_that_authenticates_and_logout_clears_it(
    keys_app: Flask, db: Engine
) -> None:
    client = keys_app.test_client()
    key = make_key(db, "team-a")
    job = create(client, {"type": "echo"}, bearer(key))["id"]
    resp = client.post("/ui/login", data={"key": key}, headers={"Origin": "http://localhost"})
    assert resp.status_code == 303 and resp.headers["Location"].endswith("/ui/jobs")
    cookie = resp.headers["Set-Cookie"]
    assert cookie.startswith(f"{COOKIE}={key};")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/ui" in cookie
    assert "Secure" not in cookie  # plain http here
    assert job_ids(client.get("/ui/jobs").get_data(as_text=True)) == [job]
    assert client.get(f"/ui/jobs/{job}").status_code == 200
    out = client.post("/ui/logout", headers={"Origin": "http://localhost"})
    assert out.status_code == 303
    assert (
        f"{COOKIE}=;" in out.headers["Set-Cookie"]
        and "Expires=Thu, 01 Jan 1970" in out.headers["Set-Cookie"]
    )
    assert client.get("/ui/jobs").status_code == 303


def test_the_cookie_is_secure_over_https(keys_app: Flask, db: Engine) -> None:
    key = make_key(db, "team-a")
    client = keys_app.test_client()
    direct = client.post(
        "/ui/login",
        data={"key": key},
        base_url="https://localhost",
        headers={"Origin": "https://localhost"},
    )
    proxied = client.post(
        "/ui/login",
        data={"key": key},
        headers={"Origin": "https://localhost", "X-Forwarded-Proto": "https"},
    )
    for resp in (direct, proxied):
        assert resp.status_code == 303
        assert "Secure" in resp.headers["Set-Cookie"]


def test_a_wrong_key_is_refused_and_sets_no_cookie(keys_app: Flask, db: Engine) -> None:
    resp = keys_app.test_client().post(
        "/ui/login",
        data={"key": "cj_deadbeef0000_" + "x" * 43},
        headers={"Origin": "http://localhost"},
    )
    assert resp.status_code == 401
    assert "Set-Cookie" not in resp.headers
    assert "not known" in resp.get_data(as_text=True)


def test_a_revoked_key_in_the_cookie_is_forgotten(keys_app: Flask, db: Engine) -> None:
    key = make_key(db, "leaver")
    with db.begin() as conn:
        auth.revoke_key(conn, "leaver")
    client = keys_app.test_client()
    client.set_cookie(COOKIE, key, path="/ui")
    resp = client.get("/ui/jobs")
    assert resp.status_code == 303 and resp.headers["Location"].endswith("/ui/login")
    assert f"{COOKIE}=;" in resp.headers["Set-Cookie"]


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Referer": "https://evil.example/page"},
        {"Origin": "http://localhost.evil.example"},
        {},
    ],
)
def test_a_login_post_from_another_origin_is_refused(
    keys_app: Flask, db: Engine, headers: dict[str, str]
) -> None:
    key = make_key(db, "team-a")
    resp = keys_app.test_client().post("/ui/login", data={"key": key}, headers=headers)
    assert resp.status_code == 403
    assert "Set-Cookie" not in resp.headers


def test_a_login_post_with_a_same_origin_referer_and_no_origin_is_accepted(
    keys_app: Flask, db: Engine
) -> None:
    key = make_key(db, "team-a")
    resp = keys_app.test_client().post(
        "/ui/login", data={"key": key}, headers={"Referer": "http://localhost/ui/login"}
    )
    assert resp.status_code == 303


def test_with_auth_none_there_is_no_login(client: FlaskClient) -> None:
    assert client.get("/ui/login").status_code == 303
    html = client.get("/ui/jobs").get_data(as_text=True)
    assert "Log out" not in html


@pytest.mark.parametrize(
    "path", ["/ui/jobs", "/ui/reports", "/ui/schedules", "/ui/login", f"/ui/jobs/{uuid.uuid4()}"]
)
def test_every_page_carries_the_strict_csp(
    make_app: Callable[..., Flask], db: Engine, path: str
) -> None:
    for app in (make_app(), make_app(api_auth="keys")):
        resp = app.test_client().get(path)
        assert resp.headers["Content-Security-Policy"] == CSP
        assert (
            "default-src 'none'" in CSP
            and "frame-ancestors 'none'" in CSP
            and "form-action 'self'" in CSP
        )
        assert "unsafe-inline" not in CSP and "script-src" not in CSP
        assert resp.headers["X-Frame-Options"] == "DENY"
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["Referrer-Policy"] == "same-origin"
    # the API keeps its own
    api = make_app().test_client().get("/v1/jobs")
    assert api.headers["Content-Security-Policy"] == "default-src 'none'; frame-ancestors 'none'"


def test_no_page_has_inline_script_or_style_and_the_stylesheet_is_served(
    client: FlaskClient,
) -> None:
    job = create(client, {"type": "echo"})
    for path in ("/ui/jobs", f"/ui/jobs/{job['id']}", "/ui/reports", "/ui/schedules"):
        html = client.get(path).get_data(as_text=True)
        assert "<script" not in html and "<style" not in html and " style=" not in html, path
        # nothing loaded from another host (a link a person may follow, to Cloud Logging, is not loaded)
        assert re.search(r'<(?:script|img|link|iframe|source|object|embed)\b[^>]*(?:src|href)="(?:https?:)?//',
                         html) is None, path
    css = client.get("/ui/static/ui.css")
    assert css.status_code == 200 and css.mimetype == "text/css"


def test_a_payload_with_markup_is_escaped(client: FlaskClient) -> None:
    evil = "</pre><script>alert(1)</script>"
    job = create(client, {"type": "echo", "payload": {"x": evil}, "labels": {"who": "<b>bold</b>"}})
    for path in ("/ui/jobs", f"/ui/jobs/{job['id']}"):
        html = client.get(path).get_data(as_text=True)
        assert "<script>" not in html and "<b>bold</b>" not in html, path
        assert "&lt;b&gt;bold&lt;/b&gt;" in html, path
    assert "&lt;/pre&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in client.get(
        f"/ui/jobs/{job['id']}"
    ).get_data(as_text=True)


def test_reports_chart_and_tabulate_throughput_failure_rate_and_run_time(
    client: FlaskClient, db: Engine
) -> None:
    ok = create(client, {"type": "echo"})["id"]
    bad = create(client, {"type": "boom"})["id"]
    run_attempts(db, ok, [("COMPLETED", "COMPLETED", None)])
    run_attempts(
        db, bad, [("FAILED", "FAILED", {"code": "UNEXPECTED", "message": "KeyError: 'missing'"})]
    )
    for window in ("1h", "24h", "7d", "30d", "bogus"):
        resp = client.get(f"/ui/reports?window={window}")
        assert resp.status_code == 200, window
        html = resp.get_data(as_text=True)
        assert html.count("<svg") == 3
        assert "Failure rate" in html and "p95" in html
    html = client.get("/ui/reports").get_data(as_text=True)
    summary = html.split('<table class="summary">')[1].split("</table>")[0]
    cells = re.findall(r"<td>([^<]*)</td>", summary)
    assert cells[:6] == ["2", "1", "1", "0", "0", "50.0%"]
    numbers = html.split('<table class="numbers">')[1].split("</table>")[0]
    assert numbers.count("<tr>") == 2  # the header and this hour
    assert "UNEXPECTED" in html.split('<table class="failures">')[1]
    assert (
        "<rect x=" in html
        and "<polyline" not in html.split('id="throughput-h"')[1].split("</section>")[0]
    )


# -- workflows (#14): a list, a page that draws the DAG, and links from a step's job page


def create_workflow(client: FlaskClient, body: dict[str, Any], headers: dict[str, str] | None = None) -> dict[str, Any]:
    resp = client.post("/v1/workflows", data=json.dumps(body), content_type="application/json", headers=headers or {})
    assert resp.status_code == 202, resp.get_data(as_text=True)
    return resp.get_json()  # type: ignore[no-any-return]


DIAMOND = {"name": "diamond <b>", "labels": {"team": "ui"}, "steps": [
    {"name": "a", "type": "echo"},
    {"name": "b", "type": "echo", "needs": ["a"]},
    {"name": "c", "type": "echo", "needs": ["a"]},
    {"name": "d", "type": "parents", "needs": ["b", "c"]},
]}


def test_the_workflow_page_draws_each_step_in_its_column_with_its_state_and_edges(
        client: FlaskClient, db: Engine) -> None:
    wf = create_workflow(client, DIAMOND)
    a = next(s["job_id"] for s in wf["steps"] if s["name"] == "a")
    run_attempts(db, a, [("FAILED", "FAILED", {"code": "X", "message": "no"})])
    html = client.get(f"/ui/workflows/{wf['id']}").get_data(as_text=True)
    assert "diamond &lt;b&gt;" in html and "<b>" not in html.split("<main", 1)[1]  # escaped
    svg = html.split('<svg class="dag"', 1)[1].split("</svg>", 1)[0]
    nodes = re.findall(r'<a href="/ui/jobs/([0-9a-f-]{36})" class="dag-node" data-step="(\w)" data-state="(\w+)">', svg)
    now = client.get(f"/v1/workflows/{wf['id']}").get_json()["steps"]
    assert {(s["job_id"], s["name"], s["state"]) for s in now} == set(nodes)  # each box: its job, its state
    assert dict((step, state) for _, step, state in nodes)["a"] == "FAILED"
    xs = {step: int(x) for step, x in re.findall(r'data-step="(\w)"[^>]*>\s*<title>[^<]*</title>\s*<rect x="(\d+)"', svg)}
    assert xs["a"] < xs["b"] == xs["c"] < xs["d"]  # a column per depth
    assert svg.count('class="dag-edge"') == 4 and ' style=' not in svg and "<script" not in html
    assert html.count('class="state state-failed"') >= 3  # a, and b and c failed by the policy, in the table


def test_the_workflow_list_links_each_workflow_and_filters_by_state(client: FlaskClient) -> None:
    wf = create_workflow(client, {**DIAMOND, "name": "listed"})
    html = client.get("/ui/workflows").get_data(as_text=True)
    assert f'href="/ui/workflows/{wf["id"]}"' in html and "listed" in html and "0 / 4" in html
    assert wf["id"] not in client.get("/ui/workflows?state=COMPLETED").get_data(as_text=True)
    assert client.get("/ui/workflows?sate=RUNNING").status_code == 400


def test_a_steps_job_page_links_its_workflow_and_what_it_needs(client: FlaskClient) -> None:
    wf = create_workflow(client, DIAMOND)
    d = next(s for s in wf["steps"] if s["name"] == "d")
    html = client.get(f"/ui/jobs/{d['job_id']}").get_data(as_text=True)
    assert f'id="workflow-link" href="/ui/workflows/{wf["id"]}"' in html and "<strong>d</strong>" in html
    needs = html.split('id="parents">', 1)[1].split("</dd>", 1)[0]
    assert sorted(re.findall(r">(\w)</a>", needs)) == ["b", "c"] and "WAITING" in needs


def test_a_jobs_page_lists_its_durable_steps(make_app: Callable[..., Flask]) -> None:
    client = make_app(handler_auth="none").test_client()
    j = create(client, {"type": "three_steps"})
    client.post("/handlers/run", data=json.dumps({"job_id": j["id"]}), content_type="application/json")
    html = client.get(f"/ui/jobs/{j['id']}").get_data(as_text=True)
    table = html.split('id="durable-steps"', 1)[1].split("</table>", 1)[0]
    assert re.findall(r"<tr>\s*<td>(\w+)</td>", table) == ["one", "two", "three"]


@pytest.mark.parametrize("workflow_id", ["nope", str(uuid.uuid4())])
def test_an_unknown_or_foreign_workflow_is_a_404_page(keys_app: Flask, db: Engine, workflow_id: str) -> None:
    client = keys_app.test_client()
    a, b = make_key(db, "team-a"), make_key(db, "team-b")
    wf = create_workflow(client, DIAMOND, bearer(a))
    assert client.get(f"/ui/workflows/{wf['id']}", headers=bearer(a)).status_code == 200
    assert client.get(f"/ui/workflows/{wf['id']}", headers=bearer(b)).status_code == 404
    assert wf["id"] not in client.get("/ui/workflows", headers=bearer(b)).get_data(as_text=True)
    resp = client.get(f"/ui/workflows/{workflow_id}", headers=bearer(a))
    assert resp.status_code == 404 and resp.mimetype == "text/html"
