"""A bounded YAML loader: every YAML file the CLI reads goes through :func:`load_yaml`.

``yaml.safe_load`` builds no dangerous objects, but a hostile document can still hurt:
a 1 KB alias bomb expands into gigabytes once something walks it, deep nesting ends in a
RecursionError, duplicate keys are merged silently, and odd scalars (``!!int ""``, a
5000-digit integer, ``.nan``) raise exceptions that are not ``YAMLError``. :class:`BoundedLoader`
refuses all of that with one short message naming the file, the document and the line:

- at most :data:`MAX_ALIASES` aliases per document, and a document may not expand (aliases
  counted as copies of what they name) to more than :data:`MAX_NODES` nodes; an alias to an
  enclosing node (a recursive structure) is refused;
- nesting at most :data:`MAX_DEPTH` levels; documents at most :data:`MAX_DOCUMENT_CHARS`
  characters, files at most :data:`MAX_FILE_BYTES` bytes and :data:`MAX_DOCUMENTS` documents;
- a key repeated in one mapping is an error naming the key and both lines (``<<`` merges may
  still be overridden);
- only JSON's types, like ``kubectl``: timestamps stay strings, ``!!binary``, ``!!set``,
  ``!!omap``, ``!!pairs`` and ``!!timestamp`` are refused, as are ``.nan``/``.inf`` and integers
  outside int64;
- input must be UTF-8 text.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, NoReturn

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.error import MarkedYAMLError
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode

from penstock.errors import PenstockError, bounded, short_repr

MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_DOCUMENT_CHARS = 2 * 1024 * 1024
MAX_DOCUMENTS = 10_000
MAX_ALIASES = 64
MAX_NODES = 200_000
MAX_DEPTH = 64
_INT64 = 2**63
_JSON_TAGS = {
    "tag:yaml.org,2002:" + name for name in ("null", "bool", "int", "float", "str", "seq", "map")
}


class DocumentError(PenstockError):
    """A file that cannot be read or parsed; the message names it (and the document, line)."""


def _refuse(problem: str, mark: Any) -> NoReturn:
    raise ComposerError(None, None, problem, mark)


def _unreadable(problem: str, node: Node) -> NoReturn:
    raise ConstructorError(None, None, problem, node.start_mark)


class BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with the limits above; use it through :func:`load_yaml`."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._start_document(0)

    def _start_document(self, start: int) -> None:
        self._doc_start = start
        self._aliases = 0
        self._expanded = 0
        self._depth = 0
        self._sizes: dict[int, int] = {}

    def _peek(self) -> Any:
        return self.peek_event()  # type: ignore[no-untyped-call]

    def _grow(self, count: int, mark: Any) -> None:
        self._expanded += count
        if self._expanded > MAX_NODES:
            _refuse(
                f"more than {MAX_NODES} values in one document (an alias counts as a copy)", mark
            )

    def compose_document(self) -> Node | None:
        self._start_document(self._peek().start_mark.index)
        node: Node | None = super().compose_document()
        return node

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        event = self._peek()
        mark = event.start_mark
        if isinstance(event, AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                _refuse(f"more than {MAX_ALIASES} aliases in one document", mark)
            target = self.anchors.get(event.anchor or "")
            if target is not None:
                size = self._sizes.get(id(target))
                if size is None:  # registered but not finished: an enclosing node
                    _refuse(f"alias *{event.anchor} refers to a node it is inside of", mark)
                self._grow(size, mark)
            aliased: Node | None = super().compose_node(parent, index)
            return aliased
        if mark.index - self._doc_start > MAX_DOCUMENT_CHARS:
            _refuse(f"the document is longer than {MAX_DOCUMENT_CHARS} characters", mark)
        if self._depth >= MAX_DEPTH:
            _refuse(f"nested deeper than {MAX_DEPTH} levels", mark)
        self._depth += 1
        before = self._expanded
        self._grow(1, mark)
        try:
            node: Node | None = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if node is not None:
            self._sizes[id(node)] = self._expanded - before
        return node

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        if node.tag not in _JSON_TAGS and node.tag != "tag:yaml.org,2002:value":
            short = node.tag.replace("tag:yaml.org,2002:", "!!")
            _unreadable(f"tag {short_repr(short, 40)} is not allowed (JSON types only)", node)
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, KeyError, IndexError, TypeError, OverflowError) as error:
            if isinstance(error, yaml.YAMLError):
                raise
            kind = node.tag.rsplit(":", 1)[-1]
            _unreadable(f"cannot read {short_repr(node.value, 40)} as {kind}", node)

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, ScalarNode):
                continue
            key = self.construct_object(key_node)
            if not isinstance(key, str | int | float | bool | None):
                continue
            line = key_node.start_mark.line + 1
            if (type(key), key) in seen:
                first = seen[type(key), key]
                _unreadable(
                    f"duplicate key {short_repr(key, 60)} (first at line {first})", key_node
                )
            seen[type(key), key] = line
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping

    def construct_yaml_int(self, node: ScalarNode) -> int:
        if len(str(node.value)) > 40:
            _unreadable("integer out of range (int64)", node)
        value: int = super().construct_yaml_int(node)
        if not -_INT64 <= value < _INT64:
            _unreadable("integer out of range (int64)", node)
        return value

    def construct_yaml_float(self, node: ScalarNode) -> float:
        value: float = super().construct_yaml_float(node)
        if value != value or value in (float("inf"), float("-inf")):
            _unreadable(f"{short_repr(node.value, 20)} is not a JSON number", node)
        return value


BoundedLoader.add_constructor("tag:yaml.org,2002:int", BoundedLoader.construct_yaml_int)
BoundedLoader.add_constructor("tag:yaml.org,2002:float", BoundedLoader.construct_yaml_float)
# Like kubectl (YAML -> JSON): a date or time written without quotes is a string.
BoundedLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _describe(error: yaml.YAMLError, text: str) -> tuple[str, str]:
    """(where, what) of a YAML error: a line and column when known, and the problem."""
    if isinstance(error, MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = error.problem or error.context or "invalid YAML"
        if error.context and error.problem and "while" in error.context:
            what = f"{error.problem} ({error.context})"
        return where, str(what)
    if isinstance(error, yaml.reader.ReaderError):
        char = error.character
        code = ord(char) if isinstance(char, str) else int(char)
        before = text[: error.position]
        line, column = before.count("\n") + 1, error.position - (before.rfind("\n") + 1) + 1
        return (
            f"line {line}, column {column}",
            f"unacceptable character #x{code:04x} (binary data?)",
        )
    return "", str(error)


def load_yaml(text: str | bytes, source: str) -> list[tuple[int, Any]]:
    """Every document of ``text`` as (index in the stream, body); empty documents left out.

    Raises :class:`DocumentError` ("``source``#index: line L, column C: problem").
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as error:
            raise DocumentError(
                f"{source}: not UTF-8 text (byte 0x{text[error.start]:02x} at offset"
                f" {error.start}): is it a binary file?"
            ) from None
    text = text.removeprefix("\ufeff")
    documents: list[tuple[int, Any]] = []
    index = 0
    loader: BoundedLoader | None = None
    try:
        loader = BoundedLoader(text)
        while loader.check_node():
            if index >= MAX_DOCUMENTS:
                raise DocumentError(f"{source}: more than {MAX_DOCUMENTS} documents")
            body = loader.construct_document(loader.get_node())
            if body is not None:
                documents.append((index, body))
            index += 1
    except yaml.YAMLError as error:
        where, what = _describe(error, text)
        place = f"{source}#{index}: {where}" if where else f"{source}#{index}"
        raise DocumentError(bounded(f"{place}: invalid YAML: {what}")) from None
    finally:
        if loader is not None:
            loader.dispose()
    return documents


def read_limited(path: str, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of ``path`` ('-' is standard input), refusing more than ``limit``."""
    try:
        if path == "-":
            data = sys.stdin.buffer.read(limit + 1)
        else:
            with Path(path).open("rb") as handle:
                data = handle.read(limit + 1)
    except OSError as error:
        raise DocumentError(bounded(f"{path}: cannot read: {error.strerror or error}")) from None
    if len(data) > limit:
        raise DocumentError(f"{path}: larger than {limit} bytes")
    return data


def load_yaml_file(path: str) -> list[tuple[int, Any]]:
    """:func:`load_yaml` of a file's content ('-' is standard input)."""
    return load_yaml(read_limited(path), path)
