"""The suite against Debian's diod: it runs, and what differs is what
docs/conformance-diod.md publishes, each difference with a reason."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from p9share.conformance import publish
from p9share.conformance.runner import FAIL

DOC = Path(__file__).resolve().parents[2] / "docs" / "conformance-diod.md"


def published_failures() -> set[str]:
    return set(re.findall(r"^\| `([^`]+)` \| fail \|", DOC.read_text(encoding="utf-8"), re.M))


@pytest.mark.skipif(not (shutil.which("diod") or Path("/usr/sbin/diod").exists()),
                    reason="diod is not installed (./scripts/install.sh --test)")  # fmt: skip
def test_diod_differences_match_the_published_comparison() -> None:
    results = publish.run_against_diod()
    failed = {r.id for r in results if r.status == FAIL}
    assert all(publish.reason_for(i) != "not explained" for i in failed)
    assert failed - publish.RACY == published_failures() - publish.RACY
    assert "conformance: " in DOC.read_text(encoding="utf-8")


def test_every_published_row_has_a_reason() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert "not explained" not in text
    assert published_failures()
