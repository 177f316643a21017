"""Backups: the encrypted file format, the state payload, restore preparation, the CLI."""

from __future__ import annotations

import base64
import json
import stat
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from factories import make_node, make_service, make_task

from warren.cli.context import Wiring
from warren.cli.main import cli
from warren.core.codec import to_dict
from warren.core.errors import FailedPrecondition, InvalidArgument, Unavailable
from warren.core.models import Cluster, NodeRole, NodeStatus
from warren.core.states import TaskState
from warren.manager.backup import (
    RESTORED_MESSAGE,
    capture_state,
    check_restore_target,
    prepare_restore,
    restore_ops,
    state_objects,
    take_backup,
)
from warren.manager.consensus import LocalConsensus
from warren.manager.manager import ManagerState
from warren.manager.store import Kind, Store, put, raise_for_result, txn
from warren.node.launch import Daemons
from warren.node.options import ManagerOptions
from warren.security.backup_file import (
    DAMAGED,
    Backup,
    BackupState,
    decode_state,
    decrypt_backup,
    encode_state,
    encrypt_backup,
    seal,
    unseal,
)
from warren.security.ca import CertificateAuthority, load_cert
from warren.security.tls import IdentityFiles, identity_from_pem

PASSPHRASE = "correct horse battery staple"


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("cluster-1")


def seeded_store(ca: CertificateAuthority) -> Store:
    store = Store()
    cluster = Cluster(
        id=ca.cluster_id,
        worker_token_secret="w" * 25,
        manager_token_secret="m" * 25,
        ca_fingerprint=ca.fingerprint,
        created_at=100.0,
    )
    web = make_service("web", replicas=2)
    db = make_service("db")
    manager = make_node("mgr-1", role=NodeRole.MANAGER)
    workers = [make_node("w-1", labels={"zone": "a"}), make_node("w-2")]
    tasks = [
        make_task(web, slot=1, node_id="w-1", state=TaskState.RUNNING),
        make_task(web, slot=2, node_id="w-2", state=TaskState.RUNNING),
        make_task(db, slot=1, node_id="mgr-1", state=TaskState.RUNNING),
    ]
    ops = [put(obj, None) for obj in (cluster, web, db, manager, *workers, *tasks)]
    raise_for_result(store.apply(txn(ops, at=100.0)))
    return store


@pytest.fixture
def state(ca: CertificateAuthority) -> BackupState:
    return capture_state(seeded_store(ca))


@pytest.fixture
def backup(ca: CertificateAuthority, state: BackupState) -> Backup:
    return Backup(state, ca.cert_pem, ca.key_pem)


# -- the encrypted envelope ----------------------------------------------------------


def test_seal_round_trip() -> None:
    sealed = seal(b"the payload", PASSPHRASE)
    assert b"the payload" not in sealed
    assert unseal(sealed, PASSPHRASE) == b"the payload"


def test_seal_uses_fresh_salt_and_nonce() -> None:
    first, second = (json.loads(seal(b"x", PASSPHRASE)) for _ in range(2))
    assert first["kdf"]["salt"] != second["kdf"]["salt"]
    assert first["nonce"] != second["nonce"]
    assert first["kdf"] | {"salt": ""} == {"name": "scrypt", "n": 2**15, "r": 8, "p": 1, "salt": ""}
    assert (first["format"], first["version"], first["cipher"]) == (
        "warren-backup",
        1,
        "aes-256-gcm",
    )


def test_wrong_passphrase_is_refused() -> None:
    sealed = seal(b"the payload", PASSPHRASE)
    with pytest.raises(InvalidArgument, match=f"^{DAMAGED}$"):
        unseal(sealed, PASSPHRASE + "!")


def test_passphrases_are_compared_in_one_unicode_form() -> None:
    composed, decomposed = "caf\u00e9 au lait", "cafe\u0301 au lait"
    assert unseal(seal(b"x", composed), decomposed) == b"x"


def _tamper(sealed: bytes, change: Any) -> bytes:
    envelope = json.loads(sealed)
    change(envelope)
    return json.dumps(envelope).encode()


def _flip_ciphertext_bit(envelope: dict[str, Any]) -> None:
    data = bytearray(base64.b64decode(envelope["ciphertext"]))
    data[3] ^= 0x01
    envelope["ciphertext"] = base64.b64encode(bytes(data)).decode()


@pytest.mark.parametrize(
    "change",
    [
        _flip_ciphertext_bit,
        lambda e: e.update(ciphertext=e["ciphertext"][:-8]),
        lambda e: e.update(nonce=base64.b64encode(b"\0" * 12).decode()),
        # The header is authenticated: a change to it fails like a wrong key.
        lambda e: e["kdf"].update(n=2**14),
        lambda e: e.update(extra="field"),
        lambda e: e.update(cipher="aes-128-gcm"),
        lambda e: e["kdf"].update(salt="not base64!"),
        lambda e: e.pop("nonce"),
        # A tampered cost that would exhaust memory is refused before the KDF runs.
        lambda e: e["kdf"].update(n=2**40),
        lambda e: e["kdf"].update(n=3),
        lambda e: e["kdf"].update(r=True),
    ],
)
def test_tampered_file_is_refused(change: Any) -> None:
    sealed = _tamper(seal(b"the payload", PASSPHRASE), change)
    with pytest.raises(InvalidArgument, match=f"^{DAMAGED}$"):
        unseal(sealed, PASSPHRASE)


@pytest.mark.parametrize("data", [b"", b"\x00\xff garbage", b"[1, 2]", b"{}"])
def test_garbage_is_refused(data: bytes) -> None:
    with pytest.raises(InvalidArgument) as caught:
        unseal(data, PASSPHRASE)
    assert str(caught.value) in (DAMAGED, "not a warren backup file")


def test_truncated_file_is_refused() -> None:
    sealed = seal(b"the payload", PASSPHRASE)
    with pytest.raises(InvalidArgument, match=f"^{DAMAGED}$"):
        unseal(sealed[: len(sealed) // 2], PASSPHRASE)


def test_newer_format_version_is_named() -> None:
    sealed = _tamper(seal(b"x", PASSPHRASE), lambda e: e.update(version=2))
    with pytest.raises(InvalidArgument, match="version 2 is not supported"):
        unseal(sealed, PASSPHRASE)


# -- the state ------------------------------------------------------------------------


def test_capture_state_is_the_whole_store(ca: CertificateAuthority) -> None:
    store = seeded_store(ca)
    state = capture_state(store)
    assert state.revision == store.revision
    assert state.cluster == store.cluster()
    objects = state_objects(state)
    # No network here: the table is left out (a version without networks can
    # restore the backup); networks restore before the services that join them.
    assert list(objects) == [Kind.NODE, Kind.SERVICE, Kind.TASK]
    assert "networks" not in state.tables
    assert {n.id for n in objects[Kind.NODE]} == {"mgr-1", "w-1", "w-2"}
    assert {s.spec.name for s in objects[Kind.SERVICE]} == {"web", "db"}
    assert len(objects[Kind.TASK]) == 3
    assert list(objects[Kind.TASK]) == sorted(objects[Kind.TASK], key=lambda t: t.id)
    # Each object as the store holds it.
    assert objects[Kind.NODE] == tuple(sorted(store.list(Kind.NODE), key=lambda n: n.id))


def test_capture_state_retries_when_the_cluster_moves(
    ca: CertificateAuthority, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = seeded_store(ca)
    real = store.cluster()
    assert real is not None
    answers = [replace(real, version=store.revision + 1), real]
    monkeypatch.setattr(store, "cluster", lambda: answers.pop(0))
    assert capture_state(store).cluster == real
    assert answers == []


def test_capture_state_needs_a_cluster() -> None:
    with pytest.raises(FailedPrecondition, match="not initialised"):
        capture_state(Store())


def test_state_json_round_trip(state: BackupState) -> None:
    encoded = encode_state(state)
    assert json.loads(encoded)["revision"] == state.revision
    assert decode_state(encoded) == state


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not json", "not JSON"),
        (b"[]", "expected an object"),
        (b'{"revision": 1}', "cluster is missing"),
        (b'{"revision": "1", "cluster": {}}', "revision: expected an integer"),
        (b'{"revision": 1, "cluster": {"id": "c"}}', "missing"),
    ],
)
def test_invalid_state_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        decode_state(data)


def test_invalid_state_objects_are_refused(state: BackupState) -> None:
    raw = json.loads(encode_state(state))
    raw["services"][0]["spec"]["replicas"] = -1
    with pytest.raises(InvalidArgument, match=r"invalid backup state: .*replicas"):
        state_objects(decode_state(json.dumps(raw).encode()))


def test_a_table_of_an_unknown_kind_is_refused(state: BackupState) -> None:
    raw = json.loads(encode_state(state))
    raw["gadgets"] = [{"id": "g1"}]
    with pytest.raises(InvalidArgument, match="holds 'gadgets', which this warren does not know"):
        state_objects(decode_state(json.dumps(raw).encode()))


@pytest.mark.parametrize(
    ("table", "message"),
    [({}, "nodes: expected a list"), (["x"], r"nodes\[0\]: expected an object")],
)
def test_a_malformed_table_is_refused(state: BackupState, table: Any, message: str) -> None:
    raw = json.loads(encode_state(state))
    raw["nodes"] = table
    with pytest.raises(InvalidArgument, match=message):
        decode_state(json.dumps(raw).encode())


def test_a_backup_of_the_previous_layout_loads(ca: CertificateAuthority) -> None:
    """A backup taken before kinds were registered: the same document."""
    store = seeded_store(ca)
    old = {
        "revision": store.revision,
        "cluster": to_dict(store.cluster()),
        "nodes": [to_dict(n) for n in sorted(store.list(Kind.NODE), key=lambda n: n.id)],
        "services": [to_dict(s) for s in sorted(store.list(Kind.SERVICE), key=lambda s: s.id)],
        "tasks": [to_dict(t) for t in sorted(store.list(Kind.TASK), key=lambda t: t.id)],
    }
    state = decode_state(json.dumps(old).encode())
    assert state == capture_state(store)
    assert state_objects(state)[Kind.SERVICE] == tuple(
        sorted(store.list(Kind.SERVICE), key=lambda s: s.id)
    )


async def test_take_backup_writes_a_barrier_first(ca: CertificateAuthority) -> None:
    consensus = LocalConsensus(seeded_store(ca))
    await consensus.start()
    proposed: list[dict[str, Any]] = []
    propose = consensus.propose

    async def recording(command: dict[str, Any], timeout: float = 10.0) -> Any:
        proposed.append(command)
        return await propose(command, timeout)

    consensus.propose = recording  # type: ignore[method-assign]
    backup = await take_backup(consensus, ca)
    assert proposed == [{"op": "barrier"}]
    assert backup.state == capture_state(consensus.store)
    assert (backup.ca_cert, backup.ca_key) == (ca.cert_pem, ca.key_pem)


# -- the whole file -------------------------------------------------------------------


def test_backup_file_round_trip(backup: Backup) -> None:
    sealed = encrypt_backup(backup, PASSPHRASE)
    assert b"BEGIN PRIVATE KEY" not in sealed
    assert decrypt_backup(sealed, PASSPHRASE) == backup


def test_backup_of_another_ca_is_refused(backup: Backup) -> None:
    other = CertificateAuthority.create("cluster-1")
    mixed = replace(backup, ca_cert=other.cert_pem, ca_key=other.key_pem)
    with pytest.raises(InvalidArgument, match="not the CA of its cluster"):
        decrypt_backup(encrypt_backup(mixed, PASSPHRASE), PASSPHRASE)


def test_backup_with_a_mismatched_ca_key_is_refused(backup: Backup) -> None:
    other = CertificateAuthority.create("cluster-1")
    mixed = replace(backup, ca_key=other.key_pem)
    with pytest.raises(InvalidArgument, match="does not match"):
        decrypt_backup(encrypt_backup(mixed, PASSPHRASE), PASSPHRASE)


# -- restore --------------------------------------------------------------------------


def test_restore_target_must_be_new_or_empty(tmp_path: Path) -> None:
    check_restore_target(tmp_path / "new")
    (tmp_path / "empty").mkdir()
    check_restore_target(tmp_path / "empty")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "manager.json").write_text("{}")
    with pytest.raises(FailedPrecondition, match="is not empty"):
        check_restore_target(tmp_path / "used")
    (tmp_path / "file").write_text("")
    with pytest.raises(FailedPrecondition, match="not a directory"):
        check_restore_target(tmp_path / "file")


def test_restore_ops_seed_a_new_store(state: BackupState) -> None:
    manager = make_node("mgr-new", role=NodeRole.MANAGER, status=NodeStatus.UNKNOWN)
    manager = replace(manager, created_at=500.0)
    store = Store()
    raise_for_result(store.apply(txn(restore_ops(state, manager), at=500.0)))
    assert store.cluster() == replace(state.cluster, version=1)
    nodes = {n.id: n for n in store.list(Kind.NODE)}
    # The old manager is gone; the workers wait to reconnect.
    assert set(nodes) == {"mgr-new", "w-1", "w-2"}
    for worker_id in ("w-1", "w-2"):
        assert nodes[worker_id].status == NodeStatus.DOWN
        assert nodes[worker_id].status_message == RESTORED_MESSAGE
    assert nodes["w-1"].labels == {"zone": "a"}
    services = {s.spec.name: s for s in store.list(Kind.SERVICE)}
    originals = {s.spec.name: s for s in state_objects(state)[Kind.SERVICE]}
    assert {n: s.spec for n, s in services.items()} == {n: s.spec for n, s in originals.items()}
    assert services["web"].id == originals["web"].id
    # Tasks are not restored: the orchestrator creates them afresh.
    assert store.list(Kind.TASK) == []


class FakeConsensus(LocalConsensus):
    """What ``new_consensus`` returns in prepare_restore: records what it was
    given, and like the etcd member keeps its files in the data dir's etcd/."""

    instances: list[FakeConsensus] = []
    fail: Exception | None = None

    def __init__(
        self,
        store: Store,
        options: ManagerOptions,
        ca: CertificateAuthority,
        members: list[str],
        **kwargs: Any,
    ) -> None:
        super().__init__(store)
        self.options = options
        self.ca = ca
        self.members = members
        self.kwargs = kwargs
        self.data_dir = options.data_dir / "etcd"
        FakeConsensus.instances.append(self)

    async def start(self) -> None:
        self.data_dir.mkdir(parents=True)
        (self.data_dir / "wal").write_text("")
        await super().start()

    async def propose(self, command: dict[str, Any], timeout: float = 10.0) -> Any:
        if FakeConsensus.fail is not None and command["op"] == "txn":
            raise FakeConsensus.fail
        return await super().propose(command, timeout)


@pytest.fixture
def fake_consensus(monkeypatch: pytest.MonkeyPatch) -> type[FakeConsensus]:
    # prepare_restore imports new_consensus from this module when it runs.
    import warren.manager.etcd.setup

    FakeConsensus.instances = []
    FakeConsensus.fail = None
    monkeypatch.setattr(warren.manager.etcd.setup, "new_consensus", FakeConsensus)
    return FakeConsensus


def _options(tmp_path: Path) -> ManagerOptions:
    return ManagerOptions(
        data_dir=tmp_path / "data",
        advertise_addr="10.0.0.9",
        api_port=4001,
        raft_port=4003,
        config_dir=tmp_path / "config",
        node_name="new-mgr",
        labels={"zone": "b"},
    )


async def test_prepare_restore_writes_a_resumable_manager(
    tmp_path: Path, fake_consensus: type[FakeConsensus], backup: Backup, ca: CertificateAuthority
) -> None:
    options = _options(tmp_path)
    node_id = await prepare_restore(options, backup)
    data = options.data_dir
    assert ManagerState.load(data) == ManagerState(node_id, ca.cluster_id)
    # Same CA; a new manager certificate for the new node.
    ca_pem, cert_pem, _ = IdentityFiles(data / "certs").load()
    assert ca_pem == ca.cert_pem
    assert (data / "certs" / "ca-key.pem").read_bytes() == ca.key_pem
    peer = identity_from_pem(cert_pem)
    assert (peer.node_id, peer.role, peer.cluster_id) == (node_id, "manager", ca.cluster_id)
    assert stat.S_IMODE((data / "certs" / "ca-key.pem").stat().st_mode) == 0o600
    # Admin credentials and the new manager's address in the config dir.
    admin_ca, admin_cert, _ = IdentityFiles(options.config_dir).load()
    assert admin_ca == ca.cert_pem
    assert identity_from_pem(admin_cert).role == "admin"
    config = json.loads((options.config_dir / "config.json").read_text())
    assert config == {"managers": ["10.0.0.9:4001"]}
    # The etcd member the manager resumes: a new cluster of one, of the backup's
    # CA, seeded with the backup's state.
    (consensus,) = fake_consensus.instances
    assert consensus.options is options
    assert consensus.members == [options.raft_address] == ["10.0.0.9:4003"]
    assert (consensus.kwargs["new_member"], consensus.kwargs["node_id"]) == (True, node_id)
    assert consensus.ca.cert_pem == ca.cert_pem and consensus.ca.key_pem == ca.key_pem
    assert (data / "etcd" / "wal").is_file()
    assert not consensus.is_leader  # stopped again
    manager = consensus.store.get(Kind.NODE, node_id)
    assert (manager.role, manager.hostname, manager.labels) == (
        NodeRole.MANAGER,
        "new-mgr",
        {"zone": "b"},
    )
    assert (manager.api_address, manager.raft_address) == ("10.0.0.9:4001", "10.0.0.9:4003")
    assert {s.spec.name for s in consensus.store.list(Kind.SERVICE)} == {"web", "db"}
    assert load_cert(ca_pem).subject == ca.cert.subject


async def test_failed_restore_leaves_the_data_dir_empty(
    tmp_path: Path, fake_consensus: type[FakeConsensus], backup: Backup
) -> None:
    options = _options(tmp_path)
    options.data_dir.mkdir()
    fake_consensus.fail = Unavailable("no quorum")
    with pytest.raises(Unavailable):
        await prepare_restore(options, backup)
    assert list(options.data_dir.iterdir()) == []
    assert not options.config_dir.exists()
    # A data dir the restore created is removed again.
    options.data_dir.rmdir()
    with pytest.raises(Unavailable):
        await prepare_restore(options, backup)
    assert not options.data_dir.exists()


async def test_prepare_restore_refuses_a_used_data_dir(
    tmp_path: Path, fake_consensus: type[FakeConsensus], backup: Backup
) -> None:
    options = _options(tmp_path)
    options.data_dir.mkdir()
    (options.data_dir / "keep").write_text("mine")
    with pytest.raises(FailedPrecondition, match="is not empty"):
        await prepare_restore(options, backup)
    assert (options.data_dir / "keep").read_text() == "mine"
    assert fake_consensus.instances == []


# -- the CLI --------------------------------------------------------------------------


class FakeClient:
    def __init__(self, backup: Backup) -> None:
        self._backup = backup
        self.calls = 0

    def backup(self) -> Backup:
        self.calls += 1
        return self._backup

    def close(self) -> None:
        pass


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "config"
    IdentityFiles(directory).save(b"ca", b"cert", b"key")
    (directory / "config.json").write_text(json.dumps({"managers": ["127.0.0.1:2377"]}))
    return directory


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, backup: Backup) -> FakeClient:
    monkeypatch.delenv("WARREN_BACKUP_PASSPHRASE", raising=False)
    monkeypatch.delenv("WARREN_MANAGER", raising=False)
    return FakeClient(backup)


def run(
    config_dir: Path,
    *args: str,
    env: dict[str, str] | None = None,
    client: FakeClient | None = None,
    daemons: Daemons | None = None,
    **kw: Any,
) -> Result:
    """The CLI with ``client`` and ``daemons`` handed in (click's obj) where given."""
    environment = {"WARREN_CONFIG_DIR": str(config_dir), **(env or {})}
    wiring = Wiring()
    if client is not None:
        wiring = replace(wiring, client_factory=lambda managers, identity: client)
    if daemons is not None:
        wiring = replace(wiring, daemons=daemons)
    return CliRunner().invoke(cli, list(args), env=environment, obj=wiring, **kw)


def one_error_line(result: Result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_backup_command_writes_a_private_encrypted_file(
    tmp_path: Path, config_dir: Path, fake: FakeClient, backup: Backup
) -> None:
    secret = tmp_path / "pass"
    secret.write_text(PASSPHRASE + "\n")
    out = tmp_path / "cluster.wbk"
    result = run(
        config_dir,
        "cluster",
        "backup",
        "-o",
        str(out),
        "--passphrase-file",
        str(secret),
        client=fake,
    )
    assert result.exit_code == 0, result.output
    assert f"at revision {backup.state.revision} (2 services, 3 nodes) to {out}" in result.stdout
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    # The passphrase file's trailing newline is not part of the passphrase.
    assert decrypt_backup(out.read_bytes(), PASSPHRASE) == backup


def test_backup_passphrase_from_the_environment(
    tmp_path: Path, config_dir: Path, fake: FakeClient, backup: Backup
) -> None:
    out = tmp_path / "b"
    env = {"WARREN_BACKUP_PASSPHRASE": PASSPHRASE}
    assert run(config_dir, "cluster", "backup", "-o", str(out), env=env, client=fake).exit_code == 0
    assert decrypt_backup(out.read_bytes(), PASSPHRASE) == backup


def test_backup_prompts_twice_for_the_passphrase(
    tmp_path: Path, config_dir: Path, fake: FakeClient, backup: Backup
) -> None:
    out = tmp_path / "b"
    typed = f"{PASSPHRASE}\n{PASSPHRASE}\n"
    result = run(config_dir, "cluster", "backup", "-o", str(out), input=typed, client=fake)
    assert result.exit_code == 0, result.output
    assert result.stderr.count("passphrase") == 2
    assert PASSPHRASE not in result.output
    assert decrypt_backup(out.read_bytes(), PASSPHRASE) == backup


def test_backup_refuses_a_short_passphrase_before_calling(
    tmp_path: Path, config_dir: Path, fake: FakeClient
) -> None:
    out = tmp_path / "b"
    env = {"WARREN_BACKUP_PASSPHRASE": "short"}
    result = run(config_dir, "cluster", "backup", "-o", str(out), env=env, client=fake)
    assert "at least 8 characters" in one_error_line(result)
    assert fake.calls == 0
    assert not out.exists()


def test_backup_needs_an_output_file(config_dir: Path, fake: FakeClient) -> None:
    result = run(config_dir, "cluster", "backup", client=fake)
    assert result.exit_code == 2
    assert "Missing option '-o'" in result.output


@pytest.fixture
def sealed_file(tmp_path: Path, backup: Backup) -> Path:
    path = tmp_path / "cluster.wbk"
    path.write_bytes(encrypt_backup(backup, PASSPHRASE))
    return path


@pytest.fixture
def restores(monkeypatch: pytest.MonkeyPatch) -> list[tuple[ManagerOptions, Backup]]:
    monkeypatch.delenv("WARREN_BACKUP_PASSPHRASE", raising=False)
    return []


@pytest.fixture
def daemons(restores: list[tuple[ManagerOptions, Backup]]) -> Daemons:
    """The CLI's daemons, with a restore that only records what it was given."""

    def restore_manager(options: ManagerOptions, data: Backup) -> int:
        restores.append((options, data))
        return 0

    return Daemons(restore_manager=restore_manager)


def test_restore_command_builds_manager_options(
    tmp_path: Path,
    config_dir: Path,
    sealed_file: Path,
    backup: Backup,
    restores: list[tuple[ManagerOptions, Backup]],
    daemons: Daemons,
) -> None:
    target = tmp_path / "restored"
    result = run(
        config_dir, "cluster", "restore", str(sealed_file), "--data-dir", str(target),
        "--api-port", "3001", "--raft-port", "3003", "--runtime", "sim",
        "--availability", "drain", "--node-name", "m2",
        input=PASSPHRASE + "\n", daemons=daemons,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    ((options, data),) = restores
    assert data == backup
    assert (options.data_dir, options.api_port, options.raft_port) == (target, 3001, 3003)
    assert (options.runtime, options.availability.value, options.node_name) == (
        "sim",
        "drain",
        "m2",
    )
    assert options.config_dir == config_dir


def test_restore_with_a_wrong_passphrase_touches_nothing(
    tmp_path: Path,
    config_dir: Path,
    sealed_file: Path,
    restores: list[tuple[ManagerOptions, Backup]],
    daemons: Daemons,
) -> None:
    target = tmp_path / "restored"
    target.mkdir()
    env = {"WARREN_BACKUP_PASSPHRASE": "not the passphrase"}
    result = run(
        config_dir,
        "cluster",
        "restore",
        str(sealed_file),
        "--data-dir",
        str(target),
        env=env,
        daemons=daemons,
    )
    assert one_error_line(result) == f"Error: {DAMAGED}"
    assert list(target.iterdir()) == []
    assert restores == []


def test_restore_refuses_a_used_data_dir_before_asking(
    tmp_path: Path,
    config_dir: Path,
    sealed_file: Path,
    restores: list[tuple[ManagerOptions, Backup]],
    daemons: Daemons,
) -> None:
    target = tmp_path / "used"
    target.mkdir()
    (target / "manager.json").write_text("{}")
    restore = ("cluster", "restore", str(sealed_file), "--data-dir", str(target))
    result = run(config_dir, *restore, daemons=daemons)
    assert "is not empty" in one_error_line(result)
    assert "passphrase" not in result.output
    assert restores == []
