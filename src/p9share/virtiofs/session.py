"""One virtio-fs connection's FUSE session: inodes, file handles, and each
opcode translated onto the operations layer.

Sans-IO: ``handle(request_bytes)`` returns the reply bytes (or None for the
requests FUSE never answers); the device edge feeds it each descriptor
chain's readable bytes and writes the reply into the writable part. For
READ and WRITE the edge uses ``read_into`` and ``write_from`` instead: the
file data goes between the file and the chain's buffers with no copy here. It may
call handle() from several threads at once: the tables are under one lock,
and no backend call is made while holding it.

What is FUSE's own and lives here: the inode table (nodeid -> backend node
and the kernel's lookup count, released by FORGET), the file-handle table,
INIT negotiation, cache timeouts, wire conversions. Every decision (grants,
names, set-id bits, device nodes, xattr namespaces, id maps, sizes, quotas,
audit) is the operations layer's: this module never asks the policy itself.

Identity: one session serves one export to one client, the one the
vhost-user socket identifies (docs/security.md §S13). The uid and gid of
each request are the calling guest process's, in the guest's id space.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..audit import NULL_AUDIT, AuditLog
from ..backend.base import NOW, Attr, Backend, LockRequest, Node, OpenFile, TimeSpec
from ..operations import Handle, Operations
from ..policy import Policy, PolicyError
from ..policy.peer import Peer
from ..policy.quota import QuotaLedger
from ..protocol import constants as c
from ..server.openflags import dotl_to_host
from . import fuse
from .fuse import Request

log = logging.getLogger("p9share.virtiofs")

CACHE_MODES = ("none", "auto", "always")
# entry and attribute timeouts (seconds) per cache mode, as virtiofsd's
_TIMEOUT = {"none": 0, "auto": 1, "always": 86400}
PAGE = 4096
MAX_PAGES = 256  # 1 MiB per READ/WRITE (Linux's virtio-fs caps it at queue size - 4 pages)
MAX_WRITE = MAX_PAGES * PAGE
# Flags of fuse_open_in.flags that are the kernel's own, not open(2) flags.
_FMODE_EXEC = 0o40
_FMODE_NONOTIFY = 0x4000000
_KERNEL_OPEN_BITS = _FMODE_EXEC | _FMODE_NONOTIFY | os.O_CREAT | os.O_EXCL | os.O_NOCTTY
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_NS = 1_000_000_000
_QTDIR = int(c.QidType.DIR)
_OFFSET_MAX = (1 << 63) - 1  # a lock's end meaning "to the end of the file"
_U64 = (1 << 64) - 1

# What p9share honours of INIT's flags. Left out on purpose:
# FLOCK_LOCKS (the guest keeps flock() locks itself; host OFD locks would make
# them conflict with its fcntl locks), HANDLE_KILLPRIV(_V2) (the guest kernel
# clears set-id bits itself with a SETATTR of the mode, which the operations
# layer applies; its own rules differ from v2's for a root writer),
# SETXATTR_EXT and POSIX_ACL (no ACL semantics), WRITEBACK_CACHE, DONT_MASK
# (the guest applies its umask), EXPORT_SUPPORT ('.' and '..' lookups),
# SECURITY_CTX, CREATE_SUPP_GROUP, DAX.
_INIT_ALWAYS = (
    fuse.ASYNC_READ
    | fuse.ATOMIC_O_TRUNC
    | fuse.BIG_WRITES
    | fuse.PARALLEL_DIROPS
    | fuse.MAX_PAGES
    | fuse.ASYNC_DIO
    | fuse.POSIX_LOCKS
)
_INIT_CACHED = fuse.DO_READDIRPLUS | fuse.READDIRPLUS_AUTO | fuse.AUTO_INVAL_DATA
_INIT_ALWAYS_CACHE = fuse.CACHE_SYMLINKS


@dataclass(slots=True, eq=False)
class _Inode:
    node: Node
    key: int  # qid path: one nodeid per host file
    path: str  # as last looked up, for the audit trail only
    is_dir: bool
    nlookup: int  # the kernel's references (LOOKUP, CREATE, ... minus FORGET)
    pins: int = 0  # requests and open handles using node right now
    released: bool = False  # node given back to the backend


@dataclass(slots=True, eq=False)
class _Open:
    nodeid: int
    inode: _Inode
    file: OpenFile
    flags: int  # host open flags
    is_dir: bool
    setid_checked: bool = False
    pins: int = 0
    released: bool = False
    locked: bool = False  # took a POSIX lock (FLUSH gives them back)


class _Waiter:
    """A SETLKW that could not be granted at once, retried by the session's
    lock waiter until it is (or the handle or session goes away)."""

    __slots__ = ("done", "event", "lock", "of", "reply", "target", "unique")

    def __init__(self, unique: int, target: Handle, of: _Open, lock: LockRequest,
                 done: Callable[[bytes | None], None] | None) -> None:  # fmt: skip
        self.unique = unique
        self.target = target
        self.of = of
        self.lock = lock
        self.done = done
        self.event = threading.Event()
        self.reply: bytes | None = None

    def finish(self, reply: bytes) -> None:
        self.reply = reply
        if self.done is not None:
            self.done(reply)
        self.event.set()


@dataclass(slots=True)
class _Used:
    """What one request pinned, unpinned when it ends."""

    inodes: list[_Inode] = field(default_factory=list)
    opens: list[_Open] = field(default_factory=list)
    where: Handle | None = None  # the first target, for the audit record of a refusal
    name: str | None = None


class Room(Protocol):
    """Where a reply is written in place: a chain's writable part (ChainWriter)."""

    available: int

    def views(self, n: int | None = None) -> list[memoryview]: ...

    def advance(self, n: int) -> None: ...


class FuseSession:
    """The FUSE side of one vhost-user connection."""

    def __init__(
        self,
        policy: Policy,
        backends: dict[str, Backend],
        export_name: str,
        peer: Peer,
        audit: AuditLog = NULL_AUDIT,
        quotas: dict[str, QuotaLedger] | None = None,
        cache: str = "auto",
        max_inodes: int = 1 << 16,
        max_handles: int = 1 << 12,
        max_lock_waiters: int = 64,
        lock_poll: float = 0.01,
    ) -> None:
        """Raises PolicyError when the socket's client may not use export_name."""
        if cache not in CACHE_MODES:
            raise ValueError(f"cache must be one of {CACHE_MODES}, not {cache!r}")
        self.peer = str(peer)
        self.client = policy.identify(peer)
        self.export, self.rights = policy.select_export(export_name, self.client)
        backend = backends.get(self.export.name)
        if backend is None:
            raise OSError(errno.ENOENT, f"export {self.export.name!r} has no backend")
        self.backend = backend
        self.audit = audit
        client_name = self.client.name if self.client is not None else None
        self.ops = Operations(policy, quotas, audit, self.peer, lambda: client_name)
        self.cache = cache
        self._timeout = _TIMEOUT[cache]
        self.max_inodes = max_inodes
        self.max_handles = max_handles
        self.max_lock_waiters = max_lock_waiters
        self.lock_poll = lock_poll  # seconds between retries of a waiting SETLKW
        self._waiters: list[_Waiter] = []
        self._waiter_thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._inodes: dict[int, _Inode] = {}
        self._by_key: dict[int, int] = {}
        self._opens: dict[int, _Open] = {}
        self._next_nodeid = fuse.ROOT_ID + 1
        self._next_fh = 1
        self.proto: fuse.Proto | None = None  # set by INIT
        self._handlers: dict[type[Request], Callable[[Any, _Used], bytes]] = {
            fuse.Init: self._init,
            fuse.Lookup: self._lookup,
            fuse.Getattr: self._getattr,
            fuse.Setattr: self._setattr,
            fuse.Readlink: self._readlink,
            fuse.Symlink: self._symlink,
            fuse.Mknod: self._mknod,
            fuse.Mkdir: self._mkdir,
            fuse.Unlink: self._unlink,
            fuse.Rmdir: self._rmdir,
            fuse.Rename: self._rename,
            fuse.Rename2: self._rename,
            fuse.Link: self._link,
            fuse.Open: self._open,
            fuse.Opendir: self._open,
            fuse.Read: self._read,
            fuse.Write: self._write,
            fuse.Statfs: self._statfs,
            fuse.Release: self._release,
            fuse.Releasedir: self._release,
            fuse.Fsync: self._fsync,
            fuse.Fsyncdir: self._fsync,
            fuse.Flush: self._flush,
            fuse.Setxattr: self._setxattr,
            fuse.Getxattr: self._getxattr,
            fuse.Listxattr: self._listxattr,
            fuse.Removexattr: self._removexattr,
            fuse.Access: self._access,
            fuse.Create: self._create,
            fuse.Readdir: self._readdir,
            fuse.Readdirplus: self._readdir,
            fuse.Destroy: self._destroy,
            fuse.Getlk: self._getlk,
            fuse.Setlk: self._setlk,
            fuse.Setlkw: self._setlk,
        }
        self._add_root(self.backend.root())

    def _add_root(self, root: Node) -> None:
        key = root.qid.path
        self._inodes[fuse.ROOT_ID] = _Inode(root, key, "/", True, 1)
        self._by_key[key] = fuse.ROOT_ID

    # ------------------------------------------------------------ dispatch --
    def handle(self, data: bytes | bytearray | memoryview) -> bytes | None:
        """The reply to one request, or None when FUSE expects none (FORGET,
        BATCH_FORGET, INTERRUPT, or bytes with no readable header). Never
        raises. A SETLKW that must wait blocks the caller until the lock is
        granted: a device edge that runs requests inline uses submit()."""
        r = self._dispatch(data, None)
        if isinstance(r, _Waiter):
            r.event.wait()
            return r.reply
        return r

    def submit(
        self, data: bytes | bytearray | memoryview, done: Callable[[bytes | None], None]
    ) -> None:
        """handle() for an edge that can answer later: done(reply) is called
        once, at once for every request but a SETLKW that must wait, which is
        answered from the session's lock-waiter thread when granted."""
        r = self._dispatch(data, done)
        if not isinstance(r, _Waiter):
            done(r)

    def _dispatch(
        self,
        data: bytes | bytearray | memoryview,
        done: Callable[[bytes | None], None] | None,
    ) -> bytes | _Waiter | None:
        try:
            req = fuse.decode_request(data, self.proto or fuse.PROTO_LATEST)
        except fuse.FuseDecodeError as e:
            log.info("%s: bad FUSE request: %s", self.peer, e)
            if e.unique is None or e.opcode in fuse.NO_REPLY:
                return None
            return fuse.reply_error(e.unique, e.errno)
        if isinstance(req, fuse.Forget):
            self._forget(((req.nodeid, req.nlookup),))
            return None
        if isinstance(req, fuse.BatchForget):
            self._forget(req.forgets)
            return None
        kind = type(req)
        if kind is fuse.Interrupt:
            return None  # every request here runs to completion; nothing to interrupt
        if self.proto is None and kind is not fuse.Init:
            return fuse.reply_error(req.unique, errno.EIO)  # as libfuse: nothing before INIT
        handler = self._handlers.get(kind)
        if handler is None:
            if isinstance(req, fuse.Unknown) and req.opcode in fuse.NO_REPLY:
                return None
            return fuse.reply_error(req.unique, errno.ENOSYS)
        used = _Used()
        try:
            if isinstance(req, fuse.Setlkw):
                return self._setlkw(req, used, done)
            return handler(req, used)
        except Exception as e:
            return self._failed(req, used, e)
        finally:
            if used.inodes or used.opens:
                self._unpin(used)

    def _failed(self, req: Request, used: _Used, e: Exception) -> bytes:
        """The error reply to a request that raised e (refusals audited)."""
        if isinstance(e, PolicyError):
            op = fuse.opcode_name(req.OPCODE).lower()
            self.ops.denied(op, used.where, used.name, e)
            return fuse.reply_error(req.unique, _errno(e.errno, errno.EACCES))
        if isinstance(e, OSError):
            return fuse.reply_error(req.unique, _errno(e.errno, errno.EIO))
        # a server bug must not take the device down
        log.error("%s: internal error handling %r", self.peer, req, exc_info=e)
        return fuse.reply_error(req.unique, errno.EIO)

    # ------------------------------------------------- READ and WRITE in place --
    # The device edge's path for file data: the data goes between the file and
    # the chain's buffers (guest memory) with no Python object in between. The
    # request is decoded from its first fuse.IO_PREFIX_SIZE bytes; everything
    # else is as handle() does it.

    def read_into(self, head: bytes, total: int, room: Room) -> tuple[int, int]:
        """A READ (head: its bytes, total: its length) answered in place: the
        reply, fuse_out_header then the data read from the file, is written
        into room (the chain's writable part) and room advanced past it.
        Returns (reply length, errno); length 0 when room cannot hold even an
        error reply. Never raises, never reads more than the request's size,
        never writes past room (too little room for the size asked is EIO: a
        guest bug, the kernel gives room for what it asks)."""
        if room.available < fuse.OUT_HEADER_SIZE:
            return 0, errno.EIO
        req = self._io_request(head, total)
        if isinstance(req, bytes):
            return _reply(room, req), _reply_errno(req)
        if not isinstance(req, fuse.Read):
            raise ValueError("read_into() of a request that is not a READ")
        # never more than negotiated, whatever a guest asks
        want = min(req.size, MAX_WRITE)
        if room.available - fuse.OUT_HEADER_SIZE < want:
            log.info("%s: READ of %d bytes with room for %d", self.peer, want,
                     room.available - fuse.OUT_HEADER_SIZE)  # fmt: skip
            return _reply(room, fuse.reply_error(req.unique, errno.EIO)), errno.EIO
        header = room.views(fuse.OUT_HEADER_SIZE)  # filled last, when the count is known
        room.advance(fuse.OUT_HEADER_SIZE)
        used = _Used()
        try:
            t, _ = self._opened(req.fh, req.uid, used)
            n = self.ops.read_into(t, req.offset, room.views(want))
        except Exception as e:
            reply = self._failed(req, used, e)  # 16 bytes: what the header holds
            _put(header, reply)
            return fuse.OUT_HEADER_SIZE, _reply_errno(reply)
        finally:
            if used.inodes or used.opens:
                self._unpin(used)
        _put(header, fuse.out_header(req.unique, n))
        room.advance(n)
        return fuse.OUT_HEADER_SIZE + n, 0

    def write_from(self, head: bytes, total: int, data: list[memoryview]) -> bytes:
        """A WRITE (head: its first fuse.IO_PREFIX_SIZE bytes, total: its
        length) whose data, the rest of the request (fuse_write_in.size
        bytes, checked against total), is written to the file straight from
        the buffers `data`, which hold exactly that rest. Returns the reply;
        never raises."""
        req = self._io_request(head, total)
        if isinstance(req, bytes):
            return req
        if not isinstance(req, fuse.WriteIn):
            raise ValueError("write_from() of a request that is not a WRITE")
        used = _Used()
        try:
            t, of = self._opened(req.fh, req.uid, used)
            n = self.ops.write_from(t, req.offset, data)
            of.setid_checked = t.setid_checked
            return fuse.reply_write(req.unique, n)
        except Exception as e:
            return self._failed(req, used, e)
        finally:
            if used.inodes or used.opens:
                self._unpin(used)

    def _io_request(self, head: bytes, total: int) -> fuse.Read | fuse.WriteIn | bytes:
        """The READ or WRITE of head, or the error reply (as _dispatch answers)."""
        try:
            req = fuse.decode_io_prefix(head, total, self.proto or fuse.PROTO_LATEST)
        except fuse.FuseDecodeError as e:
            log.info("%s: bad FUSE request: %s", self.peer, e)
            assert e.unique is not None  # a whole header was there
            return fuse.reply_error(e.unique, e.errno)
        if self.proto is None:
            return fuse.reply_error(req.unique, errno.EIO)  # nothing before INIT
        return req

    # ------------------------------------------------------------- tables --
    def _at(self, nodeid: int, uid: int, used: _Used) -> Handle:
        """A target for inode nodeid, acted on by guest user uid (pinned for the request)."""
        with self._lock:
            ino = self._inodes.get(nodeid)
            if ino is None:
                raise OSError(errno.ESTALE, f"no inode {nodeid}")
            ino.pins += 1
        used.inodes.append(ino)
        h = Handle(self.export, self.backend, self.rights, ino.node, uid, ino.path,
                   is_dir=ino.is_dir)  # fmt: skip
        if used.where is None:
            used.where = h
        return h

    def _opened(self, fh: int, uid: int, used: _Used) -> tuple[Handle, _Open]:
        with self._lock:
            of = self._opens.get(fh)
            if of is None or of.released:
                raise OSError(errno.EBADF, f"no open file handle {fh}")
            of.pins += 1
        used.opens.append(of)
        h = Handle(self.export, self.backend, self.rights, of.inode.node, uid, of.inode.path,
                   of.file, of.flags, of.is_dir, of.setid_checked)  # fmt: skip
        if used.where is None:
            used.where = h
        return h, of

    def _unpin(self, used: _Used) -> None:
        drop: list[Node] = []
        close: list[OpenFile] = []
        with self._lock:
            for of in used.opens:
                of.pins -= 1
                if of.released and of.pins == 0:
                    close.append(of.file)
                    of.inode.pins -= 1  # the handle's own pin
                    self._collect(of.inode, drop)
            for ino in used.inodes:
                ino.pins -= 1
                self._collect(ino, drop)
        for file in close:  # a RELEASE came while this request used the handle
            self._close_quietly(file)
        for node in drop:
            self.backend.release(node)

    def _collect(self, ino: _Inode, drop: list[Node]) -> None:
        """Under the lock: release an inode nothing refers to any more."""
        if ino.nlookup > 0 or ino.pins > 0 or ino.released:
            return
        ino.released = True
        nid = self._by_key.get(ino.key)
        if nid is not None and self._inodes.get(nid) is ino:
            del self._inodes[nid]
            del self._by_key[ino.key]
        drop.append(ino.node)

    def _remember(self, node: Node, path: str) -> tuple[int, _Inode]:
        """Count one kernel lookup of node (a new backend reference, consumed)."""
        key = node.qid.path
        extra: Node | None = node
        with self._lock:
            nid = self._by_key.get(key)
            if nid is not None:
                ino = self._inodes[nid]
                ino.nlookup += 1
                ino.path = path
            elif len(self._inodes) >= self.max_inodes:
                nid = 0
            else:
                nid = self._next_nodeid
                self._next_nodeid += 1
                ino = _Inode(node, key, path, bool(node.qid.type & _QTDIR), 1)
                self._inodes[nid] = ino
                self._by_key[key] = nid
                extra = None
        if extra is not None:
            self.backend.release(extra)
        if not nid:
            raise OSError(errno.ENFILE, f"{self.max_inodes} inodes in use by this guest")
        return nid, ino

    def _forget(self, forgets: tuple[tuple[int, int], ...]) -> None:
        drop: list[Node] = []
        with self._lock:
            for nodeid, n in forgets:
                ino = self._inodes.get(nodeid)
                if ino is None or nodeid == fuse.ROOT_ID:
                    continue  # the root stays for the whole session
                ino.nlookup -= min(n, ino.nlookup)
                self._collect(ino, drop)
        for node in drop:
            self.backend.release(node)

    def _new_fh(self, nodeid: int, ino: _Inode, file: OpenFile, flags: int, is_dir: bool) -> int:
        """Record an open file as a handle; the handle pins its inode."""
        with self._lock:
            if len(self._opens) >= self.max_handles:
                full = True
            else:
                full = False
                fh = self._next_fh
                self._next_fh += 1
                ino.pins += 1
                self._opens[fh] = _Open(nodeid, ino, file, flags, is_dir)
        if full:
            self._close_quietly(file)
            raise OSError(errno.EMFILE, f"{self.max_handles} files open by this guest")
        return fh

    def _close_quietly(self, file: OpenFile) -> None:
        try:
            self.backend.close(file)
        except OSError as e:
            log.info("%s: close: %s", self.peer, e)

    def inode_count(self) -> int:
        """Inodes the guest holds (for the live metrics)."""
        with self._lock:
            return len(self._inodes)

    def close(self) -> None:
        """Release every handle and inode (DESTROY, or the connection ended).
        What a request still in flight uses is released when it ends."""
        drop: list[Node] = []
        with self._lock:
            opens = list(self._opens.values())
            self._opens.clear()
            idle = []  # the others close when the requests using them end
            for of in opens:
                of.released = True
                if of.pins == 0:
                    idle.append(of)
                    of.inode.pins -= 1
            inodes = list(self._inodes.values())
            self._inodes.clear()
            self._by_key.clear()
            for ino in inodes:
                ino.nlookup = 0
                self._collect(ino, drop)
            self.proto = None
            waiters, self._waiters = self._waiters, []
        for of in idle:
            self._close_quietly(of.file)
        for w in waiters:
            self._end_wait(w, fuse.reply_error(w.unique, errno.EINTR))
        for node in drop:
            self.backend.release(node)
        root = self.backend.root()
        with self._lock:
            self._add_root(root)

    # ---------------------------------------------------------- attributes --
    def _attr(self, t: Handle) -> fuse.Attr:
        a, uid, gid = self.ops.getattr(t)
        return _fuse_attr(a, uid, gid)

    def _entry(self, nodeid: int, attr: fuse.Attr) -> fuse.EntryOut:
        return fuse.EntryOut(nodeid, 0, self._timeout, self._timeout, 0, 0, attr)

    def _minor(self) -> int:
        return self.proto.minor if self.proto is not None else fuse.MAX_MINOR

    def _child(self, d: Handle, name: str, used: _Used) -> fuse.EntryOut:
        """Walk to d/name and count a kernel lookup of it."""
        if name in (".", ".."):
            raise OSError(errno.EINVAL, "'.' and '..' are not looked up (no EXPORT_SUPPORT)")
        self.ops.check_walk_names((name,))
        node = d.backend.walk(d.node, name)
        try:
            path = d.path.rstrip("/") + "/" + name
            t = Handle(self.export, self.backend, self.rights, node, d.uid, path)
            attr = self._attr(t)
        except BaseException:
            self.backend.release(node)
            raise
        nid, _ = self._remember(node, path)
        return self._entry(nid, attr)

    # ------------------------------------------------------------ handlers --
    def _init(self, req: fuse.Init, used: _Used) -> bytes:
        if req.major > fuse.KERNEL_VERSION:
            return fuse.reply_init_major_only(req.unique)
        if req.major < fuse.KERNEL_VERSION or req.minor < fuse.MIN_MINOR:
            raise OSError(errno.EPROTO, f"FUSE {req.major}.{req.minor} is older than 7.31")
        if self.proto is not None:
            # the guest was reset inside a running VMM (a reboot): the mount
            # that held these inodes and handles is gone; start afresh
            log.info("%s: INIT again: the guest was reset; its old inodes are released", self.peer)
            self.close()
        minor = min(req.minor, fuse.MAX_MINOR)
        want = _INIT_ALWAYS
        if self.cache != "none":
            want |= _INIT_CACHED
        if self.cache == "always":
            want |= _INIT_ALWAYS_CACHE
        flags = req.flags & want
        self.proto = fuse.Proto(minor)
        self.audit.emit("attach", peer=self.peer, client=self.client.name if self.client else None,
                        export=self.export.name, readonly=self.rights.readonly,
                        transport="virtio-fs")  # fmt: skip
        log.info("%s: FUSE 7.%d, export %r, cache=%s, flags %#x", self.peer, minor,
                 self.export.name, self.cache, flags)  # fmt: skip
        out = fuse.InitOut(fuse.KERNEL_VERSION, minor, req.max_readahead, flags,
                           16, 12, MAX_WRITE, 1, MAX_PAGES)  # fmt: skip
        return fuse.reply_init(req.unique, out)

    def _destroy(self, req: fuse.Destroy, used: _Used) -> bytes:
        self.close()
        return fuse.reply_empty(req.unique)

    def _lookup(self, req: fuse.Lookup, used: _Used) -> bytes:
        used.name = req.name
        d = self._at(req.nodeid, req.uid, used)
        return fuse.reply_entry(req.unique, self._child(d, req.name, used), self._minor())

    def _getattr(self, req: fuse.Getattr, used: _Used) -> bytes:
        t = self._at(req.nodeid, req.uid, used)
        return fuse.reply_attr(req.unique, self._attr(t), self._timeout, 0, self._minor())

    def _setattr(self, req: fuse.Setattr, used: _Used) -> bytes:
        v = req.valid
        if v & fuse.FATTR_FH:
            t, _ = self._opened(req.fh, req.uid, used)
        else:
            t = self._at(req.nodeid, req.uid, used)
        self.ops.setattr(
            t,
            mode=req.mode if v & fuse.FATTR_MODE else None,
            uid=req.new_uid if v & fuse.FATTR_UID else None,
            gid=req.new_gid if v & fuse.FATTR_GID else None,
            size=req.size if v & fuse.FATTR_SIZE else None,
            atime=_time(v, fuse.FATTR_ATIME, fuse.FATTR_ATIME_NOW, req.atime, req.atimensec),
            mtime=_time(v, fuse.FATTR_MTIME, fuse.FATTR_MTIME_NOW, req.mtime, req.mtimensec),
            ctime=bool(v & fuse.FATTR_CTIME),
        )
        return fuse.reply_attr(req.unique, self._attr(t), self._timeout, 0, self._minor())

    def _readlink(self, req: fuse.Readlink, used: _Used) -> bytes:
        t = self._at(req.nodeid, req.uid, used)
        return fuse.reply_data(req.unique, self.ops.readlink(t).encode("utf-8"))

    def _made(self, req: Request, d: Handle, name: str, used: _Used) -> bytes:
        """The entry reply of a create-like request: the new file, looked up."""
        return fuse.reply_entry(req.unique, self._child(d, name, used), self._minor())

    def _symlink(self, req: fuse.Symlink, used: _Used) -> bytes:
        used.name = req.name
        d = self._at(req.nodeid, req.uid, used)
        self.ops.symlink(d, req.name, req.target, req.gid)
        return self._made(req, d, req.name, used)

    def _mknod(self, req: fuse.Mknod, used: _Used) -> bytes:
        used.name = req.name
        d = self._at(req.nodeid, req.uid, used)
        major, minor = _decode_dev(req.rdev)
        self.ops.mknod(d, req.name, req.mode, major, minor, req.gid)
        return self._made(req, d, req.name, used)

    def _mkdir(self, req: fuse.Mkdir, used: _Used) -> bytes:
        used.name = req.name
        d = self._at(req.nodeid, req.uid, used)
        self.ops.mkdir(d, req.name, req.mode, req.gid)
        return self._made(req, d, req.name, used)

    def _link(self, req: fuse.Link, used: _Used) -> bytes:
        used.name = req.newname
        d = self._at(req.nodeid, req.uid, used)
        target = self._at(req.oldnodeid, req.uid, used)
        self.ops.link(d, target, req.newname)
        return self._made(req, d, req.newname, used)

    def _unlink(self, req: fuse.Unlink, used: _Used) -> bytes:
        used.name = req.name
        self.ops.unlink(self._at(req.nodeid, req.uid, used), req.name, rmdir=False)
        return fuse.reply_empty(req.unique)

    def _rmdir(self, req: fuse.Rmdir, used: _Used) -> bytes:
        used.name = req.name
        self.ops.unlink(self._at(req.nodeid, req.uid, used), req.name, rmdir=True)
        return fuse.reply_empty(req.unique)

    def _rename(self, req: fuse.Rename | fuse.Rename2, used: _Used) -> bytes:
        if isinstance(req, fuse.Rename2) and req.flags:
            # No atomic NOREPLACE or EXCHANGE in the operations layer: ENOSYS
            # makes the kernel answer EINVAL itself and stop asking.
            raise OSError(errno.ENOSYS, f"rename flags {req.flags:#x}")
        used.name = req.oldname
        old = self._at(req.nodeid, req.uid, used)
        new = self._at(req.newdir, req.uid, used)
        self.ops.rename(old, req.oldname, new, req.newname)
        return fuse.reply_empty(req.unique)

    def _open_reply_flags(self, is_dir: bool) -> int:
        if self.cache == "none":
            return 0 if is_dir else fuse.FOPEN_DIRECT_IO
        if self.cache == "always":
            return fuse.FOPEN_KEEP_CACHE | (fuse.FOPEN_CACHE_DIR if is_dir else 0)
        return 0

    def _open(self, req: fuse.Open | fuse.Opendir, used: _Used) -> bytes:
        t = self._at(req.nodeid, req.uid, used)
        ino = used.inodes[-1]
        if isinstance(req, fuse.Opendir) and not t.is_dir:
            raise OSError(errno.ENOTDIR, "OPENDIR of a file that is not a directory")
        file = self.ops.open(t, _host_flags(req.flags))
        fh = self._new_fh(req.nodeid, ino, file, t.open_flags, t.is_dir)
        return fuse.reply_open(req.unique, fh, self._open_reply_flags(t.is_dir))

    def _create(self, req: fuse.Create, used: _Used) -> bytes:
        used.name = req.name
        d = self._at(req.nodeid, req.uid, used)
        flags = _host_flags(req.flags) | os.O_CREAT | (req.flags & os.O_EXCL)
        node, file, _ = self.ops.create(d, req.name, flags, req.mode, req.gid)
        path = d.path.rstrip("/") + "/" + req.name
        t = Handle(self.export, self.backend, self.rights, node, req.uid, path, file,
                   flags & ~(os.O_CREAT | os.O_EXCL))  # fmt: skip
        try:
            attr = self._attr(t)
        except BaseException:
            self._close_quietly(file)
            self.backend.release(node)
            raise
        try:
            nid, ino = self._remember(node, path)  # gives node back if it fails
        except BaseException:
            self._close_quietly(file)
            raise
        try:
            fh = self._new_fh(nid, ino, file, t.open_flags, False)  # closes file if it fails
        except BaseException:
            self._forget(((nid, 1),))  # the kernel never learns of this lookup
            raise
        return fuse.reply_create(req.unique, self._entry(nid, attr), fh,
                                 self._open_reply_flags(False), self._minor())  # fmt: skip

    def _read(self, req: fuse.Read, used: _Used) -> bytes:
        t, _ = self._opened(req.fh, req.uid, used)
        # never more than negotiated, whatever a guest asks (it sizes our buffer)
        data = self.ops.read(t, req.offset, min(req.size, MAX_WRITE))
        return fuse.reply_data(req.unique, data)

    def _write(self, req: fuse.Write, used: _Used) -> bytes:
        t, of = self._opened(req.fh, req.uid, used)
        n = self.ops.write(t, req.offset, req.data)
        of.setid_checked = t.setid_checked
        return fuse.reply_write(req.unique, n)

    def _flush(self, req: fuse.Flush, used: _Used) -> bytes:
        """A close(2) in the guest: its POSIX locks on this handle go (writes
        are not buffered here: nothing else to push)."""
        t, of = self._opened(req.fh, req.uid, used)
        if of.locked:
            of.locked = False
            self.ops.lock(t, LockRequest(c.LOCK_TYPE_UNLCK, 0, 0, req.pid, _owner(req.lock_owner)))
        return fuse.reply_empty(req.unique)

    def _fsync(self, req: fuse.Fsync | fuse.Fsyncdir, used: _Used) -> bytes:
        t, _ = self._opened(req.fh, req.uid, used)
        self.ops.fsync(t, bool(req.fsync_flags & fuse.FSYNC_FDATASYNC))
        return fuse.reply_empty(req.unique)

    def _release(self, req: fuse.Release | fuse.Releasedir, used: _Used) -> bytes:
        drop: list[Node] = []
        with self._lock:
            of = self._opens.pop(req.fh, None)
            if of is None:
                raise OSError(errno.EBADF, f"no open file handle {req.fh}")
            of.released = True
            now = of.pins == 0  # else the last request using it closes it
            if now:
                of.inode.pins -= 1
                self._collect(of.inode, drop)
        if now:
            self.backend.close(of.file)
        for node in drop:
            self.backend.release(node)
        return fuse.reply_empty(req.unique)

    def _readdir(self, req: fuse.Readdir | fuse.Readdirplus, used: _Used) -> bytes:
        t, of = self._opened(req.fh, req.uid, used)
        if not of.is_dir or t.file is None:
            raise OSError(errno.ENOTDIR, "not an open directory")
        plus = isinstance(req, fuse.Readdirplus)
        buf = fuse.DirentBuffer(min(req.size, MAX_WRITE), self._minor())
        # The backend's listing is the operations layer's gap: it has no readdir.
        for ent in t.backend.readdir(t.file, req.offset):
            if not plus:
                if not buf.add(ent.qid.path, ent.cookie, ent.dtype, ent.name):
                    break
                continue
            if ent.name in (".", ".."):  # the kernel takes no lookup of these
                entry = fuse.EntryOut(0, 0, 0, 0, 0, 0, _dot_attr(ent.qid.path, ent.dtype))
                if not buf.add_plus(entry, ent.cookie, ent.dtype, ent.name):
                    break
                continue
            try:
                entry = self._child(t, ent.name, used)
            except OSError:  # gone since the listing: list it without attributes
                entry = fuse.EntryOut(0, 0, 0, 0, 0, 0, _dot_attr(ent.qid.path, ent.dtype))
            if not buf.add_plus(entry, ent.cookie, ent.dtype, ent.name):
                if entry.nodeid:
                    self._forget(((entry.nodeid, 1),))  # the kernel never saw it
                break
        return fuse.reply_data(req.unique, buf.getvalue())

    def _statfs(self, req: fuse.Statfs, used: _Used) -> bytes:
        s = self.ops.statfs(self._at(req.nodeid, req.uid, used))
        out = fuse.StatfsOut(s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize,
                             s.namelen, s.bsize)  # fmt: skip
        return fuse.reply_statfs(req.unique, out)

    def _access(self, req: fuse.Access, used: _Used) -> bytes:
        self.ops.access(self._at(req.nodeid, req.uid, used), req.mask)
        return fuse.reply_empty(req.unique)

    # --------------------------------------------------------------- locks --
    def _getlk(self, req: fuse.Getlk, used: _Used) -> bytes:
        t, _ = self._opened(req.fh, req.uid, used)
        got = self.ops.getlock(t, _lock_request(req))
        if got.type == c.LOCK_TYPE_UNLCK:
            return fuse.reply_lk(req.unique, fuse.FileLock(req.start, req.end, got.type, 0))
        end = _OFFSET_MAX if got.length == 0 else got.start + got.length - 1
        # pid 0: a holder's pid means nothing in the guest (Linux answers EIO
        # to a pid it cannot find in the mount's namespace)
        return fuse.reply_lk(req.unique, fuse.FileLock(got.start, end, got.type, 0))

    def _setlk(self, req: fuse.Setlk | fuse.Setlkw, used: _Used) -> bytes:
        t, of = self._opened(req.fh, req.uid, used)
        lock = _lock_request(req)
        if self.ops.lock(t, lock) == c.LOCK_BLOCKED:
            raise OSError(errno.EAGAIN, "lock held elsewhere")
        if lock.type != c.LOCK_TYPE_UNLCK:
            of.locked = True
        return fuse.reply_empty(req.unique)

    def _setlkw(
        self, req: fuse.Setlkw, used: _Used, done: Callable[[bytes | None], None] | None
    ) -> bytes | _Waiter:
        t, of = self._opened(req.fh, req.uid, used)
        lock = _lock_request(req)
        if self.ops.lock(t, lock) == c.LOCK_SUCCESS:
            if lock.type != c.LOCK_TYPE_UNLCK:
                of.locked = True
            return fuse.reply_empty(req.unique)
        w = _Waiter(req.unique, t, of, lock, done)
        with self._lock:
            if len(self._waiters) >= self.max_lock_waiters:
                raise OSError(errno.ENOLCK, f"{self.max_lock_waiters} lock waits in progress")
            of.pins += 1  # the handle stays open while its lock is awaited
            self._waiters.append(w)
            if self._waiter_thread is None:
                self._waiter_thread = threading.Thread(
                    target=self._wait_locks, name="virtiofs-locks", daemon=True
                )
                self._waiter_thread.start()
        return w

    def _wait_locks(self) -> None:
        """One thread per session retries every waiting SETLKW (F_OFD_SETLK
        does not wait: one thread serves them all, bounded by max_lock_waiters)."""
        while True:
            time.sleep(self.lock_poll)
            with self._lock:
                waiters = list(self._waiters)
                if not waiters:
                    self._waiter_thread = None
                    return
            for w in waiters:
                if w.of.released:
                    self._end_wait(w, fuse.reply_error(w.unique, errno.EBADF))
                    continue
                try:
                    if self.ops.lock(w.target, w.lock) == c.LOCK_BLOCKED:
                        continue
                    if w.lock.type != c.LOCK_TYPE_UNLCK:
                        w.of.locked = True
                    reply = fuse.reply_empty(w.unique)
                except OSError as e:
                    reply = fuse.reply_error(w.unique, _errno(e.errno, errno.EIO))
                except Exception:
                    log.exception("%s: lock wait failed", self.peer)
                    reply = fuse.reply_error(w.unique, errno.EIO)
                self._end_wait(w, reply)

    def _end_wait(self, w: _Waiter, reply: bytes) -> None:
        with self._lock:
            if w in self._waiters:
                self._waiters.remove(w)
        self._unpin(_Used(opens=[w.of]))
        try:
            w.finish(reply)
        except Exception:
            log.exception("%s: lock reply failed", self.peer)

    # -------------------------------------------------------------- xattrs --
    def _setxattr(self, req: fuse.Setxattr, used: _Used) -> bytes:
        used.name = req.name
        if req.setxattr_flags:
            raise OSError(errno.EINVAL, f"setxattr flags {req.setxattr_flags:#x}")
        self.ops.xattr_set(self._at(req.nodeid, req.uid, used), req.name, req.value, req.flags)
        return fuse.reply_empty(req.unique)

    def _getxattr(self, req: fuse.Getxattr, used: _Used) -> bytes:
        used.name = req.name
        value = self.ops.xattr_get(self._at(req.nodeid, req.uid, used), req.name)
        return _sized(req.unique, req.size, value)

    def _listxattr(self, req: fuse.Listxattr, used: _Used) -> bytes:
        names = self.ops.xattr_list(self._at(req.nodeid, req.uid, used))
        return _sized(req.unique, req.size, b"".join(n.encode("utf-8") + b"\x00" for n in names))

    def _removexattr(self, req: fuse.Removexattr, used: _Used) -> bytes:
        used.name = req.name
        self.ops.xattr_remove(self._at(req.nodeid, req.uid, used), req.name)
        return fuse.reply_empty(req.unique)


# ------------------------------------------------------------------ helpers --


def _put(views: list[memoryview], data: bytes) -> int:
    """Copy data into views from their start (it fits): its length."""
    pos = 0
    for v in views:
        if pos >= len(data):
            break
        chunk = data[pos : pos + len(v)]
        v[: len(chunk)] = chunk
        pos += len(chunk)
    return pos


def _reply(room: Room, reply: bytes) -> int:
    """A whole (small) reply into room, advanced past it: its length."""
    _put(room.views(len(reply)), reply)
    room.advance(len(reply))
    return len(reply)


def _reply_errno(reply: bytes) -> int:
    return -int.from_bytes(reply[4:8], "little", signed=True)


def _errno(err: int | None, default: int) -> int:
    return err if err is not None and 0 < err < 4096 else default


def _owner(lock_owner: int) -> str:
    return f"fuse:{lock_owner:x}"


def _lock_request(req: fuse.Getlk | fuse.Setlk | fuse.Setlkw) -> LockRequest:
    """fuse_lk_in (inclusive end, OFFSET_MAX for "to the end") -> LockRequest."""
    if req.lk_flags & fuse.LK_FLOCK:
        raise OSError(errno.ENOSYS, "flock locks stay in the guest (FLOCK_LOCKS not offered)")
    if req.start > _OFFSET_MAX or req.end < req.start:
        raise OSError(errno.EINVAL, f"lock range {req.start}..{req.end}")
    length = 0 if req.end >= _OFFSET_MAX else req.end - req.start + 1
    return LockRequest(req.type, req.start, length, req.lk_pid, _owner(req.owner))


def _sized(unique: int, size: int, value: bytes) -> bytes:
    """GETXATTR/LISTXATTR: size 0 asks how big; a value larger than size is ERANGE."""
    if size == 0:
        return fuse.reply_xattr_size(unique, len(value))
    if len(value) > size:
        raise OSError(errno.ERANGE, f"{len(value)} bytes do not fit in {size}")
    return fuse.reply_data(unique, value)


def _host_flags(flags: int) -> int:
    """fuse_open_in/fuse_create_in flags (the guest's f_flags, Linux's generic
    values as 9P2000.L's) to host flags; the kernel's own bits are dropped."""
    return dotl_to_host(flags & ~_KERNEL_OPEN_BITS)


def _time(valid: int, bit: int, now_bit: int, sec: int, nsec: int) -> TimeSpec:
    if valid & now_bit:
        return NOW
    if not valid & bit:
        return None
    if nsec >= _NS:
        raise OSError(errno.EINVAL, "nanoseconds out of range")
    if sec >= 1 << 63:
        sec -= 1 << 64  # the kernel's time64_t: before 1970 is negative
    return sec * _NS + nsec


def _split_ns(ns: int) -> tuple[int, int]:
    sec, nsec = divmod(ns, _NS)
    return sec & _U64, nsec


def _encode_dev(rdev: int) -> int:
    """Linux's new_encode_dev: the 32-bit dev_t a fuse_attr carries."""
    major, minor = os.major(rdev), os.minor(rdev)
    return ((minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)) & 0xFFFFFFFF


def _decode_dev(rdev: int) -> tuple[int, int]:
    """Linux's new_decode_dev of fuse_mknod_in.rdev: (major, minor)."""
    return (rdev & 0xFFF00) >> 8, (rdev & 0xFF) | ((rdev >> 12) & 0xFFF00)


def _fuse_attr(a: Attr, uid: int, gid: int) -> fuse.Attr:
    asec, ansec = _split_ns(a.atime_ns)
    msec, mnsec = _split_ns(a.mtime_ns)
    csec, cnsec = _split_ns(a.ctime_ns)
    rdev = _encode_dev(a.rdev) if a.rdev else 0
    return fuse.Attr(a.qid.path, a.size, a.blocks, asec, msec, csec, ansec, mnsec, cnsec,
                     a.mode, a.nlink, uid & 0xFFFFFFFF, gid & 0xFFFFFFFF, rdev,
                     a.blksize & 0xFFFFFFFF)  # fmt: skip


def _dot_attr(ino: int, dtype: int) -> fuse.Attr:
    """Attributes the kernel ignores (nodeid 0): only the entry's inode number and type."""
    return fuse.Attr(ino, 0, 0, 0, 0, 0, 0, 0, 0, (dtype & 0xF) << 12, 0, 0, 0, 0, 0)
