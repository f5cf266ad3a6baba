"""Reading Pipeline documents from YAML files, with errors that name the file and document."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from penstock.errors import short_repr
from penstock.safeyaml import DocumentError, load_yaml_file

__all__ = ["Document", "DocumentError", "dump_documents", "load_documents"]


@dataclass(frozen=True)
class Document:
    source: str
    index: int
    body: Any

    @property
    def label(self) -> str:
        metadata = self.body.get("metadata") if isinstance(self.body, Mapping) else None
        name = metadata.get("name") if isinstance(metadata, Mapping) else None
        suffix = f" ({short_repr(name, 40)[1:-1]})" if isinstance(name, str) and name else ""
        return f"{self.source}#{self.index}{suffix}"


def load_documents(path: str) -> list[Document]:
    """All non-empty YAML documents of a file ('-' is standard input), read with the bounded
    loader (:mod:`penstock.safeyaml`); :class:`DocumentError` names the file, document and line."""
    return [Document(path, index, body) for index, body in load_yaml_file(path)]


class _NoAliasDumper(yaml.SafeDumper):
    """Shared dicts (labels on an object and its pod template) are written out in full."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_documents(bodies: list[Any]) -> str:
    return yaml.dump_all(bodies, Dumper=_NoAliasDumper, sort_keys=False, explicit_start=True)
