"""The inputs of ``penstock analyze``: profile records, request bodies, a Pipeline, a router's
answers and a gateway's metrics. Anything malformed is an :class:`AnalyzeError` with one short
line naming the file and line (or URL), never a traceback."""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from penstock.api import PipelineSpec
from penstock.api.validation import validate_document
from penstock.contract import profile as profile_document
from penstock.contract.profile import Profile, ProfileError
from penstock.contract.wire import PROFILE_HEADER, STAGE_BATCH_SIZE
from penstock.errors import PenstockError, bounded
from penstock.safeyaml import DocumentError, load_yaml_file, read_limited

MAX_INPUT_BYTES = 256 * 1024 * 1024
MAX_ANSWER_BYTES = 64 * 1024 * 1024
_RETRY_STATUSES = (502, 503, 504)


class AnalyzeError(PenstockError):
    """Bad input; the message names the file and line (exit status 1)."""


class UsageError(AnalyzeError):
    """Options that do not go together or are out of range (exit status 2)."""


class NotReady(AnalyzeError):
    """The router is not there yet, or not ready (what ``--wait`` waits out)."""


def parse_profile(record: Any, where: str) -> Profile:
    """A router's profile answer (or a record holding one) -> :class:`Profile`."""
    try:
        return profile_document.parse_profile(record, where)
    except ProfileError as error:
        raise AnalyzeError(str(error)) from None


def read_text(path: str, what: str) -> str:
    """A UTF-8 text file ('-' is standard input), or an AnalyzeError naming it."""
    try:
        data = read_limited(path, MAX_INPUT_BYTES)
    except DocumentError as error:
        raise AnalyzeError(str(error)) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise AnalyzeError(
            f"{path}: {what} must be UTF-8 text (byte 0x{data[error.start]:02x} at offset"
            f" {error.start}; is it a binary file?)"
        ) from None


def _json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        raise AnalyzeError(f"{where}: JSON nested too deeply") from None
    except ValueError as error:
        raise AnalyzeError(bounded(f"{where}: not JSON: {error}")) from None


def load_profiles(path: str) -> list[Profile]:
    text = read_text(path, "a profile file")
    profiles = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            where = f"{path}:{number}"
            profiles.append(parse_profile(_json(line, where), where))
    if not profiles:
        raise AnalyzeError(f"{path}: no profiles")
    return profiles


def load_spec(path: str) -> PipelineSpec:
    try:
        documents = [body for _, body in load_yaml_file(path)]
    except DocumentError as error:
        raise AnalyzeError(str(error)) from None
    if len(documents) != 1:
        raise AnalyzeError(f"{path}: expected one Pipeline document (got {len(documents)})")
    result = validate_document(documents[0])
    if result.spec is None:
        first = "; ".join(str(problem) for problem in result.errors[:2])
        more = f" (and {len(result.errors) - 2} more)" if len(result.errors) > 2 else ""
        raise AnalyzeError(bounded(f"{path}: invalid Pipeline: {first}{more}", 600))
    return result.spec


def read_bodies(path: str, requests: int) -> list[Any]:
    """The request bodies: one JSON document, or JSON lines used in turn, ``requests`` in all."""
    text = read_text(path, "a request body file")
    try:
        bodies = [_json(text, path)]
    except AnalyzeError:
        bodies = [_json(line, f"{path}:{n}") for n, line in enumerate(text.splitlines(), 1) if line.strip()]  # fmt: skip
    if not bodies:
        raise AnalyzeError(f"{path}: no request bodies")
    return [bodies[i % len(bodies)] for i in range(requests)]


def _post(url: str, body: bytes, timeout: float) -> Any:
    request = urllib.request.Request(
        url,
        data=body,
        headers={"Content-Type": "application/json", PROFILE_HEADER: "1"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read(MAX_ANSWER_BYTES + 1)
    except urllib.error.HTTPError as error:
        detail = error.read(300).decode("utf-8", "replace")
        kind = NotReady if error.code in _RETRY_STATUSES else AnalyzeError
        raise kind(bounded(f"{url} answered HTTP {error.code}: {detail}")) from None
    except (urllib.error.URLError, OSError) as error:
        raise NotReady(bounded(f"cannot reach {url}: {error}")) from None
    except ValueError as error:  # not an http(s) URL
        raise UsageError(bounded(f"--url {url}: {error}")) from None
    if len(raw) > MAX_ANSWER_BYTES:
        raise AnalyzeError(f"{url} answered more than {MAX_ANSWER_BYTES} bytes")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise AnalyzeError(
            f"{url} answered something that is not JSON (a streamed output has no profile;"
            " run penstock dev with --no-stream)"
        ) from None


def _post_waiting(url: str, body: bytes, timeout: float, wait: float) -> Any:
    """:func:`_post`, retried while the router is not reachable or not ready, up to ``wait`` s."""
    deadline = time.monotonic() + wait
    told = False
    while True:
        try:
            return _post(url, body, timeout)
        except NotReady as error:
            if time.monotonic() >= deadline:
                suffix = (
                    f" (after waiting {wait:g} s)" if wait else " (--wait SECONDS waits for it)"
                )
                raise AnalyzeError(bounded(f"{error}{suffix}")) from None
            if not told:
                print(f"waiting up to {wait:g} s for {url} ...", file=sys.stderr, flush=True)
                told = True
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


def collect(
    url: str, bodies: Iterable[Any], timeout: float, wait: float = 0.0
) -> list[dict[str, Any]]:
    """One profiled request per body; the first waits up to ``wait`` s for the router."""
    records = []
    for index, body in enumerate(bodies):
        encoded = json.dumps(body).encode()
        answer = _post_waiting(url, encoded, timeout, wait if index == 0 else 0.0)
        if not isinstance(answer, dict) or "profile" not in answer:
            raise AnalyzeError(f"{url} answered without a profile (is it a penstock router?)")
        records.append({"request": body, **answer})
    return records


def fetch_text(url: str, timeout: float) -> str:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return bytes(response.read(MAX_ANSWER_BYTES)).decode("utf-8", "replace")
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise AnalyzeError(bounded(f"cannot read metrics from {url}: {error}")) from None


def parse_batch_metrics(text: str, source: str = "metrics") -> dict[str, float]:
    """Mean ``penstock_stage_batch_size`` per stage from a Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, float] = defaultdict(float)
    try:
        for family in text_string_to_metric_families(text):
            if family.name != STAGE_BATCH_SIZE:
                continue
            for sample in family.samples:
                stage = sample.labels.get("stage", "")
                if sample.name.endswith("_sum"):
                    sums[stage] += sample.value
                elif sample.name.endswith("_count"):
                    counts[stage] += sample.value
    except Exception as error:  # the parser raises several kinds on text that is not its format
        raise AnalyzeError(
            bounded(f"{source}: not Prometheus metrics (a gateway's admin /metrics?): {error}")
        ) from None
    return {stage: sums[stage] / counts[stage] for stage in counts if counts[stage] > 0}
