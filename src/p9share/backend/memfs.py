"""A complete filesystem kept in memory, behind the same `Backend` seam.

It proves the seam (the server cannot tell it from a host directory), makes
tests independent of the host, and carries synthetic files: read-only files
whose content a callable produces at open time, like the ctl/status files of
lib9p and diod.

Semantics follow Linux (tmpfs where the kernel leaves a choice):

* timestamps in ns: read/readdir set atime; write and truncate set
  mtime+ctime; chmod/chown/utimes/link/unlink/rename/xattr changes set ctime;
  creating, removing or renaming an entry sets the directory's mtime+ctime;
* nlink counts names for files and 2 + subdirectories for directories;
* an unlinked file stays usable through open files and nodes, and its space
  comes back when the last of them goes;
* rename(2) rules, including the ancestor checks (EINVAL / ENOTEMPTY) that
  Linux makes before the type checks;
* POSIX byte-range locks, owned by OpenFile: different OpenFiles conflict,
  an owner's own locks are replaced, split and merged, close drops them;
* errors are OSError with the errno Linux gives.

Files are not sparse: extending a file allocates it, and the space counts
against `capacity` (bytes) and new files against `max_inodes`, giving ENOSPC
when either runs out (statfs reports the same numbers), so a guest cannot
grow the server's memory without bound. Synthetic files have
size 0 (like /proc) and a qid version that changes at every open; writing to
or changing them gives EACCES, unlinking, renaming or linking them EPERM (they
behave as immutable).

Everything happens under one lock. Synthetic callables run outside it, so they
may call back into the backend.
"""

from __future__ import annotations

import bisect
import dataclasses
import errno
import itertools
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from typing import NoReturn

from ..protocol.constants import (
    DT_BLK,
    DT_CHR,
    DT_DIR,
    DT_FIFO,
    DT_LNK,
    DT_REG,
    DT_SOCK,
    DT_UNKNOWN,
    LOCK_BLOCKED,
    LOCK_SUCCESS,
    LOCK_TYPE_RDLCK,
    LOCK_TYPE_UNLCK,
    LOCK_TYPE_WRLCK,
    XATTR_CREATE,
    XATTR_REPLACE,
    QidType,
)
from ..protocol.wire import Qid
from .base import (
    NOW,
    Attr,
    Backend,
    DirEntry,
    LockRequest,
    Node,
    OpenFile,
    Owner,
    SetAttr,
    StatFs,
    TimeSpec,
)

__all__ = ["MemoryBackend"]

TMPFS_MAGIC = 0x01021994
BLOCK_SIZE = 4096
NAME_MAX = 255
PATH_MAX = 4096
LINK_MAX = 65000
OFFSET_MAX = (1 << 63) - 1  # Linux's MAX_LFS_FILESIZE / OFFSET_MAX
BOGO_DIRENT_SIZE = 20  # what tmpfs adds to a directory's size per entry
XATTR_NAME_MAX = 255
XATTR_SIZE_MAX = 65536
XATTR_INODE_MAX = 65536  # names + values of one inode
XATTR_PREFIXES = ("user.", "trusted.", "security.")
READDIR_BATCH = 64

_fsids = itertools.count(1)


def _fail(code: int, detail: str | None = None) -> NoReturn:
    msg = os.strerror(code)
    raise OSError(code, f"{msg}: {detail}" if detail else msg)


def _blocks(size: int) -> int:
    """Allocated BLOCK_SIZE blocks for `size` bytes."""
    return -(-size // BLOCK_SIZE)


_DTYPES = {
    stat.S_IFREG: DT_REG,
    stat.S_IFDIR: DT_DIR,
    stat.S_IFLNK: DT_LNK,
    stat.S_IFIFO: DT_FIFO,
    stat.S_IFSOCK: DT_SOCK,
    stat.S_IFCHR: DT_CHR,
    stat.S_IFBLK: DT_BLK,
}


class _Inode:
    __slots__ = (
        "atime",
        "btime",
        "children",
        "ctime",
        "data",
        "gid",
        "ino",
        "locks",
        "mode",
        "mtime",
        "name",
        "name_at",
        "next_seq",
        "nlink",
        "order",
        "parent",
        "rdev",
        "refs",
        "seq_of",
        "synthetic",
        "target",
        "uid",
        "version",
        "xattrs",
    )

    def __init__(self, ino: int, mode: int, uid: int, gid: int, now: int) -> None:
        self.ino = ino
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.rdev = 0
        self.nlink = 0
        self.refs = 0  # nodes and open files holding this inode
        self.version = 0
        self.atime = self.mtime = self.ctime = self.btime = now
        self.xattrs: dict[str, bytes] = {}
        self.data = bytearray()  # regular files
        self.target = ""  # symlinks
        self.synthetic: Callable[[], bytes] | None = None
        self.locks: list[_Lock] = []
        # directories: entries in creation order with readdir sequence numbers
        self.children: dict[str, _Inode] = {}
        self.seq_of: dict[str, int] = {}
        self.name_at: dict[int, str] = {}
        self.order: list[int] = []  # ascending, may hold stale seqs
        self.next_seq = 1
        self.parent: _Inode | None = None  # directories: None once removed
        self.name = ""  # directories: their one name

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def size(self) -> int:
        if self.is_reg:
            return len(self.data)
        if self.is_dir:
            return (len(self.children) + 2) * BOGO_DIRENT_SIZE if self.nlink else 0
        if self.is_symlink:
            return len(self.target.encode())
        return 0

    def qid(self) -> Qid:
        if self.is_dir:
            t = QidType.DIR
        elif self.is_symlink:
            t = QidType.SYMLINK
        else:
            t = QidType.FILE
        return Qid(int(t), self.version & 0xFFFFFFFF, self.ino)

    def bump(self) -> None:
        self.version += 1

    # ---- directory entries
    def add_entry(self, name: str, child: _Inode) -> None:
        seq = self.next_seq
        self.next_seq += 1
        self.children[name] = child
        self.seq_of[name] = seq
        self.name_at[seq] = name
        self.order.append(seq)

    def drop_entry(self, name: str) -> _Inode:
        child = self.children.pop(name)
        del self.name_at[self.seq_of.pop(name)]
        if len(self.order) > 2 * len(self.name_at) + 64:
            self.order = [s for s in self.order if s in self.name_at]
        return child


@dataclasses.dataclass(slots=True)
class _Lock:
    owner: _MemFile
    type: int
    start: int
    end: int  # inclusive; OFFSET_MAX for "to the end of the file"
    proc_id: int
    client_id: str


class _MemNode(Node):
    """A reference to an inode, remembering the name it was reached by."""

    __slots__ = ("fs", "inode", "name", "parent", "released")

    def __init__(self, fs: MemoryBackend, inode: _Inode, parent: _Inode | None, name: str) -> None:
        self.fs = fs  # the backend it belongs to
        self.inode = inode
        self.parent = parent  # None for the root
        self.name = name
        self.released = False

    @property
    def qid(self) -> Qid:
        return self.inode.qid()

    def __repr__(self) -> str:
        return f"<MemNode ino={self.inode.ino} name={self.name!r}>"


class _MemFile(OpenFile):
    __slots__ = (
        "append",
        "closed",
        "content",
        "flags",
        "fs",
        "inode",
        "noatime",
        "readable",
        "writable",
    )

    def __init__(self, fs: MemoryBackend, inode: _Inode, flags: int, content: bytes | None) -> None:
        acc = flags & os.O_ACCMODE
        self.fs = fs
        self.inode = inode
        self.flags = flags
        self.readable = acc in (os.O_RDONLY, os.O_RDWR)
        self.writable = acc in (os.O_WRONLY, os.O_RDWR)
        self.append = bool(flags & os.O_APPEND)
        self.noatime = bool(flags & getattr(os, "O_NOATIME", 0))
        self.content = content  # synthetic files: the snapshot taken at open
        self.closed = False

    def __repr__(self) -> str:
        return f"<MemFile ino={self.inode.ino} flags={self.flags:#o}>"


def _wants_write(flags: int) -> bool:
    return (flags & os.O_ACCMODE) in (os.O_WRONLY, os.O_RDWR) or bool(flags & os.O_TRUNC)


def _check_name(name: str) -> None:
    if len(name.encode()) > NAME_MAX:
        _fail(errno.ENAMETOOLONG, name[:32] + "...")


class MemoryBackend(Backend):
    """An in-memory filesystem; see the module docstring for its semantics.

    `readonly` makes every modifying operation fail with EROFS; `capacity`
    and `max_inodes` are the limits statfs reports and writes enforce.
    """

    def __init__(
        self,
        *,
        readonly: bool = False,
        capacity: int = 1 << 30,
        max_inodes: int = 1 << 20,
    ) -> None:
        self.readonly = readonly
        self._lock = threading.Lock()
        self._clock: Callable[[], int] = time.time_ns
        self._inos = itertools.count(1)
        self._total_blocks = max(capacity // BLOCK_SIZE, 0)
        self._used_blocks = 0
        self._max_inodes = max_inodes
        self._inode_count = 0
        self._fsid = next(_fsids)
        now = self._clock()
        root = _Inode(next(self._inos), stat.S_IFDIR | 0o755, 0, 0, now)
        root.nlink = 2
        root.parent = root
        self._inode_count = 1
        self._root = root

    # ------------------------------------------------------------ helpers --
    def _now(self) -> int:
        return self._clock()

    def _ro(self) -> None:
        if self.readonly:
            _fail(errno.EROFS)

    def _node(self, node: Node, foreign: int = errno.EBADF) -> _MemNode:
        if not isinstance(node, _MemNode) or node.fs is not self:
            _fail(foreign, "not a node of this backend")
        if node.released:
            _fail(errno.EBADF, "node was released")
        return node

    def _file(self, file: OpenFile) -> _MemFile:
        if not isinstance(file, _MemFile) or file.fs is not self or file.closed:
            _fail(errno.EBADF, "not an open file of this backend")
        return file

    def _dir(self, node: Node, foreign: int = errno.EBADF) -> _Inode:
        """The live directory behind `node` (for lookups and creation)."""
        ino = self._node(node, foreign).inode
        if not ino.is_dir:
            _fail(errno.ENOTDIR)
        if ino.parent is None:
            _fail(errno.ENOENT, "directory was removed")
        return ino

    def _new_ref(self, inode: _Inode, parent: _Inode | None, name: str) -> _MemNode:
        inode.refs += 1
        return _MemNode(self, inode, parent, name)

    def _unref(self, inode: _Inode) -> None:
        inode.refs -= 1
        self._maybe_free(inode)

    def _maybe_free(self, inode: _Inode) -> None:
        if inode.nlink == 0 and inode.refs <= 0 and inode is not self._root:
            self._used_blocks -= _blocks(len(inode.data))
            inode.data = bytearray()
            inode.xattrs = {}
            inode.locks = []
            self._inode_count -= 1
            inode.nlink = -1  # freed: never counted twice

    def _resize(self, inode: _Inode, size: int) -> None:
        """Set a regular file's size, allocating or freeing blocks."""
        old = len(inode.data)
        if size == old:
            return
        if size > OFFSET_MAX:
            _fail(errno.EFBIG)
        delta = _blocks(size) - _blocks(old)
        if delta > self._total_blocks - self._used_blocks:
            _fail(errno.ENOSPC)
        if size < old:
            del inode.data[size:]
        else:
            inode.data.extend(bytes(size - old))
        self._used_blocks += delta

    def _room_for(self, inode: _Inode, end: int) -> int:
        """The largest size up to `end` this file can grow to."""
        cur = len(inode.data)
        if end <= cur:
            return end
        avail = self._total_blocks - self._used_blocks + _blocks(cur)
        return min(end, avail * BLOCK_SIZE)

    def _check_create(self, dirnode: Node, name: str, new_inode: bool = True) -> _Inode:
        """Linux order for creating `name`: ENOTDIR/ENOENT, EEXIST, then EROFS."""
        d = self._dir(dirnode)
        _check_name(name)
        if name in (".", "..") or name in d.children:
            _fail(errno.EEXIST, name)
        self._ro()
        if new_inode and self._inode_count >= self._max_inodes:
            _fail(errno.ENOSPC, "no inodes left")
        return d

    def _new_inode(self, d: _Inode, name: str, mode: int, owner: Owner, now: int) -> _Inode:
        uid, gid = owner if owner is not None else (0, d.gid if d.mode & stat.S_ISGID else 0)
        if stat.S_ISDIR(mode) and d.mode & stat.S_ISGID:
            mode |= stat.S_ISGID
        ino = _Inode(next(self._inos), mode, uid, gid, now)
        self._inode_count += 1
        if ino.is_dir:
            ino.nlink = 2
            ino.parent = d
            ino.name = name
            d.nlink += 1
        else:
            ino.nlink = 1
        d.add_entry(name, ino)
        d.mtime = d.ctime = now
        d.bump()
        return ino

    def _location(self, n: _MemNode) -> tuple[_Inode, str]:
        """The (directory, name) that node's file is known by now."""
        ino = n.inode
        if ino is self._root:
            _fail(errno.EBUSY, "the root has no name")
        if ino.is_dir:
            if ino.parent is None:
                _fail(errno.ENOENT, "directory was removed")
            return ino.parent, ino.name
        parent = n.parent
        if parent is None or parent.children.get(n.name) is not ino:
            _fail(errno.ENOENT, "the name this file was reached by is gone")
        return parent, n.name

    def _detach(self, d: _Inode, name: str, now: int) -> _Inode:
        """Remove entry `name` of `d` (checks done) and drop the link."""
        child = d.drop_entry(name)
        if child.is_dir:
            child.nlink = 0
            child.parent = None
            d.nlink -= 1
        else:
            child.nlink -= 1
        child.ctime = now
        d.mtime = d.ctime = now
        d.bump()
        self._maybe_free(child)
        return child

    # ------------------------------------------------------------- nodes --
    def root(self) -> Node:
        with self._lock:
            return self._new_ref(self._root, None, "")

    def walk(self, node: Node, name: str) -> Node:
        with self._lock:
            n = self._node(node)
            d = self._dir(node)
            if name == ".":
                return self._new_ref(d, n.parent, n.name)
            if name == "..":
                up = d.parent
                assert up is not None
                if up is self._root:
                    return self._new_ref(up, None, "")
                return self._new_ref(up, up.parent, up.name)
            _check_name(name)
            child = d.children.get(name)
            if child is None:
                _fail(errno.ENOENT, name)
            return self._new_ref(child, d, name)

    def clone(self, node: Node) -> Node:
        with self._lock:
            n = self._node(node)
            return self._new_ref(n.inode, n.parent, n.name)

    def release(self, node: Node) -> None:
        with self._lock:
            if isinstance(node, _MemNode) and node.fs is self and not node.released:
                node.released = True
                self._unref(node.inode)

    # -------------------------------------------------------- attributes --
    def getattr(self, node: Node) -> Attr:
        with self._lock:
            ino = self._node(node).inode
            size = ino.size
            return Attr(
                qid=ino.qid(),
                mode=ino.mode,
                uid=ino.uid,
                gid=ino.gid,
                nlink=max(ino.nlink, 0),
                rdev=ino.rdev,
                size=size,
                blksize=BLOCK_SIZE,
                blocks=_blocks(size) * (BLOCK_SIZE // 512) if ino.is_reg else 0,
                atime_ns=ino.atime,
                mtime_ns=ino.mtime,
                ctime_ns=ino.ctime,
                btime_ns=ino.btime,
                gen=0,
                data_version=ino.version,
            )

    def setattr(self, node: Node, changes: SetAttr, file: OpenFile | None = None) -> None:
        with self._lock:
            ino = self._node(node).inode
            if file is not None:
                self._file(file)
            self._ro()
            if ino.synthetic is not None:
                _fail(errno.EACCES, "synthetic files are read-only")
            # validate everything first: the change is all or nothing
            if changes.size is not None:
                if ino.is_dir:
                    _fail(errno.EISDIR)
                if not ino.is_reg or changes.size < 0:
                    _fail(errno.EINVAL)
                if changes.size > OFFSET_MAX:
                    _fail(errno.EFBIG)
            if changes.mode is not None and ino.is_symlink:
                _fail(errno.EOPNOTSUPP, "symlinks have no mode of their own")
            now = self._now()
            touched = False
            if changes.size is not None:
                if changes.size != len(ino.data):
                    self._resize(ino, changes.size)
                    ino.mtime = now
                    ino.bump()
                touched = True
            if changes.mode is not None:
                ino.mode = stat.S_IFMT(ino.mode) | (changes.mode & 0o7777)
                touched = True
            if changes.uid is not None or changes.gid is not None:
                if changes.uid is not None:
                    ino.uid = changes.uid
                if changes.gid is not None:
                    ino.gid = changes.gid
                if changes.mode is None and not ino.is_dir:
                    # chown drops set-user-ID, and set-group-ID when it means it
                    ino.mode &= ~stat.S_ISUID
                    if ino.mode & stat.S_IXGRP:
                        ino.mode &= ~stat.S_ISGID
                touched = True
            for spec, field in ((changes.atime, "atime"), (changes.mtime, "mtime")):
                t = self._time(spec, now)
                if t is not None:
                    setattr(ino, field, t)
                    touched = True
            if touched or changes.ctime:
                ino.ctime = now

    @staticmethod
    def _time(spec: TimeSpec, now: int) -> int | None:
        if spec is None:
            return None
        if spec is NOW:
            return now
        assert isinstance(spec, int)
        return spec

    def statfs(self, node: Node) -> StatFs:
        with self._lock:
            self._node(node)
            free = max(self._total_blocks - self._used_blocks, 0)
            return StatFs(
                type=TMPFS_MAGIC,
                bsize=BLOCK_SIZE,
                blocks=self._total_blocks,
                bfree=free,
                bavail=free,
                files=self._max_inodes,
                ffree=max(self._max_inodes - self._inode_count, 0),
                fsid=self._fsid,
                namelen=NAME_MAX,
            )

    def readlink(self, node: Node) -> str:
        with self._lock:
            ino = self._node(node).inode
            if not ino.is_symlink:
                _fail(errno.EINVAL, "not a symlink")
            ino.atime = self._now()
            return ino.target

    # -------------------------------------------------------- open files --
    def _check_open(self, ino: _Inode, flags: int) -> None:
        if flags & os.O_DIRECTORY and not ino.is_dir:
            _fail(errno.ENOTDIR)
        if ino.is_symlink:
            _fail(errno.ELOOP, "symlinks are resolved by the client")
        if ino.is_dir:
            if _wants_write(flags):
                _fail(errno.EISDIR)
            return
        if not ino.is_reg:
            _fail(errno.ENXIO, "special files are opened on the client side")
        if ino.synthetic is not None and _wants_write(flags):
            _fail(errno.EACCES, "synthetic files are read-only")
        if _wants_write(flags):
            self._ro()

    def _open_locked(self, ino: _Inode, flags: int, content: bytes | None) -> _MemFile:
        if flags & os.O_TRUNC and ino.is_reg:
            now = self._now()
            self._resize(ino, 0)
            ino.mtime = ino.ctime = now
            ino.bump()
        ino.refs += 1
        return _MemFile(self, ino, flags, content)

    def open(self, node: Node, flags: int) -> OpenFile:
        with self._lock:
            ino = self._node(node).inode
            self._check_open(ino, flags)
            produce = ino.synthetic
            if produce is None:
                return self._open_locked(ino, flags, None)
        content = self._produce(produce)
        with self._lock:
            self._node(node)
            ino.bump()
            return self._open_locked(ino, flags, content)

    @staticmethod
    def _produce(produce: Callable[[], bytes]) -> bytes:
        try:
            content = produce()
        except OSError:
            raise
        except Exception as e:
            raise OSError(errno.EIO, f"synthetic file failed: {e!r}") from e
        if not isinstance(content, bytes | bytearray | memoryview):
            _fail(errno.EIO, "synthetic file produced no bytes")
        return bytes(content)

    def create(
        self, dirnode: Node, name: str, flags: int, mode: int, owner: Owner
    ) -> tuple[Node, OpenFile]:
        with self._lock:
            d = self._dir(dirnode)
            _check_name(name)
            existing = d.children.get(name)
            if existing is None:
                d = self._check_create(dirnode, name)
                now = self._now()
                ino = self._new_inode(d, name, stat.S_IFREG | (mode & 0o7777), owner, now)
                node = self._new_ref(ino, d, name)
                return node, self._open_locked(ino, flags & ~os.O_TRUNC, None)
            if flags & os.O_EXCL:
                _fail(errno.EEXIST, name)
            if existing.is_dir:
                _fail(errno.EISDIR, name)
            self._check_open(existing, flags)
            if existing.synthetic is None:
                node = self._new_ref(existing, d, name)
                return node, self._open_locked(existing, flags, None)
            produce = existing.synthetic
        content = self._produce(produce)
        with self._lock:
            existing.bump()
            node = self._new_ref(existing, d, name)
            return node, self._open_locked(existing, flags, content)

    def read(self, file: OpenFile, offset: int, count: int) -> bytes:
        with self._lock:
            f = self._file(file)
            ino = f.inode
            if ino.is_dir:
                _fail(errno.EISDIR)
            if not f.readable:
                _fail(errno.EBADF, "not open for reading")
            if offset < 0 or count < 0:
                _fail(errno.EINVAL)
            src = f.content if f.content is not None else ino.data
            out = bytes(src[offset : offset + count])
            if not f.noatime and ino.synthetic is None:
                ino.atime = self._now()
            return out

    def write(self, file: OpenFile, offset: int, data: bytes | memoryview) -> int:
        with self._lock:
            f = self._file(file)
            ino = f.inode
            if ino.synthetic is not None:
                _fail(errno.EACCES, "synthetic files are read-only")
            if not f.writable:
                _fail(errno.EBADF, "not open for writing")
            self._ro()
            if offset < 0:
                _fail(errno.EINVAL)
            n = len(data)
            if n == 0:
                return 0
            if f.append:
                offset = len(ino.data)
            if offset >= OFFSET_MAX:
                _fail(errno.EFBIG)
            end = min(offset + n, OFFSET_MAX)
            end = self._room_for(ino, end)
            if end <= offset:
                _fail(errno.ENOSPC)
            n = end - offset
            if end > len(ino.data):
                self._resize(ino, end)
            ino.data[offset:end] = data[:n]
            now = self._now()
            ino.mtime = ino.ctime = now
            ino.bump()
            return n

    def readdir(self, file: OpenFile, cookie: int) -> Iterator[DirEntry]:
        with self._lock:
            f = self._file(file)
            ino = f.inode
            if not ino.is_dir:
                _fail(errno.ENOTDIR)
            if ino.parent is None:
                _fail(errno.ENOENT, "directory was removed")
            if not f.noatime:
                ino.atime = self._now()
        return self._readdir_from(f, cookie)

    def _readdir_from(self, f: _MemFile, cookie: int) -> Iterator[DirEntry]:
        """Entries in batches, taking the lock per batch, never across a yield."""
        pos = cookie
        while True:
            with self._lock:
                if f.closed:
                    return
                batch = self._dir_batch(f.inode, pos, READDIR_BATCH)
            if not batch:
                return
            yield from batch
            pos = batch[-1].cookie

    @staticmethod
    def _dir_batch(d: _Inode, after: int, limit: int) -> list[DirEntry]:
        out: list[DirEntry] = []
        if after < 1:
            out.append(DirEntry(d.qid(), 1, DT_DIR, "."))
        if after < 2 and d.parent is not None:
            out.append(DirEntry(d.parent.qid(), 2, DT_DIR, ".."))
        i = bisect.bisect_right(d.order, after - 2)
        while len(out) < limit and i < len(d.order):
            seq = d.order[i]
            i += 1
            name = d.name_at.get(seq)
            if name is None:
                continue
            child = d.children[name]
            dtype = _DTYPES.get(stat.S_IFMT(child.mode), DT_UNKNOWN)
            out.append(DirEntry(child.qid(), seq + 2, dtype, name))
        return out

    def fsync(self, file: OpenFile, datasync: bool) -> None:
        with self._lock:
            self._file(file)

    def close(self, file: OpenFile) -> None:
        with self._lock:
            if not isinstance(file, _MemFile) or file.fs is not self or file.closed:
                return
            file.closed = True
            ino = file.inode
            ino.locks = [lk for lk in ino.locks if lk.owner is not file]
            file.content = None
            self._unref(ino)

    # ---- locks
    @staticmethod
    def _lock_range(req: LockRequest) -> tuple[int, int]:
        if req.start < 0 or req.start > OFFSET_MAX or req.length < 0:
            _fail(errno.EINVAL, "bad lock range")
        if req.length == 0:
            return req.start, OFFSET_MAX
        end = req.start + req.length - 1
        if end > OFFSET_MAX:
            _fail(errno.EOVERFLOW, "lock range too long")
        return req.start, end

    @staticmethod
    def _conflicts(locks: list[_Lock], f: _MemFile, type_: int, s: int, e: int) -> list[_Lock]:
        return [
            lk
            for lk in locks
            if lk.owner is not f
            and lk.start <= e
            and s <= lk.end
            and (type_ == LOCK_TYPE_WRLCK or lk.type == LOCK_TYPE_WRLCK)
        ]

    def lock(self, file: OpenFile, req: LockRequest) -> int:
        with self._lock:
            f = self._file(file)
            if req.type not in (LOCK_TYPE_RDLCK, LOCK_TYPE_WRLCK, LOCK_TYPE_UNLCK):
                _fail(errno.EINVAL, f"bad lock type {req.type}")
            s, e = self._lock_range(req)
            if req.type == LOCK_TYPE_RDLCK and not f.readable:
                _fail(errno.EBADF, "read lock needs a file open for reading")
            if req.type == LOCK_TYPE_WRLCK and not f.writable:
                _fail(errno.EBADF, "write lock needs a file open for writing")
            ino = f.inode
            if req.type != LOCK_TYPE_UNLCK and self._conflicts(ino.locks, f, req.type, s, e):
                return LOCK_BLOCKED
            kept: list[_Lock] = []
            for lk in ino.locks:
                if lk.owner is not f or lk.end < s - 1 or lk.start > e + 1:
                    kept.append(lk)  # not ours, or neither touching nor overlapping
                elif lk.type == req.type:
                    s, e = min(s, lk.start), max(e, lk.end)  # merge
                elif lk.end < s or lk.start > e:
                    kept.append(lk)  # only adjacent, other type
                else:  # overlapping, other type (or unlock): keep what sticks out
                    if lk.start < s:
                        kept.append(dataclasses.replace(lk, end=s - 1))
                    if lk.end > e:
                        kept.append(dataclasses.replace(lk, start=e + 1))
            if req.type != LOCK_TYPE_UNLCK:
                kept.append(_Lock(f, req.type, s, e, req.proc_id, req.client_id))
            kept.sort(key=lambda lk: lk.start)
            ino.locks = kept
            return LOCK_SUCCESS

    def getlock(self, file: OpenFile, req: LockRequest) -> LockRequest:
        with self._lock:
            f = self._file(file)
            if req.type not in (LOCK_TYPE_RDLCK, LOCK_TYPE_WRLCK):
                _fail(errno.EINVAL, f"bad lock type {req.type}")
            s, e = self._lock_range(req)
            hits = self._conflicts(f.inode.locks, f, req.type, s, e)
            if not hits:
                return dataclasses.replace(req, type=LOCK_TYPE_UNLCK)
            lk = hits[0]
            length = 0 if lk.end == OFFSET_MAX else lk.end - lk.start + 1
            return LockRequest(lk.type, lk.start, length, lk.proc_id, lk.client_id)

    # ------------------------------------------------- directory changes --
    def mkdir(self, dirnode: Node, name: str, mode: int, owner: Owner) -> Qid:
        with self._lock:
            d = self._check_create(dirnode, name)
            if d.nlink >= LINK_MAX:
                _fail(errno.EMLINK)
            ino = self._new_inode(d, name, stat.S_IFDIR | (mode & 0o7777), owner, self._now())
            return ino.qid()

    def symlink(self, dirnode: Node, name: str, target: str, owner: Owner) -> Qid:
        with self._lock:
            if not target:
                _fail(errno.ENOENT, "empty symlink target")
            if len(target.encode()) >= PATH_MAX:
                _fail(errno.ENAMETOOLONG, "symlink target")
            d = self._check_create(dirnode, name)
            ino = self._new_inode(d, name, stat.S_IFLNK | 0o777, owner, self._now())
            ino.target = target
            return ino.qid()

    def mknod(self, dirnode: Node, name: str, mode: int, rdev: int, owner: Owner) -> Qid:
        with self._lock:
            kind = stat.S_IFMT(mode) or stat.S_IFREG
            if kind == stat.S_IFDIR:
                _fail(errno.EPERM, "mknod cannot make directories")
            if kind not in (
                stat.S_IFREG,
                stat.S_IFIFO,
                stat.S_IFSOCK,
                stat.S_IFCHR,
                stat.S_IFBLK,
            ):
                _fail(errno.EINVAL, f"bad file type {kind:#o}")
            d = self._check_create(dirnode, name)
            ino = self._new_inode(d, name, kind | (mode & 0o7777), owner, self._now())
            if kind in (stat.S_IFCHR, stat.S_IFBLK):
                ino.rdev = rdev
            return ino.qid()

    def link(self, dirnode: Node, target: Node, name: str) -> None:
        with self._lock:
            t = self._node(target, errno.EXDEV).inode
            d = self._check_create(dirnode, name, new_inode=False)
            if t.is_dir:
                _fail(errno.EPERM, "hard links to directories are not allowed")
            if t.synthetic is not None:
                _fail(errno.EPERM, "synthetic files cannot be linked")
            if t.nlink <= 0:
                _fail(errno.ENOENT, "the file was unlinked")
            if t.nlink >= LINK_MAX:
                _fail(errno.EMLINK)
            now = self._now()
            t.nlink += 1
            t.ctime = now
            d.add_entry(name, t)
            d.mtime = d.ctime = now
            d.bump()

    def unlink(self, dirnode: Node, name: str, rmdir: bool) -> None:
        with self._lock:
            self._ro()
            d = self._dir(dirnode)
            self._unlink_locked(d, name, rmdir)

    def _unlink_locked(self, d: _Inode, name: str, rmdir: bool) -> None:
        if name == ".":
            _fail(errno.EINVAL if rmdir else errno.EISDIR)
        if name == "..":
            _fail(errno.ENOTEMPTY if rmdir else errno.EISDIR)
        _check_name(name)
        child = d.children.get(name)
        if child is None:
            _fail(errno.ENOENT, name)
        if rmdir:
            if not child.is_dir:
                _fail(errno.ENOTDIR, name)
            if child.children:
                _fail(errno.ENOTEMPTY, name)
        else:
            if child.is_dir:
                _fail(errno.EISDIR, name)
            if child.synthetic is not None:
                _fail(errno.EPERM, "synthetic files cannot be removed")
        self._detach(d, name, self._now())

    def remove(self, node: Node) -> None:
        with self._lock:
            n = self._node(node)
            self._ro()
            d, name = self._location(n)
            self._unlink_locked(d, name, n.inode.is_dir)

    def rename(self, olddir: Node, oldname: str, newdir: Node, newname: str) -> None:
        with self._lock:
            self._ro()
            od = self._dir(olddir)
            nd = self._dir(newdir, errno.EXDEV)
            self._rename_locked(od, oldname, nd, newname)

    def rename_node(self, node: Node, newdir: Node | None, newname: str) -> None:
        with self._lock:
            n = self._node(node)
            self._ro()
            od, oldname = self._location(n)
            nd = od if newdir is None else self._dir(newdir, errno.EXDEV)
            self._rename_locked(od, oldname, nd, newname)
            if not n.inode.is_dir:
                n.parent, n.name = nd, newname

    def _rename_locked(self, od: _Inode, oldname: str, nd: _Inode, newname: str) -> None:
        for name in (oldname, newname):
            if name in (".", ".."):
                _fail(errno.EBUSY, "cannot rename . or ..")
            _check_name(name)
        src = od.children.get(oldname)
        if src is None:
            _fail(errno.ENOENT, oldname)
        dst = nd.children.get(newname)
        # the ancestor checks of lock_rename(): source above target, target above source
        if od is not nd:
            trap = self._child_towards(od, nd)
            if trap is not None and trap is src:
                _fail(errno.EINVAL, "cannot move a directory into itself")
            trap = self._child_towards(nd, od)
            if trap is not None and trap is dst:
                _fail(errno.ENOTEMPTY, "target is an ancestor of the source")
        if src is dst:
            return  # the same file: POSIX says do nothing
        if src.synthetic is not None or (dst is not None and dst.synthetic is not None):
            _fail(errno.EPERM, "synthetic files cannot be renamed or replaced")
        if dst is not None:
            if src.is_dir and not dst.is_dir:
                _fail(errno.ENOTDIR, newname)
            if not src.is_dir and dst.is_dir:
                _fail(errno.EISDIR, newname)
            if dst.is_dir and dst.children:
                _fail(errno.ENOTEMPTY, newname)
        elif src.is_dir and od is not nd and nd.nlink >= LINK_MAX:
            _fail(errno.EMLINK)
        now = self._now()
        if dst is not None:
            self._detach(nd, newname, now)
        od.drop_entry(oldname)
        nd.add_entry(newname, src)
        if src.is_dir:
            src.parent, src.name = nd, newname
            if od is not nd:
                od.nlink -= 1
                nd.nlink += 1
        src.ctime = now
        for d in (od, nd):
            d.mtime = d.ctime = now
            d.bump()

    def _child_towards(self, top: _Inode, below: _Inode) -> _Inode | None:
        """The child of `top` on the way up from `below`, if `top` is above it."""
        cur = below
        while cur is not self._root:
            up = cur.parent
            if up is None:
                return None
            if up is top:
                return cur
            cur = up
        return None

    # ------------------------------------------------ extended attributes --
    @staticmethod
    def _xattr_name(name: str) -> None:
        raw = name.encode()
        if not raw or len(raw) > XATTR_NAME_MAX:
            _fail(errno.ERANGE, "bad xattr name length")
        for prefix in XATTR_PREFIXES:
            if name.startswith(prefix):
                if name == prefix:
                    _fail(errno.EINVAL, "xattr name has only a namespace")
                return
        _fail(errno.EOPNOTSUPP, f"xattr namespace of {name!r} is not supported")

    @staticmethod
    def _user_xattrs_allowed(ino: _Inode) -> bool:
        return ino.is_reg or ino.is_dir

    def xattr_list(self, node: Node) -> list[str]:
        with self._lock:
            return list(self._node(node).inode.xattrs)

    def xattr_get(self, node: Node, name: str) -> bytes:
        with self._lock:
            ino = self._node(node).inode
            self._xattr_name(name)
            value = ino.xattrs.get(name)
            if value is None:
                _fail(errno.ENODATA, name)
            return value

    def xattr_set(self, node: Node, name: str, value: bytes, flags: int) -> None:
        with self._lock:
            ino = self._node(node).inode
            if flags & ~(XATTR_CREATE | XATTR_REPLACE):
                _fail(errno.EINVAL, f"bad xattr flags {flags:#x}")
            self._xattr_name(name)
            if len(value) > XATTR_SIZE_MAX:
                _fail(errno.E2BIG)
            self._ro()
            self._xattr_writable(ino, name)
            old = ino.xattrs.get(name)
            if old is not None and flags & XATTR_CREATE:
                _fail(errno.EEXIST, name)
            if old is None and flags & XATTR_REPLACE:
                _fail(errno.ENODATA, name)
            used = sum(len(k.encode()) + len(v) for k, v in ino.xattrs.items())
            if old is not None:
                used -= len(name.encode()) + len(old)
            if used + len(name.encode()) + len(value) > XATTR_INODE_MAX:
                _fail(errno.ENOSPC, "no room for more xattrs on this file")
            ino.xattrs[name] = bytes(value)
            ino.ctime = self._now()

    def xattr_remove(self, node: Node, name: str) -> None:
        with self._lock:
            ino = self._node(node).inode
            self._xattr_name(name)
            self._ro()
            self._xattr_writable(ino, name)
            if name not in ino.xattrs:
                _fail(errno.ENODATA, name)
            del ino.xattrs[name]
            ino.ctime = self._now()

    def _xattr_writable(self, ino: _Inode, name: str) -> None:
        if ino.synthetic is not None:
            _fail(errno.EACCES, "synthetic files are read-only")
        if name.startswith("user.") and not self._user_xattrs_allowed(ino):
            _fail(errno.EPERM, "user xattrs only on regular files and directories")

    # --------------------------------------------------------- synthetic --
    def add_synthetic(self, path: str, read: Callable[[], bytes]) -> None:
        """Add a read-only file at `path` (missing directories are made, 0755)
        whose content `read()` produces at every open."""
        parts = [p for p in path.split("/") if p]
        if not parts or any(p in (".", "..") or "\0" in p for p in parts):
            raise ValueError(f"bad synthetic path {path!r}")
        with self._lock:
            now = self._now()
            d = self._root
            for p in parts[:-1]:
                _check_name(p)
                nxt = d.children.get(p)
                if nxt is None:
                    nxt = self._new_inode(d, p, stat.S_IFDIR | 0o755, (0, 0), now)
                elif not nxt.is_dir:
                    _fail(errno.ENOTDIR, p)
                d = nxt
            name = parts[-1]
            _check_name(name)
            if name in d.children:
                _fail(errno.EEXIST, path)
            ino = self._new_inode(d, name, stat.S_IFREG | 0o444, (0, 0), now)
            ino.synthetic = read
