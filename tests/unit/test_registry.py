from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.typedefs import Handler

from warren.core.errors import (
    ImageNotFound,
    InvalidArgument,
    PermissionDenied,
    RuntimeFailure,
    Unavailable,
)
from warren.registry import client as client_module
from warren.registry.client import (
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    RegistryClient,
    RegistryConfig,
)
from warren.registry.reference import Reference, parse_reference
from warren.security.ca import CertificateAuthority, generate_key, key_pem

DIGEST = "sha256:" + "a" * 64
OTHER = "sha256:" + "b" * 64
USER, PASSWORD = "alice", "s3cret"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- references -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("busybox", "docker.io", "library/busybox", "latest", None),
        ("busybox:1.36", "docker.io", "library/busybox", "1.36", None),
        ("team/app:v1", "docker.io", "team/app", "v1", None),
        ("docker.io/busybox", "docker.io", "library/busybox", "latest", None),
        ("index.docker.io/library/busybox", "docker.io", "library/busybox", "latest", None),
        ("127.0.0.1:5000/busybox", "127.0.0.1:5000", "busybox", "latest", None),
        ("127.0.0.1:5000/busybox:1.36", "127.0.0.1:5000", "busybox", "1.36", None),
        ("localhost/app", "localhost", "app", "latest", None),
        ("localhost:5000/a/b/c", "localhost:5000", "a/b/c", "latest", None),
        ("ghcr.io/org/app_x-1.2:Tag_1.0-rc", "ghcr.io", "org/app_x-1.2", "Tag_1.0-rc", None),
        ("[::1]:5000/app", "[::1]:5000", "app", "latest", None),
        ("Registry/app", "Registry", "app", "latest", None),
        (f"busybox@{DIGEST}", "docker.io", "library/busybox", None, DIGEST),
        (f"x/y:1@{DIGEST}", "docker.io", "x/y", "1", DIGEST),
        (f"host:5000/y@{DIGEST}", "host:5000", "y", None, DIGEST),
    ],
)
def test_parse_reference(
    text: str, registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    assert parse_reference(text) == Reference(registry, repository, tag, digest)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Busybox",
        "busybox:",
        "busybox:bad tag",
        ":latest",
        "/busybox",
        "busybox/",
        "a//b",
        "a__-b",
        "-a/b",
        "host:port/app",
        "busybox@sha256:abc",
        "busybox@md5:" + "a" * 32,
        f"busybox@sha256:{'A' * 64}",
        "busybox:" + "t" * 129,
        "a" * 64,
        "x" * 256,
        "busybox@",
        "a b",
    ],
)
def test_parse_reference_rejects(text: str) -> None:
    with pytest.raises(InvalidArgument, match=r"^invalid image reference '"):
        parse_reference(text)


def test_reference_string_and_helpers() -> None:
    ref = parse_reference("127.0.0.1:5000/busybox:1.36")
    assert str(ref) == "127.0.0.1:5000/busybox:1.36"
    pinned = ref.with_digest(DIGEST)
    assert str(pinned) == f"127.0.0.1:5000/busybox:1.36@{DIGEST}"
    assert parse_reference(str(pinned)) == pinned
    assert str(parse_reference("busybox")) == "docker.io/library/busybox:latest"
    assert str(parse_reference(f"busybox@{DIGEST}")) == f"docker.io/library/busybox@{DIGEST}"
    assert parse_reference("busybox").api_host == "registry-1.docker.io"
    assert ref.api_host == "127.0.0.1:5000"
    with pytest.raises(InvalidArgument):
        ref.with_digest("sha256:nope")


# -- configuration ---------------------------------------------------------------


def test_config_load(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    encoded = base64.b64encode(b"bob:pw:with:colons").decode()
    path.write_text(
        json.dumps(
            {
                "auths": {
                    "127.0.0.1:5000": {"username": USER, "password": PASSWORD},
                    "https://index.docker.io/v1/": {"auth": encoded},
                }
            }
        )
    )
    config = RegistryConfig.load(path, insecure=["127.0.0.1:5000"])
    assert config.insecure == frozenset({"127.0.0.1:5000"})
    assert config.credentials_for("127.0.0.1:5000") == (USER, PASSWORD)
    assert config.credentials_for("docker.io") == ("bob", "pw:with:colons")
    assert RegistryConfig.load(tmp_path / "missing.json").credentials == {}
    assert RegistryConfig.load(None).credentials == {}


@pytest.mark.parametrize(
    "content",
    ["{not json", '{"auths": []}', '{"auths": {"h": {"username": 1}}}', '{"auths": {"h": 3}}'],
)
def test_config_load_rejects_malformed(tmp_path: Path, content: str) -> None:
    path = tmp_path / "config.json"
    path.write_text(content)
    with pytest.raises(InvalidArgument) as caught:
        RegistryConfig.load(path)
    assert "\n" not in str(caught.value)


# -- a fake registry --------------------------------------------------------------


@dataclass
class Image:
    config: bytes
    layer: bytes
    manifests: dict[str, tuple[str, bytes]]  # digest -> (media type, bytes)
    index_digest: str
    amd64_digest: str
    arm64_digest: str


def build_image() -> Image:
    config = b'{"architecture":"amd64","os":"linux"}'
    layer = bytes(range(256)) * 1000
    manifests: dict[str, tuple[str, bytes]] = {}

    def add(media_type: str, document: dict[str, object]) -> str:
        raw = json.dumps(document, indent=1).encode()
        manifests[sha(raw)] = (media_type, raw)
        return sha(raw)

    def manifest(media_type: str, layer_bytes: bytes) -> str:
        return add(
            media_type,
            {
                "schemaVersion": 2,
                "mediaType": media_type,
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": sha(config),
                    "size": len(config),
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": sha(layer_bytes),
                        "size": len(layer_bytes),
                    }
                ],
            },
        )

    amd64 = manifest(OCI_MANIFEST, layer)
    arm64 = manifest(DOCKER_MANIFEST, b"arm")

    def entry(digest: str, platform: dict[str, str]) -> dict[str, object]:
        media_type, raw = manifests[digest]
        return {"mediaType": media_type, "digest": digest, "size": len(raw), "platform": platform}

    # arm64 first, and an attestation entry, so selection cannot be by position.
    index = add(
        OCI_INDEX,
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                entry(arm64, {"os": "linux", "architecture": "arm64", "variant": "v8"}),
                entry(amd64, {"os": "unknown", "architecture": "unknown"}),
                entry(amd64, {"os": "linux", "architecture": "amd64"}),
            ],
        },
    )
    return Image(config, layer, manifests, index, amd64, arm64)


@dataclass
class FakeRegistry:
    """A registry v2 over plain HTTP with no, basic or bearer auth."""

    image: Image
    auth: str = "none"
    repository: str = "team/busybox"
    tags: dict[str, str] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    corrupt: set[str] = field(default_factory=set)
    lie_about_digest: bool = False
    fail_with: int | None = None
    token_ttl: int | None = 300
    token_hits: int = 0
    hits: list[str] = field(default_factory=list)
    issued: set[str] = field(default_factory=set)
    port: int = 0

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth_middleware])
        app.router.add_get("/token", self._token)
        app.router.add_get("/v2/{name:.+}/manifests/{reference}", self._manifest)
        app.router.add_get("/v2/{name:.+}/blobs/{digest}", self._blob)
        app.router.add_get("/storage/{digest}", self._storage)
        return app

    @web.middleware
    async def _auth_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/v2/"):
            self.hits.append(f"{request.method} {request.path}")
            if not self._authorized(request):
                return self._challenge(request)
        return await handler(request)

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if self.auth == "basic":
            return header == aiohttp.encode_basic_auth(USER, PASSWORD)
        if self.auth == "bearer":
            return header.removeprefix("Bearer ") in self.issued
        return True

    def _challenge(self, request: web.Request) -> web.Response:
        if self.auth == "basic":
            challenge = 'Basic realm="fake"'
        else:
            scope = f"repository:{request.match_info.get('name', '')}:pull"
            realm = f"http://127.0.0.1:{self.port}/token"
            challenge = f'Bearer realm="{realm}",service="fake",scope="{scope}"'
        return web.json_response(
            {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
            status=401,
            headers={"WWW-Authenticate": challenge},
        )

    async def _token(self, request: web.Request) -> web.Response:
        self.token_hits += 1
        header = request.headers.get("Authorization")
        if header is not None and header != aiohttp.encode_basic_auth(USER, PASSWORD):
            return web.json_response({"details": "bad credentials"}, status=401)
        assert request.query["service"] == "fake"
        assert request.query["scope"] == f"repository:{self.repository}:pull"
        token = f"token-{self.token_hits}"
        if header is not None:  # anonymous tokens grant nothing here
            self.issued.add(token)
        body: dict[str, object] = {"access_token": token}
        if self.token_ttl is not None:
            body["expires_in"] = self.token_ttl
        return web.json_response(body)

    async def _manifest(self, request: web.Request) -> web.Response:
        if self.fail_with is not None:
            return web.Response(status=self.fail_with, text="boom")
        reference = request.match_info["reference"]
        digest = self.tags.get(reference, reference)
        found = self.image.manifests.get(digest)
        if request.match_info["name"] != self.repository or found is None:
            code = "NAME_UNKNOWN" if found else "MANIFEST_UNKNOWN"
            return web.json_response({"errors": [{"code": code, "message": "no"}]}, status=404)
        media_type, raw = found
        served = OTHER if self.lie_about_digest else digest
        headers = {"Docker-Content-Digest": served, "Content-Type": media_type}
        return web.Response(body=raw, headers=headers)

    async def _blob(self, request: web.Request) -> web.Response:
        digest = request.match_info["digest"]
        if digest not in self.blobs:
            return web.json_response({"errors": [{"code": "BLOB_UNKNOWN"}]}, status=404)
        # Like S3-backed registries: the blob itself lives elsewhere.
        raise web.HTTPTemporaryRedirect(f"/storage/{digest}")

    async def _storage(self, request: web.Request) -> web.Response:
        digest = request.match_info["digest"]
        data = self.blobs[digest]
        if digest in self.corrupt:
            data = data[:-1] + bytes([data[-1] ^ 0xFF])
        return web.Response(body=data, content_type="application/octet-stream")


async def serve(
    app: web.Application, ssl_context: ssl.SSLContext | None = None
) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    server = site._server
    assert isinstance(server, asyncio.base_events.Server)
    return runner, server.sockets[0].getsockname()[1]


@pytest.fixture
def image() -> Image:
    return build_image()


async def start(fake: FakeRegistry) -> tuple[web.AppRunner, str]:
    fake.tags.setdefault("1.36", fake.image.index_digest)
    fake.tags.setdefault("single", fake.image.amd64_digest)
    fake.blobs.update({sha(fake.image.config): fake.image.config})
    fake.blobs.update({sha(fake.image.layer): fake.image.layer})
    runner, fake.port = await serve(fake.app())
    return runner, f"127.0.0.1:{fake.port}"


@dataclass
class Setup:
    fake: FakeRegistry
    host: str

    def ref(self, tag: str = "1.36", repository: str = "team/busybox") -> Reference:
        return parse_reference(f"{self.host}/{repository}:{tag}")

    def client(self, credentials: tuple[str, str] | None = None) -> RegistryClient:
        auths = {} if credentials is None else {self.host: credentials}
        return RegistryClient(RegistryConfig(frozenset({self.host}), auths))


@pytest.fixture(params=["none", "basic", "bearer"])
async def setup(request: pytest.FixtureRequest, image: Image) -> AsyncIterator[Setup]:
    fake = FakeRegistry(image, auth=request.param)
    runner, host = await start(fake)
    yield Setup(fake, host)
    await runner.cleanup()


@pytest.fixture
async def plain(image: Image) -> AsyncIterator[Setup]:
    fake = FakeRegistry(image)
    runner, host = await start(fake)
    yield Setup(fake, host)
    await runner.cleanup()


async def launch(
    image: Image, auth: str, token_ttl: int | None = 300
) -> tuple[web.AppRunner, Setup]:
    fake = FakeRegistry(image, auth=auth, token_ttl=token_ttl)
    runner, host = await start(fake)
    return runner, Setup(fake, host)


# -- pulling ------------------------------------------------------------------------


async def test_pull_in_every_auth_mode(setup: Setup, image: Image) -> None:
    client = setup.client((USER, PASSWORD))
    try:
        ref = setup.ref()
        assert await client.resolve(ref) == image.index_digest
        manifest = await client.manifest(ref)
        assert manifest.digest == image.amd64_digest
        assert manifest.media_type == OCI_MANIFEST
        assert sha(manifest.raw) == manifest.digest
        assert manifest.config.digest == sha(image.config)
        assert [layer.digest for layer in manifest.layers] == [sha(image.layer)]
        assert await client.blob_bytes(ref, manifest.config.digest) == image.config
        chunks = [chunk async for chunk in client.blob(ref, manifest.layers[0].digest)]
        assert b"".join(chunks) == image.layer
    finally:
        await client.close()


async def test_manifest_selects_platform_and_pins(plain: Setup, image: Image) -> None:
    client = plain.client()
    try:
        arm = await client.manifest(plain.ref(), "linux", "aarch64")
        assert (arm.digest, arm.media_type) == (image.arm64_digest, DOCKER_MANIFEST)
        pinned = plain.ref().with_digest(image.index_digest)
        assert (await client.manifest(pinned)).digest == image.amd64_digest
        single = await client.manifest(plain.ref("single"))
        assert single.digest == image.amd64_digest
        media_type, digest, raw = await client.index_or_manifest(plain.ref())
        assert (media_type, digest, sha(raw)) == (OCI_INDEX, image.index_digest, digest)
        with pytest.raises(ImageNotFound, match=r"^image not found: .*linux/s390x"):
            await client.manifest(plain.ref(), "linux", "s390x")
    finally:
        await client.close()


async def test_missing_tag_and_repository_are_not_found(plain: Setup) -> None:
    client = plain.client()
    try:
        for ref in (plain.ref("nope"), plain.ref(repository="team/other")):
            with pytest.raises(ImageNotFound) as caught:
                await client.manifest(ref)
            assert str(caught.value) == f"image not found: {ref}"
            with pytest.raises(ImageNotFound, match=r"^image not found: "):
                await client.resolve(ref)
    finally:
        await client.close()


async def test_corrupted_blob_is_caught(plain: Setup, image: Image) -> None:
    plain.fake.corrupt.add(sha(image.layer))
    client = plain.client()
    try:
        with pytest.raises(RuntimeFailure, match="digest mismatch"):
            await client.blob_bytes(plain.ref(), sha(image.layer))
        with pytest.raises(RuntimeFailure, match="not found"):
            await client.blob_bytes(plain.ref(), DIGEST)
        with pytest.raises(InvalidArgument):
            client.blob(plain.ref(), "sha256:../../etc")
    finally:
        await client.close()


async def test_manifest_digest_header_is_verified(plain: Setup) -> None:
    plain.fake.lie_about_digest = True
    client = plain.client()
    try:
        with pytest.raises(RuntimeFailure, match="digest mismatch"):
            await client.manifest(plain.ref())
    finally:
        await client.close()


async def test_server_errors_are_runtime_failures(plain: Setup) -> None:
    plain.fake.fail_with = 503
    client = plain.client()
    try:
        with pytest.raises(RuntimeFailure, match="HTTP 503") as caught:
            await client.manifest(plain.ref())
        assert type(caught.value) is RuntimeFailure
    finally:
        await client.close()


# -- authentication ------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["basic", "bearer"])
async def test_wrong_or_missing_credentials_are_denied(image: Image, mode: str) -> None:
    runner, setup = await launch(image, mode)
    try:
        for credentials in ((USER, "wrong"), None):
            client = setup.client(credentials)
            try:
                with pytest.raises(PermissionDenied):
                    await client.manifest(setup.ref())
            finally:
                await client.close()
    finally:
        await runner.cleanup()


async def test_basic_without_credentials_says_so(image: Image) -> None:
    runner, setup = await launch(image, "basic")
    client = setup.client()
    try:
        with pytest.raises(PermissionDenied, match=f"^registry {setup.host} requires credentials$"):
            await client.resolve(setup.ref())
    finally:
        await client.close()
        await runner.cleanup()


async def test_bearer_token_is_cached(image: Image) -> None:
    runner, setup = await launch(image, "bearer")
    client = setup.client((USER, PASSWORD))
    try:
        for _ in range(2):
            manifest = await client.manifest(setup.ref())
            await client.blob_bytes(setup.ref(), manifest.config.digest)
        assert setup.fake.token_hits == 1
        # Only the very first request was turned away.
        assert sum(hit.startswith("GET /v2/") for hit in setup.fake.hits) == 7
    finally:
        await client.close()
        await runner.cleanup()


async def test_expired_or_revoked_token_is_renewed(image: Image) -> None:
    # expires_in 1 s is inside the early-renewal margin: every use refetches.
    runner, setup = await launch(image, "bearer", token_ttl=1)
    client = setup.client((USER, PASSWORD))
    try:
        await client.resolve(setup.ref())
        await client.resolve(setup.ref())
        assert setup.fake.token_hits == 2
        setup.fake.token_ttl = 300
        await client.resolve(setup.ref())
        setup.fake.issued.clear()  # the registry forgets every token
        assert await client.resolve(setup.ref()) == image.index_digest
        assert setup.fake.token_hits == 4
    finally:
        await client.close()
        await runner.cleanup()


# -- transport --------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_closed_port_is_unavailable() -> None:
    host = f"127.0.0.1:{closed_port()}"
    client = RegistryClient(RegistryConfig(insecure=frozenset({host})))
    try:
        with pytest.raises(Unavailable, match=f"^cannot reach registry {host}: "):
            await client.manifest(parse_reference(f"{host}/app"))
        with pytest.raises(Unavailable):
            await client.blob_bytes(parse_reference(f"{host}/app"), DIGEST)
    finally:
        await client.close()


async def test_plain_http_is_never_implicit(plain: Setup) -> None:
    client = RegistryClient(RegistryConfig())  # nothing listed as insecure
    try:
        with pytest.raises((Unavailable, RuntimeFailure)):
            await client.resolve(plain.ref())
        assert plain.fake.hits == []  # no silent downgrade to HTTP
    finally:
        await client.close()


async def test_read_timeout_is_unavailable(plain: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        client_module, "TIMEOUT", aiohttp.ClientTimeout(total=None, connect=10, sock_read=0.2)
    )

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return web.Response()

    app = web.Application()
    app.router.add_get("/v2/{name:.+}/manifests/{reference}", slow)
    runner, port = await serve(app)
    host = f"127.0.0.1:{port}"
    client = RegistryClient(RegistryConfig(insecure=frozenset({host})))
    try:
        with pytest.raises(Unavailable, match="timed out"):
            await client.manifest(parse_reference(f"{host}/app"))
    finally:
        await client.close()
        await runner.cleanup()


async def test_https_registry_with_trusted_ca(tmp_path: Path, image: Image) -> None:
    ca = CertificateAuthority.create("registry-test")
    key = generate_key()
    (tmp_path / "cert.pem").write_bytes(
        ca.issue_for_key(key.public_key(), "registry", "manager", ["127.0.0.1"])
    )
    (tmp_path / "key.pem").write_bytes(key_pem(key))
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    fake = FakeRegistry(image, auth="basic")
    fake.tags["1.36"] = image.index_digest
    fake.blobs[sha(image.layer)] = image.layer
    runner, port = await serve(fake.app(), server_context)
    ref = parse_reference(f"127.0.0.1:{port}/team/busybox:1.36")
    config = RegistryConfig(credentials={ref.registry: (USER, PASSWORD)})
    trusting = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=ssl.create_default_context(cadata=ca.cert_pem.decode()))
    )
    client = RegistryClient(config, session=trusting)
    untrusting = RegistryClient(config)
    try:
        manifest = await client.manifest(ref)
        assert await client.blob_bytes(ref, manifest.layers[0].digest) == image.layer
        with pytest.raises(Unavailable, match="certificate"):
            await untrusting.resolve(ref)
    finally:
        await client.close()
        assert not trusting.closed  # a borrowed session is the caller's to close
        await trusting.close()
        await untrusting.close()
        await runner.cleanup()
