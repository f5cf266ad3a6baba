"""Unit tests: validating expected digests and hashing files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from penstock.preload import PreloadError
from penstock.preload.digest import normalize_sha256, sha256_file

GOOD = hashlib.sha256(b"model").hexdigest()


def test_none_means_not_given() -> None:
    assert normalize_sha256(None) is None


@pytest.mark.parametrize(
    "value", [GOOD, GOOD.upper(), f"  {GOOD}\n", f"sha256:{GOOD}", f"SHA256:{GOOD.upper()}"]
)
def test_accepted_spellings_normalize_to_lower_hex(value: str) -> None:
    assert normalize_sha256(value) == GOOD


@pytest.mark.parametrize(
    "value",
    ["", "abc", GOOD[:-1], GOOD + "0", "g" * 64, GOOD[:32] + " " + GOOD[33:], f"md5:{GOOD}"],
)
def test_malformed_digests_are_rejected_naming_the_field(value: str) -> None:
    with pytest.raises(PreloadError, match=r"^--sha256 .* is not a SHA-256 digest"):
        normalize_sha256(value, field="--sha256")


def test_very_long_values_are_shortened_in_the_message() -> None:
    with pytest.raises(PreloadError) as info:
        normalize_sha256("a" * 5000)
    assert len(str(info.value)) < 300


@given(st.binary(min_size=32, max_size=32))
def test_every_real_digest_is_accepted(raw: bytes) -> None:
    assert normalize_sha256(raw.hex()) == raw.hex()


@given(st.text(max_size=100))
def test_only_64_hex_digits_are_accepted(text: str) -> None:
    try:
        result = normalize_sha256(text)
    except PreloadError:
        return
    assert result is not None
    assert len(result) == 64
    assert set(result) <= set("0123456789abcdef")


def test_sha256_file(tmp_path: Path) -> None:
    data = b"x" * (3 * 1024 * 1024 + 7)
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
