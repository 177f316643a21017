"""RuncState's decisions, against a stand-in runc that records its calls.

The real runc is exercised in tests/containerd/test_containerd_restart.py
(dead records deleted, a live container's record refused)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from warren.agent.containerd.runc_state import RuncState
from warren.core.errors import FailedPrecondition, RuntimeFailure

NAMESPACE = "ns"


def fake_runc(tmp_path: Path, state_answer: str, exit_code: int = 0) -> tuple[Path, Path]:
    """A runc that logs its arguments and answers ``state`` with ``state_answer``."""
    calls = tmp_path / "calls"
    script = tmp_path / "runc"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {calls}\n'
        f"case \"$3\" in state) printf %s '{state_answer}';; esac\n"
        f'[ "$3" = state ] && exit {exit_code}\n'
        "exit 0\n"
    )
    script.chmod(0o755)
    return script, calls


def with_record(tmp_path: Path, container_id: str) -> Path:
    root = tmp_path / "runc-root"
    (root / NAMESPACE / container_id).mkdir(parents=True)
    (root / NAMESPACE / container_id / "state.json").write_text("{}")
    return root


async def test_no_record_asks_nothing(tmp_path: Path) -> None:
    script, calls = fake_runc(tmp_path, "")
    await RuncState(tmp_path / "runc-root", NAMESPACE, str(script)).remove_dead("c1")
    assert not calls.exists()


async def test_a_dead_record_is_deleted_without_force(tmp_path: Path) -> None:
    root = with_record(tmp_path, "c1")
    script, calls = fake_runc(tmp_path, json.dumps({"status": "stopped", "pid": 0}))
    await RuncState(root, NAMESPACE, str(script)).remove_dead("c1")
    records = root / NAMESPACE
    assert calls.read_text().splitlines() == [
        f"--root {records} state c1",
        f"--root {records} delete c1",
    ]


@pytest.mark.parametrize("status", ["running", "created", "paused"])
async def test_a_live_record_is_refused_and_kept(tmp_path: Path, status: str) -> None:
    root = with_record(tmp_path, "c1")
    script, calls = fake_runc(tmp_path, json.dumps({"status": status, "pid": 4242}))
    with pytest.raises(
        FailedPrecondition, match=f"live process under runc \\(pid 4242, {status}\\)"
    ):
        await RuncState(root, NAMESPACE, str(script)).remove_dead("c1")
    assert [line.split()[2] for line in calls.read_text().splitlines()] == ["state"]


async def test_an_unreadable_answer_deletes_nothing(tmp_path: Path) -> None:
    root = with_record(tmp_path, "c1")
    script, calls = fake_runc(tmp_path, "not json")
    with pytest.raises(RuntimeFailure, match="unreadable answer"):
        await RuncState(root, NAMESPACE, str(script)).remove_dead("c1")
    assert "delete" not in calls.read_text()


async def test_runc_failing_is_a_runtime_failure(tmp_path: Path) -> None:
    root = with_record(tmp_path, "c1")
    script, calls = fake_runc(tmp_path, "", exit_code=1)
    with pytest.raises(RuntimeFailure, match="runc state c1"):
        await RuncState(root, NAMESPACE, str(script)).remove_dead("c1")
    assert "delete" not in calls.read_text()


async def test_a_missing_runc_is_a_runtime_failure(tmp_path: Path) -> None:
    root = with_record(tmp_path, "c1")
    with pytest.raises(RuntimeFailure, match="cannot run"):
        await RuncState(root, NAMESPACE, str(tmp_path / "no-runc")).remove_dead("c1")
