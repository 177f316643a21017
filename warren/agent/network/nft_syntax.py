"""Warren's libnftables JSON commands written in nft's own syntax.

The planner speaks libnftables' JSON (what nft_model executes), but the JSON
parser of libnftables 1.0.6 cannot declare a map keyed by a numgen value: its
integer type has no size, and ``typeof`` is not read from JSON. nft's own
syntax can (``typeof ... numgen random mod 1``), so the packet filter sends
every transaction written this way; one buffer is still one transaction.

Only the vocabulary vip_rules uses is known; anything else is an error, never
a guess. A map given ``typeof`` (an expression) instead of ``type`` (type
names) is the one extension of the JSON schema.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from warren.core.errors import InvalidArgument

Command = dict[str, Any]


def render(commands: Sequence[Command]) -> str:
    """The commands as one nft script, one command a line."""
    return "".join(_command(command) + "\n" for command in commands)


def _unknown(what: str, value: Any) -> InvalidArgument:
    return InvalidArgument(f"nft_syntax cannot write {what} {str(value)[:200]}")


def _command(command: Command) -> str:
    ((verb, body),) = command.items()
    ((kind, spec),) = body.items()
    if kind == "table":
        return f"{verb} table {spec['family']} {spec['name']}"
    where = f"{spec['family']} {spec['table']}"
    if kind == "rule" and verb == "add":
        return f"add rule {where} {_name(spec['chain'])} {_statements(spec['expr'])}"
    if kind == "chain" and verb in ("add", "flush", "delete"):
        hook = ""
        if "hook" in spec:
            hook = (f" {{ type {spec['type']} hook {spec['hook']} priority {spec['prio']}; "
                    f"policy {spec['policy']}; }}")  # fmt: skip
        return f"{verb} chain {where} {_name(spec['name'])}{hook}"
    if kind in ("map", "set") and verb == "add":
        return f"add {kind} {where} {_name(spec['name'])} {{ {_set_body(kind, spec)} }}"
    if kind == "element" and verb in ("add", "delete"):
        items = ", ".join(_element(item) for item in spec["elem"])
        return f"{verb} element {where} {_name(spec['name'])} {{ {items} }}"
    raise _unknown("the command", command)


def _name(name: str) -> str:
    # nft's identifiers: a letter first, then letters, digits, "-", "_" and ".".
    if not name[:1].isalpha() or not all(c.isalnum() or c in "-_." for c in name):
        raise _unknown("the name", name)
    return name


def _type(value: Any) -> str:
    if isinstance(value, dict) and "typeof" in value:
        return f"typeof {_expr(value['typeof'])}"
    names = [value] if isinstance(value, str) else list(value)
    return "type " + " . ".join(names)


def _set_body(kind: str, spec: dict[str, Any]) -> str:
    key = _type({"typeof": spec["typeof"]} if "typeof" in spec else spec["type"])
    if kind == "map":
        data = spec["map"]
        data_text = _type(data).removeprefix("type ").removeprefix("typeof ")
        key += f" : {data_text}"
    flags = f" flags {', '.join(spec['flags'])};" if spec.get("flags") else ""
    return f"{key};{flags}"


def _element(item: Any) -> str:
    if isinstance(item, list):
        key, value = item
        return f"{_expr(key)} : {_verdict_or_expr(value)}"
    return _expr(item)


def _verdict_or_expr(value: Any) -> str:
    if isinstance(value, dict) and len(value) == 1 and next(iter(value)) in ("jump", "goto"):
        return _statement(value)
    return _expr(value)


def _expr(value: Any) -> str:
    if isinstance(value, bool):
        raise _unknown("the value", value)
    if isinstance(value, (int, str)):
        return str(value)
    if not isinstance(value, dict) or len(value) != 1:
        raise _unknown("the expression", value)
    ((kind, body),) = value.items()
    writer = _EXPRESSIONS.get(kind)
    if writer is None:
        raise _unknown("the expression", value)
    return writer(body)


def _binary(op: str) -> Callable[[Any], str]:
    return lambda body: f"{_expr(body[0])} {op} {_expr(body[1])}"


_EXPRESSIONS: dict[str, Callable[[Any], str]] = {
    "payload": lambda b: f"{b['protocol']} {b['field']}",
    "meta": lambda b: f"meta {b['key']}",
    "ct": lambda b: f"ct {b['key']}",
    "fib": lambda b: f"fib {' . '.join(b['flags'])} {b['result']}",
    "numgen": lambda b: (
        f"numgen {b['mode']} mod {b['mod']}" + (f" offset {b['offset']}" if b.get("offset") else "")
    ),
    "concat": lambda b: " . ".join(_expr(item) for item in b),
    "prefix": lambda b: f"{b['addr']}/{b['len']}",
    "range": lambda b: f"{_expr(b[0])}-{_expr(b[1])}",
    "set": lambda b: "{ " + ", ".join(_element(item) for item in b) + " }",
    "map": lambda b: f"{_expr(b['key'])} map {_expr(b['data'])}",
    "&": _binary("&"),
    "|": _binary("|"),
    "^": _binary("^"),
}


def _statements(expr: list[Any]) -> str:
    return " ".join(_statement(item) for item in expr)


def _match(body: dict[str, Any]) -> str:
    # "==" and "in" (a flag test such as ct state new) are nft's implicit operator.
    op = {"==": "", "in": "", "!=": "!= "}.get(body["op"])
    if op is None:
        raise _unknown("the operator", body["op"])
    return f"{_expr(body['left'])} {op}{_expr(body['right'])}"


def _reject(body: Any) -> str:
    if body is None:
        return "reject"
    if body == {"type": "tcp reset"}:
        return "reject with tcp reset"
    raise _unknown("the reject", body)


def _masquerade(body: Any) -> str:
    flags = (body or {}).get("flags", [])
    return " ".join(["masquerade", *flags])


def _dnat(body: dict[str, Any]) -> str:
    addr = body["addr"]
    if isinstance(addr, dict) and "map" in addr:
        # The map's value is address . port.
        return f"dnat {body.get('family', 'ip')} to {_expr(addr)}"
    port = f":{body['port']}" if "port" in body else ""
    return f"dnat to {_expr(addr)}{port}"


_STATEMENTS: dict[str, Callable[[Any], str]] = {
    "match": _match,
    "jump": lambda b: f"jump {_name(b['target'])}",
    "goto": lambda b: f"goto {_name(b['target'])}",
    "mangle": lambda b: f"{_expr(b['key'])} set {_expr(b['value'])}",
    "vmap": lambda b: f"{_expr(b['key'])} vmap {_expr(b['data'])}",
    "reject": _reject,
    "drop": lambda b: "drop",
    "masquerade": _masquerade,
    "dnat": _dnat,
}


def _statement(value: Any) -> str:
    if not isinstance(value, dict) or len(value) != 1:
        raise _unknown("the statement", value)
    ((kind, body),) = value.items()
    writer = _STATEMENTS.get(kind)
    if writer is None:
        raise _unknown("the statement", value)
    return writer(body)
