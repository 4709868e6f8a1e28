"""The gRPC surface: Cloud Tasks v2 plus the Operations and Locations mixins the client has.

No generated code: each RPC is a ``grpc.unary_unary_rpc_method_handler`` whose
(de)serializers come from the proto-plus types shipped in google-cloud-tasks. Handlers are
thin: unwrap the request, call ``State``, wrap the answer; an ``ApiError`` becomes a gRPC
status, so the client raises the same google.api_core exception it would against Google.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import grpc
from google.cloud.location import locations_pb2
from google.cloud.tasks_v2 import types as T
from google.iam.v1 import iam_policy_pb2, policy_pb2
from google.longrunning import operations_pb2
from google.protobuf import empty_pb2

from emulator.state import State
from emulator.validation import ApiError

SERVICE = "google.cloud.tasks.v2.CloudTasks"
OPERATIONS_SERVICE = "google.longrunning.Operations"
LOCATIONS_SERVICE = "google.cloud.location.Locations"

Handler = Callable[[Any, grpc.ServicerContext], Any]


def _answer(fn: Handler) -> Handler:
    """Turn an ApiError into the gRPC status Google would answer with."""

    @functools.wraps(fn)
    def wrapper(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return fn(request, context)
        except ApiError as err:
            context.abort(err.code, err.message)

    return wrapper


def _proto_plus(fn: Handler, request_type: Any, response_type: Any) -> grpc.RpcMethodHandler:
    """A handler taking and returning proto-plus messages of the google-cloud-tasks types."""
    return grpc.unary_unary_rpc_method_handler(
        _answer(fn),
        request_deserializer=request_type.deserialize,
        response_serializer=response_type.serialize,
    )


def _raw(fn: Handler, request_type: Any, response_type: Any) -> grpc.RpcMethodHandler:
    """A handler for plain protobuf types (IAM, long-running operations, locations)."""
    return grpc.unary_unary_rpc_method_handler(
        _answer(fn),
        request_deserializer=request_type.FromString,
        response_serializer=response_type.SerializeToString,
    )


class CloudTasksService:
    """The RPC handlers over one ``State``."""

    def __init__(self, state: State) -> None:
        self.state = state

    def generic_handlers(self) -> list[grpc.GenericRpcHandler]:
        """The three services, ready for ``grpc.Server.add_generic_rpc_handlers``."""
        pp, raw = _proto_plus, _raw
        tasks = {
            "ListQueues": pp(self.list_queues, T.ListQueuesRequest, T.ListQueuesResponse),
            "GetQueue": pp(self.get_queue, T.GetQueueRequest, T.Queue),
            "CreateQueue": pp(self.create_queue, T.CreateQueueRequest, T.Queue),
            "UpdateQueue": pp(self.update_queue, T.UpdateQueueRequest, T.Queue),
            "DeleteQueue": raw_in(self.delete_queue, T.DeleteQueueRequest),
            "PurgeQueue": pp(self.purge_queue, T.PurgeQueueRequest, T.Queue),
            "PauseQueue": pp(self.pause_queue, T.PauseQueueRequest, T.Queue),
            "ResumeQueue": pp(self.resume_queue, T.ResumeQueueRequest, T.Queue),
            "GetIamPolicy": raw(self.get_iam_policy, iam_policy_pb2.GetIamPolicyRequest,
                                policy_pb2.Policy),
            "SetIamPolicy": raw(self.set_iam_policy, iam_policy_pb2.SetIamPolicyRequest,
                                policy_pb2.Policy),
            "TestIamPermissions": raw(self.test_iam_permissions,
                                      iam_policy_pb2.TestIamPermissionsRequest,
                                      iam_policy_pb2.TestIamPermissionsResponse),
            "ListTasks": pp(self.list_tasks, T.ListTasksRequest, T.ListTasksResponse),
            "GetTask": pp(self.get_task, T.GetTaskRequest, T.Task),
            "CreateTask": pp(self.create_task, T.CreateTaskRequest, T.Task),
            "BatchCreateTasks": grpc.unary_unary_rpc_method_handler(
                _answer(self.batch_create_tasks),
                request_deserializer=T.BatchCreateTasksRequest.deserialize,
                response_serializer=operations_pb2.Operation.SerializeToString,
            ),
            "DeleteTask": raw_in(self.delete_task, T.DeleteTaskRequest),
            "BatchDeleteTasks": grpc.unary_unary_rpc_method_handler(
                _answer(self.batch_delete_tasks),
                request_deserializer=T.BatchDeleteTasksRequest.deserialize,
                response_serializer=operations_pb2.Operation.SerializeToString,
            ),
            "RunTask": pp(self.run_task, T.RunTaskRequest, T.Task),
            "UpdateCmekConfig": pp(self.update_cmek_config, T.UpdateCmekConfigRequest,
                                   T.CmekConfig),
            "GetCmekConfig": pp(self.get_cmek_config, T.GetCmekConfigRequest, T.CmekConfig),
        }
        operations = {
            "GetOperation": raw(self.get_operation, operations_pb2.GetOperationRequest,
                                operations_pb2.Operation),
        }
        locations = {
            "ListLocations": raw(self.list_locations, locations_pb2.ListLocationsRequest,
                                 locations_pb2.ListLocationsResponse),
            "GetLocation": raw(self.get_location, locations_pb2.GetLocationRequest,
                               locations_pb2.Location),
        }
        return [
            grpc.method_handlers_generic_handler(SERVICE, tasks),
            grpc.method_handlers_generic_handler(OPERATIONS_SERVICE, operations),
            grpc.method_handlers_generic_handler(LOCATIONS_SERVICE, locations),
        ]

    # Queues

    def list_queues(self, request: Any, context: grpc.ServicerContext) -> Any:
        """ListQueues."""
        r = T.ListQueuesRequest.pb(request)
        queues, token = self.state.list_queues(r.parent, r.filter, r.page_size, r.page_token)
        out = T.ListQueuesResponse.pb()(next_page_token=token)
        out.queues.extend(queues)
        return T.ListQueuesResponse.wrap(out)

    def get_queue(self, request: Any, context: grpc.ServicerContext) -> Any:
        """GetQueue."""
        return T.Queue.wrap(self.state.get_queue(request.name))

    def create_queue(self, request: Any, context: grpc.ServicerContext) -> Any:
        """CreateQueue."""
        r = T.CreateQueueRequest.pb(request)
        return T.Queue.wrap(self.state.create_queue(r.parent, r.queue))

    def update_queue(self, request: Any, context: grpc.ServicerContext) -> Any:
        """UpdateQueue."""
        r = T.UpdateQueueRequest.pb(request)
        return T.Queue.wrap(self.state.update_queue(r.queue, list(r.update_mask.paths)))

    def delete_queue(self, request: Any, context: grpc.ServicerContext) -> empty_pb2.Empty:
        """DeleteQueue."""
        return self.state.delete_queue(request.name)

    def purge_queue(self, request: Any, context: grpc.ServicerContext) -> Any:
        """PurgeQueue."""
        return T.Queue.wrap(self.state.purge_queue(request.name))

    def pause_queue(self, request: Any, context: grpc.ServicerContext) -> Any:
        """PauseQueue."""
        return T.Queue.wrap(self.state.pause_queue(request.name))

    def resume_queue(self, request: Any, context: grpc.ServicerContext) -> Any:
        """ResumeQueue."""
        return T.Queue.wrap(self.state.resume_queue(request.name))

    # IAM

    def get_iam_policy(self, request: Any, context: grpc.ServicerContext) -> Any:
        """GetIamPolicy."""
        return self.state.get_iam_policy(request.resource)

    def set_iam_policy(self, request: Any, context: grpc.ServicerContext) -> Any:
        """SetIamPolicy."""
        return self.state.set_iam_policy(request.resource, request.policy)

    def test_iam_permissions(self, request: Any, context: grpc.ServicerContext) -> Any:
        """TestIamPermissions."""
        allowed = self.state.test_iam_permissions(request.resource, list(request.permissions))
        return iam_policy_pb2.TestIamPermissionsResponse(permissions=allowed)

    # Tasks

    def list_tasks(self, request: Any, context: grpc.ServicerContext) -> Any:
        """ListTasks."""
        r = T.ListTasksRequest.pb(request)
        tasks, token = self.state.list_tasks(r.parent, r.response_view, r.page_size,
                                             r.page_token)
        out = T.ListTasksResponse.pb()(next_page_token=token)
        out.tasks.extend(tasks)
        return T.ListTasksResponse.wrap(out)

    def get_task(self, request: Any, context: grpc.ServicerContext) -> Any:
        """GetTask."""
        r = T.GetTaskRequest.pb(request)
        return T.Task.wrap(self.state.get_task(r.name, r.response_view))

    def create_task(self, request: Any, context: grpc.ServicerContext) -> Any:
        """CreateTask."""
        r = T.CreateTaskRequest.pb(request)
        return T.Task.wrap(self.state.create_task(r.parent, r.task, r.response_view))

    def batch_create_tasks(self, request: Any, context: grpc.ServicerContext) -> Any:
        """BatchCreateTasks (answered as a finished long-running operation)."""
        r = T.BatchCreateTasksRequest.pb(request)
        return self.state.batch_create_tasks(r.parent, list(r.requests), r.request_id)

    def delete_task(self, request: Any, context: grpc.ServicerContext) -> empty_pb2.Empty:
        """DeleteTask."""
        return self.state.delete_task(request.name)

    def batch_delete_tasks(self, request: Any, context: grpc.ServicerContext) -> Any:
        """BatchDeleteTasks (answered as a finished long-running operation)."""
        r = T.BatchDeleteTasksRequest.pb(request)
        return self.state.batch_delete_tasks(r.parent, list(r.names), r.request_id)

    def run_task(self, request: Any, context: grpc.ServicerContext) -> Any:
        """RunTask."""
        r = T.RunTaskRequest.pb(request)
        return T.Task.wrap(self.state.run_task(r.name, r.response_view))

    # CMEK

    def update_cmek_config(self, request: Any, context: grpc.ServicerContext) -> Any:
        """UpdateCmekConfig."""
        r = T.UpdateCmekConfigRequest.pb(request)
        return T.CmekConfig.wrap(self.state.update_cmek_config(r.cmek_config))

    def get_cmek_config(self, request: Any, context: grpc.ServicerContext) -> Any:
        """GetCmekConfig."""
        return T.CmekConfig.wrap(self.state.get_cmek_config(request.name))

    # Mixins

    def get_operation(self, request: Any, context: grpc.ServicerContext) -> Any:
        """google.longrunning.Operations/GetOperation."""
        return self.state.get_operation(request.name)

    def list_locations(self, request: Any, context: grpc.ServicerContext) -> Any:
        """google.cloud.location.Locations/ListLocations."""
        return locations_pb2.ListLocationsResponse(
            locations=self.state.list_locations(request.name))

    def get_location(self, request: Any, context: grpc.ServicerContext) -> Any:
        """google.cloud.location.Locations/GetLocation."""
        return self.state.get_location(request.name)


def raw_in(fn: Handler, request_type: Any) -> grpc.RpcMethodHandler:
    """A handler taking a proto-plus request and answering google.protobuf.Empty."""
    return grpc.unary_unary_rpc_method_handler(
        _answer(fn),
        request_deserializer=request_type.deserialize,
        response_serializer=empty_pb2.Empty.SerializeToString,
    )
