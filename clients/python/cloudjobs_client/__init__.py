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
]
