"""MemoryBackend: every Backend method, POSIX edge cases, and a differential
test against the host kernel for the namespace operations."""

from __future__ import annotations

import errno
import itertools
import os
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p9share.backend.base import NOW, Backend, LockRequest, Node, OpenFile, SetAttr
from p9share.backend.memfs import MemoryBackend
from p9share.protocol.constants import (
    DT_BLK,
    DT_CHR,
    DT_DIR,
    DT_FIFO,
    DT_LNK,
    DT_REG,
    DT_SOCK,
    LOCK_BLOCKED,
    LOCK_SUCCESS,
    LOCK_TYPE_RDLCK,
    LOCK_TYPE_UNLCK,
    LOCK_TYPE_WRLCK,
    XATTR_CREATE,
    XATTR_REPLACE,
    QidType,
)

RW = os.O_RDWR
RO = os.O_RDONLY
WO = os.O_WRONLY
NEW = os.O_CREAT | os.O_EXCL | os.O_RDWR


# ------------------------------------------------------------------ helpers --
class Clock:
    """A clock that advances 1 µs per reading, so every change is visible."""

    def __init__(self) -> None:
        self.t = time.time_ns()

    def __call__(self) -> int:
        self.t += 1000
        return self.t


def make(**kw: Any) -> MemoryBackend:
    b = MemoryBackend(**kw)
    b._clock = Clock()
    return b


@pytest.fixture
def fs() -> MemoryBackend:
    return make()


def err(code: int, fn: Callable[..., object], *args: Any, **kw: Any) -> None:
    with pytest.raises(OSError) as info:
        fn(*args, **kw)
    assert info.value.errno == code, f"expected {errno.errorcode[code]}, got {info.value!r}"


def lookup(fs: Backend, path: str) -> Node:
    node = fs.root()
    for part in [p for p in path.split("/") if p]:
        try:
            nxt = fs.walk(node, part)
        finally:
            fs.release(node)
        node = nxt
    return node


def parent_and_name(fs: Backend, path: str) -> tuple[Node, str]:
    head, _, name = path.rstrip("/").rpartition("/")
    d = lookup(fs, head)
    if not d.qid.type & QidType.DIR:  # as path resolution (and the server) would
        fs.release(d)
        raise NotADirectoryError(errno.ENOTDIR, head)
    return d, name


def mkfile(fs: Backend, path: str, data: bytes = b"", mode: int = 0o644) -> None:
    d, name = parent_and_name(fs, path)
    node, f = fs.create(d, name, NEW, mode, None)
    if data:
        assert fs.write(f, 0, data) == len(data)
    fs.close(f)
    fs.release(node)
    fs.release(d)


def mkdir(fs: Backend, path: str, mode: int = 0o755) -> None:
    d, name = parent_and_name(fs, path)
    fs.mkdir(d, name, mode, None)
    fs.release(d)


def cat(fs: Backend, path: str) -> bytes:
    node = lookup(fs, path)
    f = fs.open(node, RO)
    out = fs.read(f, 0, 1 << 20)
    fs.close(f)
    fs.release(node)
    return out


def attr(fs: Backend, path: str) -> Any:
    node = lookup(fs, path)
    a = fs.getattr(node)
    fs.release(node)
    return a


def listdir(fs: Backend, path: str = "", cookie: int = 0) -> list[str]:
    node = lookup(fs, path)
    f = fs.open(node, RO | os.O_DIRECTORY)
    names = [e.name for e in fs.readdir(f, cookie)]
    fs.close(f)
    fs.release(node)
    return names


def opened(fs: Backend, path: str, flags: int) -> tuple[Node, OpenFile]:
    node = lookup(fs, path)
    return node, fs.open(node, flags)


def lk(type_: int, start: int = 0, length: int = 0, pid: int = 1) -> LockRequest:
    return LockRequest(type_, start, length, pid, "client")


# ------------------------------------------------------------------- basics --
def test_is_a_complete_backend() -> None:
    assert isinstance(MemoryBackend(), Backend)
    assert not MemoryBackend.__abstractmethods__


def test_root(fs: MemoryBackend) -> None:
    r = fs.root()
    assert r.qid.type == QidType.DIR
    a = fs.getattr(r)
    assert stat.S_ISDIR(a.mode) and a.mode & 0o7777 == 0o755
    assert (a.uid, a.gid, a.nlink) == (0, 0, 2)
    assert fs.root().qid.path == r.qid.path


def test_walk(fs: MemoryBackend) -> None:
    mkdir(fs, "d")
    mkfile(fs, "d/f", b"x")
    r = fs.root()
    d = fs.walk(r, "d")
    f = fs.walk(d, "f")
    assert d.qid.type == QidType.DIR and f.qid.type == QidType.FILE
    assert fs.walk(d, ".").qid == d.qid
    assert fs.walk(d, "..").qid == r.qid
    err(errno.ENOENT, fs.walk, d, "missing")
    err(errno.ENOTDIR, fs.walk, f, "x")
    err(errno.ENAMETOOLONG, fs.walk, d, "n" * 256)


def test_dotdot_at_root_stays_at_root(fs: MemoryBackend) -> None:
    r = fs.root()
    up = fs.walk(r, "..")
    assert up.qid == r.qid
    assert fs.walk(fs.walk(up, ".."), "..").qid == r.qid
    mkdir(fs, "a")
    a = fs.walk(up, "a")
    assert fs.walk(fs.walk(fs.walk(a, ".."), ".."), "..").qid == r.qid


def test_clone_and_release(fs: MemoryBackend) -> None:
    mkfile(fs, "f", b"abc")
    n = lookup(fs, "f")
    c = fs.clone(n)
    assert c.qid == n.qid and c is not n
    fs.release(n)
    err(errno.EBADF, fs.getattr, n)
    err(errno.EBADF, fs.clone, n)
    fs.release(n)  # twice is harmless
    assert fs.getattr(c).size == 3
    fs.release(c)


def test_foreign_node_is_ebadf(fs: MemoryBackend) -> None:
    other = make()
    mkfile(other, "f")
    err(errno.EBADF, fs.getattr, other.root())
    err(errno.EBADF, fs.walk, other.root(), "f")
    _, of = opened(other, "f", RW)
    err(errno.EBADF, fs.read, of, 0, 1)
    fs.close(of)  # not ours: ignored
    assert other.read(of, 0, 1) == b""
    err(errno.EXDEV, fs.link, fs.root(), lookup(other, "f"), "g")
    err(errno.EXDEV, fs.rename, fs.root(), "x", other.root(), "y")
    mkfile(fs, "mine")
    err(errno.EXDEV, fs.rename_node, lookup(fs, "mine"), other.root(), "y")


# --------------------------------------------------------------- attributes --
def test_getattr_kinds(fs: MemoryBackend) -> None:
    mkfile(fs, "f", b"x" * 5000)
    mkdir(fs, "d")
    r = fs.root()
    fs.symlink(r, "l", "some/target", None)
    a = attr(fs, "f")
    assert stat.S_ISREG(a.mode) and a.size == 5000
    assert a.blksize == 4096 and a.blocks == 16 and a.nlink == 1
    assert a.btime_ns and a.qid.type == QidType.FILE
    a = attr(fs, "l")
    assert stat.S_ISLNK(a.mode) and a.size == len("some/target")
    assert a.qid.type == QidType.SYMLINK and a.mode & 0o777 == 0o777
    a = attr(fs, "d")
    assert stat.S_ISDIR(a.mode) and a.nlink == 2 and a.size > 0
    assert attr(fs, "").nlink == 3


def test_qid_version_follows_data(fs: MemoryBackend) -> None:
    mkfile(fs, "f")
    n, f = opened(fs, "f", RW)
    v0 = n.qid.version
    fs.write(f, 0, b"x")
    assert n.qid.version != v0
    assert fs.getattr(n).data_version == n.qid.version


def test_setattr_chmod_touches_ctime_only(fs: MemoryBackend) -> None:
    mkfile(fs, "f")
    n = lookup(fs, "f")
    a0 = fs.getattr(n)
    fs.setattr(n, SetAttr(mode=0o4711))
    a = fs.getattr(n)
    assert a.mode == stat.S_IFREG | 0o4711
    assert a.ctime_ns > a0.ctime_ns and a.mtime_ns == a0.mtime_ns
    fs.setattr(n, SetAttr(mode=stat.S_IFDIR | 0o600))  # type bits cannot change
    assert fs.getattr(n).mode == stat.S_IFREG | 0o600


def test_setattr_chown_drops_setid(fs: MemoryBackend) -> None:
    mkfile(fs, "f")
    mkdir(fs, "d")
    n, d = lookup(fs, "f"), lookup(fs, "d")
    fs.setattr(n, SetAttr(mode=0o6755))
    fs.setattr(n, SetAttr(uid=1000, gid=100))
    a = fs.getattr(n)
    assert (a.uid, a.gid, a.mode & 0o7777) == (1000, 100, 0o755)
    fs.setattr(n, SetAttr(mode=0o2745))  # setgid without group exec: mandatory locking mark
    fs.setattr(n, SetAttr(uid=5))
    assert fs.getattr(n).mode & 0o7777 == 0o2745
    fs.setattr(d, SetAttr(mode=0o3755))
    fs.setattr(d, SetAttr(uid=7))
    assert fs.getattr(d).mode & 0o7777 == 0o3755  # directories keep them
    fs.setattr(n, SetAttr(mode=0o4755, uid=9))  # explicit mode wins
    assert fs.getattr(n).mode & 0o7777 == 0o4755


def test_setattr_truncate(fs: MemoryBackend) -> None:
    mkfile(fs, "f", b"hello world")
    n = lookup(fs, "f")
    a0 = fs.getattr(n)
    fs.setattr(n, SetAttr(size=5))
    a1 = fs.getattr(n)
    assert a1.size == 5 and a1.mtime_ns > a0.mtime_ns and a1.ctime_ns > a0.ctime_ns
    fs.setattr(n, SetAttr(size=8))
    assert cat(fs, "f") == b"hello\0\0\0"
    a2 = fs.getattr(n)
    fs.setattr(n, SetAttr(size=8))  # same size: data and mtime untouched
    a3 = fs.getattr(n)
    assert a3.mtime_ns == a2.mtime_ns and a3.data_version == a2.data_version
    fs.setattr(n, SetAttr(size=0))
    assert cat(fs, "f") == b"" and fs.getattr(n).blocks == 0


def test_setattr_truncate_errors(fs: MemoryBackend) -> None:
    mkdir(fs, "d")
    r = fs.root()
    fs.symlink(r, "l", "x", None)
    fs.mknod(r, "p", stat.S_IFIFO | 0o644, 0, None)
    mkfile(fs, "f")
    err(errno.EISDIR, fs.setattr, lookup(fs, "d"), SetAttr(size=0))
    err(errno.EINVAL, fs.setattr, lookup(fs, "l"), SetAttr(size=0))
    err(errno.EINVAL, fs.setattr, lookup(fs, "p"), SetAttr(size=0))
    err(errno.EINVAL, fs.setattr, lookup(fs, "f"), SetAttr(size=-1))
    err(errno.EFBIG, fs.setattr, lookup(fs, "f"), SetAttr(size=1 << 63))
    err(errno.EOPNOTSUPP, fs.setattr, lookup(fs, "l"), SetAttr(mode=0o600))


def test_setattr_is_all_or_nothing(fs: MemoryBackend) -> None:
    mkdir(fs, "d")
    d = lookup(fs, "d")
    err(errno.EISDIR, fs.setattr, d, SetAttr(mode=0o700, size=0))
    assert fs.getattr(d).mode & 0o777 == 0o755


def test_setattr_times(fs: MemoryBackend) -> None:
    mkfile(fs, "f")
    n = lookup(fs, "f")
    fs.setattr(n, SetAttr(atime=1_000_000_123, mtime=2_000_000_456))
    a = fs.getattr(n)
    assert (a.atime_ns, a.mtime_ns) == (1_000_000_123, 2_000_000_456)
    assert a.ctime_ns > a.mtime_ns  # utimes sets ctime to now
    fs.setattr(n, SetAttr(mtime=NOW))
    b = fs.getattr(n)
    assert b.mtime_ns == b.ctime_ns > a.ctime_ns and b.atime_ns == a.atime_ns
    fs.setattr(n, SetAttr(ctime=True))
    c = fs.getattr(n)
    assert c.ctime_ns > b.ctime_ns and c.mtime_ns == b.mtime_ns


def test_setattr_ftruncate_on_unlinked_open_file(fs: MemoryBackend) -> None:
    mkfile(fs, "f", b"0123456789")
    n, f = opened(fs, "f", RW)
    r = fs.root()
    fs.unlink(r, "f", False)
    fs.setattr(n, SetAttr(size=4), f)
    assert fs.read(f, 0, 100) == b"0123"
    fs.close(f)
    err(errno.EBADF, fs.setattr, n, SetAttr(size=1), f)


def test_statfs_is_consistent(fs: MemoryBackend) -> None:
    r = fs.root()
    s0 = fs.statfs(r)
    assert s0.bsize == 4096 and s0.namelen == 255
    assert s0.bfree == s0.bavail == s0.blocks
    assert s0.files > s0.ffree
    mkfile(fs, "f", b"x" * 10000)  # 3 blocks
    s1 = fs.statfs(r)
    assert s1.blocks == s0.blocks and s1.bfree == s0.bfree - 3
    assert s1.ffree == s0.ffree - 1 and s1.fsid == s0.fsid
    fs.unlink(r, "f", False)
    s2 = fs.statfs(r)
    assert (s2.bfree, s2.ffree) == (s0.bfree, s0.ffree)
    other = make()
    assert other.statfs(other.root()).fsid != s0.fsid


def test_statfs_capacity_and_enospc() -> None:
    fs = make(capacity=4 * 4096, max_inodes=4)
    r = fs.root()
    assert fs.statfs(r).blocks == 4
    node, f = fs.create(r, "f", NEW, 0o644, None)
    # a write that does not fit entirely is short, then ENOSPC
    assert fs.write(f, 0, b"x" * 20000) == 4 * 4096
    assert fs.statfs(r).bfree == 0
    err(errno.ENOSPC, fs.write, f, 4 * 4096, b"y")
    fs.write(f, 0, b"z" * 100)  # overwriting in place needs no room
    err(errno.ENOSPC, fs.setattr, node, SetAttr(size=5 * 4096))
    fs.setattr(node, SetAttr(size=4096))
    assert fs.statfs(r).bfree == 3
    fs.mkdir(r, "d1", 0o755, None)
    fs.mknod(r, "p", stat.S_IFIFO | 0o600, 0, None)
    err(errno.ENOSPC, fs.mkdir, r, "d2", 0o755, None)
    err(errno.ENOSPC, fs.create, r, "g", NEW, 0o644, None)
    fs.link(r, node, "hard")  # a link needs no inode
    assert fs.statfs(r).ffree == 0


def test_readlink(fs: MemoryBackend) -> None:
    r = fs.root()
    q = fs.symlink(r, "l", "../über/ziel", (5, 6))
    assert q.type == QidType.SYMLINK
    n = lookup(fs, "l")
    assert fs.readlink(n) == "../über/ziel"
    a = fs.getattr(n)
    assert (a.uid, a.gid) == (5, 6) and a.size == len("../über/ziel".encode())
    mkfile(fs, "f")
    err(errno.EINVAL, fs.readlink, lookup(fs, "f"))
    err(errno.EINVAL, fs.readlink, r)


# ---------------------------------------------------------------- open/create --
def test_open_checks(fs: MemoryBackend) -> None:
    mkfile(fs, "f")
    mkdir(fs, "d")
    r = fs.root()
    fs.symlink(r, "l", "f", None)
    fs.mknod(r, "p", stat.S_IFIFO | 0o644, 0, None)
    fs.mknod(r, "s", stat.S_IFSOCK | 0o644, 0, None)
    err(errno.ENOTDIR, fs.open, lookup(fs, "f"), RO | os.O_DIRECTORY)
    err(errno.EISDIR, fs.open, lookup(fs, "d"), WO)
    err(errno.EISDIR, fs.open, lookup(fs, "d"), RW)
    err(errno.EISDIR, fs.open, lookup(fs, "d"), RO | os.O_TRUNC)
    err(errno.ELOOP, fs.open, lookup(fs, "l"), RO)
    err(errno.ENOTDIR, fs.open, lookup(fs, "l"), RO | os.O_DIRECTORY)
    err(errno.ENXIO, fs.open, lookup(fs, "p"), RO)
    err(errno.ENXIO, fs.open, lookup(fs, "s"), RW)
    fs.close(fs.open(lookup(fs, "d"), RO | os.O_DIRECTORY))


def test_open_trunc(fs: MemoryBackend) -> None:
    mkfile(fs, "f", b"data")
    a0 = attr(fs, "f")
    n, f = opened(fs, "f", WO | os.O_TRUNC)
    a = fs.getattr(n)
    assert a.size == 0 and a.mtime_ns > a0.mtime_ns and a.ctime_ns > a0.ctime_ns
    _, g = opened(fs, "f", WO | os.O_TRUNC)  # even when already empty
    assert attr(fs, "f").mtime_ns > a.mtime_ns
    fs.close(f)
    fs.close(g)


def test_access_modes(fs: MemoryBackend) -> None:
    mkfile(fs, "f", b"abc")
    _, r = opened(fs, "f", RO)
    _, w = opened(fs, "f", WO)
    assert fs.read(r, 0, 10) == b"abc"
    err(errno.EBADF, fs.write, r, 0, b"x")
    err(errno.EBADF, fs.read, w, 0, 10)
    assert fs.write(w, 1, b"X") == 1
    assert fs.read(r, 0, 10) == b"aXc"


def test_create(fs: MemoryBackend) -> None:
    r = fs.root()
    d0 = fs.getattr(r)
    node, f = fs.create(r, "f", NEW, 0o640, (1000, 1000))
    a = fs.getattr(node)
    assert a.mode == stat.S_IFREG | 0o640 and (a.uid, a.gid) == (1000, 1000)
    assert a.nlink == 1 and a.size == 0
    d1 = fs.getattr(r)
    assert d1.mtime_ns > d0.mtime_ns and d1.ctime_ns > d0.ctime_ns
    assert d1.mtime_ns == a.mtime_ns == a.ctime_ns == a.atime_ns == a.btime_ns
    assert fs.write(f, 0, b"abc") == 3
    assert fs.read(f, 0, 10) == b"abc"
    fs.close(f)
    node2, f2 = fs.create(r, "g", os.O_CREAT | RO, 0o7777 | stat.S_IFDIR, None)
    a2 = fs.getattr(node2)
    assert a2.mode == stat.S_IFREG | 0o7777 and (a2.uid, a2.gid) == (0, 0)
    err(errno.EBADF, fs.write, f2, 0, b"x")  # created, but opened read-only


def test_create_existing(fs: MemoryBackend) -> None:
    mkfile(fs, "f", b"old")
    mkdir(fs, "d")
    r = fs.root()
    fs.symlink(r, "l", "f", None)
    err(errno.EEXIST, fs.create, r, "f", NEW, 0o644, None)
    err(errno.EEXIST, fs.create, r, "d", NEW, 0o644, None)
    err(errno.EEXIST, fs.create, r, "l", NEW, 0o644, None)
    err(errno.EISDIR, fs.create, r, "d", os.O_CREAT | RW, 0o644, None)
    err(errno.ELOOP, fs.create, r, "l", os.O_CREAT | RW, 0o644, None)
    node, f = fs.create(r, "f", os.O_CREAT | RW, 0o600, (7, 7))
    assert fs.read(f, 0, 10) == b"old"  # opened, not replaced
    a = fs.getattr(node)
    assert a.mode & 0o777 == 0o644 and a.uid == 0
    _, g = fs.create(r, "f", os.O_CREAT | os.O_TRUNC | RW, 0o600, None)
    assert fs.read(g, 0, 10) == b""


def test_create_errors(fs: MemoryBackend) -> None:
    mkfile(fs, "f")
    mkdir(fs, "d")
    err(errno.ENOTDIR, fs.create, lookup(fs, "f"), "x", NEW, 0o644, None)
    err(errno.ENAMETOOLONG, fs.create, fs.root(), "x" * 256, NEW, 0o644, None)
    fs.create(fs.root(), "x" * 255, NEW, 0o644, None)
    d = lookup(fs, "d")
    fs.unlink(fs.root(), "d", True)
    err(errno.ENOENT, fs.create, d, "x", NEW, 0o644, None)
    err(errno.ENOENT, fs.mkdir, d, "x", 0o755, None)
    err(errno.ENOENT, fs.walk, d, "x")
    err(errno.ENOENT, fs.walk, d, "..")


def test_setgid_directory_inheritance(fs: MemoryBackend) -> None:
    r = fs.root()
    fs.mkdir(r, "g", 0o2775, (0, 50))
    g = lookup(fs, "g")
    fs.mkdir(g, "sub", 0o755, None)
    a = attr(fs, "g/sub")
    assert a.gid == 50 and a.mode & stat.S_ISGID
    node, _ = fs.create(g, "f", NEW, 0o644, None)
    assert fs.getattr(node).gid == 50
    assert not fs.getattr(node).mode & stat.S_ISGID
    fs.mkdir(g, "own", 0o755, (10, 20))  # the server's explicit owner wins
    assert attr(fs, "g/own").gid == 20


# ----------------------------------------------------------------- read/write --
def test_read_write(fs: MemoryBackend) -> None:
    mkfile(fs, "f")
    n, f = opened(fs, "f", RW)
    assert fs.write(f, 0, b"hello") == 5
    assert fs.write(f, 10, memoryview(b"world")) == 5
    assert fs.read(f, 0, 100) == b"hello\0\0\0\0\0world"
    assert fs.read(f, 3, 4) == b"lo\0\0"
    assert fs.read(f, 15, 10) == b""
    assert fs.read(f, 1000, 10) == b""
    assert fs.read(f, 0, 0) == b""
    assert fs.getattr(n).size == 15
    err(errno.EINVAL, fs.read, f, -1, 1)
    err(errno.EINVAL, fs.write, f, -1, b"x")
    err(errno.EFBIG, fs.write, f, 1 << 63, b"x")


def test_write_times(fs: MemoryBackend) -> None:
    mkfile(fs, "f")
    n, f = opened(fs, "f", RW)
    a0 = fs.getattr(n)
    fs.write(f, 0, b"x")
    a1 = fs.getattr(n)
    assert a1.mtime_ns > a0.mtime_ns and a1.ctime_ns == a1.mtime_ns
    assert a1.atime_ns == a0.atime_ns
    assert fs.write(f, 0, b"") == 0  # an empty write changes nothing
    assert fs.getattr(n).mtime_ns == a1.mtime_ns
    fs.read(f, 0, 1)
    a2 = fs.getattr(n)
    assert a2.atime_ns > a1.atime_ns and a2.mtime_ns == a1.mtime_ns
    assert a2.ctime_ns == a1.ctime_ns
    _, g = opened(fs, "f", RO | os.O_NOATIME)
    fs.read(g, 0, 1)
    assert fs.getattr(n).atime_ns == a2.atime_ns


def test_append(fs: MemoryBackend) -> None:
    mkfile(fs, "f", b"abc")
    _, f = opened(fs, "f", WO | os.O_APPEND)
    assert fs.write(f, 0, b"def") == 3
    assert fs.write(f, 1, b"g") == 1
    assert cat(fs, "f") == b"abcdefg"


def test_read_directory_is_eisdir(fs: MemoryBackend) -> None:
    _, f = opened(fs, "", RO)
    err(errno.EISDIR, fs.read, f, 0, 10)


def test_open_unlinked_file_keeps_working(fs: MemoryBackend) -> None:
    r = fs.root()
    mkfile(fs, "f", b"x" * 8192)
    free0 = fs.statfs(r).bfree
    n, f = opened(fs, "f", RW)
    fs.unlink(r, "f", False)
    assert "f" not in listdir(fs)
    err(errno.ENOENT, fs.walk, r, "f")
    assert fs.getattr(n).nlink == 0
    assert fs.write(f, 8192, b"more") == 4
    assert fs.read(f, 8190, 10) == b"xxmore"
    assert fs.statfs(r).bfree == free0 - 1  # still allocated (and grew)
    fs.close(f)
    assert fs.statfs(r).bfree == free0 - 1  # the node still holds it
    assert fs.getattr(n).size == 8196
    fs.release(n)
    assert fs.statfs(r).bfree == free0 + 2
    err(errno.EBADF, fs.read, f, 0, 1)


def test_link_of_unlinked_file_is_enoent(fs: MemoryBackend) -> None:
    r = fs.root()
    mkfile(fs, "f")
    n = lookup(fs, "f")
    fs.unlink(r, "f", False)
    err(errno.ENOENT, fs.link, r, n, "back")


def test_fsync_and_close(fs: MemoryBackend) -> None:
    mkfile(fs, "f")
    _, f = opened(fs, "f", RW)
    fs.fsync(f, False)
    fs.fsync(f, True)
    fs.close(f)
    fs.close(f)  # idempotent
    err(errno.EBADF, fs.fsync, f, False)
    err(errno.EBADF, fs.write, f, 0, b"x")
    err(errno.EBADF, fs.readdir, f, 0)


# -------------------------------------------------------------------- readdir --
def entries(fs: Backend, f: OpenFile, cookie: int = 0) -> list[tuple[str, int, int]]:
    return [(e.name, e.cookie, e.dtype) for e in fs.readdir(f, cookie)]


def test_readdir_dots_types_and_qids(fs: MemoryBackend) -> None:
    r = fs.root()
    mkdir(fs, "d")
    d = lookup(fs, "d")
    mkfile(fs, "d/f")
    fs.mkdir(d, "sub", 0o755, None)
    fs.symlink(d, "l", "f", None)
    fs.mknod(d, "p", stat.S_IFIFO | 0o644, 0, None)
    fs.mknod(d, "s", stat.S_IFSOCK | 0o644, 0, None)
    fs.mknod(d, "c", stat.S_IFCHR | 0o644, os.makedev(1, 3), None)
    fs.mknod(d, "b", stat.S_IFBLK | 0o644, os.makedev(8, 0), None)
    f = fs.open(d, RO | os.O_DIRECTORY)
    es = list(fs.readdir(f, 0))
    got = {e.name: e.dtype for e in es}
    assert got == {
        ".": DT_DIR,
        "..": DT_DIR,
        "f": DT_REG,
        "sub": DT_DIR,
        "l": DT_LNK,
        "p": DT_FIFO,
        "s": DT_SOCK,
        "c": DT_CHR,
        "b": DT_BLK,
    }
    assert [e.name for e in es][:2] == [".", ".."]
    byname = {e.name: e for e in es}
    assert byname["."].qid == d.qid and byname[".."].qid == r.qid
    assert byname["f"].qid == lookup(fs, "d/f").qid
    cookies = [e.cookie for e in es]
    assert cookies == sorted(set(cookies)) and 0 not in cookies


def test_readdir_root_dotdot_is_root(fs: MemoryBackend) -> None:
    r = fs.root()
    f = fs.open(r, RO)
    es = list(fs.readdir(f, 0))
    assert [(e.name, e.qid) for e in es] == [(".", r.qid), ("..", r.qid)]


def test_readdir_resume(fs: MemoryBackend) -> None:
    for i in range(200):
        mkfile(fs, f"f{i:03}")
    _, f = opened(fs, "", RO)
    full = entries(fs, f)
    assert len(full) == 202
    for k in (0, 1, 2, 3, 70, 150, 201):
        assert entries(fs, f, full[k][1]) == full[k + 1 :]
    # resume in steps, the way the server does: stop anywhere, continue by cookie
    got: list[str] = []
    cookie = 0
    while True:
        it = fs.readdir(f, cookie)
        chunk = list(itertools.islice(it, 7))
        if not chunk:
            break
        got += [e.name for e in chunk]
        cookie = chunk[-1].cookie
    assert got == [e[0] for e in full]
    assert entries(fs, f, 1 << 62) == []


def test_readdir_resume_across_changes(fs: MemoryBackend) -> None:
    r = fs.root()
    for n in "abcdef":
        mkfile(fs, n)
    _, f = opened(fs, "", RO)
    first = entries(fs, f)[:5]  # . .. a b c
    cookie = first[-1][1]
    fs.unlink(r, "c", False)  # the entry the cookie points at
    fs.unlink(r, "a", False)
    fs.unlink(r, "e", False)
    mkfile(fs, "g")
    rest = [e[0] for e in entries(fs, f, cookie)]
    assert rest == ["d", "f", "g"]  # nothing repeated, nothing live skipped
    for i in range(300):  # enough churn to compact the order list
        mkfile(fs, f"t{i}")
        fs.unlink(r, f"t{i}", False)
    assert [e[0] for e in entries(fs, f, cookie)] == ["d", "f", "g"]


def test_readdir_updates_atime_and_checks(fs: MemoryBackend) -> None:
    mkdir(fs, "d")
    mkfile(fs, "f")
    d = lookup(fs, "d")
    a0 = fs.getattr(d)
    f = fs.open(d, RO)
    list(fs.readdir(f, 0))
    assert fs.getattr(d).atime_ns > a0.atime_ns
    _, g = opened(fs, "f", RO)
    err(errno.ENOTDIR, fs.readdir, g, 0)
    fs.unlink(fs.root(), "d", True)
    err(errno.ENOENT, fs.readdir, f, 0)  # like getdents on a removed directory


def test_readdir_stops_when_closed(fs: MemoryBackend) -> None:
    for i in range(150):
        mkfile(fs, f"f{i}")
    _, f = opened(fs, "", RO)
    it = fs.readdir(f, 0)
    first = list(itertools.islice(it, 10))
    assert len(first) == 10
    fs.close(f)
    assert len(list(it)) < 140


# ---------------------------------------------------------------------- locks --
def test_locks_conflict_between_open_files(fs: MemoryBackend) -> None:
    mkfile(fs, "f")
    _, a = opened(fs, "f", RW)
    _, b = opened(fs, "f", RW)
    assert fs.lock(a, lk(LOCK_TYPE_WRLCK, 0, 10, pid=11)) == LOCK_SUCCESS
    assert fs.lock(a, lk(LOCK_TYPE_WRLCK, 5, 10, pid=11)) == LOCK_SUCCESS  # own: fine
    assert fs.lock(b, lk(LOCK_TYPE_RDLCK, 14, 1)) == LOCK_BLOCKED
    assert fs.lock(b, lk(LOCK_TYPE_WRLCK, 15, 5)) == LOCK_SUCCESS  # just past [0,14]
    g = fs.getlock(b, lk(LOCK_TYPE_RDLCK, 0, 0))
    assert (g.type, g.start, g.length, g.proc_id) == (LOCK_TYPE_WRLCK, 0, 15, 11)
    assert g.client_id == "client"
    free = fs.getlock(b, lk(LOCK_TYPE_WRLCK, 100, 5))
    assert free.type == LOCK_TYPE_UNLCK and (free.start, free.length) == (100, 5)
    assert fs.getlock(a, lk(LOCK_TYPE_WRLCK, 0, 10)).type == LOCK_TYPE_UNLCK  # own locks
    assert fs.lock(a, lk(LOCK_TYPE_UNLCK, 0, 0)) == LOCK_SUCCESS
    assert fs.lock(b, lk(LOCK_TYPE_WRLCK, 0, 0)) == LOCK_SUCCESS


def test_read_locks_share(fs: MemoryBackend) -> None:
    mkfile(fs, "f")
    _, a = opened(fs, "f", RW)
    _, b = opened(fs, "f", RO)
    assert fs.lock(a, lk(LOCK_TYPE_RDLCK)) == LOCK_SUCCESS
    assert fs.lock(b, lk(LOCK_TYPE_RDLCK, 100, 1)) == LOCK_SUCCESS
    assert fs.lock(a, lk(LOCK_TYPE_WRLCK, 0, 50)) == LOCK_SUCCESS  # upgrade part
    assert fs.lock(a, lk(LOCK_TYPE_WRLCK, 90, 20)) == LOCK_BLOCKED
    assert fs.getlock(b, lk(LOCK_TYPE_RDLCK, 0, 100)).type == LOCK_TYPE_WRLCK
    assert fs.getlock(b, lk(LOCK_TYPE_RDLCK, 50, 0)).type == LOCK_TYPE_UNLCK
    g = fs.getlock(b, lk(LOCK_TYPE_WRLCK, 50, 0))
    assert (g.type, g.start, g.length) == (LOCK_TYPE_RDLCK, 50, 0)  # the rest, to EOF


def test_unlock_splits_and_merge(fs: MemoryBackend) -> None:
    mkfile(fs, "f")
    _, a = opened(fs, "f", RW)
    _, b = opened(fs, "f", RW)
    fs.lock(a, lk(LOCK_TYPE_WRLCK, 0, 100))
    fs.lock(a, lk(LOCK_TYPE_UNLCK, 40, 20))  # leaves [0,39] and [60,99]
    assert fs.lock(b, lk(LOCK_TYPE_WRLCK, 40, 20)) == LOCK_SUCCESS
    assert fs.lock(b, lk(LOCK_TYPE_WRLCK, 39, 1)) == LOCK_BLOCKED
    assert fs.lock(b, lk(LOCK_TYPE_WRLCK, 60, 1)) == LOCK_BLOCKED
    g = fs.getlock(b, lk(LOCK_TYPE_WRLCK, 50, 100))
    assert (g.start, g.length) == (60, 40)
    fs.lock(b, lk(LOCK_TYPE_UNLCK, 0, 0))
    fs.lock(a, lk(LOCK_TYPE_WRLCK, 40, 20))  # adjacent on both sides: merges
    g = fs.getlock(b, lk(LOCK_TYPE_RDLCK, 0, 0))
    assert (g.start, g.length) == (0, 100)
    fs.lock(a, lk(LOCK_TYPE_RDLCK, 10, 10))  # downgrade the middle
    assert fs.lock(b, lk(LOCK_TYPE_RDLCK, 10, 10)) == LOCK_SUCCESS
    assert fs.lock(b, lk(LOCK_TYPE_RDLCK, 9, 2)) == LOCK_BLOCKED
    g = fs.getlock(b, lk(LOCK_TYPE_WRLCK, 15, 0))
    assert (g.type, g.start, g.length) == (LOCK_TYPE_RDLCK, 10, 10)


def test_adjacent_locks_of_other_types_stay_apart(fs: MemoryBackend) -> None:
    mkfile(fs, "f")
    _, a = opened(fs, "f", RW)
    _, b = opened(fs, "f", RW)
    fs.lock(a, lk(LOCK_TYPE_RDLCK, 0, 10))
    fs.lock(a, lk(LOCK_TYPE_WRLCK, 10, 10))
    fs.lock(a, lk(LOCK_TYPE_RDLCK, 20, 10))
    g = fs.getlock(b, lk(LOCK_TYPE_WRLCK, 0, 0))
    assert (g.type, g.start, g.length) == (LOCK_TYPE_RDLCK, 0, 10)
    g = fs.getlock(b, lk(LOCK_TYPE_RDLCK, 0, 0))
    assert (g.type, g.start, g.length) == (LOCK_TYPE_WRLCK, 10, 10)
    fs.lock(a, lk(LOCK_TYPE_RDLCK, 10, 10))  # now all three merge into one
    g = fs.getlock(b, lk(LOCK_TYPE_WRLCK, 0, 0))
    assert (g.type, g.start, g.length) == (LOCK_TYPE_RDLCK, 0, 30)


def test_close_drops_locks(fs: MemoryBackend) -> None:
    mkfile(fs, "f")
    _, a = opened(fs, "f", RW)
    _, b = opened(fs, "f", RW)
    fs.lock(a, lk(LOCK_TYPE_WRLCK))
    assert fs.lock(b, lk(LOCK_TYPE_WRLCK)) == LOCK_BLOCKED
    fs.close(a)
    assert fs.lock(b, lk(LOCK_TYPE_WRLCK)) == LOCK_SUCCESS


def test_locks_on_unlinked_file(fs: MemoryBackend) -> None:
    mkfile(fs, "f")
    _, a = opened(fs, "f", RW)
    _, b = opened(fs, "f", RW)
    fs.lock(a, lk(LOCK_TYPE_WRLCK))
    fs.unlink(fs.root(), "f", False)
    assert fs.lock(b, lk(LOCK_TYPE_RDLCK)) == LOCK_BLOCKED


def test_lock_errors(fs: MemoryBackend) -> None:
    mkfile(fs, "f")
    _, r = opened(fs, "f", RO)
    _, w = opened(fs, "f", WO)
    err(errno.EBADF, fs.lock, r, lk(LOCK_TYPE_WRLCK))
    err(errno.EBADF, fs.lock, w, lk(LOCK_TYPE_RDLCK))
    assert fs.lock(r, lk(LOCK_TYPE_UNLCK)) == LOCK_SUCCESS
    err(errno.EINVAL, fs.lock, r, lk(7))
    err(errno.EINVAL, fs.getlock, r, lk(LOCK_TYPE_UNLCK))
    err(errno.EINVAL, fs.lock, r, lk(LOCK_TYPE_RDLCK, 1 << 63, 1))
    err(errno.EOVERFLOW, fs.lock, r, lk(LOCK_TYPE_RDLCK, (1 << 63) - 10, 20))
    assert fs.lock(r, lk(LOCK_TYPE_RDLCK, (1 << 63) - 10, 10)) == LOCK_SUCCESS
    g = fs.getlock(w, lk(LOCK_TYPE_WRLCK, 0, 0))
    assert (g.start, g.length) == ((1 << 63) - 10, 0)  # reaches OFFSET_MAX: "to EOF"
    fs.close(r)
    err(errno.EBADF, fs.lock, r, lk(LOCK_TYPE_UNLCK))
    err(errno.EBADF, fs.getlock, r, lk(LOCK_TYPE_RDLCK))


def test_directory_read_lock(fs: MemoryBackend) -> None:
    _, a = opened(fs, "", RO)
    _, b = opened(fs, "", RO)
    assert fs.lock(a, lk(LOCK_TYPE_RDLCK)) == LOCK_SUCCESS
    assert fs.lock(b, lk(LOCK_TYPE_RDLCK)) == LOCK_SUCCESS
    err(errno.EBADF, fs.lock, b, lk(LOCK_TYPE_WRLCK))


# -------------------------------------------------------- directory changes --
def test_mkdir(fs: MemoryBackend) -> None:
    r = fs.root()
    t0 = fs.getattr(r)
    q = fs.mkdir(r, "d", 0o1777, (3, 4))
    assert q.type == QidType.DIR
    a = attr(fs, "d")
    assert a.mode == stat.S_IFDIR | 0o1777 and (a.uid, a.gid, a.nlink) == (3, 4, 2)
    t1 = fs.getattr(r)
    assert t1.nlink == 3 and t1.mtime_ns > t0.mtime_ns and t1.ctime_ns == t1.mtime_ns
    err(errno.EEXIST, fs.mkdir, r, "d", 0o755, None)
    mkfile(fs, "f")
    err(errno.EEXIST, fs.mkdir, r, "f", 0o755, None)
    err(errno.ENOTDIR, fs.mkdir, lookup(fs, "f"), "x", 0o755, None)
    err(errno.ENAMETOOLONG, fs.mkdir, r, "é" * 128, 0o755, None)


def test_symlink(fs: MemoryBackend) -> None:
    r = fs.root()
    fs.symlink(r, "l", "/abs/olute", None)
    err(errno.EEXIST, fs.symlink, r, "l", "x", None)
    err(errno.ENOENT, fs.symlink, r, "e", "", None)
    err(errno.ENAMETOOLONG, fs.symlink, r, "e", "x" * 4096, None)
    err(errno.ENOTDIR, fs.walk, lookup(fs, "l"), "x")
    assert "l" in listdir(fs)


def test_mknod(fs: MemoryBackend) -> None:
    r = fs.root()
    fs.mknod(r, "c", stat.S_IFCHR | 0o600, os.makedev(1, 5), (1, 2))
    a = attr(fs, "c")
    assert stat.S_ISCHR(a.mode) and a.rdev == os.makedev(1, 5) and (a.uid, a.gid) == (1, 2)
    fs.mknod(r, "p", stat.S_IFIFO | 0o644, 1234, None)
    assert stat.S_ISFIFO(attr(fs, "p").mode) and attr(fs, "p").rdev == 0
    fs.mknod(r, "s", stat.S_IFSOCK | 0o755, 0, None)
    assert stat.S_ISSOCK(attr(fs, "s").mode)
    q = fs.mknod(r, "f", stat.S_IFREG | 0o644, 0, None)
    assert q.type == QidType.FILE and cat(fs, "f") == b""
    fs.mknod(r, "z", 0o644, 0, None)  # no type: a regular file, as in Linux
    assert stat.S_ISREG(attr(fs, "z").mode)
    err(errno.EPERM, fs.mknod, r, "d", stat.S_IFDIR | 0o755, 0, None)
    err(errno.EINVAL, fs.mknod, r, "q", 0o170000 | 0o644, 0, None)
    err(errno.EEXIST, fs.mknod, r, "p", stat.S_IFIFO | 0o644, 0, None)


def test_link(fs: MemoryBackend) -> None:
    r = fs.root()
    mkdir(fs, "d")
    mkfile(fs, "f", b"shared")
    f = lookup(fs, "f")
    d = lookup(fs, "d")
    a0 = fs.getattr(f)
    d0 = fs.getattr(d)
    fs.link(d, f, "g")
    a1 = fs.getattr(f)
    assert a1.nlink == 2 and a1.ctime_ns > a0.ctime_ns and a1.mtime_ns == a0.mtime_ns
    assert fs.getattr(d).mtime_ns > d0.mtime_ns
    assert lookup(fs, "d/g").qid.path == f.qid.path
    _, w = opened(fs, "d/g", WO)
    fs.write(w, 0, b"SHARED")
    assert cat(fs, "f") == b"SHARED"
    err(errno.EEXIST, fs.link, d, f, "g")
    err(errno.EPERM, fs.link, r, d, "dd")
    err(errno.EEXIST, fs.link, r, d, "f")  # EEXIST is found first
    fs.unlink(r, "f", False)
    assert fs.getattr(f).nlink == 1 and cat(fs, "d/g") == b"SHARED"
    fs.symlink(r, "l", "x", None)
    fs.link(r, lookup(fs, "l"), "l2")  # links to symlinks are fine
    assert attr(fs, "l").nlink == 2


def test_unlink(fs: MemoryBackend) -> None:
    r = fs.root()
    mkdir(fs, "d")
    mkfile(fs, "d/f")
    d = lookup(fs, "d")
    f = lookup(fs, "d/f")
    d0 = fs.getattr(d)
    err(errno.ENOENT, fs.unlink, d, "nope", False)
    err(errno.ENOENT, fs.unlink, d, "nope", True)
    err(errno.ENOTEMPTY, fs.unlink, r, "d", True)
    err(errno.EISDIR, fs.unlink, r, "d", False)
    err(errno.ENOTDIR, fs.unlink, d, "f", True)
    err(errno.ENOTDIR, fs.unlink, f, "x", False)
    err(errno.EINVAL, fs.unlink, d, ".", True)
    err(errno.ENOTEMPTY, fs.unlink, d, "..", True)
    err(errno.EISDIR, fs.unlink, d, ".", False)
    fs.unlink(d, "f", False)
    d1 = fs.getattr(d)
    assert d1.mtime_ns > d0.mtime_ns and d1.ctime_ns == d1.mtime_ns
    assert fs.getattr(f).nlink == 0 and fs.getattr(f).ctime_ns == d1.ctime_ns
    r0 = fs.getattr(r)
    fs.unlink(r, "d", True)
    assert fs.getattr(r).nlink == r0.nlink - 1
    assert fs.getattr(d).nlink == 0
    assert listdir(fs) == [".", ".."]


def test_remove(fs: MemoryBackend) -> None:
    r = fs.root()
    mkdir(fs, "d")
    mkfile(fs, "d/f")
    d = lookup(fs, "d")
    f = lookup(fs, "d/f")
    err(errno.EBUSY, fs.remove, r)
    err(errno.ENOTEMPTY, fs.remove, d)
    fs.remove(f)
    err(errno.ENOENT, fs.remove, f)
    fs.remove(d)
    assert listdir(fs) == [".", ".."]
    err(errno.ENOENT, fs.remove, d)


def test_remove_after_name_reused(fs: MemoryBackend) -> None:
    r = fs.root()
    mkfile(fs, "f", b"one")
    old = lookup(fs, "f")
    fs.rename(r, "f", r, "g")
    mkfile(fs, "f", b"two")
    err(errno.ENOENT, fs.remove, old)  # "f" is now another file
    assert cat(fs, "f") == b"two"


def test_remove_directory_that_moved(fs: MemoryBackend) -> None:
    r = fs.root()
    mkdir(fs, "a")
    mkdir(fs, "b")
    mkdir(fs, "a/sub")
    sub = lookup(fs, "a/sub")
    fs.rename(r, "a", lookup(fs, "b"), "moved")  # a parent of sub moved
    fs.remove(sub)
    assert listdir(fs, "b/moved") == [".", ".."]


def test_remove_via_hard_link(fs: MemoryBackend) -> None:
    r = fs.root()
    mkfile(fs, "f")
    fs.link(r, lookup(fs, "f"), "g")
    g = lookup(fs, "g")
    fs.remove(g)  # removes the name it was reached by
    assert sorted(listdir(fs)) == [".", "..", "f"]


# --------------------------------------------------------------------- rename --
def test_rename_simple(fs: MemoryBackend) -> None:
    r = fs.root()
    mkdir(fs, "a")
    mkdir(fs, "b")
    mkfile(fs, "a/f", b"data")
    a, b = lookup(fs, "a"), lookup(fs, "b")
    f = lookup(fs, "a/f")
    f0 = fs.getattr(f)
    fs.rename(a, "f", b, "g")
    assert listdir(fs, "a") == [".", ".."] and "g" in listdir(fs, "b")
    assert cat(fs, "b/g") == b"data"
    f1 = fs.getattr(f)
    assert f1.ctime_ns > f0.ctime_ns and f1.mtime_ns == f0.mtime_ns
    assert fs.getattr(a).mtime_ns == fs.getattr(b).mtime_ns == f1.ctime_ns
    err(errno.ENOENT, fs.rename, a, "f", b, "h")
    err(errno.ENOTDIR, fs.rename, lookup(fs, "b/g"), "x", r, "y")
    fs.rename(b, "g", b, "g")  # onto itself: nothing happens
    assert cat(fs, "b/g") == b"data"


def test_rename_replaces_file(fs: MemoryBackend) -> None:
    r = fs.root()
    mkfile(fs, "src", b"new")
    mkfile(fs, "dst", b"old")
    victim = lookup(fs, "dst")
    _, vf = opened(fs, "dst", RO)
    fs.rename(r, "src", r, "dst")
    assert cat(fs, "dst") == b"new"
    assert sorted(listdir(fs)) == [".", "..", "dst"]
    assert fs.getattr(victim).nlink == 0
    assert fs.read(vf, 0, 10) == b"old"  # open-unlinked victim still readable


def test_rename_directories(fs: MemoryBackend) -> None:
    r = fs.root()
    mkdir(fs, "a")
    mkdir(fs, "a/x")
    mkdir(fs, "empty")
    mkdir(fs, "full")
    mkfile(fs, "full/f")
    mkfile(fs, "file")
    err(errno.ENOTEMPTY, fs.rename, r, "a", r, "full")
    err(errno.ENOTDIR, fs.rename, r, "a", r, "file")
    err(errno.EISDIR, fs.rename, r, "file", r, "empty")
    victim = lookup(fs, "empty")
    n0 = fs.getattr(r).nlink
    fs.rename(r, "a", r, "empty")  # replaces an empty directory
    assert fs.getattr(r).nlink == n0 - 1
    assert fs.getattr(victim).nlink == 0
    assert listdir(fs, "empty") == [".", "..", "x"]
    assert sorted(listdir(fs)) == [".", "..", "empty", "file", "full"]


def test_rename_into_itself(fs: MemoryBackend) -> None:
    r = fs.root()
    mkdir(fs, "a")
    mkdir(fs, "a/b")
    mkdir(fs, "a/b/c")
    mkfile(fs, "a/f")
    a, b, c = lookup(fs, "a"), lookup(fs, "a/b"), lookup(fs, "a/b/c")
    err(errno.EINVAL, fs.rename, r, "a", a, "x")
    err(errno.EINVAL, fs.rename, r, "a", c, "x")
    err(errno.EINVAL, fs.rename, a, "b", c, "x")
    err(errno.EINVAL, fs.rename, r, "a", b, "c")  # even onto an existing entry
    # the target an ancestor of the source: ENOTEMPTY, whatever the source is
    err(errno.ENOTEMPTY, fs.rename, b, "c", r, "a")
    err(errno.ENOTEMPTY, fs.rename, a, "f", r, "a")
    err(errno.EBUSY, fs.rename, c, "..", r, "x")
    err(errno.EBUSY, fs.rename, r, "a", c, ".")


def test_rename_dir_between_parents_fixes_nlink_and_dotdot(fs: MemoryBackend) -> None:
    r = fs.root()
    mkdir(fs, "p")
    mkdir(fs, "q")
    mkdir(fs, "p/d")
    p, q = lookup(fs, "p"), lookup(fs, "q")
    d = lookup(fs, "p/d")
    fs.rename(p, "d", q, "d2")
    assert (fs.getattr(p).nlink, fs.getattr(q).nlink) == (2, 3)
    assert fs.walk(d, "..").qid == q.qid
    _, f = opened(fs, "q/d2", RO)
    dots = {e.name: e.qid for e in fs.readdir(f, 0)}
    assert dots[".."] == q.qid
    assert fs.getattr(r).nlink == 4


def test_rename_hard_links_to_same_file_is_noop(fs: MemoryBackend) -> None:
    r = fs.root()
    mkfile(fs, "f")
    fs.link(r, lookup(fs, "f"), "g")
    fs.rename(r, "f", r, "g")
    assert sorted(listdir(fs)) == [".", "..", "f", "g"]
    assert attr(fs, "f").nlink == 2


def test_rename_readdir_order(fs: MemoryBackend) -> None:
    r = fs.root()
    for n in "abc":
        mkfile(fs, n)
    fs.rename(r, "a", r, "z")
    assert listdir(fs) == [".", "..", "b", "c", "z"]


def test_rename_node(fs: MemoryBackend) -> None:
    r = fs.root()
    mkdir(fs, "d")
    mkfile(fs, "f", b"x")
    f = lookup(fs, "f")
    d = lookup(fs, "d")
    fs.rename_node(f, None, "g")  # same directory
    assert sorted(listdir(fs)) == [".", "..", "d", "g"]
    fs.rename_node(f, d, "h")
    assert listdir(fs, "d") == [".", "..", "h"]
    fs.rename_node(d, None, "e")
    assert sorted(listdir(fs)) == [".", "..", "e"]
    fs.remove(f)  # the node follows its file
    assert listdir(fs, "e") == [".", ".."]
    err(errno.EBUSY, fs.rename_node, r, None, "x")
    mkfile(fs, "k")
    k = lookup(fs, "k")
    fs.unlink(r, "k", False)
    err(errno.ENOENT, fs.rename_node, k, None, "k2")
    err(errno.EINVAL, fs.rename_node, lookup(fs, "e"), lookup(fs, "e"), "x")


# --------------------------------------------------------------------- xattrs --
def test_xattrs(fs: MemoryBackend) -> None:
    mkfile(fs, "f")
    n = lookup(fs, "f")
    assert fs.xattr_list(n) == []
    c0 = fs.getattr(n).ctime_ns
    fs.xattr_set(n, "user.a", b"1", 0)
    assert fs.getattr(n).ctime_ns > c0
    fs.xattr_set(n, "trusted.b", b"", 0)
    fs.xattr_set(n, "security.c", b"\0\xff", 0)
    assert fs.xattr_list(n) == ["user.a", "trusted.b", "security.c"]
    assert fs.xattr_get(n, "user.a") == b"1"
    assert fs.xattr_get(n, "trusted.b") == b""
    err(errno.EEXIST, fs.xattr_set, n, "user.a", b"2", XATTR_CREATE)
    fs.xattr_set(n, "user.a", b"2", XATTR_REPLACE)
    err(errno.ENODATA, fs.xattr_set, n, "user.zz", b"2", XATTR_REPLACE)
    fs.xattr_set(n, "user.new", b"3", XATTR_CREATE)
    assert fs.xattr_get(n, "user.a") == b"2"
    err(errno.ENODATA, fs.xattr_get, n, "user.none")
    c1 = fs.getattr(n).ctime_ns
    fs.xattr_remove(n, "user.a")
    assert fs.getattr(n).ctime_ns > c1
    err(errno.ENODATA, fs.xattr_remove, n, "user.a")
    assert "user.a" not in fs.xattr_list(n)


def test_xattr_errors(fs: MemoryBackend) -> None:
    mkfile(fs, "f")
    n = lookup(fs, "f")
    err(errno.EOPNOTSUPP, fs.xattr_set, n, "weird.a", b"", 0)
    err(errno.EOPNOTSUPP, fs.xattr_get, n, "os2.x")
    err(errno.EINVAL, fs.xattr_set, n, "user.", b"", 0)
    err(errno.ERANGE, fs.xattr_set, n, "user." + "x" * 251, b"", 0)
    fs.xattr_set(n, "user." + "x" * 250, b"", 0)
    err(errno.E2BIG, fs.xattr_set, n, "user.big", b"x" * 65537, 0)
    err(errno.EINVAL, fs.xattr_set, n, "user.a", b"", 4)
    fs.xattr_set(n, "user.v1", b"x" * 60000, 0)
    err(errno.ENOSPC, fs.xattr_set, n, "user.v2", b"x" * 6000, 0)
    fs.xattr_set(n, "user.v1", b"x" * 65000, 0)  # replacing frees the old value


def test_user_xattrs_only_on_files_and_dirs(fs: MemoryBackend) -> None:
    r = fs.root()
    fs.symlink(r, "l", "x", None)
    fs.mknod(r, "p", stat.S_IFIFO | 0o644, 0, None)
    lnk, p = lookup(fs, "l"), lookup(fs, "p")
    err(errno.EPERM, fs.xattr_set, lnk, "user.a", b"1", 0)
    err(errno.EPERM, fs.xattr_set, p, "user.a", b"1", 0)
    err(errno.EPERM, fs.xattr_remove, p, "user.a")
    fs.xattr_set(lnk, "trusted.a", b"1", 0)
    assert fs.xattr_list(lnk) == ["trusted.a"]
    fs.xattr_set(r, "user.dir", b"ok", 0)
    assert fs.xattr_get(r, "user.dir") == b"ok"


# ------------------------------------------------------------------ synthetic --
def test_synthetic_file(fs: MemoryBackend) -> None:
    count = itertools.count(1)
    fs.add_synthetic("ctl", lambda: f"opened {next(count)}\n".encode())
    fs.add_synthetic("/sys/deep/status", lambda: b"ok")
    assert cat(fs, "ctl") == b"opened 1\n"
    assert cat(fs, "sys/deep/status") == b"ok"
    n = lookup(fs, "ctl")
    a = fs.getattr(n)
    assert a.mode == stat.S_IFREG | 0o444 and a.size == 0 and (a.uid, a.gid) == (0, 0)
    v = n.qid.version
    f1 = fs.open(n, RO)
    f2 = fs.open(n, RO)
    assert n.qid.version != v  # every open is a new version
    # content is taken at open: each open file keeps its own snapshot
    assert fs.read(f1, 0, 100) == b"opened 2\n"
    assert fs.read(f2, 0, 100) == b"opened 3\n"
    assert fs.read(f1, 7, 100) == b"2\n"
    assert stat.S_ISDIR(attr(fs, "sys/deep").mode)
    assert "ctl" in listdir(fs)


def test_synthetic_is_read_only(fs: MemoryBackend) -> None:
    r = fs.root()
    fs.add_synthetic("ctl", lambda: b"x")
    n = lookup(fs, "ctl")
    f = fs.open(n, RO)
    err(errno.EACCES, fs.write, f, 0, b"y")
    err(errno.EACCES, fs.open, n, WO)
    err(errno.EACCES, fs.open, n, RW)
    err(errno.EACCES, fs.open, n, RO | os.O_TRUNC)
    err(errno.EACCES, fs.create, r, "ctl", os.O_CREAT | WO, 0o644, None)
    err(errno.EEXIST, fs.create, r, "ctl", NEW, 0o644, None)
    err(errno.EACCES, fs.setattr, n, SetAttr(size=0))
    err(errno.EACCES, fs.setattr, n, SetAttr(mode=0o666))
    err(errno.EACCES, fs.xattr_set, n, "user.a", b"", 0)
    err(errno.EPERM, fs.unlink, r, "ctl", False)
    err(errno.EPERM, fs.remove, n)
    err(errno.EPERM, fs.rename, r, "ctl", r, "other")
    err(errno.EPERM, fs.rename_node, n, None, "other")
    err(errno.EPERM, fs.link, r, n, "other")
    mkfile(fs, "victim")
    err(errno.EPERM, fs.rename, r, "victim", r, "ctl")
    assert fs.read(f, 0, 10) == b"x"
    _, cfile = fs.create(r, "ctl", os.O_CREAT | RO, 0o644, None)
    assert fs.read(cfile, 0, 10) == b"x"


def test_synthetic_errors(fs: MemoryBackend) -> None:
    fs.add_synthetic("ctl", lambda: b"x")
    mkfile(fs, "file")
    with pytest.raises(FileExistsError):
        fs.add_synthetic("ctl", lambda: b"")
    with pytest.raises(NotADirectoryError):
        fs.add_synthetic("file/x", lambda: b"")
    for bad in ("", "/", "a/../b", "./x"):
        with pytest.raises(ValueError):
            fs.add_synthetic(bad, lambda: b"")

    def broken() -> bytes:
        raise RuntimeError("boom")

    def denied() -> bytes:
        raise PermissionError(errno.EPERM, "no")

    fs.add_synthetic("broken", broken)
    fs.add_synthetic("denied", denied)
    fs.add_synthetic("wrong", lambda: "text")  # type: ignore[arg-type,return-value]
    err(errno.EIO, cat, fs, "broken")
    err(errno.EPERM, cat, fs, "denied")
    err(errno.EIO, cat, fs, "wrong")


def test_synthetic_may_call_back_into_backend(fs: MemoryBackend) -> None:
    def status() -> bytes:
        s = fs.statfs(fs.root())
        return f"free={s.bfree}\n".encode()

    fs.add_synthetic("status", status)
    assert cat(fs, "status").startswith(b"free=")


def test_synthetic_on_readonly_backend() -> None:
    fs = make(readonly=True)
    fs.add_synthetic("ctl", lambda: b"hi")
    assert cat(fs, "ctl") == b"hi"


# ------------------------------------------------------------------- readonly --
@pytest.fixture
def rofs() -> tuple[MemoryBackend, dict[str, Any]]:
    fs = make()
    mkdir(fs, "d")
    mkfile(fs, "d/f", b"content")
    mkdir(fs, "d/empty")
    n = lookup(fs, "d/f")
    fs.xattr_set(n, "user.a", b"1", 0)
    fs.readonly = True
    return fs, {"d": lookup(fs, "d"), "f": lookup(fs, "d/f")}


READONLY_OPS: dict[str, Callable[[MemoryBackend, dict[str, Any]], object]] = {
    "setattr": lambda fs, n: fs.setattr(n["f"], SetAttr(mode=0o600)),
    "truncate": lambda fs, n: fs.setattr(n["f"], SetAttr(size=0)),
    "utimes": lambda fs, n: fs.setattr(n["f"], SetAttr(atime=NOW)),
    "open-write": lambda fs, n: fs.open(n["f"], WO),
    "open-rdwr": lambda fs, n: fs.open(n["f"], RW),
    "open-trunc": lambda fs, n: fs.open(n["f"], RO | os.O_TRUNC),
    "create": lambda fs, n: fs.create(n["d"], "new", NEW, 0o644, None),
    "create-existing-write": lambda fs, n: fs.create(n["d"], "f", os.O_CREAT | WO, 0o644, None),
    "mkdir": lambda fs, n: fs.mkdir(n["d"], "new", 0o755, None),
    "symlink": lambda fs, n: fs.symlink(n["d"], "new", "x", None),
    "mknod": lambda fs, n: fs.mknod(n["d"], "new", stat.S_IFIFO | 0o644, 0, None),
    "link": lambda fs, n: fs.link(n["d"], n["f"], "new"),
    "rename": lambda fs, n: fs.rename(n["d"], "f", n["d"], "g"),
    "rename_node": lambda fs, n: fs.rename_node(n["f"], None, "g"),
    "unlink": lambda fs, n: fs.unlink(n["d"], "f", False),
    "rmdir": lambda fs, n: fs.unlink(n["d"], "empty", True),
    "remove": lambda fs, n: fs.remove(n["f"]),
    "xattr_set": lambda fs, n: fs.xattr_set(n["f"], "user.b", b"", 0),
    "xattr_remove": lambda fs, n: fs.xattr_remove(n["f"], "user.a"),
}


@pytest.mark.parametrize("op", sorted(READONLY_OPS))
def test_readonly_refuses_changes(rofs: tuple[MemoryBackend, dict[str, Any]], op: str) -> None:
    fs, nodes = rofs
    before = (attr(fs, "d/f"), listdir(fs, "d"))
    err(errno.EROFS, READONLY_OPS[op], fs, nodes)
    assert (attr(fs, "d/f"), listdir(fs, "d")) == before


def test_readonly_allows_reading(rofs: tuple[MemoryBackend, dict[str, Any]]) -> None:
    fs, n = rofs
    assert cat(fs, "d/f") == b"content"
    assert sorted(listdir(fs, "d")) == [".", "..", "empty", "f"]
    assert fs.xattr_get(n["f"], "user.a") == b"1"
    assert fs.xattr_list(n["f"]) == ["user.a"]
    fs.statfs(n["d"])
    f = fs.open(n["f"], RO)
    assert fs.lock(f, lk(LOCK_TYPE_RDLCK)) == LOCK_SUCCESS
    _, g = fs.create(n["d"], "f", os.O_CREAT | RO, 0o644, None)  # exists: just opens
    assert fs.read(g, 0, 3) == b"con"


def test_readonly_reports_eexist_before_erofs(rofs: tuple[MemoryBackend, dict[str, Any]]) -> None:
    fs, n = rofs
    err(errno.EEXIST, fs.mkdir, n["d"], "f", 0o755, None)
    err(errno.EEXIST, fs.create, n["d"], "f", NEW, 0o644, None)
    err(errno.EEXIST, fs.symlink, n["d"], "empty", "x", None)


# ---------------------------------------------------------------- concurrency --
def test_threads(fs: MemoryBackend) -> None:
    r = fs.root()
    mkfile(fs, "shared")
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            d = fs.clone(r)
            fs.mkdir(d, f"dir{i}", 0o755, None)
            sub = fs.walk(d, f"dir{i}")
            for j in range(50):
                node, f = fs.create(sub, f"f{j}", NEW, 0o644, None)
                fs.write(f, 0, b"%d-%d" % (i, j))
                fs.close(f)
                fs.release(node)
            for j in range(0, 50, 2):
                fs.unlink(sub, f"f{j}", False)
            n, f = opened(fs, "shared", RW)
            for k in range(50):
                fs.write(f, 0, b"x" * (k + 1))
                fs.read(f, 0, 10)
            fs.close(f)
            fs.release(n)
            list(fs.readdir(fs.open(sub, RO), 0))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert fs.getattr(r).nlink == 2 + 8
    for i in range(8):
        assert len(listdir(fs, f"dir{i}")) == 2 + 25
        assert cat(fs, f"dir{i}/f1") == b"%d-1" % i
    assert attr(fs, "shared").size == 50


# --------------------------------------------------- differential against Linux --
NAMES = ("a", "b")
PATHS = ["/".join(p) for depth in (1, 2, 3) for p in itertools.product(NAMES, repeat=depth)]
path_st = st.sampled_from(PATHS)
op_st = st.one_of(
    st.tuples(st.sampled_from(["mkdir", "mkfile", "mkfifo", "unlink", "rmdir"]), path_st),
    st.tuples(st.sampled_from(["rename", "link"]), path_st, path_st),
)


def _host(root: str, op: tuple[str, ...]) -> None:
    p = [os.path.join(root, x) for x in op[1:]]
    kind = op[0]
    if kind == "mkdir":
        os.mkdir(p[0])
    elif kind == "mkfile":
        os.close(os.open(p[0], os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    elif kind == "mkfifo":
        os.mkfifo(p[0], 0o644)
    elif kind == "unlink":
        os.unlink(p[0])
    elif kind == "rmdir":
        os.rmdir(p[0])
    elif kind == "rename":
        os.rename(p[0], p[1])
    elif kind == "link":
        os.link(p[0], p[1], follow_symlinks=False)


def _mem(fs: MemoryBackend, op: tuple[str, ...]) -> None:
    kind = op[0]
    held: list[Node] = []
    try:
        if kind == "link":
            t = lookup(fs, op[1])
            held.append(t)
            d, name = parent_and_name(fs, op[2])
            held.append(d)
            fs.link(d, t, name)
            return
        d, name = parent_and_name(fs, op[1])
        held.append(d)
        if kind == "mkdir":
            fs.mkdir(d, name, 0o755, None)
        elif kind == "mkfile":
            node, f = fs.create(d, name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644, None)
            fs.close(f)
            held.append(node)
        elif kind == "mkfifo":
            fs.mknod(d, name, stat.S_IFIFO | 0o644, 0, None)
        elif kind in ("unlink", "rmdir"):
            fs.unlink(d, name, kind == "rmdir")
        elif kind == "rename":
            d2, name2 = parent_and_name(fs, op[2])
            held.append(d2)
            fs.rename(d, name, d2, name2)
    finally:
        for n in held:
            fs.release(n)


def _outcome(fn: Callable[[], None]) -> str:
    try:
        fn()
    except OSError as e:
        return errno.errorcode[e.errno or 0]
    return "ok"


def _host_tree(root: str) -> dict[str, tuple[str, int, int]]:
    out: dict[str, tuple[str, int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            s = os.lstat(full)
            rel = os.path.relpath(full, root)
            out[rel] = (stat.filemode(s.st_mode)[0], s.st_nlink, s.st_ino)
    return out


def _mem_tree(fs: MemoryBackend) -> dict[str, tuple[str, int, int]]:
    out: dict[str, tuple[str, int, int]] = {}

    def visit(node: Node, prefix: str) -> None:
        f = fs.open(node, RO)
        for e in list(fs.readdir(f, 0)):
            if e.name in (".", ".."):
                continue
            child = fs.walk(node, e.name)
            a = fs.getattr(child)
            rel = prefix + e.name
            out[rel] = (stat.filemode(a.mode)[0], a.nlink, a.qid.path)
            if stat.S_ISDIR(a.mode):
                visit(child, rel + "/")
            fs.release(child)
        fs.close(f)

    r = fs.root()
    visit(r, "")
    fs.release(r)
    return out


def _shape(tree: dict[str, tuple[str, int, int]]) -> tuple[object, ...]:
    """Types and link counts per path, plus which paths share an inode."""
    groups: dict[int, list[str]] = {}
    for path, (_, _, ino) in tree.items():
        groups.setdefault(ino, []).append(path)
    return (
        {p: (k, n) for p, (k, n, _) in tree.items()},
        sorted(sorted(g) for g in groups.values()),
    )


@settings(
    max_examples=int(os.environ.get("MEMFS_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.lists(op_st, min_size=1, max_size=25))
def test_namespace_matches_linux(ops: list[tuple[str, ...]]) -> None:
    fs = make()
    with tempfile.TemporaryDirectory() as root:
        for op in ops:
            want = _outcome(lambda op=op: _host(root, op))  # type: ignore[misc]
            got = _outcome(lambda op=op: _mem(fs, op))  # type: ignore[misc]
            assert got == want, f"{op}: memfs {got}, linux {want}"
        assert _shape(_mem_tree(fs)) == _shape(_host_tree(root))


def test_no_references_leak_in_differential_helpers() -> None:
    fs = make()
    for op in [("mkdir", "a"), ("mkfile", "a/b"), ("link", "a/b", "b"), ("unlink", "a/b")]:
        _mem(fs, op)
    free = fs.statfs(fs.root()).ffree
    _mem(fs, ("unlink", "b"))
    assert fs.statfs(fs.root()).ffree == free + 1
