"""Reading Pipeline documents from YAML files, with errors that name the file and document."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


class DocumentError(Exception):
    """A file that cannot be read or parsed; the message names it."""


@dataclass(frozen=True)
class Document:
    source: str
    index: int
    body: Any

    @property
    def label(self) -> str:
        name = self.body.get("metadata", {}).get("name") if isinstance(self.body, dict) else None
        suffix = f" ({name})" if isinstance(name, str) else ""
        return f"{self.source}#{self.index}{suffix}"


def load_documents(path: str) -> list[Document]:
    """All non-empty YAML documents of a file ('-' is standard input)."""
    try:
        text = Path("/dev/stdin").read_text() if path == "-" else Path(path).read_text()
    except OSError as error:
        raise DocumentError(f"{path}: cannot read: {error.strerror or error}") from error
    try:
        bodies = list(yaml.safe_load_all(text))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        raise DocumentError(f"{path}:{where}: invalid YAML: {problem}") from error
    return [Document(path, index, body) for index, body in enumerate(bodies) if body is not None]


class _NoAliasDumper(yaml.SafeDumper):
    """Shared dicts (labels on an object and its pod template) are written out in full."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_documents(bodies: list[Any]) -> str:
    return yaml.dump_all(bodies, Dumper=_NoAliasDumper, sort_keys=False, explicit_start=True)
