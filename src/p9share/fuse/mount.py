"""`p9share mount`: a FUSE file system (pyfuse3 on libfuse3) over a 9P2000.L
export.

pyfuse3 runs its request handlers as trio tasks on the main thread; the 9P
client is asyncio, running on a LoopThread. Each handler submits a coroutine
of tree.RemoteTree to that loop and sleeps on a trio.Event that the asyncio
side sets through the trio token: no worker thread per request.

Identity: on a multi-user mount (--allow-other) each request names the
calling process's uid (pyfuse3's RequestContext) to RemoteTree, which keeps
an attach and fids per uid; new files carry the caller's gid. Requests that
pyfuse3 gives no context (read, write, fsync, readdir, release) go through
the handle that the caller opened. Without --allow-other only the mounter
can reach the mount (the kernel refuses everyone else), so one identity.

Unmounting: SIGINT/SIGTERM end the FUSE loop and unmount; `fusermount3 -u`
(or umount) ends the loop by itself. Either way the exit status is 0.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import stat
import sys
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import pyfuse3
import trio

from ..client.aio import DEFAULT_TIMEOUT
from ..client.sync import LoopThread
from ..protocol import constants as c
from ..protocol import messages as m
from ..security.auth import Key
from .tree import MAX_USERS, Inode, RemoteTree

log = logging.getLogger("p9share.fuse")

T = TypeVar("T")
NS = 10**9
I64 = (1 << 63) - 1  # off_t, blkcnt_t, blksize_t and time_t are signed 64-bit
RENAME_NOREPLACE = 1  # <linux/fs.h>; the os module has no names for these


@dataclass
class MountOptions:
    address: str
    mountpoint: str
    aname: str = ""
    read_only: bool = False
    key: Key | str | None = None
    reconnect_timeout: float = 30.0
    attr_timeout: float = 1.0  # kernel caching of attributes and names
    timeout: float | None = DEFAULT_TIMEOUT  # each 9P request; then ETIMEDOUT
    allow_other: bool = False  # also: one 9P identity per calling uid
    max_users: int = MAX_USERS  # caller uids attached at once (LRU beyond)
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None


class Bridge:
    """Run asyncio coroutines on the client's loop from trio tasks."""

    def __init__(self, loop: asyncio.AbstractEventLoop, token: trio.lowlevel.TrioToken) -> None:
        self.loop = loop
        self.token = token

    async def __call__(self, coro: Coroutine[Any, Any, T]) -> T:
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        done = trio.Event()

        def wake(_: object) -> None:
            try:
                self.token.run_sync_soon(done.set)
            except trio.RunFinishedError:
                pass

        fut.add_done_callback(wake)
        try:
            await done.wait()
        except trio.Cancelled:
            fut.cancel()
            raise
        return fut.result()


def _errno_of(e: BaseException) -> int:
    if isinstance(e, OSError) and e.errno:
        return e.errno
    if isinstance(e, TimeoutError):
        return errno.EIO
    return errno.EIO


def _ns(sec: int, nsec: int) -> int:
    return min(sec, I64) * NS + min(nsec, NS - 1)


class Operations(pyfuse3.Operations):
    """pyfuse3's handlers, each a call into RemoteTree on the client loop."""

    enable_writeback_cache = False  # a write returns only once the server has it

    def __init__(self, tree: RemoteTree, attr_timeout: float, multi_user: bool = False) -> None:
        super().__init__()
        self.tree = tree
        self.timeout = attr_timeout
        self.multi_user = multi_user
        self.bridge: Bridge | None = None

    def _uid(self, ctx: pyfuse3.RequestContext) -> int | None:
        """The identity a request runs under: None is the mounter's attach."""
        if not self.multi_user or ctx.uid == self.tree.owner_uid:
            return None
        return int(ctx.uid)

    def _gid(self, parent_inode: int, ctx: pyfuse3.RequestContext) -> int:
        return self.tree.create_gid(parent_inode, ctx.gid)

    async def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        assert self.bridge is not None
        try:
            return await self.bridge(coro)
        except pyfuse3.FUSEError:
            raise
        except Exception as e:
            if not isinstance(e, OSError):
                log.exception("internal error in a FUSE request")
            raise pyfuse3.FUSEError(_errno_of(e)) from None

    def _entry(self, inode: Inode, a: m.Rgetattr) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = pyfuse3.InodeT(inode.ino)
        e.generation = 0
        e.entry_timeout = self.timeout
        e.attr_timeout = self.timeout
        e.st_mode = pyfuse3.ModeT(a.mode)
        e.st_nlink = a.nlink
        e.st_uid = a.uid
        e.st_gid = a.gid
        e.st_rdev = a.rdev
        # The server's u64s, clamped to what the kernel's signed fields hold
        # (an overflow here would end pyfuse3's main loop, unmounting).
        e.st_size = min(a.size, I64)
        e.st_blksize = min(a.blksize, 1 << 30) or 4096
        e.st_blocks = min(a.blocks, I64)
        e.st_atime_ns = _ns(a.atime_sec, a.atime_nsec)
        e.st_mtime_ns = _ns(a.mtime_sec, a.mtime_nsec)
        e.st_ctime_ns = _ns(a.ctime_sec, a.ctime_nsec)
        return e

    # ----------------------------------------------------------- names --
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        inode, a = await self._call(
            self.tree.lookup(parent_inode, os.fsdecode(name), self._uid(ctx))
        )
        return self._entry(inode, a)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        items = list(inode_list)
        assert self.bridge is not None

        async def drop() -> None:
            self.tree.forget(items)

        try:
            await self.bridge(drop())
        except Exception:
            log.exception("forget failed")

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        a = await self._call(self.tree.getattr(inode, self._uid(ctx)))
        return self._entry(self.tree.inodes.get(inode) or Inode(inode, 0, ""), a)

    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        v = c.SetattrValid
        valid = 0
        if fields.update_mode:
            valid |= v.MODE
        if fields.update_uid:
            valid |= v.UID
        if fields.update_gid:
            valid |= v.GID
        if fields.update_size:
            valid |= v.SIZE
        if fields.update_atime:
            valid |= v.ATIME | v.ATIME_SET
        if fields.update_mtime:
            valid |= v.MTIME | v.MTIME_SET
        if fields.update_ctime:
            valid |= v.CTIME
        a = await self._call(
            self.tree.setattr(
                inode, fh, valid, mode=stat.S_IMODE(attr.st_mode), uid=attr.st_uid,
                gid=attr.st_gid, size=attr.st_size, atime_ns=attr.st_atime_ns,
                mtime_ns=attr.st_mtime_ns, caller=self._uid(ctx),
            )
        )  # fmt: skip
        return self._entry(self.tree.inodes.get(inode) or Inode(inode, 0, ""), a)

    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return os.fsencode(await self._call(self.tree.readlink(inode, self._uid(ctx))))

    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        inode, a = await self._call(
            self.tree.mknod(
                parent_inode,
                os.fsdecode(name),
                mode,
                rdev,
                self._gid(parent_inode, ctx),
                self._uid(ctx),
            )
        )
        return self._entry(inode, a)

    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        inode, a = await self._call(
            self.tree.mkdir(
                parent_inode,
                os.fsdecode(name),
                stat.S_IMODE(mode) | self.tree.inherited_setgid(parent_inode),
                self._gid(parent_inode, ctx),
                self._uid(ctx),
            )
        )
        return self._entry(inode, a)

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self._call(self.tree.unlink(parent_inode, os.fsdecode(name), uid=self._uid(ctx)))

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self._call(self.tree.unlink(parent_inode, os.fsdecode(name), True, self._uid(ctx)))

    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        inode, a = await self._call(
            self.tree.symlink(
                parent_inode,
                os.fsdecode(name),
                os.fsdecode(target),
                self._gid(parent_inode, ctx),
                self._uid(ctx),
            )
        )
        return self._entry(inode, a)

    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        if flags & ~RENAME_NOREPLACE:
            # RENAME_EXCHANGE (and WHITEOUT): 9P2000.L has no atomic exchange,
            # and two renames would leave a window with a name missing.
            raise pyfuse3.FUSEError(errno.EINVAL)
        await self._call(
            self.tree.rename(parent_inode_old, os.fsdecode(name_old), parent_inode_new,
                             os.fsdecode(name_new), self._uid(ctx),
                             noreplace=bool(flags & RENAME_NOREPLACE))
        )  # fmt: skip

    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        node, a = await self._call(
            self.tree.link(inode, new_parent_inode, os.fsdecode(new_name), self._uid(ctx))
        )
        return self._entry(node, a)

    # ----------------------------------------------------------- files --
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        h = await self._call(self.tree.open(inode, flags, uid=self._uid(ctx)))
        return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(h.fh))

    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        h, inode, a = await self._call(
            self.tree.create(
                parent_inode,
                os.fsdecode(name),
                stat.S_IMODE(mode),
                flags,
                self._gid(parent_inode, ctx),
                self._uid(ctx),
            )
        )
        return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(h.fh)), self._entry(inode, a)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        return await self._call(self.tree.read(fh, off, size))

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return await self._call(self.tree.write(fh, off, buf))

    async def flush(self, fh: int) -> None:
        pass  # writes are already on the server

    async def release(self, fh: int) -> None:
        async def rel() -> None:
            self.tree.release(fh)

        await self._call(rel())

    async def fsync(self, fh: int, datasync: bool) -> None:
        await self._call(self.tree.fsync(fh, datasync))

    # ----------------------------------------------------- directories --
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        h = await self._call(self.tree.open(inode, os.O_RDONLY, True, self._uid(ctx)))
        return h.fh

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        entries = await self._call(self.tree.readdir(fh, start_id))
        replied = 0
        try:
            for e in entries:
                if not pyfuse3.readdir_reply(
                    token, os.fsencode(e.name), self._entry(e.inode, e.attr), e.next_offset
                ):
                    break
                replied += 1
        finally:
            tree = self.tree

            async def done() -> None:
                tree.readdir_done(entries, replied)

            await self._call(done())

    async def releasedir(self, fh: int) -> None:
        await self.release(fh)

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        pass

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        r = await self._call(self.tree.statfs(self._uid(ctx)))
        s = pyfuse3.StatvfsData()
        s.f_bsize = r.bsize
        s.f_frsize = r.bsize
        s.f_blocks = r.blocks
        s.f_bfree = r.bfree
        s.f_bavail = r.bavail
        s.f_files = r.files
        s.f_ffree = r.ffree
        s.f_favail = r.ffree
        s.f_namemax = r.namelen or 255
        return s

    # ---------------------------------------------------------- xattrs --
    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        await self._call(self.tree.setxattr(inode, os.fsdecode(name), value, uid=self._uid(ctx)))

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        try:
            return await self._call(self.tree.getxattr(inode, os.fsdecode(name), self._uid(ctx)))
        except pyfuse3.FUSEError as e:
            if e.errno == errno.ENODATA:
                raise pyfuse3.FUSEError(pyfuse3.ENOATTR) from None
            raise

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return [
            os.fsencode(n) for n in await self._call(self.tree.listxattr(inode, self._uid(ctx)))
        ]

    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self._call(self.tree.removexattr(inode, os.fsdecode(name), self._uid(ctx)))


def fuse_options(opts: MountOptions) -> set[str]:
    out = set(pyfuse3.default_options)  # default_permissions: the kernel checks modes
    out |= {f"fsname=p9share:{opts.address}", "subtype=p9share"}
    if opts.read_only:
        out.add("ro")
    if opts.allow_other:
        out.add("allow_other")
    return out


async def _serve(ops: Operations, loop: asyncio.AbstractEventLoop) -> int:
    """The FUSE loop until an unmount or a signal."""
    ops.bridge = Bridge(loop, trio.lowlevel.current_trio_token())
    stopped_by: list[int] = []

    async def on_signal(scope: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for sig in signals:
                stopped_by.append(sig)
                log.info("signal %d: unmounting", sig)
                pyfuse3.terminate()
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(on_signal, nursery.cancel_scope)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()
    return 0


def run_mount(opts: MountOptions, ready: Any = None) -> int:
    """Mount, serve until unmounted, unmount. ready(error: str | None) is
    called once the mount is up (None) or has failed (a message)."""
    if not os.path.isdir(opts.mountpoint):
        msg = f"{opts.mountpoint}: not a directory"
        if ready is not None:
            ready(msg)
        return 1
    loop = LoopThread("p9share-mount")
    tree = RemoteTree(
        opts.address, aname=opts.aname, key=opts.key, read_only=opts.read_only,
        reconnect_timeout=opts.reconnect_timeout, request_timeout=opts.timeout, tls_ca=opts.tls_ca,
        tls_cert=opts.tls_cert, tls_key=opts.tls_key, max_users=opts.max_users,
    )  # fmt: skip
    try:
        try:
            loop.run(tree.start())
        except (OSError, TimeoutError, ValueError) as e:
            msg = f"{opts.address}: {e.strerror if isinstance(e, OSError) and e.strerror else e}"
            if ready is not None:
                ready(msg)
            return 1
        ops = Operations(tree, opts.attr_timeout, multi_user=opts.allow_other)
        try:
            pyfuse3.init(ops, opts.mountpoint, fuse_options(opts))
        except RuntimeError as e:
            if ready is not None:
                ready(f"{opts.mountpoint}: cannot mount: {e}")
            return 1
        if ready is not None:
            ready(None)
        try:
            status = trio.run(_serve, ops, loop.loop)
        finally:
            pyfuse3.close(unmount=True)
        return status
    finally:
        try:
            loop.run(tree.close(), 10)
        except Exception:
            pass
        loop.stop()


def daemonize_and_mount(opts: MountOptions) -> int:
    """Fork; the child mounts and serves in its own session, the parent
    exits 0 once the mount is up, or 1 with the child's error message."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid:
        os.close(wfd)
        with os.fdopen(rfd, "rb") as r:
            msg = r.read().decode("utf-8", "replace")
        if msg == "ok":
            return 0
        print(f"p9share: mount: {msg or 'the mount process died'}", file=sys.stderr)
        return 1
    os.close(rfd)
    os.setsid()
    status = 1
    try:

        def ready(err: str | None) -> None:
            os.write(wfd, b"ok" if err is None else err.encode())
            os.close(wfd)
            if err is None:
                null = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(null, fd)
                os.close(null)

        status = run_mount(opts, ready)
    finally:
        os._exit(status)
