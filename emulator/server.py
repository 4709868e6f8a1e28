"""The gRPC surface: Cloud Tasks v2 plus the Operations and Locations mixins the client has.

No generated code: each RPC is an ``Rpc`` — request type, response type, function — whose
types are the proto-plus ones shipped in google-cloud-tasks; gRPC and REST
(emulator/rest.py) both serve that table. Handlers are thin: unwrap the request, call
``State``, wrap the answer; an ``ApiError`` becomes a gRPC status (or Google's JSON error),
so the client raises the same google.api_core exception it would against Google.
"""

from __future__ import annotations

from typing import Any

from google.cloud.location import locations_pb2
from google.cloud.tasks_v2 import types as T
from google.iam.v1 import iam_policy_pb2, policy_pb2
from google.longrunning import operations_pb2
from google.protobuf import empty_pb2

from emulator.rpc import Rpc
from emulator.state import State

SERVICE = "google.cloud.tasks.v2.CloudTasks"
OPERATIONS_SERVICE = "google.longrunning.Operations"
LOCATIONS_SERVICE = "google.cloud.location.Locations"

class CloudTasksService:
    """The RPC handlers over one ``State``."""

    def __init__(self, state: State) -> None:
        self.state = state

    def methods(self) -> dict[str, dict[str, Rpc]]:
        """Every method, by service then name."""
        op = operations_pb2.Operation
        empty = empty_pb2.Empty
        tasks = {
            "ListQueues": Rpc(T.ListQueuesRequest, T.ListQueuesResponse, self.list_queues),
            "GetQueue": Rpc(T.GetQueueRequest, T.Queue, self.get_queue),
            "CreateQueue": Rpc(T.CreateQueueRequest, T.Queue, self.create_queue),
            "UpdateQueue": Rpc(T.UpdateQueueRequest, T.Queue, self.update_queue),
            "DeleteQueue": Rpc(T.DeleteQueueRequest, empty, self.delete_queue),
            "PurgeQueue": Rpc(T.PurgeQueueRequest, T.Queue, self.purge_queue),
            "PauseQueue": Rpc(T.PauseQueueRequest, T.Queue, self.pause_queue),
            "ResumeQueue": Rpc(T.ResumeQueueRequest, T.Queue, self.resume_queue),
            "GetIamPolicy": Rpc(iam_policy_pb2.GetIamPolicyRequest, policy_pb2.Policy,
                                self.get_iam_policy),
            "SetIamPolicy": Rpc(iam_policy_pb2.SetIamPolicyRequest, policy_pb2.Policy,
                                self.set_iam_policy),
            "TestIamPermissions": Rpc(iam_policy_pb2.TestIamPermissionsRequest,
                                      iam_policy_pb2.TestIamPermissionsResponse,
                                      self.test_iam_permissions),
            "ListTasks": Rpc(T.ListTasksRequest, T.ListTasksResponse, self.list_tasks),
            "GetTask": Rpc(T.GetTaskRequest, T.Task, self.get_task),
            "CreateTask": Rpc(T.CreateTaskRequest, T.Task, self.create_task),
            "BatchCreateTasks": Rpc(T.BatchCreateTasksRequest, op, self.batch_create_tasks),
            "DeleteTask": Rpc(T.DeleteTaskRequest, empty, self.delete_task),
            "BatchDeleteTasks": Rpc(T.BatchDeleteTasksRequest, op, self.batch_delete_tasks),
            "RunTask": Rpc(T.RunTaskRequest, T.Task, self.run_task),
            "UpdateCmekConfig": Rpc(T.UpdateCmekConfigRequest, T.CmekConfig, self.update_cmek_config),
            "GetCmekConfig": Rpc(T.GetCmekConfigRequest, T.CmekConfig, self.get_cmek_config),
        }
        return {
            SERVICE: tasks,
            OPERATIONS_SERVICE: {"GetOperation": Rpc(operations_pb2.GetOperationRequest, op,
                                                     self.get_operation)},
            LOCATIONS_SERVICE: {
                "ListLocations": Rpc(locations_pb2.ListLocationsRequest,
                                     locations_pb2.ListLocationsResponse, self.list_locations),
                "GetLocation": Rpc(locations_pb2.GetLocationRequest, locations_pb2.Location,
                                   self.get_location),
            },
        }

    # Queues

    def list_queues(self, request: Any) -> Any:
        """ListQueues."""
        r = T.ListQueuesRequest.pb(request)
        queues, token = self.state.list_queues(r.parent, r.filter, r.page_size, r.page_token)
        out = T.ListQueuesResponse.pb()(next_page_token=token)
        out.queues.extend(queues)
        return T.ListQueuesResponse.wrap(out)

    def get_queue(self, request: Any) -> Any:
        """GetQueue."""
        return T.Queue.wrap(self.state.get_queue(request.name))

    def create_queue(self, request: Any) -> Any:
        """CreateQueue."""
        r = T.CreateQueueRequest.pb(request)
        return T.Queue.wrap(self.state.create_queue(r.parent, r.queue))

    def update_queue(self, request: Any) -> Any:
        """UpdateQueue."""
        r = T.UpdateQueueRequest.pb(request)
        return T.Queue.wrap(self.state.update_queue(r.queue, list(r.update_mask.paths)))

    def delete_queue(self, request: Any) -> empty_pb2.Empty:
        """DeleteQueue."""
        return self.state.delete_queue(request.name)

    def purge_queue(self, request: Any) -> Any:
        """PurgeQueue."""
        return T.Queue.wrap(self.state.purge_queue(request.name))

    def pause_queue(self, request: Any) -> Any:
        """PauseQueue."""
        return T.Queue.wrap(self.state.pause_queue(request.name))

    def resume_queue(self, request: Any) -> Any:
        """ResumeQueue."""
        return T.Queue.wrap(self.state.resume_queue(request.name))

    # IAM

    def get_iam_policy(self, request: Any) -> Any:
        """GetIamPolicy."""
        return self.state.get_iam_policy(request.resource)

    def set_iam_policy(self, request: Any) -> Any:
        """SetIamPolicy."""
        return self.state.set_iam_policy(request.resource, request.policy)

    def test_iam_permissions(self, request: Any) -> Any:
        """TestIamPermissions."""
        allowed = self.state.test_iam_permissions(request.resource, list(request.permissions))
        return iam_policy_pb2.TestIamPermissionsResponse(permissions=allowed)

    # Tasks

    def list_tasks(self, request: Any) -> Any:
        """ListTasks."""
        r = T.ListTasksRequest.pb(request)
        tasks, token = self.state.list_tasks(r.parent, r.response_view, r.page_size,
                                             r.page_token)
        out = T.ListTasksResponse.pb()(next_page_token=token)
        out.tasks.extend(tasks)
        return T.ListTasksResponse.wrap(out)

    def get_task(self, request: Any) -> Any:
        """GetTask."""
        r = T.GetTaskRequest.pb(request)
        return T.Task.wrap(self.state.get_task(r.name, r.response_view))

    def create_task(self, request: Any) -> Any:
        """CreateTask."""
        r = T.CreateTaskRequest.pb(request)
        return T.Task.wrap(self.state.create_task(r.parent, r.task, r.response_view))

    def batch_create_tasks(self, request: Any) -> Any:
        """BatchCreateTasks (answered as a finished long-running operation)."""
        r = T.BatchCreateTasksRequest.pb(request)
        return self.state.batch_create_tasks(r.parent, list(r.requests), r.request_id)

    def delete_task(self, request: Any) -> empty_pb2.Empty:
        """DeleteTask."""
        return self.state.delete_task(request.name)

    def batch_delete_tasks(self, request: Any) -> Any:
        """BatchDeleteTasks (answered as a finished long-running operation)."""
        r = T.BatchDeleteTasksRequest.pb(request)
        return self.state.batch_delete_tasks(r.parent, list(r.names), r.request_id)

    def run_task(self, request: Any) -> Any:
        """RunTask."""
        r = T.RunTaskRequest.pb(request)
        return T.Task.wrap(self.state.run_task(r.name, r.response_view))

    # CMEK

    def update_cmek_config(self, request: Any) -> Any:
        """UpdateCmekConfig."""
        r = T.UpdateCmekConfigRequest.pb(request)
        return T.CmekConfig.wrap(self.state.update_cmek_config(r.cmek_config))

    def get_cmek_config(self, request: Any) -> Any:
        """GetCmekConfig."""
        return T.CmekConfig.wrap(self.state.get_cmek_config(request.name))

    # Mixins

    def get_operation(self, request: Any) -> Any:
        """google.longrunning.Operations/GetOperation."""
        return self.state.get_operation(request.name)

    def list_locations(self, request: Any) -> Any:
        """google.cloud.location.Locations/ListLocations."""
        return locations_pb2.ListLocationsResponse(
            locations=self.state.list_locations(request.name))

    def get_location(self, request: Any) -> Any:
        """google.cloud.location.Locations/GetLocation."""
        return self.state.get_location(request.name)

