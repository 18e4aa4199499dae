"""The export as a FUSE file system sees it: inodes, open handles and one
9P2000.L connection that is re-established when it breaks.

Everything here runs on one asyncio event loop (the client's), so the
tables need no locks; mount.py calls in from the FUSE (trio) side.

- An inode is a file the kernel knows (its lookup count > 0). Its number is
  the server's qid.path (the export root is FUSE's inode 1). It keeps a fid
  walked once, and its path from the export root, so that after a reconnect
  the fid can be walked again; renames update the paths.
- A handle is an open file or directory: an opened fid and the flags it was
  opened with (without O_CREAT/O_EXCL/O_TRUNC, for reopening).
- Connection loss: every request, pending or new, waits for the connection
  to come back (at most reconnect_timeout seconds, then EIO) and is retried
  once the new session is attached. Fids of an earlier session are walked
  again lazily; a path that no longer names the same file (qid.path) makes
  that inode or handle fail with EIO for good.
- Writes go to the server before they return: nothing is buffered here.
- Identity per caller (multi-user mounts, mount.py decides): a caller whose
  uid is not the mounter's gets its own attach (Tattach n_uname = uid, as
  Linux v9fs does with access=user) and its own fids, walked from that root:
  the server sees each user's requests on that user's fids, so new files are
  the caller's and the id mapping and grants apply per uid. At most
  max_users such attaches are kept; the least recently used idle one is
  clunked (with its fids) to make room. Handles keep the fid they were
  opened on, so an open file outlives its user's eviction.
- The server is not trusted: each request times out after request_timeout
  seconds (ETIMEDOUT, the request flushed), and the client library checks
  every count (see client/aio.py); a directory whose cookies do not advance
  is EPROTO. The server's directory cookies are any u64; FUSE's offsets are
  a signed off_t, so each handle hands the kernel its own offsets (1, 2, ...)
  and maps them back (at most MAX_DIR_ENTRIES per listing).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import posixpath
import stat
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from ..client.aio import DEFAULT_MSIZE, DEFAULT_TIMEOUT, Client
from ..client.errors import ConnectionLost, protocol_error
from ..client.fs import MAX_DIR_ENTRIES
from ..protocol import constants as c
from ..protocol import messages as m
from ..protocol.wire import Qid
from ..security.auth import Key

log = logging.getLogger("p9share.fuse")

T = TypeVar("T")
ROOT_INO = 1
ZERO_INO = (1 << 64) - 2  # stands in for a qid.path of 0 (FUSE has no inode 0)
READDIR_BATCH = 32  # entries resolved (walk + getattr) at once for one FUSE readdir
READ_ONLY_FLAGS = c.L_O_ACCMODE
MAX_USERS = 64  # distinct caller uids attached at once (LRU beyond)

# os.O_* flags that mean the same on the server (by name: the numbers differ
# between architectures). O_CREAT, O_EXCL and O_TRUNC are applied once, at
# open or create, never again on a reopen.
_PASSED_FLAGS = (
    ("O_APPEND", c.L_O_APPEND),
    ("O_NONBLOCK", c.L_O_NONBLOCK),
    ("O_DSYNC", c.L_O_DSYNC),
    ("O_SYNC", c.L_O_SYNC),
    ("O_NOATIME", c.L_O_NOATIME),
)


def wire_flags(os_flags: int) -> int:
    """The 9P2000.L open flags (access mode and the flags kept on a
    reopen) for a host open(2) flags word."""
    acc = os_flags & os.O_ACCMODE
    out = {os.O_RDONLY: c.L_O_RDONLY, os.O_WRONLY: c.L_O_WRONLY}.get(acc, c.L_O_RDWR)
    for name, wire in _PASSED_FLAGS:
        value = getattr(os, name, 0)
        if value and os_flags & value == value:
            out |= wire
    return out


def stale(what: str) -> OSError:
    return OSError(errno.EIO, f"{what}: lost after a reconnect (no longer the same file)")


@dataclass(slots=True, eq=False)
class Inode:
    ino: int
    qid_path: int
    path: str  # from the export root; "/" is the root
    btime_ns: int = 0  # birth time, when the server knows it: qid.path may be reused
    mode: int = 0  # from the last attributes seen (a set-gid directory's group is inherited)
    gid: int = 0
    lookups: int = 0
    pins: int = 0  # in-flight readdir batches holding it
    fid: int | None = None
    gen: int = -1  # session the fid belongs to
    stale: bool = False


@dataclass(slots=True, eq=False)
class User:
    """One caller uid's attach in one session: its root fid and the fids
    walked under it (by inode number)."""

    uid: int
    gen: int
    root_fid: int
    fids: dict[int, int] = field(default_factory=dict)


@dataclass(slots=True, eq=False)
class Handle:
    fh: int
    inode: Inode
    flags: int  # 9P2000.L flags, for reopening
    is_dir: bool
    uid: int | None = None  # the opener's identity (None: the mounter's)
    fid: int | None = None
    gen: int = -1
    iounit: int = 0
    stale: bool = False
    dir_start: int = 0  # the cookie dir_buf starts after
    dir_buf: list[m.Dirent] = field(default_factory=list)
    dir_served: int = 0  # entries given to the kernel since it last read from offset 0
    cookies: dict[int, int] = field(default_factory=dict)  # FUSE offset -> server cookie


@dataclass(slots=True)
class DirEntryAttr:
    """One readdir entry resolved for FUSE (readdirplus needs attributes)."""

    name: str
    inode: Inode
    attr: m.Rgetattr
    next_offset: int


class RemoteTree:
    """See the module docstring. Create, then ``await start()``."""

    def __init__(
        self,
        address: str,
        *,
        aname: str = "",
        key: Key | str | os.PathLike[str] | None = None,
        msize: int = DEFAULT_MSIZE,
        read_only: bool = False,
        reconnect_timeout: float = 30.0,
        connect_timeout: float = 10.0,
        request_timeout: float | None = DEFAULT_TIMEOUT,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        max_users: int = MAX_USERS,
    ) -> None:
        self.address = address
        self.aname = aname
        self.key = key
        self.msize = msize
        self.read_only = read_only
        self.reconnect_timeout = reconnect_timeout
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self._tls = (tls_ca, tls_cert, tls_key)
        self.gid = os.getgid()
        self.owner_uid = os.getuid()  # the default attach's n_uname
        self.max_users = max_users
        self.users: OrderedDict[int, User] = OrderedDict()  # least recently used first
        self._active: dict[int, int] = {}  # uid -> requests in flight (not evicted)
        self.client: Client | None = None
        self.gen = 0
        self.root_fid = 0
        self.root_qid_path = 0
        self.inodes: dict[int, Inode] = {}
        self.handles: dict[int, Handle] = {}
        self._next_fh = 1
        self._connected = asyncio.Event()
        self._reconnector: asyncio.Task[None] | None = None
        self._closing = False
        self.reconnects = 0  # sessions after the first (tests and logs)

    # ------------------------------------------------------- connection --
    async def start(self) -> None:
        """Connect and attach; errors propagate (so the mount command can
        report them before going to the background)."""
        client, fid, qid = await self._connect()
        self._install(client, fid, qid)
        root = Inode(ROOT_INO, qid.path, "/", lookups=1, fid=fid, gen=self.gen)
        self.inodes[ROOT_INO] = root

    async def close(self) -> None:
        self._closing = True
        if self._reconnector is not None:
            self._reconnector.cancel()
            with contextlib.suppress(BaseException):
                await self._reconnector
        if self.client is not None:
            await self.client.close()

    async def _connect(self) -> tuple[Client, int, Qid]:
        tls_ca, tls_cert, tls_key = self._tls
        client = await Client.connect(
            self.address, msize=self.msize, timeout=self.connect_timeout,
            tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key,
        )  # fmt: skip
        client.timeout = self.request_timeout
        try:
            fid, qid = await asyncio.wait_for(
                client.attach(self.aname, key=self.key), self.connect_timeout
            )
        except BaseException:
            await client.close()
            raise
        return client, fid, qid

    def _install(self, client: Client, fid: int, qid: Qid) -> None:
        self.client = client
        self.gen += 1
        self.root_fid = fid
        self.root_qid_path = qid.path
        self._connected.set()

    def _lost(self, gen: int) -> None:
        """The session gen broke: start reconnecting (once)."""
        if gen != self.gen or self._closing:
            return
        self._connected.clear()
        if self._reconnector is None or self._reconnector.done():
            log.warning("connection to %s lost; reconnecting", self.address)
            self._reconnector = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        """Retry with backoff until a session is attached (or we close)."""
        old = self.client
        if old is not None:
            with contextlib.suppress(Exception):
                await old.close()
        delay = 0.05
        while not self._closing:
            try:
                client, fid, qid = await self._connect()
            except (TimeoutError, OSError, ValueError) as e:
                log.debug("reconnect to %s failed: %s", self.address, e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            root = self.inodes.get(ROOT_INO)
            if root is not None and qid.path != root.qid_path:
                log.error("the export's root changed identity; every file is lost")
                root.stale = True
            self._install(client, fid, qid)
            if root is not None and not root.stale:
                root.fid, root.gen = fid, self.gen
            self.reconnects += 1
            log.warning("reconnected to %s", self.address)
            return

    async def _session(self, deadline: float | None) -> tuple[Client, int]:
        loop = asyncio.get_running_loop()
        while True:
            client = self.client
            if client is not None and self._connected.is_set():
                if not client.closed:
                    return client, self.gen
                self._lost(self.gen)
            if self._closing:
                raise OSError(errno.EIO, "the mount is closing")
            remaining = self.reconnect_timeout if deadline is None else deadline - loop.time()
            if remaining <= 0:
                raise OSError(errno.EIO, f"no connection to {self.address}")
            try:
                await asyncio.wait_for(self._connected.wait(), remaining)
            except TimeoutError:
                raise OSError(errno.EIO, f"no connection to {self.address}") from None

    async def run(self, op: Callable[[Client, int], Awaitable[T]], uid: int | None = None) -> T:
        """op(client, gen), retried on a new session when the connection is
        lost; EIO after reconnect_timeout without one. uid's attach is not
        evicted while op runs."""
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        if uid is not None:
            self._active[uid] = self._active.get(uid, 0) + 1
        try:
            while True:
                client, gen = await self._session(deadline)
                try:
                    return await op(client, gen)
                except ConnectionLost:
                    self._lost(gen)
                    if deadline is None:
                        deadline = loop.time() + self.reconnect_timeout
        finally:
            if uid is not None:
                n = self._active[uid] - 1
                if n:
                    self._active[uid] = n
                else:
                    del self._active[uid]

    def _check_writable(self) -> None:
        if self.read_only:
            raise OSError(errno.EROFS, "read-only mount")

    # ------------------------------------------------------------ fids --
    def _ino(self, qid_path: int) -> int:
        if qid_path == self.root_qid_path:
            return ROOT_INO
        if qid_path == ROOT_INO:
            return self.root_qid_path or ZERO_INO  # the root's own number is free
        return qid_path or ZERO_INO

    def inode(self, ino: int) -> Inode:
        inode = self.inodes.get(ino)
        if inode is None:
            raise OSError(errno.ESTALE, f"unknown inode {ino}")
        return inode

    async def _inode_fid(self, client: Client, gen: int, inode: Inode) -> int:
        if inode.stale:
            raise stale(inode.path)
        if inode.fid is not None and inode.gen == gen:
            return inode.fid
        # A session later than the fid's: walk the path again from the root.
        try:
            fid, qids = await client.walk(self.root_fid, split(inode.path))
        except ConnectionLost:
            raise
        except OSError:
            inode.stale = True
            raise stale(inode.path) from None
        qpath = qids[-1].path if qids else self.root_qid_path
        same = qpath == inode.qid_path
        if same and inode.btime_ns and inode.gen != gen:
            # After a reconnect: the host may have reused the inode number
            # for another file; the birth time tells them apart.
            try:
                same = birth_ns(await client.getattr(fid)) in (0, inode.btime_ns)
            except BaseException:
                client.clunk_soon(fid)
                raise
        if inode.fid is not None and inode.gen == gen:
            client.clunk_soon(fid)  # a concurrent request walked it first
            return inode.fid
        if not same:
            client.clunk_soon(fid)
            inode.stale = True
            raise stale(inode.path)
        inode.fid, inode.gen = fid, gen
        return fid

    # ------------------------------------------------------------ users --
    async def _user(self, client: Client, gen: int, uid: int) -> User:
        """uid's attach in session gen (made when first needed)."""
        u = self.users.get(uid)
        if u is not None and u.gen == gen:
            self.users.move_to_end(uid)
            return u
        fid, qid = await client.attach(self.aname, uname=str(uid), n_uname=uid, key=self.key)
        if qid.path != self.root_qid_path:
            client.clunk_soon(fid)
            raise OSError(errno.EIO, f"the export's root differs for uid {uid}")
        u = self.users.get(uid)
        if u is not None and u.gen == gen:  # a concurrent request attached first
            client.clunk_soon(fid)
            self.users.move_to_end(uid)
            return u
        self.users.pop(uid, None)  # an earlier session's: its fids died with it
        self._evict(client, gen)
        u = User(uid, gen, fid)
        self.users[uid] = u
        return u

    def _evict(self, client: Client, gen: int) -> None:
        """Make room for one more user: clunk the least recently used idle
        ones (a user with a request in flight is kept, so the bound can be
        exceeded by at most the requests in flight)."""
        for uid in list(self.users):
            if len(self.users) < self.max_users:
                return
            if self._active.get(uid):
                continue
            u = self.users.pop(uid)
            if u.gen == gen:
                for fid in (u.root_fid, *u.fids.values()):
                    client.clunk_soon(fid)

    async def _fid(self, client: Client, gen: int, inode: Inode, uid: int | None) -> int:
        """inode's fid for uid (None: the mounter's tree)."""
        if uid is None:
            return await self._inode_fid(client, gen, inode)
        if inode.stale:
            raise stale(inode.path)
        user = await self._user(client, gen, uid)
        if inode.ino == ROOT_INO:
            return user.root_fid
        fid = user.fids.get(inode.ino)
        if fid is not None:
            return fid
        # Walked from this user's root by the path the mounter's tree knows.
        fid, qids = await client.walk(user.root_fid, split(inode.path))
        if not qids or qids[-1].path != inode.qid_path:
            client.clunk_soon(fid)
            raise OSError(errno.ESTALE, f"{inode.path}: moved on the server")
        return self._keep_user_fid(client, user, inode, fid)

    def _keep_user_fid(self, client: Client, user: User, inode: Inode, fid: int) -> int:
        have = user.fids.get(inode.ino)
        if have is not None or self.users.get(user.uid) is not user:
            client.clunk_soon(fid)  # a concurrent walk won, or the user was evicted
            return have if have is not None else self._evicted(user)
        user.fids[inode.ino] = fid
        return fid

    @staticmethod
    def _evicted(user: User) -> int:
        raise OSError(errno.EAGAIN, f"uid {user.uid}'s attach was just evicted")

    async def _handle_fid(
        self, client: Client, gen: int, h: Handle, open_flags: int | None = None
    ) -> int:
        """h's opened fid in session gen: opened with open_flags the first
        time, reopened with h.flags after a reconnect."""
        if h.stale:
            raise stale(h.inode.path)
        if h.fid is not None and h.gen == gen:
            return h.fid
        ifid = await self._fid(client, gen, h.inode, h.uid)
        fid, _ = await client.walk(ifid, [])
        try:
            qid, iounit = await client.lopen(fid, h.flags if open_flags is None else open_flags)
        except ConnectionLost:
            raise
        except OSError:
            client.clunk_soon(fid)
            h.stale = True
            raise stale(h.inode.path) from None
        if h.fid is not None and h.gen == gen:
            client.clunk_soon(fid)
            return h.fid
        if qid.path != h.inode.qid_path:
            client.clunk_soon(fid)
            h.stale = True
            raise stale(h.inode.path)
        h.fid, h.gen, h.iounit = fid, gen, iounit
        h.dir_buf = []
        return fid

    def _remember(self, client: Client, gen: int, path: str, fid: int | None,
                  attr: m.Rgetattr, lookups: int = 1) -> Inode:  # fmt: skip
        """Record that path (walked to fid, if given) is attr.qid's file; fid
        is kept or clunked."""
        ino = self._ino(attr.qid.path)
        inode = self.inodes.get(ino)
        if inode is None:
            inode = Inode(ino, attr.qid.path, path, fid=fid, gen=gen)
            self.inodes[ino] = inode
        else:
            if fid is not None:
                if inode.fid is not None and inode.gen == gen:
                    client.clunk_soon(fid)
                else:
                    inode.fid, inode.gen = fid, gen
            inode.stale = False
            if ino != ROOT_INO:
                inode.path = path
        inode.btime_ns = birth_ns(attr) or inode.btime_ns
        inode.mode, inode.gid = attr.mode, attr.gid
        inode.lookups += lookups
        return inode

    def _drop_if_unused(self, inode: Inode) -> None:
        if inode.lookups > 0 or inode.pins > 0 or inode.ino == ROOT_INO:
            return
        if self.inodes.get(inode.ino) is inode:
            del self.inodes[inode.ino]
        if inode.fid is not None and inode.gen == self.gen and self.client is not None:
            self.client.clunk_soon(inode.fid)
        inode.fid = None
        for user in self.users.values():
            fid = user.fids.pop(inode.ino, None)
            if fid is not None and user.gen == self.gen and self.client is not None:
                self.client.clunk_soon(fid)

    def forget(self, items: list[tuple[int, int]]) -> None:
        for ino, n in items:
            inode = self.inodes.get(ino)
            if inode is not None:
                inode.lookups = max(inode.lookups - n, 0)
                self._drop_if_unused(inode)

    async def _walk_entry(
        self, client: Client, gen: int, parent: Inode, name: str, lookups: int = 1,
        uid: int | None = None,
    ) -> tuple[Inode, m.Rgetattr]:  # fmt: skip
        pfid = await self._fid(client, gen, parent, uid)
        fid, _ = await client.walk(pfid, [name])
        try:
            attr = await client.getattr(fid)
        except BaseException:
            client.clunk_soon(fid)
            raise
        path = child_path(parent.path, name)
        if uid is None:
            return self._remember(client, gen, path, fid, attr, lookups), attr
        inode = self._remember(client, gen, path, None, attr, lookups)
        user = self.users.get(uid)
        if user is None or user.gen != gen:
            client.clunk_soon(fid)  # evicted meanwhile
        else:
            self._keep_user_fid(client, user, inode, fid)
        return inode, attr

    # ------------------------------------------------------ operations --
    async def lookup(
        self, parent_ino: int, name: str, uid: int | None = None
    ) -> tuple[Inode, m.Rgetattr]:
        parent = self.inode(parent_ino)
        return await self.run(lambda cl, g: self._walk_entry(cl, g, parent, name, uid=uid), uid)

    async def getattr(self, ino: int, uid: int | None = None) -> m.Rgetattr:
        inode = self.inode(ino)

        async def op(client: Client, gen: int) -> m.Rgetattr:
            a = await client.getattr(await self._fid(client, gen, inode, uid))
            inode.mode, inode.gid = a.mode, a.gid
            return a

        return await self.run(op, uid)

    def inherited_setgid(self, parent_ino: int) -> int:
        """S_ISGID for a new directory in a set-gid directory (as v9fs's
        mkdir does: the host's own inheritance is lost once the server sets
        the mode and owner), else 0."""
        parent = self.inodes.get(parent_ino)
        return stat.S_ISGID if parent is not None and parent.mode & stat.S_ISGID else 0

    def create_gid(self, parent_ino: int, caller_gid: int) -> int:
        """The group of a new entry: a set-gid directory's own (as a local
        file system and v9fs do), else the caller's."""
        parent = self.inodes.get(parent_ino)
        if parent is not None and parent.mode & stat.S_ISGID:
            return parent.gid
        return caller_gid

    async def setattr(
        self, ino: int, fh: int | None, valid: int, *, mode: int = 0, uid: int = 0, gid: int = 0,
        size: int = 0, atime_ns: int = 0, mtime_ns: int = 0, caller: int | None = None,
    ) -> m.Rgetattr:  # fmt: skip
        self._check_writable()
        inode = self.inode(ino)
        handle = self.handles.get(fh) if fh is not None else None

        async def op(client: Client, gen: int) -> m.Rgetattr:
            if handle is not None:
                fid = await self._handle_fid(client, gen, handle)
            else:
                fid = await self._fid(client, gen, inode, caller)
            if valid:
                await client.setattr(fid, valid, mode=mode, uid=uid, gid=gid, size=size,
                                     atime_ns=atime_ns, mtime_ns=mtime_ns)  # fmt: skip
            a = await client.getattr(fid)
            inode.mode, inode.gid = a.mode, a.gid
            return a

        return await self.run(op, caller)

    async def readlink(self, ino: int, uid: int | None = None) -> str:
        inode = self.inode(ino)

        async def op(client: Client, gen: int) -> str:
            return await client.readlink(await self._fid(client, gen, inode, uid))

        return await self.run(op, uid)

    async def _make(
        self, parent_ino: int, name: str, make: Callable[[Client, int], Awaitable[object]],
        uid: int | None,
    ) -> tuple[Inode, m.Rgetattr]:  # fmt: skip
        """make(client, parent fid of uid) creates name; then it is looked up."""
        self._check_writable()
        parent = self.inode(parent_ino)

        async def op(client: Client, gen: int) -> tuple[Inode, m.Rgetattr]:
            await make(client, await self._fid(client, gen, parent, uid))
            return await self._walk_entry(client, gen, parent, name, uid=uid)

        return await self.run(op, uid)

    async def mkdir(
        self, parent_ino: int, name: str, mode: int, gid: int, uid: int | None = None
    ) -> tuple[Inode, m.Rgetattr]:
        return await self._make(parent_ino, name, lambda cl, d: cl.mkdir(d, name, mode, gid), uid)

    async def mknod(
        self, parent_ino: int, name: str, mode: int, rdev: int, gid: int, uid: int | None = None
    ) -> tuple[Inode, m.Rgetattr]:
        major, minor = os.major(rdev), os.minor(rdev)
        return await self._make(
            parent_ino, name, lambda cl, d: cl.mknod(d, name, mode, major, minor, gid), uid
        )

    async def symlink(
        self, parent_ino: int, name: str, target: str, gid: int, uid: int | None = None
    ) -> tuple[Inode, m.Rgetattr]:
        return await self._make(
            parent_ino, name, lambda cl, d: cl.symlink(d, name, target, gid), uid
        )

    async def link(
        self, ino: int, parent_ino: int, name: str, uid: int | None = None
    ) -> tuple[Inode, m.Rgetattr]:
        self._check_writable()
        inode = self.inode(ino)
        parent = self.inode(parent_ino)

        async def op(client: Client, gen: int) -> tuple[Inode, m.Rgetattr]:
            fid = await self._fid(client, gen, inode, uid)
            await client.link(await self._fid(client, gen, parent, uid), fid, name)
            return await self._walk_entry(client, gen, parent, name, uid=uid)

        return await self.run(op, uid)

    async def unlink(
        self, parent_ino: int, name: str, rmdir: bool = False, uid: int | None = None
    ) -> None:
        self._check_writable()
        parent = self.inode(parent_ino)
        flags = c.AT_REMOVEDIR if rmdir else 0

        async def op(client: Client, gen: int) -> None:
            await client.unlinkat(await self._fid(client, gen, parent, uid), name, flags)

        await self.run(op, uid)

    async def rename(
        self, old_parent: int, old_name: str, new_parent: int, new_name: str,
        uid: int | None = None, *, noreplace: bool = False,
    ) -> None:  # fmt: skip
        """noreplace: EEXIST when new_name exists, checked just before the
        rename (9P2000.L has no atomic form: another client may create
        new_name in between, and then it is replaced)."""
        self._check_writable()
        op_ = self.inode(old_parent)
        np_ = self.inode(new_parent)

        async def op(client: Client, gen: int) -> None:
            ofid = await self._fid(client, gen, op_, uid)
            nfid = await self._fid(client, gen, np_, uid)
            if noreplace:
                try:
                    fid, _ = await client.walk(nfid, [new_name])
                except ConnectionLost:
                    raise
                except OSError as e:
                    if e.errno != errno.ENOENT:
                        raise
                else:
                    client.clunk_soon(fid)
                    raise OSError(errno.EEXIST, f"{new_name}: exists (RENAME_NOREPLACE)")
            await client.renameat(ofid, old_name, nfid, new_name)

        await self.run(op, uid)
        old = posixpath.join(op_.path, old_name)
        new = posixpath.join(np_.path, new_name)
        for inode in self.inodes.values():
            if inode.path == old:
                inode.path = new
            elif inode.path.startswith(old + "/"):
                inode.path = new + inode.path[len(old) :]

    async def statfs(self, uid: int | None = None) -> m.Rstatfs:
        root = self.inode(ROOT_INO)

        async def op(client: Client, gen: int) -> m.Rstatfs:
            return await client.statfs(await self._fid(client, gen, root, uid))

        return await self.run(op, uid)

    # --------------------------------------------------------- handles --
    def _new_handle(self, inode: Inode, flags: int, is_dir: bool, uid: int | None) -> Handle:
        fh = self._next_fh
        self._next_fh += 1
        h = Handle(fh, inode, flags, is_dir, uid)
        self.handles[fh] = h
        return h

    def handle(self, fh: int) -> Handle:
        h = self.handles.get(fh)
        if h is None:
            raise OSError(errno.EBADF, f"unknown file handle {fh}")
        return h

    async def open(
        self, ino: int, os_flags: int, is_dir: bool = False, uid: int | None = None
    ) -> Handle:
        flags = c.L_O_RDONLY | c.L_O_DIRECTORY if is_dir else wire_flags(os_flags)
        if flags & c.L_O_ACCMODE != c.L_O_RDONLY or os_flags & os.O_TRUNC:
            self._check_writable()
        inode = self.inode(ino)
        h = self._new_handle(inode, flags, is_dir, uid)
        # libfuse asks for atomic O_TRUNC: it comes here, applied on this first open only.
        first = flags | c.L_O_TRUNC if os_flags & os.O_TRUNC and not is_dir else flags
        try:
            await self.run(lambda cl, g: self._handle_fid(cl, g, h, first), uid)
        except BaseException:
            del self.handles[h.fh]
            raise
        return h

    async def create(
        self, parent_ino: int, name: str, mode: int, os_flags: int, gid: int,
        uid: int | None = None,
    ) -> tuple[Handle, Inode, m.Rgetattr]:  # fmt: skip
        self._check_writable()
        parent = self.inode(parent_ino)
        flags = wire_flags(os_flags)
        create_flags = flags | c.L_O_CREAT | (c.L_O_EXCL if os_flags & os.O_EXCL else 0)
        if os_flags & os.O_TRUNC:
            create_flags |= c.L_O_TRUNC

        async def op(client: Client, gen: int) -> tuple[Handle, Inode, m.Rgetattr]:
            pfid = await self._fid(client, gen, parent, uid)
            fid, _ = await client.walk(pfid, [])
            try:
                _, iounit = await client.lcreate(fid, name, create_flags, mode, gid)
            except BaseException:
                client.clunk_soon(fid)
                raise
            try:
                attr = await client.getattr(fid)
            except BaseException:
                client.clunk_soon(fid)
                raise
            # The inode's own fid is walked when first needed (often never).
            inode = self._remember(client, gen, child_path(parent.path, name), None, attr)
            h = self._new_handle(inode, flags, False, uid)
            h.fid, h.gen, h.iounit = fid, gen, iounit
            return h, inode, attr

        return await self.run(op, uid)

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        h = self.handle(fh)

        async def op(client: Client, gen: int) -> bytes:
            fid = await self._handle_fid(client, gen, h)
            return await client.pread(fid, offset, size, h.iounit)

        return await self.run(op, h.uid)

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        """Returns once the server acknowledged every byte."""
        self._check_writable()
        h = self.handle(fh)

        async def op(client: Client, gen: int) -> int:
            fid = await self._handle_fid(client, gen, h)
            n = await client.pwrite(fid, offset, data, h.iounit)
            if n != len(data):
                raise OSError(errno.EIO, f"{h.inode.path}: short write ({n} of {len(data)})")
            return n

        return await self.run(op, h.uid)

    async def fsync(self, fh: int, datasync: bool) -> None:
        h = self.handle(fh)

        async def op(client: Client, gen: int) -> None:
            await client.fsync(await self._handle_fid(client, gen, h), datasync)

        await self.run(op, h.uid)

    def release(self, fh: int) -> None:
        h = self.handles.pop(fh, None)
        if h is not None and h.fid is not None and h.gen == self.gen and self.client is not None:
            self.client.clunk_soon(h.fid)

    async def readdir(self, fh: int, start: int) -> list[DirEntryAttr]:
        """The next entries after cookie start (0: the first), with their
        attributes; each entry's inode is pinned until readdir_done."""
        h = self.handle(fh)

        async def op(client: Client, gen: int) -> list[DirEntryAttr]:
            fid = await self._handle_fid(client, gen, h)
            if start == 0:
                h.dir_served = 0
                h.cookies.clear()
                pos = 0
            elif (cookie := h.cookies.get(start)) is not None:
                pos = cookie
            else:
                raise OSError(errno.EINVAL, f"directory offset {start} was never given")
            if h.dir_served > MAX_DIR_ENTRIES:  # a server that lists for ever (cookies cycle)
                raise OSError(errno.EOVERFLOW, f"more than {MAX_DIR_ENTRIES} directory entries")
            asked = {pos}
            while True:
                ents = self._buffered(h, pos)
                if ents is None:
                    ents = await client.readdir(fid, pos)
                    if ents and ents[-1].offset in asked:
                        raise protocol_error(f"readdir cookie {ents[-1].offset} again")
                    h.dir_start, h.dir_buf = pos, ents
                if not ents:
                    return []
                batch = ents[:READDIR_BATCH]
                out = await asyncio.gather(
                    *(self._resolve(client, gen, h.inode, d, h.uid) for d in batch),
                    return_exceptions=True,
                )
                found = [e for e in out if isinstance(e, DirEntryAttr)]
                failed = [e for e in out if isinstance(e, BaseException)]
                if failed:
                    self.readdir_done(found, 0)  # unpin what was resolved
                    raise failed[0]
                if found:
                    for e in found:
                        local = len(h.cookies) + 1
                        h.cookies[local] = e.next_offset
                        e.next_offset = local
                    h.dir_served += len(found)
                    return found
                pos = batch[-1].offset  # all vanished or were . and ..: go on
                asked.add(pos)

        return await self.run(op, h.uid)

    @staticmethod
    def _buffered(h: Handle, start: int) -> list[m.Dirent] | None:
        if not h.dir_buf:
            return None
        if start == h.dir_start:
            return h.dir_buf
        for i, d in enumerate(h.dir_buf):
            if d.offset == start:
                return h.dir_buf[i + 1 :] or None
        return None

    async def _resolve(
        self, client: Client, gen: int, parent: Inode, d: m.Dirent, uid: int | None
    ) -> DirEntryAttr | None:
        if d.name in (".", ".."):
            return None
        try:
            inode, attr = await self._walk_entry(client, gen, parent, d.name, 0, uid)
        except ConnectionLost:
            raise
        except OSError:
            return None  # removed since the listing
        inode.pins += 1
        return DirEntryAttr(d.name, inode, attr, d.offset)

    def readdir_done(self, entries: list[DirEntryAttr], replied: int) -> None:
        """The first `replied` entries reached the kernel (one lookup each)."""
        for i, e in enumerate(entries):
            e.inode.pins -= 1
            if i < replied:
                e.inode.lookups += 1
                if self.inodes.get(e.inode.ino) is not e.inode:
                    self.inodes[e.inode.ino] = e.inode
            self._drop_if_unused(e.inode)

    # ---------------------------------------------------------- xattrs --
    async def getxattr(self, ino: int, name: str, uid: int | None = None) -> bytes:
        inode = self.inode(ino)

        async def op(client: Client, gen: int) -> bytes:
            return await client.read_xattr(await self._fid(client, gen, inode, uid), name)

        return await self.run(op, uid)

    async def listxattr(self, ino: int, uid: int | None = None) -> list[str]:
        data = await self.getxattr(ino, "", uid)
        return [n for n in data.decode("utf-8", "surrogateescape").split("\0") if n]

    async def setxattr(
        self, ino: int, name: str, value: bytes, flags: int = 0, uid: int | None = None
    ) -> None:
        self._check_writable()
        inode = self.inode(ino)

        async def op(client: Client, gen: int) -> None:
            fid, _ = await client.walk(await self._fid(client, gen, inode, uid), [])
            try:
                await client.xattrcreate(fid, name, len(value), flags)
                if value and await client.pwrite(fid, 0, value) != len(value):
                    raise OSError(errno.EIO, "short xattr write")
            except BaseException:
                client.clunk_soon(fid)
                raise
            await client.clunk(fid)  # the clunk commits the value

        await self.run(op, uid)

    async def removexattr(self, ino: int, name: str, uid: int | None = None) -> None:
        await self.setxattr(ino, name, b"", c.XATTR_REPLACE, uid)


def birth_ns(a: m.Rgetattr) -> int:
    return a.btime_sec * 10**9 + a.btime_nsec if a.valid & c.GetattrMask.BTIME else 0


def child_path(parent: str, name: str) -> str:
    path = posixpath.normpath(posixpath.join(parent, name))
    return path[1:] if path.startswith("//") else path


def split(path: str) -> list[str]:
    return [p for p in path.split("/") if p]
