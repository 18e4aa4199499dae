"""The rules of the operations layer as every dialect reaches them.

Each test here stands for a finding of the red-team or mutation reviews
(issues 11 and 15): a read-only grant on a read-write export refused for
every changing request in 9P2000.L, 9P2000.u and 9P2000; set-id bits that
a create-that-opens, a non-root writer, truncate or chown must clear; quota
refunds of renames; device numbers out of range; the 9P2000.u rename and
set-gid drift. Each failed on the code before the operations layer.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from p9share.audit import AuditLog
from p9share.client.raw import RawClient, ServerError
from p9share.conformance.cases.classic import blank_stat
from p9share.policy import Client, Export, Match, Policy, Rights
from p9share.policy.idmap import mapped
from p9share.protocol import constants as c
from p9share.protocol import messages as m
from p9share.protocol.constants import Dialect
from p9share.server.server import Server
from p9share.server.transport import parse_address

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (passthrough, CAP_FSETID)")
SA = c.SetattrValid


def err(cl: RawClient, msg: m.Message) -> int:
    """The errno of the reply (0: success). 9P2000's Rerror has only a
    string: the read-only refusal is recognised by its text."""
    try:
        cl.rpc(msg)
    except ServerError as e:
        if cl.dialect is Dialect.P9P2000 and "read-only" in (e.strerror or ""):
            return errno.EROFS
        return e.errno or -1
    return 0


def tree(root: Path) -> list[tuple[str, int, int, bytes]]:
    """Everything the export holds: names, modes, sizes and user xattrs."""
    out = []
    for dirpath, dirs, files in os.walk(root):
        for n in sorted(dirs + files):
            p = Path(dirpath) / n
            st = p.lstat()
            xa = b""
            if not stat.S_ISLNK(st.st_mode):
                xa = b"|".join(k.encode() + b"=" + os.getxattr(p, k) for k in os.listxattr(p))
            out.append((str(p.relative_to(root)), st.st_mode, st.st_size, xa))
    return sorted(out)


Connect = Callable[..., RawClient]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, Connect, Server]]:
    """One read-write export; client 'ro' is granted it read-only, 'rw'
    read-write with set-id bits (on a second listener each)."""
    root = tmp_path / "e"
    root.mkdir()
    exp = Export("e", str(root), quota_bytes=1 << 20, quota_files=100)
    clients = {
        "ro": Client("ro", (Match(listener="ro"),), {"e": Rights(readonly=True)}),
        "rw": Client("rw", (Match(listener="rw"),), {"e": Rights(setid=True)}),
        "plain": Client("plain", (Match(listener="plain"),), {"e": Rights()}),
        "dev": Client("dev", (Match(listener="dev"),), {"e": Rights(devices=True)}),
    }
    srv = Server(Policy({"e": exp}, clients), audit=AuditLog(str(tmp_path / "audit.log")))
    addrs = {
        name: str(srv.listen(parse_address(f"unix:{tmp_path}/{name}.sock"), name=name))
        for name in clients
    }
    opened: list[RawClient] = []

    def connect(who: str, dialect: Dialect = Dialect.P9P2000L, uid: int = 0) -> RawClient:
        cl = RawClient.connect(addrs[who], timeout=10)
        cl.dialect = dialect
        cl.version()
        cl.attach(0, "", uname=str(uid), n_uname=uid)
        opened.append(cl)
        return cl

    yield root, connect, srv
    for cl in opened:
        cl.close()
    srv.stop()


def _populate(root: Path) -> None:
    (root / "f").write_bytes(b"data")
    (root / "d").mkdir()
    (root / "d" / "g").write_bytes(b"more")
    os.setxattr(root / "f", "user.k", b"v")


# ------------------------------------------------------- read-only grant --

DOTL_CHANGES: dict[str, Callable[[RawClient], int]] = {
    "setattr-size": lambda cl: err(cl, m.Tsetattr(1, SA.SIZE, 0, 0, 0, 0, 0, 0, 0, 0)),
    "setattr-mode": lambda cl: err(cl, m.Tsetattr(1, SA.MODE, 0o777, 0, 0, 0, 0, 0, 0, 0)),
    "setattr-times": lambda cl: err(cl, m.Tsetattr(1, SA.MTIME, 0, 0, 0, 0, 0, 0, 0, 0)),
    "rename": lambda cl: err(cl, m.Trename(1, 0, "moved")),
    "renameat": lambda cl: err(cl, m.Trenameat(0, "f", 0, "moved")),
    "unlinkat": lambda cl: err(cl, m.Tunlinkat(0, "f", 0)),
    "unlinkat-dir": lambda cl: err(cl, m.Tunlinkat(2, "g", 0)),
    "remove": lambda cl: err(cl, m.Tremove(1)),
    "remove-dir": lambda cl: err(cl, m.Tremove(2)),
    "lcreate": lambda cl: err(cl, m.Tlcreate(2, "new", c.L_O_RDWR, 0o644, 0)),
    "lcreate-existing": lambda cl: err(cl, m.Tlcreate(2, "g", c.L_O_RDONLY, 0o644, 0)),
    "lopen-write": lambda cl: err(cl, m.Tlopen(1, c.L_O_WRONLY)),
    "lopen-trunc": lambda cl: err(cl, m.Tlopen(1, c.L_O_RDONLY | c.L_O_TRUNC)),
    "mkdir": lambda cl: err(cl, m.Tmkdir(0, "nd", 0o755, 0)),
    "symlink": lambda cl: err(cl, m.Tsymlink(0, "sl", "f", 0)),
    "link": lambda cl: err(cl, m.Tlink(0, 1, "hl")),
    "mknod": lambda cl: err(cl, m.Tmknod(0, "fifo", stat.S_IFIFO | 0o644, 0, 0, 0)),
    "xattrcreate": lambda cl: err(cl, m.Txattrcreate(1, "user.k", 0, 0)),
}


@pytest.mark.parametrize("op", sorted(DOTL_CHANGES))
def test_readonly_grant_refuses_every_dotl_change(
    served: tuple[Path, Connect, Server], op: str
) -> None:
    root, connect, _ = served
    _populate(root)
    before = tree(root)
    cl = connect("ro")
    cl.walk(0, 1, ["f"])
    cl.walk(0, 2, ["d"])
    assert DOTL_CHANGES[op](cl) == errno.EROFS
    assert tree(root) == before


def test_readonly_grant_takes_no_write_lock(served: tuple[Path, Connect, Server]) -> None:
    root, connect, _ = served
    _populate(root)
    cl = connect("ro")
    cl.walk(0, 1, ["f"])
    cl.rpc(m.Tlopen(1, c.L_O_RDONLY))
    wr = m.Tlock(1, c.LOCK_TYPE_WRLCK, 0, 0, 0, 1, "ro")
    assert err(cl, wr) == errno.EBADF
    assert cl.rpc(m.Tlock(1, c.LOCK_TYPE_RDLCK, 0, 0, 0, 1, "ro")) == m.Rlock(c.LOCK_SUCCESS)


CLASSIC_CHANGES: dict[str, Callable[[RawClient], int]] = {
    "wstat-mode": lambda cl: err(cl, m.Twstat(1, blank_stat(mode=0o777))),
    "wstat-length": lambda cl: err(cl, m.Twstat(1, blank_stat(length=0))),
    "wstat-name": lambda cl: err(cl, m.Twstat(1, blank_stat(name="moved"))),
    "wstat-mtime": lambda cl: err(cl, m.Twstat(1, blank_stat(mtime=1))),
    "create": lambda cl: err(cl, m.Tcreate(2, "new", 0o644, c.ORDWR, "")),
    "create-dir": lambda cl: err(cl, m.Tcreate(2, "nd", c.DMDIR | 0o755, c.OREAD, "")),
    "remove": lambda cl: err(cl, m.Tremove(1)),
    "remove-dir": lambda cl: err(cl, m.Tremove(2)),
    "open-write": lambda cl: err(cl, m.Topen(1, c.OWRITE)),
    "open-trunc": lambda cl: err(cl, m.Topen(1, c.OREAD | c.OTRUNC)),
    "open-rclose": lambda cl: err(cl, m.Topen(1, c.OREAD | c.ORCLOSE)),
}


@pytest.mark.parametrize("dialect", [Dialect.P9P2000U, Dialect.P9P2000])
@pytest.mark.parametrize("op", sorted(CLASSIC_CHANGES))
def test_readonly_grant_refuses_every_classic_change(
    served: tuple[Path, Connect, Server], op: str, dialect: Dialect
) -> None:
    root, connect, _ = served
    _populate(root)
    before = tree(root)
    cl = connect("ro", dialect)
    cl.walk(0, 1, ["f"])
    cl.walk(0, 2, ["d"])
    assert CLASSIC_CHANGES[op](cl) == errno.EROFS
    if op == "open-rclose":
        assert err(cl, m.Tclunk(1)) == 0
    assert tree(root) == before


def test_dotu_special_creates_refused_read_only(served: tuple[Path, Connect, Server]) -> None:
    root, connect, _ = served
    _populate(root)
    before = tree(root)
    cl = connect("ro", Dialect.P9P2000U)
    for i, (perm, ext) in enumerate([(c.DMSYMLINK | 0o777, "f"), (c.DMNAMEDPIPE | 0o644, ""),
                                     (c.DMLINK | 0o644, "1")]):  # fmt: skip
        cl.walk(0, 10 + i, [])
        cl.walk(0, 1, ["f"]) if i == 0 else None
        assert err(cl, m.Tcreate(10 + i, f"s{i}", perm, c.OREAD, ext)) == errno.EROFS
    assert tree(root) == before


# --------------------------------------------------------------- set-id --


@root_only
def test_create_that_opens_an_existing_setuid_file_drops_it_on_write(
    served: tuple[Path, Connect, Server],
) -> None:
    root, connect, _ = served
    f = root / "su"
    f.write_bytes(b"#!/bin/sh\n")
    os.chmod(f, 0o4755)
    cl = connect("plain")  # setid not granted
    cl.walk(0, 1, [])
    cl.rpc(m.Tlcreate(1, "su", c.L_O_RDWR, 0o644, 0))  # no O_EXCL: opens the file
    cl.rpc(m.Twrite(1, 0, b"#!/bin/bash"))
    assert stat.S_IMODE(f.stat().st_mode) == 0o755


@root_only
def test_first_write_drops_setid_without_the_grant(served: tuple[Path, Connect, Server]) -> None:
    """The server keeps CAP_FSETID, so the kernel would keep the bits: the
    operations layer must drop them (a mutation of _drop_setid is caught)."""
    root, connect, _ = served
    f = root / "su"
    f.write_bytes(b"x")
    os.chmod(f, 0o6775)
    cl = connect("plain")  # guest root, but no set-id grant
    cl.walk(0, 1, ["su"])
    cl.rpc(m.Tlopen(1, c.L_O_WRONLY))
    cl.rpc(m.Twrite(1, 0, b"y"))
    assert stat.S_IMODE(f.stat().st_mode) == 0o775


@root_only
@pytest.mark.parametrize("how", ["write", "truncate", "chown", "open-trunc"])
def test_non_root_guest_clears_setid_even_when_granted(
    served: tuple[Path, Connect, Server], how: str
) -> None:
    """As a local file system: a change of content or owner by anyone but
    root clears set-uid, and set-gid with group execute (pjdfstest chmod/12)."""
    root, connect, _ = served
    f = root / "su"
    f.write_bytes(b"x")
    os.chown(f, 1000, 1000)
    os.chmod(f, 0o6777)
    cl = connect("rw", uid=1000)
    cl.walk(0, 1, ["su"])
    if how == "write":
        cl.rpc(m.Tlopen(1, c.L_O_WRONLY))
        cl.rpc(m.Twrite(1, 0, b"y"))
    elif how == "truncate":
        cl.rpc(m.Tsetattr(1, SA.SIZE, 0, 0, 0, 0, 0, 0, 0, 0))
    elif how == "chown":
        cl.rpc(m.Tsetattr(1, SA.GID, 0, 0, 1001, 0, 0, 0, 0, 0))
    else:
        cl.rpc(m.Tlopen(1, c.L_O_WRONLY | c.L_O_TRUNC))
    assert stat.S_IMODE(f.stat().st_mode) == 0o777


@root_only
def test_guest_root_keeps_granted_setid_on_write(served: tuple[Path, Connect, Server]) -> None:
    root, connect, _ = served
    f = root / "su"
    f.write_bytes(b"x")
    os.chmod(f, 0o4755)
    cl = connect("rw", uid=0)
    cl.walk(0, 1, ["su"])
    cl.rpc(m.Tlopen(1, c.L_O_WRONLY))
    cl.rpc(m.Twrite(1, 0, b"y"))
    assert stat.S_IMODE(f.stat().st_mode) == 0o4755


def test_setgid_directory_kept_alike_in_every_dialect(
    served: tuple[Path, Connect, Server],
) -> None:
    """A set-gid directory only passes its group on: .L kept it, .u dropped it."""
    root, connect, _ = served
    dotl = connect("plain")
    dotl.rpc(m.Tmkdir(0, "l", 0o2755, 0))
    dotu = connect("plain", Dialect.P9P2000U)
    dotu.walk(0, 1, [])
    dotu.rpc(m.Tcreate(1, "u", c.DMDIR | c.DMSETGID | 0o755, c.OREAD, ""))
    assert stat.S_IMODE((root / "l").stat().st_mode) == 0o2755
    assert stat.S_IMODE((root / "u").stat().st_mode) == 0o2755
    dotu.walk(0, 2, ["l"])
    dotu.rpc(m.Twstat(2, blank_stat(mode=c.DMDIR | c.DMSETGID | 0o700)))
    assert stat.S_IMODE((root / "l").stat().st_mode) == 0o2700


# ---------------------------------------------------------------- quota --


def _ledger(srv: Server) -> tuple[int, int]:
    q = srv.quotas["e"]
    return q.bytes_used, q.files_used


def _write_through(cl: RawClient, files: dict[str, bytes]) -> None:
    """Make files through the server, so that the ledger counts them."""
    for fid, (name, data) in enumerate(files.items(), 5):
        cl.walk(0, fid, [])
        cl.rpc(m.Tlcreate(fid, name, c.L_O_RDWR, 0o644, 0))
        cl.rpc(m.Twrite(fid, 0, data))
        cl.rpc(m.Tclunk(fid))


def test_rename_onto_itself_refunds_nothing(served: tuple[Path, Connect, Server]) -> None:
    root, connect, srv = served
    cl = connect("plain")
    _write_through(cl, {"a": b"x" * 1000})
    start = _ledger(srv)
    assert start == (1000, 1)
    cl.walk(0, 1, ["a"])
    for _ in range(3):
        cl.rpc(m.Trenameat(0, "a", 0, "a"))
        cl.rpc(m.Trename(1, 0, "a"))
    assert _ledger(srv) == start
    os.link(root / "a", root / "b")  # one file, two names: renaming one onto the other
    for _ in range(3):  # does nothing (rename(2))
        cl.rpc(m.Trenameat(0, "a", 0, "b"))
        cl.rpc(m.Trename(1, 0, "b"))
    dotu = connect("plain", Dialect.P9P2000U)
    dotu.walk(0, 1, ["a"])
    dotu.rpc(m.Twstat(1, blank_stat(name="b")))
    assert _ledger(srv) == start
    assert (root / "a").exists() and (root / "b").exists()


@pytest.mark.parametrize("how", ["renameat", "rename", "wstat"])
def test_rename_over_an_existing_name_refunds_it(
    served: tuple[Path, Connect, Server], how: str
) -> None:
    root, connect, srv = served
    _write_through(connect("plain"), {"a": b"x" * 100, "victim": b"v" * 700})
    cl = connect("plain", Dialect.P9P2000U if how == "wstat" else Dialect.P9P2000L)
    b0, f0 = _ledger(srv)
    assert (b0, f0) == (800, 2)
    if how == "renameat":
        cl.rpc(m.Trenameat(0, "a", 0, "victim"))
    elif how == "rename":
        cl.walk(0, 1, ["a"])
        cl.rpc(m.Trename(1, 0, "victim"))
    else:
        cl.walk(0, 1, ["a"])
        cl.rpc(m.Twstat(1, blank_stat(name="victim")))
    assert (root / "victim").read_bytes() == b"x" * 100
    assert _ledger(srv) == (b0 - 700, f0 - 1)


# ------------------------------------------------------- 9P2000.u rename --


def test_dotu_wstat_rename_follows_the_fid(served: tuple[Path, Connect, Server]) -> None:
    root, connect, _ = served
    (root / "a").write_bytes(b"x")
    cl = connect("plain", Dialect.P9P2000U)
    cl.walk(0, 1, ["a"])
    cl.rpc(m.Twstat(1, blank_stat(name="b")))
    r = cl.rpc(m.Tstat(1))
    assert isinstance(r, m.Rstat) and r.stat.name == "b"
    cl.rpc(m.Twstat(1, blank_stat(name="a")))  # back: a real rename, not "no change"
    assert (root / "a").exists() and not (root / "b").exists()
    r = cl.rpc(m.Tstat(1))
    assert isinstance(r, m.Rstat) and r.stat.name == "a"


# ------------------------------------------------------- devices, names --


def test_device_nodes_need_the_grant(tmp_path: Path) -> None:
    """Devices are granted on mapped exports only (placeholder files keeping
    the type and number); a client without the grant gets EPERM."""
    root = tmp_path / "m"
    root.mkdir()
    clients = {n: Client(n, (Match(listener=n),), {"m": Rights(devices=n == "dev")})
               for n in ("plain", "dev")}  # fmt: skip
    srv = Server(Policy({"m": Export("m", str(root), idmap=mapped())}, clients))
    addrs = {n: str(srv.listen(parse_address(f"unix:{tmp_path}/{n}.sock"), name=n))
             for n in clients}  # fmt: skip
    try:
        mode = stat.S_IFCHR | 0o600
        cls = {}
        for n, addr in addrs.items():
            cls[n] = RawClient.connect(addr, timeout=10)
            cls[n].version()
            cls[n].attach(0, "")
        assert err(cls["plain"], m.Tmknod(0, "null", mode, 1, 3, 0)) == errno.EPERM
        assert not (root / "null").exists()
        assert err(cls["dev"], m.Tmknod(0, "null", mode, 1, 3, 0)) == 0
        cls["dev"].walk(0, 1, ["null"])
        r = cls["dev"].rpc(m.Tgetattr(1, 0x7FF))
        assert isinstance(r, m.Rgetattr)
        assert stat.S_ISCHR(r.mode) and r.rdev == os.makedev(1, 3)
        assert stat.S_ISREG((root / "null").lstat().st_mode)  # a file on the host
        for cl in cls.values():
            cl.close()
    finally:
        srv.stop()


@pytest.mark.parametrize("name", [".", "..", "a/b", ""])
def test_bad_new_names_are_refused_by_the_policy(
    served: tuple[Path, Connect, Server], tmp_path: Path, name: str
) -> None:
    """The backend refuses them too; the policy refuses first, and says so
    in the audit trail (rule "name")."""
    _, connect, srv = served
    cl = connect("plain")
    assert err(cl, m.Tmkdir(0, name, 0o755, 0)) == errno.EINVAL
    cl.walk(0, 1, [])
    assert err(cl, m.Tlcreate(1, name, c.L_O_RDWR, 0o644, 0)) == errno.EINVAL
    srv.audit.close()
    recs = [json.loads(x) for x in (tmp_path / "audit.log").read_text().splitlines()]
    denied = [r for r in recs if r["event"] == "denied"]
    assert [(r["op"], r["rule"], r["name"]) for r in denied] == [
        ("mkdir", "name", name), ("lcreate", "name", name)]  # fmt: skip


# -------------------------------------------------- device number range --


@pytest.mark.parametrize(("major", "minor"), [(1 << 31, 0), (0, 1 << 31), (4096, 0), (0, 1 << 20),
                                              ((1 << 32) - 1, (1 << 32) - 1)])  # fmt: skip
def test_device_numbers_out_of_range_are_einval(
    tmp_path: Path, major: int, minor: int, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "e"
    root.mkdir()
    srv = Server(Policy({"e": Export("e", str(root))},
                        {"dev": Client("dev", (Match(),), {"e": Rights(devices=True)})}))  # fmt: skip
    addr = str(srv.listen(parse_address("tcp:127.0.0.1:0")))
    try:
        with caplog.at_level(logging.ERROR, "p9share"):
            cl = RawClient.connect(addr, timeout=10)
            cl.version()
            cl.attach(0, "")
            mode = stat.S_IFCHR | 0o600
            assert err(cl, m.Tmknod(0, "dev", mode, major, minor, 0)) == errno.EINVAL
            cl.close()
            u = RawClient.connect(addr, timeout=10)
            u.dialect = Dialect.P9P2000U
            u.version()
            u.attach(0, "")
            u.walk(0, 1, [])
            spec = f"c {major} {minor}"
            assert err(u, m.Tcreate(1, "dev", c.DMDEVICE | 0o600, c.OREAD, spec)) == errno.EINVAL
            u.close()
        assert not [r for r in caplog.records if "internal error" in r.getMessage()]
        assert not (root / "dev").exists()
    finally:
        srv.stop()


def test_an_existing_name_is_eexist_even_with_the_file_quota_full(tmp_path: Path) -> None:
    """mkdir of an existing directory with the quota full answered EDQUOT, so
    a client re-making its directory after a reconnect never got going again
    (found by the soak run after a kill -9)."""
    root = tmp_path / "q"
    root.mkdir()
    srv = Server(Policy({"q": Export("q", str(root), quota_files=2)}))
    addr = str(srv.listen(parse_address("tcp:127.0.0.1:0")))
    try:
        cl = RawClient.connect(addr, timeout=10)
        cl.version()
        cl.attach(0, "")
        assert err(cl, m.Tmkdir(0, "d", 0o755, 0)) == 0
        assert err(cl, m.Tmkdir(0, "e", 0o755, 0)) == 0
        assert err(cl, m.Tmkdir(0, "f", 0o755, 0)) == errno.EDQUOT  # full
        assert err(cl, m.Tmkdir(0, "d", 0o755, 0)) == errno.EEXIST
        assert err(cl, m.Tsymlink(0, "e", "x", 0)) == errno.EEXIST
        cl.walk(0, 1, [])
        excl = c.L_O_RDWR | c.L_O_EXCL
        assert err(cl, m.Tlcreate(1, "d", excl, 0o644, 0)) == errno.EEXIST
        cl.close()
    finally:
        srv.stop()
