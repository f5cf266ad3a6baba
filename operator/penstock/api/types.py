"""Shared constrained types and the base model every API object derives from."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, JsonValue
from pydantic.alias_generators import to_camel

from penstock.errors import short_repr
from penstock.quantity import (
    MAX_QUANTITY_LENGTH,
    NON_NEGATIVE_QUANTITY_PATTERN,
    parse_non_negative_quantity,
    parse_quantity,
)

__all__ = ["parse_quantity"]  # re-exported: callers import it from here

GROUP = "penstock.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "Pipeline"
PLURAL = "pipelines"

DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_DNS1123_LABEL_RE = re.compile(DNS1123_LABEL)
# A Kubernetes label value: empty, or alphanumerics with -_. inside, at most 63 characters.
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
SHA256 = r"^[a-f0-9]{64}$"
DECIMAL = r"^\d{1,9}(\.\d{1,6})?$"


def is_dns1123_label(value: str) -> bool:
    return len(value) <= 63 and bool(_DNS1123_LABEL_RE.fullmatch(value))


def _check_quantity(value: str | int) -> str | int:
    parse_non_negative_quantity(value)
    return value


def _quantity_type(value: object) -> object:
    """Before the int-or-string check: one clear message for a float, bool or anything else."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        parse_quantity(value)  # type: ignore[arg-type]  # raises, naming the value
    return value


def _check_label(value: str) -> str:
    if not is_dns1123_label(value):
        raise ValueError(
            f"{short_repr(value)} is not a DNS-1123 label (lowercase letters, digits and '-', "
            "starting and ending with a letter or digit, at most 63 characters)"
        )
    return value


# A non-negative quantity: every quantity of the API is a size, a resource amount or a cost.
Quantity = Annotated[
    int | str,
    AfterValidator(_check_quantity),
    BeforeValidator(_quantity_type),
    Field(
        json_schema_extra={
            "x-kubernetes-int-or-string": True,
            "pattern": NON_NEGATIVE_QUANTITY_PATTERN,
            "maxLength": MAX_QUANTITY_LENGTH,
        }
    ),
]
# The pattern goes into the CRD only; pydantic runs _check_label, whose message is friendlier.
Dns1123Label = Annotated[
    str,
    AfterValidator(_check_label),
    Field(max_length=63, json_schema_extra={"pattern": DNS1123_LABEL}),
]
# Shorter than a label, so "<pipeline>-<stage>" names stay readable before any hashing.
StageName = Annotated[
    str,
    AfterValidator(_check_label),
    Field(max_length=40, json_schema_extra={"pattern": DNS1123_LABEL}),
]


class ApiModel(BaseModel):
    """camelCase on the wire, snake_case in Python; as strict as the apiserver.

    Input is read by its wire (camelCase) names only: the apiserver drops a snake_case field,
    so accepting one would let a user believe it is set. Unknown fields are errors. Types are
    strict: no bool -> int, no "8080" -> 8080, no 1.5 -> "1.5" (an int is still a float).
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_alias=True,
        validate_by_name=False,
        strict=True,
        extra="forbid",
        use_attribute_docstrings=True,
        validate_default=False,
    )

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def cel_rules(*rules: tuple[str, str]) -> dict[str, JsonValue]:
    """CEL rules the apiserver checks (x-kubernetes-validations); validation.py checks them too."""
    return {"x-kubernetes-validations": [{"rule": rule, "message": msg} for rule, msg in rules]}
