"""What a create asks for: the body of POST /v1/jobs (and of each :batchCreate item) and its limits.

The web layer reads it off the wire; orchestration acts on it; the OpenAPI document is
generated from it.
"""

from __future__ import annotations

import re
import uuid
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from api.times import MAX_YEAR, MIN_YEAR, in_range

MAX_DEPENDENCIES = 1000
RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})")
LABEL_KEY = re.compile(r"^[a-z][a-z0-9_.-]{0,62}$")
MAX_LABELS = 64
MAX_LABEL_VALUE = 256
MAX_KEY = 255  # unique, concurrency and throttle keys
MAX_UNIQUE_FOR_S = 30 * 86400
MAX_PRIORITY = 1000
MAX_URL = 2048


def _key(description: str) -> Any:
    return Field(default=None, min_length=1, max_length=MAX_KEY, description=description)


def check_labels(labels: dict[str, str]) -> dict[str, str]:
    """Labels within their limits (a pydantic validator of jobs and workflows)."""
    if len(labels) > MAX_LABELS:
        raise ValueError(f"at most {MAX_LABELS} labels")
    for k, v in labels.items():
        if not LABEL_KEY.match(k):
            raise ValueError(f"label key {k!r} must match {LABEL_KEY.pattern}")
        if len(v) > MAX_LABEL_VALUE:
            raise ValueError(f"label {k!r} is longer than {MAX_LABEL_VALUE} characters")
    return labels


class CreateJob(BaseModel):
    """The body of POST /v1/jobs."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(min_length=1, max_length=128, description="A registered job type.")
    payload: dict[str, Any] = Field(
        default_factory=dict, description="The job's input, validated by its type's schema."
    )
    queue: str | None = Field(
        default=None, max_length=100, description="A queue of queues.yaml; routed by type if absent."
    )
    run_at: AwareDatetime | None = Field(
        default=None, description="Run no earlier than this (RFC 3339, at most 30 days ahead)."
    )
    # Strict, as the document says: an integer, not true or "5" (which pydantic would convert).
    max_attempts: int | None = Field(
        default=None, ge=1, le=1000, strict=True, description="At most the queue's max_attempts."
    )
    timeout_s: int | None = Field(
        default=None, ge=1, le=1800, strict=True,
        description="Per-attempt time limit, within the queue's dispatch deadline.",
    )
    labels: dict[str, str] = Field(default_factory=dict, description="Free-form string labels.")
    depends_on: list[uuid.UUID] = Field(
        default_factory=list, max_length=MAX_DEPENDENCIES,
        description="Jobs of yours this one waits for (WAITING) until each is terminal; at most 1,000.",
    )
    on_dependency_failure: Literal["fail", "cancel", "run"] = Field(
        default="fail",
        description="When a dependency ends FAILED or CANCELLED: fail this job (DEPENDENCY_FAILED), "
                    "cancel it, or run it anyway.",
    )

    unique_key: str | None = _key(
        "While a job of yours with this key is not terminal (or, with unique_for_s, within that long "
        "after it started), a create with the same key returns that job (200) instead of creating one.")
    unique_for_s: int | None = Field(
        default=None, ge=1, le=MAX_UNIQUE_FOR_S, strict=True,
        description="With unique_key: hold the key this many seconds after the job started, even once it ended.")
    unique_mode: Literal["return", "replace"] = Field(
        default="return",
        description="With unique_key: `return` the job holding the key, or `replace` it if it has not "
                    "started (it ends CANCELLED, code REPLACED: the latest create wins).")
    concurrency_key: str | None = _key(
        "Jobs of one queue and key share the key's limits (queues.yaml concurrency_per_key, rate_per_key; "
        "the type's concurrency_per_key).")
    priority: int = Field(
        default=0, ge=-MAX_PRIORITY, le=MAX_PRIORITY, strict=True,
        description="Among jobs waiting for their key's slot, higher first, then oldest first.")
    throttle_key: str | None = _key(
        "Pace the job by this key's rate (queues.yaml rate_per_key) instead of its concurrency key's.")
    callback_url: str | None = Field(
        default=None, min_length=1, max_length=MAX_URL,
        description="POSTed the job, signed (Standard Webhooks), when it reaches a terminal state.")

    @field_validator("unique_key", "concurrency_key", "throttle_key")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        if value is not None and not value.isprintable():
            raise ValueError("a key must be printable characters")
        return value

    @field_validator("depends_on")
    @classmethod
    def _distinct(cls, ids: list[uuid.UUID]) -> list[uuid.UUID]:
        seen: set[uuid.UUID] = set()
        for i, job_id in enumerate(ids):
            if job_id in seen:
                raise ValueError(f"depends_on[{i}] repeats {job_id}")
            seen.add(job_id)
        return ids

    @field_validator("run_at", mode="before")
    @classmethod
    def _run_at_is_text(cls, value: Any) -> Any:
        # RFC 3339 text only: pydantic would take a number, or a string of one, as Unix seconds.
        if value is not None and not (isinstance(value, str) and RFC3339.fullmatch(value)):
            raise ValueError("run_at must be an RFC 3339 date-time with an offset, e.g. 2026-12-03T17:00:00Z")
        return value

    @field_validator("run_at")
    @classmethod
    def _run_at_in_range(cls, value: Any) -> Any:
        if value is not None and not in_range(value):
            raise ValueError(f"run_at must be between the years {MIN_YEAR} and {MAX_YEAR}")
        return value

    @field_validator("labels")
    @classmethod
    def _labels(cls, labels: dict[str, str]) -> dict[str, str]:
        return check_labels(labels)
