"""The floor: the least a Flask app can do for each cloudjobs call, on the same table.

    gunicorn -c gunicorn.conf.py 'bench.floor_app:create_app()'    (DATABASE_URL set)

Served by the same gunicorn configuration and built on the same engine factory
(`api.store.engine.create_engine`, hence the same pool, pre-ping and pg8000 driver) as cloudjobs, on a
database migrated by the same migrations. Each endpoint does one thing:

| endpoint | does |
| --- | --- |
| `GET /hello` | nothing: bare Flask |
| `POST /insert` | parse a JSON body, one `INSERT … RETURNING *` of a job row, the row as JSON |
| `GET /select/<id>` | one `SELECT *` by primary key, the row as JSON |
| `POST /update` | one `UPDATE … WHERE id = …` of the row a JSON body names |
| `POST /ceiling/run` | the push design's least work per job: claim (a guarded UPDATE …
  RETURNING, committed so the lease is visible while the job runs), then finish (a guarded
  UPDATE) and the attempt row (an INSERT) committed together: three statements |

No validation, no queue, no authentication: what is left is Flask, SQLAlchemy Core, pg8000
and PostgreSQL, which is what the ratios are against.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import sqlalchemy as sa
from flask import Flask, Response, request

from api.config import Config
from api.store.engine import create_engine
from api.store.tables import job_attempts, jobs

_CLAIM = (
    sa.update(jobs)
    .where(jobs.c.id == sa.bindparam("job_id"), jobs.c.state.in_(("CREATED", "QUEUED")))
    .values(
        state="RUNNING",
        attempts=jobs.c.attempts + 1,
        started_time=sa.func.coalesce(jobs.c.started_time, sa.func.now()),
        attempt_started_time=sa.func.now(),
        lease_expires_time=sa.func.now() + sa.text("interval '60 seconds'"),
        updated_time=sa.func.now(),
    )
    .returning(jobs.c.id, jobs.c.attempts, jobs.c.attempt_started_time, jobs.c.task_name)
)
_FINISH = (
    sa.update(jobs)
    .where(
        jobs.c.id == sa.bindparam("job_id"),
        jobs.c.state == "RUNNING",
        jobs.c.attempts == sa.bindparam("attempt"),
    )
    .values(
        state="COMPLETED",
        result=sa.bindparam("result", type_=jobs.c.result.type),
        done_time=sa.func.now(),
        lease_expires_time=None,
        updated_time=sa.func.now(),
    )
)
_ATTEMPT = sa.insert(job_attempts).values(
    job_id=sa.bindparam("job_id"),
    number=sa.bindparam("attempt"),
    outcome="COMPLETED",
    started_time=sa.bindparam("started"),
    finished_time=sa.func.now(),
    task_name=sa.bindparam("task_name"),
)
_UPDATE = (
    sa.update(jobs)
    .where(jobs.c.id == sa.bindparam("job_id"))
    .values(attempts=jobs.c.attempts + 1, updated_time=sa.func.now())
)


def _json(body: Any, status: int = 200) -> Response:
    return Response(
        json.dumps(body, separators=(",", ":"), default=str),
        status=status,
        mimetype="application/json",
    )


def new_row(body: dict[str, Any]) -> dict[str, Any]:
    """A CREATED job row, as cloudjobs would insert it (minus validation and defaults)."""
    job_id = uuid.uuid4()
    return {
        "id": job_id,
        "type": body.get("type", "echo"),
        "queue": "default",
        "state": "CREATED",
        "payload": body.get("payload", {}),
        "max_attempts": 5,
        "timeout_s": 300,
        "labels": {},
        "task_name": f"projects/p/locations/l/queues/default/tasks/job-{job_id.hex}-0",
    }


def create_app(config: Config | None = None) -> Flask:
    """The floor app on DATABASE_URL."""
    config = config or Config.from_env()
    engine = create_engine(config)
    app = Flask("floor", static_folder=None)

    @app.get("/hello")
    def hello() -> Response:
        return Response("hello", mimetype="text/plain")

    @app.post("/insert")
    def insert() -> Response:
        body = json.loads(request.get_data())
        with engine.begin() as conn:
            row = conn.execute(sa.insert(jobs).values(new_row(body)).returning(*jobs.c)).one()
        return _json(dict(row._mapping), 202)

    @app.get("/select/<job_id>")
    def select(job_id: str) -> Response:
        with engine.connect() as conn:
            row = conn.execute(sa.select(jobs).where(jobs.c.id == uuid.UUID(job_id))).first()
        if row is None:
            return _json({"error": "not found"}, 404)
        return _json(dict(row._mapping))

    @app.post("/update")
    def update() -> Response:
        job_id = uuid.UUID(json.loads(request.get_data())["job_id"])
        with engine.begin() as conn:
            n = conn.execute(_UPDATE, {"job_id": job_id}).rowcount
        return _json({"updated": n})

    @app.post("/ceiling/run")
    def ceiling_run() -> Response:
        job_id = uuid.UUID(json.loads(request.get_data())["job_id"])
        with engine.begin() as conn:
            claimed = conn.execute(_CLAIM, {"job_id": job_id}).first()
        if claimed is None:
            return _json({"state": "DUPLICATE"})
        # The job itself: a no-op whose result is {}.
        with engine.begin() as conn:
            conn.execute(_FINISH, {"job_id": job_id, "attempt": claimed.attempts, "result": {}})
            conn.execute(
                _ATTEMPT,
                {
                    "job_id": job_id,
                    "attempt": claimed.attempts,
                    "started": claimed.attempt_started_time,
                    "task_name": claimed.task_name,
                },
            )
        return _json({"state": "COMPLETED"})

    return app
