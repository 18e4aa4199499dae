"""A multi-user FUSE mount (--allow-other, mounted and served as root on a
passthrough export): each caller is itself on the server. Every scenario runs
on a local directory (the baseline) and on the mount, as two unprivileged
users (numeric ids, no accounts needed) in forked children."""

from __future__ import annotations

import asyncio
import errno
import os
import pickle
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from p9share.fuse.tree import ROOT_INO, RemoteTree

from .conftest import Target
from .mountlib import FuseSetup

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (setresuid, allow_other)")

A = (60101, 60101)  # uid, gid
B = (60102, 60102)
SHARED_GID = 60110  # A is a member, B is not


def as_user(who: tuple[int, int], fn: Callable[[], Any]) -> Any:
    """fn() in a forked child running as who (A also in SHARED_GID); its
    value, or the errno of the OSError it raised as ("errno", n)."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(rfd)
        try:
            uid, gid = who
            os.setgroups([gid, SHARED_GID] if who == A else [gid])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            try:
                out: Any = fn()
            except OSError as e:
                out = ("errno", e.errno)
            os.write(wfd, pickle.dumps(out))
        finally:
            os._exit(0)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as r:
        data = r.read()
    os.waitpid(pid, 0)
    assert data, "the child died"
    return pickle.loads(data)


def err(n: int) -> tuple[str, int]:
    return ("errno", n)


@pytest.fixture(scope="module")
def multi_setup() -> Iterator[FuseSetup]:
    s = FuseSetup("--allow-other").start()
    yield s
    s.close()


@pytest.fixture(params=["local", "fuse"])
def shared(request: pytest.FixtureRequest) -> Iterator[tuple[Path, Path]]:
    """A sticky, world-writable directory: (as the callers see it, on the host)."""
    if request.param == "local":
        top = Path(tempfile.mkdtemp(prefix="p9multi-"))  # pytest's tmp_path is 0700
        top.chmod(0o755)
        d = top / "shared"
        d.mkdir()
        d.chmod(0o1777)
        yield d, d
        shutil.rmtree(top, ignore_errors=True)
        return
    setup: FuseSetup = request.getfixturevalue("multi_setup")
    target = Target("fuse", setup.mount.mountpoint, setup.export)
    d, host = target.fresh()
    host.chmod(0o1777)
    yield d, host


def test_new_files_belong_to_the_caller(shared: tuple[Path, Path]) -> None:
    d, host = shared

    def make() -> None:
        os.close(os.open(d / "f", os.O_WRONLY | os.O_CREAT, 0o644))
        os.mkdir(d / "dir", 0o755)
        os.symlink("f", d / "ln")
        os.mkfifo(d / "fifo", 0o644)
        with open(d / "dir" / "inner", "w") as f:  # inside its own new directory
            f.write("x")

    assert as_user(A, make) is None
    for name in ("f", "dir", "ln", "fifo", "dir/inner"):
        st = os.lstat(host / name)
        assert (st.st_uid, st.st_gid) == A, name
    # what the caller sees through the mount agrees
    assert as_user(A, lambda: (os.stat(d / "f").st_uid, os.stat(d / "f").st_gid)) == A


def test_owner_may_chmod_chgrp_truncate_others_may_not(shared: tuple[Path, Path]) -> None:
    d, host = shared
    f = d / "f"

    def create() -> None:
        with open(f, "w") as fh:
            fh.write("hello world")

    assert as_user(A, create) is None
    # B, not the owner: refused as a local file system refuses
    assert as_user(B, lambda: os.chmod(f, 0o666)) == err(errno.EPERM)
    assert as_user(B, lambda: os.chown(f, -1, B[1])) == err(errno.EPERM)
    assert as_user(B, lambda: os.truncate(f, 0)) == err(errno.EACCES)
    # A, the owner
    assert as_user(A, lambda: os.chmod(f, 0o600)) is None
    assert as_user(A, lambda: os.chown(f, -1, SHARED_GID)) is None
    assert as_user(A, lambda: os.chown(f, -1, B[1])) == err(errno.EPERM)  # not A's group
    assert as_user(A, lambda: os.truncate(f, 5)) is None
    assert as_user(B, lambda: os.open(f, os.O_RDONLY)) == err(errno.EACCES)  # 0600 now
    st = os.stat(host / "f")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), st.st_size) == (
        A[0], SHARED_GID, 0o600, 5,
    )  # fmt: skip
    # utimes to an explicit time: the owner only
    assert as_user(B, lambda: os.utime(f, (1, 1))) == err(errno.EPERM)
    assert as_user(A, lambda: os.utime(f, (1, 2))) is None
    assert os.stat(host / "f").st_mtime == 2


def test_sticky_directory_rename_and_unlink(shared: tuple[Path, Path]) -> None:
    d, host = shared
    assert as_user(A, lambda: os.close(os.open(d / "a", os.O_CREAT | os.O_WRONLY, 0o644))) is None
    assert as_user(B, lambda: os.close(os.open(d / "b", os.O_CREAT | os.O_WRONLY, 0o644))) is None
    assert as_user(B, lambda: os.rename(d / "a", d / "stolen")) == err(errno.EPERM)
    assert as_user(B, lambda: os.unlink(d / "a")) == err(errno.EPERM)
    assert as_user(A, lambda: os.rename(d / "a", d / "b")) == err(errno.EPERM)  # over B's
    assert as_user(A, lambda: os.rename(d / "a", d / "a2")) is None
    assert as_user(B, lambda: os.unlink(d / "b")) is None
    assert sorted(os.listdir(host)) == ["a2"]
    assert os.stat(host / "a2").st_uid == A[0]


def test_hardlink_of_anothers_file_under_protected_hardlinks(shared: tuple[Path, Path]) -> None:
    try:
        protected = Path("/proc/sys/fs/protected_hardlinks").read_text().strip() == "1"
    except OSError:
        protected = False
    if not protected:
        pytest.skip("fs.protected_hardlinks is off")
    d, _ = shared
    assert as_user(A, lambda: os.close(os.open(d / "a", os.O_CREAT | os.O_WRONLY, 0o600))) is None
    assert as_user(B, lambda: os.link(d / "a", d / "b")) == err(errno.EPERM)
    assert as_user(A, lambda: os.link(d / "a", d / "a-too")) is None


# --------------------------------------------------- RemoteTree's users --
def test_tree_attaches_per_uid_within_a_bound() -> None:
    """Three caller uids on a tree that keeps two: each creates as itself,
    the least recently used idle attach is clunked, and coming back
    re-attaches."""
    from .mountlib import Server

    top = Path(tempfile.mkdtemp(prefix="p9multi-"))
    top.chmod(0o755)
    export = top / "export"
    export.mkdir()
    export.chmod(0o1777)
    server = Server(export, top / "s.sock").start()

    async def main() -> None:
        tree = RemoteTree(server.address, max_users=2)
        await tree.start()
        try:
            uids = [60201, 60202, 60203]
            for uid in uids:
                h, _, _ = await tree.create(ROOT_INO, f"f{uid}", 0o644, os.O_WRONLY, uid, uid)
                tree.release(h.fh)
                assert len(tree.users) <= 2
            assert list(tree.users) == uids[1:]  # 60201 was the least recently used
            for uid in uids:
                assert (os.stat(export / f"f{uid}").st_uid, os.stat(export / f"f{uid}").st_gid) == (
                    uid, uid,
                )  # fmt: skip
            await tree.getattr(ROOT_INO, uids[0])  # back: attached again, 60202 goes
            assert list(tree.users) == [uids[2], uids[0]]
            # the mounter's own identity is no extra attach
            await tree.mkdir(ROOT_INO, "mine", 0o755, os.getgid())
            assert os.stat(export / "mine").st_uid == os.getuid()
        finally:
            await tree.close()

    try:
        asyncio.run(asyncio.wait_for(main(), 30))
    finally:
        server.stop()
        shutil.rmtree(top, ignore_errors=True)


def test_setgid_directory_gives_its_group(shared: tuple[Path, Path]) -> None:
    """A new entry in a set-gid directory takes the directory's group (and a
    new subdirectory the set-gid bit), whoever creates it."""
    d, host = shared
    (host / "g").mkdir()
    os.chown(host / "g", 0, SHARED_GID)
    (host / "g").chmod(0o2777)

    def make() -> None:
        os.close(os.open(d / "g" / "f", os.O_WRONLY | os.O_CREAT, 0o644))
        os.mkdir(d / "g" / "sub")
        os.symlink("f", d / "g" / "ln")

    assert as_user(B, make) is None  # B is not in SHARED_GID
    for name in ("f", "sub", "ln"):
        st = os.lstat(host / "g" / name)
        assert (st.st_uid, st.st_gid) == (B[0], SHARED_GID), name
    assert os.stat(host / "g" / "sub").st_mode & stat.S_ISGID


def test_users_survive_a_server_restart() -> None:
    """A user's open file and new files after the server was killed and
    restarted: its attach is made again, on the new connection, as itself."""
    s = FuseSetup("--allow-other", "--reconnect-timeout", "20").start()
    try:
        d = s.mount.mountpoint / "shared"
        (s.export / "shared").mkdir()
        (s.export / "shared").chmod(0o1777)
        go_r, go_w = os.pipe()
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child, as A
            status = 1
            try:
                os.setgroups([A[1]])
                os.setresgid(A[1], A[1], A[1])
                os.setresuid(A[0], A[0], A[0])
                fd = os.open(d / "open", os.O_WRONLY | os.O_CREAT, 0o644)
                os.write(fd, b"before ")
                os.write(ready_w, b"1")
                os.read(go_r, 1)
                os.write(fd, b"after")
                os.close(fd)
                os.mkdir(d / "made-after")
                status = 0
            finally:
                os._exit(status)
        assert os.read(ready_r, 1) == b"1"
        s.server.kill()
        s.server.start()
        os.write(go_w, b"1")
        _, status = os.waitpid(pid, 0)
        assert status == 0
        assert (s.export / "shared" / "open").read_bytes() == b"before after"
        for name in ("open", "made-after"):
            st = os.stat(s.export / "shared" / name)
            assert (st.st_uid, st.st_gid) == A, name
    finally:
        s.close()
