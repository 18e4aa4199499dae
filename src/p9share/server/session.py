"""Request handling of one connection: fid rules and the operations.

A Session turns a decoded request into a reply message. It keeps what 9P
defines (fids and their rules, Tauth/Tattach, wire encodings) and translates
each operation onto p9share.operations, which makes every policy decision,
quota charge, set-id rule and denial record for every protocol. It does no
I/O of its own: the connection module feeds it requests and sends what it
returns.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from ..audit import NULL_AUDIT, AuditLog
from ..backend.base import NOW, Backend, LockRequest, Node, TimeSpec
from ..operations import Operations
from ..policy import Client, Policy, PolicyError
from ..policy.peer import Peer
from ..policy.quota import QuotaLedger
from ..protocol import constants as c
from ..protocol import messages as m
from ..protocol.connection import ServerConnection
from ..protocol.wire import Qid
from ..security.auth import AuthExchange, Keyring
from .classic import ClassicHandlers
from .fids import Fid, FidKind, FidTable, XattrWrite
from .metrics import Metrics, Stats, fid_of, op_of, reply_facts
from .openflags import dotl_create_flags, dotl_to_host
from .paths import walked as _walked

log = logging.getLogger("p9share.server")

RREAD_OVERHEAD = 11  # size[4] type[1] tag[2] count[4]
GETATTR_SUPPORTED = c.GetattrMask.BASIC | c.GetattrMask.BTIME
# plain ints for the hot paths (IntFlag arithmetic is slow)
_QTDIR = int(c.QidType.DIR)
_VALID_BASIC = int(c.GetattrMask.BASIC)
_VALID_BASIC_BTIME = int(GETATTR_SUPPORTED)
_T = TypeVar("_T")
# Tsetattr valid bits as plain ints (IntFlag arithmetic costs ~1 µs a test)
_SA_MODE, _SA_UID, _SA_GID, _SA_SIZE = (int(c.SetattrValid.MODE), int(c.SetattrValid.UID),
                                        int(c.SetattrValid.GID), int(c.SetattrValid.SIZE))  # fmt: skip
_SA_ATIME, _SA_MTIME, _SA_CTIME = (int(c.SetattrValid.ATIME), int(c.SetattrValid.MTIME),
                                   int(c.SetattrValid.CTIME))  # fmt: skip
_SA_ATIME_SET, _SA_MTIME_SET = int(c.SetattrValid.ATIME_SET), int(c.SetattrValid.MTIME_SET)
_NS = 1_000_000_000
_U64 = 0xFFFF_FFFF_FFFF_FFFF  # sec[8] is two's complement: before 1970 is negative


class Session(ClassicHandlers):
    """The fids and operations of one 9P connection."""

    def __init__(
        self,
        proto: ServerConnection,
        policy: Policy,
        backends: dict[str, Backend],
        peer: str = "",
        peer_info: Peer | None = None,
        audit: AuditLog = NULL_AUDIT,
        quotas: dict[str, QuotaLedger] | None = None,
        keyring: Keyring | None = None,
        auth_required: bool = False,
        on_identified: Callable[[str], None] | None = None,
        metrics: Metrics | None = None,
        client_label: str = "",
    ) -> None:
        """keyring: the client keys Tauth accepts (None: Tauth is not offered).
        auth_required: every Tattach must name a verified auth fid.
        on_identified: called with the client's name when a Tattach's key
        identifies a client, before the attach succeeds; it may refuse the
        attach with a PolicyError (the server switches the connection to that
        client's limits here).
        metrics: counts each request under (client, export); client_label
        names the client when the policy has none (the open policy)."""
        if auth_required and keyring is None:
            raise ValueError("auth_required needs a keyring")
        self.keyring = keyring
        self.auth_required = auth_required
        self.auth_key: str | None = None  # the key id this connection authenticated with
        self.on_identified = on_identified
        self._auth_count = 0
        self.proto = proto
        self.peer_info = peer_info if peer_info is not None else Peer(peer or "?", "?")
        self.policy = policy
        self.backends = backends
        self.peer = peer
        self.audit = audit
        self.quotas = quotas if quotas is not None else {}  # export name -> ledger
        # who the connection is, from what the host can trust (set by the server)
        self.client: Client | None = policy.identify(self.peer_info)
        self.exports_attached: set[str] = set()
        self.fids = FidTable()
        self.ops = Operations(policy, self.quotas, audit, peer, self._client_name)
        self.metrics = metrics
        self.client_label = client_label or peer
        self._stats: dict[str, Stats] = {}  # export -> this client's counters there
        self._handlers: dict[type[m.Message], Callable[[Any], m.Message]] = {
            m.Tauth: self.auth,
            m.Tattach: self.attach,
            m.Twalk: self.walk,
            m.Tclunk: self.clunk,
            m.Tremove: self.remove,
            m.Tread: self.read,
            m.Twrite: self.write,
            m.Tstatfs: self.statfs,
            m.Tlopen: self.lopen,
            m.Tlcreate: self.lcreate,
            m.Tsymlink: self.symlink,
            m.Tmknod: self.mknod,
            m.Trename: self.rename,
            m.Treadlink: self.readlink,
            m.Tgetattr: self.getattr,
            m.Tsetattr: self.setattr,
            m.Txattrwalk: self.xattrwalk,
            m.Txattrcreate: self.xattrcreate,
            m.Treaddir: self.readdir,
            m.Tfsync: self.fsync,
            m.Tlock: self.lock,
            m.Tgetlock: self.getlock,
            m.Tlink: self.link,
            m.Tmkdir: self.mkdir,
            m.Trenameat: self.renameat,
            m.Tunlinkat: self.unlinkat,
            m.Topen: self.open,
            m.Tcreate: self.create,
            m.Tstat: self.stat,
            m.Twstat: self.wstat,
        }

    # ------------------------------------------------------------ dispatch --
    def handle(self, msg: m.Message) -> m.Message:
        """The reply to one request (never raises)."""
        if self.metrics is None:
            return self._handle(msg)
        fnum = fid_of(msg)
        f = self.fids.peek(fnum) if fnum is not None else None  # before a clunk drops it
        t0 = time.perf_counter()
        reply = self._handle(msg)
        seconds = time.perf_counter() - t0
        if f is None and fnum is not None:
            f = self.fids.peek(fnum)  # made by this request (Tattach)
        export = f.export.name if f is not None else "-"
        stats = self._stats.get(export)
        if stats is None:  # first request in this export, or the client changed
            client = self.client.name if self.client is not None and self.policy.clients else None
            stats = self._stats[export] = self.metrics.stats("9p", client or self.client_label,
                                                             export)  # fmt: skip
        err, nread, nwritten = reply_facts(msg, reply)
        stats.request(op_of(msg), err, seconds, nread, nwritten)
        if type(msg) is m.Tattach or type(msg) is m.Tversion:
            self._stats.clear()  # a key may have changed who the client is
        return reply

    def _handle(self, msg: m.Message) -> m.Message:
        handler = self._handlers.get(type(msg))
        if handler is None:
            return self.proto.error_reply(errno.EOPNOTSUPP)
        try:
            return handler(msg)
        except PolicyError as e:
            self._denied(msg, e)
            return self.proto.error_reply(e.errno or errno.EACCES, e.reason)
        except OSError as e:
            return self.proto.error_reply(e.errno or errno.EIO)
        except Exception:  # a server bug must not take the connection down
            log.exception("%s: internal error handling %r", self.peer, msg)
            return self.proto.error_reply(errno.EIO)

    def bytes_to_move(self, msg: m.Tread | m.Treaddir) -> int:
        """About how many bytes a read or directory read will return: its
        count, capped by what is left of the file (a directory's size grows
        with its entries). The connection pools only requests that move
        much; the kernel client asks for msize even from a 1 KiB file. An
        unknown or unopened fid moves nothing (its error comes at once)."""
        f = self.fids.peek(msg.fid)
        if f is None or f.file is None:
            return 0
        try:
            size = f.backend.getattr(f.node).size
        except OSError:
            return 0
        if type(msg) is m.Tread:
            size -= msg.offset
        return max(0, min(msg.count, size))

    def _denied(self, msg: m.Message, e: PolicyError) -> None:
        op = type(msg).__name__[1:].lower()
        if op == "attach":
            log.info("%s: denied %s: %s", self.peer, op, e.reason)
            return  # attach() audits its own refusals
        fnum = getattr(msg, "fid", getattr(msg, "dfid", getattr(msg, "dirfid", None)))
        f = self.fids.peek(fnum) if isinstance(fnum, int) else None
        self.ops.denied(op, f, getattr(msg, "name", None), e)

    def _client_name(self) -> str | None:
        return self.client.name if self.client is not None else None

    def reset(self) -> None:
        """Drop every fid (Tversion or the end of the connection)."""
        for f in self.fids.clear():
            try:
                self._finish_clunk(f)
            except OSError:
                pass
            f.release_resources()
        # a new session proves its key again: until then it is the client
        # its transport matches (the limits a key switched to stay, §S15)
        self.auth_key = None
        self.client = self.policy.identify(self.peer_info)

    # -------------------------------------------------------------- helpers --
    def _fid(self, num: int) -> Fid:
        return self.fids.acquire(num)

    def _done(self, *fids: Fid) -> None:
        for f in fids:
            self.fids.release(f)

    def _claim(self, num: int) -> Fid:
        """The fid for a request that changes its state (open, create, walk
        onto itself, xattr, clunk, remove), held under its state lock so that
        check and change are one step against another such request on it
        (one delayed by rate limits, or pooled); pair with _unclaim()."""
        f = self.fids.acquire(num)
        lock = self.fids.state_lock(num)
        lock.acquire()
        if f.clunked:  # the request this one waited for clunked or replaced it
            lock.release()
            self.fids.release(f)
            raise OSError(errno.EBADF, f"fid {num} was clunked")
        return f

    def _unclaim(self, f: Fid) -> None:
        self.fids.state_lock(f.num).release()
        self.fids.release(f)

    def _iounit(self) -> int:
        return self.proto.msize - c.IOHDRSZ

    @staticmethod
    def _need_node(f: Fid) -> None:
        if f.kind is not FidKind.FILE:
            raise OSError(errno.EBADF, f"fid is an {f.kind.value} fid, not a file")

    def _need_dir(self, f: Fid) -> None:
        self._need_node(f)
        if not f.node.qid.type & _QTDIR:
            raise OSError(errno.ENOTDIR, "not a directory")

    @staticmethod
    def _need_unopened(f: Fid) -> None:
        if f.file is not None:
            raise OSError(errno.EBADF, "fid is already open")

    @staticmethod
    def _need_open(f: Fid) -> None:
        if f.file is None:
            raise OSError(errno.EBADF, "fid is not open")

    # ------------------------------------------------------ session and fids --
    def auth(self, msg: m.Tauth) -> m.Message:
        if self.keyring is None:
            raise OSError(errno.EOPNOTSUPP, "authentication is not offered")
        self.fids.check_free(msg.afid)
        if not self.backends:
            raise OSError(errno.ENOENT, "no exports")
        # An auth fid refers to no file, but every Fid holds a node: it holds
        # the first export's root, never used (node operations need FILE).
        # The aname is not looked up here, so Tauth tells nothing about exports.
        name, backend = next(iter(self.backends.items()))
        node = backend.root()
        ex = AuthExchange(self.keyring, msg.uname, msg.aname, msg.n_uname)
        f = Fid(msg.afid, self.policy.exports[name], backend, node, c.NONUNAME,
                kind=FidKind.AUTH, auth=ex)  # fmt: skip
        try:
            self.fids.add(f)
        except OSError:
            backend.release(node)
            raise
        self._auth_count += 1
        log.debug("%s: auth fid %d for uname %r aname %r", self.peer, msg.afid, msg.uname,
                  msg.aname)  # fmt: skip
        return m.Rauth(Qid(c.QidType.AUTH, 0, self._auth_count))

    def _auth_io(self, f: Fid, op: Callable[[AuthExchange], _T]) -> _T:
        """A read or write on an auth fid; refusals are logged."""
        assert f.auth is not None
        try:
            return op(f.auth)
        except OSError as e:
            log.warning("%s: auth fid %d: %s", self.peer, f.num, e.strerror)
            self.audit.emit("auth-failed", peer=self.peer, fid=f.num, reason=e.strerror)
            raise

    def _authorise(self, msg: m.Tattach) -> str | None:
        """The key id that authorises this Tattach (None: unauthenticated), or
        an error; both are audited."""
        if msg.afid == c.NOFID:
            return None
        a = self._fid(msg.afid)
        try:
            if a.kind is not FidKind.AUTH or a.auth is None:
                raise OSError(errno.EINVAL, f"fid {msg.afid} is not an auth fid")
            ex = a.auth
            if self.auth_key is not None and ex.key_id not in (None, self.auth_key):
                raise PolicyError(
                    errno.EACCES,
                    f"connection is authenticated as {self.auth_key!r}, not {ex.key_id!r}",
                )
            try:
                key_id = ex.authorise(msg.uname, msg.aname, msg.n_uname)
            except OSError as e:
                self.audit.emit("auth-failed", peer=self.peer, uname=msg.uname, aname=msg.aname,
                                key=ex.key_id, reason=e.strerror)  # fmt: skip
                raise PolicyError(e.errno or errno.EACCES, e.strerror or "not authorised",
                                  "auth") from None  # fmt: skip
            self.audit.emit("auth-ok", peer=self.peer, uname=msg.uname, aname=msg.aname,
                            key=key_id)  # fmt: skip
            return key_id
        finally:
            self._done(a)

    def attach(self, msg: m.Tattach) -> m.Message:
        if msg.afid == c.NOFID and self.auth_required:
            raise PolicyError(errno.EACCES, "authentication is required", "auth-required")
        if msg.afid != c.NOFID and self.keyring is None:
            raise OSError(errno.EINVAL, "no authentication fid can exist: Tauth is not offered")
        self.fids.check_free(msg.fid)
        # a proven key decides the client; the auth fid is used up even when
        # the attach then fails (the client runs Tauth again)
        key_id = self._authorise(msg)
        client = self.client if key_id is None else self.policy.identify(self.peer_info, key_id)
        try:
            export, rights = self.policy.select_export(msg.aname, client)
            if key_id is not None and client is not None and self.on_identified is not None:
                self.on_identified(client.name)  # its own limits from now on, or refused
        except PolicyError as e:
            log.warning("%s: attach refused (aname %r): %s", self.peer, msg.aname, e.reason)
            self.audit.emit("attach-denied", peer=self.peer, client=client.name if client else None,
                            aname=msg.aname, uname=msg.uname, key=key_id, rule=e.rule,
                            reason=e.reason)  # fmt: skip
            raise
        backend = self.backends.get(export.name)
        if backend is None:  # a reload is replacing the export right now
            raise OSError(errno.ENOENT, f"export {export.name!r} is being reloaded")
        uid = msg.n_uname if msg.n_uname != c.NONUNAME else _uid_of(msg.uname)
        node = backend.root()
        f = Fid(msg.fid, export, backend, node, uid, is_dir=True, rights=rights,
                auth_key=key_id)  # fmt: skip
        try:
            self.fids.add(f)
        except OSError:
            backend.release(node)
            raise
        self.exports_attached.add(export.name)
        if key_id is not None:
            self.auth_key, self.client = key_id, client
            log.info("%s: attach fid %d to %r as uid %d, authenticated by key %r",
                     self.peer, msg.fid, export.name, uid, key_id)  # fmt: skip
        log.debug("%s: attach fid %d to %r as uid %d", self.peer, msg.fid, export.name, uid)
        self.audit.emit("attach", peer=self.peer, client=client.name if client else None,
                        export=export.name, uid=uid, readonly=rights.readonly,
                        key=key_id)  # fmt: skip
        return m.Rattach(node.qid)

    def walk(self, msg: m.Twalk) -> m.Message:
        onto_itself = msg.newfid == msg.fid
        f = self._claim(msg.fid) if onto_itself else self._fid(msg.fid)
        try:
            self._need_node(f)
            if msg.newfid != msg.fid:
                self.fids.check_free(msg.newfid)
            elif f.file is not None:
                raise OSError(errno.EBUSY, "cannot walk an open fid onto itself")
            self.ops.check_walk_names(msg.wnames)
            backend = f.backend
            node, qids = backend.walk_names(f.node, msg.wnames)
            if node is None:
                return m.Rwalk(qids)  # partial walk: newfid is not created
            new = Fid(
                msg.newfid, f.export, backend, node, f.uid,
                is_dir=bool(qids[-1].type & _QTDIR) if qids else f.is_dir, rights=f.rights,
                path=_walked(f.path, msg.wnames), auth_key=f.auth_key,
            )  # fmt: skip
            if onto_itself:
                self.fids.replace(f, new)
            else:
                try:
                    self.fids.add(new)
                except OSError:
                    backend.release(node)
                    raise
            return m.Rwalk(qids)
        finally:
            if onto_itself:
                self._unclaim(f)
            else:
                self._done(f)

    def clunk(self, msg: m.Tclunk) -> m.Message:
        f = self._claim(msg.fid)  # an open or xattrcreate in progress completes first
        self.fids.clunk(f)  # released even when finishing fails
        try:
            self._finish_clunk(f)
        finally:
            self._unclaim(f)
        return m.Rclunk()

    def _finish_clunk(self, f: Fid) -> None:
        """What a clunk completes: an xattr value is written, ORCLOSE removes."""
        if f.kind is FidKind.XATTR_WRITE and f.xattr_write is not None:
            xw, f.xattr_write = f.xattr_write, None
            if len(xw.data) != xw.size:
                raise OSError(errno.EINVAL, f"xattr got {len(xw.data)} of {xw.size} bytes")
            if xw.size == 0:
                self.ops.xattr_remove(f, xw.name)
            else:
                self.ops.xattr_set(f, xw.name, bytes(xw.data), xw.flags)
        if f.remove_on_clunk:
            f.remove_on_clunk = False
            self.ops.remove(f)

    def remove(self, msg: m.Tremove) -> m.Message:
        f = self._claim(msg.fid)
        self.fids.clunk(f)  # the fid goes whether or not the remove works
        try:
            self._need_node(f)
            self.ops.remove(f)
        finally:
            self._unclaim(f)
        return m.Rremove()

    # ------------------------------------------------------------------ I/O --
    def read(self, msg: m.Tread) -> m.Message:
        f = self._fid(msg.fid)
        try:
            count = min(msg.count, self.proto.msize - RREAD_OVERHEAD)
            if f.kind is FidKind.AUTH:
                return m.Rread(self._auth_io(f, lambda ex: ex.read(msg.offset, count)))
            if f.kind is FidKind.XATTR_READ:
                return m.Rread(f.xattr_value[msg.offset : msg.offset + count])
            if f.kind is FidKind.XATTR_WRITE:
                raise OSError(errno.EBADF, "xattr fid is open for writing")
            self._need_open(f)
            if f.is_dir and self.proto.dialect is not c.Dialect.P9P2000L:
                return self._read_dir_stats(f, msg.offset, count)  # 9P2000/.u: stat entries
            return m.Rread(self.ops.read(f, msg.offset, count))
        finally:
            self._done(f)

    def write(self, msg: m.Twrite) -> m.Message:
        f = self._fid(msg.fid)
        try:
            if f.kind is FidKind.AUTH:
                data = bytes(msg.data)
                return m.Rwrite(self._auth_io(f, lambda ex: ex.write(msg.offset, data)))
            if f.kind is FidKind.XATTR_WRITE and f.xattr_write is not None:
                xw = f.xattr_write
                end = msg.offset + len(msg.data)
                if msg.offset != len(xw.data) or end > xw.size:
                    raise OSError(errno.EINVAL, "xattr value written out of order or too long")
                xw.data += msg.data
                return m.Rwrite(len(msg.data))
            self._need_node(f)
            self._need_open(f)
            return m.Rwrite(self.ops.write(f, msg.offset, msg.data))
        finally:
            self._done(f)

    # ------------------------------------------------------------ 9P2000.L --
    def statfs(self, msg: m.Tstatfs) -> m.Message:
        f = self._fid(msg.fid)
        try:
            self._need_node(f)
            s = self.ops.statfs(f)
            return m.Rstatfs(
                s.type, s.bsize, s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.fsid, s.namelen
            )
        finally:
            self._done(f)

    def lopen(self, msg: m.Tlopen) -> m.Message:
        f = self._claim(msg.fid)
        try:
            self._need_node(f)
            self._need_unopened(f)
            self.ops.open(f, dotl_to_host(msg.flags))
            return m.Rlopen(f.node.qid, self._iounit())
        finally:
            self._unclaim(f)

    def lcreate(self, msg: m.Tlcreate) -> m.Message:
        f = self._claim(msg.fid)
        try:
            self._need_dir(f)
            self._need_unopened(f)
            flags = dotl_create_flags(msg.flags)
            node, file, created = self.ops.create(f, msg.name, flags, msg.mode, msg.gid)
            self._become(f, node, msg.name)
            f.file, f.open_flags = file, flags
            f.setid_checked = created  # a new file has no set-id bits to drop
            return m.Rlcreate(node.qid, self._iounit())
        finally:
            self._unclaim(f)

    def _become(self, f: Fid, node: Node, name: str) -> None:
        """The fid now stands for its child `name` (a create, or a .u
        special file)."""
        old = f.node
        f.node, f.is_dir = node, bool(node.qid.type & _QTDIR)
        f.path = _walked(f.path, [name])
        f.backend.release(old)

    def _dir(self, dfid: int) -> Fid:
        d = self._fid(dfid)
        try:
            self._need_dir(d)
        except OSError:
            self._done(d)
            raise
        return d

    def symlink(self, msg: m.Tsymlink) -> m.Message:
        d = self._dir(msg.dfid)
        try:
            return m.Rsymlink(self.ops.symlink(d, msg.name, msg.symtgt, msg.gid))
        finally:
            self._done(d)

    def mknod(self, msg: m.Tmknod) -> m.Message:
        d = self._dir(msg.dfid)
        try:
            return m.Rmknod(self.ops.mknod(d, msg.name, msg.mode, msg.major, msg.minor, msg.gid))
        finally:
            self._done(d)

    def mkdir(self, msg: m.Tmkdir) -> m.Message:
        d = self._dir(msg.dfid)
        try:
            return m.Rmkdir(self.ops.mkdir(d, msg.name, msg.mode, msg.gid))
        finally:
            self._done(d)

    def link(self, msg: m.Tlink) -> m.Message:
        d = self._dir(msg.dfid)
        try:
            self._hard_link(d, msg.fid, msg.name)
            return m.Rlink()
        finally:
            self._done(d)

    def _hard_link(self, d: Fid, target: int, name: str) -> None:
        """Link the file of fid `target` as d/name (Tlink, .u Tcreate DMLINK)."""
        t = self._fid(target)
        try:
            self._need_node(t)
            self.ops.link(d, t, name)
        finally:
            self._done(t)

    def rename(self, msg: m.Trename) -> m.Message:
        d = self._dir(msg.dfid)
        try:
            f = self._fid(msg.fid)
            try:
                self._need_node(f)
                self.ops.rename_node(f, d, msg.name)
                f.path = _walked(d.path, [msg.name])
            finally:
                self._done(f)
            return m.Rrename()
        finally:
            self._done(d)

    def renameat(self, msg: m.Trenameat) -> m.Message:
        old = self._dir(msg.olddirfid)
        try:
            new = self._dir(msg.newdirfid)
            try:
                self.ops.rename(old, msg.oldname, new, msg.newname)
            finally:
                self._done(new)
            return m.Rrenameat()
        finally:
            self._done(old)

    def unlinkat(self, msg: m.Tunlinkat) -> m.Message:
        d = self._dir(msg.dirfid)
        try:
            if msg.flags & ~c.AT_REMOVEDIR:
                raise OSError(errno.EINVAL, f"unknown unlinkat flags {msg.flags:#x}")
            self.ops.unlink(d, msg.name, bool(msg.flags & c.AT_REMOVEDIR))
            return m.Runlinkat()
        finally:
            self._done(d)

    def readlink(self, msg: m.Treadlink) -> m.Message:
        f = self._fid(msg.fid)
        try:
            self._need_node(f)
            return m.Rreadlink(self.ops.readlink(f))
        finally:
            self._done(f)

    def getattr(self, msg: m.Tgetattr) -> m.Message:
        f = self._fid(msg.fid)
        try:
            self._need_node(f)
            a, uid, gid = self.ops.getattr(f)
            valid = _VALID_BASIC_BTIME if a.btime_ns else _VALID_BASIC
            a_s, a_ns = divmod(a.atime_ns, _NS)  # sec is two's complement (& _U64)
            m_s, m_ns = divmod(a.mtime_ns, _NS)
            c_s, c_ns = divmod(a.ctime_ns, _NS)
            b_s, b_ns = divmod(a.btime_ns, _NS)
            return m.Rgetattr(
                valid, a.qid, a.mode, uid, gid, a.nlink, a.rdev, a.size, a.blksize,
                a.blocks, a_s & _U64, a_ns, m_s & _U64, m_ns, c_s & _U64, c_ns, b_s & _U64, b_ns,
                a.gen, a.data_version,
            )  # fmt: skip
        finally:
            self._done(f)

    def setattr(self, msg: m.Tsetattr) -> m.Message:
        f = self._fid(msg.fid)
        try:
            self._need_node(f)
            v = msg.valid
            if v & ~0x1FF:
                raise OSError(errno.EINVAL, f"unknown setattr bits {v:#x}")
            if v:
                self.ops.setattr(
                    f,
                    mode=msg.mode if v & _SA_MODE else None,
                    uid=msg.uid if v & _SA_UID else None,
                    gid=msg.gid if v & _SA_GID else None,
                    size=msg.size if v & _SA_SIZE else None,
                    atime=_time(v, _SA_ATIME, _SA_ATIME_SET, msg.atime_sec, msg.atime_nsec),
                    mtime=_time(v, _SA_MTIME, _SA_MTIME_SET, msg.mtime_sec, msg.mtime_nsec),
                    ctime=bool(v & _SA_CTIME),
                )
            return m.Rsetattr()
        finally:
            self._done(f)

    def xattrwalk(self, msg: m.Txattrwalk) -> m.Message:
        onto_itself = msg.newfid == msg.fid
        f = self._claim(msg.fid) if onto_itself else self._fid(msg.fid)
        try:
            self._need_node(f)
            if msg.newfid != msg.fid:
                self.fids.check_free(msg.newfid)
            elif f.file is not None:
                raise OSError(errno.EBUSY, "cannot walk an open fid onto itself")
            if msg.name:
                value = self.ops.xattr_get(f, msg.name)
            else:
                value = b"".join(n.encode() + b"\0" for n in self.ops.xattr_list(f))
            new = Fid(
                msg.newfid, f.export, f.backend, f.backend.clone(f.node), f.uid,
                kind=FidKind.XATTR_READ, xattr_value=value, rights=f.rights, path=f.path,
                auth_key=f.auth_key,
            )  # fmt: skip
            try:
                self.fids.charge_xattr(new, len(value))  # the value stays until the clunk
                if onto_itself:
                    self.fids.replace(f, new)
                else:
                    self.fids.add(new)
            except OSError:
                self.fids.uncharge_xattr(new)
                f.backend.release(new.node)
                raise
            return m.Rxattrwalk(len(value))
        finally:
            if onto_itself:
                self._unclaim(f)
            else:
                self._done(f)

    def xattrcreate(self, msg: m.Txattrcreate) -> m.Message:
        f = self._claim(msg.fid)
        try:
            self._need_node(f)
            self._need_unopened(f)
            self.ops.check_xattr_set(f, msg.name, msg.attr_size, msg.flags)
            self.fids.charge_xattr(f, msg.attr_size)  # the value arrives before the clunk
            f.kind = FidKind.XATTR_WRITE
            f.xattr_write = XattrWrite(msg.name, msg.attr_size, msg.flags, bytearray())
            return m.Rxattrcreate()
        finally:
            self._unclaim(f)

    def readdir(self, msg: m.Treaddir) -> m.Message:
        f = self._fid(msg.fid)
        try:
            self._need_node(f)
            self._need_open(f)
            assert f.file is not None
            if not f.is_dir:
                raise OSError(errno.ENOTDIR, "not a directory")
            room = min(msg.count, self.proto.msize - RREAD_OVERHEAD)
            out: list[bytes] = []
            used = 0
            for e in f.backend.readdir(f.file, msg.offset):
                name = e.name.encode()
                size = m.dirent_size(name)
                if used + size > room:
                    if not out:
                        raise OSError(errno.EINVAL, "count too small for the next entry")
                    break
                out.append(m.encode_dirent(e.qid, e.cookie, e.dtype, name))
                used += size
            return m.Rreaddir(b"".join(out))
        finally:
            self._done(f)

    def fsync(self, msg: m.Tfsync) -> m.Message:
        f = self._fid(msg.fid)
        try:
            self._need_node(f)
            self._need_open(f)
            self.ops.fsync(f, bool(msg.datasync))
            return m.Rfsync()
        finally:
            self._done(f)

    def lock(self, msg: m.Tlock) -> m.Message:
        f = self._fid(msg.fid)
        try:
            self._need_node(f)
            self._need_open(f)
            if msg.flags & ~(c.LOCK_FLAGS_BLOCK | c.LOCK_FLAGS_RECLAIM):
                raise OSError(errno.EINVAL, f"bad lock flags {msg.flags:#x}")
            req = LockRequest(msg.type, msg.start, msg.length, msg.proc_id, msg.client_id)
            # never wait in the server: a BLOCK request that conflicts gets
            # BLOCKED and the client retries (Linux polls)
            return m.Rlock(self.ops.lock(f, req))
        finally:
            self._done(f)

    def getlock(self, msg: m.Tgetlock) -> m.Message:
        f = self._fid(msg.fid)
        try:
            self._need_node(f)
            self._need_open(f)
            # (the lock type is the operation's to check)
            # Linux always sends UNLCK (it does not say which type it tests):
            # test for a write lock, which any other lock conflicts with.
            qtype = c.LOCK_TYPE_WRLCK if msg.type == c.LOCK_TYPE_UNLCK else msg.type
            req = LockRequest(qtype, msg.start, msg.length, msg.proc_id, msg.client_id)
            r = self.ops.getlock(f, req)
            return m.Rgetlock(r.type, r.start, r.length, r.proc_id, r.client_id)
        finally:
            self._done(f)


def _time(valid: int, bit: int, setbit: int, sec: int, nsec: int) -> TimeSpec:
    if not valid & bit:
        return None
    if not valid & setbit:
        return NOW
    if nsec >= 1_000_000_000:
        raise OSError(errno.EINVAL, "nanoseconds out of range")
    if sec >= 1 << 63:  # two's complement: a time before 1970
        sec -= 1 << 64
    return sec * 1_000_000_000 + nsec


def _uid_of(uname: str) -> int:
    """A uid for a user name without n_uname: a decimal number below 2**32, or
    nobody. Host account names are not consulted: a guest's names mean nothing
    on the host."""
    if uname.isascii() and uname.isdigit() and int(uname) < c.NONUNAME:
        return int(uname)
    return 65534
