"""The daemon's grpc.health.v1 states, kept in step with its models.

One health service per model (its name): SERVING once the model is READY, NOT_SERVING
while it loads or after it failed. `e2edge.v1.EdgeRuntime` and the overall service ""
are SERVING once the first load is over and at least one model is READY. Everything
turns NOT_SERVING when the drain starts.
"""

from __future__ import annotations

from collections.abc import Iterable

from grpc_health.v1 import health, health_pb2

from runtime.proto.e2edge.v1 import runtime_pb2 as pb
from runtime.server.core.registry import ModelEntry, ModelState

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["EdgeRuntime"].full_name
HEALTH_SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
OVERALL = ""  # the health service name that stands for the whole daemon
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class DaemonHealth:
    def __init__(self) -> None:
        self.servicer = health.aio.HealthServicer()  # what the server serves

    async def starting(self, models: Iterable[str]) -> None:
        """Before serving: everything NOT_SERVING until the models are loaded."""
        for service in (OVERALL, SERVICE_NAME, *models):
            await self.servicer.set(service, NOT_SERVING)

    async def model_changed(self, entry: ModelEntry) -> None:
        await self.servicer.set(entry.name, SERVING if entry.state is ModelState.READY
                                else NOT_SERVING)

    async def model_removed(self, name: str) -> None:
        await self.servicer.set(name, NOT_SERVING)

    async def set_overall(self, ready: bool) -> None:
        """The daemon as a whole (and EdgeRuntime): SERVING while a model is READY."""
        for service in (OVERALL, SERVICE_NAME):
            await self.servicer.set(service, SERVING if ready else NOT_SERVING)

    async def drain(self) -> None:
        await self.servicer.enter_graceful_shutdown()
