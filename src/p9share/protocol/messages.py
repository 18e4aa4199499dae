"""Typed 9P messages with encode and decode, for all three dialects.

Each message class lists its body fields in FIELDS as (name, kind) pairs; a
codec compiled once per (class, dialect) packs runs of fixed-size fields with a
single struct.Struct, which keeps the hot path to a few C calls. Kinds:

  u8 u16 u32 u64   integers             s      string
  qid              13-byte qid          wnames nwname[2] + names (<= 16)
  qids             nwqid[2] + qids      data   count[4] + bytes
  stat             n[2] + 9P2000 stat   n_uname  u32 only in .u / .L
  ext              string only in .u    errno    u32 only in .u
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .constants import MAXWELEM, NONUNAME, Dialect, MsgType
from .wire import (
    HEADER,
    QID,
    U16,
    U32,
    ProtocolError,
    Qid,
    decode_string,
    encode_string,
)

_NO_QID = Qid(0, 0, 0)
_FIXED = {"u8": "B", "u16": "H", "u32": "I", "u64": "Q", "qid": "BIQ"}


@dataclass(slots=True)
class Stat:
    """The 9P2000 stat structure; the last four fields exist only in .u."""

    type: int = 0
    dev: int = 0
    qid: Qid = _NO_QID
    mode: int = 0
    atime: int = 0
    mtime: int = 0
    length: int = 0
    name: str = ""
    uid: str = ""
    gid: str = ""
    muid: str = ""
    extension: str = ""
    n_uid: int = NONUNAME
    n_gid: int = NONUNAME
    n_muid: int = NONUNAME

    _HEAD: ClassVar[struct.Struct] = struct.Struct("<HHIBIQIIIQ")

    def encode(self, dialect: Dialect) -> bytes:
        """Encode with its own size[2] prefix (the form used in directory reads)."""
        parts = [
            self._HEAD.pack(
                0,
                self.type,
                self.dev,
                self.qid.type,
                self.qid.version,
                self.qid.path,
                self.mode,
                self.atime,
                self.mtime,
                self.length,
            )[2:],
            encode_string(self.name),
            encode_string(self.uid),
            encode_string(self.gid),
            encode_string(self.muid),
        ]
        if dialect.is_dotu:
            parts.append(encode_string(self.extension))
            parts.append(struct.pack("<III", self.n_uid, self.n_gid, self.n_muid))
        body = b"".join(parts)
        return U16.pack(len(body)) + body

    @classmethod
    def decode(cls, buf: bytes | memoryview, off: int, dialect: Dialect) -> tuple[Stat, int]:
        """Decode one size[2]-prefixed stat at off; return it and the offset after it."""
        if off + 2 > len(buf):
            raise ProtocolError("stat size runs past the end")
        (size,) = U16.unpack_from(buf, off)
        end = off + 2 + size
        if end > len(buf):
            raise ProtocolError("stat runs past the end of the message")
        sub = memoryview(buf)[:end]
        p = off
        if p + cls._HEAD.size > end:
            raise ProtocolError("stat too short")
        (_, typ, dev, qt, qv, qp, mode, atime, mtime, length) = cls._HEAD.unpack_from(sub, p)
        p += cls._HEAD.size
        name, p = decode_string(sub, p)
        uid, p = decode_string(sub, p)
        gid, p = decode_string(sub, p)
        muid, p = decode_string(sub, p)
        st = cls(typ, dev, Qid(qt, qv, qp), mode, atime, mtime, length, name, uid, gid, muid)
        if dialect.is_dotu:
            st.extension, p = decode_string(sub, p)
            if p + 12 > end:
                raise ProtocolError("9P2000.u stat too short")
            st.n_uid, st.n_gid, st.n_muid = struct.unpack_from("<III", sub, p)
            p += 12
        if p != end:
            raise ProtocolError("stat size does not match its contents")
        return st, end


class Message:
    """Base of all messages. TYPE is the wire type, FIELDS the body layout."""

    __slots__ = ()
    TYPE: ClassVar[MsgType]
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = ()

    def encode(self, tag: int, dialect: Dialect = Dialect.P9P2000L) -> bytes:
        return encode_message(self, tag, dialect)


# ----------------------------------------------------------------- messages --
# The .L-only and base messages, T before R, in wire-number order.


@dataclass(slots=True)
class Tlerror(Message):
    TYPE = MsgType.TLERROR


@dataclass(slots=True)
class Rlerror(Message):
    TYPE = MsgType.RLERROR
    FIELDS = (("ecode", "u32"),)
    ecode: int


@dataclass(slots=True)
class Tstatfs(Message):
    TYPE = MsgType.TSTATFS
    FIELDS = (("fid", "u32"),)
    fid: int


@dataclass(slots=True)
class Rstatfs(Message):
    TYPE = MsgType.RSTATFS
    FIELDS = (
        ("type", "u32"),
        ("bsize", "u32"),
        ("blocks", "u64"),
        ("bfree", "u64"),
        ("bavail", "u64"),
        ("files", "u64"),
        ("ffree", "u64"),
        ("fsid", "u64"),
        ("namelen", "u32"),
    )
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
class Tlopen(Message):
    TYPE = MsgType.TLOPEN
    FIELDS = (("fid", "u32"), ("flags", "u32"))
    fid: int
    flags: int


@dataclass(slots=True)
class Rlopen(Message):
    TYPE = MsgType.RLOPEN
    FIELDS = (("qid", "qid"), ("iounit", "u32"))
    qid: Qid
    iounit: int


@dataclass(slots=True)
class Tlcreate(Message):
    TYPE = MsgType.TLCREATE
    FIELDS = (("fid", "u32"), ("name", "s"), ("flags", "u32"), ("mode", "u32"), ("gid", "u32"))
    fid: int
    name: str
    flags: int
    mode: int
    gid: int


@dataclass(slots=True)
class Rlcreate(Message):
    TYPE = MsgType.RLCREATE
    FIELDS = (("qid", "qid"), ("iounit", "u32"))
    qid: Qid
    iounit: int


@dataclass(slots=True)
class Tsymlink(Message):
    TYPE = MsgType.TSYMLINK
    FIELDS = (("dfid", "u32"), ("name", "s"), ("symtgt", "s"), ("gid", "u32"))
    dfid: int
    name: str
    symtgt: str
    gid: int


@dataclass(slots=True)
class Rsymlink(Message):
    TYPE = MsgType.RSYMLINK
    FIELDS = (("qid", "qid"),)
    qid: Qid


@dataclass(slots=True)
class Tmknod(Message):
    TYPE = MsgType.TMKNOD
    FIELDS = (
        ("dfid", "u32"),
        ("name", "s"),
        ("mode", "u32"),
        ("major", "u32"),
        ("minor", "u32"),
        ("gid", "u32"),
    )
    dfid: int
    name: str
    mode: int
    major: int
    minor: int
    gid: int


@dataclass(slots=True)
class Rmknod(Message):
    TYPE = MsgType.RMKNOD
    FIELDS = (("qid", "qid"),)
    qid: Qid


@dataclass(slots=True)
class Trename(Message):
    TYPE = MsgType.TRENAME
    FIELDS = (("fid", "u32"), ("dfid", "u32"), ("name", "s"))
    fid: int
    dfid: int
    name: str


@dataclass(slots=True)
class Rrename(Message):
    TYPE = MsgType.RRENAME


@dataclass(slots=True)
class Treadlink(Message):
    TYPE = MsgType.TREADLINK
    FIELDS = (("fid", "u32"),)
    fid: int


@dataclass(slots=True)
class Rreadlink(Message):
    TYPE = MsgType.RREADLINK
    FIELDS = (("target", "s"),)
    target: str


@dataclass(slots=True)
class Tgetattr(Message):
    TYPE = MsgType.TGETATTR
    FIELDS = (("fid", "u32"), ("request_mask", "u64"))
    fid: int
    request_mask: int


@dataclass(slots=True)
class Rgetattr(Message):
    TYPE = MsgType.RGETATTR
    FIELDS = (
        ("valid", "u64"),
        ("qid", "qid"),
        ("mode", "u32"),
        ("uid", "u32"),
        ("gid", "u32"),
        ("nlink", "u64"),
        ("rdev", "u64"),
        ("size", "u64"),
        ("blksize", "u64"),
        ("blocks", "u64"),
        ("atime_sec", "u64"),
        ("atime_nsec", "u64"),
        ("mtime_sec", "u64"),
        ("mtime_nsec", "u64"),
        ("ctime_sec", "u64"),
        ("ctime_nsec", "u64"),
        ("btime_sec", "u64"),
        ("btime_nsec", "u64"),
        ("gen", "u64"),
        ("data_version", "u64"),
    )
    valid: int
    qid: Qid
    mode: int
    uid: int
    gid: int
    nlink: int
    rdev: int
    size: int
    blksize: int
    blocks: int
    atime_sec: int
    atime_nsec: int
    mtime_sec: int
    mtime_nsec: int
    ctime_sec: int
    ctime_nsec: int
    btime_sec: int
    btime_nsec: int
    gen: int
    data_version: int


@dataclass(slots=True)
class Tsetattr(Message):
    TYPE = MsgType.TSETATTR
    FIELDS = (
        ("fid", "u32"),
        ("valid", "u32"),
        ("mode", "u32"),
        ("uid", "u32"),
        ("gid", "u32"),
        ("size", "u64"),
        ("atime_sec", "u64"),
        ("atime_nsec", "u64"),
        ("mtime_sec", "u64"),
        ("mtime_nsec", "u64"),
    )
    fid: int
    valid: int
    mode: int
    uid: int
    gid: int
    size: int
    atime_sec: int
    atime_nsec: int
    mtime_sec: int
    mtime_nsec: int


@dataclass(slots=True)
class Rsetattr(Message):
    TYPE = MsgType.RSETATTR


@dataclass(slots=True)
class Txattrwalk(Message):
    TYPE = MsgType.TXATTRWALK
    FIELDS = (("fid", "u32"), ("newfid", "u32"), ("name", "s"))
    fid: int
    newfid: int
    name: str


@dataclass(slots=True)
class Rxattrwalk(Message):
    TYPE = MsgType.RXATTRWALK
    FIELDS = (("size", "u64"),)
    size: int


@dataclass(slots=True)
class Txattrcreate(Message):
    TYPE = MsgType.TXATTRCREATE
    FIELDS = (("fid", "u32"), ("name", "s"), ("attr_size", "u64"), ("flags", "u32"))
    fid: int
    name: str
    attr_size: int
    flags: int


@dataclass(slots=True)
class Rxattrcreate(Message):
    TYPE = MsgType.RXATTRCREATE


@dataclass(slots=True)
class Treaddir(Message):
    TYPE = MsgType.TREADDIR
    FIELDS = (("fid", "u32"), ("offset", "u64"), ("count", "u32"))
    fid: int
    offset: int
    count: int


@dataclass(slots=True)
class Rreaddir(Message):
    """data holds packed entries; see encode_dirent and decode_dirents."""

    TYPE = MsgType.RREADDIR
    FIELDS = (("data", "data"),)
    data: bytes | memoryview


@dataclass(slots=True)
class Tfsync(Message):
    TYPE = MsgType.TFSYNC
    FIELDS = (("fid", "u32"), ("datasync", "u32"))
    fid: int
    datasync: int


@dataclass(slots=True)
class Rfsync(Message):
    TYPE = MsgType.RFSYNC


@dataclass(slots=True)
class Tlock(Message):
    TYPE = MsgType.TLOCK
    FIELDS = (
        ("fid", "u32"),
        ("type", "u8"),
        ("flags", "u32"),
        ("start", "u64"),
        ("length", "u64"),
        ("proc_id", "u32"),
        ("client_id", "s"),
    )
    fid: int
    type: int
    flags: int
    start: int
    length: int
    proc_id: int
    client_id: str


@dataclass(slots=True)
class Rlock(Message):
    TYPE = MsgType.RLOCK
    FIELDS = (("status", "u8"),)
    status: int


@dataclass(slots=True)
class Tgetlock(Message):
    TYPE = MsgType.TGETLOCK
    FIELDS = (
        ("fid", "u32"),
        ("type", "u8"),
        ("start", "u64"),
        ("length", "u64"),
        ("proc_id", "u32"),
        ("client_id", "s"),
    )
    fid: int
    type: int
    start: int
    length: int
    proc_id: int
    client_id: str


@dataclass(slots=True)
class Rgetlock(Message):
    TYPE = MsgType.RGETLOCK
    FIELDS = (
        ("type", "u8"),
        ("start", "u64"),
        ("length", "u64"),
        ("proc_id", "u32"),
        ("client_id", "s"),
    )
    type: int
    start: int
    length: int
    proc_id: int
    client_id: str


@dataclass(slots=True)
class Tlink(Message):
    TYPE = MsgType.TLINK
    FIELDS = (("dfid", "u32"), ("fid", "u32"), ("name", "s"))
    dfid: int
    fid: int
    name: str


@dataclass(slots=True)
class Rlink(Message):
    TYPE = MsgType.RLINK


@dataclass(slots=True)
class Tmkdir(Message):
    TYPE = MsgType.TMKDIR
    FIELDS = (("dfid", "u32"), ("name", "s"), ("mode", "u32"), ("gid", "u32"))
    dfid: int
    name: str
    mode: int
    gid: int


@dataclass(slots=True)
class Rmkdir(Message):
    TYPE = MsgType.RMKDIR
    FIELDS = (("qid", "qid"),)
    qid: Qid


@dataclass(slots=True)
class Trenameat(Message):
    TYPE = MsgType.TRENAMEAT
    FIELDS = (("olddirfid", "u32"), ("oldname", "s"), ("newdirfid", "u32"), ("newname", "s"))
    olddirfid: int
    oldname: str
    newdirfid: int
    newname: str


@dataclass(slots=True)
class Rrenameat(Message):
    TYPE = MsgType.RRENAMEAT


@dataclass(slots=True)
class Tunlinkat(Message):
    TYPE = MsgType.TUNLINKAT
    FIELDS = (("dirfid", "u32"), ("name", "s"), ("flags", "u32"))
    dirfid: int
    name: str
    flags: int


@dataclass(slots=True)
class Runlinkat(Message):
    TYPE = MsgType.RUNLINKAT


@dataclass(slots=True)
class Tversion(Message):
    TYPE = MsgType.TVERSION
    FIELDS = (("msize", "u32"), ("version", "s"))
    msize: int
    version: str


@dataclass(slots=True)
class Rversion(Message):
    TYPE = MsgType.RVERSION
    FIELDS = (("msize", "u32"), ("version", "s"))
    msize: int
    version: str


@dataclass(slots=True)
class Tauth(Message):
    TYPE = MsgType.TAUTH
    FIELDS = (("afid", "u32"), ("uname", "s"), ("aname", "s"), ("n_uname", "n_uname"))
    afid: int
    uname: str
    aname: str
    n_uname: int = NONUNAME


@dataclass(slots=True)
class Rauth(Message):
    TYPE = MsgType.RAUTH
    FIELDS = (("aqid", "qid"),)
    aqid: Qid


@dataclass(slots=True)
class Tattach(Message):
    TYPE = MsgType.TATTACH
    FIELDS = (
        ("fid", "u32"),
        ("afid", "u32"),
        ("uname", "s"),
        ("aname", "s"),
        ("n_uname", "n_uname"),
    )
    fid: int
    afid: int
    uname: str
    aname: str
    n_uname: int = NONUNAME


@dataclass(slots=True)
class Rattach(Message):
    TYPE = MsgType.RATTACH
    FIELDS = (("qid", "qid"),)
    qid: Qid


@dataclass(slots=True)
class Rerror(Message):
    TYPE = MsgType.RERROR
    FIELDS = (("ename", "s"), ("errno", "errno"))
    ename: str
    errno: int = 0


@dataclass(slots=True)
class Tflush(Message):
    TYPE = MsgType.TFLUSH
    FIELDS = (("oldtag", "u16"),)
    oldtag: int


@dataclass(slots=True)
class Rflush(Message):
    TYPE = MsgType.RFLUSH


@dataclass(slots=True)
class Twalk(Message):
    TYPE = MsgType.TWALK
    FIELDS = (("fid", "u32"), ("newfid", "u32"), ("wnames", "wnames"))
    fid: int
    newfid: int
    wnames: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Rwalk(Message):
    TYPE = MsgType.RWALK
    FIELDS = (("qids", "qids"),)
    qids: list[Qid] = field(default_factory=list)


@dataclass(slots=True)
class Topen(Message):
    TYPE = MsgType.TOPEN
    FIELDS = (("fid", "u32"), ("mode", "u8"))
    fid: int
    mode: int


@dataclass(slots=True)
class Ropen(Message):
    TYPE = MsgType.ROPEN
    FIELDS = (("qid", "qid"), ("iounit", "u32"))
    qid: Qid
    iounit: int


@dataclass(slots=True)
class Tcreate(Message):
    TYPE = MsgType.TCREATE
    FIELDS = (
        ("fid", "u32"),
        ("name", "s"),
        ("perm", "u32"),
        ("mode", "u8"),
        ("extension", "ext"),
    )
    fid: int
    name: str
    perm: int
    mode: int
    extension: str = ""


@dataclass(slots=True)
class Rcreate(Message):
    TYPE = MsgType.RCREATE
    FIELDS = (("qid", "qid"), ("iounit", "u32"))
    qid: Qid
    iounit: int


@dataclass(slots=True)
class Tread(Message):
    TYPE = MsgType.TREAD
    FIELDS = (("fid", "u32"), ("offset", "u64"), ("count", "u32"))
    fid: int
    offset: int
    count: int


@dataclass(slots=True)
class Rread(Message):
    TYPE = MsgType.RREAD
    FIELDS = (("data", "data"),)
    data: bytes | memoryview


@dataclass(slots=True)
class Twrite(Message):
    TYPE = MsgType.TWRITE
    FIELDS = (("fid", "u32"), ("offset", "u64"), ("data", "data"))
    fid: int
    offset: int
    data: bytes | memoryview


@dataclass(slots=True)
class Rwrite(Message):
    TYPE = MsgType.RWRITE
    FIELDS = (("count", "u32"),)
    count: int


@dataclass(slots=True)
class Tclunk(Message):
    TYPE = MsgType.TCLUNK
    FIELDS = (("fid", "u32"),)
    fid: int


@dataclass(slots=True)
class Rclunk(Message):
    TYPE = MsgType.RCLUNK


@dataclass(slots=True)
class Tremove(Message):
    TYPE = MsgType.TREMOVE
    FIELDS = (("fid", "u32"),)
    fid: int


@dataclass(slots=True)
class Rremove(Message):
    TYPE = MsgType.RREMOVE


@dataclass(slots=True)
class Tstat(Message):
    TYPE = MsgType.TSTAT
    FIELDS = (("fid", "u32"),)
    fid: int


@dataclass(slots=True)
class Rstat(Message):
    TYPE = MsgType.RSTAT
    FIELDS = (("stat", "stat"),)
    stat: Stat


@dataclass(slots=True)
class Twstat(Message):
    TYPE = MsgType.TWSTAT
    FIELDS = (("fid", "u32"), ("stat", "stat"))
    fid: int
    stat: Stat


@dataclass(slots=True)
class Rwstat(Message):
    TYPE = MsgType.RWSTAT


ALL_MESSAGES: tuple[type[Message], ...] = tuple(
    c
    for c in list(globals().values())
    if isinstance(c, type) and issubclass(c, Message) and c is not Message
)
MESSAGE_BY_TYPE: dict[int, type[Message]] = {int(c.TYPE): c for c in ALL_MESSAGES}

# Messages each dialect defines. Tlerror/Terror are never valid requests.
_BASE = {
    MsgType.TVERSION, MsgType.RVERSION, MsgType.TAUTH, MsgType.RAUTH, MsgType.TATTACH,
    MsgType.RATTACH, MsgType.TFLUSH, MsgType.RFLUSH, MsgType.TWALK, MsgType.RWALK,
    MsgType.TREAD, MsgType.RREAD, MsgType.TWRITE, MsgType.RWRITE, MsgType.TCLUNK,
    MsgType.RCLUNK, MsgType.TREMOVE, MsgType.RREMOVE,
}  # fmt: skip
_CLASSIC = {
    MsgType.RERROR, MsgType.TOPEN, MsgType.ROPEN, MsgType.TCREATE, MsgType.RCREATE,
    MsgType.TSTAT, MsgType.RSTAT, MsgType.TWSTAT, MsgType.RWSTAT,
}  # fmt: skip
_DOTL = {t for t in MsgType if t < 100 and t != MsgType.TLERROR}
DIALECT_MESSAGES: dict[Dialect, frozenset[MsgType]] = {
    Dialect.P9P2000: frozenset(_BASE | _CLASSIC),
    Dialect.P9P2000U: frozenset(_BASE | _CLASSIC),
    Dialect.P9P2000L: frozenset(_BASE | _DOTL),
}


# -------------------------------------------------------------------- codec --

Decoder = Callable[[memoryview], Message]
Encoder = Callable[[Message], list[bytes | memoryview]]


def _present(kind: str, dialect: Dialect) -> bool:
    if kind == "n_uname":
        return dialect.has_n_uname
    if kind in ("ext", "errno"):
        return dialect.is_dotu
    return True


def _steps(cls: type[Message], dialect: Dialect) -> list[tuple[str, Any, list[str]]]:
    """Group the fields present in this dialect into ('fixed', Struct, names) runs
    and single variable-size steps (kind, None, [name])."""
    steps: list[tuple[str, Any, list[str]]] = []
    fmt = ""
    names: list[str] = []
    for name, kind in cls.FIELDS:
        if not _present(kind, dialect):
            continue
        kind = {"n_uname": "u32", "errno": "u32", "ext": "s"}.get(kind, kind)
        if kind in _FIXED:
            fmt += _FIXED[kind]
            names.append(name if kind != "qid" else "\0qid:" + name)
            continue
        if fmt:
            steps.append(("fixed", struct.Struct("<" + fmt), names))
            fmt, names = "", []
        steps.append((kind, None, [name]))
    if fmt:
        steps.append(("fixed", struct.Struct("<" + fmt), names))
    return steps


def _fixed_values(fnames: list[str]) -> Callable[[tuple[int, ...]], tuple[Any, ...]]:
    """Compiled: a fixed run's unpacked integers -> its field values (qids built)."""
    exprs: list[str] = []
    i = 0
    for fname in fnames:
        if fname.startswith("\0qid:"):
            exprs.append(f"Qid(raw[{i}], raw[{i + 1}], raw[{i + 2}])")
            i += 3
        else:
            exprs.append(f"raw[{i}]")
            i += 1
    fn: Callable[[tuple[int, ...]], tuple[Any, ...]] = eval(
        f"lambda raw: ({', '.join(exprs)},)", {"Qid": Qid}
    )
    return fn


def _fixed_packer(st: struct.Struct, fnames: list[str]) -> Callable[[Message], bytes]:
    """Compiled: a message -> its fixed run packed (qids spread)."""
    args = ", ".join(f"*msg.{f[5:]}" if f.startswith("\0qid:") else f"msg.{f}" for f in fnames)
    fn: Callable[[Message], bytes] = eval(f"lambda msg: pack({args})", {"pack": st.pack})
    return fn


def _make_decoder(cls: type[Message], dialect: Dialect) -> Decoder:
    steps = _steps(cls, dialect)
    names = [n for n, k in cls.FIELDS if _present(k, dialect)]
    if len(steps) == 1 and steps[0][0] == "fixed" and _positional(cls, names):
        # the common case (Tclunk, Tgetattr, Tread, ...): one unpack, positional init
        st, conv = steps[0][1], _fixed_values(steps[0][2])
        size, name, unpack = st.size, cls.__name__, st.unpack_from
        has_qid = any(f.startswith("\0qid:") for f in steps[0][2])

        def decode_fixed(body: memoryview) -> Message:
            end = len(body)
            if end != size:
                if size > end:
                    raise ProtocolError(f"{name} too short")
                raise ProtocolError(f"{end - size} trailing bytes after {name}")
            if has_qid:
                return cls(*conv(unpack(body, 0)))
            return cls(*unpack(body, 0))  # the values are the fields

        return decode_fixed

    convs = [_fixed_values(fn) if k == "fixed" else None for k, _, fn in steps]
    positional = _positional(cls, names)
    if positional and all(k in ("fixed", "s", "data", "wnames") for k, _, _ in steps):
        return _compiled_decoder(cls, steps, convs)
    # the rest carry qids or a stat (Rwalk, Rstat, Twstat): a loop over the steps
    if not positional or any(k not in ("fixed", "qids", "stat") for k, _, _ in steps):
        raise TypeError(f"{cls.__name__}: no decoder for its field layout")

    def decode(body: memoryview) -> Message:
        off = 0
        end = len(body)
        values: list[Any] = []
        for (kind, st, _fnames), conv in zip(steps, convs, strict=True):
            if conv is not None:
                if off + st.size > end:
                    raise ProtocolError(f"{cls.__name__} too short")
                values.extend(conv(st.unpack_from(body, off)))
                off += st.size
            elif kind == "qids":
                if off + 2 > end:
                    raise ProtocolError("nwqid missing")
                (n,) = U16.unpack_from(body, off)
                off += 2
                if n > MAXWELEM:
                    raise ProtocolError(f"nwqid {n} exceeds {MAXWELEM}")
                if off + 13 * n > end:
                    raise ProtocolError("qids run past the end")
                qs = []
                for _ in range(n):
                    qs.append(Qid(*QID.unpack_from(body, off)))
                    off += 13
                values.append(qs)
            elif kind == "stat":
                if off + 2 > end:
                    raise ProtocolError("stat length missing")
                (n,) = U16.unpack_from(body, off)
                off += 2
                if off + n > end:
                    raise ProtocolError("stat runs past the end")
                st_, after = Stat.decode(body[: off + n], off, dialect)
                if after != off + n:
                    raise ProtocolError("stat length does not match")
                off = after
                values.append(st_)
        if off != end:
            raise ProtocolError(f"{end - off} trailing bytes after {cls.__name__}")
        return cls(*values)

    return decode


def _decode_wnames(body: memoryview, off: int, end: int) -> tuple[list[str], int]:
    if off + 2 > end:
        raise ProtocolError("nwname missing")
    (n,) = U16.unpack_from(body, off)
    off += 2
    if n > MAXWELEM:
        raise ProtocolError(f"nwname {n} exceeds {MAXWELEM}")
    names = []
    for _ in range(n):
        name, off = decode_string(body, off)
        names.append(name)
    return names, off


def _compiled_decoder(
    cls: type[Message],
    steps: list[tuple[str, Any, list[str]]],
    convs: list[Callable[[tuple[int, ...]], tuple[Any, ...]] | None],
) -> Decoder:
    """Straight-line decoder for a message of fixed runs, strings, data and
    names (Twalk, Tlcreate, Twrite, ...): what the generic loop does, with the
    step list unrolled at import. Same checks, same error texts."""
    name = cls.__name__
    env: dict[str, Any] = {
        "cls": cls, "ProtocolError": ProtocolError, "decode_string": decode_string,
        "u32": U32.unpack_from, "wnames": _decode_wnames,
    }  # fmt: skip
    lines = ["def decode(body):", "    end = len(body)", "    off = 0"]
    args: list[str] = []
    for i, ((kind, st, _), conv) in enumerate(zip(steps, convs, strict=True)):
        if kind == "fixed":
            env[f"unpack{i}"], env[f"conv{i}"] = st.unpack_from, conv
            lines += [
                f"    if off + {st.size} > end:",
                f"        raise ProtocolError('{name} too short')",
                f"    v{i} = conv{i}(unpack{i}(body, off))",
                f"    off += {st.size}",
            ]
            args.append(f"*v{i}")
        elif kind == "s":
            lines.append(f"    v{i}, off = decode_string(body, off)")
            args.append(f"v{i}")
        elif kind == "data":
            lines += [
                "    if off + 4 > end:",
                f"        raise ProtocolError('{name} count missing')",
                "    (n,) = u32(body, off)",
                "    off += 4",
                "    if off + n > end:",
                f"        raise ProtocolError(f'{name} count {{n}} exceeds the bytes present')",
                f"    v{i} = body[off : off + n]",
                "    off += n",
            ]
            args.append(f"v{i}")
        else:  # wnames
            lines.append(f"    v{i}, off = wnames(body, off, end)")
            args.append(f"v{i}")
    lines += [
        "    if off != end:",
        f"        raise ProtocolError(f'{{end - off}} trailing bytes after {name}')",
        f"    return cls({', '.join(args)})",
    ]
    exec("\n".join(lines), env)  # code built above from the message table
    fn: Decoder = env["decode"]
    return fn


def _positional(cls: type[Message], names: list[str]) -> bool:
    """Whether cls(*values) means the same as cls(**dict(zip(names, values)))."""
    fields = getattr(cls, "__dataclass_fields__", None)
    return fields is not None and list(fields)[: len(names)] == names


def _make_encoder(cls: type[Message], dialect: Dialect) -> Encoder:
    steps = _steps(cls, dialect)
    packers = {i: _fixed_packer(st, fn) for i, (k, st, fn) in enumerate(steps) if k == "fixed"}
    if not steps:
        return lambda msg: []
    if len(steps) == 1 and steps[0][0] == "fixed":
        pack = packers[0]
        return lambda msg: [pack(msg)]
    if len(steps) == 1 and steps[0][0] == "qids":  # Rwalk: a third of all replies
        field = steps[0][2][0]

        def encode_qids(msg: Message) -> list[bytes | memoryview]:
            v = getattr(msg, field)
            if len(v) > MAXWELEM:
                raise ValueError("more than 16 qids")
            return [U16.pack(len(v)) + b"".join([QID.pack(*q) for q in v])]

        return encode_qids

    def encode(msg: Message) -> list[bytes | memoryview]:
        out: list[bytes | memoryview] = []
        for i, (kind, _st, fnames) in enumerate(steps):
            if kind == "fixed":
                out.append(packers[i](msg))
                continue
            v = getattr(msg, fnames[0])
            if kind == "s":
                out.append(encode_string(v))
            elif kind == "data":
                out.append(U32.pack(len(v)))
                out.append(v)
            elif kind == "wnames":
                if len(v) > MAXWELEM:
                    raise ValueError("more than 16 names")
                out.append(U16.pack(len(v)))
                out.extend(encode_string(s) for s in v)
            elif kind == "qids":
                if len(v) > MAXWELEM:
                    raise ValueError("more than 16 qids")
                out.append(U16.pack(len(v)))
                out.extend(QID.pack(*q) for q in v)
            elif kind == "stat":
                enc = v.encode(dialect)
                out.append(U16.pack(len(enc)))
                out.append(enc)
        return out

    return encode


# One table per dialect, keyed by plain ints and classes: a (type, Dialect)
# key would hash an Enum in Python on every message.
_DECODERS: dict[Dialect, dict[int, Decoder]] = {d: {} for d in Dialect}
_ENCODERS: dict[Dialect, dict[type[Message], Encoder]] = {d: {} for d in Dialect}
for _cls in ALL_MESSAGES:
    for _d in Dialect:
        _DECODERS[_d][int(_cls.TYPE)] = _make_decoder(_cls, _d)
        _ENCODERS[_d][_cls] = _make_encoder(_cls, _d)


def request_decoders(dialect: Dialect) -> dict[int, Decoder]:
    """The decoders of the requests a server accepts in dialect, by type
    (Tversion excluded: it is valid in every state and decoded as 9P2000)."""
    allowed = DIALECT_MESSAGES[dialect]
    return {
        t: dec
        for t, dec in _DECODERS[dialect].items()
        if t in allowed and t % 2 == 0 and t != MsgType.TVERSION
    }


def encoders(dialect: Dialect) -> dict[type[Message], Encoder]:
    """Body encoders of every message in dialect, by class (see encode_parts)."""
    return _ENCODERS[dialect]


def encode_parts(msg: Message, tag: int, dialect: Dialect) -> list[bytes | memoryview]:
    """Encode as a list of buffers (header first) for sendmsg without a join."""
    parts = _ENCODERS[dialect][type(msg)](msg)
    size = 7 + sum(map(len, parts))
    if size > 0xFFFFFFFF:
        raise ValueError("message too large")
    parts.insert(0, HEADER.pack(size, msg.TYPE, tag))
    return parts


def encode_message(msg: Message, tag: int, dialect: Dialect = Dialect.P9P2000L) -> bytes:
    return b"".join(encode_parts(msg, tag, dialect))


def decode_body(mtype: int, body: memoryview, dialect: Dialect) -> Message:
    """Decode a message body of a known type. Raises ProtocolError."""
    dec = _DECODERS[dialect].get(mtype)
    if dec is None:
        raise ProtocolError(f"unknown message type {mtype}")
    try:
        return dec(body)
    except ProtocolError:
        raise
    except (struct.error, ValueError, TypeError) as e:  # defensive: never escape the codec
        raise ProtocolError(str(e)) from None


def decode_message(
    frame: bytes | memoryview, dialect: Dialect = Dialect.P9P2000L
) -> tuple[int, Message]:
    """Decode one whole frame (size included). Returns (tag, message)."""
    mv = memoryview(frame)
    if len(mv) < 7:
        raise ProtocolError("message shorter than its 7-byte header")
    size, mtype, tag = HEADER.unpack_from(mv, 0)
    if size != len(mv):
        raise ProtocolError(f"size field {size} does not match the {len(mv)} bytes present")
    return tag, decode_body(mtype, mv[7:], dialect)


# ----------------------------------------------------------- readdir entries --


@dataclass(slots=True)
class Dirent:
    """One Rreaddir entry: offset is the opaque cookie that resumes after it."""

    qid: Qid
    offset: int
    type: int
    name: str


_DIRENT_HEAD = struct.Struct("<BIQQB")


def encode_dirent(qid: Qid, offset: int, dtype: int, name: bytes) -> bytes:
    """name is already UTF-8 encoded (callers measure it against the count)."""
    return (
        _DIRENT_HEAD.pack(qid.type, qid.version, qid.path, offset, dtype)
        + U16.pack(len(name))
        + name
    )


def dirent_size(name: bytes) -> int:
    return _DIRENT_HEAD.size + 2 + len(name)


def decode_dirents(data: bytes | memoryview) -> list[Dirent]:
    out: list[Dirent] = []
    off = 0
    mv = memoryview(data)
    while off < len(mv):
        if off + _DIRENT_HEAD.size > len(mv):
            raise ProtocolError("truncated readdir entry")
        qt, qv, qp, cookie, dtype = _DIRENT_HEAD.unpack_from(mv, off)
        name, off = decode_string(mv, off + _DIRENT_HEAD.size)
        out.append(Dirent(Qid(qt, qv, qp), cookie, dtype, name))
    return out


def decode_stats(data: bytes | memoryview, dialect: Dialect) -> list[Stat]:
    """Decode the stat entries of a 9P2000/.u directory read."""
    out: list[Stat] = []
    off = 0
    while off < len(data):
        st, off = Stat.decode(data, off, dialect)
        out.append(st)
    return out
