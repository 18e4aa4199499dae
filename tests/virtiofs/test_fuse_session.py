"""The FUSE session against a real temporary directory, through the host backend
and the operations layer; requests are FUSE bytes built here, as a guest sends them."""

from __future__ import annotations

import errno
import json
import os
import stat
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from p9share.audit import AuditLog
from p9share.backend.base import Backend
from p9share.backend.hostfs import HostBackend
from p9share.backend.mapped import MappedBackend
from p9share.policy import Client, Export, Match, Policy, PolicyError, Rights
from p9share.policy.idmap import mapped
from p9share.policy.peer import Peer
from p9share.policy.quota import QuotaLedger
from p9share.virtiofs import fuse as f
from p9share.virtiofs.session import MAX_WRITE, FuseSession

PEER = Peer("vhost-user:/run/vm1.sock", "vhost-user")
GUEST_UID, GUEST_GID = os.getuid(), os.getgid()
O_RDONLY, O_WRONLY, O_RDWR = 0, 1, 2
O_CREAT, O_EXCL, O_TRUNC = 0o100, 0o200, 0o1000
FMODE_EXEC = 0o40


class Guest:
    """Builds request bytes like the Linux client and reads the replies."""

    def __init__(self, session: FuseSession) -> None:
        self.s = session
        self.unique = 0

    def raw(self, cls: type[f.Request], nodeid: int = 1, **kw: Any) -> bytes | None:
        self.unique += 2
        req = cls(self.unique, nodeid, GUEST_UID, GUEST_GID, 4242, **kw)  # type: ignore[call-arg]
        return self.s.handle(f.encode_request(req, self.s.proto or f.PROTO_LATEST))

    def call(self, cls: type[f.Request], nodeid: int = 1, **kw: Any) -> bytes:
        out = self.raw(cls, nodeid, **kw)
        assert out is not None
        r = f.decode_reply(out)
        assert r.unique == self.unique
        if r.error:
            raise OSError(r.error, os.strerror(r.error))
        return r.body

    def init(self, minor: int = 38, flags: int = 0x7BFFFFFB) -> f.InitOut:
        body = self.call(f.Init, 0, major=7, minor=minor, max_readahead=131072, flags=flags)
        return f.parse_init_out(body)

    def lookup(self, parent: int, name: str) -> f.EntryOut:
        return f.parse_entry_out(self.call(f.Lookup, parent, name=name))

    def getattr(self, nodeid: int) -> f.Attr:
        return f.parse_attr_out(self.call(f.Getattr, nodeid, getattr_flags=0, fh=0))[2]

    def create(
        self, parent: int, name: str, flags: int = O_RDWR | O_CREAT, mode: int = 0o100644
    ) -> tuple[f.EntryOut, int]:
        entry, fh, _ = f.parse_create_out(
            self.call(f.Create, parent, flags=flags, mode=mode, umask=0o22, open_flags=0, name=name)
        )
        return entry, fh

    def open(self, nodeid: int, flags: int) -> int:
        return f.parse_open_out(self.call(f.Open, nodeid, flags=flags, open_flags=0))[0]

    def opendir(self, nodeid: int) -> int:
        return f.parse_open_out(self.call(f.Opendir, nodeid, flags=0o200000, open_flags=0))[0]

    def write(self, nodeid: int, fh: int, offset: int, data: bytes) -> int:
        body = self.call(
            f.Write,
            nodeid,
            fh=fh,
            offset=offset,
            write_flags=0,
            lock_owner=0,
            flags=O_RDWR,
            data=data,
        )
        return f.parse_write_out(body)

    def read(self, nodeid: int, fh: int, offset: int, size: int) -> bytes:
        return self.call(
            f.Read, nodeid, fh=fh, offset=offset, size=size, read_flags=0, lock_owner=0, flags=0
        )

    def release(self, nodeid: int, fh: int, dir: bool = False) -> None:
        cls = f.Releasedir if dir else f.Release
        self.call(cls, nodeid, fh=fh, flags=0, release_flags=0, lock_owner=0)

    def readdir(
        self, nodeid: int, fh: int, plus: bool, offset: int = 0, size: int = 4096
    ) -> list[f.Dirent]:
        cls = f.Readdirplus if plus else f.Readdir
        body = self.call(
            cls, nodeid, fh=fh, offset=offset, size=size, read_flags=0, lock_owner=0, flags=0
        )
        assert len(body) <= size
        return f.parse_dirents(body, plus)

    def forget(self, nodeid: int, n: int = 1) -> None:
        assert self.raw(f.Forget, nodeid, nlookup=n) is None

    def errno_of(self, cls: type[f.Request], nodeid: int = 1, **kw: Any) -> int:
        with pytest.raises(OSError) as ei:
            self.call(cls, nodeid, **kw)
        assert ei.value.errno is not None
        return ei.value.errno


def make_session(
    root: Path,
    *,
    rights: Rights | None = None,
    export: Export | None = None,
    cache: str = "auto",
    audit: AuditLog | None = None,
    quotas: bool = False,
    **kw: Any,
) -> tuple[FuseSession, Guest, Backend]:
    exp = export or Export("share", str(root))
    clients = None
    if rights is not None:
        clients = {"vm1": Client("vm1", (Match(listener=PEER.listener),), {exp.name: rights})}
    policy = Policy({exp.name: exp}, clients)
    backend: Backend = HostBackend(exp.path)
    if exp.idmap.mode == "mapped":
        backend = MappedBackend(backend, exp.idmap.xattr_layout)
    ledgers = {exp.name: QuotaLedger(exp, *backend.usage())} if quotas else None
    s = FuseSession(policy, {exp.name: backend}, exp.name, PEER, audit=audit or AuditLog(None),
                    quotas=ledgers, cache=cache, **kw)  # fmt: skip
    return s, Guest(s), backend


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "export"
    r.mkdir()
    (r / "hello.txt").write_bytes(b"hello, world\n")
    (r / "sub").mkdir()
    (r / "sub" / "inner").write_bytes(b"x" * 10)
    return r


@pytest.fixture
def guest(root: Path) -> Iterator[Guest]:
    s, g, backend = make_session(root)
    g.init()
    yield g
    s.close()
    backend.shutdown()


# ---------------------------------------------------------------- INIT


def test_init_negotiates_only_what_is_honoured(root: Path) -> None:
    _s, g, _ = make_session(root, cache="auto")
    out = g.init()
    assert (out.major, out.minor) == (7, 38)
    assert out.max_write == MAX_WRITE and out.max_pages == MAX_WRITE // 4096
    assert out.max_readahead == 131072 and out.time_gran == 1
    want = (f.ASYNC_READ | f.ATOMIC_O_TRUNC | f.BIG_WRITES | f.PARALLEL_DIROPS | f.MAX_PAGES
            | f.ASYNC_DIO | f.POSIX_LOCKS | f.DO_READDIRPLUS | f.READDIRPLUS_AUTO | f.AUTO_INVAL_DATA)  # fmt: skip
    assert out.flags == want
    # never more than the kernel offered
    s2, g2, _ = make_session(root, cache="none")
    offered = f.ASYNC_READ | f.DO_READDIRPLUS | f.FLOCK_LOCKS | f.HANDLE_KILLPRIV_V2
    assert g2.init(flags=offered).flags == f.ASYNC_READ
    assert s2.proto == f.Proto(38)


def test_init_versions(root: Path) -> None:
    _, g, _ = make_session(root)
    assert g.init(minor=31, flags=f.ASYNC_READ).minor == 31
    _, g, _ = make_session(root)
    assert g.init(minor=40).minor == 38  # a newer kernel: we speak 7.38
    _, g, _ = make_session(root)
    assert g.errno_of(f.Init, 0, major=7, minor=30, max_readahead=0, flags=0) == errno.EPROTO
    _, g, _ = make_session(root)
    major = f.parse_init_out(g.call(f.Init, 0, major=8, minor=0, max_readahead=0, flags=0))
    assert (major.major, major.minor) == (7, 38)


def test_nothing_before_init(root: Path) -> None:
    _, g, _ = make_session(root)
    assert g.errno_of(f.Getattr, 1, getattr_flags=0, fh=0) == errno.EIO
    g.init()
    # a second INIT is a guest reset: accepted (test_init_again_after_a_guest_reset...)
    assert g.init().minor == 38


# ---------------------------------------------------------------- lookups and inodes


def test_lookup_getattr_match_the_host(guest: Guest, root: Path) -> None:
    e = guest.lookup(1, "hello.txt")
    st = os.stat(root / "hello.txt")
    assert e.nodeid > 1 and e.attr.size == st.st_size == 13
    assert e.attr.mode == st.st_mode and e.attr.nlink == 1
    assert (e.attr.uid, e.attr.gid) == (st.st_uid, st.st_gid)
    assert e.attr.mtime * 10**9 + e.attr.mtimensec == st.st_mtime_ns
    assert e.entry_valid == 1 and e.attr_valid == 1  # cache=auto
    assert guest.getattr(e.nodeid) == e.attr
    root_attr = guest.getattr(1)
    assert stat.S_ISDIR(root_attr.mode)
    assert guest.errno_of(f.Lookup, 1, name="missing") == errno.ENOENT
    assert guest.errno_of(f.Lookup, e.nodeid, name="x") == errno.ENOTDIR


def test_one_nodeid_per_file_and_forget_releases(guest: Guest, root: Path) -> None:
    s = guest.s
    a = guest.lookup(1, "hello.txt")
    b = guest.lookup(1, "hello.txt")
    os.link(root / "hello.txt", root / "again")
    c = guest.lookup(1, "again")
    assert a.nodeid == b.nodeid == c.nodeid  # hard links are one inode to the kernel
    assert s._inodes[a.nodeid].nlookup == 3
    guest.forget(a.nodeid, 2)
    assert guest.getattr(a.nodeid).nlink == 2
    assert guest.raw(f.BatchForget, 0, forgets=((a.nodeid, 1),)) is None
    assert a.nodeid not in s._inodes  # released with the last reference
    assert guest.errno_of(f.Getattr, a.nodeid, getattr_flags=0, fh=0) == errno.ESTALE
    # a new lookup gets a new nodeid, never a reused one
    assert guest.lookup(1, "hello.txt").nodeid > a.nodeid
    # forgetting the root or an unknown node is harmless
    guest.forget(1, 100)
    guest.forget(987654, 1)
    assert stat.S_ISDIR(guest.getattr(1).mode)


def test_dot_names_are_not_looked_up(guest: Guest) -> None:
    assert guest.errno_of(f.Lookup, 1, name="..") == errno.EINVAL
    assert guest.errno_of(f.Lookup, 1, name=".") == errno.EINVAL


def test_inode_table_is_bounded(root: Path) -> None:
    s, g, _ = make_session(root, max_inodes=3)  # the root and two more
    g.init()
    g.lookup(1, "hello.txt")
    g.lookup(1, "sub")
    assert g.lookup(1, "hello.txt").nodeid == 2  # a known inode costs no new entry
    sub = g.lookup(1, "sub").nodeid
    assert g.errno_of(f.Lookup, sub, name="inner") == errno.ENFILE
    assert len(s._inodes) == 3


# ---------------------------------------------------------------- files


def test_create_write_read_release(guest: Guest, root: Path) -> None:
    e, fh = guest.create(1, "new.bin")
    assert stat.S_ISREG(e.attr.mode) and e.attr.mode & 0o777 == 0o644
    assert guest.write(e.nodeid, fh, 0, b"abc" * 1000) == 3000
    assert guest.write(e.nodeid, fh, 3000, b"END") == 3
    assert guest.read(e.nodeid, fh, 2998, 100) == b"bcEND"
    guest.call(f.Flush, e.nodeid, fh=fh, lock_owner=1)
    guest.call(f.Fsync, e.nodeid, fh=fh, fsync_flags=1)
    guest.release(e.nodeid, fh)
    assert (root / "new.bin").read_bytes() == b"abc" * 1000 + b"END"
    assert (
        guest.errno_of(
            f.Read, e.nodeid, fh=fh, offset=0, size=1, read_flags=0, lock_owner=0, flags=0
        )
        == errno.EBADF
    )
    assert (
        guest.errno_of(f.Release, e.nodeid, fh=fh, flags=0, release_flags=0, lock_owner=0)
        == errno.EBADF
    )
    # O_EXCL on an existing name
    assert (
        guest.errno_of(
            f.Create,
            1,
            flags=O_RDWR | O_CREAT | O_EXCL,
            mode=0o100644,
            umask=0,
            open_flags=0,
            name="new.bin",
        )
        == errno.EEXIST
    )


def test_open_flags(guest: Guest, root: Path) -> None:
    e = guest.lookup(1, "hello.txt")
    fh = guest.open(e.nodeid, O_RDONLY | FMODE_EXEC | 0o100000)  # exec and O_LARGEFILE bits
    assert guest.read(e.nodeid, fh, 0, 5) == b"hello"
    assert (
        guest.errno_of(
            f.Write, e.nodeid, fh=fh, offset=0, write_flags=0, lock_owner=0, flags=0, data=b"x"
        )
        == errno.EBADF
    )
    guest.release(e.nodeid, fh)
    fh = guest.open(e.nodeid, O_WRONLY | O_TRUNC)  # ATOMIC_O_TRUNC: the server truncates
    assert (root / "hello.txt").read_bytes() == b""
    assert (
        guest.errno_of(
            f.Read, e.nodeid, fh=fh, offset=0, size=1, read_flags=0, lock_owner=0, flags=0
        )
        == errno.EBADF
    )
    guest.release(e.nodeid, fh)
    d = guest.lookup(1, "sub")
    assert guest.errno_of(f.Opendir, e.nodeid, flags=0, open_flags=0) == errno.ENOTDIR
    assert guest.errno_of(f.Open, d.nodeid, flags=O_WRONLY, open_flags=0) == errno.EISDIR


def test_read_is_capped_at_the_negotiated_size(guest: Guest, root: Path) -> None:
    (root / "big").write_bytes(b"z" * (MAX_WRITE + 5000))
    e = guest.lookup(1, "big")
    fh = guest.open(e.nodeid, O_RDONLY)
    assert len(guest.read(e.nodeid, fh, 0, 0xFFFFFFFF)) == MAX_WRITE


def test_open_handle_keeps_its_inode(guest: Guest, root: Path) -> None:
    e = guest.lookup(1, "hello.txt")
    fh = guest.open(e.nodeid, O_RDONLY)
    guest.forget(e.nodeid, 1)  # a hostile guest forgets an inode it still has open
    assert guest.read(e.nodeid, fh, 0, 5) == b"hello"
    guest.release(e.nodeid, fh)
    assert e.nodeid not in guest.s._inodes


def test_handle_table_is_bounded(root: Path) -> None:
    s, g, _ = make_session(root, max_handles=2)
    g.init()
    e = g.lookup(1, "hello.txt")
    g.open(e.nodeid, O_RDONLY)
    g.open(e.nodeid, O_RDONLY)
    assert g.errno_of(f.Open, e.nodeid, flags=O_RDONLY, open_flags=0) == errno.EMFILE
    assert len(s._opens) == 2


def test_setattr(guest: Guest, root: Path) -> None:
    e = guest.lookup(1, "hello.txt")
    body = guest.call(f.Setattr, e.nodeid, valid=f.FATTR_MODE | f.FATTR_SIZE | f.FATTR_MTIME | f.FATTR_ATIME,
                      fh=0, size=5, lock_owner=0, atime=1_000_000_000, mtime=(1 << 64) - 10,
                      ctime=0, atimensec=7, mtimensec=500, ctimensec=0, mode=0o100600,
                      new_uid=0, new_gid=0)  # fmt: skip
    _, _, attr = f.parse_attr_out(body)
    st = os.stat(root / "hello.txt")
    assert st.st_size == attr.size == 5 and stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_atime_ns == 1_000_000_000 * 10**9 + 7
    assert st.st_mtime_ns == -10 * 10**9 + 500  # before 1970: a negative time64_t
    assert attr.mtime == (1 << 64) - 10
    # truncate through an open handle (FATTR_FH)
    fh = guest.open(e.nodeid, O_RDWR)
    guest.call(f.Setattr, e.nodeid, valid=f.FATTR_SIZE | f.FATTR_FH, fh=fh, size=1, lock_owner=0,
               atime=0, mtime=0, ctime=0, atimensec=0, mtimensec=0, ctimensec=0, mode=0,
               new_uid=0, new_gid=0)  # fmt: skip
    assert (root / "hello.txt").read_bytes() == b"h"
    assert guest.errno_of(f.Setattr, e.nodeid, valid=f.FATTR_MTIME, fh=0, size=0, lock_owner=0,
                          atime=0, mtime=0, ctime=0, atimensec=0, mtimensec=10**9, ctimensec=0,
                          mode=0, new_uid=0, new_gid=0) == errno.EINVAL  # fmt: skip


# ---------------------------------------------------------------- directories


def test_mkdir_symlink_mknod_link_unlink_rmdir_rename(guest: Guest, root: Path) -> None:
    d = f.parse_entry_out(guest.call(f.Mkdir, 1, mode=0o755, umask=0o22, name="dir"))
    assert stat.S_ISDIR(d.attr.mode) and (root / "dir").is_dir()
    ln = f.parse_entry_out(guest.call(f.Symlink, d.nodeid, name="ln", target="../hello.txt"))
    assert stat.S_ISLNK(ln.attr.mode)
    assert guest.call(f.Readlink, ln.nodeid) == b"../hello.txt"
    fifo = f.parse_entry_out(
        guest.call(f.Mknod, d.nodeid, mode=stat.S_IFIFO | 0o600, rdev=0, umask=0, name="p")
    )
    assert stat.S_ISFIFO(fifo.attr.mode) and stat.S_ISFIFO(os.lstat(root / "dir" / "p").st_mode)
    h = guest.lookup(1, "hello.txt")
    hl = f.parse_entry_out(guest.call(f.Link, d.nodeid, oldnodeid=h.nodeid, newname="hard"))
    assert hl.nodeid == h.nodeid and hl.attr.nlink == 2
    guest.call(f.Rename, d.nodeid, newdir=1, oldname="hard", newname="moved")
    assert (root / "moved").read_bytes() == b"hello, world\n"
    assert (
        guest.errno_of(f.Rename2, 1, newdir=1, flags=1, oldname="moved", newname="sub")
        == errno.ENOSYS
    )
    guest.call(f.Rename2, 1, newdir=d.nodeid, flags=0, oldname="moved", newname="back")
    assert (root / "dir" / "back").exists()
    assert guest.errno_of(f.Rmdir, 1, name="dir") == errno.ENOTEMPTY
    for name in ("ln", "p", "back"):
        guest.call(f.Unlink, d.nodeid, name=name)
    guest.call(f.Rmdir, 1, name="dir")
    assert sorted(os.listdir(root)) == ["hello.txt", "sub"]


def test_device_node_refused_and_audited(root: Path, tmp_path: Path) -> None:
    log_path = tmp_path / "audit.jsonl"
    audit = AuditLog(str(log_path))
    _s, g, _ = make_session(root, rights=Rights(), audit=audit)  # devices not granted
    g.init()
    rdev = (5 << 8) | 1  # new_encode_dev(5, 1)
    assert (
        g.errno_of(f.Mknod, 1, mode=stat.S_IFCHR | 0o600, rdev=rdev, umask=0, name="tty")
        == errno.EPERM
    )
    audit.close()
    recs = [json.loads(line) for line in log_path.read_text().splitlines()]
    denied = [r for r in recs if r["event"] == "denied"]
    assert denied and denied[0]["op"] == "mknod" and denied[0]["rule"] == "devices"
    assert denied[0]["name"] == "tty" and denied[0]["path"] == "share:/"
    assert any(r["event"] == "attach" and r["client"] == "vm1" for r in recs)


def test_device_node_with_grant_on_a_mapped_export(root: Path) -> None:
    # the mapped id mode keeps a device as a plain file with its type in xattrs
    _s, g, _ = make_session(
        root, rights=Rights(devices=True), export=Export("share", str(root), idmap=mapped())
    )
    g.init()
    rdev = (1 << 8) | 3 | (0x12300 << 12)  # major 1, minor 0x12303: Linux's new_encode_dev
    e = f.parse_entry_out(
        g.call(f.Mknod, 1, mode=stat.S_IFCHR | 0o600, rdev=rdev, umask=0, name="dev")
    )
    assert stat.S_ISCHR(e.attr.mode) and e.attr.rdev == rdev
    assert g.getattr(e.nodeid).rdev == rdev
    assert stat.S_ISREG(os.lstat(root / "dev").st_mode)


def test_readdir_resumes_within_the_budget(guest: Guest, root: Path) -> None:
    names = {f"file-{i:03d}" for i in range(60)}
    for n in names:
        (root / "sub" / n).write_bytes(b"")
    d = guest.lookup(1, "sub")
    fh = guest.opendir(d.nodeid)
    seen: list[str] = []
    offset, calls = 0, 0
    while True:
        ents = guest.readdir(d.nodeid, fh, plus=False, offset=offset, size=256)
        if not ents:
            break
        calls += 1
        seen += [e.name for e in ents]
        offset = ents[-1].off
    assert calls > 5  # the 256-byte budget split the listing
    assert sorted(seen) == sorted({".", "..", "inner"} | names)
    ents = guest.readdir(d.nodeid, fh, plus=False)
    inner = next(e for e in ents if e.name == "inner")
    assert inner.type == 8 and inner.ino == guest.lookup(d.nodeid, "inner").attr.ino
    assert guest.readdir(d.nodeid, fh, plus=False, size=8) == []  # no room for one entry
    guest.call(f.Fsyncdir, d.nodeid, fh=fh, fsync_flags=0)
    guest.release(d.nodeid, fh, dir=True)


def test_readdirplus_counts_one_lookup_per_entry(guest: Guest, root: Path) -> None:
    s = guest.s
    d = guest.lookup(1, "sub")
    fh = guest.opendir(d.nodeid)
    ents = guest.readdir(d.nodeid, fh, plus=True)
    by_name = {e.name: e for e in ents}
    assert set(by_name) == {".", "..", "inner"}
    assert by_name["."].entry is not None and by_name["."].entry.nodeid == 0  # no lookup taken
    inner = by_name["inner"].entry
    assert inner is not None and inner.nodeid > 1 and inner.attr.size == 10
    assert s._inodes[inner.nodeid].nlookup == 1
    # an entry that does not fit takes no lookup
    small = guest.readdir(d.nodeid, fh, plus=True, size=160 + 160)
    assert [e.name for e in small] == [".", ".."]
    assert s._inodes[inner.nodeid].nlookup == 1
    guest.forget(inner.nodeid, 1)
    assert inner.nodeid not in s._inodes
    guest.release(d.nodeid, fh, dir=True)


def test_statfs_and_access(guest: Guest, root: Path) -> None:
    sfs = f.parse_statfs_out(guest.call(f.Statfs, 1))
    v = os.statvfs(root)
    assert sfs.bsize == v.f_bsize and sfs.blocks == v.f_blocks and sfs.namelen == v.f_namemax
    guest.call(f.Access, 1, mask=os.R_OK | os.W_OK)


def test_readonly_grant(root: Path) -> None:
    _s, g, _ = make_session(root, rights=Rights(readonly=True))
    g.init()
    e = g.lookup(1, "hello.txt")
    assert g.errno_of(f.Open, e.nodeid, flags=O_RDWR, open_flags=0) == errno.EROFS
    assert g.errno_of(f.Open, e.nodeid, flags=O_RDONLY | O_TRUNC, open_flags=0) == errno.EROFS
    assert g.errno_of(f.Unlink, 1, name="hello.txt") == errno.EROFS
    assert (
        g.errno_of(
            f.Create, 1, flags=O_RDWR | O_CREAT, mode=0o100644, umask=0, open_flags=0, name="n"
        )
        == errno.EROFS
    )
    assert g.errno_of(f.Access, 1, mask=os.W_OK) == errno.EROFS
    assert g.errno_of(f.Setattr, e.nodeid, valid=f.FATTR_SIZE, fh=0, size=0, lock_owner=0, atime=0, mtime=0,
                      ctime=0, atimensec=0, mtimensec=0, ctimensec=0, mode=0, new_uid=0,
                      new_gid=0) == errno.EROFS  # fmt: skip
    fh = g.open(e.nodeid, O_RDONLY)
    assert g.read(e.nodeid, fh, 0, 5) == b"hello"
    assert (root / "hello.txt").read_bytes() == b"hello, world\n"


def test_client_without_grant_is_refused(root: Path) -> None:
    exp = Export("share", str(root))
    other = {"vm2": Client("vm2", (Match(listener="vhost-user:/other"),), {"share": Rights()})}
    with pytest.raises(PolicyError):
        FuseSession(Policy({"share": exp}, other), {"share": HostBackend(str(root))}, "share", PEER)


def test_quota_files(root: Path) -> None:
    exp = Export("share", str(root), quota_files=4)  # 3 files exist
    _s, g, _ = make_session(root, export=exp, quotas=True)
    g.init()
    g.create(1, "one")
    assert (
        g.errno_of(
            f.Create, 1, flags=O_RDWR | O_CREAT, mode=0o100644, umask=0, open_flags=0, name="two"
        )
        == errno.EDQUOT
    )
    g.call(f.Unlink, 1, name="one")
    g.create(1, "two")


def test_setid_dropped_on_write_by_a_user(root: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs a set-uid file owned by another user")
    p = root / "suid"
    p.write_bytes(b"")
    os.chmod(p, 0o4755)
    s, g, _ = make_session(root, rights=Rights(setid=True))
    g.init()
    e = g.lookup(1, "suid")
    fh = g.open(e.nodeid, O_WRONLY)
    g.unique += 2
    req = f.Write(g.unique, e.nodeid, 1000, 1000, 1, fh, 0, 0, 0, 0, b"x")  # a non-root guest user
    r = f.decode_reply(s.handle(f.encode_request(req)) or b"")
    assert r.error == 0
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o755


def test_xattrs(guest: Guest, root: Path) -> None:
    try:
        os.setxattr(root / "hello.txt", "user.probe", b"1")
    except OSError:
        pytest.skip("no user xattrs on this file system")
    e = guest.lookup(1, "hello.txt")
    guest.call(f.Setxattr, e.nodeid, flags=0, setxattr_flags=0, name="user.k", value=b"v\x00al")
    assert f.parse_xattr_size(guest.call(f.Getxattr, e.nodeid, size=0, name="user.k")) == 4
    assert guest.call(f.Getxattr, e.nodeid, size=100, name="user.k") == b"v\x00al"
    assert guest.errno_of(f.Getxattr, e.nodeid, size=2, name="user.k") == errno.ERANGE
    names = f.parse_names(guest.call(f.Listxattr, e.nodeid, size=4096))
    assert set(names) == {"user.probe", "user.k"}
    assert (
        guest.errno_of(f.Setxattr, e.nodeid, flags=0, setxattr_flags=0, name="trusted.x", value=b"")
        == errno.EOPNOTSUPP
    )
    guest.call(f.Removexattr, e.nodeid, name="user.k")
    assert os.listxattr(root / "hello.txt") == ["user.probe"]


# ---------------------------------------------------------------- wire edge cases


def test_malformed_and_unknown(guest: Guest) -> None:
    s = guest.s
    assert s.handle(b"\x00" * 10) is None  # no header: nothing to answer
    bad = struct.pack("<IIQQIIIHH", 41, 1, 77, 1, 0, 0, 0, 0, 0) + b"x"  # name without NUL
    r = f.decode_reply(s.handle(bad) or b"")
    assert (r.unique, r.error) == (77, errno.EPROTO)
    mismatch = struct.pack("<IIQQIIIHH", 1000, 3, 78, 1, 0, 0, 0, 0, 0) + b"\x00" * 16
    assert f.decode_reply(s.handle(mismatch) or b"").error == errno.EPROTO
    non_utf8 = struct.pack("<IIQQIIIHH", 42, 1, 79, 1, 0, 0, 0, 0, 0) + b"\xff\x00"
    assert f.decode_reply(s.handle(non_utf8) or b"").error == errno.EILSEQ
    bad_forget = struct.pack("<IIQQIIIHH", 41, 2, 80, 1, 0, 0, 0, 0, 0) + b"x"
    assert s.handle(bad_forget) is None  # FORGET is never answered
    for opcode in (37, 39, 48, 500):
        unk = struct.pack("<IIQQIIIHH", 40, opcode, 81, 1, 0, 0, 0, 0, 0)
        assert f.decode_reply(s.handle(unk) or b"").error == errno.ENOSYS
    notify = struct.pack("<IIQQIIIHH", 40, 41, 82, 1, 0, 0, 0, 0, 0)
    assert s.handle(notify) is None
    assert guest.raw(f.Interrupt, 0, target=5) is None
    assert guest.errno_of(f.Fallocate, 1, fh=0, offset=0, length=1, mode=0) == errno.ENOSYS
    assert guest.errno_of(f.Lseek, 1, fh=0, offset=0, whence=3) == errno.ENOSYS
    assert guest.errno_of(f.Syncfs, 1) == errno.ENOSYS
    assert (
        guest.errno_of(f.Tmpfile, 1, flags=O_RDWR, mode=0o100600, umask=0, open_flags=0, name="t")
        == errno.ENOSYS
    )
    assert (
        guest.errno_of(
            f.CopyFileRange, 1, fh_in=0, off_in=0, nodeid_out=1, fh_out=0, off_out=0, len=1, flags=0
        )
        == errno.ENOSYS
    )
    assert guest.errno_of(f.Getattr, 99999, getattr_flags=0, fh=0) == errno.ESTALE
    assert (
        guest.errno_of(f.Read, 1, fh=12345, offset=0, size=1, read_flags=0, lock_owner=0, flags=0)
        == errno.EBADF
    )


def test_destroy_releases_everything(root: Path) -> None:
    s, g, _backend = make_session(root)
    g.init()
    e = g.lookup(1, "hello.txt")
    fh = g.open(e.nodeid, O_RDONLY)
    g.call(f.Destroy, 0)
    assert list(s._inodes) == [1] and not s._opens and s.proto is None
    assert (
        g.errno_of(f.Read, e.nodeid, fh=fh, offset=0, size=1, read_flags=0, lock_owner=0, flags=0)
        == errno.EIO
    )
    g.init()  # a rebooted guest starts again on the same session
    assert g.lookup(1, "hello.txt").attr.size == 13


def test_cache_modes_set_timeouts_and_open_flags(root: Path) -> None:
    for cache, valid, fopen in (
        ("none", 0, f.FOPEN_DIRECT_IO),
        ("auto", 1, 0),
        ("always", 86400, f.FOPEN_KEEP_CACHE),
    ):
        _s, g, _ = make_session(root, cache=cache)
        g.init()
        e = g.lookup(1, "hello.txt")
        assert e.entry_valid == e.attr_valid == valid
        assert f.parse_open_out(g.call(f.Open, e.nodeid, flags=0, open_flags=0))[1] == fopen
    with pytest.raises(ValueError):
        make_session(root, cache="sometimes")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_no_host_fd_outlives_its_references(root: Path) -> None:
    # hostfs holds an O_PATH fd per inode and one per open file: every one
    # comes back after FORGET/RELEASE, and after DESTROY whatever the guest left
    _s, g, _ = make_session(root)
    g.init()
    base = open_fds()
    e = g.lookup(1, "hello.txt")
    sub = g.lookup(1, "sub")
    inner = g.lookup(sub.nodeid, "inner")
    fh = g.open(e.nodeid, O_RDONLY)
    dfh = g.opendir(sub.nodeid)
    g.readdir(sub.nodeid, dfh, plus=True)  # one more lookup of inner
    assert open_fds() > base
    g.release(e.nodeid, fh)
    g.release(sub.nodeid, dfh, dir=True)
    g.forget(e.nodeid)
    g.forget(inner.nodeid, 2)
    g.forget(sub.nodeid)
    assert open_fds() == base
    e = g.lookup(1, "hello.txt")
    g.open(e.nodeid, O_RDONLY)
    d = g.lookup(1, "sub")
    g.opendir(d.nodeid)
    g.create(d.nodeid, "made")
    g.call(f.Destroy, 0)
    assert open_fds() == base


# ---------------------------------------------------------------- POSIX locks

F_RDLCK, F_WRLCK, F_UNLCK = 0, 1, 2
OFFSET_MAX = (1 << 63) - 1


def lk(
    g: Guest,
    cls: type[f.Request],
    nodeid: int,
    fh: int,
    start: int,
    end: int,
    type: int,
    owner: int = 1,
    flags: int = 0,
) -> bytes:
    return g.call(
        cls,
        nodeid,
        fh=fh,
        owner=owner,
        start=start,
        end=end,
        type=type,
        lk_pid=4242,
        lk_flags=flags,
    )


@pytest.fixture
def two_guests(root: Path) -> Iterator[tuple[Guest, Guest, int]]:
    """Two VMs on one export (two sessions, one backend each, as two sockets)."""
    a, ga, _ = make_session(root)
    b, gb, _ = make_session(root)
    ga.init()
    gb.init()
    yield ga, gb, 0
    a.close()
    b.close()


def test_locks_between_guests(two_guests: tuple[Guest, Guest, int]) -> None:
    ga, gb, _ = two_guests
    ea, eb = ga.lookup(1, "hello.txt"), gb.lookup(1, "hello.txt")
    fa, fb = ga.open(ea.nodeid, O_RDWR), gb.open(eb.nodeid, O_RDWR)
    lk(ga, f.Setlk, ea.nodeid, fa, 10, 19, F_WRLCK)
    with pytest.raises(BlockingIOError):
        lk(gb, f.Setlk, eb.nodeid, fb, 15, 15, F_RDLCK)
    lk(gb, f.Setlk, eb.nodeid, fb, 20, OFFSET_MAX, F_WRLCK)  # beside it: granted
    held = f.parse_lk_out(lk(gb, f.Getlk, eb.nodeid, fb, 0, OFFSET_MAX, F_WRLCK))
    assert held.type == F_WRLCK and held.pid == 0  # no host or foreign pid reaches the guest
    assert (held.start, held.end) in ((10, 19), (20, OFFSET_MAX))
    free = f.parse_lk_out(lk(ga, f.Getlk, ea.nodeid, fa, 0, 5, F_WRLCK))
    assert free == f.FileLock(0, 5, F_UNLCK, 0)
    lk(ga, f.Setlk, ea.nodeid, fa, 0, OFFSET_MAX, F_UNLCK)
    lk(gb, f.Setlk, eb.nodeid, fb, 15, 15, F_RDLCK)


def test_lock_against_a_host_process(guest: Guest, root: Path) -> None:
    import fcntl

    e = guest.lookup(1, "hello.txt")
    fh = guest.open(e.nodeid, O_RDWR)
    with open(root / "hello.txt", "r+b") as host:
        fcntl.lockf(host, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 3)  # bytes 3 on the host
        with pytest.raises(BlockingIOError):
            lk(guest, f.Setlk, e.nodeid, fh, 0, 10, F_WRLCK)
        held = f.parse_lk_out(lk(guest, f.Getlk, e.nodeid, fh, 0, 10, F_WRLCK))
        # the host holder's pid means nothing in the guest (Linux would answer EIO)
        assert held == f.FileLock(3, 3, F_WRLCK, 0)
        fcntl.lockf(host, fcntl.LOCK_UN, 1, 3)
    lk(guest, f.Setlk, e.nodeid, fh, 0, 10, F_WRLCK)
    with open(root / "hello.txt", "r+b") as host, pytest.raises(OSError):
        fcntl.lockf(host, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 3)


def test_lock_checks(guest: Guest) -> None:
    e = guest.lookup(1, "hello.txt")
    ro = guest.open(e.nodeid, O_RDONLY)
    assert (
        guest.errno_of(
            f.Setlk, e.nodeid, fh=ro, owner=1, start=0, end=1, type=F_WRLCK, lk_pid=1, lk_flags=0
        )
        == errno.EBADF
    )
    assert (
        guest.errno_of(
            f.Setlk, e.nodeid, fh=ro, owner=1, start=5, end=4, type=F_RDLCK, lk_pid=1, lk_flags=0
        )
        == errno.EINVAL
    )
    assert (
        guest.errno_of(
            f.Setlk, e.nodeid, fh=ro, owner=1, start=0, end=1, type=7, lk_pid=1, lk_flags=0
        )
        == errno.EINVAL
    )
    assert (
        guest.errno_of(
            f.Setlk,
            e.nodeid,
            fh=ro,
            owner=1,
            start=0,
            end=1,
            type=F_RDLCK,
            lk_pid=1,
            lk_flags=f.LK_FLOCK,
        )
        == errno.ENOSYS
    )
    assert (
        guest.errno_of(
            f.Getlk, e.nodeid, fh=999, owner=1, start=0, end=1, type=F_RDLCK, lk_pid=1, lk_flags=0
        )
        == errno.EBADF
    )


def test_flush_gives_back_posix_locks(two_guests: tuple[Guest, Guest, int]) -> None:
    ga, gb, _ = two_guests
    ea, eb = ga.lookup(1, "hello.txt"), gb.lookup(1, "hello.txt")
    fa, fb = ga.open(ea.nodeid, O_RDWR), gb.open(eb.nodeid, O_RDWR)
    lk(ga, f.Setlk, ea.nodeid, fa, 0, OFFSET_MAX, F_WRLCK)
    with pytest.raises(BlockingIOError):
        lk(gb, f.Setlk, eb.nodeid, fb, 0, 0, F_WRLCK)
    ga.call(f.Flush, ea.nodeid, fh=fa, lock_owner=1)  # close(2) in guest A
    lk(gb, f.Setlk, eb.nodeid, fb, 0, 0, F_WRLCK)


def submit(
    g: Guest, cls: type[f.Request], nodeid: int, **kw: Any
) -> tuple[int, list[bytes | None], threading.Event]:
    g.unique += 2
    got: list[bytes | None] = []
    ev = threading.Event()

    def done(reply: bytes | None) -> None:
        got.append(reply)
        ev.set()

    req = cls(g.unique, nodeid, GUEST_UID, GUEST_GID, 4242, **kw)  # type: ignore[call-arg]
    g.s.submit(f.encode_request(req), done)
    return g.unique, got, ev


def test_setlkw_waits_without_holding_up_the_queue(two_guests: tuple[Guest, Guest, int]) -> None:
    ga, gb, _ = two_guests
    ea, eb = ga.lookup(1, "hello.txt"), gb.lookup(1, "hello.txt")
    fa, fb = ga.open(ea.nodeid, O_RDWR), gb.open(eb.nodeid, O_RDWR)
    lk(ga, f.Setlk, ea.nodeid, fa, 0, OFFSET_MAX, F_WRLCK)
    unique, got, ev = submit(
        gb,
        f.Setlkw,
        eb.nodeid,
        fh=fb,
        owner=2,
        start=0,
        end=OFFSET_MAX,
        type=F_WRLCK,
        lk_pid=1,
        lk_flags=0,
    )
    assert not ev.wait(0.1) and got == []  # waiting, and submit() returned
    # the same session answers other requests meanwhile, at once
    _, got2, ev2 = submit(gb, f.Getattr, eb.nodeid, getattr_flags=0, fh=0)
    assert ev2.is_set() and f.decode_reply(got2[0] or b"").error == 0
    lk(ga, f.Setlk, ea.nodeid, fa, 0, OFFSET_MAX, F_UNLCK)
    assert ev.wait(5)
    r = f.decode_reply(got[0] or b"")
    assert (r.unique, r.error) == (unique, 0)
    with pytest.raises(BlockingIOError):  # B holds it now
        lk(ga, f.Setlk, ea.nodeid, fa, 0, 0, F_WRLCK)


def test_setlkw_through_handle_blocks_its_caller(two_guests: tuple[Guest, Guest, int]) -> None:
    ga, gb, _ = two_guests
    ea, eb = ga.lookup(1, "hello.txt"), gb.lookup(1, "hello.txt")
    fa, fb = ga.open(ea.nodeid, O_RDWR), gb.open(eb.nodeid, O_RDWR)
    lk(ga, f.Setlk, ea.nodeid, fa, 0, 0, F_WRLCK)
    out: list[bytes] = []
    t = threading.Thread(target=lambda: out.append(lk(gb, f.Setlkw, eb.nodeid, fb, 0, 0, F_WRLCK)))
    t.start()
    t.join(0.1)
    assert t.is_alive()
    ga.release(ea.nodeid, fa)  # closing the holder's file drops its locks
    t.join(5)
    assert out == [b""]


def test_lock_waits_are_bounded_and_end_with_the_session(
    two_guests: tuple[Guest, Guest, int],
) -> None:
    ga, gb, _ = two_guests
    gb.s.max_lock_waiters = 1
    ea, eb = ga.lookup(1, "hello.txt"), gb.lookup(1, "hello.txt")
    fa, fb = ga.open(ea.nodeid, O_RDWR), gb.open(eb.nodeid, O_RDWR)
    fb2 = gb.open(eb.nodeid, O_RDWR)
    lk(ga, f.Setlk, ea.nodeid, fa, 0, 0, F_WRLCK)
    _, got, ev = submit(
        gb, f.Setlkw, eb.nodeid, fh=fb, owner=2, start=0, end=0, type=F_WRLCK, lk_pid=1, lk_flags=0
    )
    _, got2, ev2 = submit(
        gb, f.Setlkw, eb.nodeid, fh=fb2, owner=3, start=0, end=0, type=F_WRLCK, lk_pid=1, lk_flags=0
    )
    assert ev2.is_set() and f.decode_reply(got2[0] or b"").error == errno.ENOLCK
    assert not ev.is_set()
    # a RELEASE of the waiting handle ends the wait
    gb.release(eb.nodeid, fb)
    assert ev.wait(5) and f.decode_reply(got[0] or b"").error == errno.EBADF
    # DESTROY answers every wait
    _, got3, ev3 = submit(
        gb, f.Setlkw, eb.nodeid, fh=fb2, owner=3, start=0, end=0, type=F_WRLCK, lk_pid=1, lk_flags=0
    )
    assert not ev3.is_set()
    gb.call(f.Destroy, 0)
    assert ev3.wait(5) and f.decode_reply(got3[0] or b"").error == errno.EINTR


def test_concurrent_requests_keep_the_tables_whole(root: Path) -> None:
    # several queue threads at once: lookups, forgets, opens and releases of
    # the same files race; afterwards exactly the root is left, and every
    # host fd is back
    s, g, _ = make_session(root)
    g.init()
    base = open_fds()
    errors: list[BaseException] = []
    unique = iter(range(10_000, 10**9, 2))
    lock = threading.Lock()

    def call(cls: type[f.Request], nodeid: int, **kw: Any) -> bytes:
        with lock:
            u = next(unique)
        out = s.handle(f.encode_request(cls(u, nodeid, 0, 0, 1, **kw)))  # type: ignore[call-arg]
        r = f.decode_reply(out or b"")
        assert r.unique == u and r.error == 0, os.strerror(r.error)
        return r.body

    def worker() -> None:
        try:
            for _ in range(150):
                e = f.parse_entry_out(call(f.Lookup, 1, name="hello.txt"))
                d = f.parse_entry_out(call(f.Lookup, 1, name="sub"))
                i = f.parse_entry_out(call(f.Lookup, d.nodeid, name="inner"))
                fh = f.parse_open_out(call(f.Open, i.nodeid, flags=O_RDONLY, open_flags=0))[0]
                assert call(f.Read, i.nodeid, fh=fh, offset=0, size=100, read_flags=0,
                            lock_owner=0, flags=0) == b"x" * 10  # fmt: skip
                call(f.Getattr, e.nodeid, getattr_flags=0, fh=0)
                call(f.Release, i.nodeid, fh=fh, flags=0, release_flags=0, lock_owner=0)
                for nid in (e.nodeid, i.nodeid, d.nodeid):
                    assert s.handle(f.encode_request(f.Forget(0, nid, 0, 0, 0, 1))) is None
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[0]
    assert list(s._inodes) == [1] and not s._opens
    assert open_fds() == base


def test_create_into_full_tables_leaks_nothing(root: Path) -> None:
    s, g, _ = make_session(root, max_inodes=1, max_handles=1)
    g.init()
    base = open_fds()
    assert (
        g.errno_of(
            f.Create, 1, flags=O_RDWR | O_CREAT, mode=0o100644, umask=0, open_flags=0, name="a"
        )
        == errno.ENFILE
    )
    assert open_fds() == base and list(s._inodes) == [1]
    s.max_inodes = 2
    e = g.lookup(1, "hello.txt")
    g.open(e.nodeid, O_RDONLY)  # the one handle allowed
    g.forget(e.nodeid)  # (still pinned by its handle)
    s.max_inodes = 3
    assert (
        g.errno_of(
            f.Create, 1, flags=O_RDWR | O_CREAT, mode=0o100644, umask=0, open_flags=0, name="b"
        )
        == errno.EMFILE
    )
    assert sorted(s._inodes) == [1, e.nodeid]  # the new file's lookup was undone
    g.call(f.Destroy, 0)
    assert open_fds() == base


def test_device_numbers_both_ways_and_never_a_host_device(root: Path) -> None:
    # devices are granted on mapped exports (a placeholder file keeps the
    # type and number); the 32-bit dev_t encoding (Linux's new_encode_dev)
    # survives both ways
    exp = Export("share", str(root), idmap=mapped())
    _s, g, _ = make_session(root, rights=Rights(devices=True), export=exp)
    g.init()
    rdev = (0x105 << 8) | 0x03 | (0x12300 << 12)  # major 0x105, minor 0x12303
    e = f.parse_entry_out(
        g.call(f.Mknod, 1, mode=stat.S_IFBLK | 0o600, rdev=rdev, umask=0, name="blk")
    )
    assert stat.S_ISREG(os.lstat(root / "blk").st_mode)  # a plain file on the host
    assert e.attr.rdev == rdev and stat.S_ISBLK(e.attr.mode)
    # a real device node is never made on a passthrough export, granted or not
    exp2 = Export("raw", str(root))
    _s2, g2, _ = make_session(root, rights=Rights(devices=True), export=exp2)
    g2.init()
    with pytest.raises(PermissionError):
        g2.call(f.Mknod, 1, mode=stat.S_IFBLK | 0o600, rdev=rdev, umask=0, name="blk2")
    assert not (root / "blk2").exists()


def test_init_again_after_a_guest_reset_starts_afresh(root: Path) -> None:
    """A guest rebooted inside a running VMM mounts again on the same
    connection: its second INIT is accepted (it was EPROTO, so the share
    never came back), and the old mount's inodes and handles are released."""
    (root / "f").write_text("data")
    _s, g, _ = make_session(root)
    base = open_fds()
    g.init()
    e = g.lookup(1, "f")
    f.parse_open_out(g.call(f.Open, e.nodeid, flags=os.O_RDONLY, open_flags=0))
    assert open_fds() > base
    g.init()  # the rebooted guest
    assert open_fds() == base  # the old lookup and open handle are gone
    with pytest.raises(OSError):
        g.getattr(e.nodeid)
    e2 = g.lookup(1, "f")
    fh2, _ = f.parse_open_out(g.call(f.Open, e2.nodeid, flags=os.O_RDONLY, open_flags=0))
    read = f.Read
    assert g.call(read, e2.nodeid, fh=fh2, offset=0, size=10, read_flags=0, lock_owner=0,
                  flags=0) == b"data"  # fmt: skip
