"""The whole suite against a live p9share, in each dialect: every case that
applies passes, and none is left "not applicable" (what --strict demands).
One test per case and dialect, so a failure names the case."""

from __future__ import annotations

import pytest

from p9share.conformance.registry import all_cases
from p9share.conformance.runner import PASS, Result, conforms, run, summary
from p9share.protocol.constants import Dialect

from .conftest import Served

CASES = [(k.id, d) for k in all_cases() for d in Dialect if d in k.dialects]
_results: dict[Dialect, dict[str, Result]] = {}


def results_for(served: Served, dialect: Dialect) -> dict[str, Result]:
    if dialect not in _results:
        rs = run(served.address, dialect, aname="export", ro_aname="ro", timeout=5)
        _results[dialect] = {r.id: r for r in rs}
    return _results[dialect]


@pytest.mark.parametrize(("case_id", "dialect"), CASES, ids=[f"{i}-{d.value}" for i, d in CASES])
def test_case_passes(served: Served, dialect: Dialect, case_id: str) -> None:
    r = results_for(served, dialect)[case_id]
    assert r.status == PASS, f"{case_id} [{r.section}] under {dialect.value}: {r.observed}"


@pytest.mark.parametrize("dialect", list(Dialect), ids=lambda d: d.value)
def test_strict_run_and_scratch_removed(served: Served, dialect: Dialect) -> None:
    rs = list(results_for(served, dialect).values())
    assert {r.id for r in rs} == {i for i, d in CASES if d is dialect}
    assert conforms(rs, strict=True), summary(rs)
    assert (
        summary(rs) == f"conformance: {len(rs)} passed, 0 failed, 0 not applicable (0 of them MUST)"
    )
    assert [p.name for p in served.root.iterdir() if p.name.startswith("p9conf-")] == []


def test_at_least_150_cases_and_each_dialect_has_its_own() -> None:
    cases = all_cases()
    assert len(cases) >= 150
    for d in Dialect:
        assert sum(d in k.dialects for k in cases) >= 100 or d is not Dialect.P9P2000L
        assert any(k.dialects == frozenset({d}) for k in cases), d
