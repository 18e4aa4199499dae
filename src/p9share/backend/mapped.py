"""The "mapped" id-mapping mode: guest ownership, modes and file types kept in xattrs.

Host files stay owned by the server's (service) account with host modes that
only it can use (files 0600, directories 0700, like QEMU's mapped security
models). What the guest asked for, its uid, gid, mode (file type and
permission bits, set-id and sticky bits included) and rdev, is stored in
user.* extended attributes of the host file and shown to the guest instead of
the host's values. So chown, chmod, mknod and device files work inside the
guest without any host privilege, and nothing the guest creates is ever a
device, FIFO, socket or symlink on the host:

* mknod of a device, FIFO or socket creates an empty regular file; the type
  lives in the stored mode, the device number in the stored rdev;
* symlink creates a regular file holding the target (as QEMU's mapped-xattr
  model does), with S_IFLNK in the stored mode; readlink reads it back.

Two layouts of the attributes: "p9share" (user.p9share.*) and "virtfs",
exactly QEMU's user.virtfs.* (hw/9pfs/9p-local.c, local_set_xattrat and
local_mapped_attr), so a share QEMU wrote in security_model=mapped-xattr moves
over unchanged. Both use QEMU's encoding: uid, gid and mode are 4-byte
little-endian integers, rdev an 8-byte little-endian integer (a glibc dev_t).
Values of any other size are ignored (the host's value shows).

The guest can neither see nor change these attributes (they are hidden from
xattr_list, read as ENODATA and refused with EPERM); the names of both
layouts are reserved whichever is in use, so a guest cannot plant attributes
that a later switch of layout would honour. POSIX ACLs (system.posix_acl_*)
are stored under the layout's prefix as well, as QEMU does: applied to the
host file they would grant host users access by guest uid numbers.

A stored file type is trusted only where it cannot confuse the host side: a
host regular file may show as any non-directory type; a host directory is
always a directory; anything else (a real host symlink, FIFO, ...) keeps its
host type. Only the permission bits of a stored mode apply to those.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
import threading
from collections.abc import Iterator, Sequence

from ..protocol.constants import (
    DT_BLK,
    DT_CHR,
    DT_FIFO,
    DT_LNK,
    DT_REG,
    DT_SOCK,
    DT_UNKNOWN,
    QidType,
)
from ..protocol.wire import Qid
from .base import (
    Attr,
    Backend,
    DirEntry,
    LockRequest,
    Node,
    OpenFile,
    Owner,
    SetAttr,
    StatFs,
    refuse_special_open,
)
from .base import (
    fail as _fail,
)

__all__ = ["LAYOUTS", "RESERVED_XATTR_PREFIXES", "MappedBackend", "MappedNode", "MappedOpenFile"]

LAYOUTS = {"p9share": "user.p9share.", "virtfs": "user.virtfs."}
# Names a guest may never see or touch, whatever the layout (the policy can
# refuse them too, before they reach a backend).
RESERVED_XATTR_PREFIXES: tuple[str, ...] = tuple(LAYOUTS.values())

HOST_FILE_MODE = 0o600  # QEMU's SM_LOCAL_MODE_BITS
HOST_DIR_MODE = 0o700  # QEMU's SM_LOCAL_DIR_MODE_BITS
SYMLINK_MAX = 4095  # bytes of a symlink target (PATH_MAX with its NUL)

_U32 = struct.Struct("<I")  # uid_t, gid_t, mode_t as QEMU stores them
_U64 = struct.Struct("<Q")  # dev_t
_ACLS = ("system.posix_acl_access", "system.posix_acl_default")
_ABSENT = (errno.ENODATA, errno.EOPNOTSUPP, errno.ENOTSUP)
# Types a host regular file may stand for.
_SPECIAL = (stat.S_IFLNK, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK)
_DTYPES = {
    stat.S_IFREG: DT_REG,
    stat.S_IFLNK: DT_LNK,
    stat.S_IFCHR: DT_CHR,
    stat.S_IFBLK: DT_BLK,
    stat.S_IFIFO: DT_FIFO,
    stat.S_IFSOCK: DT_SOCK,
}


def _guest_type(host_type: int, stored_mode: int | None) -> int:
    """The file type the guest sees (see the module docstring for why)."""
    if stored_mode is None or host_type != stat.S_IFREG:
        return host_type
    t = stat.S_IFMT(stored_mode)
    return t if t in _SPECIAL else stat.S_IFREG


def _qid_as(q: Qid, ftype: int) -> Qid:
    if ftype == stat.S_IFLNK:
        return Qid(int(QidType.SYMLINK), 0, q.path)
    return q


class MappedNode(Node):
    """A node of the inner backend, with the guest's file type cached."""

    __slots__ = ("_backend", "_ftype", "inner")

    def __init__(self, backend: MappedBackend, inner: Node, ftype: int | None = None) -> None:
        self._backend = backend
        self.inner = inner
        # The guest type never changes for an inode (chmod keeps it), so it
        # is read once; two threads filling it at once store the same value.
        self._ftype = ftype

    @property
    def ftype(self) -> int:
        if self._ftype is None:
            self._ftype = self._backend._type_of(self.inner)
        return self._ftype

    @property
    def qid(self) -> Qid:
        q = self.inner.qid
        if q.type & (QidType.DIR | QidType.SYMLINK):
            return q  # a host directory or real symlink: no stored type applies
        return _qid_as(q, self.ftype)

    def __repr__(self) -> str:
        return f"<MappedNode {self.inner!r}>"


class MappedOpenFile(OpenFile):
    """An open file of the inner backend; a directory keeps a node of its
    own (for the entries' stored types) until it is closed."""

    __slots__ = ("_backend", "dirnode", "inner")

    def __init__(self, backend: MappedBackend, inner: OpenFile, dirnode: Node | None) -> None:
        self._backend = backend
        self.inner = inner
        self.dirnode = dirnode


class MappedBackend(Backend):
    """Wraps `inner` (a HostBackend in production) in the mapped id mode.

    Owner arguments carry the GUEST's (uid, gid) to record; None (or -1 for
    one of them) records nothing, and the host's value shows."""

    def __init__(self, inner: Backend, layout: str = "p9share") -> None:
        prefix = LAYOUTS.get(layout)
        if prefix is None:
            raise ValueError(f"unknown mapped layout {layout!r} (use one of {sorted(LAYOUTS)})")
        self.inner = inner
        self.layout = layout
        self.prefix = prefix
        self.uid_name = prefix + "uid"
        self.gid_name = prefix + "gid"
        self.mode_name = prefix + "mode"
        self.rdev_name = prefix + "rdev"
        # Serialises read-modify-write of a stored mode (chmod keeps the type).
        self._lock = threading.Lock()

    # ------------------------------------------------------------ helpers --
    def _node(self, node: Node) -> MappedNode:
        if not isinstance(node, MappedNode) or node._backend is not self:
            _fail(errno.EBADF, "not a node of this backend")
        return node

    def _file(self, file: OpenFile) -> MappedOpenFile:
        if not isinstance(file, MappedOpenFile) or file._backend is not self:
            _fail(errno.EBADF, "not an open file of this backend")
        return file

    def _get_stored(self, inner: Node, name: str, codec: struct.Struct) -> int | None:
        try:
            raw = self.inner.xattr_get(inner, name)
        except OSError as e:
            if e.errno in _ABSENT:
                return None
            raise
        if len(raw) != codec.size:
            return None  # not written by us or QEMU: ignore it
        (value,) = codec.unpack(raw)
        return int(value)

    def _stored_mode(self, inner: Node) -> int | None:
        return self._get_stored(inner, self.mode_name, _U32)

    def _type_of(self, inner: Node) -> int:
        """The guest's file type of an inner node."""
        q = inner.qid
        if q.type & QidType.DIR:
            return stat.S_IFDIR
        if q.type & QidType.SYMLINK:
            return stat.S_IFLNK
        host = stat.S_IFMT(self.inner.getattr(inner).mode)
        return _guest_type(host, self._stored_mode(inner) if host == stat.S_IFREG else None)

    def _type_of_regular(self, inner: Node) -> int:
        """_type_of for a node known to be a host regular file (readdir's DT_REG)."""
        return _guest_type(stat.S_IFREG, self._stored_mode(inner))

    def _store(
        self,
        inner: Node,
        *,
        uid: int | None = None,
        gid: int | None = None,
        mode: int | None = None,
        rdev: int | None = None,
    ) -> None:
        # -1 (the wire's 0xFFFFFFFF) is chown's "no change": nothing is recorded
        if uid is not None and uid & 0xFFFFFFFF != 0xFFFFFFFF:
            self.inner.xattr_set(inner, self.uid_name, _U32.pack(uid & 0xFFFFFFFF), 0)
        if gid is not None and gid & 0xFFFFFFFF != 0xFFFFFFFF:
            self.inner.xattr_set(inner, self.gid_name, _U32.pack(gid & 0xFFFFFFFF), 0)
        if mode is not None:
            self.inner.xattr_set(inner, self.mode_name, _U32.pack(mode & 0xFFFFFFFF), 0)
        if rdev is not None:
            self.inner.xattr_set(inner, self.rdev_name, _U64.pack(rdev & (1 << 64) - 1), 0)

    def _store_new(self, inner: Node, owner: Owner, mode: int, rdev: int | None = None) -> None:
        """Record a new file's guest attributes; on failure remove the file
        (if its name still refers to it) and raise."""
        uid, gid = owner if owner is not None else (None, None)
        try:
            self._store(inner, uid=uid, gid=gid, mode=mode, rdev=rdev)
        except BaseException:
            try:
                self.inner.remove(inner)
            except OSError:
                pass  # renamed or removed meanwhile: it shows host values
            raise

    def _new_regular(self, dirnode: Node, name: str, flags: int) -> tuple[Node, OpenFile]:
        """A new host regular file only the service account can use."""
        return self.inner.create(
            dirnode, name, flags | os.O_CREAT | os.O_EXCL, HOST_FILE_MODE, None
        )

    def _reserved(self, name: str) -> bool:
        return name.startswith(RESERVED_XATTR_PREFIXES)

    def _host_xattr_name(self, name: str) -> str:
        """ACLs go under the layout's prefix (QEMU: user.virtfs.system.posix_acl_*)."""
        return self.prefix + name if name in _ACLS else name

    # -------------------------------------------------------------- nodes --
    def root(self) -> Node:
        return MappedNode(self, self.inner.root())

    def walk(self, node: Node, name: str) -> Node:
        return MappedNode(self, self.inner.walk(self._node(node).inner, name))

    def clone(self, node: Node) -> Node:
        n = self._node(node)
        return MappedNode(self, self.inner.clone(n.inner), n._ftype)

    def release(self, node: Node) -> None:
        self.inner.release(self._node(node).inner)

    # --------------------------------------------------------- attributes --
    def getattr(self, node: Node) -> Attr:
        n = self._node(node)
        a = self.inner.getattr(n.inner)
        try:
            names = set(self.inner.xattr_list(n.inner))
        except OSError as e:
            if e.errno not in _ABSENT:
                raise
            names = set()
        uid = self._get_stored(n.inner, self.uid_name, _U32) if self.uid_name in names else None
        gid = self._get_stored(n.inner, self.gid_name, _U32) if self.gid_name in names else None
        mode = self._stored_mode(n.inner) if self.mode_name in names else None
        rdev = self._get_stored(n.inner, self.rdev_name, _U64) if self.rdev_name in names else None
        host_type = stat.S_IFMT(a.mode)
        ftype = _guest_type(host_type, mode)
        n._ftype = ftype
        if uid is not None:
            a.uid = uid
        if gid is not None:
            a.gid = gid
        perms = stat.S_IMODE(mode) if mode is not None else stat.S_IMODE(a.mode)
        a.mode = ftype | perms
        if rdev is not None:
            a.rdev = rdev
        if host_type == stat.S_IFREG:
            a.qid = _qid_as(a.qid, ftype)
        return a

    def setattr(self, node: Node, changes: SetAttr, file: OpenFile | None = None) -> None:
        n = self._node(node)
        inner_file = self._file(file).inner if file is not None else None
        if changes.size is not None and n.ftype in _SPECIAL:
            # what truncate(2) says for anything but a regular file
            _fail(errno.EINVAL, "only regular files have a size to set")
        ids = changes.mode is not None or changes.uid is not None or changes.gid is not None
        host = SetAttr(size=changes.size, atime=changes.atime, mtime=changes.mtime)
        host.ctime = changes.ctime and not ids  # writing the xattrs touches ctime anyway
        if host.size is not None or host.atime is not None or host.mtime is not None or host.ctime:
            self.inner.setattr(n.inner, host, inner_file)
        if not ids:
            return
        with self._lock:
            mode = None
            if changes.mode is not None:
                ftype = n.ftype
                mode = ftype | (changes.mode & 0o7777)
            self._store(n.inner, uid=changes.uid, gid=changes.gid, mode=mode)

    def statfs(self, node: Node) -> StatFs:
        return self.inner.statfs(self._node(node).inner)

    def readlink(self, node: Node) -> str:
        n = self._node(node)
        if n.inner.qid.type & QidType.SYMLINK:
            return self.inner.readlink(n.inner)  # a real host symlink
        if n.ftype != stat.S_IFLNK:
            _fail(errno.EINVAL, "not a symlink")
        f = self.inner.open(n.inner, os.O_RDONLY)
        try:
            raw = self.inner.read(f, 0, SYMLINK_MAX + 1)
        finally:
            self.inner.close(f)
        if len(raw) > SYMLINK_MAX:
            _fail(errno.ENAMETOOLONG, "stored symlink target is too long")
        if b"\0" in raw:
            _fail(errno.EINVAL, "stored symlink target contains NUL")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            pass
        _fail(errno.EILSEQ, "stored symlink target is not UTF-8")

    # --------------------------------------------------------- open files --
    def open(self, node: Node, flags: int) -> OpenFile:
        n = self._node(node)
        t = n.ftype
        # the stored type answers as a real one would: never the placeholder's content
        refuse_special_open(t)
        f = self.inner.open(n.inner, flags)
        if t != stat.S_IFDIR:
            return MappedOpenFile(self, f, None)
        try:
            d = self.inner.clone(n.inner)
        except BaseException:
            self.inner.close(f)
            raise
        return MappedOpenFile(self, f, d)

    def create(
        self, dirnode: Node, name: str, flags: int, mode: int, owner: Owner
    ) -> tuple[Node, OpenFile]:
        d = self._node(dirnode)
        for _ in range(8):
            try:
                node, f = self._new_regular(d.inner, name, flags)
            except FileExistsError:
                if flags & os.O_EXCL:
                    raise
            else:
                try:
                    self._store_new(node, owner, stat.S_IFREG | (mode & 0o7777))
                except BaseException:
                    self.inner.close(f)
                    self.inner.release(node)
                    raise
                return MappedNode(self, node, stat.S_IFREG), MappedOpenFile(self, f, None)
            # It exists: open it the way open() would, stored type checked first.
            try:
                existing = self.walk(dirnode, name)
            except FileNotFoundError:
                continue  # gone again: try to create it once more
            try:
                if self._node(existing).ftype == stat.S_IFDIR:
                    _fail(errno.EISDIR)
                return existing, self.open(existing, flags & ~(os.O_CREAT | os.O_EXCL))
            except BaseException:
                self.release(existing)
                raise
        _fail(errno.EAGAIN, f"{name!r} keeps appearing and disappearing")

    def read(self, file: OpenFile, offset: int, count: int) -> bytes:
        return self.inner.read(self._file(file).inner, offset, count)

    def write(self, file: OpenFile, offset: int, data: bytes | memoryview) -> int:
        return self.inner.write(self._file(file).inner, offset, data)

    def read_into(self, file: OpenFile, offset: int, views: Sequence[memoryview]) -> int:
        return self.inner.read_into(self._file(file).inner, offset, views)

    def write_from(self, file: OpenFile, offset: int, views: Sequence[memoryview]) -> int:
        return self.inner.write_from(self._file(file).inner, offset, views)

    def readdir(self, file: OpenFile, cookie: int) -> Iterator[DirEntry]:
        f = self._file(file)
        entries = self.inner.readdir(f.inner, cookie)
        if f.dirnode is None:
            return entries  # not a directory: the inner backend says so
        return self._guest_entries(f.dirnode, entries)

    def _guest_entries(self, dirnode: Node, entries: Iterator[DirEntry]) -> Iterator[DirEntry]:
        """Entries with the guest's type for host regular files, looked up
        one by one as they are sent (a reply holds only a few)."""
        for e in entries:
            if e.dtype in (DT_REG, DT_UNKNOWN) and e.name not in (".", ".."):
                try:
                    child = self.inner.walk(dirnode, e.name)
                except OSError:
                    yield e  # gone or unreachable: leave the host's view
                    continue
                try:
                    t = self._type_of_regular(child) if e.dtype == DT_REG else self._type_of(child)
                except OSError:
                    t = 0
                finally:
                    self.inner.release(child)
                if t in _DTYPES:
                    e = DirEntry(_qid_as(e.qid, t), e.cookie, _DTYPES[t], e.name)
            yield e

    def fsync(self, file: OpenFile, datasync: bool) -> None:
        self.inner.fsync(self._file(file).inner, datasync)

    def close(self, file: OpenFile) -> None:
        f = self._file(file)
        d, f.dirnode = f.dirnode, None
        try:
            self.inner.close(f.inner)
        finally:
            if d is not None:
                self.inner.release(d)

    def lock(self, file: OpenFile, req: LockRequest) -> int:
        return self.inner.lock(self._file(file).inner, req)

    def getlock(self, file: OpenFile, req: LockRequest) -> LockRequest:
        return self.inner.getlock(self._file(file).inner, req)

    # -------------------------------------------------- directory changes --
    def mkdir(self, dirnode: Node, name: str, mode: int, owner: Owner) -> Qid:
        d = self._node(dirnode)
        q = self.inner.mkdir(d.inner, name, HOST_DIR_MODE, None)
        child = self.inner.walk(d.inner, name)
        try:
            if child.qid.path != q.path:
                _fail(errno.ENOENT, f"{name!r} was replaced while being created")
            self._store_new(child, owner, stat.S_IFDIR | (mode & 0o7777))
        finally:
            self.inner.release(child)
        return q

    def symlink(self, dirnode: Node, name: str, target: str, owner: Owner) -> Qid:
        d = self._node(dirnode)
        if "\0" in target:
            _fail(errno.EINVAL, "NUL in symlink target")
        data = target.encode("utf-8")
        if len(data) > SYMLINK_MAX:
            _fail(errno.ENAMETOOLONG, "symlink target too long")
        node, f = self._new_regular(d.inner, name, os.O_WRONLY)
        try:
            try:
                done = 0
                while done < len(data):
                    n = self.inner.write(f, done, data[done:])
                    if n <= 0:
                        _fail(errno.EIO, "short write of a symlink target")
                    done += n
            finally:
                self.inner.close(f)
            # QEMU records symlinks with mode 0777, like Linux shows them.
            self._store_new(node, owner, stat.S_IFLNK | 0o777)
            return _qid_as(node.qid, stat.S_IFLNK)
        except BaseException:
            try:
                self.inner.remove(node)
            except OSError:
                pass
            raise
        finally:
            self.inner.release(node)

    def mknod(self, dirnode: Node, name: str, mode: int, rdev: int, owner: Owner) -> Qid:
        d = self._node(dirnode)
        ftype = stat.S_IFMT(mode) or stat.S_IFREG
        if ftype not in _DTYPES or ftype == stat.S_IFLNK:
            _fail(errno.EINVAL, "mknod makes regular files, devices, FIFOs and sockets")
        # Never a real device, FIFO or socket: a placeholder regular file.
        node, f = self._new_regular(d.inner, name, os.O_RDONLY)
        try:
            self.inner.close(f)
            self._store_new(node, owner, ftype | (mode & 0o7777), rdev)
            return node.qid
        finally:
            self.inner.release(node)

    def link(self, dirnode: Node, target: Node, name: str) -> None:
        self.inner.link(self._node(dirnode).inner, self._node(target).inner, name)

    def rename(self, olddir: Node, oldname: str, newdir: Node, newname: str) -> None:
        self.inner.rename(self._node(olddir).inner, oldname, self._node(newdir).inner, newname)

    def unlink(self, dirnode: Node, name: str, rmdir: bool) -> None:
        self.inner.unlink(self._node(dirnode).inner, name, rmdir)

    def remove(self, node: Node) -> None:
        self.inner.remove(self._node(node).inner)

    def rename_node(self, node: Node, newdir: Node | None, newname: str) -> None:
        nd = self._node(newdir).inner if newdir is not None else None
        self.inner.rename_node(self._node(node).inner, nd, newname)

    # ------------------------------------------------ extended attributes --
    def xattr_list(self, node: Node) -> list[str]:
        out = []
        for name in self.inner.xattr_list(self._node(node).inner):
            if name in _ACLS:
                continue  # the host's own ACL, not the guest's
            if name.startswith(self.prefix) and name[len(self.prefix) :] in _ACLS:
                out.append(name[len(self.prefix) :])
            elif not self._reserved(name):
                out.append(name)
        return out

    def xattr_get(self, node: Node, name: str) -> bytes:
        n = self._node(node)
        if self._reserved(name):
            _fail(errno.ENODATA, "reserved for the mapped id mode")
        return self.inner.xattr_get(n.inner, self._host_xattr_name(name))

    def xattr_set(self, node: Node, name: str, value: bytes, flags: int) -> None:
        n = self._node(node)
        if self._reserved(name):
            _fail(errno.EPERM, "reserved for the mapped id mode")
        self.inner.xattr_set(n.inner, self._host_xattr_name(name), value, flags)

    def xattr_remove(self, node: Node, name: str) -> None:
        n = self._node(node)
        if self._reserved(name):
            _fail(errno.EPERM, "reserved for the mapped id mode")
        self.inner.xattr_remove(n.inner, self._host_xattr_name(name))

    # ---------------------------------------------------------- lifecycle --
    def usage(self) -> tuple[int, int]:
        return self.inner.usage()

    def shutdown(self) -> None:
        self.inner.shutdown()
