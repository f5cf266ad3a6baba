"""The README's header table names every header the contract module defines, and no other."""

from __future__ import annotations

import re
from pathlib import Path

from penstock.contract import wire

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_lists_every_contract_header() -> None:
    defined = {
        value
        for name, value in vars(wire).items()
        if name.endswith("_HEADER") and isinstance(value, str)
    }
    listed = set(re.findall(r"^\| `(X-Penstock-[A-Za-z-]+)` \|", README.read_text(), re.M))
    assert listed == defined
