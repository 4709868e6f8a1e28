"""Schemathesis against the OpenAPI document: property-based and stateful, no 5xx, no response
that breaks the schema. (Driven through Hypothesis directly: schemathesis' pytest plugin does
not run under this pytest.)"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, Phase, given, settings
from sqlalchemy.engine import Engine

from api.web import auth

# The document is exact about shapes, types and queues; some limits are relative to other
# fields or to now (max_attempts within the chosen queue's, run_at within 30 days), so a
# schema-valid request may still be refused with 422. That one check is left out; every
# response must still be a documented status with a body that fits its schema, and no 5xx.
EXCLUDED = [schemathesis.checks.positive_data_acceptance]

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)


@pytest.fixture
def api_key(db: Engine) -> str:
    with db.begin() as conn:
        return auth.create_key(conn, "fuzzer", admin=False)


# `?wait=` may hold a request up to 60 s, and here no job ever runs (nothing dispatches), so
# a few generated waits on a job a sequence created outlast the test's timeout. The document
# lets the server answer sooner; the generated waits are kept under a second.
MAX_WAIT_S = 0.5


@pytest.fixture
def api_schema(make_app: Callable[..., Flask], api_key: str) -> schemathesis.BaseSchema:
    schema = schemathesis.openapi.from_wsgi("/openapi.json", make_app(api_auth="keys"))
    waits = [
        p["schema"]
        for item in schema.raw_schema["paths"].values()
        for op in item.values()
        if isinstance(op, dict)
        for p in op.get("parameters", [])
        if isinstance(p, dict) and p.get("name") == "wait"
    ]
    assert waits, "the document names no wait parameter"
    for w in waits:
        w["maximum"] = MAX_WAIT_S
    return schema


def operations(schema: schemathesis.BaseSchema) -> list[object]:
    return [result.ok() for result in schema.get_all_operations()]


def test_every_operation_conforms(api_schema: schemathesis.BaseSchema, api_key: str) -> None:
    ops = operations(api_schema)
    assert len(ops) >= 9
    for op in ops:

        @given(case=op.as_strategy())  # type: ignore[attr-defined]
        @SETTINGS
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(headers={"Authorization": f"Bearer {api_key}"}, excluded_checks=EXCLUDED)

        check()


def test_stateful_sequences_conform(api_schema: schemathesis.BaseSchema, api_key: str, db: Engine) -> None:
    api_schema.config.headers = {"Authorization": f"Bearer {api_key}"}
    api_schema.config.checks.positive_data_acceptance.enabled = False  # see EXCLUDED
    # Every step carries the valid key above, so "accepts invalid auth" cannot hold here;
    # test_security.py covers each rejection.
    api_schema.config.checks.ignored_auth.enabled = False

    class Workflow(api_schema.as_state_machine()):  # type: ignore[misc]
        def setup(self) -> None:
            # Each sequence starts from no jobs, so the same choices see the same responses.
            with db.begin() as conn:
                conn.exec_driver_sql("TRUNCATE job_attempts, job_steps, job_dependencies, webhook_deliveries, webhook_events, key_throttles, operations, audit_log, workflows, schedule_fires, trigger_rejections, jobs")

    machine = Workflow
    # Generation only: the API keeps state between examples, so a replay (for shrinking)
    # cannot see the same responses again and Hypothesis would call the strategy flaky.
    machine.run(settings=settings(max_examples=20, stateful_step_count=6, deadline=None, phases=[Phase.generate],
                                  suppress_health_check=list(HealthCheck), database=None))
