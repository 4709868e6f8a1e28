"""REST/JSON: the same methods as gRPC, over HTTP, as Google serves them.

The routes are the ``google.api.http`` rules of Cloud Tasks v2 and v2beta3 and Cloud Scheduler
v1 (as in Google's discovery documents): a verb, a URL template whose variables fill fields of
the request, and the field the JSON body fills (``*``: the whole request). The remaining fields
come from the query string. Requests and answers are protobuf's JSON mapping (lowerCamelCase,
durations as ``"3.5s"``, timestamps in RFC 3339, enums by name); an error is Google's JSON
error body ``{"error": {"code", "message", "status", "details"}}`` with the HTTP status of the
gRPC code — what ``google.api_core`` turns into the same exception as over gRPC.

Each call runs the ``Rpc`` of emulator/rpc.py in a thread, as gRPC's thread pool would.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from aiohttp import web
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from emulator.rpc import Rpc, new_pb, pb_of, status_of, wrap
from emulator.validation import ApiError, invalid

logger = logging.getLogger("emulator")

# The HTTP status Google's REST front answers for each gRPC code
# (google/rpc/code.proto documents the mapping).
HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}
# Google's system parameters: accepted on any call, never request fields.
SYSTEM_PARAMETERS = {"$alt", "alt", "prettyPrint", "fields", "key", "access_token", "quotaUser",
                     "callback", "upload_protocol", "uploadType", "$.xgafv", "oauth_token"}
# Messages whose JSON form is a scalar (or free-form): never walked for unknown names.
_WELL_KNOWN = {"google.protobuf.Timestamp", "google.protobuf.Duration", "google.protobuf.FieldMask",
               "google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue",
               "google.protobuf.Any", "google.protobuf.BytesValue", "google.protobuf.StringValue",
               "google.protobuf.Int32Value", "google.protobuf.Int64Value", "google.protobuf.BoolValue",
               "google.protobuf.DoubleValue", "google.protobuf.FloatValue", "google.protobuf.UInt32Value",
               "google.protobuf.UInt64Value", "google.protobuf.Empty"}
_CAMEL = re.compile(r"_([a-z0-9])")
_VARIABLE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.]*)(?:=([^}]+))?\}")

# (method, HTTP verb, URL template after the version, body field) of Cloud Tasks, the same in
# v2 and v2beta3; the Operations and Locations mixins are served under each version too.
TASKS_ROUTES = [
    ("ListQueues", "GET", "{parent=projects/*/locations/*}/queues", ""),
    ("CreateQueue", "POST", "{parent=projects/*/locations/*}/queues", "queue"),
    ("GetQueue", "GET", "{name=projects/*/locations/*/queues/*}", ""),
    ("UpdateQueue", "PATCH", "{queue.name=projects/*/locations/*/queues/*}", "queue"),
    ("DeleteQueue", "DELETE", "{name=projects/*/locations/*/queues/*}", ""),
    ("PurgeQueue", "POST", "{name=projects/*/locations/*/queues/*}:purge", "*"),
    ("PauseQueue", "POST", "{name=projects/*/locations/*/queues/*}:pause", "*"),
    ("ResumeQueue", "POST", "{name=projects/*/locations/*/queues/*}:resume", "*"),
    ("GetIamPolicy", "POST", "{resource=projects/*/locations/*/queues/*}:getIamPolicy", "*"),
    ("SetIamPolicy", "POST", "{resource=projects/*/locations/*/queues/*}:setIamPolicy", "*"),
    ("TestIamPermissions", "POST", "{resource=projects/*/locations/*/queues/*}:testIamPermissions", "*"),
    ("ListTasks", "GET", "{parent=projects/*/locations/*/queues/*}/tasks", ""),
    ("CreateTask", "POST", "{parent=projects/*/locations/*/queues/*}/tasks", "*"),
    ("BatchCreateTasks", "POST", "{parent=projects/*/locations/*/queues/*}/tasks:batchCreate", "*"),
    ("BatchDeleteTasks", "POST", "{parent=projects/*/locations/*/queues/*}/tasks:batchDelete", "*"),
    ("GetTask", "GET", "{name=projects/*/locations/*/queues/*/tasks/*}", ""),
    ("DeleteTask", "DELETE", "{name=projects/*/locations/*/queues/*/tasks/*}", ""),
    ("RunTask", "POST", "{name=projects/*/locations/*/queues/*/tasks/*}:run", "*"),
    ("GetCmekConfig", "GET", "{name=projects/*/locations/*/cmekConfig}", ""),
    ("UpdateCmekConfig", "PATCH", "{cmek_config.name=projects/*/locations/*/cmekConfig}", "cmek_config"),
    ("GetOperation", "GET", "{name=projects/*/locations/*/operations/*}", ""),
    ("GetLocation", "GET", "{name=projects/*/locations/*}", ""),
    ("ListLocations", "GET", "{name=projects/*}/locations", ""),
]
SCHEDULER_ROUTES = [
    ("ListJobs", "GET", "{parent=projects/*/locations/*}/jobs", ""),
    ("CreateJob", "POST", "{parent=projects/*/locations/*}/jobs", "job"),
    ("GetJob", "GET", "{name=projects/*/locations/*/jobs/*}", ""),
    ("UpdateJob", "PATCH", "{job.name=projects/*/locations/*/jobs/*}", "job"),
    ("DeleteJob", "DELETE", "{name=projects/*/locations/*/jobs/*}", ""),
    ("PauseJob", "POST", "{name=projects/*/locations/*/jobs/*}:pause", "*"),
    ("ResumeJob", "POST", "{name=projects/*/locations/*/jobs/*}:resume", "*"),
    ("RunJob", "POST", "{name=projects/*/locations/*/jobs/*}:run", "*"),
    ("GetLocation", "GET", "{name=projects/*/locations/*}", ""),
    ("ListLocations", "GET", "{name=projects/*}/locations", ""),
]


@dataclass(frozen=True)
class Route:
    """One REST binding of an Rpc."""

    verb: str
    pattern: re.Pattern[str]
    variables: tuple[str, ...]  # request field paths, in the order of the pattern's groups
    body: str  # "" (none), "*" (the whole request) or the field the body fills
    rpc: Rpc


def compile_template(prefix: str, template: str) -> tuple[re.Pattern[str], tuple[str, ...]]:
    """A regular expression for ``/prefix/template`` and the field each group fills. ``*``
    is one path segment (no ``/``, and no ``:`` so a custom verb stays outside it)."""
    regex, fields, pos = "", [], 0
    for m in _VARIABLE.finditer(template):
        regex += re.escape(template[pos:m.start()])
        segments = (m.group(2) or "*").split("/")
        regex += "(" + "/".join("[^/:]+" if s == "*" else ".+" if s == "**" else re.escape(s)
                                for s in segments) + ")"
        fields.append(m.group(1))
        pos = m.end()
    regex += re.escape(template[pos:])
    return re.compile(f"/{re.escape(prefix)}/{regex}"), tuple(fields)


def routes(prefix: str, table: list[tuple[str, str, str, str]], methods: dict[str, Rpc]) -> list[Route]:
    """The routes of ``table`` under ``/prefix/``, bound to ``methods`` by name."""
    out = []
    for name, verb, template, body in table:
        pattern, variables = compile_template(prefix, template)
        out.append(Route(verb, pattern, variables, body, methods[name]))
    return out


def error_body(err: ApiError) -> dict[str, Any]:
    """Google's JSON error body for ``err``."""
    status = status_of(err)
    body: dict[str, Any] = {"code": HTTP_STATUS.get(err.code, 500), "message": err.message,
                            "status": err.code.name}
    if status.details:
        body["details"] = [json_format.MessageToDict(d) for d in status.details]
    return {"error": body}


def error_response(err: ApiError) -> web.Response:
    """The HTTP answer for ``err``."""
    return web.json_response(error_body(err), status=HTTP_STATUS.get(err.code, 500))


def bad_request(message: str) -> ApiError:
    """INVALID_ARGUMENT for a request Google's JSON front refuses ("Invalid JSON payload")."""
    return invalid(f"Invalid JSON payload received. {message}")


def _set(target: dict[str, Any], path: str, value: Any) -> None:
    """``target[a][b] = value`` for the field path ``a.b``."""
    *parents, last = path.split(".")
    for part in parents:
        target = target.setdefault(part, {})
    target[last] = value


def _field(descriptor: Descriptor, name: str) -> FieldDescriptor | None:
    """A field of ``descriptor`` by its proto name or JSON name."""
    return descriptor.fields_by_name.get(name) or next(
        (f for f in descriptor.fields if f.json_name == name), None)


def _is_map(field: FieldDescriptor) -> bool:
    return (field.message_type is not None and field.message_type.GetOptions().map_entry)


def _is_repeated(field: FieldDescriptor) -> bool:
    if hasattr(field, "is_repeated"):  # protobuf 5.28+ (``label`` is gone in 7)
        return bool(field.is_repeated)
    return bool(field.label == FieldDescriptor.LABEL_REPEATED)


def unknown_names(value: Any, descriptor: Descriptor, at: str = "") -> list[str]:
    """Google's complaint for each name in ``value`` that is no field of ``descriptor``."""
    if not isinstance(value, dict) or descriptor.full_name in _WELL_KNOWN:
        return []
    found = []
    for key, item in value.items():
        field = _field(descriptor, key)
        if field is None:
            where = f" at '{at}'" if at else ""
            found.append(f'Unknown name "{key}"{where}: Cannot find field.')
            continue
        if field.message_type is None or _is_map(field):
            continue
        path = f"{at}.{field.name}" if at else field.name
        items = item if _is_repeated(field) and isinstance(item, list) else [item]
        for i, each in enumerate(items):
            found += unknown_names(each, field.message_type,
                                   f"{path}[{i}]" if _is_repeated(field) else path)
    return found


def query_value(descriptor: Descriptor, path: str, values: list[str]) -> Any:
    """A query parameter's JSON value for the field at ``path``, or raise for an unknown one."""
    field = None
    for part in path.split("."):
        field = _field(descriptor, part) if descriptor is not None else None
        if field is None:
            raise bad_request(f'Unknown name "{path}": Cannot bind query parameter. Field '
                              f"'{part}' could not be found in request message.")
        descriptor = field.message_type
    assert field is not None
    if _is_repeated(field):
        return values
    value = values[-1]
    if field.message_type is not None and field.message_type.full_name == "google.protobuf.FieldMask":
        # protobuf's JSON form wants lowerCamelCase paths; Google also takes the snake_case the
        # Node.js client's REST fallback sends (updateMask=rate_limits.max_dispatches_per_second).
        return ",".join(_CAMEL.sub(lambda m: m.group(1).upper(), p.strip()) for p in value.split(","))
    if field.type == FieldDescriptor.TYPE_BOOL:
        if value not in ("true", "false"):
            raise bad_request(f"Invalid value at '{path}' (TYPE_BOOL), \"{value}\"")
        return value == "true"
    return value


# A handler outside the table: (request, its path's match) -> answer.
Extra = Callable[[web.Request, re.Match[str]], Awaitable[web.StreamResponse]]


class RestFront:
    """The REST routes of every service, as an aiohttp app's catch-all handler."""

    def __init__(self, route_list: list[Route], extra: dict[tuple[str, str], Extra] | None = None) -> None:
        self.routes = route_list
        self.extra = extra or {}  # (verb, path regex) -> handler

    def find(self, verb: str, path: str) -> tuple[Route | None, re.Match[str] | None]:
        """The route for ``verb path`` and its match."""
        for route in self.routes:
            if route.verb == verb and (m := route.pattern.fullmatch(path)):
                return route, m
        return None, None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Answer one REST call."""
        verb, path = request.method, request.path
        for (extra_verb, pattern), fn in self.extra.items():
            if extra_verb == verb and (m := re.fullmatch(pattern, path)):
                try:
                    response: web.StreamResponse = await fn(request, m)
                    return response
                except ApiError as err:
                    return error_response(err)
        route, match = self.find(verb, path)
        if route is None or match is None:
            return error_response(ApiError(grpc.StatusCode.NOT_FOUND,
                                           f"The requested URL {path} was not found on this server."))
        try:
            message = self.request_message(route, match, request.query, await request.read())
            result = await asyncio.get_running_loop().run_in_executor(None, route.rpc.fn, message)
        except ApiError as err:
            return error_response(err)
        except Exception:  # a bug: said as Google would, in its JSON, and logged
            logger.exception("REST %s %s failed", verb, path)
            return error_response(ApiError(grpc.StatusCode.INTERNAL, "Internal error encountered."))
        answer = json_format.MessageToDict(pb_of(route.rpc.response, result))
        return web.json_response(answer)

    def request_message(self, route: Route, match: re.Match[str], query: Any, raw: bytes) -> Any:
        """The request message of a call: path variables, then body, then query parameters."""
        descriptor = new_pb(route.rpc.request).DESCRIPTOR
        fields: dict[str, Any] = {}
        if route.body:
            try:
                body = json.loads(raw) if raw.strip() else {}
            except (ValueError, UnicodeDecodeError) as e:
                raise bad_request(f"Unexpected token.\n{str(e)[:200]}") from None
            if not isinstance(body, dict):  # every body here is a message
                raise bad_request("Unknown name \"\": Root element must be a message.")
            if route.body == "*":
                fields.update(body)
            else:
                fields[route.body] = body
        for name in query:
            if name in SYSTEM_PARAMETERS or name.startswith("$"):
                continue
            if route.body == "*":
                raise bad_request(f'Unknown name "{name}": Cannot bind query parameter. '
                                  "Request message fields are taken from the body.")
            _set(fields, name, query_value(descriptor, name, query.getall(name)))
        for path, value in zip(route.variables, match.groups(), strict=True):
            _set(fields, path, value)
        try:
            pb = json_format.ParseDict(fields, new_pb(route.rpc.request))
        except json_format.ParseError as e:
            # Only a refused request is walked again, for Google's words about an unknown name.
            complaints = unknown_names(fields, descriptor)
            raise bad_request(complaints[0] if complaints else str(e).split("\n")[0]) from None
        return wrap(route.rpc.request, pb)


# BufferTask: POST .../queues/Q/tasks/ID:buffer (or tasks:buffer), its body the task's body.
BUFFER_PATH = (r"/(v2|v2beta3)/(projects/[^/:]+/locations/[^/:]+/queues/[^/:]+)"
               r"/tasks(?:/([^/:]+))?:buffer")


def buffer_task(state: Any) -> Extra:
    """BufferTask (REST only: the Python client has no type for it), as Google serves it:
    a task on the queue's own HTTP target (``http_target.uri_override``), whose body is the
    request's body and whose Content-Type is the request's. Answers ``{"task": ...}``."""
    from google.cloud.tasks_v2 import types as T

    from emulator.dispatch import apply_uri_override

    async def handle(request: web.Request, match: re.Match[str]) -> web.StreamResponse:
        _, parent, task_id = match.groups()
        body = await request.read()
        queue = state.get_queue(parent)
        if not queue.HasField("http_target") or not queue.http_target.HasField("uri_override"):
            raise ApiError(grpc.StatusCode.FAILED_PRECONDITION,
                           "BufferTask needs a queue with an HTTP target: set http_target.uri_override "
                           "on the queue.")
        task = T.Task.pb()()
        if task_id:
            task.name = f"{parent}/tasks/{task_id}"
        task.http_request.url = apply_uri_override("", queue.http_target.uri_override)
        task.http_request.http_method = queue.http_target.http_method or T.HttpMethod.POST
        if body and "Content-Type" in request.headers:
            task.http_request.headers["Content-Type"] = request.headers["Content-Type"]
        if body and task.http_request.http_method in (T.HttpMethod.POST, T.HttpMethod.PUT,
                                                      T.HttpMethod.PATCH):
            task.http_request.body = body
        created = await asyncio.get_running_loop().run_in_executor(
            None, state.create_task, parent, task, int(T.Task.View.BASIC))
        return web.json_response({"task": json_format.MessageToDict(created)})

    return handle
