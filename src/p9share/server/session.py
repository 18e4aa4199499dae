"""Request handling of one connection: fid rules and the operations.

A Session turns a decoded request into a reply message. It knows the fid
rules of 9P and asks the policy for every security decision and the backend
for every filesystem operation. It does no I/O of its own: the connection
module feeds it requests and sends what it returns.
"""

from __future__ import annotations

import errno
import logging
import os
import stat as stat_mod
from collections.abc import Callable
from typing import Any, TypeVar

from ..audit import NULL_AUDIT, AuditLog
from ..backend.base import NOW, Attr, Backend, LockRequest, OpenFile, SetAttr, TimeSpec
from ..policy import Client, Policy, PolicyError
from ..policy.idmap import Owner
from ..policy.peer import Peer
from ..policy.quota import QuotaLedger
from ..protocol import constants as c
from ..protocol import messages as m
from ..protocol.connection import ServerConnection
from ..protocol.wire import Qid
from ..security.auth import AuthExchange, Keyring
from .classic import ClassicHandlers
from .fids import Fid, FidKind, FidTable, XattrWrite
from .openflags import dotl_create_flags, dotl_to_host, wants_write
from .paths import walked as _walked

log = logging.getLogger("p9share.server")

XATTR_SIZE_MAX = 65536  # Linux's limit for one value
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
    ) -> None:
        """keyring: the client keys Tauth accepts (None: Tauth is not offered).
        auth_required: every Tattach must name a verified auth fid.
        on_identified: called with the client's name when a Tattach's key
        identifies a client, before the attach succeeds; it may refuse the
        attach with a PolicyError (the server switches the connection to that
        client's limits here)."""
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
        log.info("%s: denied %s: %s", self.peer, op, e.reason)
        if op == "attach":
            return  # attach() audits its own refusals
        fnum = getattr(msg, "fid", getattr(msg, "dfid", getattr(msg, "dirfid", None)))
        where = ""
        f = self.fids.peek(fnum) if isinstance(fnum, int) else None
        if f is not None:
            where = f"{f.export.name}:{f.path}"
        name = getattr(msg, "name", None)
        self.audit.emit("denied", peer=self.peer, client=self._client_name(), op=op,
                        path=where, name=name, rule=e.rule, reason=e.reason)  # fmt: skip

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

    @staticmethod
    def _owner(f: Fid, gid: int) -> Owner:
        """Who a file created through directory fid f belongs to. Without a
        gid (9P2000.u Tcreate, or a client that sends none) the file takes
        the directory's group, as on Plan 9, never the server's own."""
        if gid == c.NONUNAME and f.export.idmap.mode != "squash":
            a = f.backend.getattr(f.node)
            try:
                return f.export.idmap.owner(f.uid, f.export.idmap.guest_ids(a.uid, a.gid)[1])
            except PolicyError:
                pass  # the directory's group has no guest meaning: the host's default
        return f.export.idmap.owner(f.uid, gid)

    # quotas: a new file is charged before it is made and refunded if making
    # it fails; a removal is refunded after it succeeds, by what it freed
    def _new_file(self, d: Fid, make: Callable[[], _T]) -> _T:
        q = self.quotas.get(d.export.name)
        if q is None:
            return make()
        q.charge(nfiles=1)
        try:
            return make()
        except BaseException:
            q.refund(nfiles=1)
            raise

    def _freed(self, d: Fid, name: str) -> tuple[int, int]:
        """(bytes, files) that removing d/name frees: nothing while another
        hard link keeps the inode."""
        if d.export.name not in self.quotas:
            return (0, 0)
        try:
            node = d.backend.walk(d.node, name)
        except OSError:
            return (0, 0)
        try:
            return _freed_by(d.backend.getattr(node))
        finally:
            d.backend.release(node)

    def _refund(self, f: Fid, freed: tuple[int, int]) -> None:
        q = self.quotas.get(f.export.name)
        if q is not None:
            q.refund(*freed)

    # A size change is measured, charged and made under the file's size lock
    # (QuotaLedger.size_lock): a write and a truncate of one file, or two
    # growing writes, then move the ledger by what the disk did.
    def _grow(self, f: Fid, end: int) -> int:
        """Charge the bytes a write to `end` adds to the file (the caller
        holds its size lock); returns the charge (to give back if the
        operation fails)."""
        q = self.quotas.get(f.export.name)
        if q is None or not f.export.quota_bytes:
            return 0
        size = f.backend.getattr(f.node).size
        if end <= size:
            return 0
        q.charge(nbytes=end - size)
        return end - size

    def _apply(self, f: Fid, changes: SetAttr) -> None:
        """backend.setattr; with a ledger, a new size is charged (or the
        bytes it frees refunded) under the file's size lock."""
        q = self.quotas.get(f.export.name)
        if q is None or changes.size is None:
            f.backend.setattr(f.node, changes, f.file)
            return
        with q.size_lock(f.node.qid.path):
            size = f.backend.getattr(f.node).size
            grown = max(0, changes.size - size) if f.export.quota_bytes else 0
            if grown:
                q.charge(nbytes=grown)
            try:
                f.backend.setattr(f.node, changes, f.file)
            except BaseException:
                q.refund(nbytes=grown)
                raise
            q.refund(nbytes=max(0, size - changes.size))

    def _open(self, f: Fid, flags: int) -> OpenFile:
        """backend.open; with a ledger, the bytes an O_TRUNC open frees are
        given back, measured under the file's size lock."""
        q = self.quotas.get(f.export.name)
        if q is None or not flags & os.O_TRUNC:
            return f.backend.open(f.node, flags)
        with q.size_lock(f.node.qid.path):
            size = f.backend.getattr(f.node).size
            file = f.backend.open(f.node, flags)
            q.refund(nbytes=size)
            return file

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
            for name in msg.wnames:
                self.policy.check_walk_name(name)
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
                f.backend.xattr_remove(f.node, xw.name)
            else:
                f.backend.xattr_set(f.node, xw.name, bytes(xw.data), xw.flags)
        if f.remove_on_clunk:
            f.remove_on_clunk = False
            freed = _freed_by(f.backend.getattr(f.node)) if f.export.name in self.quotas else (0, 0)
            f.backend.remove(f.node)
            self._refund(f, freed)

    def remove(self, msg: m.Tremove) -> m.Message:
        f = self._claim(msg.fid)
        self.fids.clunk(f)  # the fid goes whether or not the remove works
        try:
            self._need_node(f)
            freed = _freed_by(f.backend.getattr(f.node)) if f.export.name in self.quotas else (0, 0)
            f.backend.remove(f.node)
            self._refund(f, freed)
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
            assert f.file is not None
            if f.is_dir and self.proto.dialect is not c.Dialect.P9P2000L:
                return self._read_dir_stats(f, msg.offset, count)  # 9P2000/.u: stat entries
            if f.is_dir:
                raise OSError(errno.EISDIR, "use Treaddir on a directory")
            if f.open_flags & os.O_ACCMODE == os.O_WRONLY:
                raise OSError(errno.EBADF, "fid is not open for reading")
            return m.Rread(f.backend.read(f.file, msg.offset, count))
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
            assert f.file is not None
            if f.open_flags & os.O_ACCMODE == os.O_RDONLY:
                raise OSError(errno.EBADF, "fid is not open for writing")
            q = self.quotas.get(f.export.name)
            if q is None:
                return m.Rwrite(self._write_file(f, msg.offset, msg.data))
            with q.size_lock(f.node.qid.path):
                return m.Rwrite(self._write_file(f, msg.offset, msg.data))
        finally:
            self._done(f)

    def _write_file(self, f: Fid, offset: int, data: bytes | memoryview) -> int:
        """Twrite to an open file (under its size lock if the export has a ledger)."""
        assert f.file is not None
        end = offset + len(data)
        limited = f.export.max_file_size or f.export.name in self.quotas
        if f.open_flags & os.O_APPEND and limited:
            end = f.backend.getattr(f.node).size + len(data)  # appends land at the end
        self.policy.check_size(f.export, end)
        if not f.setid_checked:
            self._drop_setid(f)
        grown = self._grow(f, end)
        try:
            return f.backend.write(f.file, offset, data)
        except BaseException:
            self._refund(f, (grown, 0))
            raise

    def _drop_setid(self, f: Fid) -> None:
        """Writing to a setuid/setgid file drops those bits, as the kernel does
        for an unprivileged writer (a root server would keep them)."""
        f.setid_checked = True
        if f.rights.setid:
            return
        mode = f.backend.getattr(f.node).mode
        perm = stat_mod.S_IMODE(mode)
        # setgid without group execute is a mandatory-locking mark, not a privilege
        setid = perm & stat_mod.S_ISUID or (perm & stat_mod.S_ISGID and perm & stat_mod.S_IXGRP)
        if setid:
            keep = perm & ~stat_mod.S_ISUID
            if perm & stat_mod.S_IXGRP:
                keep &= ~stat_mod.S_ISGID
            f.backend.setattr(f.node, SetAttr(mode=keep), f.file)

    # ------------------------------------------------------------ 9P2000.L --
    def statfs(self, msg: m.Tstatfs) -> m.Message:
        f = self._fid(msg.fid)
        try:
            self._need_node(f)
            s = f.backend.statfs(f.node)
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
            flags = dotl_to_host(msg.flags)
            if f.is_dir:
                if wants_write(flags):
                    raise OSError(errno.EISDIR, "directories open read-only")
                flags |= os.O_DIRECTORY
            if wants_write(flags) or flags & os.O_TRUNC:
                self.policy.check_write(f.rights)
            f.file = self._open(f, flags)
            f.open_flags = flags
            return m.Rlopen(f.node.qid, self._iounit())
        finally:
            self._unclaim(f)

    def lcreate(self, msg: m.Tlcreate) -> m.Message:
        f = self._claim(msg.fid)
        try:
            self._check_create(f, msg.name)
            flags = dotl_create_flags(msg.flags)
            mode = self.policy.new_mode(f.rights, msg.mode & 0o7777)
            node, file = self._new_file(f, lambda: f.backend.create(
                f.node, msg.name, flags, mode, self._owner(f, msg.gid)))  # fmt: skip
            # the fid now stands for the new, open file
            old = f.node
            f.node, f.file, f.open_flags, f.is_dir = node, file, flags, False
            f.path, f.setid_checked = _walked(f.path, [msg.name]), True
            f.backend.release(old)
            return m.Rlcreate(node.qid, self._iounit())
        finally:
            self._unclaim(f)

    def _check_create(self, f: Fid, name: str) -> None:
        """What Tlcreate and Tcreate ask first: an unopened directory fid, a
        good new name, and a writable grant."""
        self._need_dir(f)
        self._need_unopened(f)
        self.policy.check_new_name(name)
        self.policy.check_write(f.rights)

    def _dir_change(self, dfid: int, name: str) -> Fid:
        d = self._fid(dfid)
        try:
            self._need_dir(d)
            self.policy.check_new_name(name)
            self.policy.check_write(d.rights)
        except OSError:
            self._done(d)
            raise
        return d

    def symlink(self, msg: m.Tsymlink) -> m.Message:
        d = self._dir_change(msg.dfid, msg.name)
        try:
            self.policy.check_symlink(d.rights)
            if not msg.symtgt:
                raise OSError(errno.ENOENT, "empty symlink target")
            if "\0" in msg.symtgt:
                raise OSError(errno.EINVAL, "NUL in symlink target")
            q = self._new_file(d, lambda: d.backend.symlink(
                d.node, msg.name, msg.symtgt, self._owner(d, msg.gid)))  # fmt: skip
            return m.Rsymlink(q)
        finally:
            self._done(d)

    def mknod(self, msg: m.Tmknod) -> m.Message:
        d = self._dir_change(msg.dfid, msg.name)
        try:
            kind = stat_mod.S_IFMT(msg.mode) or stat_mod.S_IFREG
            self.policy.check_mknod(d.rights, kind)
            rdev = os.makedev(msg.major, msg.minor)
            mode = kind | self.policy.new_mode(d.rights, msg.mode & 0o7777)
            q = self._new_file(d, lambda: d.backend.mknod(
                d.node, msg.name, mode, rdev, self._owner(d, msg.gid)))  # fmt: skip
            return m.Rmknod(q)
        finally:
            self._done(d)

    def mkdir(self, msg: m.Tmkdir) -> m.Message:
        d = self._dir_change(msg.dfid, msg.name)
        try:
            mode = self.policy.new_mode(d.rights, msg.mode & 0o5777) | (msg.mode & 0o2000)
            q = self._new_file(d, lambda: d.backend.mkdir(
                d.node, msg.name, mode, self._owner(d, msg.gid)))  # fmt: skip
            return m.Rmkdir(q)
        finally:
            self._done(d)

    def link(self, msg: m.Tlink) -> m.Message:
        d = self._dir_change(msg.dfid, msg.name)
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
            if t.export is not d.export:
                raise PolicyError(errno.EXDEV, "link across exports", "cross-export")
            self.policy.check_hardlink(d.rights)
            if t.is_dir:
                raise OSError(errno.EPERM, "hard link to a directory")
            d.backend.link(d.node, t.node, name)
        finally:
            self._done(t)

    def rename(self, msg: m.Trename) -> m.Message:
        d = self._dir_change(msg.dfid, msg.name)
        try:
            f = self._fid(msg.fid)
            try:
                self._need_node(f)
                if f.export is not d.export:
                    raise PolicyError(errno.EXDEV, "rename across exports", "cross-export")
                freed = self._freed(d, msg.name)
                f.backend.rename_node(f.node, d.node, msg.name)
                self._refund(d, freed)
            finally:
                self._done(f)
            return m.Rrename()
        finally:
            self._done(d)

    def renameat(self, msg: m.Trenameat) -> m.Message:
        old = self._dir_change(msg.olddirfid, msg.oldname)
        try:
            new = self._dir_change(msg.newdirfid, msg.newname)
            try:
                if old.export is not new.export:
                    raise PolicyError(errno.EXDEV, "rename across exports", "cross-export")
                freed = self._freed(new, msg.newname)
                old.backend.rename(old.node, msg.oldname, new.node, msg.newname)
                self._refund(new, freed)
            finally:
                self._done(new)
            return m.Rrenameat()
        finally:
            self._done(old)

    def unlinkat(self, msg: m.Tunlinkat) -> m.Message:
        d = self._dir_change(msg.dirfid, msg.name)
        try:
            if msg.flags & ~c.AT_REMOVEDIR:
                raise OSError(errno.EINVAL, f"unknown unlinkat flags {msg.flags:#x}")
            freed = self._freed(d, msg.name)
            d.backend.unlink(d.node, msg.name, bool(msg.flags & c.AT_REMOVEDIR))
            self._refund(d, freed)
            return m.Runlinkat()
        finally:
            self._done(d)

    def readlink(self, msg: m.Treadlink) -> m.Message:
        f = self._fid(msg.fid)
        try:
            self._need_node(f)
            return m.Rreadlink(f.backend.readlink(f.node))
        finally:
            self._done(f)

    def getattr(self, msg: m.Tgetattr) -> m.Message:
        f = self._fid(msg.fid)
        try:
            self._need_node(f)
            a = f.backend.getattr(f.node)
            valid = _VALID_BASIC_BTIME if a.btime_ns else _VALID_BASIC
            uid, gid = f.export.idmap.guest_ids(a.uid, a.gid)
            a_s, a_ns = divmod(a.atime_ns, _NS)  # as _split, inline: every stat calls this
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
                self.policy.check_write(f.rights)
            uid, gid = f.export.idmap.host_ids(
                msg.uid if v & _SA_UID else None,
                msg.gid if v & _SA_GID else None,
            )
            if v & _SA_SIZE:
                self.policy.check_size(f.export, msg.size)
            mode = None
            if v & _SA_MODE:
                mode = self.policy.new_mode(f.rights, msg.mode & 0o7777)
                if f.is_dir:
                    mode |= msg.mode & 0o2000  # setgid directories: group inheritance only
            ch = SetAttr(
                mode=mode,
                uid=uid,
                gid=gid,
                size=msg.size if v & _SA_SIZE else None,
                atime=_time(v, _SA_ATIME, _SA_ATIME_SET,
                            msg.atime_sec, msg.atime_nsec),
                mtime=_time(v, _SA_MTIME, _SA_MTIME_SET,
                            msg.mtime_sec, msg.mtime_nsec),
                ctime=bool(v & _SA_CTIME),
            )  # fmt: skip
            if v:
                self._apply(f, ch)
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
                self.policy.check_xattr(f.rights, msg.name, write=False)
                value = f.backend.xattr_get(f.node, msg.name)
            else:
                names = self.policy.visible_xattrs(f.rights, f.backend.xattr_list(f.node))
                value = b"".join(n.encode() + b"\0" for n in names)
            new = Fid(
                msg.newfid, f.export, f.backend, f.backend.clone(f.node), f.uid,
                kind=FidKind.XATTR_READ, xattr_value=value, rights=f.rights, path=f.path,
                auth_key=f.auth_key,
            )  # fmt: skip
            if onto_itself:
                self.fids.replace(f, new)
            else:
                try:
                    self.fids.add(new)
                except OSError:
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
            if msg.flags & ~(c.XATTR_CREATE | c.XATTR_REPLACE):
                raise OSError(errno.EINVAL, f"unknown xattr flags {msg.flags:#x}")
            if msg.attr_size > XATTR_SIZE_MAX:
                raise OSError(errno.E2BIG, "xattr value too large")
            if not msg.name:
                raise OSError(errno.EINVAL, "empty xattr name")
            self.policy.check_write(f.rights)
            self.policy.check_xattr(f.rights, msg.name, write=True)
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
            assert f.file is not None
            f.backend.fsync(f.file, bool(msg.datasync))
            return m.Rfsync()
        finally:
            self._done(f)

    def lock(self, msg: m.Tlock) -> m.Message:
        f = self._fid(msg.fid)
        try:
            self._need_node(f)
            self._need_open(f)
            assert f.file is not None
            if msg.type not in (c.LOCK_TYPE_RDLCK, c.LOCK_TYPE_WRLCK, c.LOCK_TYPE_UNLCK):
                raise OSError(errno.EINVAL, f"bad lock type {msg.type}")
            if msg.flags & ~(c.LOCK_FLAGS_BLOCK | c.LOCK_FLAGS_RECLAIM):
                raise OSError(errno.EINVAL, f"bad lock flags {msg.flags:#x}")
            req = LockRequest(msg.type, msg.start, msg.length, msg.proc_id, msg.client_id)
            # never wait in the server: a BLOCK request that conflicts gets
            # BLOCKED and the client retries (Linux polls)
            return m.Rlock(f.backend.lock(f.file, req))
        finally:
            self._done(f)

    def getlock(self, msg: m.Tgetlock) -> m.Message:
        f = self._fid(msg.fid)
        try:
            self._need_node(f)
            self._need_open(f)
            assert f.file is not None
            if msg.type not in (c.LOCK_TYPE_RDLCK, c.LOCK_TYPE_WRLCK, c.LOCK_TYPE_UNLCK):
                raise OSError(errno.EINVAL, f"bad lock type {msg.type}")
            # Linux always sends UNLCK (it does not say which type it tests):
            # test for a write lock, which any other lock conflicts with.
            qtype = c.LOCK_TYPE_WRLCK if msg.type == c.LOCK_TYPE_UNLCK else msg.type
            req = LockRequest(qtype, msg.start, msg.length, msg.proc_id, msg.client_id)
            r = f.backend.getlock(f.file, req)
            return m.Rgetlock(r.type, r.start, r.length, r.proc_id, r.client_id)
        finally:
            self._done(f)


def _split(ns: int) -> tuple[int, int]:
    """sec[8] nsec[8] of a time: sec is two's complement, as Linux's time64_t
    (a time before 1970 is negative), nsec is always 0..999999999."""
    sec, nsec = divmod(ns, 1_000_000_000)
    return sec & 0xFFFF_FFFF_FFFF_FFFF, nsec


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


def _freed_by(a: Attr) -> tuple[int, int]:
    """What removing one name of a file with attributes a frees."""
    if stat_mod.S_ISDIR(a.mode):
        return (0, 1)
    if a.nlink > 1:
        return (0, 0)
    return (a.size if stat_mod.S_ISREG(a.mode) else 0, 1)


def _uid_of(uname: str) -> int:
    """A uid for a user name without n_uname: a decimal number below 2**32, or
    nobody. Host account names are not consulted: a guest's names mean nothing
    on the host."""
    if uname.isascii() and uname.isdigit() and int(uname) < c.NONUNAME:
        return int(uname)
    return 65534
