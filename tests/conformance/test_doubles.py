"""The suite fails servers that break a rule in ways it once let through as
"not applicable": each double is a live p9share behind a proxy that breaks
one rule (tests/conformance/doubles.py)."""

from __future__ import annotations

import pytest

from p9share.conformance.runner import FAIL, PASS, conforms, run
from p9share.protocol.constants import Dialect

from .conftest import Served
from .doubles import EmptyReadForEinval, IgnoreReusedTags, XattrsVanish, proxied


def statuses(address: str, dialect: Dialect, only: str) -> dict[str, tuple[str, str]]:
    rs = run(address, dialect, aname="export", ro_aname="ro", only=only, timeout=5)
    assert not conforms(rs)
    return {r.id: (r.status, r.observed) for r in rs}


@pytest.mark.parametrize(
    ("dialect", "case_id"),
    [(Dialect.P9P2000L, "readdir.count-too-small"), (Dialect.P9P2000U, "dirread.count-too-small")],
    ids=lambda v: getattr(v, "value", v),
)
def test_an_empty_read_instead_of_einval_fails(
    served: Served, dialect: Dialect, case_id: str
) -> None:
    # the same case passes without the proxy, so the proxy is what fails it
    (direct,) = run(served.address, dialect, aname="export", only=case_id)
    assert direct.status == PASS, direct.observed
    with proxied(served.address, EmptyReadForEinval) as address:
        status, observed = statuses(address, dialect, case_id)[case_id]
    assert status == FAIL
    assert "EINVAL" in observed and ("empty" in observed or "0 bytes" in observed), observed


@pytest.mark.parametrize("dialect", list(Dialect), ids=lambda d: d.value)
def test_a_server_that_ignores_reused_tags_fails(served: Served, dialect: Dialect) -> None:
    with proxied(served.address, IgnoreReusedTags) as address:
        got = statuses(address, dialect, "§3")
    status, observed = got["tags.duplicate-pooled-closes"]
    assert status == FAIL and "not detected" in observed, observed
    # the proxy keeps every other rule of §3: only the tag case fails
    assert {i for i, (s, _) in got.items() if s != PASS} == {"tags.duplicate-pooled-closes"}


def test_eopnotsupp_for_xattrs_that_worked_fails(served: Served) -> None:
    # the suite's probe (first connection) sets a user xattr; later, every
    # xattr request gets EOPNOTSUPP: each xattr case fails, none is n/a
    XattrsVanish.connections = 0
    with proxied(served.address, XattrsVanish) as address:
        got = statuses(address, Dialect.P9P2000L, "§5.2[678]")
    assert got and all(s == FAIL for s, _ in got.values()), got
    assert sum("worked in the probe of this run" in o for _, o in got.values()) >= 10
