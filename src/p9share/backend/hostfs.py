"""The host-filesystem backend: one host directory, exported safely.

This is the security boundary between a (possibly hostile) 9P client and the
host, so it is written the way virtiofsd is:

* Every file is reached through directory file descriptors with *at() calls
  and O_NOFOLLOW / AT_SYMLINK_NOFOLLOW. No path string under the export is
  ever built: a symlink planted by the client or swapped in by a host process
  between two steps can never redirect an operation outside the export. The
  only path opened by name is the export root, once, at construction.
* A node holds an O_PATH fd to its file. To do something an O_PATH fd cannot
  do (read, write, chmod, xattrs) the fd is reopened through the magic link
  /proc/self/fd/N, which resolves to exactly that inode, never by name. The
  file type is checked first (from the fstat of the O_PATH fd, which cannot
  change for an inode), so a symlink is never followed that way and a FIFO or
  device is never opened.
* Special files that already exist in the export (made by a host process:
  FIFOs, sockets, character and block devices) are never opened: Tlopen of a
  device answers EPERM, of a FIFO or socket ENXIO (what open(2) says for a
  socket), before any open(2) of the file happens, so nothing blocks on a
  FIFO without a writer and no host device driver is ever reached. A guest
  loses nothing: Linux's v9fs client opens special files through its own
  drivers and never sends Tlopen for them. Attributes, xattrs, rename and
  unlink of special files work as for any file (none of them opens it).
* Symlink targets are stored as given (Tsymlink) and read back as given
  (Treadlink), but never followed on the host: walk and open use
  O_NOFOLLOW, a walk through a symlink fails (it is not a directory) and
  Tlopen of one answers ELOOP.
* Mounts below the export root: with `cross_mounts=False` a walk that would
  land on another mount (its mount id, from statx STATX_MNT_ID, or its
  st_dev differs from the export root's) fails with EXDEV, the errno that
  names the reason. The mount id also catches bind mounts of directories or
  files from the export's own filesystem, which st_dev alone cannot tell
  apart. The guest still sees a mount point's name in listings (readdir
  reports the inode underneath) but cannot walk into it. The default (True)
  crosses mounts, as QEMU's and virtiofsd's defaults do.
* Files are shared by (st_dev, st_ino) with reference counts, so 10,000 fids
  on one file use one fd. Holding that fd pins the inode, so its number
  cannot be reused by another file while the entry is in the table.

Nodes and inodes. A `HostNode` is one reference handed to the server (by
root, walk, clone or create); it points to a shared `_Inode` (the fd) and
records the directory (an _Inode, with its own reference) and name it was
reached by. Keeping the name per reference rather than per inode makes Tremove
of a hard link remove the name the client walked, not some other link.

Threads. One lock guards the inode table, reference counts, handle names and
the qid tables. Syscalls run outside it. Every operation pins the inodes and
open files it uses for its duration, so a concurrent release/clunk can never
close an fd number mid-operation (a reused fd number would otherwise point an
operation at an unrelated file).

Host facts this module relies on (Linux only; /proc must be mounted):

* pwrite(2) on an O_APPEND fd appends and ignores the offset (a documented
  Linux bug; see BUGS in pwrite(2)); `write` keeps that behaviour, which is
  what a client that opened with O_APPEND expects.
* Byte-range locks are open-file-description (OFD) locks: classic POSIX locks
  belong to the process, so two clients of this one server process would
  never conflict. OFD locks conflict between OpenFiles and with host
  processes' fcntl/lockf locks.
* ctime cannot be set; `SetAttr.ctime` is a no-op because the host updates
  ctime itself on every change.
* readdir reports each entry's qid from d_ino and the directory's device
  (no stat per entry). For an entry that is a mount point that is the inode
  underneath the mount, so its qid differs from the one walk gives; QEMU's
  9p server has the same property.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import resource
import stat
import struct
import threading
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

from ..protocol.constants import (
    DT_DIR,
    DT_LNK,
    DT_REG,
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
    refuse_special_open,
)
from .base import (
    fail as _fail,
)

__all__ = ["HostBackend", "HostNode", "HostOpenFile"]

log = logging.getLogger("p9share.backend")

V9FS_MAGIC = 0x01021997

_O_PATH = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
_O_PATH_DIR = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
_O_READDIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
# Flags a client may not pass through to the reopen of a node: creation is
# create()'s business, O_NOFOLLOW would refuse the magic link itself (the
# type check already guarantees no symlink), O_PATH would defeat the open.
_OPEN_STRIP = os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_NOFOLLOW | os.O_PATH

AT_SYMLINK_NOFOLLOW = 0x100
AT_EMPTY_PATH = 0x1000
_UTIME_NOW = (1 << 30) - 1
_UTIME_OMIT = (1 << 30) - 2
_STATX_BTIME = 0x800
_STATX_MNT_ID = 0x1000
_INT64_MAX = (1 << 63) - 1
_IOV_MAX = os.sysconf("SC_IOV_MAX")  # buffers one preadv/pwritev takes (Linux: 1024)
_MAX_DEPTH = 4096  # '..' climbs give up after this many levels

# struct flock on 64-bit Linux (x86_64, aarch64, riscv64): l_type, l_whence, (pad), l_start, l_len, l_pid, (pad)
_FLOCK = struct.Struct("=hh4xqqi4x")
# struct linux_dirent64 header: d_ino, d_off, d_reclen, d_type; the name follows
_DIRENT = struct.Struct("=QqHB")

# qid.path = (device index << 48) | inode while both fit; otherwise a number
# from a table, in the range of the reserved device index 0xFFFF.
_INO_BITS = 48
_OVERFLOW_INDEX = 0xFFFF

_LOCK_TO_HOST = {
    LOCK_TYPE_RDLCK: fcntl.F_RDLCK,
    LOCK_TYPE_WRLCK: fcntl.F_WRLCK,
    LOCK_TYPE_UNLCK: fcntl.F_UNLCK,
}
_LOCK_FROM_HOST = {v: k for k, v in _LOCK_TO_HOST.items()}

# ------------------------------------------------------------------ libc ---
# The few calls the os module cannot make on an O_PATH fd or with an empty
# path. All are in glibc >= 2.30 (Debian 12 has 2.36); statx and getdents64
# degrade gracefully if missing.
_libc = ctypes.CDLL(None, use_errno=True)


def _cfunc(name: str, restype: Any, argtypes: list[Any]) -> Any:
    fn = getattr(_libc, name, None)
    if fn is not None:
        fn.restype = restype
        fn.argtypes = argtypes
    return fn


_Timespec2 = ctypes.c_long * 4  # struct timespec[2] on LP64
_c_statx = _cfunc(
    "statx",
    ctypes.c_int,
    [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p],
)
_c_getdents64 = _cfunc(
    "getdents64", ctypes.c_ssize_t, [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
)
_c_readlinkat = _cfunc(
    "readlinkat",
    ctypes.c_ssize_t,
    [ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t],
)
_c_fchownat = _cfunc(
    "fchownat",
    ctypes.c_int,
    [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint, ctypes.c_int],
)
_c_utimensat = _cfunc(
    "utimensat", ctypes.c_int, [ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int]
)


def _check_libc(ret: int) -> int:
    if ret < 0:
        _fail(ctypes.get_errno())
    return ret


# struct statx (linux/stat.h) up to stx_dev_minor: mask, blksize, attributes,
# nlink, uid, gid, mode, ino, size, blocks, attributes_mask, then atime, btime,
# ctime, mtime (sec, nsec each), rdev major/minor, dev major/minor
_STATX = struct.Struct("=IIQIIIH2xQQQQqI4xqI4xqI4xqI4xIIII")
_STATX_WANTED = 0x7FF | _STATX_BTIME  # STATX_BASIC_STATS | STATX_BTIME
_statx_buffers = threading.local()  # one result buffer per thread, reused


def _statx_all(fd: int) -> tuple[int, ...] | None:
    """statx of the file behind fd (O_PATH is fine), birth time included, in
    one host call: the fields of _STATX. None if the host has no statx."""
    buf = getattr(_statx_buffers, "buf", None)
    if buf is None:
        buf = _statx_buffers.buf = ctypes.create_string_buffer(256)  # sizeof(struct statx)
    if int(_c_statx(fd, b"", AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW, _STATX_WANTED, buf)) != 0:
        err = ctypes.get_errno()
        if err in (errno.ENOSYS, errno.EOPNOTSUPP):
            return None
        _fail(err)
    return _STATX.unpack_from(buf)


def _statx_btime(fd: int) -> int:
    """Birth time of the file behind fd in ns, 0 if the host cannot tell."""
    if _c_statx is None:
        return 0
    buf = ctypes.create_string_buffer(256)  # sizeof(struct statx)
    if int(_c_statx(fd, b"", AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW, _STATX_BTIME, buf)) != 0:
        return 0
    (mask,) = struct.unpack_from("=I", buf, 0)
    if not mask & _STATX_BTIME:
        return 0
    sec, nsec = struct.unpack_from("=qI", buf, 80)  # stx_btime
    return int(sec) * 1_000_000_000 + int(nsec)


def _mount_id(fd: int) -> int | None:
    """The id of the mount the file behind fd is on, None if the host
    cannot tell (statx without STATX_MNT_ID: Linux before 5.8)."""
    if _c_statx is None:
        return None
    buf = ctypes.create_string_buffer(256)  # sizeof(struct statx)
    if int(_c_statx(fd, b"", AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW, _STATX_MNT_ID, buf)) != 0:
        return None
    (mask,) = struct.unpack_from("=I", buf, 0)
    if not mask & _STATX_MNT_ID:
        return None
    (mnt_id,) = struct.unpack_from("=Q", buf, 144)  # stx_mnt_id
    return int(mnt_id)


def _timespec(t: TimeSpec) -> tuple[int, int]:
    if t is None:
        return 0, _UTIME_OMIT
    if t is NOW:
        return 0, _UTIME_NOW
    assert isinstance(t, int)
    return divmod(t, 1_000_000_000)


def _raise_nofile_limit() -> None:
    """Every live node holds an fd: allow as many as the hard limit permits."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = hard
        if target == resource.RLIM_INFINITY:
            # No fd limit can be that high: the kernel caps it at fs.nr_open.
            with open("/proc/sys/fs/nr_open") as f:
                target = int(f.read())
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError) as e:
        log.warning("could not raise RLIMIT_NOFILE: %s", e)


def _check_name(name: str, *, dots_ok: bool = False) -> None:
    """A single path component. The server checks names already; a name with
    a '/' would make an *at() call resolve several components (and follow
    symlinks in the middle), so this is checked again here."""
    if not name or "/" in name or "\0" in name:
        _fail(errno.EINVAL, f"bad name {name!r}")
    if not dots_ok and name in (".", ".."):
        _fail(errno.EINVAL, f"bad name {name!r}")
    try:
        name.encode("utf-8")  # no lone surrogates (os would turn them into raw bytes)
    except UnicodeEncodeError:
        _fail(errno.EINVAL, "name is not valid Unicode")


_QT_DIR, _QT_SYMLINK, _QT_FILE = int(QidType.DIR), int(QidType.SYMLINK), int(QidType.FILE)


def _qid_type(ifmt: int) -> int:
    # plain ints: IntFlag arithmetic costs microseconds on every qid
    if ifmt == stat.S_IFDIR:
        return _QT_DIR
    if ifmt == stat.S_IFLNK:
        return _QT_SYMLINK
    return _QT_FILE


def _qid_version(st: os.stat_result) -> int:
    """Changes when a regular file's content probably changed (32 bits)."""
    return _version(st.st_mode, st.st_mtime_ns, st.st_size)


def _version(mode: int, mtime_ns: int, size: int) -> int:
    if not stat.S_ISREG(mode):
        return 0
    v = mtime_ns ^ (mtime_ns >> 32) ^ (size * 0x9E3779B1) ^ (size >> 32)
    return v & 0xFFFFFFFF


# ----------------------------------------------------------------- nodes ---
class _Inode:
    """One host file, shared by every node that refers to it."""

    __slots__ = ("dev", "fd", "ftype", "handles", "ino", "qpath", "refs")

    def __init__(self, fd: int, st: os.stat_result, qpath: int) -> None:
        self.fd = fd  # O_PATH, never followed
        self.dev = st.st_dev
        self.ino = st.st_ino
        self.ftype = stat.S_IFMT(st.st_mode)  # cannot change for an inode
        self.qpath = qpath
        self.refs = 1
        self.handles: set[HostNode] = set()  # live HostNodes (for rename updates)

    @property
    def key(self) -> tuple[int, int]:
        return self.dev, self.ino


class HostNode(Node):
    """One reference to a host file, as handed to the server."""

    __slots__ = ("_backend", "inode", "name", "parent", "released")

    def __init__(
        self, backend: HostBackend, inode: _Inode, parent: _Inode | None, name: str
    ) -> None:
        self._backend = backend
        self.inode = inode
        # Directory and name this file was reached by. None for the root and
        # for nodes reached by '..' (their name is looked up when needed).
        self.parent = parent
        self.name = name
        self.released = False

    @property
    def qid(self) -> Qid:
        ino = self.inode
        version = 0
        if ino.ftype == stat.S_IFREG:
            try:
                with self._backend._pinned(self) as pinned:
                    version = _qid_version(os.stat(pinned.fd))
            except OSError:
                pass  # released node: the version is unknown
        return Qid(_qid_type(ino.ftype), version, ino.qpath)

    def __repr__(self) -> str:
        return f"<HostNode {self.name!r} ino={self.inode.ino} fd={self.inode.fd}>"


class _Pin:
    """Context manager of HostBackend._pinned: drops the inode reference taken
    for the block. A class, not @contextmanager: it is on every request's path."""

    __slots__ = ("backend", "ino")

    def __init__(self, backend: HostBackend, ino: _Inode) -> None:
        self.backend = backend
        self.ino = ino

    def __enter__(self) -> _Inode:
        return self.ino

    def __exit__(self, *exc: object) -> None:
        self.backend._unref(self.ino)


class _Using:
    """Context manager of HostBackend._using (a class for speed, like _Pin)."""

    __slots__ = ("backend", "file")

    def __init__(self, backend: HostBackend, file: HostOpenFile) -> None:
        self.backend = backend
        self.file = file

    def __enter__(self) -> HostOpenFile:
        return self.file

    def __exit__(self, *exc: object) -> None:
        self.backend._done_using(self.file)


class HostOpenFile(OpenFile):
    """An open host fd plus a reference to its node."""

    __slots__ = ("busy", "closed", "dir_lock", "dir_pos", "fd", "flags", "is_dir", "lock", "node")

    def __init__(self, fd: int, node: HostNode, flags: int, is_dir: bool) -> None:
        self.fd = fd
        self.node = node  # a reference of our own, released at close
        self.flags = flags
        self.is_dir = is_dir
        self.lock = threading.Lock()
        self.busy = 0  # operations in progress; the fd closes when they end
        self.closed = False
        # a directory's listing reads fd itself: its offset, under dir_lock
        self.dir_lock = threading.Lock() if is_dir else None
        self.dir_pos = 0  # fd's offset after the last batch

    @property
    def writable(self) -> bool:
        return self.flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR)


# --------------------------------------------------------------- backend ---
_QPATH_LOCK = threading.Lock()
_SHARED_DEV_INDEX: dict[int, int] = {}
_SHARED_BIG_QPATHS: dict[tuple[int, int], int] = {}


class HostBackend(Backend):
    """Exports the host directory `root_path` (read-only if `readonly`;
    confined to the root's filesystem unless `cross_mounts`)."""

    def __init__(
        self, root_path: str, *, readonly: bool = False, cross_mounts: bool = True
    ) -> None:
        _raise_nofile_limit()
        self.readonly = readonly
        self.cross_mounts = cross_mounts
        self._lock = threading.Lock()
        self._inodes: dict[tuple[int, int], _Inode] = {}
        # shared by every export of the process, so that qid paths stay unique
        # when one connection attaches exports on different devices
        self._dev_index = _SHARED_DEV_INDEX
        self._big_qpaths = _SHARED_BIG_QPATHS
        self._warned_dirs: set[tuple[int, int]] = set()
        self._files: set[HostOpenFile] = set()
        self._shut = False
        # /proc/self/fd as a directory fd, like virtiofsd's proc_self_fd:
        # reopening is then openat(proc_fd, "N"), independent of cwd or chroot.
        self._proc_fd = os.open("/proc/self/fd", _O_PATH_DIR)
        try:
            # The only path opened by name. Symlinks in the configured path
            # are the administrator's choice and are followed.
            fd = os.open(root_path, _O_PATH_DIR)
        except BaseException:
            os.close(self._proc_fd)
            raise
        st = os.fstat(fd)
        self._root_mount = _mount_id(fd)
        with self._lock:
            self._root = _Inode(fd, st, self._qpath_locked(st.st_dev, st.st_ino))
            self._inodes[self._root.key] = self._root  # our own reference, kept until shutdown

    # ------------------------------------------------------------ helpers --
    def _dev_index_locked(self, dev: int) -> int:
        """The small number of a host device, -1 once they run out."""
        with _QPATH_LOCK:
            return self._dev_index_shared(dev)

    def _dev_index_shared(self, dev: int) -> int:
        idx = self._dev_index.get(dev)
        if idx is None:
            idx = len(self._dev_index)
            if idx >= _OVERFLOW_INDEX:
                idx = -1  # out of device indices: every file gets a table entry
            self._dev_index[dev] = idx
        return idx

    def _qpath_locked(self, dev: int, ino: int) -> int:
        with _QPATH_LOCK:
            return self._qpath_shared(dev, ino)

    def _qpath_shared(self, dev: int, ino: int) -> int:
        idx = self._dev_index_shared(dev)
        if idx >= 0 and ino < 1 << _INO_BITS:
            return (idx << _INO_BITS) | ino
        p = self._big_qpaths.get((dev, ino))
        if p is None:
            p = (_OVERFLOW_INDEX << _INO_BITS) | len(self._big_qpaths)
            self._big_qpaths[(dev, ino)] = p
        return p

    def _qpath(self, dev: int, ino: int) -> int:
        with self._lock:
            return self._qpath_locked(dev, ino)

    def _qid_of(self, st: os.stat_result) -> Qid:
        ifmt = stat.S_IFMT(st.st_mode)
        return Qid(_qid_type(ifmt), _qid_version(st), self._qpath(st.st_dev, st.st_ino))

    def _check_writable(self) -> None:
        if self.readonly:
            _fail(errno.EROFS)

    def _handle(self, node: Node) -> HostNode:
        if not isinstance(node, HostNode) or node._backend is not self:
            _fail(errno.EBADF, "not a node of this backend")
        return node

    def _intern(self, fd: int, st: os.stat_result) -> _Inode:
        """The shared inode for a freshly opened O_PATH fd, with one new
        reference; fd is consumed (closed if the inode was already known)."""
        with self._lock:
            return self._intern_locked(fd, st)

    def _intern_locked(self, fd: int, st: os.stat_result) -> _Inode:
        if self._shut:
            os.close(fd)
            _fail(errno.EBADF, "backend is shut down")
        key = (st.st_dev, st.st_ino)
        ino = self._inodes.get(key)
        if ino is not None:
            ino.refs += 1
            os.close(fd)
            return ino
        ino = _Inode(fd, st, self._qpath_locked(*key))
        self._inodes[key] = ino
        return ino

    def _unref_locked(self, ino: _Inode) -> None:
        ino.refs -= 1
        if ino.refs == 0:
            if self._inodes.get(ino.key) is ino:
                del self._inodes[ino.key]
            if ino.fd >= 0:
                os.close(ino.fd)
                ino.fd = -1

    def _unref(self, ino: _Inode) -> None:
        with self._lock:
            self._unref_locked(ino)

    def _new_handle_locked(self, ino: _Inode, parent: _Inode | None, name: str) -> HostNode:
        """A HostNode owning the caller's reference to ino; takes a new
        reference to parent. Under the lock, so that parent (read from
        another node) cannot be released in between."""
        h = HostNode(self, ino, parent, name)
        if parent is not None:
            parent.refs += 1
        ino.handles.add(h)
        return h

    def _new_handle(self, ino: _Inode, parent: _Inode | None, name: str) -> HostNode:
        with self._lock:
            return self._new_handle_locked(ino, parent, name)

    def _share(self, h: HostNode) -> HostNode:
        """Another node with the same inode, directory and name as h."""
        with self._lock:
            if h.released or h.inode.fd < 0:
                _fail(errno.EBADF, "node was released")
            h.inode.refs += 1
            return self._new_handle_locked(h.inode, h.parent, h.name)

    def _pinned(self, node: Node) -> _Pin:
        """The node's inode, kept open for the duration of the with block
        (pinned when called: use it directly in the with statement)."""
        h = self._handle(node)
        with self._lock:
            if h.released or h.inode.fd < 0:
                _fail(errno.EBADF, "node was released")
            ino = h.inode
            ino.refs += 1
        return _Pin(self, ino)

    def _pinned_dir(self, node: Node) -> _Pin:
        pin = self._pinned(node)
        if pin.ino.ftype != stat.S_IFDIR:
            self._unref(pin.ino)
            _fail(errno.ENOTDIR)
        return pin

    @contextmanager
    def _named(self, node: Node) -> Iterator[tuple[_Inode, _Inode, str]]:
        """(inode, parent inode, name) of the node, all pinned, after checking
        that parent/name still refers to this very file (else ENOENT). The
        check narrows but cannot close the window to a host process that
        swaps names concurrently; no syscall unlinks by fd."""
        h = self._handle(node)
        with self._lock:
            if h.released or h.inode.fd < 0:
                _fail(errno.EBADF, "node was released")
            ino, parent, name = h.inode, h.parent, h.name
            ino.refs += 1
            if parent is not None:
                parent.refs += 1
        try:
            if ino is self._root:
                _fail(errno.EBUSY, "the export root has no name")
            if parent is None:
                parent, name = self._locate(ino)  # returns a new reference
            st = os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
            if (st.st_dev, st.st_ino) != ino.key:
                _fail(errno.ENOENT, f"{name!r} no longer refers to this file")
            yield ino, parent, name
        finally:
            with self._lock:
                self._unref_locked(ino)
                if parent is not None:
                    self._unref_locked(parent)

    def _locate(self, ino: _Inode) -> tuple[_Inode, str]:
        """Parent and name of a directory reached by '..': scan its parent
        for its inode number. Rare (clients resolve '..' themselves)."""
        if ino.ftype != stat.S_IFDIR:
            _fail(errno.ENOENT)
        pfd = os.open("..", _O_PATH_DIR, dir_fd=ino.fd)
        try:
            if not self._inside_export(pfd):
                _fail(errno.ENOENT, "directory is no longer inside the export")
            lfd = os.open(".", _O_READDIR, dir_fd=pfd)
            try:
                entries = _list_dir(lfd)
            finally:
                os.close(lfd)
            for raw, d_ino, _ in entries:
                if d_ino != ino.ino:
                    continue
                try:
                    name = raw.decode("utf-8")
                    st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
                except (UnicodeDecodeError, OSError):
                    continue
                if (st.st_dev, st.st_ino) == ino.key:
                    return self._intern(os.dup(pfd), os.fstat(pfd)), name
            _fail(errno.ENOENT, "directory has no name in its parent")
        finally:
            os.close(pfd)

    def _inside_export(self, dirfd: int) -> bool:
        """Whether directory dirfd is the export root or lies beneath it,
        found by climbing '..' (each step an openat, never a path)."""
        root = self._root.key
        cur = os.open(".", _O_PATH_DIR, dir_fd=dirfd)
        try:
            prev: tuple[int, int] | None = None
            for _ in range(_MAX_DEPTH):
                st = os.fstat(cur)
                key = (st.st_dev, st.st_ino)
                if key == root:
                    return True
                if key == prev:
                    return False  # reached the process's '/' without meeting the root
                prev = key
                nxt = os.open("..", _O_PATH_DIR, dir_fd=cur)
                os.close(cur)
                cur = nxt
            return False
        finally:
            os.close(cur)

    def _using(self, file: OpenFile) -> _Using:
        """The open file, kept open for the duration of the with block
        (taken when called: use it directly in the with statement)."""
        if not isinstance(file, HostOpenFile) or file.node._backend is not self:
            _fail(errno.EBADF, "not an open file of this backend")
        with file.lock:
            if file.closed:
                _fail(errno.EBADF, "file was closed")
            file.busy += 1
        return _Using(self, file)

    def _done_using(self, file: HostOpenFile) -> None:
        with file.lock:
            file.busy -= 1
            last = file.closed and file.busy == 0
        if last:
            self._finish_close(file)

    def _finish_close(self, f: HostOpenFile) -> None:
        with self._lock:
            self._files.discard(f)
        with f.lock:  # taken once: shutdown() may be closing the same file
            fd, f.fd = f.fd, -1
        if fd >= 0:
            os.close(fd)
        self.release(f.node)

    def _moved(
        self,
        olddir: _Inode,
        oldname: str,
        newdir: _Inode,
        newname: str,
        key: tuple[int, int],
        also: HostNode | None = None,
    ) -> None:
        """After a rename: nodes that knew the file as olddir/oldname now know
        it as newdir/newname (so a later remove or rename finds it)."""
        with self._lock:
            ino = self._inodes.get(key)
            if ino is None:
                return
            for h in ino.handles:
                if (h.parent is olddir and h.name == oldname) or h is also:
                    newdir.refs += 1
                    old = h.parent
                    h.parent, h.name = newdir, newname
                    if old is not None:
                        self._unref_locked(old)

    def _finish_new(self, dirfd: int, name: str, ftype: int, owner: Owner, mode: int | None) -> Qid:
        """Apply owner and exact mode to a file just made by name (mkdir,
        mknod, symlink) through an O_PATH fd, and return its qid. The mode is
        set explicitly so the server process's umask does not apply twice
        (the client applied its own), as QEMU's passthrough model does."""
        fd = os.open(name, _O_PATH, dir_fd=dirfd)
        try:
            st = os.fstat(fd)
            if stat.S_IFMT(st.st_mode) != ftype:
                _fail(errno.ENOENT, f"{name!r} was replaced while being created")
            try:
                if owner is not None:
                    _check_libc(
                        _c_fchownat(
                            fd, b"", owner[0], owner[1], AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW
                        )
                    )
                # chown may clear set-id bits, so the mode goes last.
                if mode is not None and (owner is not None or stat.S_IMODE(st.st_mode) != mode):
                    os.chmod(str(fd), mode, dir_fd=self._proc_fd)
            except OSError:
                self._undo_create(dirfd, name, st)
                raise
            return self._qid_of(st)
        finally:
            os.close(fd)

    @staticmethod
    def _undo_create(dirfd: int, name: str, st: os.stat_result) -> None:
        """Remove a file we just created whose setup failed, if the name still
        refers to it."""
        try:
            now = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
                if stat.S_ISDIR(st.st_mode):
                    os.rmdir(name, dir_fd=dirfd)
                else:
                    os.unlink(name, dir_fd=dirfd)
        except OSError:
            pass

    def _reopen(self, ino: _Inode, flags: int) -> int:
        """A real fd for a regular file or directory behind an O_PATH fd.
        The caller has checked the type."""
        if ino.ftype == stat.S_IFDIR:
            return os.open(".", _O_READDIR, dir_fd=ino.fd)
        assert ino.ftype == stat.S_IFREG
        return os.open(str(ino.fd), (flags & ~_OPEN_STRIP) | os.O_CLOEXEC, dir_fd=self._proc_fd)

    # --------------------------------------------------------------- nodes --
    def root(self) -> Node:
        with self._lock:
            if self._shut:
                _fail(errno.EBADF, "backend is shut down")
            self._root.refs += 1
        return self._new_handle(self._root, None, "")

    def walk(self, node: Node, name: str) -> Node:
        return self._step(self._handle(node), name)[0]

    def walk_names(self, node: Node, names: Sequence[str]) -> tuple[Node | None, list[Qid]]:
        # As the default, but each step's qid comes from the fstat that
        # checked it (no second stat) and the start node is not cloned.
        h = self._handle(node)
        if not names:
            return self._share(h), []
        qids: list[Qid] = []
        cur: HostNode | None = None  # the node reached so far: ours to release
        try:
            for name in names:
                nxt, qid = self._step(h if cur is None else cur, name)
                if cur is not None:
                    self.release(cur)
                cur = nxt
                qids.append(qid)
        except OSError:
            if cur is not None:
                self.release(cur)
            if not qids:
                raise
            return None, qids
        assert cur is not None
        return cur, qids

    def _step(self, h: HostNode, name: str) -> tuple[HostNode, Qid]:
        """One walk step from directory node h: a new node and its qid."""
        _check_name(name, dots_ok=True)
        with self._pinned_dir(h) as d:
            if name == "." or name == "..":
                n = self._share(h) if name == "." else self._walk_up(d)
                return n, n.qid
            fd = os.open(name, _O_PATH, dir_fd=d.fd)
            try:
                st = os.fstat(fd)
                self._check_mount(fd, st, name)
            except BaseException:
                os.close(fd)
                raise
            with self._lock:  # one lock section for the inode and its new handle
                ino = self._intern_locked(fd, st)
                node = self._new_handle_locked(ino, d, name)
            return node, Qid(_qid_type(ino.ftype), _qid_version(st), ino.qpath)

    def _check_mount(self, fd: int, st: os.stat_result, name: str) -> None:
        """Refuse a file on another mount than the export root's when mounts
        are not to be crossed (fd: its O_PATH fd, st: its fstat)."""
        if self.cross_mounts:
            return
        if st.st_dev != self._root.dev or _mount_id(fd) != self._root_mount:
            _fail(errno.EXDEV, f"{name!r} is on another mount than the export root")

    def _walk_up(self, d: _Inode) -> HostNode:
        if d is self._root or d.key == self._root.key:
            with self._lock:
                self._root.refs += 1
            return self._new_handle(self._root, None, "")
        fd = os.open("..", _O_PATH_DIR, dir_fd=d.fd)
        try:
            # The parent of a directory that a host process moved out of the
            # export is outside it: refuse rather than escape.
            if not self._inside_export(fd):
                _fail(errno.ENOENT, "directory is no longer inside the export")
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        # No name: remove / rename_node look it up on demand (_locate).
        return self._new_handle(self._intern(fd, st), None, "")

    def clone(self, node: Node) -> Node:
        return self._share(self._handle(node))

    def release(self, node: Node) -> None:
        h = self._handle(node)
        with self._lock:
            if h.released:
                return
            h.released = True
            h.inode.handles.discard(h)
            if h.parent is not None:
                self._unref_locked(h.parent)
                h.parent = None
            self._unref_locked(h.inode)

    # ---------------------------------------------------------- attributes --
    def getattr(self, node: Node) -> Attr:
        with self._pinned(node) as ino:
            sx = _statx_all(ino.fd) if _c_statx is not None else None
            if sx is None:
                return self._getattr_fstat(ino)
        (mask, blksize, _, nlink, uid, gid, mode, _, size, blocks, _,
         a_s, a_ns, b_s, b_ns, c_s, c_ns, m_s, m_ns, r_major, r_minor, _, _) = sx  # fmt: skip
        mtime = m_s * 1_000_000_000 + m_ns
        return Attr(
            Qid(_qid_type(ino.ftype), _version(mode, mtime, size), ino.qpath),
            mode, uid, gid, nlink, os.makedev(r_major, r_minor), size, blksize,
            blocks,  # already 512-byte units on Linux
            a_s * 1_000_000_000 + a_ns, mtime, c_s * 1_000_000_000 + c_ns,
            b_s * 1_000_000_000 + b_ns if mask & _STATX_BTIME else 0,
        )  # fmt: skip

    def _getattr_fstat(self, ino: _Inode) -> Attr:
        """getattr without statx (old kernels, some seccomp sandboxes)."""
        st = os.stat(ino.fd)  # fstat works on O_PATH fds
        btime = _statx_btime(ino.fd)
        return Attr(
            qid=Qid(_qid_type(ino.ftype), _qid_version(st), ino.qpath),
            mode=st.st_mode,
            uid=st.st_uid,
            gid=st.st_gid,
            nlink=st.st_nlink,
            rdev=st.st_rdev,
            size=st.st_size,
            blksize=st.st_blksize,
            blocks=st.st_blocks,  # already 512-byte units on Linux
            atime_ns=st.st_atime_ns,
            mtime_ns=st.st_mtime_ns,
            ctime_ns=st.st_ctime_ns,
            btime_ns=btime,
        )

    def setattr(self, node: Node, changes: SetAttr, file: OpenFile | None = None) -> None:
        self._check_writable()
        with self._pinned(node) as ino:
            if file is None:
                self._setattr(ino, changes, None)
                return
            with self._using(file) as f:
                # not this file's: use the node's own fd
                self._setattr(ino, changes, f if f.node.inode is ino else None)

    def _setattr(self, ino: _Inode, changes: SetAttr, f: HostOpenFile | None) -> None:
        """setattr on a pinned inode (f: its open file, if the caller has one)."""
        # Every call goes through the node's fd (O_PATH + AT_EMPTY_PATH or
        # the /proc magic link), so it works on unlinked and renamed files.
        if changes.uid is not None or changes.gid is not None:
            uid = -1 if changes.uid is None else changes.uid
            gid = -1 if changes.gid is None else changes.gid
            _check_libc(
                _c_fchownat(
                    ino.fd,
                    b"",
                    uid & 0xFFFFFFFF,
                    gid & 0xFFFFFFFF,
                    AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW,
                )
            )
        if changes.mode is not None:
            if ino.ftype == stat.S_IFLNK:
                _fail(errno.EOPNOTSUPP, "symlinks have no mode of their own")
            # chmod through the magic link: resolves to this inode and
            # does not open it (safe for FIFOs and devices).
            os.chmod(str(ino.fd), changes.mode & 0o7777, dir_fd=self._proc_fd)
        if changes.size is not None:
            self._truncate(ino, changes.size, f)
        if changes.atime is not None or changes.mtime is not None:
            self._utimens(ino, changes.atime, changes.mtime)
        # changes.ctime: nothing to do; every change above touched ctime.

    def _truncate(self, ino: _Inode, size: int, f: HostOpenFile | None) -> None:
        if ino.ftype == stat.S_IFDIR:
            _fail(errno.EISDIR)
        if ino.ftype != stat.S_IFREG:
            _fail(errno.EINVAL, "only regular files have a size to set")
        if not 0 <= size <= _INT64_MAX:
            _fail(errno.EINVAL)
        if f is not None and f.writable:
            os.ftruncate(f.fd, size)
            return
        fd = os.open(str(ino.fd), os.O_WRONLY | os.O_CLOEXEC, dir_fd=self._proc_fd)
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)

    def _utimens(self, ino: _Inode, atime: TimeSpec, mtime: TimeSpec) -> None:
        # utimensat rather than os.utime: it has UTIME_OMIT (set one time
        # only, atomically) and UTIME_NOW (the host's clock).
        for t in (atime, mtime):
            if isinstance(t, int) and not -_INT64_MAX <= t <= _INT64_MAX:
                _fail(errno.EINVAL)
        a, m = _timespec(atime), _timespec(mtime)
        ts = _Timespec2(a[0], a[1], m[0], m[1])
        if ino.ftype == stat.S_IFLNK:
            # The symlink itself; the magic link would lead to it too, but
            # AT_EMPTY_PATH on the O_PATH fd is the direct way.
            ret = _c_utimensat(ino.fd, b"", ts, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW)
        else:
            ret = _c_utimensat(self._proc_fd, str(ino.fd).encode(), ts, 0)
        _check_libc(int(ret))

    def statfs(self, node: Node) -> StatFs:
        # The node's own filesystem (fstatfs works on O_PATH fds), so a mount
        # inside the export reports its own numbers.
        with self._pinned(node) as ino:
            sv = os.fstatvfs(ino.fd)
        # Linux counts f_blocks in f_frsize units; report that as bsize so
        # blocks * bsize is the real size.
        return StatFs(
            type=V9FS_MAGIC,
            bsize=sv.f_frsize or sv.f_bsize,
            blocks=sv.f_blocks,
            bfree=sv.f_bfree,
            bavail=sv.f_bavail,
            files=sv.f_files,
            ffree=sv.f_ffree,
            fsid=sv.f_fsid & 0xFFFFFFFFFFFFFFFF,
            namelen=sv.f_namemax,
        )

    def readlink(self, node: Node) -> str:
        with self._pinned(node) as ino:
            if ino.ftype != stat.S_IFLNK:
                _fail(errno.EINVAL, "not a symlink")
            size = 4096
            while True:
                buf = ctypes.create_string_buffer(size)
                # readlinkat(fd, "") reads the link an O_PATH fd refers to.
                n = _check_libc(int(_c_readlinkat(ino.fd, b"", buf, size)))
                if n < size:
                    break
                size *= 2
        try:
            return buf.raw[:n].decode("utf-8")
        except UnicodeDecodeError:
            pass
        _fail(errno.EILSEQ, "symlink target is not UTF-8")  # cannot go on the wire

    # ---------------------------------------------------------- open files --
    def open(self, node: Node, flags: int) -> OpenFile:
        h = self._handle(node)
        with self._pinned(node) as ino:
            t = ino.ftype
            refuse_special_open(t)
            if t not in (stat.S_IFREG, stat.S_IFDIR):
                _fail(errno.EPERM)
            acc = flags & os.O_ACCMODE
            wants_write = acc != os.O_RDONLY or bool(flags & os.O_TRUNC)
            if wants_write and self.readonly:
                _fail(errno.EROFS)
            if t == stat.S_IFDIR:
                if wants_write:
                    _fail(errno.EISDIR)
                flags = os.O_RDONLY | os.O_DIRECTORY
            elif flags & os.O_DIRECTORY:
                _fail(errno.ENOTDIR)
            fd = self._reopen(ino, flags)
        try:
            ref = self._share(h)
        except BaseException:
            os.close(fd)
            raise
        of = HostOpenFile(fd, ref, flags & ~_OPEN_STRIP, t == stat.S_IFDIR)
        with self._lock:
            self._files.add(of)
        return of

    def create(
        self, dirnode: Node, name: str, flags: int, mode: int, owner: Owner
    ) -> tuple[Node, OpenFile]:
        self._check_writable()
        _check_name(name)
        mode &= 0o7777
        with self._pinned_dir(dirnode) as d:
            # Always create with O_EXCL: opening an existing name here would
            # open whatever is there (a FIFO would block, a device would be
            # reached). An existing file goes through walk + open instead,
            # which checks its type first.
            fd = -1
            for _ in range(8):
                try:
                    fd = os.open(
                        name,
                        (flags & ~_OPEN_STRIP)
                        | os.O_CREAT
                        | os.O_EXCL
                        | os.O_NOFOLLOW
                        | os.O_CLOEXEC,
                        mode,
                        dir_fd=d.fd,
                    )
                    break
                except FileExistsError:
                    if flags & os.O_EXCL:
                        raise
                existing = self._open_existing(dirnode, name, flags)
                if existing is not None:
                    return existing
                # It vanished between the two steps: try to create it again.
            if fd < 0:
                _fail(errno.EAGAIN, f"{name!r} keeps appearing and disappearing")
            try:
                st = os.fstat(fd)
                try:
                    # skipped when already so (two host calls per create):
                    # the end state is the same, mode exact whatever our umask
                    chown = owner is not None and owner != (st.st_uid, st.st_gid)
                    if chown:
                        assert owner is not None
                        os.fchown(fd, owner[0], owner[1])
                    if chown or stat.S_IMODE(st.st_mode) != mode:
                        os.fchmod(fd, mode)  # after fchown, which may clear set-id bits
                except OSError:
                    self._undo_create(d.fd, name, st)
                    raise
                # The node's O_PATH fd comes from the new fd itself, not from
                # the name, which a concurrent rename could already have reused.
                opath = os.open(str(fd), os.O_PATH | os.O_CLOEXEC, dir_fd=self._proc_fd)
            except BaseException:
                os.close(fd)
                raise
            node = self._new_handle(self._intern(opath, st), d, name)
        of = HostOpenFile(fd, self._share(node), flags & ~_OPEN_STRIP, False)
        with self._lock:
            self._files.add(of)
        return node, of

    def _open_existing(self, dirnode: Node, name: str, flags: int) -> tuple[Node, OpenFile] | None:
        """create() of a name that exists, without O_EXCL: open what is there
        like open() would (type checked first). None if it is gone again."""
        try:
            node = self.walk(dirnode, name)
        except FileNotFoundError:
            return None
        try:
            if self._handle(node).inode.ftype == stat.S_IFDIR:
                _fail(errno.EISDIR)  # what open(O_CREAT) says for a directory
            return node, self.open(node, flags & ~(os.O_CREAT | os.O_EXCL))
        except BaseException:
            self.release(node)
            raise

    def read(self, file: OpenFile, offset: int, count: int) -> bytes:
        if not 0 <= offset <= _INT64_MAX or count < 0:
            _fail(errno.EINVAL)
        with self._using(file) as f:
            return os.pread(f.fd, count, offset)

    def write(self, file: OpenFile, offset: int, data: bytes | memoryview) -> int:
        self._check_writable()
        if not 0 <= offset <= _INT64_MAX:
            _fail(errno.EINVAL)
        with self._using(file) as f:
            # On an O_APPEND fd Linux's pwrite appends, ignoring offset.
            return os.pwrite(f.fd, data, offset)

    def read_into(self, file: OpenFile, offset: int, views: Sequence[memoryview]) -> int:
        if not 0 <= offset <= _INT64_MAX:
            _fail(errno.EINVAL)
        with self._using(file) as f:
            if len(views) <= _IOV_MAX:
                return os.preadv(f.fd, views, offset)
            total = 0  # more buffers than one call takes: in turns, until one falls short
            for i in range(0, len(views), _IOV_MAX):
                part = views[i : i + _IOV_MAX]
                n = os.preadv(f.fd, part, offset + total)
                total += n
                if n < sum(len(v) for v in part):
                    break
            return total

    def write_from(self, file: OpenFile, offset: int, views: Sequence[memoryview]) -> int:
        self._check_writable()
        if not 0 <= offset <= _INT64_MAX:
            _fail(errno.EINVAL)
        with self._using(file) as f:
            # On an O_APPEND fd Linux's pwritev appends, ignoring offset.
            if len(views) <= _IOV_MAX:
                return os.pwritev(f.fd, views, offset)
            total = 0
            for i in range(0, len(views), _IOV_MAX):
                part = views[i : i + _IOV_MAX]
                n = os.pwritev(f.fd, part, offset + total)
                total += n
                if n < sum(len(v) for v in part):
                    break
            return total

    def readdir(self, file: OpenFile, cookie: int) -> Iterator[DirEntry]:
        # Streamed from the directory in batches of one getdents64 call: a
        # listing holds no memory between requests. Cookies are the kernel's
        # own d_off values (what telldir gives), which lseek takes back on the
        # same directory, so a listing resumes where it stopped even in a
        # fresh open file, and entries added or removed meanwhile behave as
        # for a local readdir. A d_off is signed; the wire carries it as u64.
        with self._using(file) as f:
            if not f.is_dir:
                _fail(errno.ENOTDIR)
        if not 0 <= cookie < 1 << 64:
            return iter(())
        return self._readdir_from(f, cookie)

    def _readdir_from(self, f: HostOpenFile, cookie: int) -> Iterator[DirEntry]:
        """'.' and '..' first (cookies _AFTER_DOT and _AFTER_DOTS), then the
        directory's own entries a batch at a time, no lock held across a
        yield."""
        if cookie in (0, _AFTER_DOT):
            if cookie == 0:
                yield DirEntry(
                    Qid(int(QidType.DIR), 0, f.node.inode.qpath), _AFTER_DOT, DT_DIR, "."
                )
            yield DirEntry(self._parent_qid(f), _AFTER_DOTS, DT_DIR, "..")
        pos = 0 if cookie in (0, _AFTER_DOT, _AFTER_DOTS) else cookie
        while pos >= 0:
            batch, pos = self._dir_batch(f, pos)
            yield from batch

    def _dir_batch(self, f: HostOpenFile, pos: int) -> tuple[list[DirEntry], int]:
        """The entries of one getdents64 call from position pos, and the
        position after them (-1 at the end of the directory)."""
        with self._using(f):
            assert f.dir_lock is not None
            with f.dir_lock:
                if f.dir_pos != pos:  # a sequential listing needs no seek
                    f.dir_pos = -1  # unknown until the seek and the read succeed
                    os.lseek(f.fd, pos - (1 << 64) if pos > _INT64_MAX else pos, os.SEEK_SET)
                    raw = _read_dir(f.fd, pos)
                else:
                    f.dir_pos = -1
                    raw = _read_dir(f.fd, pos)
                end = raw[-1][2] if raw else -1
                f.dir_pos = end
            entries = self._dir_entries(f, raw)
        return entries, end

    def _dir_entries(
        self, f: HostOpenFile, raw: list[tuple[bytes, int, int, int]]
    ) -> list[DirEntry]:
        ino = f.node.inode
        with self._lock:
            idx = self._dev_index_locked(ino.dev)
        out: list[DirEntry] = []
        skipped = 0
        for bname, d_ino, d_off, dtype in raw:
            if bname in (b".", b".."):
                continue  # given first, by _readdir_from
            try:
                name = bname.decode("utf-8")
            except UnicodeDecodeError:
                skipped += 1  # cannot go on the wire
                continue
            if idx >= 0 and d_ino < 1 << _INO_BITS:
                qpath = (idx << _INO_BITS) | d_ino
            else:
                qpath = self._qpath(ino.dev, d_ino)
            qtype = _QT_DIR if dtype == DT_DIR else _QT_SYMLINK if dtype == DT_LNK else _QT_FILE
            out.append(DirEntry(Qid(qtype, 0, qpath), d_off, dtype, name))
        if skipped:
            with self._lock:
                first = ino.key not in self._warned_dirs
                self._warned_dirs.add(ino.key)
            if first:
                log.warning(
                    "skipping %d name(s) that are not valid UTF-8 in directory (dev %d, inode %d)",
                    skipped,
                    ino.dev,
                    ino.ino,
                )
        return out

    def _parent_qid(self, f: HostOpenFile) -> Qid:
        """'..' of a listing: the export root is its own parent."""
        ino = f.node.inode
        if ino.key == self._root.key:
            return Qid(int(QidType.DIR), 0, self._root.qpath)
        try:
            return self._qid_of(os.stat("..", dir_fd=f.fd, follow_symlinks=False))
        except OSError:
            return Qid(int(QidType.DIR), 0, ino.qpath)  # a removed directory has no parent

    def fsync(self, file: OpenFile, datasync: bool) -> None:
        with self._using(file) as f:
            if datasync:
                os.fdatasync(f.fd)
            else:
                os.fsync(f.fd)

    def close(self, file: OpenFile) -> None:
        if not isinstance(file, HostOpenFile) or file.node._backend is not self:
            _fail(errno.EBADF, "not an open file of this backend")
        with file.lock:
            if file.closed:
                return
            file.closed = True
            now = file.busy == 0
        if now:
            self._finish_close(file)

    # ---------------------------------------------------------------- locks --
    @staticmethod
    def _flock(req: LockRequest) -> bytes:
        kind = _LOCK_TO_HOST.get(req.type)
        if kind is None or not 0 <= req.start <= _INT64_MAX or not 0 <= req.length <= _INT64_MAX:
            _fail(errno.EINVAL, "bad lock request")
        # l_pid must be 0 for OFD locks.
        return _FLOCK.pack(kind, os.SEEK_SET, req.start, req.length, 0)

    def lock(self, file: OpenFile, req: LockRequest) -> int:
        arg = self._flock(req)
        with self._using(file) as f:
            try:
                fcntl.fcntl(f.fd, fcntl.F_OFD_SETLK, arg)
            except OSError as e:
                if e.errno in (errno.EAGAIN, errno.EACCES):
                    return LOCK_BLOCKED
                raise
        return LOCK_SUCCESS

    def getlock(self, file: OpenFile, req: LockRequest) -> LockRequest:
        arg = self._flock(req)
        with self._using(file) as f:
            res = fcntl.fcntl(f.fd, fcntl.F_OFD_GETLK, arg)
        kind, _whence, start, length, pid = _FLOCK.unpack(res)
        if kind == fcntl.F_UNLCK:
            return LockRequest(LOCK_TYPE_UNLCK, req.start, req.length, req.proc_id, req.client_id)
        # OFD lock holders report l_pid -1: there is no process to name.
        return LockRequest(_LOCK_FROM_HOST[kind], start, length, max(pid, 0), "")

    # ---------------------------------------------------- directory changes --
    def mkdir(self, dirnode: Node, name: str, mode: int, owner: Owner) -> Qid:
        self._check_writable()
        _check_name(name)
        with self._pinned_dir(dirnode) as d:
            os.mkdir(name, mode & 0o7777, dir_fd=d.fd)
            return self._finish_new(d.fd, name, stat.S_IFDIR, owner, mode & 0o7777)

    def symlink(self, dirnode: Node, name: str, target: str, owner: Owner) -> Qid:
        self._check_writable()
        _check_name(name)
        if "\0" in target:
            _fail(errno.EINVAL, "NUL in symlink target")
        with self._pinned_dir(dirnode) as d:
            # Stored as given: the target is text, never resolved here.
            os.symlink(target, name, dir_fd=d.fd)
            return self._finish_new(d.fd, name, stat.S_IFLNK, owner, None)

    def mknod(self, dirnode: Node, name: str, mode: int, rdev: int, owner: Owner) -> Qid:
        self._check_writable()
        _check_name(name)
        ftype = stat.S_IFMT(mode) or stat.S_IFREG
        # never a real device node on the host: a guest-made one would be a
        # hole (the policy grants devices only on mapped exports, as files)
        if ftype in (stat.S_IFCHR, stat.S_IFBLK):
            _fail(errno.EPERM, "device nodes are not created")
        if ftype not in (stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFREG):
            _fail(errno.EINVAL, "mknod makes FIFOs, sockets and regular files")
        with self._pinned_dir(dirnode) as d:
            os.mknod(name, ftype | (mode & 0o7777), 0, dir_fd=d.fd)
            return self._finish_new(d.fd, name, ftype, owner, mode & 0o7777)

    def link(self, dirnode: Node, target: Node, name: str) -> None:
        self._check_writable()
        _check_name(name)
        with self._pinned_dir(dirnode) as d, self._pinned(target) as t:
            if t.ftype == stat.S_IFDIR:
                _fail(errno.EPERM, "directories cannot be hard-linked")
            # linkat(AT_FDCWD, "/proc/self/fd/N", dirfd, name, AT_SYMLINK_FOLLOW)
            # links the inode the magic link stands for (a symlink itself if
            # the node is one) without CAP_DAC_READ_SEARCH; virtiofsd does it.
            os.link(
                str(t.fd), name, src_dir_fd=self._proc_fd, dst_dir_fd=d.fd, follow_symlinks=True
            )

    def rename(self, olddir: Node, oldname: str, newdir: Node, newname: str) -> None:
        self._check_writable()
        _check_name(oldname)
        _check_name(newname)
        with self._pinned_dir(olddir) as od, self._pinned_dir(newdir) as nd:
            os.rename(oldname, newname, src_dir_fd=od.fd, dst_dir_fd=nd.fd)
            try:
                st = os.stat(newname, dir_fd=nd.fd, follow_symlinks=False)
            except OSError:
                return  # already gone again; nothing to track
            self._moved(od, oldname, nd, newname, (st.st_dev, st.st_ino))

    def unlink(self, dirnode: Node, name: str, rmdir: bool) -> None:
        self._check_writable()
        _check_name(name)
        with self._pinned_dir(dirnode) as d:
            if rmdir:
                os.rmdir(name, dir_fd=d.fd)
            else:
                os.unlink(name, dir_fd=d.fd)

    def remove(self, node: Node) -> None:
        self._check_writable()
        with self._named(node) as (ino, parent, name):
            if ino.ftype == stat.S_IFDIR:
                os.rmdir(name, dir_fd=parent.fd)
            else:
                os.unlink(name, dir_fd=parent.fd)

    def rename_node(self, node: Node, newdir: Node | None, newname: str) -> None:
        self._check_writable()
        _check_name(newname)
        h = self._handle(node)
        with ExitStack() as stack:
            ino, parent, name = stack.enter_context(self._named(node))
            target = parent if newdir is None else stack.enter_context(self._pinned_dir(newdir))
            os.rename(name, newname, src_dir_fd=parent.fd, dst_dir_fd=target.fd)
            self._moved(parent, name, target, newname, ino.key, also=h)

    # ------------------------------------------------- extended attributes --
    @contextmanager
    def _xattr_path(self, node: Node, name: str | None = None) -> Iterator[tuple[str, bool]]:
        """A path for the os.*xattr functions, which cannot use O_PATH fds,
        and whether to follow its last component."""
        if name is not None and (not name or "\0" in name):
            _fail(errno.EINVAL, "bad xattr name")
        with self._pinned(node) as ino:
            if ino.ftype != stat.S_IFLNK:
                # The magic link, followed: lands on this inode, wherever it is.
                yield f"/proc/self/fd/{ino.fd}", True
                return
        # A symlink: name it in its (magic-linked) parent and do not follow.
        # Only that one checked component is resolved by name.
        with self._named(node) as (_ino, parent, name):
            yield f"/proc/self/fd/{parent.fd}/{name}", False

    def xattr_list(self, node: Node) -> list[str]:
        with self._xattr_path(node) as (path, follow):
            names = os.listxattr(path, follow_symlinks=follow)
        out = []
        for n in names:
            try:
                n.encode("utf-8")
            except UnicodeEncodeError:
                continue  # not valid UTF-8 on the host: cannot go on the wire
            out.append(n)
        return out

    def xattr_get(self, node: Node, name: str) -> bytes:
        with self._xattr_path(node, name) as (path, follow):
            return os.getxattr(path, name, follow_symlinks=follow)

    def xattr_set(self, node: Node, name: str, value: bytes, flags: int) -> None:
        self._check_writable()
        if flags & ~(XATTR_CREATE | XATTR_REPLACE):
            _fail(errno.EINVAL, "unknown xattr flags")
        host = (os.XATTR_CREATE if flags & XATTR_CREATE else 0) | (
            os.XATTR_REPLACE if flags & XATTR_REPLACE else 0
        )
        with self._xattr_path(node, name) as (path, follow):
            os.setxattr(path, name, value, host, follow_symlinks=follow)

    def xattr_remove(self, node: Node, name: str) -> None:
        self._check_writable()
        with self._xattr_path(node, name) as (path, follow):
            os.removexattr(path, name, follow_symlinks=follow)

    # ----------------------------------------------------------- accounting --
    def usage(self) -> tuple[int, int]:
        """Walk the export from its root fd (never following a symlink, never
        leaving the root's filesystem) and count bytes and files."""
        seen: set[tuple[int, int]] = set()
        size = files = 0
        root_dev = os.fstat(self._root.fd).st_dev
        for _top, dirs, names, dfd in os.fwalk(".", dir_fd=self._root.fd, follow_symlinks=False):
            keep = []
            for name in (*dirs, *names):
                try:
                    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                except OSError:
                    continue
                if name in dirs and st.st_dev == root_dev:
                    keep.append(name)
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
                files += 1
                if stat.S_ISREG(st.st_mode):
                    size += st.st_size
            dirs[:] = [d for d in dirs if d in keep]
        return size, files

    # ------------------------------------------------------------ lifecycle --
    def shutdown(self) -> None:
        """Close every fd the backend holds. Nodes and files still in the
        server's hands fail with EBADF afterwards."""
        with self._lock:
            if self._shut:
                return
            self._shut = True
            files = list(self._files)
            self._files.clear()
        for f in files:
            with f.lock:
                f.closed = True
                fd, f.fd = f.fd, -1
            if fd >= 0:
                os.close(fd)
        with self._lock:
            for ino in self._inodes.values():
                if ino.fd >= 0:
                    os.close(ino.fd)
                    ino.fd = -1
            self._inodes.clear()
            if self._proc_fd >= 0:
                os.close(self._proc_fd)
                self._proc_fd = -1


def _list_dir(fd: int) -> list[tuple[bytes, int, int]]:
    """(name, d_ino, d_type) of every entry but '.' and '..' of the directory
    open at fd (which is consumed as far as its offset goes). getdents64
    gives d_type for every file type without a stat per entry."""
    out: list[tuple[bytes, int, int]] = []
    if _c_getdents64 is None:
        return _list_dir_scandir(fd)
    buf = ctypes.create_string_buffer(1 << 16)
    while True:
        n = int(_c_getdents64(fd, buf, len(buf)))
        if n < 0 and ctypes.get_errno() == errno.ENOENT:
            return out  # the directory was removed: it is empty
        n = _check_libc(n)
        if n == 0:
            return out
        data = ctypes.string_at(buf, n)
        off = 0
        while off < n:
            d_ino, _d_off, reclen, dtype = _DIRENT.unpack_from(data, off)
            start = off + _DIRENT.size
            name = data[start : data.index(b"\0", start)]
            off += reclen
            if name not in (b".", b".."):
                out.append((name, d_ino, dtype))


_DIR_BATCH = 32 * 1024  # getdents64 buffer of one readdir batch (about 500 entries)
# readdir cookies after '.' and after '..', which p9share lists first (the
# kernel's order puts them anywhere on hashed directories). 1 and 2 are what
# tmpfs and btrfs give their own '.' and '..' (skipped), and no hashed or
# byte-offset file system gives a real entry; any cookie must stay below
# 2**63, as FUSE and Linux's v9fs take offsets as signed.
_AFTER_DOT = 1
_AFTER_DOTS = 2


def _read_dir(fd: int, pos: int) -> list[tuple[bytes, int, int, int]]:
    """(name, d_ino, d_off, d_type) of the entries one getdents64 call gives
    from fd's offset ('.' and '..' included); [] at the end. Without
    getdents64 (no d_off), positions are ordinals of a scandir pass."""
    if _c_getdents64 is None:
        return _read_dir_scandir(fd, pos)
    buf = ctypes.create_string_buffer(_DIR_BATCH)
    n = int(_c_getdents64(fd, buf, len(buf)))
    if n < 0 and ctypes.get_errno() == errno.ENOENT:
        return []  # the directory was removed: it is empty
    n = _check_libc(n)
    data = ctypes.string_at(buf, n)
    out: list[tuple[bytes, int, int, int]] = []
    off = 0
    while off < n:
        d_ino, d_off, reclen, dtype = _DIRENT.unpack_from(data, off)
        start = off + _DIRENT.size
        name = data[start : data.index(b"\0", start)]
        out.append((name, d_ino, d_off & 0xFFFF_FFFF_FFFF_FFFF, dtype))
        off += reclen
    return out


def _read_dir_scandir(fd: int, pos: int) -> list[tuple[bytes, int, int, int]]:
    """The fallback's batch: entries pos+1.. of a fresh scandir pass."""
    out: list[tuple[bytes, int, int, int]] = []
    for i, (name, d_ino, dtype) in enumerate(_list_dir_scandir(fd), start=1):
        if i > pos and len(out) < 512:
            out.append((name, d_ino, i, dtype))
    return out


def _list_dir_scandir(fd: int) -> list[tuple[bytes, int, int]]:
    """Fallback for a libc without getdents64: types beyond dir, symlink and
    regular file come back as DT_UNKNOWN (clients stat those)."""
    out: list[tuple[bytes, int, int]] = []
    with os.scandir(fd) as it:  # scandir dups fd itself
        for e in it:
            if e.is_dir(follow_symlinks=False):
                dt = DT_DIR
            elif e.is_symlink():
                dt = DT_LNK
            elif e.is_file(follow_symlinks=False):
                dt = DT_REG
            else:
                dt = DT_UNKNOWN
            out.append((os.fsencode(e.name), e.inode(), dt))
    return out
