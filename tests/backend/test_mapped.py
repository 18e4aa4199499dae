"""MappedBackend over a real temp directory (HostBackend), checked from both
sides: what the guest sees through the backend and what lands on the host
(os.stat / os.getxattr of the real files)."""

from __future__ import annotations

import errno
import ipaddress
import os
import stat
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from p9share.backend.base import Backend, Node, SetAttr
from p9share.backend.hostfs import HostBackend
from p9share.backend.mapped import RESERVED_XATTR_PREFIXES, MappedBackend
from p9share.backend.memfs import MemoryBackend
from p9share.client.raw import RawClient, ServerError
from p9share.policy import Client, Export, Match, Policy, Rights
from p9share.policy.idmap import mapped
from p9share.protocol import constants as c
from p9share.protocol import messages as m
from p9share.protocol.constants import (
    DT_BLK,
    DT_CHR,
    DT_DIR,
    DT_FIFO,
    DT_LNK,
    DT_REG,
    DT_SOCK,
    XATTR_CREATE,
    QidType,
)
from p9share.server.server import Server
from p9share.server.transport import parse_address

ME = os.geteuid()
MY_GID = os.getegid()
GUEST = (1234, 5678)
W = os.O_WRONLY


def _xattrs_work(path: Path) -> bool:
    probe = path / ".probe"
    probe.touch()
    try:
        os.setxattr(probe, "user.probe", b"1")
        return True
    except OSError:
        return False
    finally:
        probe.unlink()


@pytest.fixture
def export(tmp_path: Path) -> Path:
    d = tmp_path / "export"
    d.mkdir()
    if not _xattrs_work(d):
        pytest.skip("user.* xattrs are not supported on the temp filesystem")
    return d


def _backend(export: Path, layout: str) -> Iterator[MappedBackend]:
    b = MappedBackend(HostBackend(str(export)), layout)
    yield b
    b.shutdown()


@pytest.fixture
def mb(export: Path) -> Iterator[MappedBackend]:
    yield from _backend(export, "p9share")


@pytest.fixture
def vb(export: Path) -> Iterator[MappedBackend]:
    yield from _backend(export, "virtfs")


def walk(b: Backend, *names: str) -> Node:
    n = b.root()
    for name in names:
        nxt = b.walk(n, name)
        b.release(n)
        n = nxt
    return n


def host_xattrs(p: Path) -> dict[str, bytes]:
    return {
        n: os.getxattr(p, n, follow_symlinks=False) for n in os.listxattr(p, follow_symlinks=False)
    }


def assert_plain_host_file(p: Path, size: int = 0) -> None:
    st = os.lstat(p)
    assert stat.S_ISREG(st.st_mode), oct(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert (st.st_uid, st.st_gid) == (ME, MY_GID)
    assert st.st_size == size


# -------------------------------------------------------------- creating ---
def test_create_keeps_guest_ids_and_mode_in_xattrs(mb: MappedBackend, export: Path) -> None:
    root = mb.root()
    node, f = mb.create(root, "f", os.O_RDWR, 0o4755, GUEST)
    assert mb.write(f, 0, b"hello") == 5
    a = mb.getattr(node)
    assert (a.uid, a.gid) == GUEST
    assert a.mode == stat.S_IFREG | 0o4755
    assert a.size == 5 and node.qid.type == QidType.FILE
    mb.close(f)
    mb.release(node)
    assert_plain_host_file(export / "f", 5)
    x = host_xattrs(export / "f")
    assert x["user.p9share.uid"] == struct.pack("<I", 1234)
    assert x["user.p9share.gid"] == struct.pack("<I", 5678)
    assert x["user.p9share.mode"] == struct.pack("<I", stat.S_IFREG | 0o4755)
    assert "user.p9share.rdev" not in x


def test_mkdir_host_0700_guest_mode(mb: MappedBackend, export: Path) -> None:
    root = mb.root()
    q = mb.mkdir(root, "d", 0o2775, GUEST)
    assert q.type == QidType.DIR
    d = walk(mb, "d")
    a = mb.getattr(d)
    assert a.mode == stat.S_IFDIR | 0o2775 and (a.uid, a.gid) == GUEST
    st = os.lstat(export / "d")
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700
    assert st.st_uid == ME
    # a directory keeps working as one: create inside it
    _n, f = mb.create(d, "inner", os.O_RDWR, 0o600, None)
    mb.close(f)
    assert (export / "d" / "inner").is_file()


@pytest.mark.parametrize(
    ("ftype", "dtype", "rdev", "open_errno"),
    [
        (stat.S_IFCHR, DT_CHR, os.makedev(1, 3), errno.EPERM),
        (stat.S_IFBLK, DT_BLK, os.makedev(8, 1), errno.EPERM),
        (stat.S_IFIFO, DT_FIFO, 0, errno.ENXIO),
        (stat.S_IFSOCK, DT_SOCK, 0, errno.ENXIO),
    ],
)
def test_mknod_special_is_a_plain_host_file(
    mb: MappedBackend, export: Path, ftype: int, dtype: int, rdev: int, open_errno: int
) -> None:
    root = mb.root()
    q = mb.mknod(root, "n", ftype | 0o640, rdev, GUEST)
    assert q.type == QidType.FILE
    assert_plain_host_file(export / "n")
    n = walk(mb, "n")
    a = mb.getattr(n)
    assert a.mode == ftype | 0o640 and a.rdev == rdev and (a.uid, a.gid) == GUEST
    with pytest.raises(OSError) as e:
        mb.open(n, os.O_RDONLY)
    assert e.value.errno == open_errno
    # create() without O_EXCL of the existing name must not open it either
    with pytest.raises(OSError) as e:
        mb.create(root, "n", os.O_RDWR, 0o600, None)
    assert e.value.errno == open_errno
    with pytest.raises(FileExistsError):
        mb.create(root, "n", os.O_RDWR | os.O_EXCL, 0o600, None)
    assert (dtype, os.lstat(export / "n").st_size) == (dtype, 0)


def test_mknod_bad_type(mb: MappedBackend, export: Path) -> None:
    with pytest.raises(OSError) as e:
        mb.mknod(mb.root(), "x", stat.S_IFDIR | 0o755, 0, None)
    assert e.value.errno == errno.EINVAL
    with pytest.raises(OSError) as e:
        mb.mknod(mb.root(), "x", stat.S_IFLNK | 0o755, 0, None)
    assert e.value.errno == errno.EINVAL
    assert not (export / "x").exists()


def test_symlink_is_a_regular_file_holding_the_target(mb: MappedBackend, export: Path) -> None:
    root = mb.root()
    q = mb.symlink(root, "l", "../../etc/passwd", GUEST)
    assert q.type == QidType.SYMLINK
    assert_plain_host_file(export / "l", len("../../etc/passwd"))
    assert (export / "l").read_bytes() == b"../../etc/passwd"
    n = walk(mb, "l")
    assert n.qid.type == QidType.SYMLINK
    assert mb.readlink(n) == "../../etc/passwd"
    a = mb.getattr(n)
    assert a.mode == stat.S_IFLNK | 0o777 and (a.uid, a.gid) == GUEST
    assert a.qid.type == QidType.SYMLINK
    with pytest.raises(OSError) as e:
        mb.open(n, os.O_RDONLY)
    assert e.value.errno == errno.ELOOP
    with pytest.raises(OSError) as e:
        mb.setattr(n, SetAttr(size=0))
    assert e.value.errno == errno.EINVAL
    # a regular file is no symlink
    f, of = mb.create(root, "plain", os.O_RDWR, 0o644, None)
    mb.close(of)
    with pytest.raises(OSError) as e:
        mb.readlink(f)
    assert e.value.errno == errno.EINVAL
    with pytest.raises(OSError) as e:
        mb.symlink(root, "long", "x" * 4096, None)
    assert e.value.errno == errno.ENAMETOOLONG
    assert not (export / "long").exists()


def test_readdir_shows_guest_types(mb: MappedBackend, export: Path) -> None:
    root = mb.root()
    mb.mknod(root, "chr", stat.S_IFCHR | 0o600, os.makedev(4, 5), None)
    mb.mknod(root, "blk", stat.S_IFBLK | 0o600, os.makedev(8, 0), None)
    mb.mknod(root, "fifo", stat.S_IFIFO | 0o600, 0, None)
    mb.mknod(root, "sock", stat.S_IFSOCK | 0o600, 0, None)
    mb.mknod(root, "reg", stat.S_IFREG | 0o600, 0, None)
    mb.symlink(root, "lnk", "target", None)
    mb.mkdir(root, "dir", 0o755, None)
    (export / "host-file").write_text("x")
    os.symlink("elsewhere", export / "host-link")
    f = mb.open(root, os.O_RDONLY | os.O_DIRECTORY)
    ents = {e.name: e for e in mb.readdir(f, 0)}
    mb.close(f)
    got = {name: e.dtype for name, e in ents.items()}
    assert got == {
        ".": DT_DIR, "..": DT_DIR, "chr": DT_CHR, "blk": DT_BLK, "fifo": DT_FIFO,
        "sock": DT_SOCK, "reg": DT_REG, "lnk": DT_LNK, "dir": DT_DIR,
        "host-file": DT_REG, "host-link": DT_LNK,
    }  # fmt: skip
    assert ents["lnk"].qid.type == QidType.SYMLINK
    assert ents["chr"].qid.type == QidType.FILE
    assert ents["dir"].qid.type == QidType.DIR
    # cookies still resume the listing
    f = mb.open(root, os.O_RDONLY | os.O_DIRECTORY)
    first = list(mb.readdir(f, 0))
    rest = list(mb.readdir(f, first[2].cookie))
    mb.close(f)
    assert [e.name for e in rest] == [e.name for e in first[3:]]
    assert [e.dtype for e in rest] == [e.dtype for e in first[3:]]


# ------------------------------------------------------------ attributes ---
def test_chown_chmod_go_to_xattrs_only(mb: MappedBackend, export: Path) -> None:
    root = mb.root()
    mb.mknod(root, "dev", stat.S_IFCHR | 0o600, os.makedev(1, 5), GUEST)
    n = walk(mb, "dev")
    mb.setattr(n, SetAttr(mode=0o6711))
    mb.setattr(n, SetAttr(uid=42))
    a = mb.getattr(n)
    assert a.mode == stat.S_IFCHR | 0o6711  # chmod kept the type
    assert (a.uid, a.gid) == (42, 5678)
    mb.setattr(n, SetAttr(gid=7, mode=0o644))
    a = mb.getattr(n)
    assert (a.uid, a.gid, a.mode) == (42, 7, stat.S_IFCHR | 0o644)
    assert a.rdev == os.makedev(1, 5)
    assert_plain_host_file(export / "dev")
    # a host file that never had xattrs: chmod/chown still leave the host alone
    (export / "h").write_text("data")
    os.chmod(export / "h", 0o640)
    h = walk(mb, "h")
    mb.setattr(h, SetAttr(mode=0o777, uid=1, gid=2))
    st = os.lstat(export / "h")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, ME, MY_GID)
    a = mb.getattr(h)
    assert (a.mode, a.uid, a.gid) == (stat.S_IFREG | 0o777, 1, 2)


def test_setattr_size_and_times_reach_the_host(mb: MappedBackend, export: Path) -> None:
    root = mb.root()
    node, f = mb.create(root, "f", os.O_RDWR, 0o644, GUEST)
    mb.write(f, 0, b"0123456789")
    mb.setattr(node, SetAttr(size=3), f)
    mb.setattr(node, SetAttr(atime=1_000_000_000, mtime=2_000_000_123))
    st = os.lstat(export / "f")
    assert st.st_size == 3 and st.st_mtime_ns == 2_000_000_123 and st.st_atime_ns == 1_000_000_000
    a = mb.getattr(node)
    assert (a.size, a.mtime_ns) == (3, 2_000_000_123)
    # size together with mode: both applied, each in its place
    mb.setattr(node, SetAttr(size=1, mode=0o600))
    assert os.lstat(export / "f").st_size == 1
    assert mb.getattr(node).mode == stat.S_IFREG | 0o600
    assert stat.S_IMODE(os.lstat(export / "f").st_mode) == 0o600
    mb.close(f)
    mb.mknod(root, "fifo", stat.S_IFIFO | 0o600, 0, None)
    with pytest.raises(OSError) as e:
        mb.setattr(walk(mb, "fifo"), SetAttr(size=0))
    assert e.value.errno == errno.EINVAL


def test_no_owner_shows_host_ids(mb: MappedBackend, export: Path) -> None:
    root = mb.root()
    node, f = mb.create(root, "f", os.O_RDWR, 0o751, None)
    mb.close(f)
    a = mb.getattr(node)
    assert (a.uid, a.gid) == (ME, MY_GID)
    assert a.mode == stat.S_IFREG | 0o751  # the mode is recorded all the same
    x = host_xattrs(export / "f")
    assert "user.p9share.uid" not in x and "user.p9share.gid" not in x
    # an owner with the host's default group (-1) records only the uid
    node, f = mb.create(root, "g", os.O_RDWR, 0o600, (77, -1))
    mb.close(f)
    a = mb.getattr(node)
    assert (a.uid, a.gid) == (77, MY_GID)
    # plain host files show host values throughout
    (export / "host").write_text("x")
    os.chmod(export / "host", 0o604)
    a = mb.getattr(walk(mb, "host"))
    assert (a.uid, a.gid, a.mode) == (ME, MY_GID, stat.S_IFREG | 0o604)


def test_existing_file_opens_without_losing_its_attributes(mb: MappedBackend, export: Path) -> None:
    root = mb.root()
    _node, f = mb.create(root, "f", os.O_RDWR, 0o640, GUEST)
    mb.write(f, 0, b"abc")
    mb.close(f)
    node2, f2 = mb.create(root, "f", os.O_RDWR, 0o777, (1, 1))  # no O_EXCL: opens it
    assert mb.read(f2, 0, 10) == b"abc"
    a = mb.getattr(node2)
    assert (a.uid, a.gid, a.mode) == (*GUEST, stat.S_IFREG | 0o640)
    mb.close(f2)
    mb.mkdir(root, "d", 0o755, None)
    with pytest.raises(OSError) as e:
        mb.create(root, "d", os.O_RDONLY, 0o600, None)
    assert e.value.errno == errno.EISDIR


def test_link_rename_remove_delegate(mb: MappedBackend, export: Path) -> None:
    root = mb.root()
    mb.mknod(root, "c", stat.S_IFCHR | 0o600, os.makedev(1, 1), GUEST)
    c_node = walk(mb, "c")
    mb.link(root, c_node, "c2")
    mb.rename(root, "c2", root, "c3")
    a = mb.getattr(walk(mb, "c3"))
    assert stat.S_ISCHR(a.mode) and a.nlink == 2  # a hard link shares the xattrs
    mb.remove(c_node)
    mb.unlink(root, "c3", False)
    assert sorted(os.listdir(export)) == []


# --------------------------------------------------------------- xattrs ---
def test_reserved_xattrs_hidden_and_refused(mb: MappedBackend, export: Path) -> None:
    assert "user.p9share." in RESERVED_XATTR_PREFIXES
    assert "user.virtfs." in RESERVED_XATTR_PREFIXES
    root = mb.root()
    node, f = mb.create(root, "f", os.O_RDWR, 0o644, GUEST)
    mb.close(f)
    os.setxattr(export / "f", "user.virtfs.uid", struct.pack("<I", 0))  # a planted one
    mb.xattr_set(node, "user.mine", b"v", XATTR_CREATE)
    assert mb.xattr_list(node) == ["user.mine"]
    for name in ("user.p9share.uid", "user.p9share.mode", "user.virtfs.uid", "user.p9share.x"):
        with pytest.raises(OSError) as e:
            mb.xattr_get(node, name)
        assert e.value.errno == errno.ENODATA
        with pytest.raises(OSError) as e:
            mb.xattr_set(node, name, struct.pack("<I", 0), 0)
        assert e.value.errno == errno.EPERM
        with pytest.raises(OSError) as e:
            mb.xattr_remove(node, name)
        assert e.value.errno == errno.EPERM
    assert mb.xattr_get(node, "user.mine") == b"v"
    assert (mb.getattr(node).uid, mb.getattr(node).gid) == GUEST  # untouched
    mb.xattr_remove(node, "user.mine")
    assert mb.xattr_list(node) == []


def test_posix_acls_are_stored_not_applied(mb: MappedBackend, export: Path) -> None:
    root = mb.root()
    node, f = mb.create(root, "f", os.O_RDWR, 0o644, None)
    mb.close(f)
    acl = b"\x02\x00\x00\x00" + b"\x01\x00\x06\x00\xff\xff\xff\xff"  # any bytes: only stored
    mb.xattr_set(node, "system.posix_acl_access", acl, 0)
    x = host_xattrs(export / "f")
    assert x["user.p9share.system.posix_acl_access"] == acl
    assert "system.posix_acl_access" not in x
    assert mb.xattr_list(node) == ["system.posix_acl_access"]
    assert mb.xattr_get(node, "system.posix_acl_access") == acl
    mb.xattr_remove(node, "system.posix_acl_access")
    assert mb.xattr_list(node) == []


# -------------------------------------------------------- virtfs layout ---
def test_virtfs_layout_reads_a_qemu_share(vb: MappedBackend, export: Path) -> None:
    # Exactly what QEMU's local_set_xattrat writes: le32 uid/gid/mode, le64 rdev.
    p = export / "dev"
    p.touch(mode=0o600)
    os.setxattr(p, "user.virtfs.uid", struct.pack("<I", 1000))
    os.setxattr(p, "user.virtfs.gid", struct.pack("<I", 100))
    os.setxattr(p, "user.virtfs.mode", struct.pack("<I", stat.S_IFBLK | 0o660))
    os.setxattr(p, "user.virtfs.rdev", struct.pack("<Q", os.makedev(259, 7)))
    s = export / "link"
    s.write_bytes(b"/usr/bin/python3")
    os.setxattr(s, "user.virtfs.mode", struct.pack("<I", stat.S_IFLNK | 0o777))
    os.setxattr(s, "user.virtfs.uid", b"\x01\x02")  # wrong size: ignored
    a = vb.getattr(walk(vb, "dev"))
    assert (a.uid, a.gid, a.mode, a.rdev) == (1000, 100, stat.S_IFBLK | 0o660, os.makedev(259, 7))
    ln = walk(vb, "link")
    assert vb.readlink(ln) == "/usr/bin/python3" and ln.qid.type == QidType.SYMLINK
    assert vb.getattr(ln).uid == ME
    assert vb.xattr_list(walk(vb, "dev")) == []


def test_virtfs_layout_writes_qemu_bytes(vb: MappedBackend, export: Path) -> None:
    root = vb.root()
    vb.mknod(root, "c", stat.S_IFCHR | 0o620, os.makedev(136, 2), (1000, 5))
    vb.mkdir(root, "d", 0o1777, (0, 0))
    vb.symlink(root, "l", "t", (1000, 1000))
    x = host_xattrs(export / "c")
    assert x == {
        "user.virtfs.uid": b"\xe8\x03\x00\x00",
        "user.virtfs.gid": b"\x05\x00\x00\x00",
        "user.virtfs.mode": struct.pack("<I", 0o020620),
        "user.virtfs.rdev": struct.pack("<Q", os.makedev(136, 2)),
    }
    assert host_xattrs(export / "d")["user.virtfs.mode"] == struct.pack("<I", 0o041777)
    assert host_xattrs(export / "l")["user.virtfs.mode"] == struct.pack("<I", 0o120777)
    vb.setattr(walk(vb, "c"), SetAttr(mode=0o600, uid=1))
    x = host_xattrs(export / "c")
    assert x["user.virtfs.mode"] == struct.pack("<I", 0o020600)
    assert x["user.virtfs.uid"] == struct.pack("<I", 1)
    assert not any(n.startswith("user.p9share.") for n in x)


def test_stored_type_cannot_turn_a_directory_into_a_file(vb: MappedBackend, export: Path) -> None:
    (export / "d").mkdir()
    os.setxattr(export / "d", "user.virtfs.mode", struct.pack("<I", stat.S_IFCHR | 0o600))
    d = walk(vb, "d")
    assert vb.getattr(d).mode == stat.S_IFDIR | 0o600 and d.qid.type == QidType.DIR


# ------------------------------------------------------------------ misc ---
def test_bad_layout_and_foreign_objects(export: Path) -> None:
    with pytest.raises(ValueError):
        MappedBackend(HostBackend(str(export)), "qemu")
    inner = HostBackend(str(export))
    a, b = MappedBackend(inner), MappedBackend(inner)
    with pytest.raises(OSError) as e:
        a.getattr(b.root())
    assert e.value.errno == errno.EBADF
    with pytest.raises(OSError) as e:
        a.getattr(inner.root())
    assert e.value.errno == errno.EBADF
    inner.shutdown()


def test_over_memory_backend() -> None:
    b = MappedBackend(MemoryBackend())
    root = b.root()
    b.mknod(root, "p", stat.S_IFIFO | 0o644, 0, GUEST)
    b.symlink(root, "l", "p", None)
    n = walk(b, "p")
    a = b.getattr(n)
    assert stat.S_ISFIFO(a.mode) and (a.uid, a.gid) == GUEST
    assert stat.S_ISREG(b.inner.getattr(b.inner.walk(b.inner.root(), "p")).mode)
    assert b.readlink(walk(b, "l")) == "p"


def test_concurrent_chmod_and_chown_keep_the_type(mb: MappedBackend, export: Path) -> None:
    root = mb.root()
    mb.mknod(root, "c", stat.S_IFCHR | 0o600, os.makedev(1, 1), GUEST)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            n = walk(mb, "c")
            for j in range(50):
                mb.setattr(n, SetAttr(mode=(i * 50 + j) & 0o777, uid=i))
                assert stat.S_ISCHR(mb.getattr(n).mode)
            mb.release(n)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    a = mb.getattr(walk(mb, "c"))
    assert stat.S_ISCHR(a.mode) and a.uid in range(4)


# ------------------------------------------------------------ live server ---
def test_live_server_mknod_char_device(export: Path, tmp_path: Path) -> None:
    # a mapped export: Owner carries the guest's ids; devices allowed for this client
    policy = Policy(
        {"export": Export("export", str(export), idmap=mapped())},
        {"t": Client("t", (Match(network=ipaddress.ip_network("127.0.0.0/8")),),
                     {"export": Rights(devices=True)})},
    )  # fmt: skip
    srv = Server(policy)  # the default factory wraps mapped exports in MappedBackend
    try:
        srv.listen(parse_address("tcp:127.0.0.1:0"))
        cl = RawClient.connect(str(srv.addresses[0]), timeout=10)
        cl.version()
        cl.attach(0, "", n_uname=1000)
        r = cl.rpc(m.Tmknod(0, "tty9", stat.S_IFCHR | 0o620, 4, 9, 5))
        assert isinstance(r, m.Rmknod) and r.qid.type == QidType.FILE
        cl.walk(0, 1, ["tty9"])
        g = cl.rpc(m.Tgetattr(1, c.GetattrMask.ALL))
        assert isinstance(g, m.Rgetattr)
        assert (g.mode, g.uid, g.gid, g.rdev) == (stat.S_IFCHR | 0o620, 1000, 5, os.makedev(4, 9))
        with pytest.raises(ServerError) as e:
            cl.rpc(m.Tlopen(1, c.L_O_RDONLY))
        assert e.value.errno == errno.EPERM
        with pytest.raises(ServerError) as e:
            cl.rpc(m.Txattrwalk(1, 2, "user.p9share.uid"))
        assert e.value.errno == errno.ENODATA
        cl.rpc(m.Tsymlink(0, "sl", "tty9", 5))
        cl.walk(0, 3, ["sl"])
        rl = cl.rpc(m.Treadlink(3))
        assert isinstance(rl, m.Rreadlink) and rl.target == "tty9"
        cl.close()
    finally:
        srv.stop()
    assert_plain_host_file(export / "tty9")
    assert_plain_host_file(export / "sl", 4)


def test_readonly_export_shows_but_never_writes(export: Path) -> None:
    p = export / "dev"
    p.touch(mode=0o600)
    os.setxattr(p, "user.p9share.mode", struct.pack("<I", stat.S_IFCHR | 0o666))
    b = MappedBackend(HostBackend(str(export), readonly=True))
    try:
        n = walk(b, "dev")
        assert b.getattr(n).mode == stat.S_IFCHR | 0o666
        for call in (
            lambda: b.setattr(n, SetAttr(mode=0o600)),
            lambda: b.mknod(b.root(), "x", stat.S_IFIFO | 0o600, 0, None),
            lambda: b.mkdir(b.root(), "y", 0o755, None),
            lambda: b.symlink(b.root(), "z", "t", None),
        ):
            with pytest.raises(OSError) as e:
                call()
            assert e.value.errno == errno.EROFS
        assert sorted(os.listdir(export)) == ["dev"]
        assert host_xattrs(p) == {"user.p9share.mode": struct.pack("<I", stat.S_IFCHR | 0o666)}
    finally:
        b.shutdown()


def test_unset_ids_record_nothing(mb: MappedBackend, export: Path) -> None:
    mb.mknod(mb.root(), "n", stat.S_IFREG | 0o600, 0, (0xFFFFFFFF, 0xFFFFFFFF))
    x = host_xattrs(export / "n")
    assert "user.p9share.uid" not in x and "user.p9share.gid" not in x
    n = walk(mb, "n")
    mb.setattr(n, SetAttr(uid=0xFFFFFFFF, gid=3))
    a = mb.getattr(n)
    assert (a.uid, a.gid) == (ME, 3)
