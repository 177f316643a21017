"""gzip for large JSON answers, when the client asks for it.

A task listing of 1,000 tasks is about 420 KiB of JSON and compresses about
20 times: over TLS, moving the bytes costs more than the listing itself.
kube-apiserver does the same (gzip above 128 KiB when ``Accept-Encoding``
allows it); small answers stay plain, where compressing costs more than
it saves.
"""

from __future__ import annotations

import zlib

# kube-apiserver's threshold.
MIN_BYTES = 128 * 1024
# A kept listing is compressed once per version, so it can afford a better ratio;
# a filtered one is compressed on every request.
KEPT_LEVEL = 6
PER_REQUEST_LEVEL = 1
_GZIP_WINDOW = 16 + zlib.MAX_WBITS  # zlib's way of asking for the gzip container


def accepts_gzip(header: str) -> bool:
    """Whether an ``Accept-Encoding`` header allows gzip (RFC 9110 12.5.3).

    ``gzip`` or ``*`` with a non-zero weight; an explicit ``gzip;q=0`` wins
    over ``*``.
    """
    wildcard = False
    for item in header.split(","):
        coding, _, params = item.strip().partition(";")
        coding = coding.strip().lower()
        if coding not in ("gzip", "x-gzip", "*"):
            continue
        allowed = _weight(params) > 0
        if coding == "*":
            wildcard = allowed
        else:
            return allowed
    return wildcard


def _weight(params: str) -> float:
    for param in params.split(";"):
        name, _, value = param.strip().partition("=")
        if name.strip().lower() == "q":
            try:
                return float(value)
            except ValueError:
                return 0.0  # a weight that does not parse allows nothing
    return 1.0


def gzip_bytes(body: bytes, level: int) -> bytes:
    compressor = zlib.compressobj(level, zlib.DEFLATED, _GZIP_WINDOW)
    return compressor.compress(body) + compressor.flush()
