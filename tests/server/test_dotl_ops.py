"""9P2000.L operations end to end: raw client -> live server -> real temp dir."""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from p9share.client.raw import RawClient, ServerError
from p9share.protocol import constants as c
from p9share.protocol import messages as m

from ..conftest import LiveServer, is_root

O_RDONLY, O_WRONLY, O_RDWR = c.L_O_RDONLY, c.L_O_WRONLY, c.L_O_RDWR


def err(exc: pytest.ExceptionInfo[ServerError]) -> int:
    return exc.value.errno or 0


def readdir_all(cl: RawClient, fid: int, count: int = 4096) -> list[m.Dirent]:
    out: list[m.Dirent] = []
    off = 0
    while True:
        r = cl.rpc(m.Treaddir(fid, off, count))
        assert isinstance(r, m.Rreaddir)
        ents = m.decode_dirents(r.data)
        if not ents:
            return out
        out.extend(ents)
        off = ents[-1].offset


def create(cl: RawClient, dfid: int, newfid: int, name: str, data: bytes = b"") -> None:
    cl.walk(dfid, newfid, [])
    cl.rpc(m.Tlcreate(newfid, name, O_RDWR, 0o644, 0))
    if data:
        cl.rpc(m.Twrite(newfid, 0, data))


# ------------------------------------------------------------------ session --


def test_version_negotiation(live: LiveServer) -> None:
    cl = RawClient.connect(live.tcp)
    assert cl.version(10_000_000).msize == 1024 * 1024 + 24
    assert cl.version(8192).msize == 8192
    r = cl.version(8192, "9P2000.x")
    assert r.version == "9P2000"  # 9P2000.<anything> is 9P2000, served by default (§9.17)
    r = cl.version(1000, "9P2000.L")
    assert r.version == "unknown"  # msize below 4096
    cl.close()


def test_version_resets_fids(live: LiveServer) -> None:
    cl = live.client()
    cl.walk(0, 1, [])
    cl.version()
    with pytest.raises(ServerError) as e:
        cl.rpc(m.Tgetattr(1, 0x7FF))
    assert err(e) == errno.EBADF


def test_attach_rules(make_server: Callable[..., LiveServer], tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "in-a").touch()
    srv = make_server({"a": (a, False), "b": (b, True)})
    cl = srv.client(attach=False)
    with pytest.raises(ServerError) as e:
        cl.attach(0, "")  # two exports: the empty name selects none
    assert err(e) == errno.ENOENT
    with pytest.raises(ServerError) as e:
        cl.attach(0, "nope")
    assert err(e) == errno.ENOENT
    cl.attach(0, "a")
    cl.walk(0, 1, ["in-a"])
    with pytest.raises(ServerError) as e:
        cl.attach(0, "b")  # fid 0 in use
    assert err(e) == errno.EEXIST
    cl.attach(2, "b")
    with pytest.raises(ServerError) as e:
        cl.rpc(m.Tmkdir(2, "x", 0o755, 0))
    assert err(e) == errno.EROFS
    with pytest.raises(ServerError) as e:
        cl.rpc(m.Trenameat(0, "in-a", 2, "moved"))  # across exports
    assert err(e) in (errno.EXDEV, errno.EROFS)
    with pytest.raises(ServerError) as e:
        cl.rpc(m.Tauth(5, "root", "a", 0))
    assert err(e) == errno.EOPNOTSUPP


def test_walk_rules(live: LiveServer) -> None:
    (live.root / "d" / "e").mkdir(parents=True)
    (live.root / "d" / "f").write_text("x")
    cl = live.client()
    r = cl.walk(0, 1, [])  # clone
    assert r.qids == []
    r = cl.walk(0, 2, ["d", "e"])
    assert len(r.qids) == 2 and all(q.type & c.QidType.DIR for q in r.qids)
    # partial walk: qids so far, newfid not created
    r = cl.walk(0, 3, ["d", "missing", "x"])
    assert len(r.qids) == 1
    with pytest.raises(ServerError) as e:
        cl.rpc(m.Tgetattr(3, 1))
    assert err(e) == errno.EBADF
    # failure on the first element is an error
    with pytest.raises(ServerError) as e:
        cl.walk(0, 3, ["missing"])
    assert err(e) == errno.ENOENT
    # newfid in use
    with pytest.raises(ServerError) as e:
        cl.walk(0, 2, ["d"])
    assert err(e) == errno.EEXIST
    # walk fid onto itself
    cl.walk(2, 2, [".."])
    r2 = cl.rpc(m.Tgetattr(2, 0x7FF))
    assert isinstance(r2, m.Rgetattr) and r2.qid == cl.walk(0, 9, ["d"]).qids[0]
    # through a file
    r = cl.walk(0, 4, ["d", "f", "g"])
    assert len(r.qids) == 2


def test_dotdot_at_root_stays_at_root(live: LiveServer) -> None:
    cl = live.client()
    root = cl.rpc(m.Tgetattr(0, 0x7FF))
    assert isinstance(root, m.Rgetattr)
    r = cl.walk(0, 1, ["..", "..", "..", ".."])
    assert all(q == root.qid for q in r.qids)
    names = {d.name for d in readdir_all_open(cl, 1)}
    assert names == {".", ".."} | set(os.listdir(live.root))


def readdir_all_open(cl: RawClient, fid: int) -> list[m.Dirent]:
    cl.rpc(m.Tlopen(fid, O_RDONLY))
    return readdir_all(cl, fid)


def test_clunk_always_releases(live: LiveServer) -> None:
    cl = live.client()
    cl.walk(0, 1, [])
    cl.rpc(m.Txattrcreate(1, "user.x", 5, 0))
    cl.rpc(m.Twrite(1, 0, b"ab"))  # 2 of 5 bytes
    with pytest.raises(ServerError) as e:
        cl.rpc(m.Tclunk(1))
    assert err(e) == errno.EINVAL
    with pytest.raises(ServerError) as e:
        cl.rpc(m.Tclunk(1))
    assert err(e) == errno.EBADF
    cl.walk(0, 1, [])  # the number is free again


# ---------------------------------------------------------------- file I/O --


def test_create_write_read_append_truncate(live: LiveServer) -> None:
    cl = live.client()
    cl.walk(0, 1, [])
    r = cl.rpc(m.Tlcreate(1, "f", O_RDWR | c.L_O_EXCL, 0o640, 0))
    assert isinstance(r, m.Rlcreate) and r.iounit == cl.msize - 24
    assert cl.rpc(m.Twrite(1, 0, b"hello world")) == m.Rwrite(11)
    assert cl.rpc(m.Tread(1, 6, 100)) == m.Rread(b"world")
    assert cl.rpc(m.Tread(1, 100, 100)) == m.Rread(b"")
    assert (live.root / "f").read_bytes() == b"hello world"
    assert stat.S_IMODE((live.root / "f").stat().st_mode) == 0o640
    # exclusive create of an existing name
    cl.walk(0, 2, [])
    with pytest.raises(ServerError) as e:
        cl.rpc(m.Tlcreate(2, "f", O_RDWR | c.L_O_EXCL, 0o644, 0))
    assert err(e) == errno.EEXIST
    # append
    cl.walk(0, 3, ["f"])
    cl.rpc(m.Tlopen(3, O_WRONLY | c.L_O_APPEND))
    cl.rpc(m.Twrite(3, 0, b"!"))
    assert (live.root / "f").read_bytes() == b"hello world!"
    # truncate through setattr and through O_TRUNC
    cl.rpc(m.Tsetattr(1, c.SetattrValid.SIZE, 0, 0, 0, 5, 0, 0, 0, 0))
    assert (live.root / "f").read_bytes() == b"hello"
    cl.walk(0, 4, ["f"])
    cl.rpc(m.Tlopen(4, O_WRONLY | c.L_O_TRUNC))
    assert (live.root / "f").read_bytes() == b""


def test_open_mode_is_enforced(live: LiveServer) -> None:
    (live.root / "f").write_bytes(b"data")
    cl = live.client()
    cl.walk(0, 1, ["f"])
    cl.rpc(m.Tlopen(1, O_RDONLY))
    with pytest.raises(ServerError) as e:
        cl.rpc(m.Twrite(1, 0, b"x"))
    assert err(e) == errno.EBADF
    with pytest.raises(ServerError) as e:
        cl.rpc(m.Tlopen(1, O_RDONLY))  # already open
    assert err(e) == errno.EBADF
    cl.walk(0, 2, ["f"])
    cl.rpc(m.Tlopen(2, O_WRONLY))
    with pytest.raises(ServerError) as e:
        cl.rpc(m.Tread(2, 0, 4))
    assert err(e) == errno.EBADF
    cl.walk(0, 3, ["f"])
    with pytest.raises(ServerError) as e:
        cl.rpc(m.Tread(3, 0, 4))  # not open
    assert err(e) == errno.EBADF
    with pytest.raises(ServerError) as e:
        cl.rpc(m.Tlopen(3, 0o3))  # NOACCESS
    assert err(e) == errno.EINVAL
    cl.walk(0, 4, [])
    with pytest.raises(ServerError) as e:
        cl.rpc(m.Tlopen(4, O_RDWR))  # a directory for writing
    assert err(e) == errno.EISDIR


def test_large_io_at_msize_boundary(live: LiveServer) -> None:
    cl = live.client(msize=65536 + 24)
    data = os.urandom(3 * 65536 + 123)
    cl.walk(0, 1, [])
    cl.rpc(m.Tlcreate(1, "big", O_RDWR, 0o644, 0))
    chunk = cl.msize - 24
    for off in range(0, len(data), chunk):
        cl.rpc(m.Twrite(1, off, data[off : off + chunk]))
    got = b""
    while True:
        r = cl.rpc(m.Tread(1, len(got), chunk))
        assert isinstance(r, m.Rread)
        if not r.data:
            break
        got += bytes(r.data)
    assert got == data == (live.root / "big").read_bytes()


def test_open_unlinked_file_keeps_working(live: LiveServer) -> None:
    cl = live.client()
    create(cl, 0, 1, "gone", b"still here")
    cl.rpc(m.Tunlinkat(0, "gone", 0))
    assert not (live.root / "gone").exists()
    assert cl.rpc(m.Tread(1, 0, 100)) == m.Rread(b"still here")
    cl.rpc(m.Twrite(1, 10, b"!"))
    r = cl.rpc(m.Tgetattr(1, 0x7FF))
    assert isinstance(r, m.Rgetattr) and r.size == 11 and r.nlink == 0
    cl.rpc(m.Tsetattr(1, c.SetattrValid.SIZE | c.SetattrValid.MODE, 0o600, 0, 0, 4, 0, 0, 0, 0))
    r = cl.rpc(m.Tgetattr(1, 0x7FF))
    assert isinstance(r, m.Rgetattr) and r.size == 4 and r.mode & 0o777 == 0o600


def test_renamed_open_file_keeps_working(live: LiveServer) -> None:
    cl = live.client()
    create(cl, 0, 1, "a", b"abc")
    os.mkdir(live.root / "sub")
    cl.walk(0, 2, ["sub"])
    cl.rpc(m.Trenameat(0, "a", 2, "b"))
    assert cl.rpc(m.Tread(1, 0, 10)) == m.Rread(b"abc")
    assert (live.root / "sub" / "b").read_bytes() == b"abc"


# ----------------------------------------------------------------- metadata --


def test_getattr_and_setattr_times(live: LiveServer) -> None:
    (live.root / "t").write_text("x")
    cl = live.client()
    cl.walk(0, 1, ["t"])
    r = cl.rpc(m.Tgetattr(1, c.GetattrMask.ALL))
    assert isinstance(r, m.Rgetattr)
    st = (live.root / "t").stat()
    assert r.valid & c.GetattrMask.BASIC == c.GetattrMask.BASIC
    assert (r.mode, r.uid, r.gid, r.size, r.nlink) == (st.st_mode, st.st_uid, st.st_gid, 1, 1)
    assert r.mtime_sec == int(st.st_mtime)
    # explicit times
    v = c.SetattrValid
    cl.rpc(
        m.Tsetattr(1, v.ATIME | v.ATIME_SET | v.MTIME | v.MTIME_SET, 0, 0, 0, 0, 1000, 5, 2000, 7)
    )
    st = (live.root / "t").stat()
    assert (st.st_atime_ns, st.st_mtime_ns) == (1000 * 10**9 + 5, 2000 * 10**9 + 7)
    # mtime only: atime untouched
    cl.rpc(m.Tsetattr(1, v.MTIME | v.MTIME_SET, 0, 0, 0, 0, 0, 0, 3000, 0))
    st = (live.root / "t").stat()
    assert (st.st_atime_ns, st.st_mtime_ns) == (1000 * 10**9 + 5, 3000 * 10**9)
    # "now": a time bit without its _SET bit
    before = time.time()
    cl.rpc(m.Tsetattr(1, v.ATIME | v.MTIME, 0, 0, 0, 0, 1, 0, 1, 0))
    st = (live.root / "t").stat()
    assert st.st_mtime >= before - 1 and st.st_atime >= before - 1
    with pytest.raises(ServerError) as e:
        cl.rpc(m.Tsetattr(1, 0x8000, 0, 0, 0, 0, 0, 0, 0, 0))
    assert err(e) == errno.EINVAL


@pytest.mark.skipif(not is_root(), reason="chown needs root")
def test_setattr_chown(live: LiveServer) -> None:
    (live.root / "o").write_text("x")
    cl = live.client()
    cl.walk(0, 1, ["o"])
    cl.rpc(m.Tsetattr(1, c.SetattrValid.UID | c.SetattrValid.GID, 0, 1234, 5678, 0, 0, 0, 0, 0))
    st = (live.root / "o").stat()
    assert (st.st_uid, st.st_gid) == (1234, 5678)


def test_directories_and_readdir_paging(live: LiveServer) -> None:
    cl = live.client()
    cl.rpc(m.Tmkdir(0, "many", 0o755, 0))
    names = {f"file-{i:04d}-{'x' * (i % 37)}" for i in range(1000)}
    for n in names:
        (live.root / "many" / n).touch()
    cl.walk(0, 1, ["many"])
    cl.rpc(m.Tlopen(1, O_RDONLY))
    for count in (72, 100, 4096, 65000):  # 72: the longest entry
        ents = readdir_all(cl, 1, count)
        assert [e.name for e in ents].count(".") == 1
        assert {e.name for e in ents} == names | {".", ".."}
    # a count too small for one entry is an error, not an empty (end) reply
    with pytest.raises(ServerError) as e:
        cl.rpc(m.Treaddir(1, 0, 10))
    assert err(e) == errno.EINVAL
    # types
    ents = readdir_all(cl, 1)
    assert {e.type for e in ents if e.name.startswith("file")} == {c.DT_REG}
    assert {e.type for e in ents if e.name in (".", "..")} == {c.DT_DIR}


def test_unlinkat_and_rmdir(live: LiveServer) -> None:
    (live.root / "d").mkdir()
    (live.root / "d" / "x").touch()
    cl = live.client()
    with pytest.raises(ServerError) as e:
        cl.rpc(m.Tunlinkat(0, "d", c.AT_REMOVEDIR))
    assert err(e) == errno.ENOTEMPTY
    with pytest.raises(ServerError) as e:
        cl.rpc(m.Tunlinkat(0, "d", 0))
    assert err(e) in (errno.EISDIR, errno.EPERM)
    with pytest.raises(ServerError) as e:
        cl.rpc(m.Tunlinkat(0, "d", 0x1))
    assert err(e) == errno.EINVAL
    cl.walk(0, 1, ["d"])
    cl.rpc(m.Tunlinkat(1, "x", 0))
    cl.rpc(m.Tunlinkat(0, "d", c.AT_REMOVEDIR))
    assert not (live.root / "d").exists()


def test_names_are_checked(live: LiveServer) -> None:
    cl = live.client()
    for bad in ("", ".", "..", "a/b"):
        with pytest.raises(ServerError) as e:
            cl.rpc(m.Tmkdir(0, bad, 0o755, 0))
        assert err(e) == errno.EINVAL
    with pytest.raises(ServerError) as e:
        cl.walk(0, 1, ["a/b"])
    assert err(e) == errno.EINVAL


def test_rename_over_existing_and_remove(live: LiveServer) -> None:
    (live.root / "a").write_text("A")
    (live.root / "b").write_text("B")
    (live.root / "d1").mkdir()
    cl = live.client()
    cl.walk(0, 1, ["d1"])
    cl.rpc(m.Trenameat(0, "a", 0, "b"))
    assert (live.root / "b").read_text() == "A" and not (live.root / "a").exists()
    cl.walk(0, 2, ["b"])
    cl.rpc(m.Trename(2, 1, "c"))  # Trename: the fid's file into d1
    assert (live.root / "d1" / "c").read_text() == "A"
    cl.rpc(m.Tremove(2))
    assert not (live.root / "d1" / "c").exists()
    with pytest.raises(ServerError) as e:
        cl.rpc(m.Tgetattr(2, 1))  # remove clunks
    assert err(e) == errno.EBADF
    cl.walk(0, 3, [])
    with pytest.raises(ServerError) as e:
        cl.rpc(m.Tremove(3))  # the export root
    assert err(e) == errno.EBUSY


def test_symlink_readlink_link_mknod(live: LiveServer) -> None:
    (live.root / "target").write_text("t")
    cl = live.client()
    r = cl.rpc(m.Tsymlink(0, "ln", "../../etc/passwd", 0))
    assert isinstance(r, m.Rsymlink) and r.qid.type == c.QidType.SYMLINK
    assert os.readlink(live.root / "ln") == "../../etc/passwd"
    cl.walk(0, 1, ["ln"])
    assert cl.rpc(m.Treadlink(1)) == m.Rreadlink("../../etc/passwd")
    with pytest.raises(ServerError) as e:
        cl.rpc(m.Tlopen(1, O_RDONLY))  # never followed on the host
    assert err(e) == errno.ELOOP
    cl.walk(0, 2, ["target"])
    cl.rpc(m.Tlink(0, 2, "hard"))
    assert os.stat(live.root / "hard").st_ino == os.stat(live.root / "target").st_ino
    r2 = cl.rpc(m.Tgetattr(2, 0x7FF))
    assert isinstance(r2, m.Rgetattr) and r2.nlink == 2
    r = cl.rpc(m.Tmknod(0, "fifo", stat.S_IFIFO | 0o600, 0, 0, 0))
    assert stat.S_ISFIFO(os.lstat(live.root / "fifo").st_mode)
    with pytest.raises(ServerError) as e:
        cl.rpc(m.Tmknod(0, "null", stat.S_IFCHR | 0o600, 1, 3, 0))
    assert err(e) == errno.EPERM
    assert not (live.root / "null").exists()


def test_statfs_and_fsync(live: LiveServer) -> None:
    cl = live.client()
    r = cl.rpc(m.Tstatfs(0))
    assert isinstance(r, m.Rstatfs)
    sv = os.statvfs(live.root)
    assert (r.bsize, r.blocks, r.namelen) == (sv.f_bsize, sv.f_blocks, sv.f_namemax)
    create(cl, 0, 1, "s", b"x")
    assert cl.rpc(m.Tfsync(1, 0)) == m.Rfsync()
    assert cl.rpc(m.Tfsync(1, 1)) == m.Rfsync()


def test_xattrs(live: LiveServer) -> None:
    (live.root / "x").write_text("x")
    cl = live.client()
    cl.walk(0, 1, ["x"])
    cl.walk(1, 2, [])
    cl.rpc(m.Txattrcreate(2, "user.color", 4, c.XATTR_CREATE))
    cl.rpc(m.Twrite(2, 0, b"blue"))
    cl.rpc(m.Tclunk(2))
    assert os.getxattr(live.root / "x", "user.color") == b"blue"
    r = cl.rpc(m.Txattrwalk(1, 3, "user.color"))
    assert r == m.Rxattrwalk(4)
    assert cl.rpc(m.Tread(3, 0, 100)) == m.Rread(b"blue")
    r = cl.rpc(m.Txattrwalk(1, 4, ""))
    assert isinstance(r, m.Rxattrwalk)
    listing = cl.rpc(m.Tread(4, 0, 1000))
    assert isinstance(listing, m.Rread) and b"user.color\0" in bytes(listing.data)
    with pytest.raises(ServerError) as e:
        cl.rpc(m.Txattrwalk(1, 5, "user.missing"))
    assert err(e) == errno.ENODATA
    # size 0 removes
    cl.walk(1, 6, [])
    cl.rpc(m.Txattrcreate(6, "user.color", 0, 0))
    cl.rpc(m.Tclunk(6))
    assert "user.color" not in os.listxattr(live.root / "x")


def test_locks_conflict_between_clients_and_host(live: LiveServer) -> None:
    import fcntl

    (live.root / "l").write_text("lock me")
    a, b = live.client(), live.client()
    for cl in (a, b):
        cl.walk(0, 1, ["l"])
        cl.rpc(m.Tlopen(1, O_RDWR))
    assert a.rpc(m.Tlock(1, c.LOCK_TYPE_WRLCK, 0, 0, 0, 1, "a")) == m.Rlock(c.LOCK_SUCCESS)
    assert b.rpc(m.Tlock(1, c.LOCK_TYPE_WRLCK, c.LOCK_FLAGS_BLOCK, 0, 0, 2, "b")) == m.Rlock(
        c.LOCK_BLOCKED
    )
    r = b.rpc(m.Tgetlock(1, c.LOCK_TYPE_RDLCK, 0, 0, 2, "b"))
    assert isinstance(r, m.Rgetlock) and r.type == c.LOCK_TYPE_WRLCK
    # a host process is blocked too
    with open(live.root / "l", "r+") as f, pytest.raises(OSError):
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    a.rpc(m.Tlock(1, c.LOCK_TYPE_UNLCK, 0, 0, 0, 1, "a"))
    assert b.rpc(m.Tlock(1, c.LOCK_TYPE_WRLCK, 0, 0, 0, 2, "b")) == m.Rlock(c.LOCK_SUCCESS)
    a.close()
    b.close()


def test_flush_of_finished_request_gets_rflush(live: LiveServer) -> None:
    cl = live.client()
    cl.send(m.Tflush(1234), tag=7)
    tag, r = cl.recv()
    assert (tag, r) == (7, m.Rflush())


def test_pipelined_requests_all_answered(live: LiveServer) -> None:
    (live.root / "p").write_bytes(os.urandom(300_000))
    cl = live.client(msize=1024 * 1024 + 24)
    cl.walk(0, 1, ["p"])
    cl.rpc(m.Tlopen(1, O_RDONLY))
    tags = {}
    for i in range(40):
        # big reads go to the worker pool, small getattrs are answered inline
        msg: m.Message = m.Tread(1, 0, 200_000) if i % 2 else m.Tgetattr(0, 0x7FF)
        tags[cl.send(msg)] = type(msg)
    for _ in range(40):
        tag, r = cl.recv()
        want = tags.pop(tag)
        assert (want is m.Tread and isinstance(r, m.Rread)) or isinstance(r, m.Rgetattr)
    assert not tags
