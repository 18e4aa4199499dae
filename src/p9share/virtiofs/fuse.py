"""Sans-IO codec for the FUSE messages a Linux virtio-fs client sends (protocol 7.31 to 7.38).

Layouts follow include/uapi/linux/fuse.h. Everything is little-endian (virtio-fs
is little-endian whatever the guest). A request is fuse_in_header (40 bytes)
then the opcode's arguments; a reply is fuse_out_header (16 bytes) then the
opcode's reply body. No I/O here: bytes in, typed objects out, and back.

Which struct sizes depend on the session (``Proto``):
- fuse_init_in is 16 bytes before 7.36 and 64 bytes from 7.36 (flags2).
- fuse_setxattr_in is 8 bytes unless the server granted FUSE_SETXATTR_EXT
  (then 16: setxattr_flags), whatever the minor.
- fuse_in_header's last u32 is padding before 7.38; from 7.38 its low half is
  total_extlen. Extensions (security context, supplementary groups) are only
  sent when the server grants FUSE_SECURITY_CTX or FUSE_CREATE_SUPP_GROUP;
  p9share grants neither, so a request carrying one is malformed.
- fuse_attr.flags (7.32) was padding before: encoded as 0 below 7.32.
Every other request struct is the same size over 7.31..7.38.

Names are bytes on Linux and str on the 9P side (strict UTF-8, docs/protocol.md
§2.3). A guest name that is not valid UTF-8 cannot reach the backend: decoding
it raises FuseDecodeError with errno EILSEQ (the request is well-formed FUSE,
the session answers it with that errno), as a 9P readlink of a non-UTF-8 target
does. Every other malformation is errno EPROTO, as 9P answers a malformed request.
"""

from __future__ import annotations

import enum
import errno as errno_mod
import struct
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import ClassVar, NamedTuple

# Protocol versions this codec speaks.
KERNEL_VERSION = 7
MIN_MINOR = 31
MAX_MINOR = 38
ROOT_ID = 1


class Opcode(enum.IntEnum):
    LOOKUP = 1
    FORGET = 2
    GETATTR = 3
    SETATTR = 4
    READLINK = 5
    SYMLINK = 6
    MKNOD = 8
    MKDIR = 9
    UNLINK = 10
    RMDIR = 11
    RENAME = 12
    LINK = 13
    OPEN = 14
    READ = 15
    WRITE = 16
    STATFS = 17
    RELEASE = 18
    FSYNC = 20
    SETXATTR = 21
    GETXATTR = 22
    LISTXATTR = 23
    REMOVEXATTR = 24
    FLUSH = 25
    INIT = 26
    OPENDIR = 27
    READDIR = 28
    RELEASEDIR = 29
    FSYNCDIR = 30
    GETLK = 31
    SETLK = 32
    SETLKW = 33
    ACCESS = 34
    CREATE = 35
    INTERRUPT = 36
    BMAP = 37
    DESTROY = 38
    IOCTL = 39
    POLL = 40
    NOTIFY_REPLY = 41
    BATCH_FORGET = 42
    FALLOCATE = 43
    READDIRPLUS = 44
    RENAME2 = 45
    LSEEK = 46
    COPY_FILE_RANGE = 47
    SETUPMAPPING = 48
    REMOVEMAPPING = 49
    SYNCFS = 50
    TMPFILE = 51
    CUSE_INIT = 4096


#: opcode -> name, for logs and audit records ("OP_123" for one not in the table).
OPCODE_NAMES: dict[int, str] = {op.value: op.name for op in Opcode}

#: Requests the kernel sends without waiting for a reply (virtio-fs still
#: returns their buffers on the used ring, with nothing written).
NO_REPLY: frozenset[int] = frozenset(
    {Opcode.FORGET, Opcode.BATCH_FORGET, Opcode.INTERRUPT, Opcode.NOTIFY_REPLY}
)


def opcode_name(opcode: int) -> str:
    return OPCODE_NAMES.get(opcode, f"OP_{opcode}")


# fuse_init flags (64 bits: bits 32.. travel in flags2 when FUSE_INIT_EXT is set).
ASYNC_READ = 1 << 0
POSIX_LOCKS = 1 << 1
FILE_OPS = 1 << 2
ATOMIC_O_TRUNC = 1 << 3
EXPORT_SUPPORT = 1 << 4
BIG_WRITES = 1 << 5
DONT_MASK = 1 << 6
SPLICE_WRITE = 1 << 7
SPLICE_MOVE = 1 << 8
SPLICE_READ = 1 << 9
FLOCK_LOCKS = 1 << 10
HAS_IOCTL_DIR = 1 << 11
AUTO_INVAL_DATA = 1 << 12
DO_READDIRPLUS = 1 << 13
READDIRPLUS_AUTO = 1 << 14
ASYNC_DIO = 1 << 15
WRITEBACK_CACHE = 1 << 16
NO_OPEN_SUPPORT = 1 << 17
PARALLEL_DIROPS = 1 << 18
HANDLE_KILLPRIV = 1 << 19
POSIX_ACL = 1 << 20
ABORT_ERROR = 1 << 21
MAX_PAGES = 1 << 22
CACHE_SYMLINKS = 1 << 23
NO_OPENDIR_SUPPORT = 1 << 24
EXPLICIT_INVAL_DATA = 1 << 25
MAP_ALIGNMENT = 1 << 26
SUBMOUNTS = 1 << 27
HANDLE_KILLPRIV_V2 = 1 << 28
SETXATTR_EXT = 1 << 29
INIT_EXT = 1 << 30
INIT_RESERVED = 1 << 31
SECURITY_CTX = 1 << 32
HAS_INODE_DAX = 1 << 33
CREATE_SUPP_GROUP = 1 << 34

# fuse_setattr_in.valid
FATTR_MODE = 1 << 0
FATTR_UID = 1 << 1
FATTR_GID = 1 << 2
FATTR_SIZE = 1 << 3
FATTR_ATIME = 1 << 4
FATTR_MTIME = 1 << 5
FATTR_FH = 1 << 6
FATTR_ATIME_NOW = 1 << 7
FATTR_MTIME_NOW = 1 << 8
FATTR_LOCKOWNER = 1 << 9
FATTR_CTIME = 1 << 10
FATTR_KILL_SUIDGID = 1 << 11

# fuse_open_out.open_flags
FOPEN_DIRECT_IO = 1 << 0
FOPEN_KEEP_CACHE = 1 << 1
FOPEN_NONSEEKABLE = 1 << 2
FOPEN_CACHE_DIR = 1 << 3
FOPEN_STREAM = 1 << 4
FOPEN_NOFLUSH = 1 << 5
FOPEN_PARALLEL_DIRECT_WRITES = 1 << 6

# Request-side flag words.
OPEN_KILL_SUIDGID = 1 << 0  # fuse_open_in / fuse_create_in .open_flags
RELEASE_FLUSH = 1 << 0
RELEASE_FLOCK_UNLOCK = 1 << 1
GETATTR_FH = 1 << 0
LK_FLOCK = 1 << 0
WRITE_CACHE = 1 << 0
WRITE_LOCKOWNER = 1 << 1
WRITE_KILL_SUIDGID = 1 << 2
READ_LOCKOWNER = 1 << 1
FSYNC_FDATASYNC = 1 << 0
SETXATTR_ACL_KILL_SGID = 1 << 0
ATTR_SUBMOUNT = 1 << 0
ATTR_DAX = 1 << 1

# Precompiled layouts ('x' = padding, ignored on decode, zero on encode).
IN_HEADER = struct.Struct("<IIQQIIIHH")  # len opcode unique nodeid uid gid pid total_extlen pad
OUT_HEADER = struct.Struct("<IiQ")  # len error unique
INIT_IN_COMPAT = struct.Struct("<IIII")  # major minor max_readahead flags (< 7.36)
INIT_IN = struct.Struct("<IIIII44x")  # ... flags2 unused[11] (7.36+)
INIT_OUT = struct.Struct("<IIIIHHIIHHI28x")
FORGET_IN = struct.Struct("<Q")
BATCH_FORGET_IN = struct.Struct("<I4x")
FORGET_ONE = struct.Struct("<QQ")
GETATTR_IN = struct.Struct("<I4xQ")
SETATTR_IN = struct.Struct("<I4xQQQQQQIIII4xII4x")
MKNOD_IN = struct.Struct("<III4x")
MKDIR_IN = struct.Struct("<II")
RENAME_IN = struct.Struct("<Q")
RENAME2_IN = struct.Struct("<QI4x")
LINK_IN = struct.Struct("<Q")
OPEN_IN = struct.Struct("<II")
CREATE_IN = struct.Struct("<IIII")
READ_IN = struct.Struct("<QQIIQI4x")  # fuse_read_in and fuse_write_in share this layout
RELEASE_IN = struct.Struct("<QIIQ")
FLUSH_IN = struct.Struct("<Q8xQ")
FSYNC_IN = struct.Struct("<QI4x")
SETXATTR_IN_COMPAT = struct.Struct("<II")
SETXATTR_IN = struct.Struct("<III4x")
GETXATTR_IN = struct.Struct("<I4x")
LK_IN = struct.Struct("<QQQQIII4x")
ACCESS_IN = struct.Struct("<I4x")
INTERRUPT_IN = struct.Struct("<Q")
FALLOCATE_IN = struct.Struct("<QQQI4x")
LSEEK_IN = struct.Struct("<QQI4x")
COPY_FILE_RANGE_IN = struct.Struct("<QQQQQQQ")
SYNCFS_IN = struct.Struct("<8x")

ATTR = struct.Struct("<QQQQQQIIIIIIIIII")
ENTRY_OUT = struct.Struct("<QQQQII" + ATTR.format[1:])
ATTR_OUT = struct.Struct("<QI4x" + ATTR.format[1:])
OPEN_OUT = struct.Struct("<QI4x")
CREATE_OUT = struct.Struct(ENTRY_OUT.format + OPEN_OUT.format[1:])
WRITE_OUT = struct.Struct("<I4x")
STATFS_OUT = struct.Struct("<QQQQQIII4x24x")
GETXATTR_OUT = struct.Struct("<I4x")
LK_OUT = struct.Struct("<QQII")
LSEEK_OUT = struct.Struct("<Q")
DIRENT = struct.Struct("<QQII")
DIRENTPLUS = struct.Struct(ENTRY_OUT.format + DIRENT.format[1:])

IN_HEADER_SIZE = IN_HEADER.size  # 40
OUT_HEADER_SIZE = OUT_HEADER.size  # 16
_U32_MAX = 0xFFFFFFFF
_U64_MAX = 0xFFFFFFFFFFFFFFFF


class FuseDecodeError(Exception):
    """A request the codec cannot accept. ``unique`` and ``opcode`` are set
    when the header was readable, so the session can still answer with
    ``-errno`` (EPROTO for a malformed message, EILSEQ for a name that is not
    UTF-8); without them there is no request to answer."""

    def __init__(
        self,
        message: str,
        *,
        unique: int | None = None,
        opcode: int | None = None,
        errno: int = errno_mod.EPROTO,
    ) -> None:
        super().__init__(message)
        self.unique = unique
        self.opcode = opcode
        self.errno = errno


class _Bad(Exception):
    """Raised inside body decoders; decode_request adds the header facts."""

    def __init__(self, message: str, errno: int = errno_mod.EPROTO) -> None:
        super().__init__(message)
        self.errno = errno


@dataclass(frozen=True, slots=True)
class Proto:
    """What the session negotiated at INIT and the decoder must know."""

    minor: int = MAX_MINOR
    setxattr_ext: bool = False


PROTO_LATEST = Proto()


# ---------------------------------------------------------------- requests


@dataclass(frozen=True, slots=True)
class Request:
    """fuse_in_header fields every request carries (uid/gid/pid are the
    calling guest process's, already in the guest's id space)."""

    unique: int
    nodeid: int
    uid: int
    gid: int
    pid: int

    OPCODE: ClassVar[int] = 0


@dataclass(frozen=True, slots=True)
class Init(Request):
    major: int
    minor: int
    max_readahead: int
    flags: int  # 64 bits: flags | flags2 << 32 (flags2 only when INIT_EXT is set, 7.36+)
    OPCODE: ClassVar[int] = Opcode.INIT


@dataclass(frozen=True, slots=True)
class Lookup(Request):
    name: str
    OPCODE: ClassVar[int] = Opcode.LOOKUP


@dataclass(frozen=True, slots=True)
class Forget(Request):
    nlookup: int
    OPCODE: ClassVar[int] = Opcode.FORGET


@dataclass(frozen=True, slots=True)
class BatchForget(Request):
    forgets: tuple[tuple[int, int], ...]  # (nodeid, nlookup) each
    OPCODE: ClassVar[int] = Opcode.BATCH_FORGET


@dataclass(frozen=True, slots=True)
class Getattr(Request):
    getattr_flags: int
    fh: int
    OPCODE: ClassVar[int] = Opcode.GETATTR


@dataclass(frozen=True, slots=True)
class Setattr(Request):
    valid: int
    fh: int
    size: int
    lock_owner: int
    atime: int
    mtime: int
    ctime: int
    atimensec: int
    mtimensec: int
    ctimensec: int
    mode: int
    new_uid: int  # the owner to set (the header's uid is the caller's)
    new_gid: int
    OPCODE: ClassVar[int] = Opcode.SETATTR


@dataclass(frozen=True, slots=True)
class Readlink(Request):
    OPCODE: ClassVar[int] = Opcode.READLINK


@dataclass(frozen=True, slots=True)
class Symlink(Request):
    name: str
    target: str
    OPCODE: ClassVar[int] = Opcode.SYMLINK


@dataclass(frozen=True, slots=True)
class Mknod(Request):
    mode: int
    rdev: int
    umask: int
    name: str
    OPCODE: ClassVar[int] = Opcode.MKNOD


@dataclass(frozen=True, slots=True)
class Mkdir(Request):
    mode: int
    umask: int
    name: str
    OPCODE: ClassVar[int] = Opcode.MKDIR


@dataclass(frozen=True, slots=True)
class Unlink(Request):
    name: str
    OPCODE: ClassVar[int] = Opcode.UNLINK


@dataclass(frozen=True, slots=True)
class Rmdir(Request):
    name: str
    OPCODE: ClassVar[int] = Opcode.RMDIR


@dataclass(frozen=True, slots=True)
class Rename(Request):
    newdir: int
    oldname: str
    newname: str
    OPCODE: ClassVar[int] = Opcode.RENAME


@dataclass(frozen=True, slots=True)
class Rename2(Request):
    newdir: int
    flags: int  # RENAME_NOREPLACE 1, RENAME_EXCHANGE 2, RENAME_WHITEOUT 4
    oldname: str
    newname: str
    OPCODE: ClassVar[int] = Opcode.RENAME2


@dataclass(frozen=True, slots=True)
class Link(Request):
    oldnodeid: int
    newname: str
    OPCODE: ClassVar[int] = Opcode.LINK


@dataclass(frozen=True, slots=True)
class Open(Request):
    flags: int
    open_flags: int
    OPCODE: ClassVar[int] = Opcode.OPEN


@dataclass(frozen=True, slots=True)
class Opendir(Request):
    flags: int
    open_flags: int
    OPCODE: ClassVar[int] = Opcode.OPENDIR


@dataclass(frozen=True, slots=True)
class Read(Request):
    fh: int
    offset: int
    size: int
    read_flags: int
    lock_owner: int
    flags: int
    OPCODE: ClassVar[int] = Opcode.READ


@dataclass(frozen=True, slots=True)
class Readdir(Request):
    fh: int
    offset: int
    size: int
    read_flags: int
    lock_owner: int
    flags: int
    OPCODE: ClassVar[int] = Opcode.READDIR


@dataclass(frozen=True, slots=True)
class Readdirplus(Request):
    fh: int
    offset: int
    size: int
    read_flags: int
    lock_owner: int
    flags: int
    OPCODE: ClassVar[int] = Opcode.READDIRPLUS


@dataclass(frozen=True, slots=True)
class Write(Request):
    fh: int
    offset: int
    write_flags: int
    lock_owner: int
    flags: int
    data: bytes  # fuse_write_in.size is len(data), checked on decode
    OPCODE: ClassVar[int] = Opcode.WRITE


@dataclass(frozen=True, slots=True)
class Statfs(Request):
    OPCODE: ClassVar[int] = Opcode.STATFS


@dataclass(frozen=True, slots=True)
class Release(Request):
    fh: int
    flags: int
    release_flags: int
    lock_owner: int
    OPCODE: ClassVar[int] = Opcode.RELEASE


@dataclass(frozen=True, slots=True)
class Releasedir(Request):
    fh: int
    flags: int
    release_flags: int
    lock_owner: int
    OPCODE: ClassVar[int] = Opcode.RELEASEDIR


@dataclass(frozen=True, slots=True)
class Fsync(Request):
    fh: int
    fsync_flags: int
    OPCODE: ClassVar[int] = Opcode.FSYNC


@dataclass(frozen=True, slots=True)
class Fsyncdir(Request):
    fh: int
    fsync_flags: int
    OPCODE: ClassVar[int] = Opcode.FSYNCDIR


@dataclass(frozen=True, slots=True)
class Setxattr(Request):
    flags: int  # XATTR_CREATE / XATTR_REPLACE
    setxattr_flags: int  # only on the wire with FUSE_SETXATTR_EXT, else 0
    name: str
    value: bytes
    OPCODE: ClassVar[int] = Opcode.SETXATTR


@dataclass(frozen=True, slots=True)
class Getxattr(Request):
    size: int
    name: str
    OPCODE: ClassVar[int] = Opcode.GETXATTR


@dataclass(frozen=True, slots=True)
class Listxattr(Request):
    size: int
    OPCODE: ClassVar[int] = Opcode.LISTXATTR


@dataclass(frozen=True, slots=True)
class Removexattr(Request):
    name: str
    OPCODE: ClassVar[int] = Opcode.REMOVEXATTR


@dataclass(frozen=True, slots=True)
class Flush(Request):
    fh: int
    lock_owner: int
    OPCODE: ClassVar[int] = Opcode.FLUSH


@dataclass(frozen=True, slots=True)
class Getlk(Request):
    fh: int
    owner: int
    start: int
    end: int
    type: int  # F_RDLCK 0, F_WRLCK 1, F_UNLCK 2
    lk_pid: int
    lk_flags: int
    OPCODE: ClassVar[int] = Opcode.GETLK


@dataclass(frozen=True, slots=True)
class Setlk(Request):
    fh: int
    owner: int
    start: int
    end: int
    type: int
    lk_pid: int
    lk_flags: int
    OPCODE: ClassVar[int] = Opcode.SETLK


@dataclass(frozen=True, slots=True)
class Setlkw(Request):
    fh: int
    owner: int
    start: int
    end: int
    type: int
    lk_pid: int
    lk_flags: int
    OPCODE: ClassVar[int] = Opcode.SETLKW


@dataclass(frozen=True, slots=True)
class Access(Request):
    mask: int
    OPCODE: ClassVar[int] = Opcode.ACCESS


@dataclass(frozen=True, slots=True)
class Create(Request):
    flags: int
    mode: int
    umask: int
    open_flags: int
    name: str
    OPCODE: ClassVar[int] = Opcode.CREATE


@dataclass(frozen=True, slots=True)
class Tmpfile(Request):
    flags: int
    mode: int
    umask: int
    open_flags: int
    name: str
    OPCODE: ClassVar[int] = Opcode.TMPFILE


@dataclass(frozen=True, slots=True)
class Interrupt(Request):
    target: int  # the unique of the request to interrupt
    OPCODE: ClassVar[int] = Opcode.INTERRUPT


@dataclass(frozen=True, slots=True)
class Destroy(Request):
    OPCODE: ClassVar[int] = Opcode.DESTROY


@dataclass(frozen=True, slots=True)
class Fallocate(Request):
    fh: int
    offset: int
    length: int
    mode: int
    OPCODE: ClassVar[int] = Opcode.FALLOCATE


@dataclass(frozen=True, slots=True)
class Lseek(Request):
    fh: int
    offset: int
    whence: int
    OPCODE: ClassVar[int] = Opcode.LSEEK


@dataclass(frozen=True, slots=True)
class CopyFileRange(Request):
    fh_in: int
    off_in: int
    nodeid_out: int
    fh_out: int
    off_out: int
    len: int
    flags: int
    OPCODE: ClassVar[int] = Opcode.COPY_FILE_RANGE


@dataclass(frozen=True, slots=True)
class Syncfs(Request):
    OPCODE: ClassVar[int] = Opcode.SYNCFS


@dataclass(frozen=True, slots=True)
class Unknown(Request):
    """An opcode p9share does not decode (BMAP, IOCTL, POLL, DAX mappings,
    anything newer): the session answers ENOSYS."""

    opcode: int
    body: bytes


# ---------------------------------------------------------------- decoding

_Decoder = Callable[[int, int, int, int, int, bytes, Proto], Request]


def _name(raw: bytes, what: str) -> str:
    if not raw:
        raise _Bad(f"empty {what}")
    if b"/" in raw:
        raise _Bad(f"{what} contains '/'")
    return _utf8(raw, what)


def _utf8(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _Bad(f"{what} is not valid UTF-8", errno_mod.EILSEQ) from None


def _last_string(body: bytes, off: int, what: str) -> bytes:
    """The NUL-terminated string that must end exactly at the end of body."""
    if len(body) <= off or body[-1] != 0:
        raise _Bad(f"{what} is missing or not NUL-terminated")
    raw = body[off:-1]
    if b"\x00" in raw:
        raise _Bad(f"trailing bytes after the NUL of {what}")
    return raw


def _string_at(body: bytes, off: int, what: str) -> tuple[bytes, int]:
    """A NUL-terminated string at off followed by more data: (raw, end+1)."""
    end = body.find(b"\x00", off)
    if end < 0:
        raise _Bad(f"{what} is not NUL-terminated")
    return body[off:end], end + 1


def _fixed(cls: type[Request], st: struct.Struct) -> _Decoder:
    make: Callable[..., Request] = cls
    size = st.size
    unpack = st.unpack
    what = f"{opcode_name(cls.OPCODE)} body"

    def dec(u: int, n: int, uid: int, gid: int, pid: int, body: bytes, p: Proto) -> Request:
        if len(body) != size:
            raise _Bad(f"{what} is {len(body)} bytes, expected {size}")
        return make(u, n, uid, gid, pid, *unpack(body))

    return dec


def _empty(cls: type[Request]) -> _Decoder:
    what = opcode_name(cls.OPCODE)
    make: Callable[..., Request] = cls

    def dec(u: int, n: int, uid: int, gid: int, pid: int, body: bytes, p: Proto) -> Request:
        if body:
            raise _Bad(f"{what} carries {len(body)} unexpected bytes")
        return make(u, n, uid, gid, pid)

    return dec


def _struct_name(cls: type[Request], st: struct.Struct | None) -> _Decoder:
    """Fixed struct (or none), then one NUL-terminated file name to the end."""
    size = st.size if st is not None else 0
    unpack = st.unpack_from if st is not None else None
    what = opcode_name(cls.OPCODE)
    make: Callable[..., Request] = cls

    def dec(u: int, n: int, uid: int, gid: int, pid: int, body: bytes, p: Proto) -> Request:
        if len(body) < size:
            raise _Bad(f"{what} body is {len(body)} bytes, shorter than its {size}-byte struct")
        name = _name(_last_string(body, size, "name"), "name")
        if unpack is None:
            return make(u, n, uid, gid, pid, name)
        return make(u, n, uid, gid, pid, *unpack(body), name)

    return dec


def _struct_two_names(cls: type[Request], st: struct.Struct | None) -> _Decoder:
    """Fixed struct (or none), then two NUL-terminated file names."""
    size = st.size if st is not None else 0
    unpack = st.unpack_from if st is not None else None
    what = opcode_name(cls.OPCODE)
    make: Callable[..., Request] = cls

    def dec(u: int, n: int, uid: int, gid: int, pid: int, body: bytes, p: Proto) -> Request:
        if len(body) < size:
            raise _Bad(f"{what} body is {len(body)} bytes, shorter than its {size}-byte struct")
        raw1, off = _string_at(body, size, "first name")
        first = _name(raw1, "first name")
        second = _name(_last_string(body, off, "second name"), "second name")
        if unpack is None:
            return make(u, n, uid, gid, pid, first, second)
        return make(u, n, uid, gid, pid, *unpack(body), first, second)

    return dec


def _dec_init(u: int, n: int, uid: int, gid: int, pid: int, body: bytes, p: Proto) -> Request:
    if len(body) < INIT_IN_COMPAT.size:
        raise _Bad(f"INIT body is {len(body)} bytes, shorter than 16")
    major, minor, readahead, flags = INIT_IN_COMPAT.unpack_from(body)
    # The extended struct arrives exactly when the kernel speaks 7.36 or later.
    want = INIT_IN.size if major == KERNEL_VERSION and minor >= 36 else INIT_IN_COMPAT.size
    if major > KERNEL_VERSION:
        want = len(body)  # a newer major's layout: only major/minor matter (the reply asks again)
    if len(body) != want:
        raise _Bad(f"INIT {major}.{minor} body is {len(body)} bytes, expected {want}")
    if want == INIT_IN.size:
        flags2 = INIT_IN.unpack(body)[4]
        if flags & INIT_EXT:
            flags |= flags2 << 32
    return Init(u, n, uid, gid, pid, major, minor, readahead, flags)


def _dec_batch_forget(
    u: int, n: int, uid: int, gid: int, pid: int, body: bytes, p: Proto
) -> Request:
    if len(body) < BATCH_FORGET_IN.size:
        raise _Bad(f"BATCH_FORGET body is {len(body)} bytes, shorter than 8")
    (count,) = BATCH_FORGET_IN.unpack_from(body)
    want = BATCH_FORGET_IN.size + count * FORGET_ONE.size
    if len(body) != want:
        raise _Bad(f"BATCH_FORGET of {count} entries needs {want} bytes, got {len(body)}")
    it = FORGET_ONE.iter_unpack(body[BATCH_FORGET_IN.size :])
    return BatchForget(u, n, uid, gid, pid, tuple(it))


def _dec_write(u: int, n: int, uid: int, gid: int, pid: int, body: bytes, p: Proto) -> Request:
    if len(body) < READ_IN.size:
        raise _Bad(f"WRITE body is {len(body)} bytes, shorter than 40")
    fh, offset, size, wflags, owner, flags = READ_IN.unpack_from(body)
    if len(body) - READ_IN.size != size:
        raise _Bad(f"WRITE says {size} bytes but carries {len(body) - READ_IN.size}")
    return Write(u, n, uid, gid, pid, fh, offset, wflags, owner, flags, body[READ_IN.size :])


def _dec_setxattr(u: int, n: int, uid: int, gid: int, pid: int, body: bytes, p: Proto) -> Request:
    st = SETXATTR_IN if p.setxattr_ext else SETXATTR_IN_COMPAT
    if len(body) < st.size:
        raise _Bad(f"SETXATTR body is {len(body)} bytes, shorter than {st.size}")
    if p.setxattr_ext:
        size, flags, sflags = SETXATTR_IN.unpack_from(body)
    else:
        size, flags = SETXATTR_IN_COMPAT.unpack_from(body)
        sflags = 0
    raw, off = _string_at(body, st.size, "xattr name")
    if len(body) - off != size:
        raise _Bad(f"SETXATTR says a {size}-byte value but carries {len(body) - off}")
    name = _xattr_name(raw)
    return Setxattr(u, n, uid, gid, pid, flags, sflags, name, body[off:])


def _xattr_name(raw: bytes) -> str:
    if not raw:
        raise _Bad("empty xattr name")
    return _utf8(raw, "xattr name")


def _dec_getxattr(u: int, n: int, uid: int, gid: int, pid: int, body: bytes, p: Proto) -> Request:
    if len(body) < GETXATTR_IN.size:
        raise _Bad(f"GETXATTR body is {len(body)} bytes, shorter than 8")
    (size,) = GETXATTR_IN.unpack_from(body)
    name = _xattr_name(_last_string(body, GETXATTR_IN.size, "xattr name"))
    return Getxattr(u, n, uid, gid, pid, size, name)


def _dec_removexattr(
    u: int, n: int, uid: int, gid: int, pid: int, body: bytes, p: Proto
) -> Request:
    return Removexattr(u, n, uid, gid, pid, _xattr_name(_last_string(body, 0, "xattr name")))


def _dec_symlink(u: int, n: int, uid: int, gid: int, pid: int, body: bytes, p: Proto) -> Request:
    # Linux sends the new entry's name first, then the target.
    raw, off = _string_at(body, 0, "name")
    name = _name(raw, "name")
    target = _last_string(body, off, "symlink target")
    if not target:
        raise _Bad("empty symlink target")
    return Symlink(u, n, uid, gid, pid, name, _utf8(target, "symlink target"))


def _dec_syncfs(u: int, n: int, uid: int, gid: int, pid: int, body: bytes, p: Proto) -> Request:
    if len(body) != SYNCFS_IN.size:
        raise _Bad(f"SYNCFS body is {len(body)} bytes, expected 8")
    return Syncfs(u, n, uid, gid, pid)


_DECODERS: dict[int, _Decoder] = {
    Opcode.INIT: _dec_init,
    Opcode.LOOKUP: _struct_name(Lookup, None),
    Opcode.FORGET: _fixed(Forget, FORGET_IN),
    Opcode.BATCH_FORGET: _dec_batch_forget,
    Opcode.GETATTR: _fixed(Getattr, GETATTR_IN),
    Opcode.SETATTR: _fixed(Setattr, SETATTR_IN),
    Opcode.READLINK: _empty(Readlink),
    Opcode.SYMLINK: _dec_symlink,
    Opcode.MKNOD: _struct_name(Mknod, MKNOD_IN),
    Opcode.MKDIR: _struct_name(Mkdir, MKDIR_IN),
    Opcode.UNLINK: _struct_name(Unlink, None),
    Opcode.RMDIR: _struct_name(Rmdir, None),
    Opcode.RENAME: _struct_two_names(Rename, RENAME_IN),
    Opcode.RENAME2: _struct_two_names(Rename2, RENAME2_IN),
    Opcode.LINK: _struct_name(Link, LINK_IN),
    Opcode.OPEN: _fixed(Open, OPEN_IN),
    Opcode.OPENDIR: _fixed(Opendir, OPEN_IN),
    Opcode.READ: _fixed(Read, READ_IN),
    Opcode.READDIR: _fixed(Readdir, READ_IN),
    Opcode.READDIRPLUS: _fixed(Readdirplus, READ_IN),
    Opcode.WRITE: _dec_write,
    Opcode.STATFS: _empty(Statfs),
    Opcode.RELEASE: _fixed(Release, RELEASE_IN),
    Opcode.RELEASEDIR: _fixed(Releasedir, RELEASE_IN),
    Opcode.FSYNC: _fixed(Fsync, FSYNC_IN),
    Opcode.FSYNCDIR: _fixed(Fsyncdir, FSYNC_IN),
    Opcode.SETXATTR: _dec_setxattr,
    Opcode.GETXATTR: _dec_getxattr,
    Opcode.LISTXATTR: _fixed(Listxattr, GETXATTR_IN),
    Opcode.REMOVEXATTR: _dec_removexattr,
    Opcode.FLUSH: _fixed(Flush, FLUSH_IN),
    Opcode.GETLK: _fixed(Getlk, LK_IN),
    Opcode.SETLK: _fixed(Setlk, LK_IN),
    Opcode.SETLKW: _fixed(Setlkw, LK_IN),
    Opcode.ACCESS: _fixed(Access, ACCESS_IN),
    Opcode.CREATE: _struct_name(Create, CREATE_IN),
    Opcode.TMPFILE: _struct_name(Tmpfile, CREATE_IN),
    Opcode.INTERRUPT: _fixed(Interrupt, INTERRUPT_IN),
    Opcode.DESTROY: _empty(Destroy),
    Opcode.FALLOCATE: _fixed(Fallocate, FALLOCATE_IN),
    Opcode.LSEEK: _fixed(Lseek, LSEEK_IN),
    Opcode.COPY_FILE_RANGE: _fixed(CopyFileRange, COPY_FILE_RANGE_IN),
    Opcode.SYNCFS: _dec_syncfs,
}


def _in_header(
    data: bytes | bytearray | memoryview, n: int, proto: Proto
) -> tuple[int, int, int, int, int, int]:
    """fuse_in_header of a request of n bytes, checked: (opcode, unique,
    nodeid, uid, gid, pid)."""
    if len(data) < IN_HEADER_SIZE:
        raise FuseDecodeError(f"request of {n} bytes is shorter than the 40-byte fuse_in_header")
    length, opcode, unique, nodeid, uid, gid, pid, extlen, _ = IN_HEADER.unpack_from(data)
    if length != n:
        raise FuseDecodeError(
            f"fuse_in_header.len is {length} but the request has {n} bytes",
            unique=unique,
            opcode=opcode,
        )
    if extlen and proto.minor >= 38:
        raise FuseDecodeError(
            f"{opcode_name(opcode)} carries {extlen * 8} bytes of extensions that were not negotiated",
            unique=unique,
            opcode=opcode,
        )
    return opcode, unique, nodeid, uid, gid, pid


def decode_request(data: bytes | bytearray | memoryview, proto: Proto = PROTO_LATEST) -> Request:
    """One whole request (the readable part of a descriptor chain) -> typed request.

    Raises FuseDecodeError for anything malformed, and only that."""
    opcode, unique, nodeid, uid, gid, pid = _in_header(data, len(data), proto)
    body = bytes(data[IN_HEADER_SIZE:])
    dec = _DECODERS.get(opcode)
    if dec is None:
        return Unknown(unique, nodeid, uid, gid, pid, opcode, body)
    try:
        return dec(unique, nodeid, uid, gid, pid, body, proto)
    except _Bad as e:
        raise FuseDecodeError(
            f"{opcode_name(opcode)}: {e}", unique=unique, opcode=opcode, errno=e.errno
        ) from None


IO_PREFIX_SIZE = IN_HEADER_SIZE + READ_IN.size  # 80: a whole READ; what precedes WRITE's data


@dataclass(frozen=True, slots=True)
class WriteIn(Request):
    """A WRITE without its data: the `size` bytes after the first
    IO_PREFIX_SIZE of the request (read from guest memory by the caller)."""

    fh: int
    offset: int
    size: int
    write_flags: int
    lock_owner: int
    flags: int
    OPCODE: ClassVar[int] = Opcode.WRITE


def decode_io_prefix(head: bytes, total: int, proto: Proto = PROTO_LATEST) -> Read | WriteIn:
    """A READ or WRITE from the first IO_PREFIX_SIZE bytes of a request of
    `total` bytes, checked as decode_request checks it (so the data of a WRITE
    never has to be copied to be decoded). Raises FuseDecodeError for anything
    malformed; ValueError (a caller's bug) for another opcode or a head
    shorter than IO_PREFIX_SIZE (decode_request answers a shorter request)."""
    if len(head) < IO_PREFIX_SIZE:
        raise ValueError(f"an I/O prefix of {len(head)} bytes")
    opcode, unique, nodeid, uid, gid, pid = _in_header(head, total, proto)
    fh, offset, size, rwflags, owner, flags = READ_IN.unpack_from(head, IN_HEADER_SIZE)
    if opcode == Opcode.READ:
        if total != IO_PREFIX_SIZE:
            raise FuseDecodeError(
                f"READ body is {total - IN_HEADER_SIZE} bytes, expected {READ_IN.size}",
                unique=unique,
                opcode=opcode,
            )
        return Read(unique, nodeid, uid, gid, pid, fh, offset, size, rwflags, owner, flags)
    if opcode == Opcode.WRITE:
        if total - IO_PREFIX_SIZE != size:
            raise FuseDecodeError(
                f"WRITE says {size} bytes but carries {total - IO_PREFIX_SIZE}",
                unique=unique,
                opcode=opcode,
            )
        return WriteIn(unique, nodeid, uid, gid, pid, fh, offset, size, rwflags, owner, flags)
    raise ValueError(f"{opcode_name(opcode)} is not READ or WRITE")


# ---------------------------------------------------------------- encoding requests
# The client side: tests, fake front ends and fuzzers build requests with it.


def _nul(s: str) -> bytes:
    return s.encode("utf-8") + b"\x00"


def encode_request(req: Request, proto: Proto = PROTO_LATEST) -> bytes:
    body = _request_body(req, proto)
    opcode = req.opcode if isinstance(req, Unknown) else req.OPCODE
    return (
        IN_HEADER.pack(
            IN_HEADER_SIZE + len(body),
            opcode,
            req.unique,
            req.nodeid,
            req.uid,
            req.gid,
            req.pid,
            0,
            0,
        )
        + body
    )


def _request_body(req: Request, proto: Proto) -> bytes:
    if isinstance(req, Init):
        if req.major == KERNEL_VERSION and req.minor >= 36:
            return INIT_IN.pack(
                req.major, req.minor, req.max_readahead, req.flags & _U32_MAX, req.flags >> 32
            )
        return INIT_IN_COMPAT.pack(req.major, req.minor, req.max_readahead, req.flags & _U32_MAX)
    if isinstance(req, Lookup | Unlink | Rmdir):
        return _nul(req.name)
    if isinstance(req, Forget):
        return FORGET_IN.pack(req.nlookup)
    if isinstance(req, BatchForget):
        return BATCH_FORGET_IN.pack(len(req.forgets)) + b"".join(
            FORGET_ONE.pack(a, b) for a, b in req.forgets
        )
    if isinstance(req, Getattr):
        return GETATTR_IN.pack(req.getattr_flags, req.fh)
    if isinstance(req, Setattr):
        return SETATTR_IN.pack(*_values(req))
    if isinstance(req, Readlink | Statfs | Destroy):
        return b""
    if isinstance(req, Symlink):
        return _nul(req.name) + _nul(req.target)
    if isinstance(req, Mknod):
        return MKNOD_IN.pack(req.mode, req.rdev, req.umask) + _nul(req.name)
    if isinstance(req, Mkdir):
        return MKDIR_IN.pack(req.mode, req.umask) + _nul(req.name)
    if isinstance(req, Rename):
        return RENAME_IN.pack(req.newdir) + _nul(req.oldname) + _nul(req.newname)
    if isinstance(req, Rename2):
        return RENAME2_IN.pack(req.newdir, req.flags) + _nul(req.oldname) + _nul(req.newname)
    if isinstance(req, Link):
        return LINK_IN.pack(req.oldnodeid) + _nul(req.newname)
    if isinstance(req, Open | Opendir):
        return OPEN_IN.pack(req.flags, req.open_flags)
    if isinstance(req, Read | Readdir | Readdirplus):
        return READ_IN.pack(*_values(req))
    if isinstance(req, Write):
        return (
            READ_IN.pack(
                req.fh, req.offset, len(req.data), req.write_flags, req.lock_owner, req.flags
            )
            + req.data
        )
    if isinstance(req, Release | Releasedir):
        return RELEASE_IN.pack(*_values(req))
    if isinstance(req, Fsync | Fsyncdir):
        return FSYNC_IN.pack(*_values(req))
    if isinstance(req, Setxattr):
        if proto.setxattr_ext:
            head = SETXATTR_IN.pack(len(req.value), req.flags, req.setxattr_flags)
        else:
            head = SETXATTR_IN_COMPAT.pack(len(req.value), req.flags)
        return head + _nul(req.name) + req.value
    if isinstance(req, Getxattr):
        return GETXATTR_IN.pack(req.size) + _nul(req.name)
    if isinstance(req, Listxattr):
        return GETXATTR_IN.pack(req.size)
    if isinstance(req, Removexattr):
        return _nul(req.name)
    if isinstance(req, Flush):
        return FLUSH_IN.pack(req.fh, req.lock_owner)
    if isinstance(req, Getlk | Setlk | Setlkw):
        return LK_IN.pack(*_values(req))
    if isinstance(req, Access):
        return ACCESS_IN.pack(req.mask)
    if isinstance(req, Create | Tmpfile):
        return CREATE_IN.pack(req.flags, req.mode, req.umask, req.open_flags) + _nul(req.name)
    if isinstance(req, Interrupt):
        return INTERRUPT_IN.pack(req.target)
    if isinstance(req, Fallocate):
        return FALLOCATE_IN.pack(*_values(req))
    if isinstance(req, Lseek):
        return LSEEK_IN.pack(*_values(req))
    if isinstance(req, CopyFileRange):
        return COPY_FILE_RANGE_IN.pack(*_values(req))
    if isinstance(req, Syncfs):
        return SYNCFS_IN.pack()
    if isinstance(req, Unknown):
        return req.body
    raise TypeError(f"cannot encode {type(req).__name__}")


_HEADER_FIELDS = 5


def _values(req: Request) -> list[int]:
    """The opcode's own fields in declaration order (= wire order for the fixed structs)."""
    return [getattr(req, f.name) for f in fields(req)[_HEADER_FIELDS:]]


# ---------------------------------------------------------------- replies


class Attr(NamedTuple):
    """struct fuse_attr."""

    ino: int
    size: int
    blocks: int
    atime: int
    mtime: int
    ctime: int
    atimensec: int
    mtimensec: int
    ctimensec: int
    mode: int
    nlink: int
    uid: int
    gid: int
    rdev: int
    blksize: int
    flags: int = 0


class EntryOut(NamedTuple):
    """struct fuse_entry_out. nodeid 0 in a LOOKUP reply is a cacheable ENOENT."""

    nodeid: int
    generation: int
    entry_valid: int
    attr_valid: int
    entry_valid_nsec: int
    attr_valid_nsec: int
    attr: Attr


class InitOut(NamedTuple):
    major: int
    minor: int
    max_readahead: int
    flags: int  # 64 bits; bits 32.. go to flags2 (and INIT_EXT is set) on encode
    max_background: int
    congestion_threshold: int
    max_write: int
    time_gran: int
    max_pages: int
    map_alignment: int = 0


class StatfsOut(NamedTuple):
    blocks: int
    bfree: int
    bavail: int
    files: int
    ffree: int
    bsize: int
    namelen: int
    frsize: int


class FileLock(NamedTuple):
    start: int
    end: int
    type: int
    pid: int


def _attr_values(attr: Attr, minor: int) -> tuple[int, ...]:
    # fuse_attr.flags is padding before 7.32: never send bits there.
    return attr if minor >= 32 or not attr.flags else attr._replace(flags=0)


def out_header(unique: int, payload_len: int) -> bytes:
    """The 16-byte header of a successful reply whose body (payload_len bytes)
    the caller writes itself, e.g. READ data scattered straight into guest buffers."""
    return OUT_HEADER.pack(OUT_HEADER_SIZE + payload_len, 0, unique)


def reply_error(unique: int, errno: int) -> bytes:
    """A reply carrying only -errno (errno 1..4095, as the kernel expects)."""
    if not 0 < errno < 4096:
        raise ValueError(f"errno {errno} outside 1..4095")
    return OUT_HEADER.pack(OUT_HEADER_SIZE, -errno, unique)


def reply_empty(unique: int) -> bytes:
    """Success with no body (FLUSH, RELEASE, FSYNC, SETLK, ACCESS, UNLINK, ...)."""
    return OUT_HEADER.pack(OUT_HEADER_SIZE, 0, unique)


def reply_data(unique: int, data: bytes) -> bytes:
    """Success with raw bytes (READ, READLINK, GETXATTR/LISTXATTR values, directory entries)."""
    return OUT_HEADER.pack(OUT_HEADER_SIZE + len(data), 0, unique) + data


_ENTRY_REPLY_LEN = OUT_HEADER_SIZE + ENTRY_OUT.size
_ATTR_REPLY_LEN = OUT_HEADER_SIZE + ATTR_OUT.size
_CREATE_REPLY_LEN = OUT_HEADER_SIZE + CREATE_OUT.size


def _entry_values(e: EntryOut, minor: int) -> tuple[int, ...]:
    return (
        e.nodeid,
        e.generation,
        e.entry_valid,
        e.attr_valid,
        e.entry_valid_nsec,
        e.attr_valid_nsec,
        *_attr_values(e.attr, minor),
    )


def reply_entry(unique: int, entry: EntryOut, minor: int = MAX_MINOR) -> bytes:
    """LOOKUP, MKNOD, MKDIR, SYMLINK, LINK."""
    return OUT_HEADER.pack(_ENTRY_REPLY_LEN, 0, unique) + ENTRY_OUT.pack(
        *_entry_values(entry, minor)
    )


def reply_attr(
    unique: int, attr: Attr, valid: int = 0, valid_nsec: int = 0, minor: int = MAX_MINOR
) -> bytes:
    """GETATTR, SETATTR."""
    return OUT_HEADER.pack(_ATTR_REPLY_LEN, 0, unique) + ATTR_OUT.pack(
        valid, valid_nsec, *_attr_values(attr, minor)
    )


def reply_open(unique: int, fh: int, open_flags: int = 0) -> bytes:
    """OPEN, OPENDIR."""
    return OUT_HEADER.pack(OUT_HEADER_SIZE + OPEN_OUT.size, 0, unique) + OPEN_OUT.pack(
        fh, open_flags
    )


def reply_create(
    unique: int, entry: EntryOut, fh: int, open_flags: int = 0, minor: int = MAX_MINOR
) -> bytes:
    return OUT_HEADER.pack(_CREATE_REPLY_LEN, 0, unique) + CREATE_OUT.pack(
        *_entry_values(entry, minor), fh, open_flags
    )


def reply_write(unique: int, size: int) -> bytes:
    """WRITE and COPY_FILE_RANGE (fuse_write_out)."""
    return OUT_HEADER.pack(OUT_HEADER_SIZE + WRITE_OUT.size, 0, unique) + WRITE_OUT.pack(size)


def reply_statfs(unique: int, st: StatfsOut) -> bytes:
    return OUT_HEADER.pack(OUT_HEADER_SIZE + STATFS_OUT.size, 0, unique) + STATFS_OUT.pack(*st)


def reply_xattr_size(unique: int, size: int) -> bytes:
    """GETXATTR/LISTXATTR with size 0: how many bytes the value or list needs."""
    return OUT_HEADER.pack(OUT_HEADER_SIZE + GETXATTR_OUT.size, 0, unique) + GETXATTR_OUT.pack(size)


def reply_lk(unique: int, lock: FileLock) -> bytes:
    return OUT_HEADER.pack(OUT_HEADER_SIZE + LK_OUT.size, 0, unique) + LK_OUT.pack(*lock)


def reply_lseek(unique: int, offset: int) -> bytes:
    return OUT_HEADER.pack(OUT_HEADER_SIZE + LSEEK_OUT.size, 0, unique) + LSEEK_OUT.pack(offset)


def reply_init(unique: int, out: InitOut) -> bytes:
    """fuse_init_out, 64 bytes (the size every 7.23+ kernel reads)."""
    flags = out.flags & _U32_MAX
    flags2 = out.flags >> 32
    if flags2:
        if out.minor < 36:
            raise ValueError(f"flags above bit 31 need protocol 7.36, not 7.{out.minor}")
        flags |= INIT_EXT
    return OUT_HEADER.pack(OUT_HEADER_SIZE + INIT_OUT.size, 0, unique) + INIT_OUT.pack(
        out.major,
        out.minor,
        out.max_readahead,
        flags,
        out.max_background,
        out.congestion_threshold,
        out.max_write,
        out.time_gran,
        out.max_pages,
        out.map_alignment,
        flags2,
    )


def reply_init_major_only(unique: int) -> bytes:
    """Answer to an INIT from a newer major: state our major and wait for another INIT."""
    return OUT_HEADER.pack(OUT_HEADER_SIZE + 8, 0, unique) + struct.pack(
        "<II", KERNEL_VERSION, MAX_MINOR
    )


def dirent_type(mode: int) -> int:
    """DT_* of a st_mode, the way the kernel's fuse_dirent.type expects it."""
    return (mode >> 12) & 0xF


_PAD = b"\x00" * 8


class DirentBuffer:
    """READDIR / READDIRPLUS reply body, filled up to the size the kernel asked for.

    Each record is aligned to 8 bytes; a record that would overflow the
    budget is refused (add returns False) and the caller stops there, resuming
    at that entry's offset on the next request."""

    __slots__ = ("_budget", "_minor", "_parts", "_used", "count")

    def __init__(self, budget: int, minor: int = MAX_MINOR) -> None:
        self._budget = budget
        self._minor = minor
        self._parts: list[bytes] = []
        self._used = 0
        self.count = 0

    @property
    def used(self) -> int:
        return self._used

    def add(self, ino: int, off: int, dtype: int, name: str) -> bool:
        """A fuse_dirent: off is the cookie from which the next READDIR resumes."""
        raw = _entry_name(name)
        rec = DIRENT.size + len(raw)
        padded = (rec + 7) & ~7
        if self._used + padded > self._budget:
            return False
        self._parts.append(DIRENT.pack(ino, off, len(raw), dtype) + raw + _PAD[: padded - rec])
        self._used += padded
        self.count += 1
        return True

    def add_plus(self, entry: EntryOut, off: int, dtype: int, name: str) -> bool:
        """A fuse_direntplus. entry.nodeid 0 tells the kernel to skip the
        entry's attributes (no lookup count is taken); otherwise the kernel
        counts one lookup on it unless the name is '.' or '..'."""
        raw = _entry_name(name)
        rec = DIRENTPLUS.size + len(raw)
        padded = (rec + 7) & ~7
        if self._used + padded > self._budget:
            return False
        attr = entry.attr
        if attr.flags and self._minor < 32:
            attr = attr._replace(flags=0)
        self._parts.append(
            DIRENTPLUS.pack(
                entry.nodeid,
                entry.generation,
                entry.entry_valid,
                entry.attr_valid,
                entry.entry_valid_nsec,
                entry.attr_valid_nsec,
                *attr,
                attr.ino,
                off,
                len(raw),
                dtype,
            )
            + raw
            + _PAD[: padded - rec]
        )
        self._used += padded
        self.count += 1
        return True

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


def _entry_name(name: str) -> bytes:
    raw = name.encode("utf-8")
    if not raw or b"/" in raw or b"\x00" in raw:
        raise ValueError(f"not a directory entry name: {name!r}")
    return raw


# ---------------------------------------------------------------- decoding replies
# The client side again (tests, fake front ends). Replies come from p9share
# itself in production, so these raise FuseDecodeError only for a reply that
# does not parse.


class Reply(NamedTuple):
    unique: int
    error: int  # 0 or a positive errno
    body: bytes


def decode_reply(data: bytes | bytearray | memoryview) -> Reply:
    n = len(data)
    if n < OUT_HEADER_SIZE:
        raise FuseDecodeError(f"reply of {n} bytes is shorter than the 16-byte fuse_out_header")
    length, error, unique = OUT_HEADER.unpack_from(data)
    if length != n:
        raise FuseDecodeError(f"fuse_out_header.len is {length} but the reply has {n} bytes")
    if error > 0 or error < -4095:
        raise FuseDecodeError(f"reply error {error} is not 0 or a negated errno")
    if error and n != OUT_HEADER_SIZE:
        raise FuseDecodeError("an error reply carries a body")
    return Reply(unique, -error, bytes(data[OUT_HEADER_SIZE:]))


def _exact(st: struct.Struct, body: bytes, what: str) -> tuple[int, ...]:
    if len(body) != st.size:
        raise FuseDecodeError(f"{what} is {len(body)} bytes, expected {st.size}")
    return st.unpack(body)


def parse_entry_out(body: bytes) -> EntryOut:
    v = _exact(ENTRY_OUT, body, "fuse_entry_out")
    return EntryOut(v[0], v[1], v[2], v[3], v[4], v[5], Attr(*v[6:]))


def parse_attr_out(body: bytes) -> tuple[int, int, Attr]:
    v = _exact(ATTR_OUT, body, "fuse_attr_out")
    return v[0], v[1], Attr(*v[2:])


def parse_open_out(body: bytes) -> tuple[int, int]:
    fh, flags = _exact(OPEN_OUT, body, "fuse_open_out")
    return fh, flags


def parse_create_out(body: bytes) -> tuple[EntryOut, int, int]:
    v = _exact(CREATE_OUT, body, "fuse_entry_out + fuse_open_out")
    return EntryOut(v[0], v[1], v[2], v[3], v[4], v[5], Attr(*v[6:22])), v[22], v[23]


def parse_write_out(body: bytes) -> int:
    return _exact(WRITE_OUT, body, "fuse_write_out")[0]


def parse_xattr_size(body: bytes) -> int:
    return _exact(GETXATTR_OUT, body, "fuse_getxattr_out")[0]


def parse_statfs_out(body: bytes) -> StatfsOut:
    return StatfsOut(*_exact(STATFS_OUT, body, "fuse_statfs_out"))


def parse_lk_out(body: bytes) -> FileLock:
    return FileLock(*_exact(LK_OUT, body, "fuse_lk_out"))


def parse_lseek_out(body: bytes) -> int:
    return _exact(LSEEK_OUT, body, "fuse_lseek_out")[0]


def parse_init_out(body: bytes) -> InitOut:
    if len(body) == 8:  # major-only answer
        major, minor = struct.unpack("<II", body)
        return InitOut(major, minor, 0, 0, 0, 0, 0, 0, 0, 0)
    v = _exact(INIT_OUT, body, "fuse_init_out")
    flags = v[3]
    if flags & INIT_EXT:
        flags = (flags & ~INIT_EXT) | (v[10] << 32)
    return InitOut(v[0], v[1], v[2], flags, v[4], v[5], v[6], v[7], v[8], v[9])


class Dirent(NamedTuple):
    ino: int
    off: int
    type: int
    name: str
    entry: EntryOut | None  # READDIRPLUS only


def parse_dirents(body: bytes, plus: bool) -> list[Dirent]:
    out: list[Dirent] = []
    pos = 0
    head = (ENTRY_OUT.size if plus else 0) + DIRENT.size
    while pos < len(body):
        if pos + head > len(body):
            raise FuseDecodeError(f"directory record at {pos} is truncated")
        entry = None
        if plus:
            entry = parse_entry_out(body[pos : pos + ENTRY_OUT.size])
        ino, off, namelen, dtype = DIRENT.unpack_from(body, pos + head - DIRENT.size)
        end = pos + head + namelen
        padded = pos + ((head + namelen + 7) & ~7)
        if padded > len(body):
            raise FuseDecodeError(f"directory record at {pos} runs past the body")
        out.append(Dirent(ino, off, dtype, _reply_str(body[pos + head : end]), entry))
        pos = padded
    return out


def parse_names(body: bytes) -> list[str]:
    """LISTXATTR's list: NUL-terminated names back to back."""
    if body and body[-1] != 0:
        raise FuseDecodeError("xattr list does not end with NUL")
    return [_reply_str(n) for n in body.split(b"\x00")[:-1]]


def _reply_str(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise FuseDecodeError("name in a reply is not valid UTF-8") from None
