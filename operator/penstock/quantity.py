"""Kubernetes quantities ("500m", "1Gi", "2E", "1e3"), parsed the way the apiserver does.

A leaf module (it imports nothing of Penstock): the API validates with it, and the preload
init container, which stands alone, reads its --max-bytes with it.

The grammar is the one documented in k8s.io/apimachinery/pkg/api/resource/quantity.go::

    <quantity>        ::= <signedNumber><suffix>
    <signedNumber>    ::= <number> | <sign><number>
    <number>          ::= <digits> | <digits>.<digits> | <digits>. | .<digits>
    <suffix>          ::= <binarySI> | <decimalExponent> | <decimalSI>
    <binarySI>        ::= Ki | Mi | Gi | Ti | Pi | Ei
    <decimalSI>       ::= n | u | m | "" | k | M | G | T | P | E
    <decimalExponent> ::= "e" <signedInteger> | "E" <signedInteger>

(the apiserver's scanner takes only digits after ``e``, so the exponent is an integer). "1E" is
10^18, "1Ei" 2^60 and "1E3" 1000. Like the apiserver, a value more precise than 1n is rounded
up (away from zero) to the next nano. Where the apiserver would silently cap a magnitude above
2^63-1, this is an error; so is a quantity longer than :data:`MAX_QUANTITY_LENGTH` characters.
Degenerate strings the apiserver's scanner happens to read as 0 ("+", "-", ".") are refused.
Every failure is a ``ValueError`` with a short message, never another exception.
"""

from __future__ import annotations

import re
from decimal import ROUND_UP, Context, Decimal, InvalidOperation, Overflow

MAX_QUANTITY_LENGTH = 64
MAX_MAGNITUDE = Decimal(2**63 - 1)
_NUMBER = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_SUFFIX = r"(?:[eE][+-]?[0-9]+|[KMGTPE]i|[numkMGTPE])?"
# For the CRD (the apiserver checks it): any quantity, and a non-negative one.
QUANTITY_PATTERN = rf"^[+-]?{_NUMBER}{_SUFFIX}$"
NON_NEGATIVE_QUANTITY_PATTERN = rf"^\+?{_NUMBER}{_SUFFIX}$"
_PARSE = re.compile(
    r"([+-]?)([0-9]*)(?:\.([0-9]*))?(?:([eE])([+-]?[0-9]+)|([KMGTPE]i|[numkMGTPE]))?"
)
_DECIMAL_SI = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_BINARY_SI = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_NANO = Decimal("1e-9")
# Exact for every accepted input: at most 64 digits times 2^60, or a bounded power of ten.
_CONTEXT = Context(prec=200, Emax=10**6, Emin=-(10**6), traps=[InvalidOperation, Overflow])
_EXAMPLES = "examples: 500m, 2, 1.5Gi, 1e3"


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_quantity(value: str | int) -> Decimal:
    """The exact value of a quantity (a string, or an integer as YAML gives it).

    Raises ``ValueError`` naming the value when it is not a quantity or is out of range.
    """
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(
            f"{_shown(value)} is not a Kubernetes quantity: use an integer or a string"
            f" ({_EXAMPLES})"
        )
    text = str(value)
    if len(text) > MAX_QUANTITY_LENGTH:
        raise ValueError(f"{_shown(value)} is longer than {MAX_QUANTITY_LENGTH} characters")
    match = _PARSE.fullmatch(text)
    if match is None or not (match.group(2) or match.group(3)):
        raise ValueError(f"{_shown(value)} is not a Kubernetes quantity ({_EXAMPLES})")
    sign, whole, fraction, exp_mark, exponent, suffix = match.groups()
    fraction = fraction or ""
    mantissa = int(whole + fraction or "0")
    if sign == "-":
        mantissa = -mantissa
    if mantissa == 0:
        return Decimal(0)
    scale = -len(fraction)
    binary = 0
    if exp_mark:
        power = int(exponent)
        if power > 10_000:
            raise _too_large(value)
        if power < -10_000:  # far below 1n: rounded up to it, as the apiserver does
            return _NANO if mantissa > 0 else -_NANO
        scale += power
    elif suffix in _BINARY_SI:
        binary = _BINARY_SI[suffix]
    else:
        scale += _DECIMAL_SI[suffix or ""]
    try:
        amount = _CONTEXT.scaleb(_CONTEXT.multiply(Decimal(mantissa), Decimal(2**binary)), scale)
    except (InvalidOperation, Overflow):
        raise _too_large(value) from None
    if abs(amount) > MAX_MAGNITUDE:
        raise _too_large(value)
    if amount.as_tuple().exponent < -9:  # type: ignore[operator]
        amount = amount.quantize(_NANO, rounding=ROUND_UP, context=_CONTEXT)
    return amount


def _too_large(value: object) -> ValueError:
    return ValueError(f"{_shown(value)} is too large: a quantity is at most 2^63-1")


def parse_non_negative_quantity(value: str | int) -> Decimal:
    """:func:`parse_quantity`, refusing negative values (and a leading ``-``, even on 0)."""
    amount = parse_quantity(value)
    if amount < 0 or (isinstance(value, str) and value.startswith("-")):
        raise ValueError(f"{_shown(value)} is negative: it must be 0 or more")
    return amount
