"""`cluster init` never replaces admin credentials already in the config dir unless forced."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from warren.core.errors import FailedPrecondition
from warren.manager.manager import ManagerState
from warren.node.daemon import check_admin_credentials_free, serve_manager
from warren.node.options import ManagerOptions
from warren.security.tls import IdentityFiles


def _options(tmp_path: Path) -> ManagerOptions:
    return ManagerOptions(tmp_path / "data", runtime="sim", config_dir=tmp_path / "config")


def _hold_credentials(config_dir: Path) -> dict[str, bytes]:
    IdentityFiles(config_dir).save(b"old ca", b"old cert", b"old key")
    (config_dir / "config.json").write_text('{"managers": ["10.0.0.9:2377"]}')
    return {path.name: path.read_bytes() for path in config_dir.iterdir()}


def test_an_empty_config_dir_is_free(tmp_path: Path) -> None:
    check_admin_credentials_free(_options(tmp_path))
    (tmp_path / "config").mkdir()
    check_admin_credentials_free(_options(tmp_path))


def test_a_new_cluster_refuses_to_replace_credentials_and_says_where(tmp_path: Path) -> None:
    options = _options(tmp_path)
    _hold_credentials(options.config_dir)
    with pytest.raises(FailedPrecondition) as refused:
        check_admin_credentials_free(options)
    message = str(refused.value)
    assert str(options.config_dir) in message
    assert "ca.pem, cert.pem, key.pem, config.json" in message
    assert "--force" in message
    assert "\n" not in message


def test_a_lone_config_json_is_refused_too(tmp_path: Path) -> None:
    options = _options(tmp_path)
    options.config_dir.mkdir()
    (options.config_dir / "config.json").write_text("{}")
    with pytest.raises(FailedPrecondition, match=r"\(config\.json\)"):
        check_admin_credentials_free(options)


def test_force_restart_join_and_promotion_write_nothing_so_pass(tmp_path: Path) -> None:
    options = _options(tmp_path)
    _hold_credentials(options.config_dir)
    check_admin_credentials_free(replace(options, replace_admin_credentials=True))
    check_admin_credentials_free(replace(options, join_token="t", join_managers=["m:1"]))
    check_admin_credentials_free(replace(options, promote=True, join_managers=["m:1"]))
    # A restart of the manager that wrote them.
    options.data_dir.mkdir()
    ManagerState("n1", "c1").save(options.data_dir)
    check_admin_credentials_free(options)


def test_a_refused_init_changes_nothing(tmp_path: Path) -> None:
    options = _options(tmp_path)
    before = _hold_credentials(options.config_dir)
    with pytest.raises(FailedPrecondition, match="already holds admin credentials"):
        asyncio.run(serve_manager(options, asyncio.Event()))
    assert {path.name: path.read_bytes() for path in options.config_dir.iterdir()} == before
    assert not options.data_dir.exists()
