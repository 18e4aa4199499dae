"""Under 9P2000 the suite checks Rerror's ename (§6.3): the strerror text of
the expected errno, or in the cases that allow it the server's own reason,
never the text of another errno."""

from __future__ import annotations

import errno
from types import SimpleNamespace
from typing import cast

import pytest

from p9share.client.raw import RawClient
from p9share.conformance.context import Conn, Context
from p9share.conformance.registry import Failure
from p9share.protocol import messages as m
from p9share.protocol.constants import Dialect


def check(case_id: str, ename: str, *want: int) -> str:
    ctx = Context("tcp:127.0.0.1:9", Dialect.P9P2000, "", "", case_id)
    conn = Conn(ctx, cast(RawClient, SimpleNamespace(dialect=Dialect.P9P2000)))
    return conn.check_err(m.Tclunk(1), m.Rerror(ename), want)


def test_the_errno_text_passes() -> None:
    assert "Bad file descriptor" in check("clunk.unknown", "Bad file descriptor", errno.EBADF)


def test_the_text_of_another_errno_fails_everywhere() -> None:
    for case_id in ("clunk.unknown", "frame.check8.too-short"):
        with pytest.raises(Failure, match="is the text of ENOENT"):
            check(case_id, "No such file or directory", errno.EBADF)


def test_a_reason_only_where_the_spec_allows_one() -> None:
    with pytest.raises(Failure, match="expected 'Bad file descriptor'"):
        check("clunk.unknown", "no such fid", errno.EBADF)
    assert "Tclunk too short" in check("frame.check8.too-short", "Tclunk too short", errno.EPROTO)
