from __future__ import annotations

import gzip

import pytest
from hypothesis import given
from hypothesis import strategies as st

from warren.manager.compression import accepts_gzip, gzip_bytes


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("gzip", True),
        ("GZIP", True),
        ("x-gzip", True),
        ("gzip, deflate, br", True),
        ("deflate, gzip;q=0.5", True),
        ("gzip; q=0.001", True),
        ("*", True),
        ("br, *;q=0.1", True),
        ("", False),
        ("identity", False),
        ("br, deflate", False),
        ("gzip;q=0", False),
        ("gzip;q=0.0", False),
        ("*;q=0", False),
        ("*, gzip;q=0", False),  # the explicit refusal wins over the wildcard
        ("gzip;q=nonsense", False),
    ],
)
def test_accept_encoding(header: str, expected: bool) -> None:
    assert accepts_gzip(header) is expected


@given(st.binary(max_size=4096), st.sampled_from([1, 6, 9]))
def test_gzip_bytes_is_gzip_that_reads_back(data: bytes, level: int) -> None:
    assert gzip.decompress(gzip_bytes(data, level)) == data
