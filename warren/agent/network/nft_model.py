"""A model of one nftables table that executes libnftables JSON commands.

It is as strict as the kernel where a planner can go wrong: adding an element
whose key exists, deleting what is missing, a jump to a chain that does not
exist, deleting a chain that still has rules or is still jumped to, touching a
table that is not there. Each transaction applies to a copy and replaces the
table only if every command succeeds, as nftables' transactions do. It backs
the fake packet filter and the planner's property tests. Key and value types
(type, typeof) are not modelled: tests/network runs the same plans through the
kernel, which checks them.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from warren.core.errors import FailedPrecondition


class ModelError(FailedPrecondition):
    """A command the kernel would refuse."""


@dataclass
class TableModel:
    chains: dict[str, list[str]] = field(default_factory=dict)  # name -> rules (JSON text)
    base_chains: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    maps: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> key -> verdict
    sets: dict[str, set[str]] = field(default_factory=dict)

    def references(self) -> Iterator[str]:
        """Every chain some rule or map element jumps to."""
        for rules in self.chains.values():
            for rule in rules:
                yield from _targets(json.loads(rule))
        for elements in self.maps.values():
            for verdict in elements.values():
                yield from _targets(json.loads(verdict))


def _targets(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("jump", "goto") and isinstance(value, dict):
                yield value["target"]
            else:
                yield from _targets(value)
    elif isinstance(node, list):
        for item in node:
            yield from _targets(item)


def _text(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


class NftModel:
    """Tables by (family, name); apply() is all or nothing."""

    def __init__(self) -> None:
        self.tables: dict[tuple[str, str], TableModel] = {}

    def apply(self, commands: Sequence[dict[str, Any]]) -> None:
        tables = copy.deepcopy(self.tables)
        for command in commands:
            _execute(tables, command)
        self.tables = tables

    def table(self, family: str, name: str) -> TableModel | None:
        return self.tables.get((family, name))


def _execute(tables: dict[tuple[str, str], TableModel], command: dict[str, Any]) -> None:
    ((verb, body),) = command.items()
    ((kind, spec),) = body.items()
    if kind == "table":
        _table_command(tables, verb, (spec["family"], spec["name"]))
        return
    key = (spec["family"], spec["table"])
    table = tables.get(key)
    if table is None:
        raise ModelError(f"{verb} {kind}: no table {key}")
    handler = _HANDLERS.get((verb, kind))
    if handler is None:
        raise ModelError(f"unsupported command {verb} {kind}")
    handler(table, spec)


def _table_command(
    tables: dict[tuple[str, str], TableModel], verb: str, key: tuple[str, str]
) -> None:
    if verb == "add":
        tables.setdefault(key, TableModel())
    elif verb == "delete":
        if key not in tables:
            raise ModelError(f"delete table: no table {key}")
        del tables[key]
    else:
        raise ModelError(f"unsupported command {verb} table")


def _add_chain(table: TableModel, spec: dict[str, Any]) -> None:
    name = spec["name"]
    table.chains.setdefault(name, [])
    if "hook" in spec:
        table.base_chains[name] = (spec["type"], spec["hook"], spec["prio"])


def _flush_chain(table: TableModel, spec: dict[str, Any]) -> None:
    _chain_rules(table, spec["name"]).clear()


def _delete_chain(table: TableModel, spec: dict[str, Any]) -> None:
    name = spec["name"]
    if _chain_rules(table, name):
        raise ModelError(f"delete chain {name}: it still has rules")
    if name in table.references():
        raise ModelError(f"delete chain {name}: it is still jumped to")
    del table.chains[name]
    table.base_chains.pop(name, None)


def _chain_rules(table: TableModel, name: str) -> list[str]:
    rules = table.chains.get(name)
    if rules is None:
        raise ModelError(f"no chain {name}")
    return rules


def _add_rule(table: TableModel, spec: dict[str, Any]) -> None:
    rules = _chain_rules(table, spec["chain"])
    for target in _targets(spec["expr"]):
        _chain_rules(table, target)
    for name in _named_references(spec["expr"]):
        if name not in table.maps and name not in table.sets:
            raise ModelError(f"rule refers to @{name}, which does not exist")
    rules.append(_text(spec["expr"]))


def _named_references(node: Any) -> Iterator[str]:
    if isinstance(node, str) and node.startswith("@"):
        yield node[1:]
    elif isinstance(node, dict):
        for value in node.values():
            yield from _named_references(value)
    elif isinstance(node, list):
        for item in node:
            yield from _named_references(item)


def _add_map(table: TableModel, spec: dict[str, Any]) -> None:
    table.maps.setdefault(spec["name"], {})


def _add_set(table: TableModel, spec: dict[str, Any]) -> None:
    table.sets.setdefault(spec["name"], set())


def _add_element(table: TableModel, spec: dict[str, Any]) -> None:
    name = spec["name"]
    if name in table.maps:
        elements = table.maps[name]
        for key, verdict in spec["elem"]:
            for target in _targets(verdict):
                _chain_rules(table, target)
            if _text(key) in elements:
                raise ModelError(f"add element to {name}: key {_text(key)} exists")
            elements[_text(key)] = _text(verdict)
    elif name in table.sets:
        members = table.sets[name]
        for item in spec["elem"]:
            if _text(item) in members:
                raise ModelError(f"add element to {name}: {_text(item)} exists")
            members.add(_text(item))
    else:
        raise ModelError(f"add element: no set or map {name}")


def _delete_element(table: TableModel, spec: dict[str, Any]) -> None:
    name = spec["name"]
    container: dict[str, str] | set[str]
    if name in table.maps:
        container = table.maps[name]
    elif name in table.sets:
        container = table.sets[name]
    else:
        raise ModelError(f"delete element: no set or map {name}")
    for item in spec["elem"]:
        text = _text(item)
        if text not in container:
            raise ModelError(f"delete element from {name}: no {text}")
        if isinstance(container, dict):
            del container[text]
        else:
            container.discard(text)


_HANDLERS = {
    ("add", "chain"): _add_chain,
    ("flush", "chain"): _flush_chain,
    ("delete", "chain"): _delete_chain,
    ("add", "rule"): _add_rule,
    ("add", "map"): _add_map,
    ("add", "set"): _add_set,
    ("add", "element"): _add_element,
    ("delete", "element"): _delete_element,
}
