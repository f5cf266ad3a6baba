"""Where a run's records go when --output is a URL: written locally (with the checkpoint, so a
run on the same disk resumes), then uploaded once complete. s3:// goes through boto3 (multipart
for large parts), http(s):// as one PUT (e.g. a presigned URL, or a server that takes PUTs)."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from penstock.batch.items import InputError, TransientError, retrying
from penstock.errors import PenstockError


class OutputError(PenstockError):
    """The records could not be uploaded."""


def is_remote(output: str) -> bool:
    return urlsplit(output).scheme in ("s3", "http", "https")


def part_name(shard: tuple[int, int]) -> str:
    index, count = shard
    return f"part-{index:05d}-of-{count:05d}.jsonl"


def destination(output: str, shard: tuple[int, int] | None) -> str:
    """The URL of this run's records: a prefix (ending in /) gets the part's name; a sharded
    run's URL without one gets `-<part name>`; otherwise the URL itself."""
    if output.endswith("/"):
        return output + part_name(shard or (0, 1))
    return f"{output}-{part_name(shard)}" if shard else output


def upload(path: Path, url: str, timeout: float = 300) -> None:
    scheme = urlsplit(url).scheme
    if scheme == "s3":
        _upload_s3(path, url)
        return
    size = path.stat().st_size

    def put() -> None:
        with path.open("rb") as body:
            request = urllib.request.Request(
                url,
                data=body,
                method="PUT",
                headers={"Content-Type": "application/x-ndjson", "Content-Length": str(size)},
            )
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    response.read()
            except urllib.error.HTTPError as error:
                if error.code >= 500 or error.code == 429:
                    raise TransientError(f"PUT answered HTTP {error.code} {error.reason}") from None
                raise OutputError(
                    f"output {url}: PUT answered HTTP {error.code} {error.reason}"
                ) from None
            except (urllib.error.URLError, OSError) as error:
                reason = getattr(error, "reason", error)
                raise TransientError(f"cannot PUT: {reason}") from None

    try:
        retrying(f"output {url}", put)
    except InputError as error:  # retrying's "gave up", here about the output
        raise OutputError(str(error)) from None


def _upload_s3(path: Path, url: str) -> None:
    import boto3

    from penstock.preload.fetch import s3_endpoint_url

    bucket, _, key = url.removeprefix("s3://").partition("/")
    if not bucket or not key:
        raise OutputError(f"output {url}: expected s3://BUCKET/KEY or s3://BUCKET/PREFIX/")
    try:
        client = boto3.session.Session().client("s3", endpoint_url=s3_endpoint_url())
        client.upload_file(str(path), bucket, key)
    except Exception as error:  # botocore raises many unrelated types
        raise OutputError(f"output {url}: {type(error).__name__}: {error}") from None
