"""The two races of docs/security.md §S15 item 13, made deterministic: the
first request is held inside the backend (on a pool or throttle thread) while
the second is sent, then let go; the end state must be one a serial order
gives."""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from p9share.backend.hostfs import HostBackend
from p9share.conformance.cases.classic import blank_stat
from p9share.policy import Export, Policy
from p9share.protocol import constants as c
from p9share.protocol import messages as m
from p9share.protocol.constants import Dialect
from p9share.server.limits import Limits
from p9share.server.server import Server
from p9share.server.transport import parse_address

from ..conftest import LiveServer

BIG = 128 * 1024  # over POOLED_BYTES: the write goes to the worker pool
MSIZE = 256 * 1024 + 24
HOLD = 0.2  # how long a held request keeps the second one waiting (or not)


class Gate:
    """Wraps one backend method: its first call signals `entered` and waits
    for `go`; later calls pass straight through. Records each call's thread."""

    def __init__(self, backend: HostBackend, name: str) -> None:
        self.entered = threading.Event()
        self.go = threading.Event()
        self.threads: list[str] = []
        self._real = getattr(backend, name)
        setattr(backend, name, self)

    def __call__(self, *args: Any) -> Any:
        self.threads.append(threading.current_thread().name)
        if len(self.threads) == 1:
            self.entered.set()
            assert self.go.wait(5), "the test never let the held call go"
        return self._real(*args)

    def hold_first(self) -> None:
        assert self.entered.wait(5), "the first request never reached the backend"


@pytest.fixture
def make_live(tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    servers: list[Server] = []

    def make(**kw: Any) -> LiveServer:
        root = tmp_path / "q"
        root.mkdir()
        (root / "f").write_bytes(b"o" * BIG)
        exp = Export("q", str(root), quota_bytes=10 * BIG, quota_files=100)
        srv = Server(Policy({"q": exp}), **kw)
        servers.append(srv)
        srv.listen(parse_address("tcp:127.0.0.1:0"))
        return LiveServer(srv, root)

    yield make
    for s in servers:
        s.stop()


def ledger_matches_disk(live: LiveServer) -> tuple[int, int]:
    """(bytes the ledger counts, bytes a fresh start would count)."""
    return live.server.quotas["q"].bytes_used, live.server.backends["q"].usage()[0]


def replies(cl: Any, n: int) -> dict[int, m.Message]:
    return dict(cl.recv() for _ in range(n))


# ------------------------------------------------------- quota ledger race --
@pytest.mark.parametrize("dialect", [Dialect.P9P2000L, Dialect.P9P2000U])
def test_truncate_during_pooled_write_keeps_ledger_equal_to_disk(
    make_live: Callable[..., LiveServer], dialect: Dialect
) -> None:
    # The write overwrites f (no growth, no charge) and is held in the
    # backend; a truncate to 0 (Tsetattr, or .u Twstat length) then refunds
    # f's bytes, and the held write puts them back on the disk uncharged.
    live = make_live()
    cl = live.client(dialect=dialect, msize=MSIZE)
    before = ledger_matches_disk(live)
    assert before[0] == before[1] == BIG
    cl.walk(0, 1, ["f"])
    cl.walk(0, 2, ["f"])
    if dialect is Dialect.P9P2000L:
        cl.rpc(m.Tlopen(1, c.L_O_RDWR))
        truncate: m.Message = m.Tsetattr(2, c.SetattrValid.SIZE, 0, 0, 0, 0, 0, 0, 0, 0)
    else:
        cl.rpc(m.Topen(1, c.ORDWR))
        truncate = m.Twstat(2, blank_stat(length=0))
    gate = Gate(live.server.backends["q"], "write")
    cl.send(m.Twrite(1, 0, b"w" * BIG), tag=1)
    gate.hold_first()
    assert gate.threads[0].startswith("p9share-io")
    cl.send(truncate, tag=2)
    time.sleep(HOLD)  # the old code truncated and refunded here
    gate.go.set()
    got = replies(cl, 2)
    assert isinstance(got[1], m.Rwrite) and got[1].count == BIG
    assert not isinstance(got[2], m.Rlerror | m.Rerror)
    used, disk = ledger_matches_disk(live)
    assert used == disk
    assert disk == (live.root / "f").stat().st_size == 0  # the truncate came second


def test_two_growing_pooled_writes_charge_the_growth_once(
    make_live: Callable[..., LiveServer],
) -> None:
    # Both writes extend g from 0 to BIG: each measured 0 and charged BIG, so
    # the ledger counted twice what the disk gained.
    live = make_live()
    cl = live.client(msize=MSIZE)
    cl.walk(0, 1, [])
    cl.rpc(m.Tlcreate(1, "g", c.L_O_RDWR, 0o644, 0))
    gate = Gate(live.server.backends["q"], "write")
    cl.send(m.Twrite(1, 0, b"a" * BIG), tag=1)
    gate.hold_first()
    cl.send(m.Twrite(1, 0, b"b" * BIG), tag=2)
    time.sleep(HOLD)
    gate.go.set()
    got = replies(cl, 2)
    assert all(isinstance(r, m.Rwrite) and r.count == BIG for r in got.values())
    assert gate.threads[0].startswith("p9share-io")  # pooled, so the second could run
    used, disk = ledger_matches_disk(live)
    assert used == disk == 2 * BIG  # f and g


# ---------------------------------------------------------- fid state race --
# (second request, the error it gets once the first has opened the fid)
SECOND: dict[str, tuple[m.Message, int]] = {
    "lopen": (m.Tlopen(1, c.L_O_RDONLY), errno.EBADF),
    "walk-onto-itself": (m.Twalk(1, 1, []), errno.EBUSY),
    "lcreate": (m.Tlcreate(1, "new", c.L_O_RDWR, 0o644, 0), errno.EBADF),
    "xattrcreate": (m.Txattrcreate(1, "user.x", 1, 0), errno.EBADF),
}


@pytest.mark.parametrize("second", SECOND, ids=list(SECOND))
def test_delayed_open_and_inline_request_on_one_fid_run_in_turn(
    make_live: Callable[..., LiveServer], second: str
) -> None:
    # Rate limits: the Tlopen is delayed and runs on the throttle thread,
    # where it is held inside backend.open; the next request, sent once the
    # bucket has refilled, runs inline on the reader thread. Both used to see
    # fid 1 unopened and go ahead.
    rate = 20.0
    live = make_live(limits=Limits(ops_per_second=rate, ops_burst=1))
    cl = live.client(msize=MSIZE)
    cl.walk(0, 1, [])  # the export's root: a directory every second request accepts
    files = live.server.quotas["q"].files_used
    gate = Gate(live.server.backends["q"], "open")
    cl.send(m.Tgetattr(0, 1), tag=1)  # spends the token: the Tlopen must wait
    cl.send(m.Tlopen(1, c.L_O_RDONLY), tag=2)
    gate.hold_first()
    assert gate.threads[0].startswith("p9share-throttle")
    time.sleep(2.5 / rate)  # a token again, and nothing queued: the next runs inline
    msg, want = SECOND[second]
    cl.send(msg, tag=3)
    time.sleep(HOLD)
    gate.go.set()
    got = replies(cl, 3)
    assert isinstance(got[2], m.Rlopen)
    r = got[3]
    assert isinstance(r, m.Rlerror) and r.ecode == want, r
    # fid 1 is the one file the Tlopen opened: a directory, readable
    assert isinstance(cl.rpc(m.Treaddir(1, 0, 4096)), m.Rreaddir)
    assert not (live.root / "new").exists()
    assert live.server.quotas["q"].files_used == files  # Tlcreate made nothing
    cl.rpc(m.Tclunk(1))


def test_clunk_waits_for_a_delayed_open_with_orclose(
    make_live: Callable[..., LiveServer],
) -> None:
    # The Topen asks for ORCLOSE and succeeds, so the clunk must remove f;
    # it used to run while the open was held and find nothing to remove.
    rate = 20.0
    live = make_live(limits=Limits(ops_per_second=rate, ops_burst=1))
    cl = live.client(dialect=Dialect.P9P2000U, msize=MSIZE)
    cl.walk(0, 1, ["f"])
    gate = Gate(live.server.backends["q"], "open")
    cl.send(m.Tstat(0), tag=1)
    cl.send(m.Topen(1, c.ORDWR | c.ORCLOSE), tag=2)
    gate.hold_first()
    assert gate.threads[0].startswith("p9share-throttle")
    time.sleep(2.5 / rate)
    cl.send(m.Tclunk(1), tag=3)
    time.sleep(HOLD)
    gate.go.set()
    got = replies(cl, 3)
    assert isinstance(got[2], m.Ropen) and isinstance(got[3], m.Rclunk)
    assert not (live.root / "f").exists()
    assert ledger_matches_disk(live) == (0, 0)


@pytest.mark.parametrize("dialect", [Dialect.P9P2000L, Dialect.P9P2000U])
def test_open_with_truncate_gives_the_bytes_back(
    make_live: Callable[..., LiveServer], dialect: Dialect
) -> None:
    # An O_TRUNC open is a size change too: it used to free f's bytes on the
    # disk and keep them in the ledger, so each rewrite of a file counted again.
    live = make_live()
    cl = live.client(dialect=dialect, msize=MSIZE)
    for fid in (1, 2):
        cl.walk(0, fid, ["f"])
        if dialect is Dialect.P9P2000L:
            cl.rpc(m.Tlopen(fid, c.L_O_RDWR | c.L_O_TRUNC))
        else:
            cl.rpc(m.Topen(fid, c.ORDWR | c.OTRUNC))
        cl.rpc(m.Twrite(fid, 0, b"n" * 100))
        assert ledger_matches_disk(live) == (100, 100)
        cl.rpc(m.Tclunk(fid))
