"""Service specs from command-line options: built for ``create``, edited for ``update``.

``ServiceSpec`` validates itself, so a bad name, key or constraint is refused
here, before anything is sent.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace
from typing import Any, TypeVar

from warren.core.constraints import parse_constraint
from warren.core.errors import InvalidArgument
from warren.core.models import (
    ContainerSpec,
    HealthCheck,
    NetworkMode,
    Placement,
    ResourceRequirements,
    Resources,
    RestartCondition,
    RestartPolicy,
    ServiceMode,
    ServiceSpec,
)
from warren.core.networks import EndpointMode, EndpointSpec, PortConfig

T = TypeVar("T")


@dataclass(frozen=True)
class ResourceOptions:
    reserve_cpu: float | None = None
    reserve_memory: int | None = None
    limit_cpu: float | None = None
    limit_memory: int | None = None

    def apply(self, current: ResourceRequirements) -> ResourceRequirements:
        return ResourceRequirements(
            reservations=_resources(current.reservations, self.reserve_cpu, self.reserve_memory),
            limits=_resources(current.limits, self.limit_cpu, self.limit_memory),
        )


def _resources(base: Resources, cpus: float | None, memory: int | None) -> Resources:
    return Resources(cpus=_either(cpus, base.cpus), memory_bytes=_either(memory, base.memory_bytes))


@dataclass(frozen=True)
class RestartOptions:
    restart_condition: str | None = None
    restart_max_attempts: int | None = None
    restart_delay: float | None = None
    restart_window: float | None = None

    def apply(self, policy: RestartPolicy) -> RestartPolicy:
        condition = self.restart_condition
        return RestartPolicy(
            condition=policy.condition if condition is None else RestartCondition(condition),
            max_attempts=_either(self.restart_max_attempts, policy.max_attempts),
            delay=_either(self.restart_delay, policy.delay),
            window=_either(self.restart_window, policy.window),
        )


def _either(value: T | None, default: T) -> T:
    return default if value is None else value


@dataclass(frozen=True)
class ContainerOptions:
    """How the container runs; ``None`` means the default on create, unchanged on update."""

    entrypoint: tuple[str, ...] | None = None
    workdir: str | None = None
    user: str | None = None
    read_only: bool | None = None
    init: bool | None = None
    stop_signal: str | None = None
    stop_grace_period: float | None = None

    def apply(self, spec: ContainerSpec) -> ContainerSpec:
        return replace(
            spec,
            entrypoint=_either(self.entrypoint, spec.entrypoint),
            workdir=_either(self.workdir, spec.workdir),
            user=_either(self.user, spec.user),
            read_only=_either(self.read_only, spec.read_only),
            init=_either(self.init, spec.init),
            stop_signal=_either(self.stop_signal, spec.stop_signal),
            stop_grace_period=_either(self.stop_grace_period, spec.stop_grace_period),
        )


# What Docker's CMD-SHELL runs a health command with.
HEALTH_SHELL = ("/bin/sh", "-c")
_PROBE_FLAGS = "--health-cmd, --health-http or --health-tcp"


@dataclass(frozen=True)
class HealthOptions:
    """A health check's probe (at most one) and timing; ``None`` means not given."""

    health_cmd: str | None = None
    health_http: str | None = None
    health_tcp: int | None = None
    health_interval: float | None = None
    health_timeout: float | None = None
    health_retries: int | None = None
    health_start_period: float | None = None

    @property
    def given(self) -> bool:
        return any(getattr(self, f.name) is not None for f in fields(self))

    def _probe(self) -> dict[str, Any]:
        probes: dict[str, dict[str, Any]] = {}
        if self.health_cmd is not None:
            if not self.health_cmd.strip():
                raise InvalidArgument("--health-cmd must not be empty")
            probes["--health-cmd"] = {"cmd": (*HEALTH_SHELL, self.health_cmd)}
        if self.health_http is not None:
            probes["--health-http"] = {"http": self.health_http}
        if self.health_tcp is not None:
            probes["--health-tcp"] = {"tcp": self.health_tcp}
        if len(probes) > 1:
            raise InvalidArgument(f"use only one of {', '.join(probes)}: a check has one probe")
        return next(iter(probes.values()), {})

    def _timing(self) -> dict[str, Any]:
        values = {
            "interval": self.health_interval,
            "timeout": self.health_timeout,
            "retries": self.health_retries,
            "start_period": self.health_start_period,
        }
        return {name: value for name, value in values.items() if value is not None}

    def apply(self, current: HealthCheck | None) -> HealthCheck | None:
        """The check these options make of ``current``; timing alone keeps its probe."""
        probe, timing = self._probe(), self._timing()
        if not probe and timing:
            if current is None:
                flag = "--health-" + next(iter(timing)).replace("_", "-")
                raise InvalidArgument(f"{flag} needs a health check: add {_PROBE_FLAGS}")
            return replace(current, **timing)
        if not probe:
            return current
        if current is None:
            return HealthCheck(**probe, **timing)
        # A new probe replaces the old one; timing not given stays as it was.
        no_probe: dict[str, Any] = {"cmd": (), "http": "", "tcp": 0}
        return replace(current, **{**no_probe, **probe, **timing})


HOST_NETWORK = "host"


@dataclass(frozen=True)
class NetworkOptions:
    """``--network``, ``--publish`` and ``--endpoint-mode`` on create: networks by
    name or ID (none: the default network), ports as ``parse_publish`` reads them."""

    network: tuple[str, ...] = ()
    publish: tuple[PortConfig, ...] = ()
    endpoint_mode: str | None = None

    def apply(self, spec: ServiceSpec) -> ServiceSpec:
        mode = EndpointMode(self.endpoint_mode or EndpointMode.VIP)
        endpoint = EndpointSpec(mode=mode, ports=self.publish)
        if HOST_NETWORK not in self.network:
            return replace(spec, networks=self.network, endpoint=endpoint)
        # As with Docker, `--network host` means the node's own network namespace.
        if len(self.network) > 1:
            raise InvalidArgument("--network host uses the node's network: it joins no other")
        container = replace(spec.container, network_mode=NetworkMode.HOST)
        return replace(spec, container=container, endpoint=endpoint)


@dataclass(frozen=True)
class NetworkChanges:
    """``--network-add/-rm`` (IDs: the command resolves names), ``--publish-add/-rm``
    and ``--endpoint-mode`` on update."""

    network_add: tuple[str, ...] = ()
    network_rm: tuple[str, ...] = ()
    publish_add: tuple[PortConfig, ...] = ()
    publish_rm: tuple[PortConfig, ...] = ()
    endpoint_mode: str | None = None
    # `--network private|host`: the container's own namespace or the node's.
    network_mode: str | None = None

    def apply(self, spec: ServiceSpec) -> ServiceSpec:
        if self.network_mode is not None:
            container = replace(spec.container, network_mode=NetworkMode(self.network_mode))
            spec = replace(spec, container=container)
        removed = set(self.network_rm)
        networks = [n for n in spec.networks if n not in removed]
        networks += [n for n in self.network_add if n not in networks]
        ports = [
            p for p in spec.endpoint.ports if not any(_same_port(p, r) for r in self.publish_rm)
        ]
        ports = [
            p for p in ports if not any(p.key == a.key for a in self.publish_add if a.published)
        ]
        endpoint = EndpointSpec(
            mode=EndpointMode(self.endpoint_mode or spec.endpoint.mode),
            ports=(*ports, *self.publish_add),
        )
        return replace(spec, networks=tuple(networks), endpoint=endpoint)


def _same_port(port: PortConfig, removal: PortConfig) -> bool:
    """``--publish-rm 80`` removes target 80; ``--publish-rm 8080:80`` only that pair."""
    if removal.protocol != port.protocol or removal.target != port.target:
        return False
    return not removal.published or removal.published == port.published


@dataclass(frozen=True)
class CreateOptions:
    name: str
    image: str
    mode: str = "replicated"
    replicas: int | None = None
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    constraints: tuple[str, ...] = ()
    resources: ResourceOptions = field(default_factory=ResourceOptions)
    restart: RestartOptions = field(default_factory=RestartOptions)
    max_replicas_per_node: int | None = None
    container: ContainerOptions = field(default_factory=ContainerOptions)
    health: HealthOptions = field(default_factory=HealthOptions)
    networks: NetworkOptions = field(default_factory=NetworkOptions)


def build_spec(options: CreateOptions) -> ServiceSpec:
    mode = ServiceMode(options.mode)
    if mode == ServiceMode.GLOBAL and options.replicas is not None:
        raise InvalidArgument("--replicas cannot be used with --mode global")
    container = ContainerSpec(
        image=options.image,
        args=options.args,
        env=options.env,
        health=options.health.apply(None),
    )
    spec = ServiceSpec(
        name=options.name,
        container=options.container.apply(container),
        mode=mode,
        # Global services have no replica count; the manager stores 0 for them.
        replicas=_either(options.replicas, 0 if mode == ServiceMode.GLOBAL else 1),
        labels=options.labels,
        resources=options.resources.apply(ResourceRequirements()),
        placement=Placement(
            constraints=options.constraints,
            max_replicas_per_node=options.max_replicas_per_node or 0,
        ),
        restart=options.restart.apply(RestartPolicy()),
    )
    return options.networks.apply(spec)


@dataclass(frozen=True)
class SpecChanges:
    """What ``service update`` asks for; ``None`` and empty mean unchanged."""

    image: str | None = None
    replicas: int | None = None
    args: tuple[str, ...] | None = None
    env_add: dict[str, str] = field(default_factory=dict)
    env_rm: tuple[str, ...] = ()
    label_add: dict[str, str] = field(default_factory=dict)
    label_rm: tuple[str, ...] = ()
    constraint_add: tuple[str, ...] = ()
    constraint_rm: tuple[str, ...] = ()
    resources: ResourceOptions = field(default_factory=ResourceOptions)
    restart: RestartOptions = field(default_factory=RestartOptions)
    max_replicas_per_node: int | None = None
    container: ContainerOptions = field(default_factory=ContainerOptions)
    health: HealthOptions = field(default_factory=HealthOptions)
    no_healthcheck: bool = False
    networks: NetworkChanges = field(default_factory=NetworkChanges)


def apply_changes(spec: ServiceSpec, changes: SpecChanges) -> ServiceSpec:
    """The edited spec; removals apply before additions, as with Docker."""
    if changes.replicas is not None and spec.mode == ServiceMode.GLOBAL:
        raise InvalidArgument(f"service '{spec.name}' is global: --replicas does not apply")
    if changes.no_healthcheck and changes.health.given:
        raise InvalidArgument("--no-healthcheck cannot be combined with --health-* options")
    container = spec.container
    container = replace(
        container,
        image=_either(changes.image, container.image),
        args=_either(changes.args, container.args),
        env=_edit_map(container.env, changes.env_rm, changes.env_add),
        health=None if changes.no_healthcheck else changes.health.apply(container.health),
    )
    placement = spec.placement
    edited = replace(
        spec,
        container=changes.container.apply(container),
        replicas=_either(changes.replicas, spec.replicas),
        labels=_edit_map(spec.labels, changes.label_rm, changes.label_add),
        resources=changes.resources.apply(spec.resources),
        placement=Placement(
            constraints=_edit_constraints(
                placement.constraints, changes.constraint_rm, changes.constraint_add
            ),
            max_replicas_per_node=_either(
                changes.max_replicas_per_node, placement.max_replicas_per_node
            ),
        ),
        restart=changes.restart.apply(spec.restart),
    )
    return changes.networks.apply(edited)


def _edit_map(base: dict[str, str], remove: Iterable[str], add: dict[str, str]) -> dict[str, str]:
    removed = set(remove)
    out = {k: v for k, v in base.items() if k not in removed}
    out.update(add)
    return out


def _edit_constraints(
    base: tuple[str, ...], remove: Iterable[str], add: Iterable[str]
) -> tuple[str, ...]:
    # Compared parsed, so "node.role == worker" removes "node.role==worker".
    removed = {parse_constraint(expr) for expr in remove}
    kept = [expr for expr in base if parse_constraint(expr) not in removed]
    for expr in add:
        if parse_constraint(expr) not in {parse_constraint(e) for e in kept}:
            kept.append(expr)
    return tuple(kept)
