from __future__ import annotations

import pytest

from warren.core.errors import InvalidArgument
from warren.security.ca import CertificateAuthority
from warren.security.tokens import JoinToken, new_secret, parse, secrets_equal

FINGERPRINT = "0" + "a1b2c3d4e5" * 4 + "f6g7h8i9j"
SECRET = "abcdefghijklmnopqrstuvwxy"


def test_round_trip() -> None:
    token = JoinToken(FINGERPRINT, SECRET)
    text = token.format()
    assert text == f"WRN-1-{FINGERPRINT}-{SECRET}"
    assert parse(text) == token
    assert JoinToken.parse(text) == token


def test_round_trip_with_real_ca_and_secret() -> None:
    token = JoinToken(CertificateAuthority.create("c1").fingerprint, new_secret())
    assert parse(token.format()) == token


def test_surrounding_whitespace_from_copy_paste_is_tolerated() -> None:
    assert parse(f"  WRN-1-{FINGERPRINT}-{SECRET}\n") == JoinToken(FINGERPRINT, SECRET)


def test_repr_hides_secret() -> None:
    assert SECRET not in repr(JoinToken(FINGERPRINT, SECRET))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "WRN",
        "WRN-1",
        f"WRN-1-{FINGERPRINT}",
        f"WRN-1-{FINGERPRINT}-",
        f"SWMTKN-1-{FINGERPRINT}-{SECRET}",
        f"wrn-1-{FINGERPRINT}-{SECRET}",
        f"WRN-2-{FINGERPRINT}-{SECRET}",
        f"WRN-01-{FINGERPRINT}-{SECRET}",
        f"WRN--{FINGERPRINT}-{SECRET}",
        f"WRN-1-{FINGERPRINT[:-1]}-{SECRET}",
        f"WRN-1-{FINGERPRINT}0-{SECRET}",
        f"WRN-1-{FINGERPRINT.upper()}-{SECRET}",
        f"WRN-1-{FINGERPRINT[:-1]}_-{SECRET}",
        f"WRN-1-{'z' * 50}-{SECRET}",  # base 36, but larger than any SHA-256
        f"WRN-1-{FINGERPRINT}-{SECRET[:-1]}",
        f"WRN-1-{FINGERPRINT}-{SECRET}z",
        f"WRN-1-{FINGERPRINT}-{SECRET.upper()}",
        f"WRN-1-{FINGERPRINT}-{SECRET[:-1]}!",
        f"WRN-1-{FINGERPRINT}-{SECRET[:-1]}é",
        f"WRN-1-{FINGERPRINT}-{SECRET}-extra",
        f"WRN-1-{FINGERPRINT} -{SECRET}",
        f"WRN-1-{FINGERPRINT}-{SECRET[:12]} {SECRET[12:24]}",
        f"WRN_1_{FINGERPRINT}_{SECRET}",
    ],
)
def test_malformed_tokens_refused(text: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse(text)
    assert str(info.value) == "invalid join token"


def test_constructor_validates_too() -> None:
    with pytest.raises(InvalidArgument):
        JoinToken("short", SECRET)
    with pytest.raises(InvalidArgument):
        JoinToken(FINGERPRINT, "short")


def test_new_secret_shape() -> None:
    secrets_seen = {new_secret() for _ in range(50)}
    assert len(secrets_seen) == 50
    for secret in secrets_seen:
        assert len(secret) == 25
        assert set(secret) <= set("0123456789abcdefghijklmnopqrstuvwxyz")


def test_secrets_equal() -> None:
    assert secrets_equal(SECRET, SECRET)
    assert not secrets_equal(SECRET, SECRET[:-1] + "z")
    assert not secrets_equal(SECRET, "")
    assert not secrets_equal(SECRET, "é")
