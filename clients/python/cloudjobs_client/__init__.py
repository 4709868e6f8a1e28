"""cloudjobs-client: the Python client for the cloudjobs REST API (`from cloudjobs_client import Client`)."""

from cloudjobs_client.client import (
    ApiError,
    Attempt,
    Client,
    Conflict,
    Job,
    JobError,
    NotFound,
    Progress,
    Unauthorized,
    Unavailable,
    ValidationFailed,
)
from cloudjobs_client.workflows import Step, Workflow, WorkflowStep, chain, chord, group

__all__ = [
    "ApiError",
    "Attempt",
    "Client",
    "Conflict",
    "Job",
    "JobError",
    "NotFound",
    "Progress",
    "Unauthorized",
    "Unavailable",
    "ValidationFailed",
    "Step",
    "Workflow",
    "WorkflowStep",
    "chain",
    "chord",
    "group",
]
