"""The high-level API against live servers: p9share over a real temp dir
and Debian's diod. Every check looks at the host directory too."""

from __future__ import annotations

import errno
import io
import os
import stat
import threading

import pytest

from p9share.client import FS
from p9share.protocol import constants as c

from .conftest import Target


def test_write_read_listdir(fs: FS, target: Target) -> None:
    fs.write_bytes("/a.bin", b"\x00\x01hello")
    assert (target.root / "a.bin").read_bytes() == b"\x00\x01hello"
    assert fs.read_bytes("a.bin") == b"\x00\x01hello"
    (target.root / "host.txt").write_text("from host")
    assert sorted(fs.listdir("/")) == ["a.bin", "host.txt"]
    assert fs.read_text("/host.txt") == "from host"


def test_big_file_is_split_and_pipelined(fs: FS, target: Target) -> None:
    data = os.urandom(5 * fs.msize + 12345)
    assert fs.write_bytes("/big", data) == len(data)
    assert (target.root / "big").read_bytes() == data
    assert fs.read_bytes("/big") == data
    with fs.open("/big", "rb") as f:
        f.seek(fs.msize * 2 + 7)
        assert f.read(fs.msize * 2) == data[fs.msize * 2 + 7 : fs.msize * 4 + 7]


def test_scandir_stat_and_walk(fs: FS, target: Target) -> None:
    (target.root / "d" / "e").mkdir(parents=True)
    (target.root / "d" / "f.txt").write_bytes(b"12345")
    os.symlink("f.txt", target.root / "d" / "ln")
    entries = {e.name: e for e in fs.scandir("/d")}
    assert set(entries) == {"e", "f.txt", "ln"}
    assert entries["e"].is_dir() and not entries["e"].is_file()
    assert entries["f.txt"].is_file() and entries["f.txt"].path == "/d/f.txt"
    assert entries["ln"].is_symlink() and entries["ln"].is_file()
    assert not entries["ln"].is_file(follow_symlinks=False)
    assert entries["f.txt"].inode() == os.stat(target.root / "d" / "f.txt").st_ino
    st = fs.stat("/d/f.txt")
    host = os.stat(target.root / "d" / "f.txt")
    assert (st.st_size, st.st_mode, st.st_ino, st.st_nlink) == (5, host.st_mode, host.st_ino, 1)
    assert st.st_mtime_ns == host.st_mtime_ns
    assert stat.S_ISLNK(fs.lstat("/d/ln").st_mode)
    assert fs.stat("/d/ln").st_size == 5  # followed
    assert stat.S_ISDIR(fs.stat("/").st_mode)
    assert list(fs.walk("/")) == [("/", ["d"], []), ("/d", ["e"], ["f.txt", "ln"]),
                                  ("/d/e", [], [])] or sorted(
        (p, sorted(ds), sorted(fs_)) for p, ds, fs_ in fs.walk("/")
    ) == [("/", ["d"], []), ("/d", ["e"], ["f.txt", "ln"]), ("/d/e", [], [])]  # fmt: skip
    assert fs.exists("/d/e") and fs.isdir("/d/e") and fs.isfile("/d/f.txt")
    assert not fs.exists("/nope") and not fs.isdir("/d/f.txt")


def test_mkdir_makedirs_rmdir_rmtree(fs: FS, target: Target) -> None:
    fs.mkdir("/m", 0o750)
    assert stat.S_IMODE(os.stat(target.root / "m").st_mode) == 0o750 & ~_umask()
    fs.makedirs("/x/y/z")
    assert (target.root / "x" / "y" / "z").is_dir()
    fs.makedirs("/x/y/z", exist_ok=True)
    with pytest.raises(FileExistsError):
        fs.makedirs("/x/y/z")
    with pytest.raises(FileExistsError):
        fs.mkdir("/m")
    fs.write_bytes("/x/y/z/f", b"1")
    with pytest.raises(OSError) as e:
        fs.rmdir("/x")
    assert e.value.errno in (errno.ENOTEMPTY, errno.EEXIST)
    fs.rmtree("/x")
    assert not (target.root / "x").exists()
    fs.rmdir("/m")
    assert not (target.root / "m").exists()


def test_remove_rename_link_symlink(fs: FS, target: Target) -> None:
    fs.write_bytes("/f", b"data")
    fs.rename("/f", "/g")
    assert not (target.root / "f").exists() and (target.root / "g").read_bytes() == b"data"
    fs.mkdir("/sub")
    fs.rename("/g", "/sub/h")
    assert (target.root / "sub" / "h").exists()
    fs.link("/sub/h", "/hard")
    assert os.stat(target.root / "hard").st_ino == os.stat(target.root / "sub" / "h").st_ino
    assert fs.stat("/hard").st_nlink == 2
    fs.symlink("sub/h", "/sym")
    assert os.readlink(target.root / "sym") == "sub/h"
    assert fs.readlink("/sym") == "sub/h"
    with fs.open("/sym") as f:
        assert f.read() == "data"
    fs.remove("/sym")
    fs.unlink("/hard")
    assert sorted(os.listdir(target.root)) == ["sub"]
    with pytest.raises(IsADirectoryError if target.kind == "p9share" else OSError):
        fs.remove("/sub")


def test_chmod_chown_utime_truncate(fs: FS, target: Target) -> None:
    fs.write_bytes("/f", b"0123456789")
    fs.chmod("/f", 0o640)
    assert stat.S_IMODE(os.stat(target.root / "f").st_mode) == 0o640
    fs.utime("/f", (1_000_000, 2_000_000))
    host = os.stat(target.root / "f")
    assert (host.st_atime, host.st_mtime) == (1_000_000, 2_000_000)
    fs.utime("/f", ns=(5_000_000_123, 6_000_000_456))
    assert os.stat(target.root / "f").st_mtime_ns == 6_000_000_456
    fs.utime("/f")  # now
    assert os.stat(target.root / "f").st_mtime > 2_000_000
    fs.truncate("/f", 4)
    assert (target.root / "f").read_bytes() == b"0123"
    me = os.stat(target.root / "f")
    fs.chown("/f", me.st_uid, me.st_gid)  # to ourselves: allowed everywhere
    fs.chown("/f", -1, -1)
    assert os.stat(target.root / "f").st_uid == me.st_uid


def test_xattrs(fs: FS, target: Target) -> None:
    fs.write_bytes("/f", b"")
    fs.setxattr("/f", "user.color", b"blue")
    assert os.getxattr(target.root / "f", "user.color") == b"blue"
    assert fs.getxattr("/f", "user.color") == b"blue"
    assert "user.color" in fs.listxattr("/f")
    with pytest.raises(FileExistsError):
        fs.setxattr("/f", "user.color", b"red", os.XATTR_CREATE)
    fs.setxattr("/f", "user.color", b"red", os.XATTR_REPLACE)
    assert fs.getxattr("/f", "user.color") == b"red"
    big = os.urandom(3000)
    fs.setxattr("/f", "user.big", big)
    assert fs.getxattr("/f", "user.big") == big
    fs.removexattr("/f", "user.color")
    assert "user.color" not in os.listxattr(target.root / "f")
    with pytest.raises(OSError) as e:
        fs.getxattr("/f", "user.color")
    assert e.value.errno == errno.ENODATA


def test_statfs(fs: FS, target: Target) -> None:
    st = fs.statfs("/")
    host = os.statvfs(target.root)
    assert st.f_bsize == host.f_bsize and st.f_blocks == host.f_blocks
    assert st.f_namemax == 255


def test_byte_range_locks(fs: FS, target: Target) -> None:
    fs.write_bytes("/f", b"x" * 100)
    with fs.open("/f", "r+b", buffering=0) as f:
        assert f.lock(c.LOCK_TYPE_WRLCK, 0, 10)
        assert f.lock(c.LOCK_TYPE_UNLCK, 0, 10)
        assert f.lock(c.LOCK_TYPE_RDLCK, 20, 5, wait=True)
        assert f.getlock(c.LOCK_TYPE_WRLCK, 0, 10) is None
        assert f.lock(c.LOCK_TYPE_UNLCK)


def test_errors_carry_errno_and_path(fs: FS) -> None:
    with pytest.raises(FileNotFoundError) as e:
        fs.stat("/missing/file")
    assert e.value.errno == errno.ENOENT and e.value.filename == "/missing/file"
    with pytest.raises(FileNotFoundError) as e:
        fs.open("/nope", "rb")
    assert e.value.filename == "/nope"
    fs.write_bytes("/f", b"")
    with pytest.raises(NotADirectoryError) as e2:
        fs.listdir("/f")
    assert e2.value.errno == errno.ENOTDIR
    with pytest.raises(FileExistsError) as e3:
        fs.open("/f", "xb")
    assert e3.value.filename == "/f"
    with pytest.raises(IsADirectoryError):
        fs.open("/", "wb")
    with pytest.raises(FileNotFoundError) as e4:
        fs.rename("/nope", "/other")
    assert (e4.value.filename, e4.value.filename2) == ("/nope", "/other")


def test_many_threads_share_one_connection(fs: FS, target: Target) -> None:
    for i in range(8):
        (target.root / f"f{i}").write_bytes(bytes([i]) * 50_000)
    results: dict[int, bytes] = {}

    def worker(i: int) -> None:
        results[i] = fs.read_bytes(f"/f{i}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == {i: bytes([i]) * 50_000 for i in range(8)}
    fs.call(fs.aio.client.quiesce())
    assert len(fs.aio.client.fids) == 1  # only the root is left: nothing leaked


# ----------------------------------------------------------- file objects --
def test_file_readinto_seek_tell(fs: FS, target: Target) -> None:
    (target.root / "f").write_bytes(bytes(range(256)))
    with fs.open("/f", "rb", buffering=0) as raw:
        assert isinstance(raw, io.RawIOBase)
        buf = bytearray(16)
        assert raw.readinto(buf) == 16 and buf == bytes(range(16))
        assert raw.tell() == 16
        assert raw.seek(-6, io.SEEK_END) == 250
        assert raw.read() == bytes(range(250, 256))
        assert raw.read(10) == b""
        raw.seek(100)
        raw.seek(5, io.SEEK_CUR)
        assert raw.read(2) == bytes([105, 106])
        assert raw.stat().st_size == 256
        with pytest.raises(io.UnsupportedOperation):
            raw.write(b"x")
        with pytest.raises(io.UnsupportedOperation):
            raw.fileno()
    assert raw.closed
    with pytest.raises(ValueError):
        raw.read(1)


def test_buffered_and_text_wrappers(fs: FS, target: Target) -> None:
    with fs.open("/t.txt", "w", encoding="utf-8") as f:
        assert isinstance(f, io.TextIOWrapper)
        f.write("héllo\nwörld\n")
    assert (target.root / "t.txt").read_text("utf-8") == "héllo\nwörld\n"
    with fs.open("/t.txt") as f:
        assert [line for line in f] == ["héllo\n", "wörld\n"]
    with fs.open("/t.txt", "rb") as b:
        assert isinstance(b, io.BufferedReader)
        assert b.peek(1)[:1] == b"h"
        assert b.readline() == "héllo\n".encode()
    raw = fs.open("/t.txt", "rb", buffering=0)
    reader = io.BufferedReader(raw, 4)  # a wrapper made by hand works too
    assert reader.read(3) == b"h\xc3\xa9"
    reader.close()
    with fs.open("/t.txt", "r+b") as rw:
        assert isinstance(rw, io.BufferedRandom)
        rw.seek(1)
        rw.write(b"EE")
        rw.seek(0)
        assert rw.read(3) == b"hEE"


def test_append_truncate_and_exclusive(fs: FS, target: Target) -> None:
    (target.root / "log").write_bytes(b"one\n")
    with fs.open("/log", "ab") as f:
        assert f.tell() == 4
        (target.root / "log").write_bytes(b"one\ntwo\n")  # grows behind our back
        f.write(b"three\n")
        f.flush()
    assert (target.root / "log").read_bytes() == b"one\ntwo\nthree\n"
    with fs.open("/log", "r+b", buffering=0) as f:
        assert f.truncate(3) == 3
        f.seek(0, io.SEEK_END)
        assert f.tell() == 3
    assert (target.root / "log").read_bytes() == b"one"
    with fs.open("/log", "w") as t:
        t.write("new")
    assert (target.root / "log").read_bytes() == b"new"
    with fs.open("/fresh", "x") as t:
        t.write("x")
    assert (target.root / "fresh").read_text() == "x"
    with pytest.raises(ValueError):
        fs.open("/log", "rw")
    with pytest.raises(ValueError):
        fs.open("/log", "r", buffering=0)


def test_create_mode_is_applied(fs: FS, target: Target) -> None:
    with fs.open("/p", "wb", perm=0o600) as f:
        f.write(b"x")
    assert stat.S_IMODE(os.stat(target.root / "p").st_mode) == 0o600


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
