"""Placement constraints: ``node.id|node.hostname|node.role|node.labels.KEY ==|!= VALUE``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

from warren.core.errors import InvalidArgument
from warren.core.validation import show

if TYPE_CHECKING:
    from warren.core.models import Node

_EXPR = re.compile(
    r"^\s*(node\.(?:id|hostname|role|labels\.[A-Za-z0-9_./-]+))\s*(==|!=)\s*(.+?)\s*$"
)


@dataclass(frozen=True)
class Constraint:
    field: str
    equal: bool
    value: str

    def node_value(self, node: Node) -> str | None:
        if self.field == "node.id":
            return node.id
        if self.field == "node.hostname":
            return node.hostname
        if self.field == "node.role":
            return str(node.role)
        return node.labels.get(self.field.removeprefix("node.labels."))

    def matches(self, node: Node) -> bool:
        actual = self.node_value(node)
        # A missing label never equals a value, and always differs from one.
        return (actual == self.value) if self.equal else (actual != self.value)

    def __str__(self) -> str:
        return f"{self.field}{'==' if self.equal else '!='}{self.value}"


@cache
def parse_constraint(expr: str) -> Constraint:
    match = _EXPR.match(expr)
    if not match:
        raise InvalidArgument(
            f"invalid constraint {show(expr)}: expected node.id|node.hostname|node.role|"
            "node.labels.KEY followed by == or != and a value"
        )
    field, op, value = match.groups()
    return Constraint(field=field, equal=op == "==", value=value)
