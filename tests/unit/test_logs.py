"""WARREN_LOG_LEVEL: a name of any case picks the daemon's level; anything else is refused."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from warren import logs
from warren.core.errors import InvalidArgument


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize(
    ("value", "level"),
    [("debug", logging.DEBUG), ("Warning", logging.WARNING), ("ERROR", logging.ERROR)],
)
def test_a_level_name_in_any_case_sets_the_level(
    root_logger: logging.Logger, monkeypatch: pytest.MonkeyPatch, value: str, level: int
) -> None:
    monkeypatch.setenv("WARREN_LOG_LEVEL", value)
    logs.setup("test")
    assert root_logger.level == level
    assert isinstance(root_logger.handlers[0].formatter, logs.JsonFormatter)


def test_the_default_is_info(root_logger: logging.Logger, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WARREN_LOG_LEVEL", raising=False)
    logs.setup("test")
    assert root_logger.level == logging.INFO


@pytest.mark.parametrize("value", ["bogus", "", "10", "in fo"])
def test_anything_else_is_one_error_and_changes_nothing(
    root_logger: logging.Logger, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("WARREN_LOG_LEVEL", value)
    handlers, level = root_logger.handlers[:], root_logger.level
    with pytest.raises(InvalidArgument, match=r"^WARREN_LOG_LEVEL=.* is not a log level: use "):
        logs.setup("test")
    assert (root_logger.handlers, root_logger.level) == (handlers, level)
