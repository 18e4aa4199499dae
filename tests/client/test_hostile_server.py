"""The client library, the CLI and the FUSE tree against a server that lies
(tests/client/hostile.py): every lie ends in a clear OSError, promptly, with
the client's tag and fid bookkeeping back where it was."""

from __future__ import annotations

import asyncio
import errno
import gc
import os
import stat
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import p9share
from p9share.client import FS, AsyncFS, ConnectionLost
from p9share.client.aio import Client
from p9share.client.raw import RawClient, ServerError
from p9share.fuse.tree import ROOT_INO, RemoteTree
from p9share.protocol import constants as c
from p9share.protocol import messages as m

from .hostile import HUGE_ERRNO, LOOP, HostileServer, hostile

# Small enough that old code which keeps reading cannot eat the machine
# before the test gives up on it.
SMALL_MSIZE = 8192


def connect(srv: HostileServer, **kw: Any) -> FS:
    kw.setdefault("timeout", 10)  # the machine may be busy; tests of timeouts set their own
    return FS.connect(srv.address, msize=SMALL_MSIZE, **kw)


def run_async(srv: HostileServer, body: Callable[[AsyncFS], Awaitable[None]], **kw: Any) -> None:
    """body(afs) on a fresh loop; an exception left in any task fails the test."""
    leaked: list[object] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _l, ctx: leaked.append(ctx))
        kw.setdefault("timeout", 10)
        kw.setdefault("msize", SMALL_MSIZE)
        afs = await AsyncFS.connect(srv.address, **kw)
        try:
            await asyncio.wait_for(body(afs), 30)
        finally:
            await afs.close()
        gc.collect()  # a task that died with an exception reports it when collected
        await asyncio.sleep(0)

    asyncio.run(main())
    assert leaked == []


# ------------------------------------------------------------ error numbers --
def test_huge_errno_is_an_oserror_not_overflow() -> None:
    with hostile("errno") as srv, connect(srv) as fs:
        with pytest.raises(OSError) as e:
            fs.stat("/missing")
        assert type(e.value) is not OverflowError
        assert e.value.errno == errno.EIO
        assert str(HUGE_ERRNO) in str(e.value) and e.value.filename == "/missing"


def test_huge_errno_in_rversion_is_a_connection_error() -> None:
    with hostile("errno-version") as srv, pytest.raises(ConnectionError, match=str(HUGE_ERRNO)):
        connect(srv)


def test_huge_errno_from_clunk_foreground_and_background() -> None:
    async def body(afs: AsyncFS) -> None:
        fid, _ = await afs.client.walk(afs.root, ["f"])
        with pytest.raises(OSError) as e:
            await afs.client.clunk(fid)
        assert e.value.errno == errno.EIO
        assert fid not in afs.client.fids._used
        for _ in range(5):
            await afs.stat("/f")  # each clunks its fid in the background
        await afs.client.quiesce()
        assert len(afs.client.fids) == 1  # the root only

    with hostile("errno-clunk") as srv:
        run_async(srv, body)


def test_raw_client_maps_huge_errno() -> None:
    with hostile("errno") as srv, RawClient.connect(srv.address, timeout=5) as raw:
        raw.version()
        raw.attach(0)
        with pytest.raises(ServerError) as e:
            raw.walk(0, 1, ["missing"])
        assert e.value.errno == errno.EIO


# ------------------------------------------------------------------ xattrs --
def test_getxattr_does_not_believe_a_huge_size() -> None:
    # timeout=2: old code that reads on for ever gives up (as TimeoutError) in time
    with hostile("xattr-size") as srv, connect(srv, timeout=2) as fs:
        with pytest.raises(OSError) as e:
            fs.getxattr("/f", "user.a")
        assert e.value.errno == errno.E2BIG
        with pytest.raises(OSError) as e:
            fs.listxattr("/f")
        assert e.value.errno == errno.E2BIG
        assert srv.requests(m.Tread) == []  # not one byte asked for


def test_getxattr_honest_server_still_works() -> None:
    with hostile() as srv, connect(srv) as fs:
        assert fs.getxattr("/f", "user.a") == b"value"
        assert fs.listxattr("/f") == ["user.a"]


def test_xattrwalk_answered_with_the_wrong_type_frees_the_fid() -> None:
    async def body(afs: AsyncFS) -> None:
        before = len(afs.client.fids)
        for _ in range(3):
            with pytest.raises(OSError) as e:
                await afs.getxattr("/f", "user.a")
            assert e.value.errno == errno.EPROTO
        await afs.client.quiesce()
        assert len(afs.client.fids) == before

    with hostile("wrong-type") as srv:
        run_async(srv, body)


# ------------------------------------------------------------- directories --
@pytest.mark.parametrize("lie", ["readdir-stuck", "readdir-cycle"])
def test_listdir_ends_when_the_cookie_does_not_advance(lie: str) -> None:
    with hostile(lie) as srv, connect(srv) as fs:
        with pytest.raises(OSError) as e:
            fs.listdir("/")
        assert e.value.errno == errno.EPROTO and e.value.filename == "/"
        assert len(srv.requests(m.Treaddir)) <= 3


def test_readdir_longer_than_count_is_refused() -> None:
    async def body(afs: AsyncFS) -> None:
        fid, _ = await afs.client.walk(afs.root, [])
        await afs.client.lopen(fid, c.L_O_RDONLY | c.L_O_DIRECTORY)
        with pytest.raises(OSError) as e:
            await afs.client.readdir(fid, 0, 100)
        assert e.value.errno == errno.EPROTO
        await afs.client.clunk(fid)

    with hostile("readdir-long") as srv:
        run_async(srv, body)


def test_entry_names_that_are_not_one_component_are_refused() -> None:
    with hostile("readdir-names") as srv, connect(srv) as fs:
        with pytest.raises(OSError) as e:
            fs.listdir("/")
        assert e.value.errno == errno.EPROTO


def test_walk_with_more_qids_than_names() -> None:
    async def body(afs: AsyncFS) -> None:
        before = len(afs.client.fids)
        for _ in range(3):
            with pytest.raises(OSError) as e:
                await afs.stat("/f")
            assert e.value.errno == errno.EPROTO
        await afs.client.quiesce()
        assert len(afs.client.fids) == before

    with hostile("walk-extra") as srv:
        run_async(srv, body)


# -------------------------------------------------------------------- I/O --
def test_read_longer_than_asked_is_refused() -> None:
    async def body(afs: AsyncFS) -> None:
        fid, _ = await afs.client.walk(afs.root, ["f"])
        await afs.client.lopen(fid, c.L_O_RDONLY)
        with pytest.raises(OSError) as e:
            await afs.client.read(fid, 0, 5)
        assert e.value.errno == errno.EPROTO
        with pytest.raises(OSError):
            await afs.client.pread(fid, 0, 5)
        await afs.client.clunk(fid)

    with hostile("read-long") as srv:
        run_async(srv, body)
    with hostile("read-long") as srv, connect(srv) as fs:
        with pytest.raises(OSError) as e:
            fs.read_bytes("/f")
        assert e.value.errno == errno.EPROTO and e.value.filename == "/f"


def test_write_counted_beyond_what_was_sent_is_refused() -> None:
    async def body(afs: AsyncFS) -> None:
        fid, _ = await afs.client.walk(afs.root, ["f"])
        await afs.client.lopen(fid, c.L_O_WRONLY)
        with pytest.raises(OSError) as e:
            await afs.client.write(fid, 0, b"abc")
        assert e.value.errno == errno.EPROTO
        with pytest.raises(OSError):
            await afs.client.pwrite(fid, 0, b"abc" * 5000)
        await afs.client.clunk(fid)

    with hostile("write-long") as srv:
        run_async(srv, body)


def test_lock_in_grace_forever_gives_up() -> None:
    async def body(afs: AsyncFS) -> None:
        f = await afs.open("/f", "rb")
        start = time.monotonic()
        with pytest.raises(OSError) as e:
            await f.lock(c.LOCK_TYPE_RDLCK)
        assert e.value.errno == errno.ENOLCK
        assert time.monotonic() - start < 10  # gave up, not polling for ever
        await f.close()

    with hostile("lock-grace") as srv:
        run_async(srv, body, timeout=0.5)


def test_rversion_msize_above_the_offer_is_refused() -> None:
    with hostile("msize") as srv, pytest.raises(ConnectionError, match="msize"):
        connect(srv)


# --------------------------------------------------------------- timeouts --
def test_unanswered_request_times_out_and_is_flushed() -> None:
    async def body(afs: AsyncFS) -> None:
        client = afs.client
        before = len(client.fids)
        start = time.monotonic()
        with pytest.raises(TimeoutError) as e:
            await afs.stat("/")
        assert e.value.errno == errno.ETIMEDOUT  # the request's own timeout, not the test's
        assert time.monotonic() - start < 10
        for _ in range(20):  # many timeouts: the bookkeeping does not grow
            with pytest.raises(TimeoutError):
                await client.getattr(afs.root)
        await client.quiesce()
        assert client.tags_in_use == frozenset()
        assert len(client.fids) == before
        assert len(srv.requests(m.Tflush)) == 21
        assert not client.closed

    with hostile("silent-getattr") as srv:
        run_async(srv, body, timeout=0.3)


def test_unanswered_flush_closes_the_connection() -> None:
    async def body(afs: AsyncFS) -> None:
        client = afs.client
        with pytest.raises(TimeoutError) as e:
            await client.getattr(afs.root)
        assert e.value.errno == errno.ETIMEDOUT
        for _ in range(100):
            if client.closed:
                break
            await asyncio.sleep(0.02)
        assert client.closed  # no Rflush within the timeout: the server is broken
        with pytest.raises(ConnectionLost):
            await client.getattr(afs.root)
        assert client.tags_in_use == frozenset()

    with hostile("silent") as srv:
        run_async(srv, body, timeout=0.3)


def test_unanswered_clunk_keeps_its_fid_number() -> None:
    """Flushed before it ran, a Tclunk leaves the fid alive in the server:
    its number must not be handed out again."""

    async def body(afs: AsyncFS) -> None:
        client = afs.client
        fid, _ = await client.walk(afs.root, ["f"])
        with pytest.raises(TimeoutError):
            await client.clunk(fid)
        await client.quiesce()  # the Rflush has come
        assert client.tags_in_use == frozenset()
        assert fid in client.fids._used
        other, _ = await client.walk(afs.root, ["f"])
        assert other != fid

    with hostile("silent-clunk") as srv:
        run_async(srv, body, timeout=0.3)


def test_server_that_stops_reading_loses_the_connection() -> None:
    """A send that cannot complete (the server reads nothing) is not waited
    on for ever either: after twice the timeout the connection is closed."""

    async def body(afs: AsyncFS) -> None:
        client = afs.client
        start = time.monotonic()
        chunk = b"x" * client.iosize
        writes = [client.write(afs.root, 0, chunk) for _ in range(200)]  # 13 MB: sends block
        results = await asyncio.gather(*writes, return_exceptions=True)
        assert all(isinstance(r, ConnectionLost | TimeoutError) for r in results)
        assert any(isinstance(r, ConnectionLost) for r in results)
        assert time.monotonic() - start < 15
        # whichever comes first: this check, or the flushes of the requests sent
        assert client.closed
        assert "has not read" in str(client._error) or "Tflush" in str(client._error)
        assert client.tags_in_use == frozenset()

    with hostile("no-read") as srv:
        run_async(srv, body, timeout=0.5, msize=65536 + 24)


def test_timeout_is_configurable_and_none_waits() -> None:
    async def body(afs: AsyncFS) -> None:
        afs.client.timeout = None
        task = asyncio.ensure_future(afs.client.getattr(afs.root))
        await asyncio.sleep(0.5)
        assert not task.done()  # no timeout: still waiting
        task.cancel()
        afs.client.timeout = 0.2
        with pytest.raises(TimeoutError):
            await afs.client.getattr(afs.root)

    with hostile("silent-getattr") as srv:
        run_async(srv, body, timeout=0.2)


def test_sync_timeout_is_per_request() -> None:
    with hostile("silent-getattr") as srv, connect(srv, timeout=0.3) as fs:
        assert fs.timeout == 0.3
        fs.timeout = 0.2
        assert fs.aio.client.timeout == 0.2
        start = time.monotonic()
        with pytest.raises(TimeoutError) as e:
            fs.stat("/")
        assert e.value.errno == errno.ETIMEDOUT
        assert time.monotonic() - start < 10


def test_client_connect_default_timeout() -> None:
    async def main() -> None:
        with hostile() as srv:
            client = await Client.connect(srv.address)
            try:
                assert client.timeout == 30.0
            finally:
                await client.close()

    asyncio.run(main())


# -------------------------------------------------------------------- CLI --
def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(Path(p9share.__file__).parents[1]))  # this p9share
    return subprocess.run([sys.executable, "-m", "p9share", *args], capture_output=True,
                          text=True, timeout=60, env=env)  # fmt: skip


def test_cli_timeout_reaches_each_request() -> None:
    with hostile("silent-getattr") as srv:
        start = time.monotonic()
        r = cli("stat", srv.address, "--timeout", "0.5", "/f")
        assert r.returncode == 1, r.stderr
        assert "timed out" in r.stderr and "Traceback" not in r.stderr
        assert time.monotonic() - start < 20


def test_cli_stat_of_absurd_attributes_is_printed() -> None:
    with hostile("huge-attr") as srv:
        r = cli("stat", srv.address, "/f")
        assert r.returncode == 0, r.stderr
        assert f"size: {2**64 - 1}" in r.stdout
        r = cli("ls", srv.address, "-l", "/")
        assert r.returncode == 0, r.stderr


def test_cli_get_does_not_follow_a_link_the_server_listed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    dest = tmp_path / "dest"
    dest.mkdir()
    with hostile("readdir-dup-link") as srv:
        srv.link_target = str(victim)
        r = cli("get", srv.address, "/", str(dest / "copy"))
        assert "Traceback" not in r.stderr
    assert not victim.exists()


def test_cli_get_refuses_escaping_names(tmp_path: Path) -> None:
    with hostile("readdir-names") as srv:
        r = cli("get", srv.address, "/", str(tmp_path / "a" / "copy"))
        assert r.returncode == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "a" / "escape").exists()
    assert not (tmp_path / "escape").exists()


# --------------------------------------------------------------- FUSE tree --
def tree_run(srv: HostileServer, body: Callable[[RemoteTree], Awaitable[None]], **kw: Any) -> None:
    async def main() -> None:
        tree = RemoteTree(srv.address, msize=SMALL_MSIZE, **kw)
        await tree.start()
        try:
            await asyncio.wait_for(body(tree), 30)
        finally:
            await tree.close()

    asyncio.run(main())


def test_tree_getxattr_and_read_are_bounded() -> None:
    async def body(tree: RemoteTree) -> None:
        inode, _ = await tree.lookup(ROOT_INO, "f")
        with pytest.raises(OSError) as e:
            await tree.getxattr(inode.ino, "user.a")
        assert e.value.errno == errno.E2BIG

    with hostile("xattr-size") as srv:
        tree_run(srv, body, request_timeout=10)

    async def read(tree: RemoteTree) -> None:
        await tree.lookup(ROOT_INO, "f")
        h = await tree.open(2, os.O_RDONLY)
        with pytest.raises(OSError) as e:
            await tree.read(h.fh, 0, 5)
        assert e.value.errno == errno.EPROTO

    with hostile("read-long") as srv:
        tree_run(srv, read, request_timeout=10)


def test_tree_readdir_ends_on_a_stuck_cookie() -> None:
    async def body(tree: RemoteTree) -> None:
        h = await tree.open(ROOT_INO, os.O_RDONLY, is_dir=True)
        first = await tree.readdir(h.fh, 0)
        tree.readdir_done(first, len(first))
        with pytest.raises(OSError) as e:  # the kernel asks to go on after the cookie given
            for _ in range(5):
                more = await tree.readdir(h.fh, first[-1].next_offset)
                tree.readdir_done(more, len(more))
        assert e.value.errno == errno.EPROTO

    with hostile("readdir-stuck") as srv:
        tree_run(srv, body, request_timeout=10)


def test_tree_readdir_cookie_beyond_off_t() -> None:
    """Cookies are any u64 (the server's own are): the kernel gets the
    mount's small offsets, mapped back to the server's cookie."""

    async def body(tree: RemoteTree) -> None:
        h = await tree.open(ROOT_INO, os.O_RDONLY, is_dir=True)
        first = await tree.readdir(h.fh, 0)
        tree.readdir_done(first, len(first))
        assert [(e.name, e.next_offset) for e in first] == [("f", 1)]
        assert await tree.readdir(h.fh, 1) == []  # asked the server after 2^63
        with pytest.raises(OSError) as e:
            await tree.readdir(h.fh, 7)  # an offset the mount never gave
        assert e.value.errno == errno.EINVAL

    with hostile("readdir-bigcookie") as srv:
        tree_run(srv, body, request_timeout=10)


def test_tree_requests_time_out() -> None:
    async def body(tree: RemoteTree) -> None:
        start = time.monotonic()
        with pytest.raises(TimeoutError) as e:
            await tree.getattr(ROOT_INO)
        assert e.value.errno == errno.ETIMEDOUT
        assert time.monotonic() - start < 10

    with hostile("silent-getattr") as srv:
        tree_run(srv, body, request_timeout=0.3)


def test_fuse_entry_clamps_absurd_attributes() -> None:
    pytest.importorskip("pyfuse3")
    from p9share.fuse.mount import Operations
    from p9share.fuse.tree import Inode

    async def body(tree: RemoteTree) -> None:
        a = await tree.getattr(ROOT_INO)
        assert a.size == 2**64 - 1
        e = Operations(tree, 1.0)._entry(Inode(ROOT_INO, 1, "/"), a)
        assert e.st_size == 2**63 - 1 and e.st_blocks == 2**63 - 1

    with hostile("huge-attr") as srv:
        tree_run(srv, body, request_timeout=10)


# ------------------------------------------------------- deep and looping --
@contextmanager
def shallow_stack(frames: int = 60) -> Iterator[None]:
    """Only `frames` more Python frames than the caller has: a walk whose
    stack grows with the depth of the tree fails inside this."""
    depth, f = 0, sys._getframe()
    while f is not None:
        depth, f = depth + 1, f.f_back  # type: ignore[assignment]
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(depth + frames)
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


def test_walk_of_a_directory_that_contains_itself_ends() -> None:
    with hostile("loop-dir") as srv, connect(srv) as fs:
        errors: list[OSError] = []
        with shallow_stack():
            tops = [top for top, _, _ in fs.walk("/", onerror=errors.append)]
        assert len(tops) > 30 and tops[1] == "/" + LOOP
        assert [e.errno for e in errors] == [errno.ENAMETOOLONG]
        bottom_up = [top for top, _, _ in fs.walk("/", topdown=False)]
        assert bottom_up == tops[::-1]


def test_cli_get_of_a_directory_that_contains_itself_ends(tmp_path: Path) -> None:
    from p9share import client_cli

    with hostile("loop-dir") as srv, connect(srv) as fs, shallow_stack(40):
        with pytest.raises(OSError) as e:
            client_cli._get_tree(fs, "/", str(tmp_path / "copy"), False)
        assert e.value.errno == errno.ENAMETOOLONG


def test_cli_get_drops_set_id_bits(tmp_path: Path) -> None:
    with hostile("setuid-file") as srv:
        r = cli("get", srv.address, "/f", str(tmp_path / "f"))
        assert r.returncode == 0, r.stderr
    assert (tmp_path / "f").read_bytes() == b"hello world"
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o755


def test_fsspec_range_read_does_not_size_by_the_server() -> None:
    pytest.importorskip("fsspec")
    from p9share.client.fsspec_fs import NinePFileSystem

    with hostile("huge-attr") as srv:
        nfs = NinePFileSystem(srv.address, timeout=2, skip_instance_cache=True)
        try:
            assert nfs.cat_file("/f", start=2) == b"llo world"
            assert nfs.cat_file("/f", start=-4, end=None) == b""  # 2^64-5 is past the end
            assert nfs.cat_file("/f", start=0, end=5) == b"hello"
            with pytest.raises(OSError) as e:
                nfs.modified("/f")
            assert e.value.errno == errno.EOVERFLOW
        finally:
            nfs.close()


def test_raw_client_refuses_a_huge_frame() -> None:
    with hostile("huge-frame") as srv, RawClient.connect(srv.address, timeout=5) as raw:
        raw.version()
        with pytest.raises(ConnectionError, match="frame of size"):
            raw.attach(0)


def test_raw_client_version_refused_is_an_oserror() -> None:
    with hostile("errno-version") as srv, RawClient.connect(srv.address, timeout=5) as raw:
        with pytest.raises(ServerError) as e:
            raw.version()
        assert e.value.errno == errno.EIO
