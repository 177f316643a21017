"""A pull-only client for the OCI distribution API (registry v2).

Everything fetched is content-addressed, so every byte is checked against its
digest before it is trusted; the registry is believed only about which digest
a tag points to. aiohttp errors never escape: they become Warren errors here.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import re
import socket
import ssl
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from os import strerror
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from warren.core.errors import (
    ImageNotFound,
    InvalidArgument,
    PermissionDenied,
    RuntimeFailure,
    Unavailable,
    WarrenError,
)
from warren.registry.reference import (
    DEFAULT_TAG,
    DOCKER_HUB,
    DOCKER_HUB_API,
    DOCKER_HUB_LEGACY,
    Reference,
    is_digest,
    require_digest,
)

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
ACCEPT_MANIFESTS = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST))

DIGEST_HEADER = "Docker-Content-Digest"
# containerd's limit: manifests are small, and a hostile registry must not
# make us buffer gigabytes. Blobs are streamed instead.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_ERROR_BYTES = 64 * 1024
MAX_INDEX_DEPTH = 4  # nested indexes are legal but rare; bound the chain
CHUNK_BYTES = 64 * 1024
TIMEOUT = aiohttp.ClientTimeout(total=None, connect=10, sock_read=60)
DEFAULT_TOKEN_TTL = 60.0
TOKEN_EARLY = 5.0  # renew slightly early so a token does not expire in flight
NOT_FOUND_CODES = frozenset({"NAME_UNKNOWN", "MANIFEST_UNKNOWN"})
# Callers may pass what uname reports; registries use Go's names.
ARCH_ALIASES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}

_PARAM_RE = re.compile(r'([A-Za-z][\w-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')

Credentials = tuple[str, str]


@dataclass(frozen=True)
class RegistryConfig:
    insecure: frozenset[str] = frozenset()  # "host:port" registries reached over plain HTTP
    # registry host[:port] -> (username, password); excluded from the hash (a dict)
    credentials: Mapping[str, Credentials] = field(default_factory=dict, hash=False)

    @classmethod
    def load(cls, path: Path | None, insecure: Iterable[str] = ()) -> RegistryConfig:
        """Read credentials from Docker's config.json shape.

        ``{"auths": {"host:port": {"username": ..., "password": ...}}}``, or a
        base64 ``auth`` entry instead of the pair; a missing file means none.
        """
        credentials = {} if path is None else _load_credentials(path)
        return cls(frozenset(insecure), credentials)

    def credentials_for(self, registry: str) -> Credentials | None:
        return self.credentials.get(registry)


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int


@dataclass(frozen=True)
class ImageManifest:
    digest: str  # digest of THIS (platform) manifest
    media_type: str
    raw: bytes  # the manifest bytes exactly as served (they hash to digest)
    config: Descriptor
    layers: tuple[Descriptor, ...]


@dataclass(frozen=True)
class _Token:
    value: str
    expires: float  # time.monotonic() deadline

    def valid(self) -> bool:
        return time.monotonic() < self.expires


@dataclass(frozen=True)
class _Challenge:
    scheme: str  # lower case: "basic" or "bearer"
    params: dict[str, str]


class RegistryClient:
    """Resolves tags and fetches manifests and blobs, authenticating as asked."""

    def __init__(
        self, config: RegistryConfig, session: aiohttp.ClientSession | None = None
    ) -> None:
        self._config = config
        self._session = session
        self._owns_session = session is None
        self._tokens: dict[tuple[str, str], _Token] = {}
        self._token_locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._basic: set[str] = set()  # registries known to want basic auth

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def resolve(self, ref: Reference) -> str:
        """The digest the tag (or digest) points to: an index or a manifest."""
        # HEAD spares the body and, on Docker Hub, the pull rate limit.
        async with self._request(ref, "HEAD", _manifest_path(ref), _manifest_headers()) as resp:
            digest = resp.headers.get(DIGEST_HEADER, "") if resp.status == 200 else ""
        if is_digest(digest) and ref.digest in (None, digest):
            return digest
        # No usable header (or an error): GET verifies and reports properly.
        return (await self.index_or_manifest(ref))[1]

    async def index_or_manifest(self, ref: Reference) -> tuple[str, str, bytes]:
        """(media_type, digest, raw) of the top-level object the reference names."""
        return await self._fetch_manifest(ref, ref.digest)

    async def manifest(
        self,
        ref: Reference,
        os: str = "linux",
        architecture: str = "amd64",
        variant: str | None = None,
    ) -> ImageManifest:
        """The image manifest for a platform, following an index if there is one.

        ``variant`` (e.g. "v8") narrows the choice; None takes the first match.
        """
        architecture = ARCH_ALIASES.get(architecture, architecture)
        media_type, digest, raw = await self.index_or_manifest(ref)
        for _ in range(MAX_INDEX_DEPTH):
            if media_type not in INDEX_TYPES:
                return _parse_manifest(ref, digest, media_type, raw)
            child = _select_platform(ref, raw, os, architecture, variant)
            media_type, digest, raw = await self._fetch_manifest(ref, child.digest)
            if len(raw) != child.size:
                raise RuntimeFailure(f"manifest {child.digest} of {ref} has the wrong size")
        raise RuntimeFailure(f"image index of {ref} is nested too deeply")

    def blob(self, ref: Reference, digest: str) -> AsyncIterator[bytes]:
        """Stream a blob; after the last chunk its sha256 is checked.

        A mismatch raises RuntimeFailure when the stream ends, so a consumer
        must read to the end before it trusts (or commits) what it wrote.
        """
        return self._blob_chunks(ref, require_digest(digest))

    async def blob_bytes(self, ref: Reference, digest: str) -> bytes:
        return b"".join([chunk async for chunk in self.blob(ref, digest)])

    # -- fetching -------------------------------------------------------------

    async def _fetch_manifest(self, ref: Reference, digest: str | None) -> tuple[str, str, bytes]:
        target = ref if digest is None else ref.with_digest(digest)
        path = _manifest_path(target)
        async with self._request(target, "GET", path, _manifest_headers()) as resp:
            if resp.status != 200:
                raise await _manifest_error(target, resp)
            raw = await _read_limited(resp, MAX_MANIFEST_BYTES, f"manifest of {target}")
            served = resp.headers.get(DIGEST_HEADER)
            content_type = resp.headers.get(aiohttp.hdrs.CONTENT_TYPE, "")
        actual = _sha256(raw)
        for expected in (digest, served):
            if expected is not None and expected != actual:
                raise RuntimeFailure(
                    f"digest mismatch for manifest of {target}: expected {expected}, got {actual}"
                )
        return _media_type(target, raw, content_type), actual, raw

    async def _blob_chunks(self, ref: Reference, digest: str) -> AsyncIterator[bytes]:
        hasher = hashlib.sha256()
        # Identity encoding: a transparently gunzipped layer would not hash right.
        headers: dict[str, str] = {aiohttp.hdrs.ACCEPT_ENCODING: "identity"}
        async with self._request(ref, "GET", f"blobs/{digest}", headers) as resp:
            if resp.status != 200:
                raise await _blob_error(ref, digest, resp)
            async for chunk in resp.content.iter_chunked(CHUNK_BYTES):
                hasher.update(chunk)
                yield chunk
        actual = f"sha256:{hasher.hexdigest()}"
        if actual != digest:
            raise RuntimeFailure(f"digest mismatch for blob {digest} of {ref.name}: got {actual}")

    @contextlib.asynccontextmanager
    async def _request(
        self, ref: Reference, method: str, path: str, headers: Mapping[str, str]
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send to ``/v2/<repo>/<path>``, answering one auth challenge.

        The response is yielded for any status except 401/403, which become
        PermissionDenied; network errors (also while reading) become Unavailable.
        """
        url = f"{self._base_url(ref)}/v2/{ref.repository}/{path}"
        with _network_errors(ref.registry):
            auth = self._cached_auth(ref)
            resp = await self._send(method, url, headers, auth)
            try:
                if resp.status == 401:
                    challenge = _parse_challenge(resp)
                    resp.release()
                    auth = await self._authorize(ref, challenge, rejected=auth)
                    resp = await self._send(method, url, headers, auth)
                if resp.status in (401, 403):
                    raise self._denied(ref)
                self._refuse_downgrade(ref, resp)
                yield resp
            finally:
                resp.release()

    async def _send(
        self, method: str, url: str | URL, headers: Mapping[str, str], auth: str | None
    ) -> aiohttp.ClientResponse:
        sent = dict(headers)
        if auth is not None:
            sent[aiohttp.hdrs.AUTHORIZATION] = auth
        # aiohttp drops Authorization itself when a redirect leaves the origin.
        return await self._http().request(method, url, headers=sent, timeout=TIMEOUT)

    def _http(self) -> aiohttp.ClientSession:
        # Created lazily: a session wants a running event loop.
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=TIMEOUT)
        return self._session

    def _is_insecure(self, ref: Reference) -> bool:
        return ref.registry in self._config.insecure

    def _base_url(self, ref: Reference) -> str:
        scheme = "http" if self._is_insecure(ref) else "https"
        return f"{scheme}://{ref.api_host}"

    def _refuse_downgrade(self, ref: Reference, resp: aiohttp.ClientResponse) -> None:
        # A redirect must not quietly move a TLS registry's traffic to plain HTTP.
        if resp.url.scheme != "https" and not self._is_insecure(ref):
            raise RuntimeFailure(
                f"registry {ref.registry} redirected to plain HTTP ({resp.url.host}); refusing"
            )

    # -- authentication ---------------------------------------------------------

    def _cached_auth(self, ref: Reference) -> str | None:
        """An Authorization value to send up front, so known hosts skip the 401."""
        if ref.registry in self._basic:
            return self._basic_auth(ref)
        token = self._tokens.get((ref.registry, _pull_scope(ref)))
        return f"Bearer {token.value}" if token is not None and token.valid() else None

    async def _authorize(
        self, ref: Reference, challenge: _Challenge | None, rejected: str | None
    ) -> str:
        """An Authorization value answering ``challenge``; ``rejected`` just failed."""
        if challenge is None:
            raise self._denied(ref)
        if challenge.scheme == "basic":
            auth = self._basic_auth(ref)
            if auth == rejected:
                raise self._denied(ref)
            self._basic.add(ref.registry)
            return auth
        if challenge.scheme == "bearer":
            return f"Bearer {await self._bearer_token(ref, challenge.params, rejected)}"
        raise RuntimeFailure(
            f"registry {ref.registry} asks for unsupported authentication '{challenge.scheme}'"
        )

    def _basic_auth(self, ref: Reference) -> str:
        credentials = self._config.credentials_for(ref.registry)
        if credentials is None:
            raise PermissionDenied(f"registry {ref.registry} requires credentials")
        return aiohttp.encode_basic_auth(*credentials)

    async def _bearer_token(
        self, ref: Reference, params: Mapping[str, str], rejected: str | None
    ) -> str:
        scope = params.get("scope") or _pull_scope(ref)
        key = (ref.registry, scope)
        # One lock per scope, so concurrent pulls share a single token request.
        async with self._token_locks.setdefault(key, asyncio.Lock()):
            token = self._tokens.get(key)
            if token is None or not token.valid() or f"Bearer {token.value}" == rejected:
                token = await self._fetch_token(ref, params, scope)
                self._tokens[key] = token
            return token.value

    async def _fetch_token(self, ref: Reference, params: Mapping[str, str], scope: str) -> _Token:
        realm = self._realm(ref, params)
        query = {"scope": scope}
        if params.get("service"):
            query["service"] = params["service"]
        credentials = self._config.credentials_for(ref.registry)
        auth = None if credentials is None else aiohttp.encode_basic_auth(*credentials)
        with _network_errors(realm.host or str(realm)):
            async with await self._send("GET", realm.update_query(query), {}, auth) as resp:
                if resp.status in (401, 403):
                    raise self._denied(ref)
                if resp.status != 200:
                    raise RuntimeFailure(
                        f"token service {realm} of registry {ref.registry} "
                        f"answered HTTP {resp.status}"
                    )
                body = await _read_limited(resp, MAX_ERROR_BYTES, f"token from {realm}")
        return _parse_token(realm, body)

    def _realm(self, ref: Reference, params: Mapping[str, str]) -> URL:
        try:
            realm = URL(params.get("realm", ""))
        except ValueError:
            realm = URL()
        if realm.scheme not in ("http", "https") or not realm.host:
            raise RuntimeFailure(f"registry {ref.registry} sent a bad token realm")
        # Credentials must not travel in clear text unless the user chose HTTP.
        if realm.scheme == "http" and not self._is_insecure(ref):
            raise RuntimeFailure(
                f"registry {ref.registry} wants a token over plain HTTP ({realm}); refusing"
            )
        return realm

    def _denied(self, ref: Reference) -> PermissionDenied:
        credentials = self._config.credentials_for(ref.registry)
        if credentials is None:
            return PermissionDenied(
                f"registry {ref.registry} denied access to {ref.repository}: "
                "the repository may not exist or may require credentials"
            )
        return PermissionDenied(
            f"registry {ref.registry} denied access to {ref.repository} for user '{credentials[0]}'"
        )


# -- helpers ------------------------------------------------------------------


def _manifest_path(ref: Reference) -> str:
    return f"manifests/{ref.digest or ref.tag or DEFAULT_TAG}"


def _manifest_headers() -> dict[str, str]:
    return {aiohttp.hdrs.ACCEPT: ACCEPT_MANIFESTS}


def _pull_scope(ref: Reference) -> str:
    return f"repository:{ref.repository}:pull"


def _sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


@contextlib.contextmanager
def _network_errors(host: str) -> Iterator[None]:
    """Turn aiohttp and timeout errors into Warren errors."""
    try:
        yield
    except TimeoutError as exc:  # before ClientConnectionError: aiohttp's are both
        raise Unavailable(f"cannot reach registry {host}: timed out") from exc
    except aiohttp.ClientConnectionError as exc:
        raise Unavailable(f"cannot reach registry {host}: {_reason(exc)}") from exc
    except aiohttp.ClientError as exc:
        raise RuntimeFailure(f"registry {host}: {exc or type(exc).__name__}") from exc


def _reason(exc: aiohttp.ClientConnectionError) -> str:
    """A short human reason, without aiohttp's connection-key noise."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"TLS certificate not trusted ({exc.certificate_error})"
    if isinstance(exc, aiohttp.ClientConnectorError):
        error = exc.os_error
        if isinstance(error, ssl.SSLError):
            return f"TLS handshake failed ({error.reason or error})"
        if isinstance(error, socket.gaierror):
            return f"cannot resolve host ({error.strerror})"
        if error.errno:
            return strerror(error.errno).lower()
        return str(error) or type(error).__name__
    return str(exc) or type(exc).__name__


def _parse_challenge(resp: aiohttp.ClientResponse) -> _Challenge | None:
    """The strongest challenge in WWW-Authenticate (Bearer over Basic)."""
    challenges: dict[str, _Challenge] = {}
    for header in resp.headers.getall(aiohttp.hdrs.WWW_AUTHENTICATE, []):
        scheme, _, rest = header.strip().partition(" ")
        params = {m[1].lower(): _unquote(m[2], m[3]) for m in _PARAM_RE.finditer(rest)}
        challenges.setdefault(scheme.lower(), _Challenge(scheme.lower(), params))
    return (
        challenges.get("bearer") or challenges.get("basic") or next(iter(challenges.values()), None)
    )


def _unquote(quoted: str | None, bare: str | None) -> str:
    if quoted is not None:
        return re.sub(r"\\(.)", r"\1", quoted)
    return bare or ""


def _parse_token(realm: URL, body: bytes) -> _Token:
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise RuntimeFailure(f"token service {realm} sent a malformed answer")
    value = document.get("token") or document.get("access_token")
    if not isinstance(value, str):
        raise RuntimeFailure(f"token service {realm} sent no token")
    ttl = document.get("expires_in")
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or ttl <= 0:
        ttl = DEFAULT_TOKEN_TTL
    return _Token(value, time.monotonic() + max(float(ttl) - TOKEN_EARLY, 0.0))


async def _read_limited(resp: aiohttp.ClientResponse, limit: int, what: str) -> bytes:
    if (resp.content_length or 0) > limit:
        raise RuntimeFailure(f"{what} is larger than {limit} bytes")
    data = bytearray()
    async for chunk in resp.content.iter_chunked(CHUNK_BYTES):
        data += chunk
        if len(data) > limit:
            raise RuntimeFailure(f"{what} is larger than {limit} bytes")
    return bytes(data)


async def _error_detail(resp: aiohttp.ClientResponse) -> tuple[frozenset[str], str]:
    """The distribution-spec error codes and a one-line message, if any."""
    try:
        document = json.loads(await _read_limited(resp, MAX_ERROR_BYTES, "error") or b"null")
    except (ValueError, RuntimeFailure):
        document = None
    errors = document.get("errors") if isinstance(document, dict) else None
    entries = [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []
    codes = frozenset(str(e.get("code", "")) for e in entries)
    message = "; ".join(str(e.get("message", "")) for e in entries if e.get("message"))
    return codes, " ".join(message.split())


async def _manifest_error(ref: Reference, resp: aiohttp.ClientResponse) -> WarrenError:
    codes, message = await _error_detail(resp)
    if resp.status == 404 or codes & NOT_FOUND_CODES:
        return ImageNotFound(f"image not found: {ref}")
    return _status_error(ref, resp.status, message, f"manifest of {ref}")


async def _blob_error(ref: Reference, digest: str, resp: aiohttp.ClientResponse) -> WarrenError:
    _, message = await _error_detail(resp)
    if resp.status == 404:
        return RuntimeFailure(f"blob {digest} not found in {ref.name}")
    return _status_error(ref, resp.status, message, f"blob {digest} of {ref.name}")


def _status_error(ref: Reference, status: int, message: str, what: str) -> WarrenError:
    detail = f"HTTP {status}" + (f": {message}" if message else "")
    # Rate limiting passes; a caller that retries later should.
    if status == 429:
        return Unavailable(f"registry {ref.registry} is rate limiting ({detail})")
    if status >= 500:
        return RuntimeFailure(f"registry {ref.registry} failed serving {what} ({detail})")
    return RuntimeFailure(f"registry {ref.registry} refused {what} ({detail})")


def _json_object(ref: Reference, raw: bytes) -> dict[str, Any]:
    try:
        document = json.loads(raw)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise RuntimeFailure(f"manifest of {ref} is not a JSON object")
    return document


def _media_type(ref: Reference, raw: bytes, content_type: str) -> str:
    """The manifest's own mediaType (covered by the digest), else the header's."""
    document = _json_object(ref, raw)
    declared = document.get("mediaType")
    if isinstance(declared, str) and declared:
        return declared
    header = content_type.partition(";")[0].strip()
    if header in INDEX_TYPES | MANIFEST_TYPES:
        return header
    # mediaType is optional in OCI; the shape tells an index from a manifest.
    return OCI_INDEX if "manifests" in document else OCI_MANIFEST


def _descriptor(ref: Reference, value: object) -> Descriptor:
    entry = value if isinstance(value, dict) else {}
    media_type, digest, size = entry.get("mediaType"), entry.get("digest"), entry.get("size")
    if (
        isinstance(media_type, str)
        and isinstance(digest, str)
        and is_digest(digest)
        and isinstance(size, int)
        and not isinstance(size, bool)
        and size >= 0
    ):
        return Descriptor(media_type, digest, size)
    raise RuntimeFailure(f"manifest of {ref} has a malformed descriptor")


def _select_platform(
    ref: Reference, raw: bytes, os: str, architecture: str, variant: str | None
) -> Descriptor:
    entries = _json_object(ref, raw).get("manifests")
    if not isinstance(entries, list):
        raise RuntimeFailure(f"image index of {ref} has no manifest list")
    for entry in entries:
        platform = entry.get("platform") if isinstance(entry, dict) else None
        if not isinstance(platform, dict):
            continue
        if platform.get("os") != os or platform.get("architecture") != architecture:
            continue
        if variant is None or platform.get("variant") == variant:
            return _descriptor(ref, entry)
    wanted = "/".join(p for p in (os, architecture, variant) if p)
    raise ImageNotFound(f"image not found: {ref} has no manifest for {wanted}")


def _parse_manifest(ref: Reference, digest: str, media_type: str, raw: bytes) -> ImageManifest:
    if media_type not in MANIFEST_TYPES:
        raise RuntimeFailure(f"unsupported manifest type '{media_type}' for {ref}")
    document = _json_object(ref, raw)
    layers = document.get("layers")
    if document.get("schemaVersion") != 2 or not isinstance(layers, list):
        raise RuntimeFailure(f"manifest of {ref} is malformed")
    return ImageManifest(
        digest=digest,
        media_type=media_type,
        raw=raw,
        config=_descriptor(ref, document.get("config")),
        layers=tuple(_descriptor(ref, layer) for layer in layers),
    )


def _load_credentials(path: Path) -> dict[str, Credentials]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"cannot read registry config {path}: {exc}") from None
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise InvalidArgument(f"invalid registry config {path}: {exc}") from None
    auths = document.get("auths", {}) if isinstance(document, dict) else None
    if not isinstance(auths, dict):
        raise InvalidArgument(f"invalid registry config {path}: 'auths' must be an object")
    return {_registry_key(key): _credential(path, key, entry) for key, entry in auths.items()}


def _credential(path: Path, key: str, entry: object) -> Credentials:
    error = InvalidArgument(f"invalid registry config {path}: bad entry for '{key}'")
    if not isinstance(entry, dict):
        raise error
    username, password = entry.get("username"), entry.get("password")
    if username is None and password is None and isinstance(entry.get("auth"), str):
        try:
            decoded = base64.b64decode(entry["auth"], validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise error from None
        username, _, password = decoded.partition(":")
    if not isinstance(username, str) or not isinstance(password, str) or not username:
        raise error
    return username, password


def _registry_key(key: str) -> str:
    """Docker writes Docker Hub as ``https://index.docker.io/v1/``; use ours."""
    host = key.split("://", 1)[-1].split("/", 1)[0]
    return DOCKER_HUB if host in (DOCKER_HUB_LEGACY, DOCKER_HUB_API) else host
