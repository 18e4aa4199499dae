"""RemoteTree (the FUSE layer's state) without FUSE, against a live server."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Awaitable, Callable

import pytest

from p9share.fuse.tree import ROOT_INO, RemoteTree, wire_flags
from p9share.protocol import constants as c

from ..conftest import LiveServer


def test_wire_flags() -> None:
    assert wire_flags(os.O_RDONLY) == c.L_O_RDONLY
    assert wire_flags(os.O_WRONLY | os.O_APPEND) == c.L_O_WRONLY | c.L_O_APPEND
    # applied once at open, never on a reopen
    assert wire_flags(os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_TRUNC) == c.L_O_RDWR


def run(live: LiveServer, body: Callable[[RemoteTree], Awaitable[None]], **kw: float) -> None:
    async def main() -> None:
        tree = RemoteTree(live.tcp, aname="export", **kw)  # type: ignore[arg-type]
        await tree.start()
        try:
            await asyncio.wait_for(body(tree), 20)
        finally:
            await tree.close()

    asyncio.run(main())


def test_files_and_lookup_counts(live: LiveServer) -> None:
    async def body(tree: RemoteTree) -> None:
        gid = os.getgid()
        h, inode, _ = await tree.create(ROOT_INO, "f", 0o644, os.O_WRONLY | os.O_CREAT, gid)
        assert await tree.write(h.fh, 0, b"hello") == 5
        tree.release(h.fh)
        assert (live.root / "f").read_bytes() == b"hello"
        again, _ = await tree.lookup(ROOT_INO, "f")
        assert again is inode and inode.lookups == 2
        d, _ = await tree.mkdir(ROOT_INO, "d", 0o755, gid)
        await tree.rename(ROOT_INO, "f", d.ino, "g")
        assert inode.path == "/d/g"
        tree.forget([(inode.ino, 2)])
        assert inode.ino not in tree.inodes
        with pytest.raises(FileNotFoundError):
            await tree.lookup(ROOT_INO, "f")

    run(live, body)


def test_reconnect_rewalks_and_reopens(live: LiveServer) -> None:
    async def body(tree: RemoteTree) -> None:
        (live.root / "d").mkdir()
        (live.root / "d" / "f").write_bytes(b"12345")
        d, _ = await tree.lookup(ROOT_INO, "d")
        f, _ = await tree.lookup(d.ino, "f")
        h = await tree.open(f.ino, os.O_RDWR)
        assert tree.client is not None
        await tree.client.close()  # the connection breaks under the mount
        assert await tree.read(h.fh, 0, 10) == b"12345"
        assert tree.reconnects == 1 and f.gen == tree.gen == h.gen
        await tree.write(h.fh, 0, b"A")
        assert (live.root / "d" / "f").read_bytes() == b"A2345"
        # a file replaced behind the mount's back: EIO for the old one
        g, _ = await tree.lookup(d.ino, "f")
        gh = await tree.open(g.ino, os.O_RDONLY)
        os.rename(live.root / "d" / "f", live.root / "moved")
        (live.root / "d" / "f").write_bytes(b"other")
        await tree.client.close()
        with pytest.raises(OSError) as e:
            await tree.read(gh.fh, 0, 10)
        assert e.value.errno == errno.EIO
        new, _ = await tree.lookup(d.ino, "f")  # a fresh lookup finds the new file
        assert new is not g

    run(live, body)


def test_no_server_gives_eio_in_time(live: LiveServer) -> None:
    async def body(tree: RemoteTree) -> None:
        live.server.stop()
        assert tree.client is not None
        await tree.client.close()
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(OSError) as e:
            await tree.getattr(ROOT_INO)
        assert e.value.errno == errno.EIO
        assert loop.time() - start < 3

    run(live, body, reconnect_timeout=0.5)


def test_read_only(live: LiveServer) -> None:
    async def body(tree: RemoteTree) -> None:
        for attempt in (
            tree.mkdir(ROOT_INO, "d", 0o755, 0),
            tree.create(ROOT_INO, "f", 0o644, os.O_WRONLY, 0),
            tree.unlink(ROOT_INO, "x"),
        ):
            with pytest.raises(OSError) as e:
                await attempt
            assert e.value.errno == errno.EROFS

    run(live, body, read_only=True)  # type: ignore[arg-type]
