"""Pure rules of the Cloud Tasks v2 API: resource names, queue defaults, task checks.

Everything here works on raw protobuf messages (the ``.pb()`` of the proto-plus types in
``google.cloud.tasks_v2.types``) and raises ``ApiError`` with the gRPC status code Google
returns. Nothing here touches emulator state, so each rule has a unit test of its own.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import grpc
from google.cloud.tasks_v2 import types as T

QueuePb = T.Queue.pb()
TaskPb = T.Task.pb()
RateLimitsPb = T.RateLimits.pb()
RetryConfigPb = T.RetryConfig.pb()

PROJECT_RE = r"[A-Za-z0-9\-:.]+"
LOCATION_RE = r"[A-Za-z0-9\-]+"
QUEUE_ID_RE = r"[A-Za-z0-9-]{1,100}"
TASK_ID_RE = r"[A-Za-z0-9_-]{1,500}"

_LOCATION_NAME = re.compile(rf"projects/({PROJECT_RE})/locations/({LOCATION_RE})")
_QUEUE_NAME = re.compile(rf"projects/({PROJECT_RE})/locations/({LOCATION_RE})/queues/([^/]*)")
_TASK_NAME = re.compile(
    rf"projects/({PROJECT_RE})/locations/({LOCATION_RE})/queues/([^/]*)/tasks/([^/]*)"
)
_QUEUE_ID = re.compile(QUEUE_ID_RE)
_TASK_ID = re.compile(TASK_ID_RE)

# Google's documented defaults for a queue created without rate limits or retry config.
DEFAULT_MAX_DISPATCHES_PER_SECOND = 500.0
DEFAULT_MAX_CONCURRENT_DISPATCHES = 1000
MAX_CONCURRENT_DISPATCHES = 5000
DEFAULT_MAX_ATTEMPTS = 100
DEFAULT_MIN_BACKOFF_S = 0.1
DEFAULT_MAX_BACKOFF_S = 3600.0
DEFAULT_MAX_DOUBLINGS = 16
DEFAULT_MAX_RETRY_DURATION_S = 0.0

# Task limits from the Cloud Tasks quotas page and the HttpRequest/Task reference.
MAX_TASK_BYTES = 1024 * 1024
MAX_SCHEDULE_AHEAD_S = 30 * 24 * 3600.0
MAX_URL_LENGTH = 2083
MAX_HEADERS_BYTES = 80 * 1024
DEFAULT_DISPATCH_DEADLINE_S = 600.0
MIN_DISPATCH_DEADLINE_S = 15.0
MAX_HTTP_DISPATCH_DEADLINE_S = 30 * 60.0
MAX_APP_ENGINE_DISPATCH_DEADLINE_S = 24 * 3600.0 + 15.0
DEFAULT_OAUTH_SCOPE = "https://www.googleapis.com/auth/cloud-platform"

# HttpMethod enum values, by number, and which may carry a body.
METHOD_NAMES = {0: "POST", 1: "POST", 2: "GET", 3: "HEAD", 4: "PUT", 5: "DELETE", 6: "PATCH",
                7: "OPTIONS"}
HTTP_BODY_METHODS = {"POST", "PUT", "PATCH"}
APP_ENGINE_BODY_METHODS = {"POST", "PUT"}

QUEUE_RUNNING = int(T.Queue.State.RUNNING)
QUEUE_PAUSED = int(T.Queue.State.PAUSED)


class ApiError(Exception):
    """An error the API answers with: a gRPC status code and a message."""

    def __init__(self, code: grpc.StatusCode, message: str,
                 help: tuple[str, str] | None = None) -> None:  # noqa: A002
        super().__init__(message)
        self.code = code
        self.message = message
        self.help = help  # a google.rpc.Help link: (description, url)


def invalid(message: str) -> ApiError:
    """Build an INVALID_ARGUMENT error."""
    return ApiError(grpc.StatusCode.INVALID_ARGUMENT, message)


# Google's texts for the errors a client meets most (recorded from Cloud Tasks; see
# docs/emulator.md), the invalid queue name with its Help detail.
BAD_QUEUE_NAME = ApiError(
    grpc.StatusCode.INVALID_ARGUMENT,
    'Queue name must be formatted: "projects/<PROJECT_ID>/locations/<LOCATION_ID>/queues/<QUEUE_ID>".',
    help=("Definition of queue name",
          "https://cloud.google.com/tasks/docs/reference/rest/v2/projects.locations.queues#Queue.FIELDS.name"))
BAD_TASK_NAME = invalid('Task name must be formatted: '
                        '"projects/<PROJECT_ID>/locations/<LOCATION_ID>/queues/<QUEUE_ID>/tasks/<TASK_ID>"')
QUEUE_MISSING = ("Queue does not exist. If you just created the queue, wait at least a minute for "
                 "the queue to initialize.")
ENTITY_MISSING = "Requested entity was not found."
TASK_GONE = ("The task no longer exists, though a task with this name existed recently. The task "
             "either successfully completed or was deleted.")
ENTITY_EXISTS = "Requested entity already exists"


@dataclass(frozen=True)
class QueueName:
    """A parsed queue name."""

    project: str
    location: str
    queue_id: str

    @property
    def parent(self) -> str:
        """The location name the queue lives in."""
        return f"projects/{self.project}/locations/{self.location}"

    @property
    def name(self) -> str:
        """The full queue name."""
        return f"{self.parent}/queues/{self.queue_id}"


def parse_location(name: str) -> tuple[str, str]:
    """Split ``projects/P/locations/L`` into (P, L), or raise INVALID_ARGUMENT."""
    m = _LOCATION_NAME.fullmatch(name)
    if not m:
        raise invalid("Invalid resource field value in the request.")
    return m.group(1), m.group(2)


def parse_queue_name(name: str) -> QueueName:
    """Parse a full queue name, or raise INVALID_ARGUMENT."""
    m = _QUEUE_NAME.fullmatch(name)
    if not m or not _QUEUE_ID.fullmatch(m.group(3)):
        raise BAD_QUEUE_NAME
    return QueueName(m.group(1), m.group(2), m.group(3))


def parse_task_name(name: str) -> tuple[QueueName, str]:
    """Parse a full task name into its queue and task id, or raise INVALID_ARGUMENT."""
    m = _TASK_NAME.fullmatch(name)
    if not m or not _TASK_ID.fullmatch(m.group(4)):
        raise BAD_TASK_NAME
    queue = parse_queue_name(f"projects/{m.group(1)}/locations/{m.group(2)}/queues/{m.group(3)}")
    task_id = m.group(4)
    return queue, task_id


def duration_s(d: Any) -> float:
    """Seconds in a google.protobuf.Duration."""
    return d.seconds + d.nanos / 1e9


def set_duration(d: Any, seconds: float) -> None:
    """Write seconds into a google.protobuf.Duration."""
    whole = math.floor(seconds)
    d.seconds = int(whole)
    d.nanos = int(round((seconds - whole) * 1e9))
    if d.nanos >= 1_000_000_000:
        d.seconds += 1
        d.nanos -= 1_000_000_000


def derive_max_burst_size(rate: float) -> int:
    """The max_burst_size Cloud Tasks reports for a given max_dispatches_per_second.

    Google only says the value is derived from the rate and is "generally at least equal to"
    it; a queue at the default 500/s reports 100. The emulator uses the rate rounded up,
    between 1 and 100, which agrees with both.
    """
    if math.isinf(rate):
        return 100
    return max(1, min(100, math.ceil(rate)))


def fill_queue_defaults(q: Any) -> None:
    """Fill in, in place, every rate-limit and retry default Google fills in at creation."""
    rl = q.rate_limits
    if rl.max_dispatches_per_second == 0:
        rl.max_dispatches_per_second = DEFAULT_MAX_DISPATCHES_PER_SECOND
    if rl.max_concurrent_dispatches == 0:
        rl.max_concurrent_dispatches = DEFAULT_MAX_CONCURRENT_DISPATCHES
    # max_burst_size is output only: whatever the caller sent is replaced.
    rl.max_burst_size = derive_max_burst_size(rl.max_dispatches_per_second)
    rc = q.retry_config
    # proto3 cannot tell an unset int from 0, so 0 means "unspecified" here, as at Google.
    if rc.max_attempts == 0:
        rc.max_attempts = DEFAULT_MAX_ATTEMPTS
    if rc.max_doublings == 0:
        rc.max_doublings = DEFAULT_MAX_DOUBLINGS
    # Durations are messages, so an explicit 0s is kept and only a missing one is defaulted.
    if not rc.HasField("min_backoff"):
        set_duration(rc.min_backoff, DEFAULT_MIN_BACKOFF_S)
    if not rc.HasField("max_backoff"):
        set_duration(rc.max_backoff, DEFAULT_MAX_BACKOFF_S)
    if not rc.HasField("max_retry_duration"):
        set_duration(rc.max_retry_duration, DEFAULT_MAX_RETRY_DURATION_S)


def validate_queue(q: Any, *, max_rate: float) -> None:
    """Check a queue (defaults already filled) against Google's limits."""
    rl = q.rate_limits
    rate = rl.max_dispatches_per_second
    if math.isnan(rate) or rate <= 0:
        raise invalid("rate_limits.max_dispatches_per_second must be greater than 0")
    if rate > max_rate:
        raise invalid(f"rate_limits.max_dispatches_per_second must be at most {max_rate:g}")
    if not 0 < rl.max_concurrent_dispatches <= MAX_CONCURRENT_DISPATCHES:
        raise invalid("rate_limits.max_concurrent_dispatches must be between 1 and "
                      f"{MAX_CONCURRENT_DISPATCHES}")
    validate_retry_config(q.retry_config)
    if q.HasField("stackdriver_logging_config"):
        ratio = q.stackdriver_logging_config.sampling_ratio
        if not 0.0 <= ratio <= 1.0:
            raise invalid("stackdriver_logging_config.sampling_ratio must be in [0, 1]")
    if q.HasField("http_target"):
        validate_http_target(q.http_target)


def validate_retry_config(rc: Any) -> None:
    """Check a RetryConfig's values (queue-level or task-level)."""
    if rc.max_attempts < -1:
        raise invalid("retry_config.max_attempts must be -1 (unlimited) or greater")
    if rc.max_doublings < 0:
        raise invalid("retry_config.max_doublings must not be negative")
    for field in ("min_backoff", "max_backoff", "max_retry_duration"):
        if duration_s(getattr(rc, field)) < 0:
            raise invalid(f"retry_config.{field} must not be negative")
    if duration_s(rc.min_backoff) > duration_s(rc.max_backoff):
        raise invalid("retry_config.min_backoff must not be greater than max_backoff")


def validate_http_target(ht: Any) -> None:
    """Check a queue-level HttpTarget override."""
    if ht.HasField("oidc_token"):
        tok = ht.oidc_token
        if not tok.service_account_email or not tok.audience:
            raise invalid("http_target.oidc_token needs both service_account_email and "
                          "audience when set on a queue")
    if ht.HasField("oauth_token"):
        tok = ht.oauth_token
        if not tok.service_account_email or not tok.scope:
            raise invalid("http_target.oauth_token needs both service_account_email and scope "
                          "when set on a queue")
    if ht.HasField("uri_override"):
        uo = ht.uri_override
        if uo.HasField("host") and not uo.host:
            raise invalid("http_target.uri_override.host must not be empty")
        if uo.HasField("port") and uo.port < 0:
            raise invalid("http_target.uri_override.port must not be negative")
    for ho in ht.header_overrides:
        if not ho.header.key:
            raise invalid("http_target.header_overrides needs a header key")


# UpdateQueue field-mask paths, as the gRPC API spells them, mapped to the top-level field
# they live in. Output-only fields (name, state, purge_time, max_burst_size) are accepted and
# ignored, as Google ignores values sent for them.
UPDATABLE_PATHS = {
    "app_engine_routing_override": "app_engine_routing_override",
    "http_target": "http_target",
    "rate_limits": "rate_limits",
    "rate_limits.max_dispatches_per_second": "rate_limits",
    "rate_limits.max_concurrent_dispatches": "rate_limits",
    "retry_config": "retry_config",
    "retry_config.max_attempts": "retry_config",
    "retry_config.max_retry_duration": "retry_config",
    "retry_config.min_backoff": "retry_config",
    "retry_config.max_backoff": "retry_config",
    "retry_config.max_doublings": "retry_config",
    "stackdriver_logging_config": "stackdriver_logging_config",
    "stackdriver_logging_config.sampling_ratio": "stackdriver_logging_config",
}
IGNORED_PATHS = {"name", "state", "purge_time", "rate_limits.max_burst_size"}
UPDATABLE_FIELDS = ("app_engine_routing_override", "http_target", "rate_limits",
                    "retry_config", "stackdriver_logging_config")


def snake_case(path: str) -> str:
    """Field-mask paths may arrive camelCased (REST style); the proto names are snake_case."""
    return re.sub(r"(?<=[a-z0-9])([A-Z])", lambda m: "_" + m.group(1).lower(), path)


def apply_update(current: Any, update: Any, paths: list[str]) -> Any:
    """Return a new Queue: ``current`` with the masked fields of ``update`` (all if no mask)."""
    new = QueuePb()
    new.CopyFrom(current)
    if not paths:
        for field in UPDATABLE_FIELDS:
            new.ClearField(field)
            if update.HasField(field):
                getattr(new, field).CopyFrom(getattr(update, field))
        # A full replace resets what the caller left out to the creation defaults.
        _clear_derived(new)
        return new
    for raw in paths:
        path = snake_case(raw)
        if path in IGNORED_PATHS:
            continue
        if path not in UPDATABLE_PATHS:
            raise invalid(f"Invalid update_mask path {raw!r}")
        top, _, leaf = path.partition(".")
        if not leaf:
            new.ClearField(top)
            if update.HasField(top):
                getattr(new, top).CopyFrom(getattr(update, top))
            continue
        src, dst = getattr(update, top), getattr(new, top)
        if leaf in ("max_retry_duration", "min_backoff", "max_backoff"):
            dst.ClearField(leaf)
            if src.HasField(leaf):
                getattr(dst, leaf).CopyFrom(getattr(src, leaf))
        else:
            setattr(dst, leaf, getattr(src, leaf))
    _clear_derived(new)
    return new


def _clear_derived(q: Any) -> None:
    """max_burst_size is re-derived from the rate on every update, as Google documents."""
    q.rate_limits.max_burst_size = 0


HTTP_POST = int(T.HttpMethod.POST)
# How long a deleted queue's name cannot be created again: Google documents "up to 3 days"
# (FAILED_PRECONDITION meanwhile); --queue-tombstone shortens it.
QUEUE_TOMBSTONE_S = 3 * 24 * 3600.0


def method_name(value: int) -> str:
    """The HTTP verb for an HttpMethod enum value (unspecified means POST)."""
    return METHOD_NAMES.get(value, "POST")


def _check_headers(headers: Any) -> None:
    size = sum(len(k) + len(v) for k, v in headers.items())
    if size >= MAX_HEADERS_BYTES:
        raise invalid("The size of the task's headers must be less than 80KB")


def validate_task_target(task: Any) -> None:
    """Check the HTTP or App Engine request of a new task."""
    kind = task.WhichOneof("message_type")
    if kind is None:
        raise invalid("A task needs an http_request or an app_engine_http_request")
    if kind == "http_request":
        req = task.http_request
        if not req.url.startswith(("http://", "https://")):
            raise invalid("HttpRequest.url must begin with http:// or https://")
        if len(req.url) > MAX_URL_LENGTH:
            raise invalid(f"HttpRequest.url is longer than {MAX_URL_LENGTH} characters")
        method = method_name(req.http_method)
        if req.body and method not in HTTP_BODY_METHODS:
            raise invalid(f"A request body is allowed only with POST, PUT or PATCH, not {method}")
        if req.HasField("oidc_token") and not req.oidc_token.service_account_email:
            raise invalid("oidc_token.service_account_email is required")
        if req.HasField("oauth_token") and not req.oauth_token.service_account_email:
            raise invalid("oauth_token.service_account_email is required")
        _check_headers(req.headers)
    else:
        req = task.app_engine_http_request
        uri = req.relative_uri
        if uri and (not uri.startswith("/") or " " in uri):
            raise invalid("AppEngineHttpRequest.relative_uri must begin with / and contain "
                          "no spaces")
        if len(uri) > MAX_URL_LENGTH:
            raise invalid(f"relative_uri is longer than {MAX_URL_LENGTH} characters")
        method = method_name(req.http_method)
        if req.body and method not in APP_ENGINE_BODY_METHODS:
            raise invalid(f"An App Engine request body is allowed only with POST or PUT, "
                          f"not {method}")
        _check_headers(req.headers)


def dispatch_deadline_s(task: Any) -> float:
    """The task's dispatch deadline in seconds, checked against its allowed interval."""
    is_http = task.WhichOneof("message_type") == "http_request"
    if not task.HasField("dispatch_deadline"):
        return DEFAULT_DISPATCH_DEADLINE_S
    value = duration_s(task.dispatch_deadline)
    if value == 0 and not is_http:
        # For App Engine tasks 0 means "the service's default deadline".
        return DEFAULT_DISPATCH_DEADLINE_S
    upper = MAX_HTTP_DISPATCH_DEADLINE_S if is_http else MAX_APP_ENGINE_DISPATCH_DEADLINE_S
    if not MIN_DISPATCH_DEADLINE_S <= value <= upper:
        raise invalid(f"dispatch_deadline must be between {MIN_DISPATCH_DEADLINE_S:g}s and "
                      f"{upper:g}s, got {value:g}s")
    return value


def resolve_retry_config(queue_rc: Any, task: Any) -> Any:
    """The retry config that governs a task: the task's own, completed from the queue's."""
    rc = RetryConfigPb()
    rc.CopyFrom(queue_rc)
    if not task.HasField("retry_config"):
        return rc
    own = task.retry_config
    if own.max_attempts:
        rc.max_attempts = own.max_attempts
    if own.max_doublings:
        rc.max_doublings = own.max_doublings
    for field in ("min_backoff", "max_backoff", "max_retry_duration"):
        if own.HasField(field):
            getattr(rc, field).CopyFrom(getattr(own, field))
    validate_retry_config(rc)
    return rc
