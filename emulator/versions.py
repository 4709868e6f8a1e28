"""Cloud Tasks v2beta3 over the v2 state: one behaviour, two API versions.

v2beta3 has the methods of v2 with other field numbers and a few fields of its own, so each
v2beta3 request is translated into its v2 twin through protobuf's JSON form (field names are
the same), answered by the v2 method, and the answer translated back. What only v2beta3 has:

- ``Queue.app_engine_http_queue.app_engine_routing_override`` is v2's
  ``Queue.app_engine_routing_override``;
- ``Queue.type``: PUSH (the default) is what v2 queues are; a PULL queue is refused
  (``INVALID_ARGUMENT``), as pull queues were never part of v2beta3's push API;
- ``Queue.task_ttl`` and ``Queue.tombstone_ttl`` report the emulator's (31 days and its
  de-duplication window) and cannot be changed;
- ``Queue.stats`` is filled when ``read_mask`` asks for it (GetQueue, ListQueues).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.cloud import tasks_v2beta3
from google.cloud.tasks_v2 import types as T
from google.longrunning import operations_pb2
from google.protobuf import json_format

from emulator.rpc import Rpc, is_proto_plus, new_pb, pb_of, wrap
from emulator.state import TASK_RETENTION_S, State
from emulator.validation import invalid, set_duration

SERVICE = "google.cloud.tasks.v2beta3.CloudTasks"
B = tasks_v2beta3.types
_PULL = int(B.Queue.Type.PULL)
_PUSH = int(B.Queue.Type.PUSH)
# The field's protobuf name: "type_" in the descriptor proto-plus builds.
_TYPE_FIELD = next(f.name for f in B.Queue.pb().DESCRIPTOR.fields if f.name in ("type", "type_"))


def _to_v2(d: Any) -> Any:
    """A v2beta3 message's JSON dict, reshaped for v2 (in place)."""
    if isinstance(d, dict):
        queue_http = d.pop("app_engine_http_queue", None)
        if isinstance(queue_http, dict) and "app_engine_routing_override" in queue_http:
            d["app_engine_routing_override"] = queue_http["app_engine_routing_override"]
        # proto-plus names the field type_ (a Python keyword), and so does its descriptor.
        if d.get("type_", d.get("type")) in ("PULL", _PULL):
            raise invalid("Pull queues are not supported by the emulator; use a push queue.")
        for key in ("type", "type_", "stats", "task_ttl", "tombstone_ttl", "read_mask"):
            d.pop(key, None)
        if "update_mask" in d and isinstance(d["update_mask"], str):
            d["update_mask"] = d["update_mask"].replace(
                "app_engine_http_queue.app_engine_routing_override", "app_engine_routing_override")
        for value in d.values():
            _to_v2(value)
    elif isinstance(d, list):
        for value in d:
            _to_v2(value)
    return d


def _to_beta(d: Any) -> Any:
    """A v2 message's JSON dict, reshaped for v2beta3 (in place)."""
    if isinstance(d, dict):
        for value in d.values():
            _to_beta(value)
        if "app_engine_routing_override" in d:
            d["app_engine_http_queue"] = {"app_engine_routing_override": d.pop("app_engine_routing_override")}
    elif isinstance(d, list):
        for value in d:
            _to_beta(value)
    return d


def translate(pb: Any, target: Any, reshape: Callable[[Any], Any]) -> Any:
    """``pb`` as a message of ``target`` (its class), through the JSON form."""
    d = json_format.MessageToDict(pb, preserving_proto_field_name=True)
    return json_format.ParseDict(reshape(d), new_pb(target), ignore_unknown_fields=True)


def _operation_to_beta(op: Any) -> Any:
    """A v2 long-running operation with its metadata and response as v2beta3 types."""
    out = operations_pb2.Operation()
    out.CopyFrom(op)
    for field in ("metadata", "response"):
        if not op.HasField(field):
            continue
        any_ = getattr(op, field)
        v2_name = any_.TypeName().rsplit(".", 1)[-1]
        beta = getattr(B, v2_name, None)
        if beta is None:
            continue
        v2_pb = new_pb(getattr(T, v2_name))
        any_.Unpack(v2_pb)
        getattr(out, field).Pack(translate(v2_pb, beta, _to_beta))
    return out


class BetaService:
    """v2beta3's methods, each a translation around its v2 twin."""

    def __init__(self, state: State, v2: dict[str, Rpc]) -> None:
        self.state = state
        self.v2 = v2

    def methods(self) -> dict[str, Rpc]:
        """Every v2beta3 method by name."""
        return {name: self._twin(name, rpc) for name, rpc in self.v2.items()}

    def _twin(self, name: str, rpc: Rpc) -> Rpc:
        request = getattr(B, rpc.request.__name__) if is_proto_plus(rpc.request) else rpc.request
        response = getattr(B, rpc.response.__name__) if is_proto_plus(rpc.response) else rpc.response

        def call(beta_request: Any) -> Any:
            beta_pb = pb_of(request, beta_request)
            v2_request = beta_request if request is rpc.request else wrap(
                rpc.request, translate(beta_pb, rpc.request, _to_v2))
            result = rpc.fn(v2_request)
            if isinstance(result, operations_pb2.Operation):
                return _operation_to_beta(result)
            if response is rpc.response:
                return result
            out = translate(pb_of(rpc.response, result), response, _to_beta)
            self._beta_fields(name, beta_pb, out)
            return wrap(response, out)

        return Rpc(request, response, call)

    def _beta_fields(self, name: str, request: Any, out: Any) -> None:
        """Fill what only v2beta3 answers: a queue's ttls, and its stats when asked."""
        queues = []
        if isinstance(out, B.Queue.pb()):
            queues = [out]
        elif isinstance(out, B.ListQueuesResponse.pb()):
            queues = list(out.queues)
        mask = getattr(request, "read_mask", None)
        want_stats = mask is not None and "stats" in mask.paths
        for queue in queues:
            setattr(queue, _TYPE_FIELD, _PUSH)
            set_duration(queue.task_ttl, TASK_RETENTION_S)
            set_duration(queue.tombstone_ttl, self.state.dedup_window_s)
            if want_stats:
                stats = self.state.queue_stats(queue.name)
                queue.stats.tasks_count = stats.tasks_count
                if stats.oldest_estimated_arrival_time is not None:
                    queue.stats.oldest_estimated_arrival_time.FromNanoseconds(
                        int(stats.oldest_estimated_arrival_time * 1e9))
                queue.stats.executed_last_minute_count = stats.executed_last_minute_count
                queue.stats.concurrent_dispatches_count = stats.concurrent_dispatches_count
                queue.stats.effective_execution_rate = stats.effective_execution_rate
            if mask is not None and mask.paths:  # only the fields asked for
                kept = type(queue)()
                mask.MergeMessage(queue, kept)
                queue.CopyFrom(kept)

