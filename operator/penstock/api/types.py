"""Shared constrained types and the base model every API object derives from."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "penstock.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "Pipeline"
PLURAL = "pipelines"

DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_DNS1123_LABEL_RE = re.compile(DNS1123_LABEL)
# A Kubernetes label value: empty, or alphanumerics with -_. inside, at most 63 characters.
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
# The quantity grammar of k8s.io/apimachinery/pkg/api/resource (decimal or binary SI suffixes).
QUANTITY = r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|[numkMGTPE]|[KMGTPE]i)?$"
_QUANTITY_RE = re.compile(QUANTITY)
_SUFFIX = {
    "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
    "k": Decimal("1e3"), "M": Decimal("1e6"), "G": Decimal("1e9"), "T": Decimal("1e12"),
    "P": Decimal("1e15"), "E": Decimal("1e18"),
    "Ki": Decimal(2**10), "Mi": Decimal(2**20), "Gi": Decimal(2**30), "Ti": Decimal(2**40),
    "Pi": Decimal(2**50), "Ei": Decimal(2**60),
}  # fmt: skip
SHA256 = r"^[a-f0-9]{64}$"
DECIMAL = r"^\d{1,9}(\.\d{1,6})?$"


def is_dns1123_label(value: str) -> bool:
    return len(value) <= 63 and bool(_DNS1123_LABEL_RE.match(value))


def parse_quantity(value: str | int | float) -> Decimal:
    """Parse a Kubernetes quantity ("500m", "1Gi", "2", 3) into a Decimal; ValueError if malformed."""
    text = str(value).strip()
    if not _QUANTITY_RE.match(text):
        raise ValueError(f"{value!r} is not a Kubernetes quantity (examples: 500m, 2, 1Gi)")
    suffix = text.lstrip("+-0123456789.")
    if suffix[:1] in ("e", "E"):
        number, exponent = text, ""
    else:
        number, exponent = text[: len(text) - len(suffix)], suffix
    try:
        return Decimal(number) * _SUFFIX[exponent]
    except (InvalidOperation, KeyError) as error:
        raise ValueError(f"{value!r} is not a Kubernetes quantity") from error


def _check_quantity(value: str | int) -> str | int:
    parse_quantity(value)
    return value


def _check_label(value: str) -> str:
    if not is_dns1123_label(value):
        raise ValueError(
            f"{value!r} is not a DNS-1123 label (lowercase letters, digits and '-', "
            "starting and ending with a letter or digit, at most 63 characters)"
        )
    return value


Quantity = Annotated[
    int | str,
    AfterValidator(_check_quantity),
    Field(json_schema_extra={"x-kubernetes-int-or-string": True, "pattern": QUANTITY}),
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
    """camelCase on the wire, unknown fields rejected, snake_case in Python."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
        validate_default=False,
    )

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")
