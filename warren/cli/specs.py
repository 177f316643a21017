"""Service specs from command-line options: built for ``create``, edited for ``update``.

``ServiceSpec`` validates itself, so a bad name, key or constraint is refused
here, before anything is sent.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import TypeVar

from warren.core.constraints import parse_constraint
from warren.core.errors import InvalidArgument
from warren.core.models import (
    Resources,
    RestartCondition,
    RestartPolicy,
    ServiceMode,
    ServiceSpec,
)

T = TypeVar("T")


@dataclass(frozen=True)
class ResourceOptions:
    reserve_cpu: float | None = None
    reserve_memory: int | None = None
    limit_cpu: float | None = None
    limit_memory: int | None = None

    def apply(self, reservations: Resources, limits: Resources) -> tuple[Resources, Resources]:
        return (
            _resources(reservations, self.reserve_cpu, self.reserve_memory),
            _resources(limits, self.limit_cpu, self.limit_memory),
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


def build_spec(options: CreateOptions) -> ServiceSpec:
    mode = ServiceMode(options.mode)
    if mode == ServiceMode.GLOBAL and options.replicas is not None:
        raise InvalidArgument("--replicas cannot be used with --mode global")
    reservations, limits = options.resources.apply(Resources(), Resources())
    return ServiceSpec(
        name=options.name,
        image=options.image,
        mode=mode,
        # Global services have no replica count; the manager stores 0 for them.
        replicas=_either(options.replicas, 0 if mode == ServiceMode.GLOBAL else 1),
        args=options.args,
        env=options.env,
        labels=options.labels,
        constraints=options.constraints,
        reservations=reservations,
        limits=limits,
        restart_policy=options.restart.apply(RestartPolicy()),
        max_replicas_per_node=options.max_replicas_per_node or 0,
    )


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


def apply_changes(spec: ServiceSpec, changes: SpecChanges) -> ServiceSpec:
    """The edited spec; removals apply before additions, as with Docker."""
    if changes.replicas is not None and spec.mode == ServiceMode.GLOBAL:
        raise InvalidArgument(f"service '{spec.name}' is global: --replicas does not apply")
    reservations, limits = changes.resources.apply(spec.reservations, spec.limits)
    return replace(
        spec,
        image=_either(changes.image, spec.image),
        replicas=_either(changes.replicas, spec.replicas),
        args=_either(changes.args, spec.args),
        env=_edit_map(spec.env, changes.env_rm, changes.env_add),
        labels=_edit_map(spec.labels, changes.label_rm, changes.label_add),
        constraints=_edit_constraints(
            spec.constraints, changes.constraint_rm, changes.constraint_add
        ),
        reservations=reservations,
        limits=limits,
        restart_policy=changes.restart.apply(spec.restart_policy),
        max_replicas_per_node=_either(changes.max_replicas_per_node, spec.max_replicas_per_node),
    )


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
