"""Wire conventions of the Linux client that docs/protocol.md specifies:
Tgetlock with type UNLCK (§5.30, §9.11) and times before 1970 (§5.13, §5.14, §9.13)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from p9share.protocol import constants as c
from p9share.protocol import messages as m

from ..conftest import LiveServer

VECTORS = Path(__file__).parent.parent / "vectors" / "linux-6.1-dotl.jsonl"
U64 = 1 << 64


def test_linux_sends_tgetlock_with_type_unlck() -> None:
    """The recorded Linux 6.1 F_GETLK: the type field is UNLCK, not the type tested."""
    for line in VECTORS.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("name") == "Tgetlock":
            _, msg = m.decode_message(bytes.fromhex(rec["hex"]))
            assert isinstance(msg, m.Tgetlock) and msg.type == c.LOCK_TYPE_UNLCK
            return
    raise AssertionError("no Tgetlock in the recorded vectors")


def test_getlock_unlck_tests_for_any_conflicting_lock(live: LiveServer) -> None:
    (live.root / "l").write_text("lock me")
    a, b = live.client(), live.client()
    for cl in (a, b):
        cl.walk(0, 1, ["l"])
        cl.rpc(m.Tlopen(1, c.L_O_RDWR))
    # nothing held: UNLCK back, with the request's own range
    r = b.rpc(m.Tgetlock(1, c.LOCK_TYPE_UNLCK, 0, 0, 7, "guest-b"))
    assert r == m.Rgetlock(c.LOCK_TYPE_UNLCK, 0, 0, 7, "guest-b")
    # another client's read lock is reported (a write-lock test sees every lock)
    assert a.rpc(m.Tlock(1, c.LOCK_TYPE_RDLCK, 0, 10, 5, 1, "guest-a")) == m.Rlock(c.LOCK_SUCCESS)
    r = b.rpc(m.Tgetlock(1, c.LOCK_TYPE_UNLCK, 0, 0, 7, "guest-b"))
    assert isinstance(r, m.Rgetlock)
    assert (r.type, r.start, r.length) == (c.LOCK_TYPE_RDLCK, 10, 5)
    # an explicit read-lock test does not conflict with a read lock
    r = b.rpc(m.Tgetlock(1, c.LOCK_TYPE_RDLCK, 0, 0, 7, "guest-b"))
    assert isinstance(r, m.Rgetlock) and r.type == c.LOCK_TYPE_UNLCK
    a.close()
    b.close()


def test_times_before_1970_are_twos_complement(live: LiveServer) -> None:
    (live.root / "old").write_text("x")
    cl = live.client()
    cl.walk(0, 1, ["old"])
    v = c.SetattrValid
    # 1969-12-31T23:58:20.5: sec -100 on the wire as u64, nsec 500000000
    cl.rpc(m.Tsetattr(1, v.MTIME | v.MTIME_SET, 0, 0, 0, 0, 0, 0, U64 - 100, 500_000_000))
    assert os.stat(live.root / "old").st_mtime_ns == -100 * 10**9 + 500_000_000
    os.utime(live.root / "old", ns=(-1, -(10**9) * 3600))
    r = cl.rpc(m.Tgetattr(1, c.GetattrMask.BASIC))
    assert isinstance(r, m.Rgetattr)
    assert (r.atime_sec, r.atime_nsec) == (U64 - 1, 999_999_999)
    assert (r.mtime_sec, r.mtime_nsec) == (U64 - 3600, 0)
    cl.close()
