from __future__ import annotations

import io
import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient
from google.cloud import tasks_v2
from sqlalchemy.engine import Engine

from api.cloud.tasks import queue_path
from api.config import Config


def post(client: FlaskClient, body: Any, **headers: str) -> Any:
    return client.post("/v1/jobs", data=json.dumps(body), content_type="application/json", headers=headers)


def count_jobs(db: Engine) -> int:
    with db.connect() as conn:
        return conn.execute(sa.text("SELECT count(*) FROM jobs")).scalar_one()


def test_create_returns_202_the_queued_job_and_its_location(client: FlaskClient, tasks_client: tasks_v2.CloudTasksClient) -> None:
    resp = post(client, {"type": "sleep", "payload": {"worktime": 40}, "labels": {"team": "a"}})
    assert resp.status_code == 202
    job = resp.get_json()
    assert resp.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert job["state"] == "QUEUED" and job["done"] is False
    assert (job["type"], job["queue"], job["payload"], job["labels"]) == ("sleep", "slow", {"worktime": 40}, {"team": "a"})
    assert job["attempts"] == 0 and job["max_attempts"] == 2 and job["result"] is None
    assert job["created_time"].endswith("Z")
    tasks = list(tasks_client.list_tasks(request={"parent": queue_path(_config(client), "slow"), "response_view": tasks_v2.Task.View.FULL}))
    [task] = tasks
    assert task.name.endswith(f"job-{uuid.UUID(job['id']).hex}-0")
    assert json.loads(task.http_request.body) == {"job_id": job["id"]}
    assert task.http_request.oidc_token.service_account_email == "tasks@local-project.iam.gserviceaccount.com"


def _config(client: FlaskClient) -> Config:
    return client.application.extensions["cloudjobs"].config


def test_get_returns_the_job(client: FlaskClient) -> None:
    job = post(client, {"type": "echo", "payload": {"a": 1}}).get_json()
    resp = client.get(f"/v1/jobs/{job['id']}")
    assert resp.status_code == 200
    assert resp.get_json()["id"] == job["id"]
    assert resp.get_json()["payload"] == {"a": 1}


@pytest.mark.parametrize("job_id", [str(uuid.uuid4()), "not-a-uuid", "1", "%00"])
def test_get_unknown_or_malformed_id_is_404_problem(client: FlaskClient, job_id: str) -> None:
    resp = client.get(f"/v1/jobs/{job_id}")
    assert resp.status_code == 404
    assert resp.content_type == "application/problem+json"
    assert resp.get_json()["status"] == 404


@pytest.mark.parametrize(
    ("raw", "content_type", "status", "needle"),
    [
        ("{not json", "application/json", 400, "not valid JSON"),
        ("[1, 2]", "application/json", 400, "JSON object"),
        ('"text"', "application/json", 400, "JSON object"),
        ("null", "application/json", 400, "JSON object"),
        ('{"type": "echo"}', "text/plain", 415, "application/json"),
        ('{"type": "echo"}', "", 415, "application/json"),
    ],
)
def test_malformed_bodies_are_refused_and_nothing_is_stored(
    client: FlaskClient, db: Engine, raw: str, content_type: str, status: int, needle: str
) -> None:
    resp = client.post("/v1/jobs", data=raw, content_type=content_type)
    assert resp.status_code == status
    assert resp.content_type == "application/problem+json"
    assert needle in resp.get_json()["detail"]
    assert count_jobs(db) == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"type": "nope", "payload": {}}, "type"),
        ({"payload": {}}, "type"),
        ({"type": "sleep", "payload": {"seconds": "long"}}, "payload.seconds"),
        ({"type": "sleep", "payload": {}}, "payload"),
        ({"type": "flaky", "payload": {"failures": 1, "extra": 1}}, "payload.extra"),
        ({"type": "echo", "payload": [1]}, "payload"),
        ({"type": "echo", "queue": "nowhere"}, "queue"),
        ({"type": "echo", "max_attempts": 50}, "max_attempts"),
        ({"type": "echo", "max_attempts": 0}, "max_attempts"),
        ({"type": "echo", "timeout_s": 100}, "timeout_s"),
        ({"type": "echo", "labels": {"Bad Key": "x"}}, "labels"),
        ({"type": "echo", "labels": {"k": 1}}, "labels.k"),
        ({"type": "echo", "unknown": 1}, "unknown"),
        ({"type": "echo", "run_at": "2020-01-01T00:00:00"}, "run_at"),
        # What the document says is an integer or a date-time string, and nothing pydantic
        # would convert into one (schemathesis found `true` accepted as 1).
        ({"type": "echo", "max_attempts": True}, "max_attempts"),
        ({"type": "echo", "max_attempts": "3"}, "max_attempts"),
        ({"type": "echo", "timeout_s": "30"}, "timeout_s"),
        ({"type": "echo", "run_at": int(datetime.now(UTC).timestamp()) + 3600}, "run_at"),
    ],
)
def test_invalid_jobs_are_422_naming_the_field_and_nothing_is_stored(
    client: FlaskClient, db: Engine, body: dict[str, Any], field: str
) -> None:
    resp = post(client, body)
    assert resp.status_code == 422, resp.get_json()
    problem = resp.get_json()
    assert problem["title"] == "Validation failed"
    assert field in [e["field"] for e in problem["errors"]], problem["errors"]
    assert count_jobs(db) == 0


def test_run_at_more_than_30_days_ahead_is_refused(client: FlaskClient) -> None:
    later = (datetime.now(UTC) + timedelta(days=31)).isoformat()
    resp = post(client, {"type": "echo", "run_at": later})
    assert resp.status_code == 422
    assert resp.get_json()["errors"][0]["field"] == "run_at"


def test_run_at_becomes_the_tasks_schedule_time(client: FlaskClient, tasks_client: tasks_v2.CloudTasksClient) -> None:
    when = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0)
    job = post(client, {"type": "echo", "run_at": when.isoformat()}).get_json()
    assert job["scheduled_time"].startswith(when.strftime("%Y-%m-%dT%H:%M:%S"))
    [task] = tasks_client.list_tasks(parent=queue_path(_config(client), "default"))
    assert task.schedule_time == when


def test_an_idempotent_replay_returns_the_original_job(client: FlaskClient, db: Engine) -> None:
    body = {"type": "echo", "payload": {"n": 1}}
    first = post(client, body, **{"Idempotency-Key": "abc"})
    again = post(client, body, **{"Idempotency-Key": "abc"})
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.get_json()["id"] == first.get_json()["id"]
    other = post(client, {"type": "echo", "payload": {"n": 2}}, **{"Idempotency-Key": "abc"})
    assert other.status_code == 409
    assert other.get_json()["job_id"] == first.get_json()["id"]
    assert count_jobs(db) == 1


def test_an_overlong_idempotency_key_is_400(client: FlaskClient) -> None:
    assert post(client, {"type": "echo"}, **{"Idempotency-Key": "k" * 300}).status_code == 400


def test_when_the_enqueue_fails_the_job_is_kept_created_and_still_202(make_app: Any, db: Engine) -> None:
    client = make_app(emulator_host="127.0.0.1:1").test_client()  # nothing listens there
    resp = post(client, {"type": "echo"})
    assert resp.status_code == 202
    assert resp.get_json()["state"] == "CREATED"
    assert client.get(resp.headers["Location"]).get_json()["state"] == "CREATED"
    assert count_jobs(db) == 1


def test_a_body_over_the_limit_is_413(make_app: Any, db: Engine) -> None:
    client = make_app(max_request_bytes=1000).test_client()
    resp = post(client, {"type": "echo", "payload": {"blob": "x" * 2000}})
    assert resp.status_code == 413
    assert resp.content_type == "application/problem+json"
    assert count_jobs(db) == 0


def test_list_filters_and_pages(client: FlaskClient) -> None:
    made = [post(client, {"type": "echo" if i % 2 else "flaky", "payload": {} if i % 2 else {"failures": 0},
                          "labels": {"i": str(i)}}).get_json()["id"] for i in range(7)]
    seen, token = [], ""
    while True:
        page = client.get(f"/v1/jobs?page_size=3&page_token={token}").get_json()
        assert len(page["jobs"]) <= 3
        seen += [j["id"] for j in page["jobs"]]
        token = page["next_page_token"]
        if not token:
            break
    assert seen == list(reversed(made))
    echo = client.get("/v1/jobs?type=echo").get_json()["jobs"]
    assert {j["type"] for j in echo} == {"echo"} and len(echo) == 3
    assert [j["id"] for j in client.get("/v1/jobs?label=i:4").get_json()["jobs"]] == [made[4]]
    assert len(client.get("/v1/jobs?state=QUEUED,CREATED").get_json()["jobs"]) == 7
    assert client.get("/v1/jobs?state=COMPLETED").get_json()["jobs"] == []
    future = (datetime.now(UTC) + timedelta(minutes=1)).isoformat().replace("+00:00", "Z")
    assert client.get(f"/v1/jobs?created_after={future}").get_json()["jobs"] == []
    assert len(client.get(f"/v1/jobs?created_before={future}").get_json()["jobs"]) == 7


@pytest.mark.parametrize(
    "query",
    ["page_size=-1", "page_size=abc", "page_token=garbage", "state=DONE", "label=nocolon",
     "created_after=yesterday", "created_after=2026-01-01T00:00:00", "created_before="],
)
def test_bad_list_parameters_are_400(client: FlaskClient, query: str) -> None:
    resp = client.get(f"/v1/jobs?{query}")
    assert resp.status_code == 400
    assert resp.content_type == "application/problem+json"


def test_a_page_token_from_other_filters_is_400(client: FlaskClient) -> None:
    for _ in range(3):
        post(client, {"type": "echo"})
    token = client.get("/v1/jobs?page_size=1").get_json()["next_page_token"]
    assert token
    assert client.get(f"/v1/jobs?page_size=1&type=echo&page_token={token}").status_code == 400


def test_attempts_of_a_new_job_are_empty_and_unknown_jobs_404(client: FlaskClient) -> None:
    job = post(client, {"type": "echo"}).get_json()
    assert client.get(f"/v1/jobs/{job['id']}/attempts").get_json() == {"attempts": []}
    assert client.get(f"/v1/jobs/{uuid.uuid4()}/attempts").status_code == 404


def test_health_and_readiness(client: FlaskClient) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}
    assert client.get("/readyz").get_json()["database"] == "ok"


def test_readiness_fails_while_the_database_is_read_only(client: FlaskClient, db: Engine) -> None:
    """Issue #21: /readyz answered 200 while the database refused every write."""
    engine = client.application.extensions["cloudjobs"].engine
    name = db.url.database

    def read_only(on: bool) -> None:
        with db.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{name}" SET default_transaction_read_only = {"on" if on else "off"}'))
            conn.commit()
        engine.dispose()  # new sessions take the database's new default

    read_only(True)
    try:
        resp = client.get("/readyz")
        assert resp.status_code == 503 and resp.headers["Retry-After"] == "5"
        assert "read-only" in resp.get_json()["detail"]
    finally:
        read_only(False)
    assert client.get("/readyz").status_code == 200


def test_unknown_routes_and_methods_are_problems(client: FlaskClient) -> None:
    resp = client.get("/v2/nothing")
    assert resp.status_code == 404 and resp.content_type == "application/problem+json"
    resp = client.delete("/v1/jobs")
    assert resp.status_code == 405 and "GET" in resp.headers["Allow"]


def test_openapi_is_a_valid_3_1_document_of_every_route(client: FlaskClient) -> None:
    from openapi_spec_validator import validate

    doc = client.get("/openapi.json").get_json()
    validate(doc)
    assert doc["openapi"].startswith("3.1")
    rules = {re.sub(r"<(\w+)>", r"{\1}", r.rule)
             for r in client.application.url_map.iter_rules()
             if not r.rule.startswith(("/static", "/handlers", "/ui"))}  # /ui: HTML, not API
    assert rules <= set(doc["paths"]), rules - set(doc["paths"])


@pytest.mark.parametrize("payload", [{"a": "x\u0000y"}, {"k\u0000": 1}, {"a": ["ok", "\udbf3"]}])
def test_text_postgres_cannot_store_is_422_not_500(client: FlaskClient, db: Engine, payload: dict[str, Any]) -> None:
    resp = post(client, {"type": "echo", "payload": payload})
    assert resp.status_code == 422
    assert resp.get_json()["errors"][0]["field"].startswith("payload")
    assert count_jobs(db) == 0


@pytest.mark.parametrize("query", ["queue=a%00b", "type=%00", "label=k:v%00", "state=QUEUED%00"])
def test_nul_in_filters_is_400(client: FlaskClient, query: str) -> None:
    assert client.get(f"/v1/jobs?{query}").status_code == 400


def test_a_create_and_a_get_are_one_round_trip_each_to_postgresql(proxied_app: Any) -> None:
    from bench.pgwire import counting

    app, proxy = proxied_app
    client = app.test_client()
    # Outside the counted blocks: the connect, and the second run, on which psycopg prepares
    # the statement with a round trip of its own (pgfast sends the Parse with the Bind)
    for _ in range(2):
        client.get(f"/v1/jobs/{post(client, {'type': 'echo'}).get_json()['id']}")
    with counting(proxy) as c:
        resp = post(client, {"type": "echo"})
    assert resp.status_code == 202
    # the INSERT commits on its own: no BEGIN, no COMMIT
    assert (c.round_trips, dict(c.kinds)) == (1, {"insert": 1}), c.kinds
    with counting(proxy) as c:
        assert client.get(f"/v1/jobs/{resp.get_json()['id']}").get_json()["state"] == "QUEUED"
    assert (c.round_trips, dict(c.kinds)) == (1, {"select": 1}), c.kinds


def test_an_idempotent_replay_reads_the_original_in_autocommit(proxied_app: Any) -> None:
    from bench.pgwire import counting

    app, proxy = proxied_app
    client = app.test_client()
    first = post(client, {"type": "echo"}, **{"Idempotency-Key": "k-rt"})
    for _ in range(2):  # the replay's INSERT and SELECT each run twice: prepared on either driver
        post(client, {"type": "echo"}, **{"Idempotency-Key": "k-rt"})
    with counting(proxy) as c:
        again = post(client, {"type": "echo"}, **{"Idempotency-Key": "k-rt"})
    assert again.status_code == 200 and again.get_json()["id"] == first.get_json()["id"]
    assert (c.round_trips, dict(c.kinds)) == (2, {"insert": 1, "select": 1}), c.kinds


@pytest.mark.parametrize(("demo", "status"), [(False, 422), (True, 202)])
def test_the_demo_types_exist_only_when_asked_for(
    make_app: Any, db: Engine, demo: bool, status: int
) -> None:
    client = make_app(demo_job_types=demo).test_client()
    resp = client.post("/v1/jobs", json={"type": "sleep", "payload": {"seconds": 3600}})
    assert resp.status_code == status, resp.get_json()
    if not demo:
        assert "unknown job type 'sleep'" in resp.get_json()["errors"][0]["message"]
        with db.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM jobs")).scalar() == 0


def test_the_running_attempt_is_listed_while_it_runs(client: FlaskClient, db: Engine) -> None:
    """Issue #20: /attempts was [] for a RUNNING job, and the dashboard said no attempt had run."""
    from api.store import jobs as store

    job = post(client, {"type": "echo"}).get_json()
    with db.begin() as conn:
        store.claim_jobs(conn, [uuid.UUID(job["id"])])
    [running] = client.get(f"/v1/jobs/{job['id']}/attempts").get_json()["attempts"]
    assert (running["number"], running["outcome"], running["finished_time"], running["duration_s"]) == (
        1, "RUNNING", None, None)
    assert running["started_time"] == client.get(f"/v1/jobs/{job['id']}").get_json()["started_time"]
    page = client.get(f"/ui/jobs/{job['id']}").get_data(as_text=True)
    assert "No attempt has reached the handler yet." not in page and "state-running" in page


def _job_with_id(db: Engine, job_id: str, owner: str | None = None) -> None:
    with db.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO jobs (id, type, queue, state, payload, max_attempts, timeout_s, task_name, owner) "
            "VALUES (:id, 'echo', 'default', 'QUEUED', '{}', 3, 60, 't', :owner)"), {"id": job_id, "owner": owner})


def test_a_job_is_found_by_the_start_of_its_id(client: FlaskClient, db: Engine) -> None:
    """Issue #20: the CLI and dashboard show 8 characters of an id, and those were a 404."""
    _job_with_id(db, "105f5bde-0000-4000-8000-000000000001")
    _job_with_id(db, "935bc9ee-1111-4000-8000-000000000001")
    _job_with_id(db, "935bc9ee-2222-4000-8000-000000000002")
    assert client.get("/v1/jobs/105f5bde").get_json()["id"] == "105f5bde-0000-4000-8000-000000000001"
    assert client.get("/v1/jobs/105F5BDE-00").get_json()["id"] == "105f5bde-0000-4000-8000-000000000001"
    assert client.get("/v1/jobs/105f5bde/attempts").get_json() == {"attempts": []}
    ambiguous = client.get("/v1/jobs/935bc9ee")
    assert ambiguous.status_code == 400
    assert ambiguous.get_json()["matches"] == ["935bc9ee-1111-4000-8000-000000000001",
                                                "935bc9ee-2222-4000-8000-000000000002"]
    assert client.get("/v1/jobs/935bc9ee-2").get_json()["id"] == "935bc9ee-2222-4000-8000-000000000002"
    assert client.post("/v1/jobs/935bc9ee-1:cancel").get_json()["state"] == "CANCELLED"
    assert client.get("/v1/jobs/105f5bd").status_code == 404  # seven characters name nothing
    assert client.get("/v1/jobs/ffffffff").status_code == 404
    assert "105f5bde-0000-4000-8000-000000000001" in client.get("/ui/jobs/105f5bde").get_data(as_text=True)


def test_a_prefix_names_only_the_callers_jobs(make_app: Any, db: Engine) -> None:
    from api.web import auth

    with db.begin() as conn:
        mine, theirs = auth.create_key(conn, "mine"), auth.create_key(conn, "theirs")
    client = make_app(api_auth="keys").test_client()
    created = client.post("/v1/jobs", json={"type": "echo"}, headers={"Authorization": f"Bearer {theirs}"}).get_json()
    prefix = created["id"][:8]
    assert client.get(f"/v1/jobs/{prefix}", headers={"Authorization": f"Bearer {theirs}"}).status_code == 200
    assert client.get(f"/v1/jobs/{prefix}", headers={"Authorization": f"Bearer {mine}"}).status_code == 404


@pytest.mark.parametrize("path", [
    "/v1/jobs?stat=FAILED",
    "/v1/jobs?state=FAILED&lable=a:b",
    "/v1/reports/summary?form=2026-01-01T00:00:00Z",
    "/v1/workflows?stat=RUNNING",
])
def test_an_unknown_query_parameter_is_a_400_naming_it(client: FlaskClient, path: str) -> None:
    resp = client.get(path)
    assert resp.status_code == 400, resp.get_json()
    bad = path.split("?")[1].split("&")[-1].split("=")[0]
    assert repr(bad) in resp.get_json()["detail"]


def test_an_unknown_query_parameter_on_a_job_is_a_400(client: FlaskClient) -> None:
    job_id = post(client, {"type": "echo"}).get_json()["id"]
    resp = client.get(f"/v1/jobs/{job_id}?wiat=5")
    assert resp.status_code == 400 and "'wiat'" in resp.get_json()["detail"]


def test_labels_filter_as_key_colon_value_or_key_equals_value(client: FlaskClient) -> None:
    a = post(client, {"type": "echo", "labels": {"team": "a=b:c"}}).get_json()["id"]
    post(client, {"type": "echo", "labels": {"team": "z"}})
    for flt in ("team:a=b:c", "team=a=b:c"):
        assert [j["id"] for j in client.get(f"/v1/jobs?label={flt}").get_json()["jobs"]] == [a], flt
    assert client.get("/v1/jobs?label=novalue").status_code == 400


def _deep(levels: int) -> str:
    return '{"k": ' * levels + "1" + "}" * levels


@pytest.mark.parametrize(("body", "field"), [
    (f'{{"type": "echo", "payload": {_deep(1000)}}}', "payload.k.k"),  # past the parser's recursion
    (f'{{"type": "echo", "payload": {{"list": [{_deep(70)}]}}}}', "payload.list[0].k"),
    (f'{{"type": "echo", "labels": {_deep(80)}}}', "labels.k"),
])
def test_a_body_nested_too_deep_is_a_422_naming_where(client: FlaskClient, db: Any, body: str, field: str) -> None:
    resp = client.post("/v1/jobs", data=body, content_type="application/json")
    assert resp.status_code == 422, resp.get_json()
    [err] = resp.get_json()["errors"]
    assert err["field"].startswith(field) and "64 levels" in err["message"]
    batch = client.post("/v1/jobs:batchCreate", data=f'{{"jobs": [{{"type": "echo"}}, {body}]}}',
                        content_type="application/json")
    assert batch.status_code == 422 and batch.get_json()["errors"][0]["field"].startswith("jobs[1].")
    with db.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM jobs")).scalar_one() == 0


def test_sixty_four_levels_are_accepted(client: FlaskClient) -> None:
    resp = client.post("/v1/jobs", data=f'{{"type": "echo", "payload": {_deep(62)}}}',
                       content_type="application/json")
    assert resp.status_code == 202, resp.get_json()


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"])
def test_a_number_that_is_not_finite_is_a_422_naming_it(client: FlaskClient, number: str) -> None:
    raw = f'{{"type": "echo", "payload": {{"a": [1, {{"x": {number}}}]}}}}'
    resp = client.post("/v1/jobs", data=raw, content_type="application/json")
    assert resp.status_code == 422, resp.get_json()
    assert resp.get_json()["errors"][0]["field"] == "payload.a[1].x"


@pytest.mark.parametrize("stamp", ["0001-01-01T00:00:00+23:59", "9999-12-31T23:59:59-23:59", "garbage"])
def test_a_forged_page_token_is_a_400(app: Any, client: FlaskClient, stamp: str) -> None:
    import base64
    import hashlib
    import hmac

    from werkzeug.datastructures import MultiDict

    from api.web.http import filter_digest, parse_filter

    key = app.extensions["cloudjobs"].config.page_token_key
    with app.test_request_context("/v1/jobs"):
        scope = filter_digest(parse_filter(MultiDict(), owner=None))
    raw = json.dumps({"t": stamp, "i": str(uuid.uuid4()), "s": scope}).encode()
    token = base64.urlsafe_b64encode(hmac.new(key.encode(), raw, hashlib.sha256).digest()[:12] + raw).decode()
    for path in ("/v1/jobs", "/ui/jobs"):
        resp = client.get(f"{path}?page_token={token.rstrip('=')}")
        assert resp.status_code == 400, (path, resp.data[:200])


@pytest.mark.parametrize("query", ["to=0001-01-01T00:00:00Z", "from=9999-12-31T23:59:59-23:59",
                                   "to=0001-01-01T00:00:00+23:59"])
def test_report_times_out_of_range_are_a_400(client: FlaskClient, query: str) -> None:
    for name in ("summary", "timeseries", "failures"):
        resp = client.get(f"/v1/reports/{name}?{query}")
        assert resp.status_code == 400, (name, resp.get_json())
        assert query.split("=")[0] in resp.get_json()["detail"]


@pytest.mark.parametrize("run_at", ["1796373800.5", "1796373800", "2026-12-03", "2026-12-03T10:00:00",
                                    "0001-01-01T00:00:00+01:00"])
def test_run_at_is_rfc_3339_with_an_offset_only(client: FlaskClient, run_at: str) -> None:
    resp = post(client, {"type": "echo", "run_at": run_at})
    assert resp.status_code == 422, resp.get_json()
    assert resp.get_json()["errors"][0]["field"] == "run_at"


def test_a_chunked_body_over_the_limit_is_a_413(app: Any) -> None:
    from werkzeug.test import EnvironBuilder, run_wsgi_app

    limit = app.config["MAX_CONTENT_LENGTH"]
    body = json.dumps({"type": "echo", "payload": {"x": "y" * (limit + 10)}}).encode()
    env = EnvironBuilder(path="/v1/jobs", method="POST", content_type="application/json").get_environ()
    env.pop("CONTENT_LENGTH", None)
    env.update({"wsgi.input": io.BytesIO(body), "wsgi.input_terminated": True, "HTTP_TRANSFER_ENCODING": "chunked"})
    _, status, _ = run_wsgi_app(app, env)
    assert status.startswith("413")
    small = json.dumps({"type": "echo"}).encode()
    env = EnvironBuilder(path="/v1/jobs", method="POST", content_type="application/json").get_environ()
    env.pop("CONTENT_LENGTH", None)
    env.update({"wsgi.input": io.BytesIO(small), "wsgi.input_terminated": True, "HTTP_TRANSFER_ENCODING": "chunked"})
    _, status, _ = run_wsgi_app(app, env)
    assert status.startswith("202")
