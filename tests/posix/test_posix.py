"""The POSIX semantics suite: every case of cases.py on every target.

A known difference from the local baseline is an xfail(strict=True) here,
with its reason, and a row of docs/posix-differences.md.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .cases import CASES
from .conftest import Target

# (target, case) -> why it differs from a local directory
DIFFERENCES: dict[tuple[str, str], str] = {
    ("fuse", "chmod_setid"): "p9share's policy strips set-id bits unless the client's rights "
    "allow them (allow.setid, off by default)",
    ("fuse", "xattr_empty_value"): "9P2000.L: Txattrcreate with size 0 means removal "
    "(docs/protocol.md §9.12), so an empty value cannot be stored",
}

C_HELPER = Path(__file__).resolve().parents[2] / "src/p9share/vmlab/guest/p9posix.c"


@pytest.mark.parametrize("name", list(CASES))
def test_case(target: Target, name: str, request: pytest.FixtureRequest) -> None:
    reason = DIFFERENCES.get((target.name, name))
    if reason:
        request.applymarker(pytest.mark.xfail(reason=reason, strict=True))
    d, _ = target.fresh()
    CASES[name](d)


def test_case_names_match_the_guest_helper() -> None:
    """p9posix.c runs the same named cases in the VM."""
    src = C_HELPER.read_text()
    table = re.search(r"CASES\[\]\s*=\s*\{(.*?)\};", src, re.S)
    assert table, "no CASES[] table in p9posix.c"
    names = re.findall(r'\{\s*"([a-z0-9_]+)"\s*,', table.group(1))
    assert names == list(CASES)


def test_differences_documented() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs/posix-differences.md").read_text()
    for tgt, name in DIFFERENCES:
        assert re.search(rf"\|\s*{tgt}\s*\|\s*`?{name}`?\s*\|", doc), (tgt, name)
