"""Image references, parsed and normalised by Docker's rules.

``busybox`` means ``docker.io/library/busybox:latest``; a first path component
that looks like a host (it has a dot or a port, or is ``localhost``) names the
registry. The grammar follows distribution/reference so a reference that
Docker accepts parses the same way here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from warren.core.errors import InvalidArgument

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
# Older references spell Docker Hub this way; Docker rewrites it too.
DOCKER_HUB_LEGACY = "index.docker.io"
OFFICIAL_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_MAX = 255

_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])"

REPOSITORY_RE = re.compile(rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*")
DOMAIN_RE = re.compile(rf"{_HOST}(?::[0-9]+)?")
TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
# Only sha256 is supported: it is what every registry serves and what we verify.
DIGEST_RE = re.compile(r"sha256:[a-f0-9]{64}")
# Docker refuses a bare 64-hex name: it would be mistaken for an image ID.
_IMAGE_ID_RE = re.compile(r"[a-f0-9]{64}")


def is_digest(text: str) -> bool:
    """Whether ``text`` is a ``sha256:<64 lowercase hex>`` digest."""
    return DIGEST_RE.fullmatch(text) is not None


def require_digest(text: str) -> str:
    """Return ``text`` if it is a valid digest, else raise InvalidArgument."""
    if not is_digest(text):
        raise InvalidArgument(f"invalid digest '{text}'")
    return text


@dataclass(frozen=True)
class Reference:
    registry: str  # "docker.io" for Docker Hub, else "host[:port]"
    repository: str  # "library/busybox" on Docker Hub, "team/app" elsewhere
    tag: str | None  # None when only a digest is given
    digest: str | None  # "sha256:<64 hex>"

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text

    def with_digest(self, digest: str) -> Reference:
        """The same image pinned to ``digest`` (the tag is kept for display)."""
        return replace(self, digest=require_digest(digest))

    @property
    def api_host(self) -> str:
        """The host[:port] that serves the registry API."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def name(self) -> str:
        """``registry/repository``, without tag or digest."""
        return f"{self.registry}/{self.repository}"


def parse_reference(text: str) -> Reference:
    """Parse and normalise an image reference; InvalidArgument if malformed."""
    error = InvalidArgument(f"invalid image reference '{text}'")
    name, digest = _split_digest(text)
    name, tag = _split_tag(name)
    if digest is not None and not is_digest(digest):
        raise error
    if tag is not None and TAG_RE.fullmatch(tag) is None:
        raise error
    if not name or len(name) > NAME_MAX or _IMAGE_ID_RE.fullmatch(name):
        raise error
    registry, repository = _split_registry(name)
    if DOMAIN_RE.fullmatch(registry) is None or REPOSITORY_RE.fullmatch(repository) is None:
        raise error
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(registry, repository, tag, digest)


def _split_digest(text: str) -> tuple[str, str | None]:
    name, sep, digest = text.partition("@")
    return name, (digest if sep else None)


def _split_tag(name: str) -> tuple[str, str | None]:
    # A colon before the last slash is a registry port, not a tag.
    colon = name.rfind(":")
    if colon <= name.rfind("/"):
        return name, None
    return name[:colon], name[colon + 1 :]


def _split_registry(name: str) -> tuple[str, str]:
    first, slash, rest = name.partition("/")
    looks_like_host = "." in first or ":" in first or first == "localhost"
    # Uppercase is illegal in a repository, so Docker reads it as a host name.
    if slash and (looks_like_host or first.lower() != first):
        registry, repository = first, rest
    else:
        registry, repository = DOCKER_HUB, name
    if registry == DOCKER_HUB_LEGACY:
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and "/" not in repository:
        repository = OFFICIAL_PREFIX + repository
    return registry, repository
