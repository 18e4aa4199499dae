"""Id mapping end to end: what the guest sees and what lands on the host, for
squash, range and passthrough with allowed ranges (mapped: test_mapped.py and
the VM tests)."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from p9share.client.raw import RawClient, ServerError
from p9share.policy import Export, Policy
from p9share.policy.idmap import IdRange, id_range_map, passthrough, squash
from p9share.protocol import constants as c
from p9share.protocol import messages as m
from p9share.server.server import Server
from p9share.server.transport import parse_address

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="host ownership changes need root")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    for d in ("sq", "rg", "pt"):
        (tmp_path / d).mkdir()
    exports = {
        "sq": Export("sq", str(tmp_path / "sq"), idmap=squash(1234, 1235, 7, 8)),
        "rg": Export("rg", str(tmp_path / "rg"), idmap=id_range_map(
            (IdRange(0, 100000, 65536),), (IdRange(0, 200000, 65536),))),
        "pt": Export("pt", str(tmp_path / "pt"), idmap=passthrough(((1000, 1999),), ((1000, 1999),))),
    }  # fmt: skip
    srv = Server(Policy(exports))
    addr = str(srv.listen(parse_address("tcp:127.0.0.1:0")))
    yield addr, tmp_path
    srv.stop()


def attach(addr: str, aname: str, uid: int) -> RawClient:
    cl = RawClient.connect(addr, timeout=10)
    cl.version()
    cl.attach(0, aname, n_uname=uid)
    return cl


def create(cl: RawClient, name: str, gid: int) -> m.Rgetattr:
    cl.walk(0, 1, [])
    cl.rpc(m.Tlcreate(1, name, c.L_O_RDWR, 0o644, gid))
    r = cl.rpc(m.Tgetattr(1, c.GetattrMask.BASIC))
    assert isinstance(r, m.Rgetattr)
    return r


def chown(cl: RawClient, fid: int, uid: int, gid: int) -> int:
    try:
        cl.rpc(m.Tsetattr(fid, c.SetattrValid.UID | c.SetattrValid.GID, 0, uid, gid, 0, 0, 0,
                          0, 0))  # fmt: skip
    except ServerError as e:
        return e.errno or -1
    return 0


def test_squash_creates_as_one_account_and_shows_configured_ids(
    server: tuple[str, Path],
) -> None:
    addr, base = server
    cl = attach(addr, "sq", 5)
    g = create(cl, "f", 6)
    st = (base / "sq" / "f").stat()
    assert (st.st_uid, st.st_gid) == (1234, 1235)  # on the host: the squash account
    assert (g.uid, g.gid) == (7, 8)  # the guest sees the configured ids
    assert chown(cl, 1, 0, 0) == 0  # ownership is not kept: a chown changes nothing
    st = (base / "sq" / "f").stat()
    assert (st.st_uid, st.st_gid) == (1234, 1235)


def test_range_map_translates_both_ways_and_refuses_outside(server: tuple[str, Path]) -> None:
    addr, base = server
    cl = attach(addr, "rg", 1000)
    g = create(cl, "f", 1001)
    st = (base / "rg" / "f").stat()
    assert (st.st_uid, st.st_gid) == (101000, 201001)
    assert (g.uid, g.gid) == (1000, 1001)
    assert chown(cl, 1, 0, 0) == 0
    st = (base / "rg" / "f").stat()
    assert (st.st_uid, st.st_gid) == (100000, 200000)
    assert chown(cl, 1, 70000, 0) == errno.EPERM  # outside the map
    # a host file owned outside the map shows as nobody
    os.chown(base / "rg" / "f", 5, 5)
    r = cl.rpc(m.Tgetattr(1, c.GetattrMask.BASIC))
    assert isinstance(r, m.Rgetattr) and (r.uid, r.gid) == (65534, 65534)
    # a guest user outside the map cannot create
    other = attach(addr, "rg", 70000)
    other.walk(0, 1, [])
    with pytest.raises(ServerError) as ei:
        other.rpc(m.Tlcreate(1, "g", c.L_O_RDWR, 0o644, 0))
    assert ei.value.errno == errno.EPERM
    assert not (base / "rg" / "g").exists()


def test_passthrough_with_allowed_ranges(server: tuple[str, Path]) -> None:
    addr, base = server
    cl = attach(addr, "pt", 1500)
    g = create(cl, "f", 1500)
    st = (base / "pt" / "f").stat()
    assert (st.st_uid, st.st_gid) == (1500, 1500) == (g.uid, g.gid)
    assert chown(cl, 1, 0, 0) == errno.EPERM  # guest root is not in the allowed range
    root = attach(addr, "pt", 0)
    root.walk(0, 1, [])
    with pytest.raises(ServerError) as ei:
        root.rpc(m.Tlcreate(1, "r", c.L_O_RDWR, 0o644, 0))
    assert ei.value.errno == errno.EPERM
