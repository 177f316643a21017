"""``warren network doctor`` with a fake client: the table, the hints below it,
the documents, and the exit code (0: nothing failed, 1: something did)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from warren.cli.context import Wiring
from warren.cli.main import cli
from warren.core.doctor import CheckKind, CheckResult, DoctorCheck, DoctorReport
from warren.security.tls import IdentityFiles

HEALTHY = [
    DoctorReport(
        "r1",
        "n1",
        (
            DoctorCheck(CheckKind.HANDSHAKE, "peer n2", CheckResult.OK, "4s ago"),
            DoctorCheck(
                CheckKind.PUBLISHED,
                "web 127.0.0.1:5353 (ingress)",
                CheckResult.SKIP,
                "UDP: not probed",
            ),
        ),
        hostname="alpha",
    ),
    DoctorReport(
        "r1",
        "n2",
        (DoctorCheck(CheckKind.DNS, "web.front @ 10.32.65.1", CheckResult.OK, "10.32.0.2"),),
        hostname="beta",
    ),
]
BROKEN = [
    HEALTHY[0],
    DoctorReport(
        "r1",
        "n3",
        (
            DoctorCheck(
                CheckKind.NODE,
                "node n3",
                CheckResult.FAIL,
                "no answer from node gamma within 8s",
                "is it down? see 'warren node ls' and the node's agent log",
            ),
        ),
        hostname="gamma",
    ),
]


class FakeClient:
    def __init__(self, reports: list[DoctorReport]) -> None:
        self.reports = reports
        self.calls: list[tuple[str, float]] = []

    def network_doctor(self, service: str = "", timeout: float = 0.0) -> list[DoctorReport]:
        self.calls.append((service, timeout))
        return self.reports

    def close(self) -> None:
        pass


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "config"
    IdentityFiles(directory).save(b"ca", b"cert", b"key")
    (directory / "config.json").write_text(json.dumps({"managers": ["127.0.0.1:2377"]}))
    return directory


def run(config_dir: Path, client: FakeClient, *args: str) -> Result:
    wiring = Wiring(client_factory=lambda managers, identity: client)  # type: ignore[arg-type,return-value]
    env = {"WARREN_CONFIG_DIR": str(config_dir)}
    return CliRunner().invoke(cli, ["network", "doctor", *args], env=env, obj=wiring)


def test_all_ok_prints_the_matrix_and_exits_0(config_dir: Path) -> None:
    client = FakeClient(HEALTHY)
    result = run(config_dir, client)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["NODE", "CHECK", "TARGET", "RESULT", "DETAIL"]
    assert lines[1].split() == ["alpha", "handshake", "peer", "n2", "OK", "4s", "ago"]
    assert "SKIP" in lines[2] and "UDP: not probed" in lines[2]
    assert lines[3].split()[:2] == ["beta", "dns"]
    assert len(lines) == 4  # no hints: nothing failed
    assert client.calls == [("", 0.0)]


def test_a_failure_exits_1_with_its_reason_and_hint_below_the_table(config_dir: Path) -> None:
    client = FakeClient(BROKEN)
    result = run(config_dir, client, "--service", "web", "--timeout", "3")
    assert result.exit_code == 1, result.output
    table, hints = result.output.split("\n\n")
    assert table.splitlines()[3].split()[:5] == ["gamma", "node", "node", "n3", "FAIL"]
    assert hints.splitlines() == [
        "FAIL gamma node node n3: no answer from node gamma within 8s",
        "  hint: is it down? see 'warren node ls' and the node's agent log",
    ]
    assert client.calls == [("web", 3.0)]


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_documents_carry_every_report_and_keep_the_exit_code(config_dir: Path, fmt: str) -> None:
    result = run(config_dir, FakeClient(BROKEN), "-o", fmt)
    assert result.exit_code == 1
    data: Any = json.loads(result.output) if fmt == "json" else yaml.safe_load(result.output)
    assert [r["hostname"] for r in data] == ["alpha", "gamma"]
    assert data[1]["checks"][0] == {
        "kind": "node",
        "target": "node n3",
        "result": "fail",
        "detail": "no answer from node gamma within 8s",
        "hint": "is it down? see 'warren node ls' and the node's agent log",
    }


def test_a_timeout_out_of_range_is_refused_before_any_call(config_dir: Path) -> None:
    client = FakeClient(HEALTHY)
    result = run(config_dir, client, "--timeout", "0")
    assert result.exit_code == 2
    assert "--timeout" in result.output
    assert client.calls == []
