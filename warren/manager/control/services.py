"""Services: create, read, update, scale, delete."""

from __future__ import annotations

import builtins
import time
from dataclasses import replace
from typing import cast

from warren.core.errors import AlreadyExists, Conflict, InvalidArgument
from warren.core.models import NetworkMode, Service, ServiceMode, ServiceSpec, new_id
from warren.core.networks import Endpoint
from warren.manager.allocator import allocate_service
from warren.manager.allocator.state import ServiceHolding
from warren.manager.allocator.view import service_holding, service_request
from warren.manager.consensus import Consensus
from warren.manager.control.networks import NetworkControl, current_allocation
from warren.manager.control.resolve import DESTRUCTIVE_MIN_PREFIX, resolve
from warren.manager.images import ImageResolver
from warren.manager.store import MUST_NOT_EXIST, Kind, delete, put
from warren.manager.writes import update_with_retry, write

# Allocations tried for one write: concurrent writes may take what one was given.
_ENDPOINT_ATTEMPTS = 5


class ServiceControl:
    def __init__(
        self,
        consensus: Consensus,
        networks: NetworkControl,
        images: ImageResolver | None = None,
    ) -> None:
        self.consensus = consensus
        self.store = consensus.store
        self.networks = networks
        # None: images are not pinned (the simulated runtime has no registry).
        self.images = images
        # What this manager's writes in flight were given: taken for the next
        # allocations too, so concurrent creates here do not pick the same.
        self._in_flight: dict[str, ServiceHolding] = {}

    def _on_networks(self, spec: ServiceSpec, default: bool) -> ServiceSpec:
        """The spec with its networks as IDs. A service in its own network
        namespace that names none joins the default network on create, and on
        update when it publishes a port (one made before networks existed):
        a published port forwards to the tasks' addresses on a network."""
        networks = self.networks.resolve_ids(spec.networks)
        joins_default = default or bool(spec.endpoint.ports)
        if not networks and joins_default and spec.container.network_mode == NetworkMode.PRIVATE:
            networks = self.networks.default_ids()
        return replace(spec, networks=networks)

    def _endpoint(self, service_id: str, spec: ServiceSpec) -> Endpoint:
        """What the service holds with ``spec``: VIPs, published port numbers.
        A port taken meanwhile by another service is refused when applied (the
        service kind's invariants)."""
        if not spec.networks and not spec.endpoint.ports:
            return Endpoint()  # nothing to hold: no need to read every task
        state = current_allocation(self.store)
        others = tuple(h for i, h in self._in_flight.items() if i != service_id)
        state = replace(state, services=state.services + others)
        return allocate_service(state, service_request(service_id, spec))

    async def _write_holding(self, service: Service, expected_version: int) -> None:
        """Write ``service`` while its endpoint counts as taken here."""
        self._in_flight[service.id] = service_holding(service)
        try:
            await write(self.consensus, [put(service, expected_version)])
        finally:
            self._in_flight.pop(service.id, None)

    async def _pin_image(self, spec: ServiceSpec) -> ServiceSpec:
        if self.images is None:
            return spec
        container = spec.container
        pinned = await self.images.pin(container.image)
        return replace(spec, container=replace(container, image=pinned))

    async def create(self, spec: ServiceSpec) -> Service:
        if self.store.service_by_name(spec.name) is not None:
            raise AlreadyExists(f"service '{spec.name}' already exists")
        spec = self._on_networks(_normalise(spec), default=True)
        service_id = new_id()
        spec = await self._pin_image(spec)
        now = time.time()
        for attempt in range(_ENDPOINT_ATTEMPTS):
            endpoint = self._endpoint(service_id, spec)
            service = Service(
                id=service_id, spec=spec, created_at=now, updated_at=now, endpoint=endpoint
            )
            try:
                await self._write_holding(service, MUST_NOT_EXIST)
                break
            except AlreadyExists:
                if not self._endpoint_taken_meanwhile(spec.name, attempt):
                    raise
        return cast(Service, self.store.get(Kind.SERVICE, service.id))

    def _endpoint_taken_meanwhile(self, name: str, attempt: int, own_id: str = "") -> bool:
        """Whether a refused write is worth another try: another service's
        write took the VIP or port this one was allocated (creates in flight
        at once allocate from the same store), not its name. The refusal
        applied after that write, so allocating again sees it."""
        holder = self.store.service_by_name(name)
        return attempt + 1 < _ENDPOINT_ATTEMPTS and (holder is None or holder.id == own_id)

    def get(self, ref: str, min_prefix: int = 1) -> Service:
        services: builtins.list[Service] = self.store.list(Kind.SERVICE)
        by_name = {s.spec.name: s for s in services}
        return resolve(ref, {s.id: s for s in services}, by_name, "service", min_prefix)

    def list(self) -> builtins.list[Service]:
        return sorted(self.store.list(Kind.SERVICE), key=lambda s: s.spec.name)

    async def update(self, ref: str, spec: ServiceSpec, version: int = 0) -> Service:
        service = self.get(ref)
        if version and version != service.version:
            raise Conflict(
                f"service '{service.spec.name}' changed since it was read "
                f"(version {service.version}, not {version}); read it again"
            )
        if spec.mode != service.spec.mode:
            raise InvalidArgument("a service's mode cannot change; create a new service")
        spec = self._on_networks(_normalise(spec), default=False)
        if spec.container.image != service.spec.container.image:
            spec = await self._pin_image(spec)
        if spec == service.spec:
            return service
        for attempt in range(_ENDPOINT_ATTEMPTS):
            updated = replace(
                service,
                spec=spec,
                spec_version=service.spec_version + 1,
                updated_at=time.time(),
                endpoint=self._endpoint(service.id, spec),
            )
            try:
                await self._write_holding(updated, service.version)
                break
            except AlreadyExists:
                if not self._endpoint_taken_meanwhile(spec.name, attempt, service.id):
                    raise
        return cast(Service, self.store.get(Kind.SERVICE, service.id))

    async def scale(self, ref: str, replicas: int) -> Service:
        def scaled(service: Service) -> Service | None:
            if service.spec.mode != ServiceMode.REPLICATED:
                raise InvalidArgument(
                    f"service '{service.spec.name}' is global; only replicated services scale"
                )
            if service.spec.replicas == replicas:
                return None
            # Scaling is not a new spec version: running tasks stay as they are.
            # (replace() re-validates the spec, so a bad count is refused here.)
            return replace(
                service, spec=replace(service.spec, replicas=replicas), updated_at=time.time()
            )

        return await update_with_retry(self.consensus, Kind.SERVICE, self.get(ref).id, scaled)

    async def delete(self, ref: str) -> None:
        service = self.get(ref, DESTRUCTIVE_MIN_PREFIX)
        # Its tasks are shut down by the orchestrator, which sees the delete.
        await write(self.consensus, [delete(Kind.SERVICE, service.id, service.version)])


def _normalise(spec: ServiceSpec) -> ServiceSpec:
    # A global service has one task per node: a replica count means nothing.
    if spec.mode == ServiceMode.GLOBAL:
        return replace(spec, replicas=0)
    return spec
