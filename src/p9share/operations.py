"""The protocol-independent operations layer: every rule of a request, once.

9P2000.L, 9P2000.u/9P2000 and FUSE (virtio-fs) sessions translate their
messages onto these operations; an operation asks the policy for every
decision (the client's grant, names, set-id bits, device nodes, xattr
namespaces, id maps, sizes), keeps the quota ledger, applies the set-id rules
and calls the backend in a fixed order. Sessions keep only what their
protocol defines: fids or inodes and file handles, wire encodings, replies.

An operation acts on a Target: a node in an export, as seen by one guest user
under one client's grant, maybe opened. A 9P fid is one; a FUSE session builds
one per request from its inode and file-handle tables and the request's uid.

A refused operation raises PolicyError; the session reports it with denied(),
which writes the audit record (one format for every protocol).
"""

from __future__ import annotations

import errno
import logging
import os
import stat as stat_mod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from .audit import NULL_AUDIT, AuditLog
from .backend.base import Attr, Backend, LockRequest, Node, OpenFile, SetAttr, StatFs, TimeSpec
from .policy import Export, Policy, PolicyError, Rights
from .policy.idmap import NO_ID, Owner
from .policy.quota import QuotaLedger
from .protocol import constants as c
from .protocol.wire import Qid

log = logging.getLogger("p9share.server")

XATTR_SIZE_MAX = 65536  # Linux's limit for one value
# Linux's dev_t: 12 bits of major, 20 of minor (MINORBITS); larger numbers
# cannot name a device on the host (os.makedev would also overflow past 2**32)
MAJOR_MAX = (1 << 12) - 1
MINOR_MAX = (1 << 20) - 1
_QTDIR = int(c.QidType.DIR)
_T = TypeVar("_T")


class Target(Protocol):
    """What an operation acts on (a 9P fid, a FUSE inode with its handle)."""

    export: Export
    backend: Backend
    rights: Rights  # what the client may do in this export
    node: Node
    uid: int  # the guest user acting (NO_ID: unknown)
    path: str  # inside the export, for the audit trail only
    file: OpenFile | None
    open_flags: int  # host flags of file
    is_dir: bool
    setid_checked: bool  # set-id bits already dropped for this open file


@dataclass(slots=True, eq=False)
class Handle:
    """A Target made per request (the FUSE session's)."""

    export: Export
    backend: Backend
    rights: Rights
    node: Node
    uid: int
    path: str = "/"
    file: OpenFile | None = None
    open_flags: int = 0
    is_dir: bool = False
    setid_checked: bool = False


def wants_write(flags: int) -> bool:
    """Whether an open with host flags changes the file (writes or truncates)."""
    return flags & os.O_ACCMODE != os.O_RDONLY or bool(flags & os.O_TRUNC)


def freed_by(a: Attr) -> tuple[int, int]:
    """(bytes, files) that removing one name of a file with attributes a frees."""
    if stat_mod.S_ISDIR(a.mode):
        return (0, 1)
    if a.nlink > 1:
        return (0, 0)
    return (a.size if stat_mod.S_ISREG(a.mode) else 0, 1)


def kills_setid(mode: int) -> int:
    """The set-id bits a change of content or owner clears, as Linux's
    should_remove_suid: set-uid, and set-gid when group execute is set
    (set-gid without it marks mandatory locking, not a privilege)."""
    bits = mode & stat_mod.S_ISUID
    if mode & stat_mod.S_ISGID and mode & stat_mod.S_IXGRP:
        bits |= stat_mod.S_ISGID
    return bits


class Operations:
    """The operations of one connection's session (every protocol's)."""

    def __init__(
        self,
        policy: Policy,
        quotas: dict[str, QuotaLedger] | None = None,
        audit: AuditLog = NULL_AUDIT,
        peer: str = "",
        client_name: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.policy = policy
        self.quotas = quotas if quotas is not None else {}  # export name -> ledger
        self.audit = audit
        self.peer = peer
        self.client_name = client_name

    # ------------------------------------------------------------- audit --
    def denied(self, op: str, where: Target | None, name: str | None, e: PolicyError) -> None:
        """Log and audit a refusal (the session calls it for every PolicyError)."""
        log.info("%s: denied %s: %.200s", self.peer, op, e.reason)  # a guest's name may be huge
        path = f"{where.export.name}:{where.path}" if where is not None else ""
        self.audit.emit("denied", peer=self.peer, client=self.client_name(), op=op,
                        path=path, name=name, rule=e.rule, reason=e.reason)  # fmt: skip

    # ----------------------------------------------------------- lookups --
    def check_walk_names(self, names: Iterable[str]) -> None:
        for name in names:
            self.policy.check_walk_name(name)

    def getattr(self, t: Target) -> tuple[Attr, int, int]:
        """The attributes and the (uid, gid) the guest sees."""
        a = t.backend.getattr(t.node)
        uid, gid = t.export.idmap.guest_ids(a.uid, a.gid)
        return a, uid, gid

    def readlink(self, t: Target) -> str:
        return t.backend.readlink(t.node)

    def statfs(self, t: Target) -> StatFs:
        return t.backend.statfs(t.node)

    def access(self, t: Target, mode: int) -> None:
        """What the grant allows of an access(2) check (permissions are the
        host's own, checked by the backend's operations)."""
        if mode & os.W_OK:
            self.policy.check_write(t.rights)

    # -------------------------------------------------------------- open --
    def open(self, t: Target, flags: int, removes: bool = False) -> OpenFile:
        """Open t with host flags; `removes`: the open asks for the file to
        be removed when closed (9P's ORCLOSE), a change like a write.
        Sets t.file, t.open_flags and t.setid_checked."""
        if t.node.qid.type & c.QidType.SYMLINK:
            raise OSError(errno.ELOOP, "symbolic links are never opened")
        if t.is_dir:
            if wants_write(flags):
                raise OSError(errno.EISDIR, "directories open read-only")
            flags |= os.O_DIRECTORY
        if wants_write(flags) or removes:
            self.policy.check_write(t.rights)
        file = self._open_file(t, flags)
        t.file, t.open_flags, t.setid_checked = file, flags, False
        return file

    def _open_file(self, t: Target, flags: int) -> OpenFile:
        """backend.open; with a ledger, the bytes an O_TRUNC open frees are
        given back, measured under the file's size lock."""
        q = self.quotas.get(t.export.name)
        if q is None or not flags & os.O_TRUNC:
            file = t.backend.open(t.node, flags)
        else:
            with q.size_lock(t.node.qid.path):
                size = t.backend.getattr(t.node).size
                file = t.backend.open(t.node, flags)
                q.refund(nbytes=size)
        if flags & os.O_TRUNC and t.uid not in (0, NO_ID):
            self._kill_setid(t, file)
        return file

    def close(self, t: Target) -> None:
        if t.file is not None:
            file, t.file = t.file, None
            t.backend.close(file)

    # ----------------------------------------------------------- creates --
    def create(
        self, d: Target, name: str, flags: int, mode: int, gid: int = NO_ID
    ) -> tuple[Node, OpenFile, bool]:
        """Create and open the regular file d/name (host flags; O_EXCL as
        asked). Without O_EXCL an existing file is opened instead, as an open
        of that file: the grant, its type and the set-id rules are those of
        open. Returns (node, file, created)."""
        self._check_change(d, name)
        perm = self.policy.new_mode(d.rights, mode & 0o7777)
        for _ in range(8):
            if not flags & os.O_EXCL:
                try:
                    node = d.backend.walk(d.node, name)
                except FileNotFoundError:
                    pass
                else:
                    return node, self._open_existing(d, node, name, flags), False
            try:
                node, file = self._new_file(d, name, lambda: d.backend.create(
                    d.node, name, flags | os.O_EXCL, perm, self.owner(d, gid)))  # fmt: skip
            except FileExistsError:
                if flags & os.O_EXCL:
                    raise
                continue  # made by someone else since the walk: open it
            return node, file, True
        raise OSError(errno.EAGAIN, f"{name!r} keeps appearing and disappearing")

    def _open_existing(self, d: Target, node: Node, name: str, flags: int) -> OpenFile:
        t = Handle(d.export, d.backend, d.rights, node, d.uid, d.path,
                   is_dir=bool(node.qid.type & _QTDIR))  # fmt: skip
        try:
            if t.is_dir:
                raise OSError(errno.EISDIR, f"{name!r} is a directory")
            return self.open(t, flags & ~(os.O_CREAT | os.O_EXCL))
        except BaseException:
            d.backend.release(node)
            raise

    def mkdir(self, d: Target, name: str, mode: int, gid: int = NO_ID) -> Qid:
        """A directory keeps a requested set-gid bit whatever the grant: on
        a directory it only makes new files inherit the group."""
        self._check_change(d, name)
        perm = self.policy.new_mode(d.rights, mode & 0o5777) | (mode & stat_mod.S_ISGID)
        return self._new_file(
            d, name, lambda: d.backend.mkdir(d.node, name, perm, self.owner(d, gid))
        )

    def symlink(self, d: Target, name: str, target: str, gid: int = NO_ID) -> Qid:
        self._check_change(d, name)
        self.policy.check_symlink(d.rights)
        if not target:
            raise OSError(errno.ENOENT, "empty symlink target")
        if "\0" in target:
            raise OSError(errno.EINVAL, "NUL in symlink target")
        return self._new_file(d, name, lambda: d.backend.symlink(d.node, name, target,
                                                           self.owner(d, gid)))  # fmt: skip

    def mknod(
        self, d: Target, name: str, mode: int, major: int, minor: int, gid: int = NO_ID
    ) -> Qid:
        """mode: file type and permission bits (no type: a regular file)."""
        self._check_change(d, name)
        kind = stat_mod.S_IFMT(mode) or stat_mod.S_IFREG
        self.policy.check_mknod(d.rights, kind)
        if kind in (stat_mod.S_IFCHR, stat_mod.S_IFBLK):
            if not (0 <= major <= MAJOR_MAX and 0 <= minor <= MINOR_MAX):
                raise OSError(errno.EINVAL, f"device {major}:{minor} out of range")
            rdev = os.makedev(major, minor)
        else:
            rdev = 0
        perm = kind | self.policy.new_mode(d.rights, mode & 0o7777)
        return self._new_file(d, name, lambda: d.backend.mknod(d.node, name, perm, rdev,
                                                         self.owner(d, gid)))  # fmt: skip

    def link(self, d: Target, target: Target, name: str) -> None:
        """Hard-link target's file as d/name."""
        self._check_change(d, name)
        if target.export is not d.export:
            raise PolicyError(errno.EXDEV, "link across exports", "cross-export")
        self.policy.check_hardlink(d.rights)
        if target.is_dir:
            raise OSError(errno.EPERM, "hard link to a directory")
        d.backend.link(d.node, target.node, name)

    def owner(self, d: Target, gid: int) -> Owner:
        """Who a file created in directory d belongs to. Without a gid
        (9P2000.u Tcreate, or a client that sends none) the file takes the
        directory's group, as on Plan 9, never the server's own."""
        if gid == NO_ID and d.export.idmap.mode != "squash":
            a = d.backend.getattr(d.node)
            try:
                return d.export.idmap.owner(d.uid, d.export.idmap.guest_ids(a.uid, a.gid)[1])
            except PolicyError:
                pass  # the directory's group has no guest meaning: the host's default
        return d.export.idmap.owner(d.uid, gid)

    def _check_change(self, d: Target, name: str) -> None:
        """What every change of a directory's entries asks first."""
        if not d.node.qid.type & _QTDIR:
            raise OSError(errno.ENOTDIR, "not a directory")
        self.policy.check_new_name(name)
        self.policy.check_write(d.rights)

    # quotas: a new file is charged before it is made and refunded if making
    # it fails; a removal is refunded after it succeeds, by what it freed
    def _new_file(self, d: Target, name: str, make: Callable[[], _T]) -> _T:
        q = self.quotas.get(d.export.name)
        if q is None:
            return make()
        try:
            q.charge(nfiles=1)
        except PolicyError:
            # a name that exists is EEXIST first, as on a local file system:
            # a full quota must not make mkdir -p or O_EXCL retries fail
            if self._entry(d, name) is not None:
                raise OSError(errno.EEXIST, f"{name!r} exists") from None
            raise
        try:
            return make()
        except BaseException:
            q.refund(nfiles=1)
            raise

    def _entry(self, d: Target, name: str) -> Attr | None:
        """The attributes of d/name, if it exists (None without a ledger)."""
        if d.export.name not in self.quotas:
            return None
        try:
            node = d.backend.walk(d.node, name)
        except OSError:
            return None
        try:
            return d.backend.getattr(node)
        finally:
            d.backend.release(node)

    def _refund(self, t: Target, freed: tuple[int, int]) -> None:
        q = self.quotas.get(t.export.name)
        if q is not None and freed != (0, 0):
            q.refund(*freed)

    # ----------------------------------------------------------- removes --
    def unlink(self, d: Target, name: str, rmdir: bool) -> None:
        self._check_change(d, name)
        victim = self._entry(d, name)
        d.backend.unlink(d.node, name, rmdir)
        if victim is not None:
            self._refund(d, freed_by(victim))

    def remove(self, t: Target) -> None:
        """Remove the file t was reached by (9P's Tremove and ORCLOSE)."""
        self.policy.check_write(t.rights)
        a = t.backend.getattr(t.node) if t.export.name in self.quotas else None
        t.backend.remove(t.node)
        if a is not None:
            self._refund(t, freed_by(a))

    # ----------------------------------------------------------- renames --
    def rename(self, old: Target, oldname: str, new: Target, newname: str) -> None:
        self._check_change(old, oldname)
        self._check_change(new, newname)
        if old.export is not new.export:
            raise PolicyError(errno.EXDEV, "rename across exports", "cross-export")
        replaced = self._entry(new, newname)
        moved = self._entry(old, oldname) if replaced is not None else None
        old.backend.rename(old.node, oldname, new.node, newname)
        self._refund_replaced(new, replaced, moved)

    def rename_node(self, t: Target, newdir: Target | None, newname: str) -> None:
        """Move t's file to newdir/newname (None: its own directory)."""
        self.check_rename_node(t, newname)
        replaced = moved = None
        if newdir is not None:
            self._check_change(newdir, newname)
            if newdir.export is not t.export:
                raise PolicyError(errno.EXDEV, "rename across exports", "cross-export")
            replaced = self._entry(newdir, newname)
        elif t.export.name in self.quotas:
            replaced = self._sibling(t, newname)
        if replaced is not None:
            moved = t.backend.getattr(t.node)
        t.backend.rename_node(t.node, newdir.node if newdir is not None else None, newname)
        self._refund_replaced(newdir or t, replaced, moved)

    def check_rename_node(self, t: Target, newname: str) -> None:
        """What a rename of t's file asks first (9P2000.u's Twstat asks it
        before changing anything else)."""
        self.policy.check_new_name(newname)
        self.policy.check_write(t.rights)
        if not t.path.strip("/"):
            raise OSError(errno.EBUSY, "the export root cannot be renamed")

    def _sibling(self, t: Target, name: str) -> Attr | None:
        """The attributes of name beside t's file, found from its path (a
        file node has no parent to walk to)."""
        parts = [p for p in t.path.split("/") if p][:-1]
        root = t.backend.root()
        try:
            parent, _ = t.backend.walk_names(root, parts)
        except OSError:
            return None
        finally:
            t.backend.release(root)
        if parent is None:
            return None
        try:
            return self._entry(Handle(t.export, t.backend, t.rights, parent, t.uid), name)
        finally:
            t.backend.release(parent)

    def _refund_replaced(self, d: Target, replaced: Attr | None, moved: Attr | None) -> None:
        """A rename over an existing name frees what that name held, unless
        both names were the same file (then the rename changes nothing)."""
        if replaced is None or (moved is not None and moved.qid.path == replaced.qid.path):
            return
        self._refund(d, freed_by(replaced))

    # ----------------------------------------------------------- changes --
    def setattr(
        self,
        t: Target,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        size: int | None = None,
        atime: TimeSpec = None,
        mtime: TimeSpec = None,
        ctime: bool = False,
    ) -> None:
        """Change attributes; uid and gid are guest ids (None: unchanged),
        mode the permission bits (07777)."""
        self.policy.check_write(t.rights)
        huid, hgid = t.export.idmap.host_ids(uid, gid)
        if size is not None:
            if t.is_dir:
                raise OSError(errno.EISDIR, "a directory has no size to set")
            if size >= 1 << 63:
                raise OSError(errno.EINVAL, "size out of range")
            self.policy.check_size(t.export, size)
        perm = None
        if mode is not None:
            perm = self.policy.new_mode(t.rights, mode & 0o7777)
            if t.is_dir:
                perm |= mode & stat_mod.S_ISGID  # on a directory: group inheritance only
        changes = SetAttr(perm, huid, hgid, size, atime, mtime, ctime)
        if changes == SetAttr():
            return
        self._apply(t, changes)
        # a chown or truncate by anyone but the guest's root clears the
        # set-id bits, as on a local file system (the server keeps CAP_FSETID)
        owner_changed = huid is not None or hgid is not None
        if (owner_changed or size is not None) and perm is None and t.uid not in (0, NO_ID):
            self._kill_setid(t, t.file)

    def _apply(self, t: Target, changes: SetAttr) -> None:
        """backend.setattr; with a ledger, a new size is charged (or the
        bytes it frees refunded) under the file's size lock."""
        q = self.quotas.get(t.export.name)
        if q is None or changes.size is None:
            t.backend.setattr(t.node, changes, t.file)
            return
        with q.size_lock(t.node.qid.path):
            size = t.backend.getattr(t.node).size
            grown = max(0, changes.size - size) if t.export.quota_bytes else 0
            if grown:
                q.charge(nbytes=grown)
            try:
                t.backend.setattr(t.node, changes, t.file)
            except BaseException:
                q.refund(nbytes=grown)
                raise
            q.refund(nbytes=max(0, size - changes.size))

    def _kill_setid(self, t: Target, file: OpenFile | None) -> None:
        a = t.backend.getattr(t.node)
        if stat_mod.S_ISREG(a.mode):
            bits = kills_setid(a.mode)
            if bits:
                t.backend.setattr(t.node, SetAttr(mode=stat_mod.S_IMODE(a.mode) & ~bits), file)

    def fsync(self, t: Target, datasync: bool) -> None:
        if t.file is None:
            raise OSError(errno.EBADF, "not open")
        t.backend.fsync(t.file, datasync)

    # --------------------------------------------------------------- I/O --
    def read(self, t: Target, offset: int, count: int) -> bytes:
        return t.backend.read(self._readable(t), offset, count)

    def read_into(self, t: Target, offset: int, views: Sequence[memoryview]) -> int:
        """read() into the caller's buffers (up to their total length): the count read."""
        return t.backend.read_into(self._readable(t), offset, views)

    @staticmethod
    def _readable(t: Target) -> OpenFile:
        if t.file is None:
            raise OSError(errno.EBADF, "not open")
        if t.is_dir:
            raise OSError(errno.EISDIR, "a directory is read by its entries")
        if t.open_flags & os.O_ACCMODE == os.O_WRONLY:
            raise OSError(errno.EBADF, "not open for reading")
        return t.file

    def write(self, t: Target, offset: int, data: bytes | memoryview) -> int:
        return self._write(t, offset, len(data), data, None)

    def write_from(self, t: Target, offset: int, views: Sequence[memoryview]) -> int:
        """write() of the bytes of the caller's buffers, in order: the count written."""
        return self._write(t, offset, sum(len(v) for v in views), b"", views)

    def _write(
        self,
        t: Target,
        offset: int,
        count: int,
        data: bytes | memoryview,
        views: Sequence[memoryview] | None,
    ) -> int:
        """A write of count bytes (data, or views when not None) to an open file."""
        if t.file is None:
            raise OSError(errno.EBADF, "not open")
        if t.open_flags & os.O_ACCMODE == os.O_RDONLY:
            raise OSError(errno.EBADF, "not open for writing")
        q = self.quotas.get(t.export.name)
        if q is None:
            return self._write_checked(t, t.file, offset, count, data, views, None)
        with q.size_lock(t.node.qid.path):
            return self._write_checked(t, t.file, offset, count, data, views, q)

    def _write_checked(
        self,
        t: Target,
        file: OpenFile,
        offset: int,
        count: int,
        data: bytes | memoryview,
        views: Sequence[memoryview] | None,
        q: QuotaLedger | None,
    ) -> int:
        """Checked and accounted (under the file's size lock if the export has a ledger)."""
        end = offset + count
        limited = t.export.max_file_size or q is not None
        if t.open_flags & os.O_APPEND and limited:
            end = t.backend.getattr(t.node).size + count  # appends land at the end
        self.policy.check_size(t.export, end)
        if not t.setid_checked:
            self._drop_setid(t)
        grown = 0
        if q is not None and t.export.quota_bytes:
            size = t.backend.getattr(t.node).size
            if end > size:
                q.charge(nbytes=end - size)
                grown = end - size
        try:
            if views is None:
                return t.backend.write(file, offset, data)
            return t.backend.write_from(file, offset, views)
        except BaseException:
            if q is not None:
                q.refund(nbytes=grown)
            raise

    def _drop_setid(self, t: Target) -> None:
        """The first write through an open file clears its set-id bits, as
        the kernel does for an unprivileged writer; the server keeps
        CAP_FSETID, so it does it here. A client granted set-id bits keeps
        them only when the guest's root writes."""
        t.setid_checked = True
        if t.rights.setid and t.uid in (0, NO_ID):
            return
        self._kill_setid(t, t.file)

    # ------------------------------------------------------------ xattrs --
    def xattr_get(self, t: Target, name: str) -> bytes:
        self.policy.check_xattr(t.rights, name, write=False)
        return t.backend.xattr_get(t.node, name)

    def xattr_list(self, t: Target) -> list[str]:
        return self.policy.visible_xattrs(t.rights, t.backend.xattr_list(t.node))

    def check_xattr_set(self, t: Target, name: str, size: int, flags: int) -> None:
        """What a set asks before its value arrives (9P sends it later)."""
        if flags & ~(c.XATTR_CREATE | c.XATTR_REPLACE):
            raise OSError(errno.EINVAL, f"unknown xattr flags {flags:#x}")
        if size > XATTR_SIZE_MAX:
            raise OSError(errno.E2BIG, "xattr value too large")
        if not name:
            raise OSError(errno.EINVAL, "empty xattr name")
        self.policy.check_write(t.rights)
        self.policy.check_xattr(t.rights, name, write=True)

    def xattr_set(self, t: Target, name: str, value: bytes, flags: int) -> None:
        self.check_xattr_set(t, name, len(value), flags)
        t.backend.xattr_set(t.node, name, value, flags)

    def xattr_remove(self, t: Target, name: str) -> None:
        self.check_xattr_set(t, name, 0, 0)
        t.backend.xattr_remove(t.node, name)

    # ------------------------------------------------------------- locks --
    def lock(self, t: Target, req: LockRequest) -> int:
        """Try a byte-range lock without waiting (LOCK_SUCCESS or
        LOCK_BLOCKED). A write lock needs a file open for writing, as with
        fcntl(2), which every backend checks: a read-only grant opens nothing
        for writing, so it takes no write lock."""
        _check_lock_type(req.type)
        return t.backend.lock(self._open(t), req)

    def getlock(self, t: Target, req: LockRequest) -> LockRequest:
        _check_lock_type(req.type)
        return t.backend.getlock(self._open(t), req)

    @staticmethod
    def _open(t: Target) -> OpenFile:
        if t.file is None:
            raise OSError(errno.EBADF, "not open")
        return t.file


def _check_lock_type(kind: int) -> None:
    if kind not in (c.LOCK_TYPE_RDLCK, c.LOCK_TYPE_WRLCK, c.LOCK_TYPE_UNLCK):
        raise OSError(errno.EINVAL, f"bad lock type {kind}")
