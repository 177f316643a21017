"""docs/cli.md and docs/api.md describe the commands and calls the code has."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from warren.cli.main import cli

DOCS = Path(__file__).resolve().parents[2] / "docs"
CLI_DOC = (DOCS / "cli.md").read_text()
API_DOC = (DOCS / "api.md").read_text()
PROTO = (Path(__file__).resolve().parents[2] / "warren" / "proto" / "warren.proto").read_text()
# Sections that document their options by naming another command's.
BORROWED = {"cluster restore": "cluster init", "manager join": "cluster init"}


def _commands(command: click.Command, path: str = "") -> Iterator[tuple[str, click.Command]]:
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _commands(sub, f"{path} {name}".strip())
    else:
        yield path, command


COMMANDS = dict(_commands(cli))


def _section(path: str) -> str:
    """The text under ``## `warren PATH ...``` (or ###) up to the next heading."""
    heading = re.compile(rf"^#{{2,3}} `warren {re.escape(path)}[` ].*$", re.MULTILINE)
    found = heading.search(CLI_DOC)
    assert found is not None, f"docs/cli.md has no section for 'warren {path}'"
    following = re.compile(r"^#{2,3} ", re.MULTILINE).search(CLI_DOC, found.end())
    return CLI_DOC[found.end() : following.start() if following else len(CLI_DOC)]


def _spellings(option: click.Option) -> list[str]:
    """How docs/cli.md may write an option: any of its flags, or ``--[no-]NAME``."""
    flags = [*option.opts, *option.secondary_opts]
    return flags + [f"--[no-]{flag[2:]}" for flag in option.opts if option.secondary_opts]


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_every_command_and_option_is_documented(path: str) -> None:
    sections = [_section(path)]
    if path in BORROWED:
        sections.append(_section(BORROWED[path]))
    for param in COMMANDS[path].params:
        if not isinstance(param, click.Option) or param.name == "help":
            continue
        documented = any(
            re.search(rf"`{re.escape(flag)}[`, =\[]", text)
            for flag in _spellings(param)
            for text in sections
        )
        assert documented, f"docs/cli.md: 'warren {path}' does not mention {param.opts}"


def test_every_grpc_call_is_documented() -> None:
    calls = re.findall(r"^\s*rpc (\w+)\(", PROTO, re.MULTILINE)
    assert "PromoteNode" in calls and "Join" in calls
    missing = [call for call in calls if not re.search(rf"^\| `{call}[`(]", API_DOC, re.M)]
    assert missing == []


def test_no_doc_says_more_managers_are_unsupported() -> None:
    for text in (CLI_DOC, API_DOC):
        assert "not yet supported" not in text
        assert "accepts workers only" not in text
