"""Join tokens: ``WRN-1-<ca-fingerprint>-<secret>``.

The fingerprint lets a joiner pin the manager's CA before trusting anything it
says; the secret proves to the manager that the joiner was invited.
"""

from __future__ import annotations

import hmac
import re
import secrets
from dataclasses import dataclass, field

from warren.core.errors import InvalidArgument
from warren.security.ca import FINGERPRINT_LENGTH

PREFIX = "WRN"
VERSION = "1"
SECRET_LENGTH = 25
_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
_FINGERPRINT_RE = re.compile(rf"[0-9a-z]{{{FINGERPRINT_LENGTH}}}", re.ASCII)
_SECRET_RE = re.compile(rf"[0-9a-z]{{{SECRET_LENGTH}}}", re.ASCII)
# A 50-digit base-36 string can exceed any SHA-256 value; such a token is garbage.
_MAX_DIGEST = 2**256


def _invalid() -> InvalidArgument:
    return InvalidArgument("invalid join token")


@dataclass(frozen=True)
class JoinToken:
    ca_fingerprint: str
    # Kept out of repr so a token logged by accident does not leak its secret.
    secret: str = field(repr=False)

    def __post_init__(self) -> None:
        if not _FINGERPRINT_RE.fullmatch(self.ca_fingerprint) or (
            int(self.ca_fingerprint, 36) >= _MAX_DIGEST
        ):
            raise _invalid()
        if not _SECRET_RE.fullmatch(self.secret):
            raise _invalid()

    def format(self) -> str:
        return f"{PREFIX}-{VERSION}-{self.ca_fingerprint}-{self.secret}"

    @classmethod
    def parse(cls, text: str) -> JoinToken:
        return parse(text)


def parse(text: str) -> JoinToken:
    """Parse a token; surrounding whitespace from copy-paste is tolerated."""
    if not isinstance(text, str):
        raise _invalid()
    parts = text.strip().split("-")
    if len(parts) != 4 or parts[0] != PREFIX or parts[1] != VERSION:
        raise _invalid()
    return JoinToken(ca_fingerprint=parts[2], secret=parts[3])


def new_secret() -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(SECRET_LENGTH))


def secrets_equal(a: str, b: str) -> bool:
    """Constant-time comparison, so response timing reveals nothing about the secret."""
    return hmac.compare_digest(a.encode(), b.encode())
