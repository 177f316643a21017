"""Rendering: aligned tables, JSON/YAML documents, and Docker-style relative times."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import yaml

from warren.core.codec import to_dict

FORMATS = ("table", "json", "yaml")
# Docker truncates IDs to 12 characters in tables.
SHORT_ID = 12


def short_id(object_id: str) -> str:
    return object_id[:SHORT_ID]


def short_image(image: str) -> str:
    """An image reference as Docker shows it in tables: the familiar name
    (``docker.io/library/`` dropped) and 12 hex digits of a pinned digest,
    e.g. ``nginx:1.27@sha256:0123456789ab``."""
    name, at, digest = image.partition("@")
    algorithm, colon, hex_digits = digest.partition(":")
    if colon:
        digest = f"{algorithm}:{hex_digits[:SHORT_ID]}"
    return _familiar(name) + at + digest


def _familiar(name: str) -> str:
    hub, slash, rest = name.partition("/")
    if hub != "docker.io" or not slash:
        return name
    official = rest.removeprefix("library/")
    return official if "/" not in official else rest


def document(data: Any, fmt: str) -> str:
    """Models (or lists/dicts of them) as a JSON or YAML document."""
    plain = to_dict(data)
    if fmt == "yaml":
        return yaml.safe_dump(plain, sort_keys=False).rstrip("\n")
    return json.dumps(plain, indent=2)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns, three spaces apart, like Docker's tabwriter output."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = [
        "   ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in [headers, *rows]
    ]
    return "\n".join(lines)


def key_values(pairs: Sequence[tuple[str, str]]) -> str:
    width = max((len(key) for key, _ in pairs), default=0) + 1
    return "\n".join(f"{key + ':':<{width}} {value}".rstrip() for key, value in pairs)


def ago(timestamp: float, now: float) -> str:
    """``3 seconds ago``, ``about a minute ago``, ``2 hours ago`` (Docker's wording)."""
    return f"{human_duration(max(0.0, now - timestamp))} ago"


def human_duration(seconds: float) -> str:
    if seconds < 1:
        return "less than a second"
    if seconds < 2:
        return "1 second"
    minutes, hours = seconds / 60, seconds / 3600
    days = hours / 24
    steps: list[tuple[bool, str]] = [
        (minutes < 1, f"{int(seconds)} seconds"),
        (minutes < 2, "about a minute"),
        (minutes < 46, f"{round(minutes)} minutes"),
        (hours < 1.5, "about an hour"),
        (hours < 48, f"{round(hours)} hours"),
        (days < 14, f"{int(days)} days"),
        (days < 60, f"{int(days / 7)} weeks"),
        (days < 365 * 2, f"{int(days / 30)} months"),
    ]
    for applies, text in steps:
        if applies:
            return text
    return f"{int(days / 365)} years"
