"""The OpenAPI 3.1 document, from the same pydantic models that validate and serialise."""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic.json_schema import models_json_schema

from api.orchestration.requests import CreateJob
from api.orchestration.workflows import MAX_STEPS, CreateWorkflow, WorkflowStep
from api.web.resources import (
    AttemptList,
    CallbackList,
    DurableStepList,
    Job,
    JobList,
    Schedule,
    ScheduleList,
    Workflow,
    WorkflowList,
)

REF = "#/components/schemas/{model}"

PROBLEM = {
    "type": "object",
    "description": "RFC 9457 problem details.",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "format": "uri"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "message"],
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
    "additionalProperties": True,
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _problems(*codes: int) -> dict[str, Any]:
    text = {
        400: "Malformed request",
        401: "Not authenticated",
        403: "Not allowed",
        404: "No such job",
        409: "Conflict",
        413: "Request too large",
        415: "Not JSON",
        422: "Validation failed",
        500: "Internal error",
        503: "Database unavailable",
    }
    return {
        str(c): {
            "description": text[c],
            "content": {"application/problem+json": {"schema": _ref("Problem")}},
        }
        for c in codes
    }


IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
    "description": "A replay with the same key and body returns the original job(s).",
}

JOB_ID = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "format": "uuid"},
}

WORKFLOW_ID = {
    "name": "workflow_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "format": "uuid"},
}

SCHEDULE = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "A schedule's name in schedules.yaml.",
}


WAIT = {
    "name": "wait",
    "in": "query",
    "required": False,
    "schema": {"type": "number", "exclusiveMinimum": 0, "maximum": 60},
    "description": "Hold the request until the job is done or this many seconds pass, then "
    "answer the job as it is (done or not). The server may answer sooner.",
}


def _query(name: str, description: str, schema: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    return {"name": name, "in": "query", "description": description, "schema": schema or {"type": "string"}, **kw}


COUNTS = {"matched": {"type": "integer"}, "succeeded": {"type": "integer"}, "skipped": {"type": "integer"},
          "failed": {"type": "integer"}}
OPERATION: dict[str, Any] = {
    "type": "object", "required": ["name", "done", "metadata"],
    "properties": {
        "name": {"type": "string", "description": "operations/<id>"},
        "done": {"type": "boolean"},
        "metadata": {"type": "object", "properties": {"kind": {"type": "string", "enum": ["batchCancel", "batchRetry"]},
                                                      **COUNTS}},
        "response": {"type": "object", "properties": COUNTS, "description": "The counts, once done."},
    },
}
BULK_REQUEST: dict[str, Any] = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "filter": {"type": "object", "description": "GET /v1/jobs' filters: a string or a list of strings each",
                   "additionalProperties": False,
                   "properties": {name: {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}
                                  for name in ("state", "type", "queue", "label", "created_after", "created_before",
                                               "error_code", "schedule", "trigger", "workflow")}},
        "ids": {"type": "array", "minItems": 1, "maxItems": 1000, "items": {"type": "string", "format": "uuid"}},
        "validate_only": {"type": "boolean", "description": "Answer {matched} and change nothing."},
    },
}
QUEUE: dict[str, Any] = {
    "type": "object", "required": ["name", "cloud_tasks", "jobs"],
    "properties": {"name": {"type": "string"}, "cloud_tasks": {"type": "string"}, "jobs": {"type": "object"},
                   "oldest_waiting_s": {"type": ["number", "null"]}, "last_5m": {"type": "object"},
                   "last_1h": {"type": "object"}},
}


def _bulk_op(operation_id: str, summary: str) -> dict[str, Any]:
    return {"post": {
        "operationId": operation_id, "summary": summary, "parameters": [IDEMPOTENCY_KEY],
        "requestBody": {"required": True, "content": {"application/json": {"schema": BULK_REQUEST}}},
        "responses": {"200": _json({"anyOf": [OPERATION, {"type": "object", "properties": {
            "validate_only": {"type": "boolean"}, "matched": {"type": "integer"}}}]},
            "The operation (done, or carried on by Cloud Tasks); with validate_only, the count"),
            **_problems(400, 409, 415, 422, 503)},
    }}


def _queue_control(operation_id: str, summary: str) -> dict[str, Any]:
    return {"post": {
        "operationId": operation_id, "summary": summary,
        "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
        "responses": {"200": _json({"type": "object", "properties": {"name": {"type": "string"},
                                                                     "cloud_tasks": {"type": "string"}}},
                                   "The queue's state in Cloud Tasks now"), **_problems(403, 404, 503)},
    }}


@cache
def openapi_document(types: tuple[str, ...] = (), queues: tuple[str, ...] = ()) -> dict[str, Any]:
    """The whole OpenAPI 3.1 document; `types` and `queues` make the job fields exact."""
    _, defs = models_json_schema(
        [(m, "validation" if m in (CreateJob, WorkflowStep, CreateWorkflow) else "serialization")
         for m in (CreateJob, Job, JobList, AttemptList, DurableStepList, CallbackList, WorkflowStep, CreateWorkflow, Workflow,
                   WorkflowList, Schedule, ScheduleList)],
        ref_template=REF,
    )
    schemas = dict(defs["$defs"])
    for create in (schemas["CreateJob"], schemas["WorkflowStep"]):
        if types:
            create["properties"]["type"]["enum"] = list(types)
        if queues:
            create["properties"]["queue"] = {
                "anyOf": [{"type": "string", "enum": list(queues)}, {"type": "null"}],
                "default": None,
                "description": create["properties"]["queue"].get("description", ""),
            }
    # Steps are validated one by one (so each error names its step); the document says what one is.
    schemas["CreateWorkflow"]["properties"]["steps"] = {
        "type": "array", "minItems": 1, "maxItems": MAX_STEPS, "items": _ref("WorkflowStep"),
        "description": schemas["CreateWorkflow"]["properties"]["steps"].get("description", ""),
    }
    schemas["Problem"] = PROBLEM
    schemas["Report"] = {
        "type": "object",
        "required": ["report", "from", "to", "group_by", "rows"],
        "properties": {
            "report": {"type": "string"},
            "from": {"type": "string", "format": "date-time"},
            "to": {"type": "string", "format": "date-time"},
            "group_by": {"type": "string"},
            "bucket": {"type": "string"},
            "rows": {"type": "array", "items": {"type": "object"}},
        },
    }
    schemas["BatchCreate"] = {
        "type": "object",
        "required": ["jobs"],
        "additionalProperties": False,
        "properties": {"jobs": {"type": "array", "minItems": 1, "maxItems": 500, "items": _ref("CreateJob")}},
    }
    schemas["BatchJobs"] = {
        "type": "object",
        "required": ["jobs"],
        "properties": {"jobs": {"type": "array", "items": _ref("Job")}},
    }
    schemas["Health"] = {"type": "object", "properties": {"status": {"type": "string"}}}
    schemas["JobType"] = {
        "type": "object",
        "description": "A registered job type, as a create sees it.",
        "required": ["name", "queue", "timeout_s", "declared_timeout_s", "max_attempts",
                     "dispatch_deadline_s", "schema"],
        "properties": {
            "name": {"type": "string"},
            "queue": {"type": "string", "description": "The queue its jobs go to unless a create names one"},
            "timeout_s": {"type": "integer",
                          "description": "Its jobs' timeout: the type's, at most the queue's deadline"},
            "declared_timeout_s": {"type": "integer", "description": "The timeout the type declares"},
            "max_attempts": {"type": "integer", "description": "The type's, at most the queue's"},
            "dispatch_deadline_s": {"type": "number", "description": "The queue's dispatch deadline"},
            "schema": {"anyOf": [{"type": "object"}, {"type": "null"}],
                       "description": "The payload's JSON Schema; null takes any object"},
            "concurrency_per_key": {"type": ["integer", "null"],
                                    "description": "Its jobs' limit per concurrency key (null: the queue's)"},
            "callback_url": {"type": ["string", "null"],
                             "description": "Where its jobs' ends are POSTed unless a create names a URL"},
        },
    }
    schemas["TypeList"] = {
        "type": "object",
        "required": ["types"],
        "properties": {"types": {"type": "array", "items": _ref("JobType")}},
    }
    array = {"type": "array", "items": {"type": "string"}}
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "cloudjobs",
            "version": "1",
            "description": "Jobs recorded in PostgreSQL and run through Google Cloud Tasks.",
        },
        "paths": {
            "/v1/jobs": {
                "post": {
                    "operationId": "createJob",
                    "summary": "Create a job",
                    "parameters": [IDEMPOTENCY_KEY],
                    "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("CreateJob")}}},
                    "responses": {
                        "202": {**_json(_ref("Job"), "Created"), "headers": {"Location": {"schema": {"type": "string"}}}},
                        "200": _json(_ref("Job"), "An idempotent replay: the original job; or the job holding "
                                                  "the request's unique_key"),
                        **_problems(400, 409, 413, 415, 422, 503),
                    },
                },
                "get": {
                    "operationId": "listJobs",
                    "summary": "List jobs, newest first",
                    "parameters": [
                        _query("state", "Comma-separated states", array, style="form", explode=True),
                        _query("type", "Comma-separated job types", array, style="form", explode=True),
                        _query("queue", "Comma-separated queues", array, style="form", explode=True),
                        _query("label", "key:value or key=value, repeatable", array, style="form", explode=True),
                        _query("created_after", "RFC 3339", {"type": "string", "format": "date-time"}),
                        _query("created_before", "RFC 3339", {"type": "string", "format": "date-time"}),
                        _query("schedule", "Comma-separated schedules: the jobs their fires created", array,
                               style="form", explode=True),
                        _query("trigger", "Comma-separated Pub/Sub triggers: the jobs their messages created", array,
                               style="form", explode=True),
                        _query("page_size", "Default 50; above 500 is coerced to 500", {"type": "integer", "minimum": 0}),
                        _query("page_token", "next_page_token of the previous page"),
                    ],
                    "responses": {"200": _json(_ref("JobList"), "A page of jobs"), **_problems(400, 503)},
                },
            },
            "/v1/jobs/{job_id}": {
                "get": {
                    "operationId": "getJob",
                    "summary": "Get a job; with wait, once it is done or the wait has passed",
                    "parameters": [JOB_ID, WAIT],
                    "responses": {"200": _json(_ref("Job"), "The job"), **_problems(400, 404, 503)},
                }
            },
            "/v1/jobs:batchCreate": {
                "post": {
                    "operationId": "batchCreateJobs",
                    "summary": "Create up to 500 jobs, all or nothing",
                    "parameters": [IDEMPOTENCY_KEY],
                    "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("BatchCreate")}}},
                    "responses": {
                        "202": _json(_ref("BatchJobs"), "Created, in the order given"),
                        "200": _json(_ref("BatchJobs"), "An idempotent replay: the original jobs"),
                        **_problems(400, 409, 413, 415, 422, 503),
                    },
                }
            },
            "/v1/jobs/{job_id}:cancel": {
                "post": {
                    "operationId": "cancelJob",
                    "summary": "Cancel a job (idempotent); a running job stops cooperatively",
                    "parameters": [JOB_ID],
                    "responses": {"200": _json(_ref("Job"), "The job"), **_problems(404, 409, 503)},
                }
            },
            "/v1/jobs/{job_id}:retry": {
                "post": {
                    "operationId": "retryJob",
                    "summary": "Run a FAILED or CANCELLED job again (idempotent)",
                    "parameters": [JOB_ID],
                    "responses": {"200": _json(_ref("Job"), "The job"), **_problems(404, 409, 503)},
                }
            },
            "/v1/jobs/{job_id}/attempts": {
                "get": {
                    "operationId": "listAttempts",
                    "summary": "A job's attempts, oldest first",
                    "parameters": [JOB_ID],
                    "responses": {"200": _json(_ref("AttemptList"), "The attempts"), **_problems(404, 503)},
                }
            },
            "/v1/jobs/{job_id}/callbacks": {
                "get": {
                    "operationId": "listCallbacks",
                    "summary": "A job's completion webhooks: an event per terminal transition, with its deliveries",
                    "parameters": [JOB_ID],
                    "responses": {"200": _json(_ref("CallbackList"), "The events"), **_problems(404, 503)},
                }
            },
            "/v1/jobs/{job_id}/steps": {
                "get": {
                    "operationId": "listSteps",
                    "summary": "A job's durable steps (ctx.step), in the order they finished",
                    "parameters": [JOB_ID],
                    "responses": {"200": _json(_ref("DurableStepList"), "The steps"), **_problems(404, 503)},
                }
            },
            "/v1/workflows": {
                "post": {
                    "operationId": "createWorkflow",
                    "summary": "Create a workflow: a DAG of jobs, stored in one transaction",
                    "parameters": [IDEMPOTENCY_KEY],
                    "requestBody": {"required": True,
                                    "content": {"application/json": {"schema": _ref("CreateWorkflow")}}},
                    "responses": {
                        "202": {**_json(_ref("Workflow"), "Created"),
                                "headers": {"Location": {"schema": {"type": "string"}}}},
                        "200": _json(_ref("Workflow"), "An idempotent replay: the original workflow"),
                        **_problems(400, 409, 413, 415, 422, 503),
                    },
                },
                "get": {
                    "operationId": "listWorkflows",
                    "summary": "List workflows, newest first (without their steps)",
                    "parameters": [
                        _query("state", "Comma-separated workflow states", array, style="form", explode=True),
                        _query("label", "key:value or key=value, repeatable", array, style="form", explode=True),
                        _query("created_after", "RFC 3339", {"type": "string", "format": "date-time"}),
                        _query("created_before", "RFC 3339", {"type": "string", "format": "date-time"}),
                        _query("page_size", "Default 50; above 500 is coerced to 500", {"type": "integer", "minimum": 0}),
                        _query("page_token", "next_page_token of the previous page"),
                    ],
                    "responses": {"200": _json(_ref("WorkflowList"), "A page of workflows"), **_problems(400, 503)},
                },
            },
            "/v1/workflows/{workflow_id}": {
                "get": {
                    "operationId": "getWorkflow",
                    "summary": "Get a workflow with its steps; with wait, once it has ended or the wait has passed",
                    "parameters": [WORKFLOW_ID, WAIT],
                    "responses": {"200": _json(_ref("Workflow"), "The workflow"), **_problems(400, 404, 503)},
                }
            },
            "/v1/workflows/{workflow_id}:cancel": {
                "post": {
                    "operationId": "cancelWorkflow",
                    "summary": "Cancel every step not yet terminal (idempotent); running ones stop cooperatively",
                    "parameters": [WORKFLOW_ID],
                    "responses": {"200": _json(_ref("Workflow"), "The workflow"), **_problems(404, 409, 503)},
                }
            },
            "/v1/workflows/{workflow_id}:retry": {
                "post": {
                    "operationId": "retryWorkflow",
                    "summary": "Run the failed and cancelled steps, and what follows them, again",
                    "parameters": [WORKFLOW_ID],
                    "responses": {"200": _json(_ref("Workflow"), "The workflow"), **_problems(404, 409, 503)},
                }
            },
            "/v1/schedules": {
                "get": {
                    "operationId": "listSchedules",
                    "summary": "The schedules and triggers of schedules.yaml: next fire times, the last fire and its job",
                    "responses": {"200": _json(_ref("ScheduleList"), "Every schedule and trigger"), **_problems(400, 503)},
                }
            },
            "/v1/schedules/{name}": {
                "get": {
                    "operationId": "getSchedule",
                    "summary": "One schedule, with its latest fires",
                    "parameters": [SCHEDULE],
                    "responses": {"200": _json(_ref("Schedule"), "The schedule"), **_problems(400, 404, 503)},
                }
            },
            **{
                f"/v1/schedules/{{name}}:{action}": {
                    "post": {
                        "operationId": f"{action}Schedule",
                        "summary": summary + " (through Cloud Scheduler; admins only)",
                        "parameters": [SCHEDULE],
                        "responses": {code: _json(_ref("Schedule"), "The schedule"), **_problems(403, 404, 503)},
                    }
                }
                for action, code, summary in (("run", "202", "Fire now, as Cloud Scheduler's RunJob"),
                                              ("pause", "200", "Pause: no fires until resumed"),
                                              ("resume", "200", "Resume"))
            },
            "/v1/reports/{name}": {
                "get": {
                    "operationId": "getReport",
                    "summary": "A report over job history (the caller's jobs; an admin's: all)",
                    "parameters": [
                        {"name": "name", "in": "path", "required": True,
                         "schema": {"type": "string", "enum": ["summary", "timeseries", "failures"]}},
                        _query("from", "RFC 3339; default 24 h before `to`", {"type": "string", "format": "date-time"}),
                        _query("to", "RFC 3339; default now", {"type": "string", "format": "date-time"}),
                        _query("type", "Only this job type"),
                        _query("queue", "Only this queue"),
                        _query("group_by", "Rows per type, per queue, or one row", {"type": "string", "enum": ["type", "queue", "none"]}),
                        _query("bucket", "timeseries: bucket size", {"type": "string", "enum": ["minute", "hour", "day"]}),
                        _query("limit", "failures: rows, 1 to 100", {"type": "integer", "minimum": 1, "maximum": 100}),
                    ],
                    "responses": {"200": _json(_ref("Report"), "The report"), **_problems(400, 401, 404, 503)},
                }
            },
            "/v1/types": {
                "get": {
                    "operationId": "listTypes",
                    "summary": "The registered job types: schema, queue, timeout and limits",
                    "responses": {"200": _json(_ref("TypeList"), "The types, by name"), **_problems(503)},
                }
            },
            "/v1/jobs:batchCancel": _bulk_op("batchCancelJobs", "Cancel the jobs of a filter or a list of ids: a "
                                             "long-running operation, processed in chunks"),
            "/v1/jobs:batchRetry": _bulk_op("batchRetryJobs", "Run the FAILED and CANCELLED jobs of a filter or a "
                                            "list of ids again (redrive): a long-running operation"),
            "/v1/operations/{op_id}": {
                "get": {
                    "operationId": "getOperation",
                    "summary": "A bulk operation: its counts, and done once every chunk is processed",
                    "parameters": [{"name": "op_id", "in": "path", "required": True,
                                    "schema": {"type": "string", "format": "uuid"}}],
                    "responses": {"200": _json(OPERATION, "The operation"), **_problems(404, 503)},
                }
            },
            "/v1/queues": {
                "get": {
                    "operationId": "listQueues",
                    "summary": "Each queue: its settings, Cloud Tasks' state, its live jobs, the oldest one's "
                               "age, recent completions and failures",
                    "responses": {"200": _json({"type": "object", "required": ["queues"], "properties": {
                        "queues": {"type": "array", "items": QUEUE}}}, "The queues"), **_problems(503)},
                }
            },
            "/v1/queues/{name}:pause": _queue_control("pauseQueue", "Hold the queue's dispatches (admins)"),
            "/v1/queues/{name}:resume": _queue_control("resumeQueue", "Dispatch again (admins)"),
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics (admins)",
                    "responses": {"200": {"description": "The Prometheus text format",
                                          "content": {"text/plain": {"schema": {"type": "string"}}}},
                                  **_problems(401, 403, 503)},
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi", "security": [],
                    "summary": "This document",
                    "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")},
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "healthz", "security": [],
                    "summary": "Liveness",
                    "responses": {"200": _json(_ref("Health"), "Alive")},
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "readyz", "security": [],
                    "summary": "Readiness: the database answers",
                    "responses": {"200": _json(_ref("Health"), "Ready"), **_problems(503)},
                }
            },
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key (cj_…) or, with AUTH=google, a Google-signed ID token.",
                }
            },
        },
        "security": [{"bearer": []}],
    }
    for path, ops in doc["paths"].items():  # every /v1 operation needs credentials
        if path.startswith("/v1/"):
            for op in ops.values():
                op["responses"].update(_problems(401))
    return doc
