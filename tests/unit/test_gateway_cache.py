"""Unit tests: cache key canonicalization and checksummed cache envelopes."""

from __future__ import annotations

import struct

import pytest
from multidict import CIMultiDict

from penstock.dataplane.gateway.cache import (
    KEY_PREFIX,
    CorruptEntry,
    Entry,
    Variants,
    cache_key,
    canonical_json,
    decode_entry,
    encode_entry,
    encode_variants,
    stored_confidence,
    variant_key,
)
from penstock.dataplane.jsonbody import canonical


def key(**overrides: object) -> str:
    args: dict[str, object] = {
        "pipeline": "rag",
        "stage": "embed",
        "stage_image": "registry.example/embedder:2.0",
        "model_version": "v1",
        "method": "POST",
        "path": "/",
        "body": {"text": "hello", "opts": {"a": 1, "b": [1, 2]}},
        "headers": {},
        "key_headers": ("accept",),
    }
    args.update(overrides)
    return cache_key(**args)  # type: ignore[arg-type]


def test_canonical_json_ignores_key_order_and_whitespace() -> None:
    assert canonical_json({"b": 1, "a": {"d": 2, "c": 3}}) == '{"a":{"c":3,"d":2},"b":1}'
    assert canonical_json({"t": "é"}) == '{"t":"é"}'


def test_key_is_the_same_for_equivalent_bodies() -> None:
    same = key(body={"opts": {"b": [1, 2], "a": 1}, "text": "hello"})
    assert key() == same
    assert key().startswith("penstock:cache:v3:")
    assert len(key().rsplit(":", 1)[1]) == 64


@pytest.mark.parametrize(
    "change",
    [
        {"pipeline": "other"},
        {"stage": "generate"},
        {"stage_image": "registry.example/embedder:2.1"},
        {"model_version": "v2"},
        {"method": "PUT"},
        {"path": "/?lang=de"},
        {"body": {"text": "hello!", "opts": {"a": 1, "b": [1, 2]}}},
        {"body": {"text": "hello", "opts": {"a": 1, "b": [2, 1]}}},
        {"headers": {"Accept": "text/plain"}},
    ],
)
def test_key_changes_with_everything_that_changes_the_answer(change: dict[str, object]) -> None:
    assert key(**change) != key()


def test_only_configured_headers_count_and_names_are_case_insensitive() -> None:
    assert key(headers={"X-Request-Id": "1"}) == key(headers={"X-Request-Id": "2"})
    assert key(headers={"ACCEPT": "a"}) == key(headers={"accept": "a"})
    assert key(headers={"accept": "a"}, key_headers=("Accept",)) == key(headers={"Accept": "a"})
    assert key(headers={"accept": ""}) != key(headers={})


def test_field_boundaries_are_unambiguous() -> None:
    assert key(pipeline="ab", stage="c") != key(pipeline="a", stage="bc")


def test_envelope_round_trip() -> None:
    entry = Entry(200, "application/json; charset=utf-8", b'{"x": 1}')
    assert decode_entry(encode_entry(entry)) == entry
    empty = Entry(204, "text/plain", b"")
    assert decode_entry(encode_entry(empty)) == empty


def test_an_entry_keeps_its_confidence() -> None:
    plain = Entry(200, "application/json", b"{}")
    unsure = Entry(200, "application/json", b"{}", confidence="0.25")
    assert encode_entry(plain)[:4] == b"PSC1"  # entries without one are stored as before
    assert encode_entry(unsure)[:4] == b"PSC2"
    assert decode_entry(encode_entry(unsure)) == unsure
    assert decode_entry(encode_entry(plain)).confidence is None  # type: ignore[union-attr]
    damaged = encode_entry(unsure).replace(b"\n0.25", b"\nxxxx")
    with pytest.raises(CorruptEntry):
        decode_entry(damaged)


@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        ("0.25", "0.25"),
        (" 1 ", "1"),
        ("1e-3", "1e-3"),
        ("", None),
        (None, None),
        ("sure", None),
        ("0.5\nX-Evil: 1", None),
        ("9" * 40, None),
    ],
)
def test_only_a_short_number_is_stored_as_confidence(sent: str | None, stored: str | None) -> None:
    assert stored_confidence(sent) == stored


def test_truncated_entry_is_rejected() -> None:
    data = encode_entry(Entry(200, "application/json", b'{"x": "' + b"y" * 100 + b'"}'))
    for cut in (0, 3, 10, len(data) // 2, len(data) - 1):
        with pytest.raises(CorruptEntry):
            decode_entry(data[:cut])


def test_extended_entry_is_rejected() -> None:
    data = encode_entry(Entry(200, "application/json", b"{}"))
    with pytest.raises(CorruptEntry, match="header says"):
        decode_entry(data + b"x")


def test_every_flipped_byte_is_detected() -> None:
    data = encode_entry(Entry(200, "application/json", b'{"answer": 42}'))
    for index in range(len(data)):
        damaged = bytearray(data)
        damaged[index] ^= 0x01
        with pytest.raises(CorruptEntry):
            decode_entry(bytes(damaged))


def test_foreign_value_is_rejected() -> None:
    with pytest.raises(CorruptEntry, match="format marker"):
        decode_entry(b'{"not": "an envelope", "padding": "................................"}')


def test_non_2xx_entry_is_never_served() -> None:
    data = encode_entry(Entry(500, "application/json", b"{}"))
    with pytest.raises(CorruptEntry, match="non-2xx"):
        decode_entry(data)


def test_length_mismatch_is_named() -> None:
    data = bytearray(encode_entry(Entry(200, "a/b", b"abc")))
    struct.pack_into(">I", data, 8, 2)  # body length field
    with pytest.raises(CorruptEntry, match="header says"):
        decode_entry(bytes(data))


def test_every_value_of_a_key_header_counts_in_order() -> None:
    one = CIMultiDict([("Authorization", "a")])
    two = CIMultiDict([("Authorization", "b"), ("Authorization", "a")])
    swapped = CIMultiDict([("Authorization", "a"), ("Authorization", "b")])
    keys = {key(headers=h, key_headers=("authorization",)) for h in (one, two, swapped)}
    assert len(keys) == 3


def test_raw_header_bytes_are_key_material_without_errors() -> None:
    # aiohttp holds undecodable header bytes as surrogates: they must key, not crash
    raw = CIMultiDict({"Accept": "caf\udce9"})
    assert key(headers=raw) != key(headers=CIMultiDict({"Accept": "café"}))
    assert key(headers=CIMultiDict({"Accept": "€"})) != key()


def test_canonical_bytes_and_values_give_the_same_key() -> None:
    body = {"text": "hello", "opts": {"a": 1, "b": [1, 2]}}
    assert key(body=canonical(body)) == key(body=body)


def test_variant_keys_cover_the_vary_headers() -> None:
    base = key()
    a = variant_key(base, ("cookie",), CIMultiDict({"Cookie": "a"}))
    assert a == variant_key(base, ("cookie",), CIMultiDict({"cookie": "a"}))
    assert a != variant_key(base, ("cookie",), CIMultiDict({"Cookie": "b"}))
    assert a != variant_key(base, ("cookie",), CIMultiDict())
    assert a != variant_key(key(stage="other"), ("cookie",), CIMultiDict({"Cookie": "a"}))
    assert a.startswith(KEY_PREFIX + "vary:")


def test_variants_marker_round_trip_and_damage() -> None:
    marker = Variants(("accept-language", "cookie"))
    data = encode_variants(marker)
    assert decode_entry(data) == marker
    for index in range(len(data)):
        damaged = bytearray(data)
        damaged[index] ^= 0x01
        try:
            decoded = decode_entry(bytes(damaged))
        except CorruptEntry:
            continue
        raise AssertionError(f"flipped byte {index} decoded as {decoded}")
    with pytest.raises(CorruptEntry):
        decode_entry(data[:20])
