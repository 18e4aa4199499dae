"""The 9P2000.u handlers ask the policy exactly as their .L equivalents do:
symlinks, hard links, FIFOs and devices by the client's rights, set-id bits
stripped unless allowed, read-only exports refused."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from p9share.client.raw import RawClient, ServerError
from p9share.conformance.cases.classic import blank_stat
from p9share.policy import Client, Export, Match, Policy, Rights
from p9share.protocol import constants as c
from p9share.protocol import messages as m
from p9share.protocol.constants import Dialect
from p9share.server.server import Server
from p9share.server.transport import parse_address


@pytest.fixture
def dotu(tmp_path: Path) -> Iterator[Callable[[Rights], RawClient]]:
    servers: list[Server] = []
    clients: list[RawClient] = []

    def make(rights: Rights) -> RawClient:
        root = tmp_path / f"e{len(servers)}"
        root.mkdir()
        policy = Policy(clients={"all": Client("all", (Match(),), {"e": rights})})
        policy.exports["e"] = Export("e", str(root), False)
        srv = Server(policy)
        srv.listen(parse_address("tcp:127.0.0.1:0"))
        servers.append(srv)
        cl = RawClient.connect(str(srv.addresses[0]), timeout=10)
        cl.dialect = Dialect.P9P2000U
        assert cl.version(65560).version == "9P2000.u"
        cl.attach(0, "e")
        clients.append(cl)
        return cl

    yield make
    for cl in clients:
        cl.close()
    for s in servers:
        s.stop()


def create(cl: RawClient, fid: int, name: str, perm: int, ext: str = "", mode: int = 0) -> None:
    cl.walk(0, fid, [])
    cl.rpc(m.Tcreate(fid, name, perm, mode, ext))


@pytest.mark.parametrize(
    ("perm", "ext", "rights"),
    [
        (c.DMSYMLINK | 0o777, "target", Rights(symlinks=False)),
        (c.DMNAMEDPIPE | 0o644, "", Rights(fifos=False)),
        (c.DMSOCKET | 0o644, "", Rights(sockets=False)),
        (c.DMDEVICE | 0o644, "c 1 3", Rights(devices=False)),
    ],
    ids=["symlink", "fifo", "socket", "device"],
)
def test_special_files_follow_the_rights(
    dotu: Callable[[Rights], RawClient], perm: int, ext: str, rights: Rights
) -> None:
    cl = dotu(rights)
    with pytest.raises(ServerError) as e:
        create(cl, 1, "x", perm, ext)
    assert e.value.errno == errno.EPERM


def test_hard_link_follows_the_rights(dotu: Callable[[Rights], RawClient]) -> None:
    cl = dotu(Rights(hardlinks=False))
    create(cl, 1, "f", 0o644, mode=c.ORDWR)
    with pytest.raises(ServerError) as e:
        create(cl, 2, "g", c.DMLINK, "1\n")
    assert e.value.errno == errno.EPERM


def test_setid_stripped_on_create_and_wstat_unless_allowed(
    dotu: Callable[[Rights], RawClient], tmp_path: Path
) -> None:
    cl = dotu(Rights())
    create(cl, 1, "f", c.DMSETUID | c.DMSETGID | 0o755, mode=c.ORDWR)
    f = tmp_path / "e0" / "f"
    assert stat.S_IMODE(f.stat().st_mode) == 0o755
    cl.rpc(m.Twstat(1, blank_stat(mode=c.DMSETUID | 0o4755)))
    assert stat.S_IMODE(f.stat().st_mode) == 0o755
    allowed = dotu(Rights(setid=True))
    create(allowed, 1, "g", c.DMSETUID | 0o755, mode=c.ORDWR)
    assert stat.S_IMODE((tmp_path / "e1" / "g").stat().st_mode) == 0o4755


def test_readonly_rights_refuse_create_wstat_and_orclose(
    dotu: Callable[[Rights], RawClient], tmp_path: Path
) -> None:
    cl = dotu(Rights(readonly=True))
    (tmp_path / "e0" / "f").write_text("abc")
    for msg_fid, msg in ((2, m.Twstat(2, blank_stat(length=0))), (3, m.Topen(3, c.ORCLOSE))):
        cl.walk(0, msg_fid, ["f"])
        with pytest.raises(ServerError) as e:
            cl.rpc(msg)
        assert e.value.errno == errno.EROFS
    with pytest.raises(ServerError) as e:
        create(cl, 1, "n", 0o644, mode=c.ORDWR)
    assert e.value.errno == errno.EROFS
    assert (tmp_path / "e0" / "f").read_text() == "abc" and os.listdir(tmp_path / "e0") == ["f"]
