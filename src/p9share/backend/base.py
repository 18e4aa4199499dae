"""The narrow interface between the 9P server and a filesystem.

Like QEMU's fsdev operation table or lib9p's Srv: the server owns sessions,
fids, tags and policy; a backend only performs filesystem operations on nodes
it handed out. Every method either returns its result or raises OSError with a
Linux errno, which the server sends back as Rlerror / Rerror. Backends must be
safe to call from several threads at once.

Names given to a backend are single path components that the server has
already checked: never empty, never containing '/' or NUL. `walk` may receive
'..' (a backend must keep it from leaving its root); the creating operations
never receive '.' or '..'.
"""

from __future__ import annotations

import abc
import errno
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NoReturn

from ..protocol.constants import QidType
from ..protocol.wire import Qid

_QTDIR = int(QidType.DIR)  # a plain int: IntFlag arithmetic is slow


def fail(err: int, detail: str | None = None) -> NoReturn:
    """Raise OSError(err) with the standard message and, briefly, why."""
    msg = os.strerror(err)
    raise OSError(err, f"{msg} ({detail})" if detail else msg)


def refuse_special_open(ftype: int) -> None:
    """What Tlopen of a symlink, device, FIFO or socket answers. A Linux guest
    never sends it for those (v9fs gives special inodes init_special_inode, so
    the guest's own drivers and pipe code open them), and a server that
    opened them could block on a FIFO or reach a host device."""
    if ftype == stat.S_IFLNK:
        fail(errno.ELOOP, "symlinks are not opened")
    if ftype in (stat.S_IFCHR, stat.S_IFBLK):
        fail(errno.EPERM, "device nodes are opened by the guest's own drivers")
    if ftype in (stat.S_IFIFO, stat.S_IFSOCK):
        fail(errno.ENXIO, "FIFOs and sockets are opened by the guest itself")


class Node(abc.ABC):
    """A reference to one file, held by one or more fids. Backend specific."""

    __slots__ = ()

    @property
    @abc.abstractmethod
    def qid(self) -> Qid: ...


class OpenFile:
    """An opened node (Tlopen / Tlcreate / Topen / Tcreate). Backend specific."""

    __slots__ = ()


@dataclass(slots=True)
class Attr:
    """What Rgetattr reports. Times are nanoseconds since the epoch."""

    qid: Qid
    mode: int  # st_mode, file type bits included
    uid: int
    gid: int
    nlink: int
    rdev: int
    size: int
    blksize: int
    blocks: int  # 512-byte blocks
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    btime_ns: int = 0
    gen: int = 0
    data_version: int = 0


class _Now:
    """Sentinel: set this time to the server's current time."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NOW"


NOW = _Now()
TimeSpec = int | _Now | None  # nanoseconds, NOW, or None for "leave alone"


@dataclass(slots=True)
class SetAttr:
    """The changes of one Tsetattr / Twstat; None means leave alone."""

    mode: int | None = None  # permission bits only (07777)
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    atime: TimeSpec = None
    mtime: TimeSpec = None
    ctime: bool = False  # touch ctime (the host does this on any change anyway)


@dataclass(slots=True)
class StatFs:
    type: int
    bsize: int
    blocks: int
    bfree: int
    bavail: int
    files: int
    ffree: int
    fsid: int
    namelen: int


@dataclass(slots=True)
class DirEntry:
    """One directory entry; cookie resumes the listing right after it."""

    qid: Qid
    cookie: int
    dtype: int  # DT_* value
    name: str


@dataclass(slots=True)
class LockRequest:
    type: int  # LOCK_TYPE_RDLCK / WRLCK / UNLCK
    start: int
    length: int  # 0 means to the end of the file
    proc_id: int
    client_id: str


Owner = tuple[int, int] | None  # (uid, gid) to give a new file, or None for the server's own


class Backend(abc.ABC):
    """Filesystem operations behind one export."""

    # ---- nodes
    @abc.abstractmethod
    def root(self) -> Node:
        """A new reference to the export's root."""

    @abc.abstractmethod
    def walk(self, node: Node, name: str) -> Node:
        """A new reference to the child `name` of directory `node` ('..' stays at the root)."""

    @abc.abstractmethod
    def clone(self, node: Node) -> Node:
        """Another reference to the same file (a fid clone)."""

    @abc.abstractmethod
    def release(self, node: Node) -> None:
        """Drop a reference returned by root, walk, clone, walk_names or create."""

    def walk_names(self, node: Node, names: Sequence[str]) -> tuple[Node | None, list[Qid]]:
        """Twalk in one call: walk names one by one from node. Returns (a new
        reference to the file reached, one qid per name); with no names, a
        clone. When a later name fails: (None, the qids of the names walked),
        a partial walk; when the first fails, its error is raised.

        This default is built on walk/clone/release; a backend may do it in
        fewer host calls (a qid from the same stat that walked there)."""
        cur = self.clone(node)
        qids: list[Qid] = []
        qid = cur.qid  # a property that may stat: read it once per node
        try:
            for name in names:
                if not qid.type & _QTDIR:
                    fail(errno.ENOTDIR, "not a directory")
                nxt = self.walk(cur, name)
                self.release(cur)
                cur = nxt
                qid = cur.qid
                qids.append(qid)
        except OSError:
            self.release(cur)
            if not qids:
                raise
            return None, qids
        return cur, qids

    # ---- attributes
    @abc.abstractmethod
    def getattr(self, node: Node) -> Attr: ...

    @abc.abstractmethod
    def setattr(self, node: Node, changes: SetAttr, file: OpenFile | None = None) -> None:
        """Apply changes; `file` is the fid's open file if it has one (for ftruncate)."""

    @abc.abstractmethod
    def statfs(self, node: Node) -> StatFs: ...

    @abc.abstractmethod
    def readlink(self, node: Node) -> str: ...

    # ---- open files
    @abc.abstractmethod
    def open(self, node: Node, flags: int) -> OpenFile:
        """Open with host os.O_* flags (already translated from the wire)."""

    @abc.abstractmethod
    def create(
        self, dirnode: Node, name: str, flags: int, mode: int, owner: Owner
    ) -> tuple[Node, OpenFile]:
        """Create and open a regular file (flags include os.O_CREAT | os.O_EXCL as asked)."""

    @abc.abstractmethod
    def read(self, file: OpenFile, offset: int, count: int) -> bytes: ...

    @abc.abstractmethod
    def write(self, file: OpenFile, offset: int, data: bytes | memoryview) -> int: ...

    # The same two with the caller's buffers (virtio-fs: guest memory), so
    # file data need not pass through a Python object. These defaults copy
    # through read/write; a backend with a file descriptor does better.
    def read_into(self, file: OpenFile, offset: int, views: Sequence[memoryview]) -> int:
        """Read into views, in order, up to their total length; the count
        read (less only at the end of the file)."""
        data = memoryview(self.read(file, offset, sum(len(v) for v in views)))
        pos = 0
        for v in views:
            chunk = data[pos : pos + len(v)]
            if not chunk:
                break
            v[: len(chunk)] = chunk
            pos += len(chunk)
        return pos

    def write_from(self, file: OpenFile, offset: int, views: Sequence[memoryview]) -> int:
        """Write the bytes of views, in order, as one write at offset; the count written."""
        return self.write(file, offset, views[0] if len(views) == 1 else b"".join(views))

    @abc.abstractmethod
    def readdir(self, file: OpenFile, cookie: int) -> Iterator[DirEntry]:
        """Entries after `cookie` (0 = from the start), '.' and '..' first.

        A cookie is opaque to the caller and stable for the directory (not
        for the open file): a listing resumes from any cookie the backend
        gave, in any open file of that directory. The iterator is lazy and
        an open directory keeps no copy of its entries between calls (only
        what one batch needs while it is being consumed): a guest holding
        many open listings must not pin memory in proportion to their size.
        Entries added or removed during a listing may or may not appear, as
        for a local readdir; none appears twice. A cookie the backend never
        gave yields nothing or an OSError, never a crash."""

    @abc.abstractmethod
    def fsync(self, file: OpenFile, datasync: bool) -> None: ...

    @abc.abstractmethod
    def close(self, file: OpenFile) -> None: ...

    @abc.abstractmethod
    def lock(self, file: OpenFile, req: LockRequest) -> int:
        """Try a byte-range lock without waiting; return LOCK_SUCCESS or LOCK_BLOCKED."""

    @abc.abstractmethod
    def getlock(self, file: OpenFile, req: LockRequest) -> LockRequest:
        """The first lock that would block req, or req with type UNLCK if none."""

    # ---- directory changes
    @abc.abstractmethod
    def mkdir(self, dirnode: Node, name: str, mode: int, owner: Owner) -> Qid: ...

    @abc.abstractmethod
    def symlink(self, dirnode: Node, name: str, target: str, owner: Owner) -> Qid: ...

    @abc.abstractmethod
    def mknod(self, dirnode: Node, name: str, mode: int, rdev: int, owner: Owner) -> Qid:
        """mode carries the file type (S_IFIFO, S_IFSOCK, S_IFREG, S_IFCHR, S_IFBLK)."""

    @abc.abstractmethod
    def link(self, dirnode: Node, target: Node, name: str) -> None: ...

    @abc.abstractmethod
    def rename(self, olddir: Node, oldname: str, newdir: Node, newname: str) -> None: ...

    @abc.abstractmethod
    def unlink(self, dirnode: Node, name: str, rmdir: bool) -> None: ...

    @abc.abstractmethod
    def remove(self, node: Node) -> None:
        """Tremove: unlink the file this node was reached by (rmdir for a directory).
        Fails with ENOENT/ESTALE if that name no longer refers to this file."""

    @abc.abstractmethod
    def rename_node(self, node: Node, newdir: Node | None, newname: str) -> None:
        """Trename / Twstat: move this node's file to newdir/newname (None: same directory)."""

    # ---- extended attributes
    @abc.abstractmethod
    def xattr_list(self, node: Node) -> list[str]: ...

    @abc.abstractmethod
    def xattr_get(self, node: Node, name: str) -> bytes: ...

    @abc.abstractmethod
    def xattr_set(self, node: Node, name: str, value: bytes, flags: int) -> None:
        """flags: XATTR_CREATE / XATTR_REPLACE (wire values, same as Linux)."""

    @abc.abstractmethod
    def xattr_remove(self, node: Node, name: str) -> None: ...

    # ---- accounting
    def usage(self) -> tuple[int, int]:
        """(bytes, files) the export holds: apparent sizes of regular files,
        every inode counted once; for quotas. Optional."""
        raise OSError(errno.EOPNOTSUPP, "this backend cannot count its usage")

    # ---- lifecycle
    def shutdown(self) -> None:  # noqa: B027 - an optional hook
        """Release everything the backend holds (end of serve)."""
