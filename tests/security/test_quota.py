"""Per-export quotas on bytes and files, against a live server."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from p9share.backend.hostfs import HostBackend
from p9share.client.raw import RawClient, ServerError
from p9share.conformance.cases.classic import blank_stat
from p9share.policy import Export, Policy
from p9share.protocol import constants as c
from p9share.protocol import messages as m
from p9share.protocol.constants import Dialect
from p9share.server.server import Server
from p9share.server.transport import parse_address


def test_host_backend_counts_bytes_and_files_once(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a").write_bytes(b"x" * 100)
    os.link(tmp_path / "d" / "a", tmp_path / "hard")  # one inode, counted once
    (tmp_path / "b").write_bytes(b"y" * 50)
    os.symlink("/etc/passwd", tmp_path / "sl")  # never followed: 0 bytes, 1 file
    b = HostBackend(str(tmp_path))
    try:
        assert b.usage() == (150, 4)  # d, a, b, sl
    finally:
        b.shutdown()


@pytest.fixture
def quota_server(tmp_path: Path) -> Iterator[Callable[[], RawClient]]:
    root = tmp_path / "q"
    root.mkdir()
    (root / "old").write_bytes(b"o" * 1000)
    exp = Export("q", str(root), quota_bytes=4000, quota_files=4)
    srv = Server(Policy({"q": exp}))
    addr = str(srv.listen(parse_address("tcp:127.0.0.1:0")))
    clients: list[RawClient] = []

    def connect() -> RawClient:
        cl = RawClient.connect(addr, timeout=10)
        cl.version()
        cl.attach(0, "")
        clients.append(cl)
        return cl

    yield connect
    for cl in clients:
        cl.close()
    srv.stop()


def err(cl: RawClient, msg: m.Message) -> int:
    try:
        cl.rpc(msg)
    except ServerError as e:
        return e.errno or -1
    return 0


def test_file_count_quota(quota_server: Callable[[], RawClient]) -> None:
    cl = quota_server()
    # 'old' is one of the 4 files: three more fit
    assert err(cl, m.Tmkdir(0, "d", 0o755, 0)) == 0
    assert err(cl, m.Tsymlink(0, "s", "old", 0)) == 0
    cl.walk(0, 1, [])
    assert err(cl, m.Tlcreate(1, "f", c.L_O_RDWR, 0o644, 0)) == 0
    assert err(cl, m.Tmkdir(0, "e", 0o755, 0)) == errno.EDQUOT
    cl.walk(0, 2, [])
    assert err(cl, m.Tlcreate(2, "g", c.L_O_RDWR, 0o644, 0)) == errno.EDQUOT
    # a hard link adds no file; removing one of two names frees nothing
    cl.walk(0, 3, ["old"])
    assert err(cl, m.Tlink(0, 3, "old2")) == 0
    assert err(cl, m.Tunlinkat(0, "old2", 0)) == 0
    assert err(cl, m.Tmkdir(0, "e", 0o755, 0)) == errno.EDQUOT
    # removing a file frees its place
    assert err(cl, m.Tunlinkat(0, "s", 0)) == 0
    assert err(cl, m.Tmkdir(0, "e", 0o755, 0)) == 0
    # a second connection shares the export's ledger
    assert err(quota_server(), m.Tmkdir(0, "x", 0o755, 0)) == errno.EDQUOT


def test_byte_quota(quota_server: Callable[[], RawClient]) -> None:
    cl = quota_server()
    cl.walk(0, 1, [])
    cl.rpc(m.Tlcreate(1, "f", c.L_O_RDWR, 0o644, 0))
    assert cl.rpc(m.Twrite(1, 0, b"a" * 2500)) == m.Rwrite(2500)  # 3500 of 4000
    assert err(cl, m.Twrite(1, 2500, b"b" * 600)) == errno.EDQUOT
    assert cl.rpc(m.Twrite(1, 0, b"c" * 2500)) == m.Rwrite(2500)  # rewriting adds nothing
    assert cl.rpc(m.Twrite(1, 2500, b"d" * 500)) == m.Rwrite(500)  # exactly full
    assert err(cl, m.Twrite(1, 3000, b"e")) == errno.EDQUOT
    # truncating frees bytes; growing by truncate is charged
    assert err(cl, m.Tsetattr(1, c.SetattrValid.SIZE, 0, 0, 0, 1000, 0, 0, 0, 0)) == 0
    assert err(cl, m.Tsetattr(1, c.SetattrValid.SIZE, 0, 0, 0, 3100, 0, 0, 0, 0)) == (errno.EDQUOT)
    assert err(cl, m.Tsetattr(1, c.SetattrValid.SIZE, 0, 0, 0, 3000, 0, 0, 0, 0)) == 0
    # unlinking 'old' (1000 bytes) makes room
    assert err(cl, m.Twrite(1, 3000, b"f" * 900)) == errno.EDQUOT
    assert err(cl, m.Tunlinkat(0, "old", 0)) == 0
    assert cl.rpc(m.Twrite(1, 3000, b"f" * 900)) == m.Rwrite(900)


# ------------------------------------------------------------------------------
# The same limits through every path: 9P2000.u Tcreate/Twstat and O_APPEND writes.


def dotu(addr: str) -> RawClient:
    cl = RawClient.connect(addr, timeout=10)
    cl.dialect = Dialect.P9P2000U
    cl.version()
    cl.attach(0, "")
    return cl


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "q"
    root.mkdir()
    exp = Export("q", str(root), quota_bytes=3000, quota_files=3, max_file_size=2000)
    srv = Server(Policy({"q": exp}))
    yield str(srv.listen(parse_address("tcp:127.0.0.1:0"))), root
    srv.stop()


def test_dotu_create_is_charged_to_the_file_quota(limited: tuple[str, Path]) -> None:
    addr, root = limited
    cl = dotu(addr)
    made = []
    for i in range(5):
        cl.walk(0, 1, [])
        try:
            cl.rpc(m.Tcreate(1, f"f{i}", 0o644, c.ORDWR, ""))
            made.append(i)
        except ServerError as e:
            assert e.errno == errno.EDQUOT
        cl.rpc(m.Tclunk(1))
    assert made == [0, 1, 2]
    cl.walk(0, 1, [])
    assert err(cl, m.Tcreate(1, "s", c.DMSYMLINK | 0o777, c.OREAD, "f0")) == errno.EDQUOT
    assert err(cl, m.Tcreate(1, "d", c.DMDIR | 0o755, c.OREAD, "")) == errno.EDQUOT
    assert sorted(os.listdir(root)) == ["f0", "f1", "f2"]


def test_dotu_wstat_length_is_charged_and_bounded(limited: tuple[str, Path]) -> None:
    addr, root = limited
    cl = dotu(addr)
    for name in ("a", "b"):
        cl.walk(0, 1, [])
        cl.rpc(m.Tcreate(1, name, 0o644, c.ORDWR, ""))
        cl.rpc(m.Tclunk(1))
    cl.walk(0, 1, ["a"])
    cl.walk(0, 2, ["b"])
    assert err(cl, m.Twstat(1, blank_stat(length=2500))) == errno.EFBIG  # max_file_size
    assert err(cl, m.Twstat(1, blank_stat(length=2000))) == 0
    assert err(cl, m.Twstat(2, blank_stat(length=1500))) == errno.EDQUOT  # 3500 > 3000
    assert err(cl, m.Twstat(1, blank_stat(length=500))) == 0  # gives 1500 back
    assert err(cl, m.Twstat(2, blank_stat(length=1500))) == 0
    assert [(root / n).stat().st_size for n in ("a", "b")] == [500, 1500]


def test_appends_are_bounded_where_they_land(limited: tuple[str, Path]) -> None:
    addr, root = limited
    cl = RawClient.connect(addr, timeout=10)
    cl.version()
    cl.attach(0, "")
    cl.walk(0, 1, [])
    cl.rpc(m.Tlcreate(1, "log", c.L_O_WRONLY | c.L_O_APPEND, 0o644, 0))
    for _ in range(4):  # offset 0, but each lands at the end
        assert cl.rpc(m.Twrite(1, 0, b"x" * 500)) == m.Rwrite(500)
    assert err(cl, m.Twrite(1, 0, b"x" * 500)) == errno.EFBIG  # 2500 > max_file_size
    assert (root / "log").stat().st_size == 2000


def test_dotu_bad_device_numbers_are_einval(limited: tuple[str, Path]) -> None:
    addr, _root = limited
    cl = dotu(addr)
    for ext in ("c \u00b2 1", "c 1 99999999999", "x 1 1", "c 1"):
        cl.walk(0, 1, [])
        assert err(cl, m.Tcreate(1, "dev", c.DMDEVICE | 0o644, c.OREAD, ext)) == errno.EINVAL
        cl.rpc(m.Tclunk(1))
