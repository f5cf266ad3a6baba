"""Random and hostile Pipelines: never a traceback, only short messages naming document and field.

Also: every command that reads YAML uses the bounded loader (penstock.safeyaml).
"""

from __future__ import annotations

import copy
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from penstock.api.cost import PriceTable
from penstock.api.validation import MAX_PROBLEMS, validate_document
from penstock.contract.topology import TopologyError
from penstock.dataplane.router.topology import load_pipeline as router_load
from penstock.dev.analyze import AnalyzeError, load_spec
from penstock.dev.runner import DevError
from penstock.dev.runner import load_pipeline as dev_load
from penstock.documents import Document, DocumentError, load_documents
from penstock.errors import MAX_MESSAGE
from penstock.safeyaml import load_yaml
from tests.support import pipeline_examples
from tests.unit.test_safeyaml import bomb
from tests.unit.test_strict_api import FULL, doc, nodes

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = pipeline_examples()

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=300)
    | st.sampled_from(["", "a", "-1", "1e9999999", "1Ei", "router", "input", "Gi", "a" * 5000])
)
JSON = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(
            st.text(max_size=300) | st.sampled_from(["name", "image", "stages", "spec"]),
            children,
            max_size=5,
        )
    ),
    max_leaves=40,
)


def assert_short(messages: list[str]) -> None:
    for message in messages:
        assert len(message) <= MAX_MESSAGE, message[:200]
        assert "\n" not in message


def check(body: Any) -> None:
    result = validate_document(body)
    assert len(result.errors) <= MAX_PROBLEMS
    assert_short([str(p) for p in [*result.errors, *result.warnings]])
    assert_short([Document("f.yaml", 0, body).label])
    assert result.valid == (result.spec is not None and not result.errors)


@given(JSON)
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_documents_are_validated_without_a_traceback(body: Any) -> None:
    check(body)
    check(doc(body))
    check(
        {"apiVersion": "penstock.dev/v1alpha1", "kind": "Pipeline", "metadata": body, "spec": FULL}
    )


PATHS = [path for path, _ in nodes(FULL) if path]


@given(st.lists(st.tuples(st.sampled_from(PATHS), JSON), min_size=1, max_size=4))
@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_a_full_spec_with_random_parts_is_validated_without_a_traceback(
    edits: list[tuple[tuple[Any, ...], Any]],
) -> None:
    spec = copy.deepcopy(FULL)
    for path, value in edits:
        node = spec
        try:
            for part in path[:-1]:
                node = node[part]
            node[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit replaced a parent
    check(doc(spec))


EXAMPLE_TEXTS = [path.read_text() for path in EXAMPLES]
EDIT_CHARS = [*"ab0 :-[]{},&*!|>'\"#?\n.~", "\t", "\x00", "é"]


@given(
    st.sampled_from(EXAMPLE_TEXTS),
    st.lists(
        st.tuples(
            st.floats(0, 1),
            st.sampled_from(["insert", "delete", "replace"]),
            st.sampled_from(EDIT_CHARS),
        ),
        max_size=6,
    ),
)
@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_damaged_example_files_are_read_and_validated_without_a_traceback(
    text: str, edits: list[tuple[float, str, str]]
) -> None:
    for where, action, char in edits:
        at = int(where * len(text))
        if action == "insert":
            text = text[:at] + char + text[at:]
        elif action == "delete":
            text = text[:at] + text[at + 1 :]
        else:
            text = text[:at] + char + text[at + 1 :]
    try:
        documents = load_yaml(text, "f.yaml")
    except DocumentError as error:
        assert_short([str(error)])
        return
    for _, body in documents:
        check(body)


# ----------------------------------------------------------------- every YAML reader

HOSTILE = {
    "alias bomb": (bomb(), "values in one document (an alias counts as a copy)"),
    "duplicate key": (
        "apiVersion: penstock.dev/v1alpha1\nkind: Pipeline\nkind: Other\n",
        "duplicate key 'kind'",
    ),
    "deep nesting": ("a: " + "[" * 50_000, "nested deeper than"),
    "binary": (b"\x7fELF\x02\x01\x01\x00\xff\x00\x00", "not UTF-8 text"),
    "NUL": (b"a: \x00", "unacceptable character #x0000"),
}
READERS: dict[str, tuple[Callable[[str], Any], type[Exception]]] = {
    "validate/render": (load_documents, DocumentError),
    "dev": (dev_load, DevError),
    "analyze --pipeline": (load_spec, AnalyzeError),
    "router --pipeline": (lambda path: router_load(path, {}), TopologyError),
    "operator --price-table": (PriceTable.from_file, ValueError),
}


@pytest.mark.parametrize("reader", sorted(READERS))
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_every_reader_uses_the_bounded_loader(tmp_path: Path, reader: str, case: str) -> None:
    content, needle = HOSTILE[case]
    path = tmp_path / "hostile.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    read, error_type = READERS[reader]
    started = time.monotonic()
    with pytest.raises(error_type) as caught:
        read(str(path))
    assert time.monotonic() - started < 5
    assert needle in str(caught.value)
    assert str(path) in str(caught.value)
    assert_short([str(caught.value)])


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "penstock.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (bomb(), "values in one document (an alias counts as a copy)"),
        (
            "apiVersion: penstock.dev/v1alpha1\nkind: Pipeline\nmetadata: null\nspec: {}\n",
            "metadata: must be a mapping",
        ),
        (
            "apiVersion: penstock.dev/v1alpha1\nkind: Pipeline\nmetadata: {name: p}\nspec:\n  stages:\n"
            + "  " * 100
            + "[" * 100,
            "nested deeper",
        ),
        ("metadata: {name: " + "x" * 100_000 + "}\n", "metadata.name"),
        (
            yaml.safe_dump(doc({"stages": [{"name": f"s{i}", "image": i} for i in range(32)]})),
            "and 13 more errors",
        ),
    ],
)
@pytest.mark.parametrize("command", ["validate", "render"])
def test_cli_gives_short_messages_and_no_traceback(
    tmp_path: Path, command: str, content: str, needle: str
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(content)
    result = run(command, str(path))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert needle in result.stderr
    lines = result.stderr.splitlines()
    assert 1 <= len(lines) <= MAX_PROBLEMS
    assert all(line.startswith((f"{path}#", "error: ")) for line in lines)
    assert_short([line.replace(str(path), "f.yaml") for line in lines])
