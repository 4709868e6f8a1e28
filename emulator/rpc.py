"""One table of methods, two transports: an ``Rpc`` is a method's request type, response
type and function; gRPC (here) and REST/JSON (emulator/rest.py) both serve it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from emulator.validation import ApiError

Handler = Callable[[Any], Any]


@dataclass(frozen=True)
class Rpc:
    """One method: its request and response types (proto-plus, or plain protobuf) and the
    function from request to response. gRPC (below) and REST (emulator/rest.py) serve the
    same table, so both transports share one behaviour."""

    request: Any
    response: Any
    fn: Handler


def is_proto_plus(cls: Any) -> bool:
    """Whether ``cls`` is a proto-plus message class (it wraps a protobuf one)."""
    return hasattr(cls, "wrap") and hasattr(cls, "pb")


def pb_of(cls: Any, message: Any) -> Any:
    """The protobuf message under ``message`` (itself for a plain protobuf)."""
    return cls.pb(message) if is_proto_plus(cls) else message


def new_pb(cls: Any) -> Any:
    """An empty protobuf message of ``cls``."""
    return cls.pb()() if is_proto_plus(cls) else cls()


def wrap(cls: Any, pb: Any) -> Any:
    """A message of ``cls`` over the protobuf ``pb``."""
    return cls.wrap(pb) if is_proto_plus(cls) else pb


def status_of(err: ApiError) -> status_pb2.Status:
    """The google.rpc.Status of an error, with its Help detail if it has one."""
    status = status_pb2.Status(code=err.code.value[0], message=err.message)
    if err.help is not None:
        detail = error_details_pb2.Help(links=[error_details_pb2.Help.Link(
            description=err.help[0], url=err.help[1])])
        status.details.add().Pack(detail)
    return status


def grpc_handler(rpc: Rpc) -> grpc.RpcMethodHandler:
    """The gRPC handler of one method; an ApiError becomes the status Google answers with
    (its details in ``grpc-status-details-bin``), so the client raises the same
    google.api_core exception it would against Google."""

    def handle(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return rpc.fn(request)
        except ApiError as err:
            context.abort_with_status(rpc_status.to_status(status_of(err)))

    plus_in, plus_out = is_proto_plus(rpc.request), is_proto_plus(rpc.response)
    deserialize = rpc.request.deserialize if plus_in else rpc.request.FromString
    serialize = rpc.response.serialize if plus_out else rpc.response.SerializeToString
    return grpc.unary_unary_rpc_method_handler(handle, request_deserializer=deserialize,
                                               response_serializer=serialize)


def generic_handler(service: str, methods: dict[str, Rpc]) -> grpc.GenericRpcHandler:
    """A gRPC service serving ``methods``."""
    return grpc.method_handlers_generic_handler(
        service, {name: grpc_handler(rpc) for name, rpc in methods.items()})


