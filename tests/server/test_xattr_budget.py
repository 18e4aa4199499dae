"""A connection's xattr fids hold at most fids.XATTR_BUDGET bytes of buffers
(issue 11: every structure a guest can grow has a budget)."""

from __future__ import annotations

import errno
import os

from p9share.client.raw import RawClient, ServerError
from p9share.protocol import messages as m
from p9share.server.fids import XATTR_BUDGET

from ..conftest import LiveServer

BIG = 65536


def err(cl: RawClient, msg: m.Message) -> int:
    try:
        cl.rpc(msg)
    except ServerError as e:
        return e.errno or -1
    return 0


def test_xattr_buffers_are_bounded_per_connection(live: LiveServer) -> None:
    (live.root / "f").write_text("x")
    os.setxattr(live.root / "f", "user.big", b"v" * 1000)  # tmpfs keeps little
    cl = live.client()
    fits = XATTR_BUDGET // BIG
    for fid in range(1, fits + 1):
        cl.walk(0, fid, ["f"])
        assert err(cl, m.Txattrcreate(fid, "user.x", BIG, 0)) == 0
    cl.walk(0, 1000, ["f"])
    assert err(cl, m.Txattrcreate(1000, "user.x", BIG, 0)) == errno.ENOMEM
    assert err(cl, m.Txattrwalk(1000, 1001, "user.big")) == errno.ENOMEM
    # another connection has its own budget
    other = live.client()
    other.walk(0, 1, ["f"])
    assert err(other, m.Txattrwalk(1, 2, "user.big")) == 0
    # a clunk gives the buffer back (the unfinished value is refused, the fid goes)
    assert err(cl, m.Tclunk(1)) == errno.EINVAL
    assert err(cl, m.Txattrwalk(1000, 1001, "user.big")) == 0
    r = cl.rpc(m.Tread(1001, 0, BIG))
    assert isinstance(r, m.Rread) and r.data == b"v" * 1000
