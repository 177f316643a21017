"""The Raft journal is flushed to disk before an entry can be acknowledged."""

from __future__ import annotations

from pathlib import Path

import pysyncobj.syncobj as pysyncobj_core
import pytest

from warren.manager import raft


def test_pysyncobj_builds_the_durable_journal(tmp_path: Path) -> None:
    journal = pysyncobj_core.createJournal(str(tmp_path / "journal"))
    assert isinstance(journal, raft._DurableJournal)


def test_every_change_is_flushed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    journal = raft._DurableJournal(str(tmp_path / "journal"))
    flushes: list[str] = []
    monkeypatch.setattr(journal, "flush", lambda: flushes.append("flush"))
    journal.add(b"a", 1, 1)
    journal.add(b"b", 2, 1)
    journal.deleteEntriesFrom(1)
    journal.clear()
    assert flushes == ["flush"] * 4
    reopened = raft._DurableJournal(str(tmp_path / "journal"))
    assert len(reopened) == 0
