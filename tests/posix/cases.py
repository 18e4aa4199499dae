"""The POSIX semantics cases, each a function of a fresh empty directory.

A case raises (AssertionError or OSError) when the file system differs from
what POSIX and Linux promise. The same names are implemented by the static
guest helper p9posix (src/p9share/vmlab/guest/p9posix.c) for the kernel v9fs
target; test_case_names checks the two lists are identical.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import mmap
import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

CaseFn = Callable[[Path], None]
CASES: dict[str, CaseFn] = {}


def case(fn: CaseFn) -> CaseFn:
    CASES[fn.__name__.removeprefix("case_")] = fn
    return fn


def expect_errno(err: int, fn: Callable[[], object]) -> None:
    try:
        fn()
    except OSError as e:
        assert e.errno == err, f"expected {errno.errorcode[err]}, got {e!r}"
    else:
        raise AssertionError(f"expected {errno.errorcode[err]}, it succeeded")


def write(path: Path, data: bytes, flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC) -> None:
    fd = os.open(path, flags, 0o644)
    try:
        assert os.write(fd, data) == len(data)
    finally:
        os.close(fd)


@case
def case_create_read_write(d: Path) -> None:
    f = d / "f"
    write(f, b"hello world")
    assert f.read_bytes() == b"hello world"
    fd = os.open(f, os.O_RDWR)
    try:
        os.pwrite(fd, b"WORLD", 6)
        assert os.pread(fd, 100, 0) == b"hello WORLD"
        assert os.fstat(fd).st_size == 11
    finally:
        os.close(fd)
    assert stat.S_ISREG(os.stat(f).st_mode)


@case
def case_truncate(d: Path) -> None:
    f = d / "f"
    write(f, b"0123456789")
    os.truncate(f, 4)
    assert f.read_bytes() == b"0123"
    os.truncate(f, 8)
    assert f.read_bytes() == b"0123\0\0\0\0"
    fd = os.open(f, os.O_RDWR)
    try:
        os.ftruncate(fd, 2)
        assert os.fstat(fd).st_size == 2
    finally:
        os.close(fd)
    write(f, b"x", os.O_WRONLY | os.O_TRUNC)
    assert f.read_bytes() == b"x"


@case
def case_sparse_hole(d: Path) -> None:
    f = d / "f"
    fd = os.open(f, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.lseek(fd, 1 << 20, os.SEEK_SET)
        os.write(fd, b"end")
        assert os.fstat(fd).st_size == (1 << 20) + 3
        assert os.pread(fd, 16, 4096) == b"\0" * 16
        assert os.pread(fd, 3, 1 << 20) == b"end"
        assert os.pread(fd, 10, (1 << 20) + 3) == b""
    finally:
        os.close(fd)


@case
def case_o_excl(d: Path) -> None:
    f = d / "f"
    os.close(os.open(f, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    expect_errno(errno.EEXIST, lambda: os.open(f, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o600


@case
def case_o_append(d: Path) -> None:
    f = d / "f"
    write(f, b"abc")
    a = os.open(f, os.O_WRONLY | os.O_APPEND)
    b = os.open(f, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(a, b"1")
        os.write(b, b"2")
        os.lseek(a, 0, os.SEEK_SET)
        os.write(a, b"3")
    finally:
        os.close(a)
        os.close(b)
    assert f.read_bytes() == b"abc123"


@case
def case_rename_over_file(d: Path) -> None:
    write(d / "a", b"A")
    write(d / "b", b"B")
    fd = os.open(d / "b", os.O_RDONLY)
    try:
        os.rename(d / "a", d / "b")
        assert (d / "b").read_bytes() == b"A"
        assert not (d / "a").exists()
        assert os.pread(fd, 10, 0) == b"B"  # the replaced file lives on while open
    finally:
        os.close(fd)


@case
def case_rename_dir(d: Path) -> None:
    (d / "x" / "sub").mkdir(parents=True)
    write(d / "x" / "sub" / "f", b"deep")
    (d / "empty").mkdir()
    os.rename(d / "x", d / "y")
    assert (d / "y" / "sub" / "f").read_bytes() == b"deep"
    os.rename(d / "y", d / "empty")  # over an empty directory
    assert (d / "empty" / "sub" / "f").read_bytes() == b"deep"
    assert not (d / "y").exists()


@case
def case_rename_into_itself(d: Path) -> None:
    (d / "a" / "b").mkdir(parents=True)
    expect_errno(errno.EINVAL, lambda: os.rename(d / "a", d / "a" / "b" / "c"))


@case
def case_rename_dir_nonempty_target(d: Path) -> None:
    (d / "a").mkdir()
    (d / "b").mkdir()
    write(d / "b" / "f", b"")
    expect_errno(errno.ENOTEMPTY, lambda: os.rename(d / "a", d / "b"))
    write(d / "file", b"")
    expect_errno(errno.ENOTDIR, lambda: os.rename(d / "a", d / "file"))
    expect_errno(errno.EISDIR, lambda: os.rename(d / "file", d / "a"))


@case
def case_unlink_open_file(d: Path) -> None:
    f = d / "f"
    write(f, b"still here")
    fd = os.open(f, os.O_RDWR)
    try:
        os.unlink(f)
        assert not f.exists()
        assert os.pread(fd, 100, 0) == b"still here"
        os.pwrite(fd, b"S", 0)
        assert os.pread(fd, 100, 0) == b"Still here"
        assert os.fstat(fd).st_nlink == 0
    finally:
        os.close(fd)
    assert os.listdir(d) == []


@case
def case_hardlink_nlink(d: Path) -> None:
    write(d / "a", b"data")
    os.link(d / "a", d / "b")
    sa, sb = os.stat(d / "a"), os.stat(d / "b")
    assert sa.st_ino == sb.st_ino and sa.st_nlink == 2, (sa, sb)
    write(d / "b", b"more", os.O_WRONLY | os.O_APPEND)
    assert (d / "a").read_bytes() == b"datamore"
    os.unlink(d / "a")
    assert os.stat(d / "b").st_nlink == 1
    expect_errno(errno.EEXIST, lambda: os.link(d / "b", d / "b"))


@case
def case_symlink_relative(d: Path) -> None:
    (d / "dir").mkdir()
    write(d / "dir" / "t", b"target")
    os.symlink("dir/t", d / "l")
    assert os.readlink(d / "l") == "dir/t"
    assert (d / "l").read_bytes() == b"target"
    assert stat.S_ISLNK(os.lstat(d / "l").st_mode)
    assert os.lstat(d / "l").st_size == len("dir/t")
    os.symlink("nowhere", d / "dangling")
    expect_errno(errno.ENOENT, lambda: os.stat(d / "dangling"))
    assert os.lstat(d / "dangling")


@case
def case_symlink_absolute(d: Path) -> None:
    write(d / "t", b"abs")
    os.symlink(str(d / "t"), d / "l")
    assert os.readlink(d / "l") == str(d / "t")
    assert (d / "l").read_bytes() == b"abs"
    os.symlink("loop", d / "loop")
    expect_errno(errno.ELOOP, lambda: os.stat(d / "loop"))


@case
def case_chmod(d: Path) -> None:
    write(d / "f", b"")
    for mode in (0o600, 0o755, 0o1777, 0o000):
        os.chmod(d / "f", mode)
        assert stat.S_IMODE(os.stat(d / "f").st_mode) == mode, oct(mode)
    (d / "dir").mkdir()
    os.chmod(d / "dir", 0o750)
    assert stat.S_IMODE(os.stat(d / "dir").st_mode) == 0o750


@case
def case_chmod_setid(d: Path) -> None:
    write(d / "f", b"")
    for mode in (0o4755, 0o2755):
        os.chmod(d / "f", mode)
        assert stat.S_IMODE(os.stat(d / "f").st_mode) == mode, oct(mode)
    (d / "dir").mkdir()
    os.chmod(d / "dir", 0o2750)
    assert stat.S_IMODE(os.stat(d / "dir").st_mode) == 0o2750


@case
def case_chown(d: Path) -> None:
    if os.geteuid() != 0:
        return
    write(d / "f", b"")
    os.chown(d / "f", 1234, 5678)
    st = os.stat(d / "f")
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    os.symlink("f", d / "l")
    os.lchown(d / "l", 42, 43)
    assert (os.lstat(d / "l").st_uid, os.stat(d / "l").st_uid) == (42, 1234)


@case
def case_utimes_ns(d: Path) -> None:
    write(d / "f", b"")
    os.utime(d / "f", ns=(1_000_000_123_456_789, 1_100_000_987_654_321))
    st = os.stat(d / "f")
    assert st.st_atime_ns == 1_000_000_123_456_789, st.st_atime_ns
    assert st.st_mtime_ns == 1_100_000_987_654_321, st.st_mtime_ns
    os.symlink("f", d / "l")
    os.utime(d / "l", ns=(5 * 10**9, 6 * 10**9), follow_symlinks=False)
    assert os.lstat(d / "l").st_mtime_ns == 6 * 10**9
    assert os.stat(d / "f").st_mtime_ns == 1_100_000_987_654_321


@case
def case_utime_now(d: Path) -> None:
    write(d / "f", b"")
    os.utime(d / "f", ns=(10**9, 10**9))
    before = time.time_ns()
    os.utime(d / "f")  # UTIME_NOW for both
    st = os.stat(d / "f")
    assert st.st_mtime_ns >= before - 10**9 and st.st_atime_ns >= before - 10**9, st


@case
def case_mkdir_errors(d: Path) -> None:
    (d / "a").mkdir(mode=0o750)
    assert stat.S_IMODE(os.stat(d / "a").st_mode) == 0o750 & ~_umask()
    expect_errno(errno.EEXIST, lambda: os.mkdir(d / "a"))
    write(d / "f", b"")
    expect_errno(errno.EEXIST, lambda: os.mkdir(d / "f"))
    expect_errno(errno.ENOENT, lambda: os.mkdir(d / "no" / "x"))
    expect_errno(errno.ENOTDIR, lambda: os.mkdir(d / "f" / "x"))
    assert os.stat(d / "a").st_nlink == 2


@case
def case_rmdir_errors(d: Path) -> None:
    (d / "a").mkdir()
    write(d / "a" / "f", b"")
    expect_errno(errno.ENOTEMPTY, lambda: os.rmdir(d / "a"))
    expect_errno(errno.ENOTDIR, lambda: os.rmdir(d / "a" / "f"))
    expect_errno(errno.ENOENT, lambda: os.rmdir(d / "none"))
    expect_errno(errno.EISDIR, lambda: os.unlink(d / "a"))
    os.unlink(d / "a" / "f")
    os.rmdir(d / "a")
    assert not (d / "a").exists()


@case
def case_readdir_1000(d: Path) -> None:
    names = {f"entry-{i:04d}-{'x' * (i % 40)}" for i in range(1000)}
    for n in names:
        os.close(os.open(d / n, os.O_WRONLY | os.O_CREAT, 0o644))
    (d / "sub").mkdir()
    listed = os.listdir(d)
    assert len(listed) == len(set(listed)) == 1001
    assert set(listed) == names | {"sub"}
    with os.scandir(d) as it:
        kinds = {e.name: e.is_dir(follow_symlinks=False) for e in it}
    assert kinds["sub"] and not kinds["entry-0000-"]


@case
def case_readdir_while_modifying(d: Path) -> None:
    keep = {f"keep-{i:03d}" for i in range(300)}
    for n in keep:
        os.close(os.open(d / n, os.O_WRONLY | os.O_CREAT, 0o644))
    for i in range(100):
        os.close(os.open(d / f"gone-{i:03d}", os.O_WRONLY | os.O_CREAT, 0o644))
    seen: list[str] = []
    with os.scandir(d) as it:
        for i, e in enumerate(it):
            seen.append(e.name)
            if i == 10:  # delete and add while the listing is in progress
                for j in range(100):
                    os.unlink(d / f"gone-{j:03d}")
                    os.close(os.open(d / f"new-{j:03d}", os.O_WRONLY | os.O_CREAT, 0o644))
    assert len(seen) == len(set(seen)), "an entry was listed twice"
    assert keep <= set(seen), f"entries skipped: {sorted(keep - set(seen))[:5]}"


_LOCKER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
if sys.argv[2] == "fcntl":
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 0)
else:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
print("locked", flush=True)
sys.stdin.read()
"""


def _lock_contention(d: Path, kind: str) -> None:
    f = d / "f"
    write(f, b"x" * 100)
    child = subprocess.Popen(
        [sys.executable, "-c", _LOCKER, str(f), kind],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "locked"
        fd = os.open(f, os.O_RDWR)
        try:
            if kind == "fcntl":
                expect_errno(
                    errno.EAGAIN, lambda: fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 5, 2)
                )
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 50)  # a free range
            else:
                expect_errno(errno.EAGAIN, lambda: fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB))
            child.communicate("", timeout=10)
            # the holder is gone: the lock is free
            if kind == "fcntl":
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 5, 2)
            else:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(5)


@case
def case_fcntl_lock(d: Path) -> None:
    _lock_contention(d, "fcntl")


@case
def case_flock(d: Path) -> None:
    _lock_contention(d, "flock")


@case
def case_xattr_user(d: Path) -> None:
    f = d / "f"
    write(f, b"")
    os.setxattr(f, "user.color", b"blue")
    assert os.getxattr(f, "user.color") == b"blue"
    os.setxattr(f, "user.shape", b"round")
    assert {"user.color", "user.shape"} <= set(os.listxattr(f))
    expect_errno(errno.EEXIST, lambda: os.setxattr(f, "user.color", b"x", os.XATTR_CREATE))
    expect_errno(errno.ENODATA, lambda: os.setxattr(f, "user.none", b"x", os.XATTR_REPLACE))
    os.removexattr(f, "user.color")
    expect_errno(errno.ENODATA, lambda: os.getxattr(f, "user.color"))
    big = bytes(range(256)) * 2
    os.setxattr(f, "user.big", big)
    assert os.getxattr(f, "user.big") == big


@case
def case_xattr_empty_value(d: Path) -> None:
    write(d / "f", b"")
    os.setxattr(d / "f", "user.empty", b"")
    assert os.getxattr(d / "f", "user.empty") == b""
    assert "user.empty" in os.listxattr(d / "f")


@case
def case_statvfs(d: Path) -> None:
    s = os.statvfs(d)
    assert s.f_bsize > 0 and s.f_frsize > 0
    assert s.f_blocks > 0 and s.f_bavail <= s.f_bfree <= s.f_blocks, s
    assert s.f_namemax >= 255


@case
def case_large_file(d: Path) -> None:
    f = d / "big"
    block = hashlib.sha256(b"p9share").digest() * 32768  # 1 MiB, not all one byte
    h = hashlib.sha256()
    with open(f, "wb") as out:
        for i in range(64):
            chunk = bytes([i]) + block[1:]
            out.write(chunk)
            h.update(chunk)
    assert os.stat(f).st_size == 64 << 20
    h2 = hashlib.sha256()
    with open(f, "rb") as src:
        while chunk := src.read(1 << 20):
            h2.update(chunk)
    assert h.digest() == h2.digest()


@case
def case_mmap_shared(d: Path) -> None:
    f = d / "f"
    write(f, b"a" * 8192)
    fd = os.open(f, os.O_RDWR)
    try:
        with mmap.mmap(fd, 8192, mmap.MAP_SHARED) as mm:
            assert mm[:4] == b"aaaa"
            mm[4096:4100] = b"MMAP"
            mm.flush()
        assert os.pread(fd, 4, 4096) == b"MMAP"
    finally:
        os.close(fd)
    assert f.read_bytes()[4096:4100] == b"MMAP"
    write(f, b"z" * 10, os.O_WRONLY)  # a write() is seen by a new mapping
    fd = os.open(f, os.O_RDONLY)
    try:
        with mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ) as mm:
            assert mm[:11] == b"z" * 10 + b"a"
    finally:
        os.close(fd)


@case
def case_fsync(d: Path) -> None:
    fd = os.open(d / "f", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"durable")
        os.fsync(fd)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    assert (d / "f").read_bytes() == b"durable"


@case
def case_errno_enoent(d: Path) -> None:
    expect_errno(errno.ENOENT, lambda: os.stat(d / "none"))
    expect_errno(errno.ENOENT, lambda: os.open(d / "none", os.O_RDONLY))
    expect_errno(errno.ENOENT, lambda: os.unlink(d / "none"))
    expect_errno(errno.ENOENT, lambda: os.rename(d / "none", d / "other"))
    expect_errno(errno.ENOENT, lambda: os.readlink(d / "none"))


@case
def case_errno_eisdir(d: Path) -> None:
    (d / "dir").mkdir()
    expect_errno(errno.EISDIR, lambda: os.open(d / "dir", os.O_WRONLY))
    expect_errno(errno.EISDIR, lambda: os.open(d / "dir", os.O_RDWR))
    fd = os.open(d / "dir", os.O_RDONLY)
    try:
        expect_errno(errno.EISDIR, lambda: os.read(fd, 10))
    finally:
        os.close(fd)


@case
def case_errno_enotdir(d: Path) -> None:
    write(d / "f", b"")
    expect_errno(errno.ENOTDIR, lambda: os.stat(d / "f" / "x"))
    expect_errno(errno.ENOTDIR, lambda: os.listdir(d / "f"))
    expect_errno(errno.ENOTDIR, lambda: os.open(d / "f", os.O_RDONLY | os.O_DIRECTORY))


@case
def case_errno_enametoolong(d: Path) -> None:
    long = "n" * 256
    expect_errno(errno.ENAMETOOLONG, lambda: os.open(d / long, os.O_WRONLY | os.O_CREAT, 0o644))
    expect_errno(errno.ENAMETOOLONG, lambda: os.stat(d / long))
    expect_errno(errno.ENAMETOOLONG, lambda: os.mkdir(d / long))
    ok = "n" * 255
    os.close(os.open(d / ok, os.O_WRONLY | os.O_CREAT, 0o644))
    assert os.listdir(d) == [ok]


def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old
