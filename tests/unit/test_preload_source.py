"""Unit tests: parsing and validating model URIs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from penstock.preload import PreloadError
from penstock.preload.source import parse_uri, redact


@pytest.mark.parametrize(
    ("uri", "location", "basename"),
    [
        ("file:///models/model.bin", "/models/model.bin", "model.bin"),
        ("file://localhost/models/model.bin", "/models/model.bin", "model.bin"),
        ("file:///models/my%20model.bin", "/models/my model.bin", "my model.bin"),
        ("/models/model.tar.gz", "/models/model.tar.gz", "model.tar.gz"),
        ("  /models/x.onnx\n", "/models/x.onnx", "x.onnx"),
    ],
)
def test_file_uris_and_absolute_paths(uri: str, location: str, basename: str) -> None:
    source = parse_uri(uri)
    assert source.scheme == "file"
    assert source.location == location
    assert source.basename == basename


@pytest.mark.parametrize(
    ("uri", "scheme", "basename"),
    [
        ("http://127.0.0.1:8080/m/model.bin", "http", "model.bin"),
        (
            "https://example.com/a/b/weights.safetensors?X-Amz-Signature=abc",
            "https",
            "weights.safetensors",
        ),
        ("HTTPS://example.com/m%2Bx.bin", "https", "m+x.bin"),
    ],
)
def test_http_uris(uri: str, scheme: str, basename: str) -> None:
    source = parse_uri(uri)
    assert source.scheme == scheme
    assert source.location == uri
    assert source.basename == basename


def test_s3_uri() -> None:
    source = parse_uri("s3://models/minilm/minilm-l6.tar.gz")
    assert (source.scheme, source.location, source.basename) == (
        "s3",
        "models/minilm/minilm-l6.tar.gz",
        "minilm-l6.tar.gz",
    )


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("gs://bucket/model.bin", "unsupported scheme 'gs://'"),
        ("ftp://host/model.bin", "unsupported scheme 'ftp://'"),
        ("models/model.bin", "neither an absolute path nor a URI"),
        ("file://otherhost/m.bin", "must be local"),
        ("file:relative/m.bin", "absolute path"),
        ("http:///model.bin", "no host name"),
        ("http://host:99999/model.bin", "bad port"),
        ("https://example.com/models/", "ending in '/'"),
        ("https://example.com", "ending in '/'"),
        ("s3://", "no bucket"),
        ("s3://bucket", "no object key"),
        ("s3://bucket/", "no object key"),
        ("s3://bucket/models/minilm/", "ending in '/'"),
        ("s3://bucket/m.bin?versionId=1", "'?' or '#'"),
        ("/models/..", "unusable file name"),
        ("/models/.penstock-preload.json", "reserved"),
        ("https://h/x/.penstock-preload-abc.part", "reserved"),
    ],
)
def test_bad_uris_are_rejected_naming_the_uri(uri: str, expected: str) -> None:
    with pytest.raises(PreloadError, match="model URI") as info:
        parse_uri(uri)
    assert expected in str(info.value)
    if uri.strip():
        assert uri.strip()[:12] in str(info.value)


def test_redact_hides_password_and_query() -> None:
    shown = redact("https://user:s3cret@example.com/m.bin?X-Amz-Signature=abcdef")
    assert "s3cret" not in shown
    assert "abcdef" not in shown
    assert shown == "https://user:***@example.com/m.bin?***"
    assert redact("s3://bucket/key") == "s3://bucket/key"


def test_errors_do_not_leak_the_query_string() -> None:
    with pytest.raises(PreloadError) as info:
        parse_uri("https://example.com/dir/?token=topsecret")
    assert "topsecret" not in str(info.value)


@given(st.text(max_size=200))
def test_any_text_either_parses_or_raises_preload_error(text: str) -> None:
    try:
        source = parse_uri(text)
    except PreloadError as exc:
        message = str(exc)
        assert message.startswith("model URI")
    else:
        assert source.scheme in ("file", "http", "https", "s3")
        assert source.basename not in ("", ".", "..")
        assert "/" not in source.basename
