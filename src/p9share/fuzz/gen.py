"""Session generation and mutation (sans-IO: frames out, replies in).

A SessionGen plays one client connection: Tversion, Tattach, then operations
drawn from its dialect's table, each built from what earlier replies
confirmed (fids that exist, which are directories or open, names that exist).
A fraction of the messages is mutated before it is sent. Mutations of the
body keep the frame well formed (the server must answer them); mutations of
the framing (lying size fields, truncated frames) are fatal by design and end
the session: the harness half-closes the socket and waits for the server to
close its side.

Every frame is encoded here from the message classes' FIELDS tables, by
encode_raw, which accepts what the codec refuses (bytes with NUL or invalid
UTF-8 in names, more than 16 walk names, strings of any length).
"""

from __future__ import annotations

import random
import stat as stat_mod
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..protocol import constants as c
from ..protocol import messages as m
from ..protocol.constants import NOFID, NONUNAME, NOTAG, Dialect, MsgType
from ..protocol.wire import HEADER, QID, Qid

U8_EDGES = (0, 1, 0x7F, 0x80, 0xFF)
U16_EDGES = (0, 1, 0x7FFF, 0x8000, 0xFFFE, 0xFFFF)
U32_EDGES = (0, 1, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFE, 0xFFFF_FFFF)
U64_EDGES = (
    0,
    1,
    0x7FFF_FFFF,
    0x8000_0000,
    0xFFFF_FFFF,
    0x1_0000_0000,
    0x7FFF_FFFF_FFFF_FFFF,
    0x8000_0000_0000_0000,
    0xFFFF_FFFF_FFFF_FFFE,
    0xFFFF_FFFF_FFFF_FFFF,
)
EDGES = {"u8": U8_EDGES, "u16": U16_EDGES, "u32": U32_EDGES, "u64": U64_EDGES}
WIDTH = {"u8": "B", "u16": "H", "u32": "I", "u64": "Q", "n_uname": "I", "errno": "I"}

BAD_NAMES: tuple[str | bytes, ...] = (
    "",
    ".",
    "..",
    "/",
    "a/b",
    "../..",
    "x" * 255,
    "x" * 256,
    "y" * 4096,
    "é" * 200,
    b"nul\x00name",
    b"\xff\xfe",
    b"\xc0\xaf",
    b"\xed\xa0\x80",
    "\u202e",
    "\n",
    " ",
    "user.p9share.uid",
    "user.virtfs.mode",
    "...",
    "./x",
    "x/",
    "/etc/passwd",
)
XATTR_NAMES = (
    "user.fuzz",
    "user.a",
    "user.p9share.uid",
    "user.p9share.mode",
    "user.virtfs.rdev",
    "security.capability",
    "security.selinux",
    "trusted.x",
    "system.posix_acl_access",
    "system.posix_acl_default",
    "system.x",
    "user.",
    "user",
    "",
    "os2.x",
)
MODES = (
    0o644,
    0o755,
    0o600,
    0o4755,
    0o2755,
    0o6777,
    0o1777,
    0o7777,
    0,
    0o777,
    stat_mod.S_IFREG | 0o644,
    stat_mod.S_IFIFO | 0o644,
    stat_mod.S_IFSOCK | 0o644,
    stat_mod.S_IFCHR | 0o600,
    stat_mod.S_IFBLK | 0o600,
    stat_mod.S_IFDIR | 0o755,
    stat_mod.S_IFLNK | 0o777,
    0o170000 | 0o644,
)
L_FLAGS = (
    c.L_O_RDONLY,
    c.L_O_WRONLY,
    c.L_O_RDWR,
    c.L_O_NOACCESS,
    c.L_O_RDWR | c.L_O_TRUNC,
    c.L_O_WRONLY | c.L_O_APPEND,
    c.L_O_RDONLY | c.L_O_DIRECTORY,
    c.L_O_RDWR | c.L_O_NOFOLLOW,
    c.L_O_RDWR | c.L_O_CREAT | c.L_O_EXCL,
    c.L_O_RDWR | c.L_O_SYNC | c.L_O_DIRECT,
    c.L_O_RDONLY | c.L_O_NOATIME | c.L_O_LARGEFILE | c.L_O_CLOEXEC,
    0xFFFFFFFF,
)
OMODES = (
    c.OREAD,
    c.OWRITE,
    c.ORDWR,
    c.OEXEC,
    c.ORDWR | c.OTRUNC,
    c.OREAD | c.ORCLOSE,
    c.OWRITE | c.OAPPEND,
    c.ORDWR | c.OEXCL,
    0xFF,
)
PERMS = (
    0o644,
    0o755,
    c.DMDIR | 0o755,
    c.DMSYMLINK | 0o777,
    c.DMLINK,
    c.DMDEVICE | 0o600,
    c.DMNAMEDPIPE | 0o644,
    c.DMSOCKET | 0o644,
    c.DMSETUID | 0o755,
    c.DMSETGID | 0o755,
    c.DMAPPEND | 0o644,
    c.DMEXCL | 0o644,
    c.DMTMP | 0o644,
    c.DMAUTH,
    c.DMMOUNT,
    0xFFFFFFFF,
)
FIDS_SPECIAL = (NOFID, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 12345)
PROBE_TAG = 0xFFFD  # the harness's own request after a burst
MSIZES = (8192, 8192 + 24, 65536 + 24, 131072 + 24, 1048576 + 24)


def _present(kind: str, dialect: Dialect) -> bool:
    if kind == "n_uname":
        return dialect.has_n_uname
    if kind in ("ext", "errno"):
        return dialect.is_dotu
    return True


def raw_string(v: str | bytes) -> bytes:
    raw = v.encode("utf-8", "surrogatepass") if isinstance(v, str) else v
    raw = raw[:0xFFFF]
    return struct.pack("<H", len(raw)) + raw


def raw_stat(st: m.Stat, dialect: Dialect) -> bytes:
    """A stat with its own size[2], with any strings (see encode_raw)."""
    head = struct.pack(
        "<HIBIQIIIQ",
        st.type,
        st.dev,
        st.qid.type,
        st.qid.version,
        st.qid.path,
        st.mode,
        st.atime,
        st.mtime,
        st.length,
    )
    body = head + b"".join(raw_string(s) for s in (st.name, st.uid, st.gid, st.muid))
    if dialect.is_dotu:
        body += raw_string(st.extension) + struct.pack("<III", st.n_uid, st.n_gid, st.n_muid)
    return struct.pack("<H", len(body)) + body


def encode_body(msg: m.Message, dialect: Dialect) -> bytes:
    """The body of msg as FIELDS lays it out, taking what encode_message refuses."""
    out: list[bytes] = []
    for name, kind in type(msg).FIELDS:
        if not _present(kind, dialect):
            continue
        v: Any = getattr(msg, name)
        if kind in WIDTH:
            out.append(struct.pack("<" + WIDTH[kind], v))
        elif kind == "qid":
            out.append(QID.pack(*v))
        elif kind in ("s", "ext"):
            out.append(raw_string(v))
        elif kind == "data":
            out.append(struct.pack("<I", len(v)) + bytes(v))
        elif kind == "wnames":
            out.append(struct.pack("<H", len(v)) + b"".join(raw_string(s) for s in v))
        elif kind == "qids":
            out.append(struct.pack("<H", len(v)) + b"".join(QID.pack(*q) for q in v))
        elif kind == "stat":
            enc = raw_stat(v, dialect)
            out.append(struct.pack("<H", len(enc)) + enc)
        else:  # pragma: no cover - a kind added to messages.py
            raise TypeError(f"unknown field kind {kind}")
    return b"".join(out)


def frame_of(mtype: int, tag: int, body: bytes) -> bytes:
    return HEADER.pack(7 + len(body), mtype, tag) + body


def known_bug(msg: m.Message | None) -> str:
    """The known (already reported) bug a message triggers, or "". Listed so
    a run can leave them out until their fix is merged (--skip-known)."""
    big = 1 << 31
    if isinstance(msg, m.Tmknod) and (msg.major >= big or msg.minor >= big):
        return "mknod-major-minor-2^31"
    if isinstance(msg, m.Tcreate) and isinstance(msg.extension, str):
        parts = msg.extension.split(" ")
        if (
            len(parts) == 3
            and parts[0] in ("b", "c")
            and all(p.isascii() and p.isdigit() for p in parts[1:])
            and any(big <= int(p) < 1 << 32 for p in parts[1:])
        ):
            return "dotu-create-device-2^31"
    return ""


@dataclass(slots=True)
class Frame:
    """One frame to send. msg is the message it was built from (None when the
    bytes no longer are one); fatal frames break the framing."""

    data: bytes
    tag: int
    msg: m.Message | None
    mutation: str = ""
    fatal: bool = False
    known: str = ""


@dataclass(slots=True)
class FidState:
    is_dir: bool
    opened: bool = False
    xattr: bool = False


@dataclass(slots=True)
class Options:
    mutate_rate: float = 0.3  # fraction of operations mutated
    fatal_rate: float = 0.05  # fraction of sessions ended by a framing mutation
    burst_rate: float = 0.15  # fraction of sessions ended by a pipelined burst
    ops_min: int = 8
    ops_max: int = 120
    skip_known: bool = False  # never send known_bug() messages
    uname: tuple[str, ...] = ("root", "1000", "nobody", "")
    n_uname: tuple[int, ...] = (0, 1000, 65534, NONUNAME, 100000)


@dataclass
class SessionGen:
    """One client connection's messages. next_frame() -> the frame to send
    (None: the session is over); on_reply() with the decoded reply (None if
    it could not be decoded) keeps the model in step."""

    rng: random.Random
    dialect: Dialect
    export: str
    opts: Options = field(default_factory=Options)
    fids: dict[int, FidState] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)
    ops_left: int = 0
    msize: int = 8192  # what the server's Rversion allowed
    _tag: int = 0
    _queue: list[m.Message] = field(default_factory=list)
    _started: bool = False
    _version_sent: bool = False
    done: bool = False

    def __post_init__(self) -> None:
        self.ops_left = self.rng.randint(self.opts.ops_min, self.opts.ops_max)
        self.names = ["f0", "d0"]

    # ---------------------------------------------------------------- out --
    def next_frame(self) -> Frame | None:
        if self.done:
            return None
        if not self._version_sent:
            self._version_sent = True
            msize = self.rng.choice(MSIZES)
            return self._frame(m.Tversion(msize, self.dialect.value), tag=NOTAG, mutate=False)
        if (not self._started or not self.fids) and self.ops_left > 0:
            self._started = True
            self.ops_left -= 1  # an attach that keeps failing still ends the session
            return self._frame(self._attach(0), mutate=False)
        if not self._queue:
            if self.ops_left <= 0:
                self.done = True
                if self.rng.random() < self.opts.fatal_rate:
                    return self._fatal()
                return None
            self.ops_left -= 1
            self._queue = self._operation()
        msg = self._queue.pop(0)
        return self._frame(msg, mutate=self.rng.random() < self.opts.mutate_rate)

    def _next_tag(self) -> int:
        self._tag = (self._tag + 1) % PROBE_TAG  # PROBE_TAG and NOTAG stay free
        return self._tag

    def _frame(self, msg: m.Message, tag: int | None = None, mutate: bool = False) -> Frame:
        if tag is None:
            tag = self._next_tag()
        for _ in range(8):  # a frame that lands on a known bug is redrawn
            if mutate:
                fr = self._mutated(msg, tag)
            else:
                fr = Frame(frame_of(msg.TYPE, tag, encode_body(msg, self.dialect)), tag, msg)
            fr.known = known_bug(fr.msg)
            if len(fr.data) > self.msize:  # the server must close: framing is lost
                fr.fatal = True
                fr.mutation = (fr.mutation + " " if fr.mutation else "") + "frame > msize"
            if not (fr.known and self.opts.skip_known):
                return fr
            mutate = True
        msg = m.Tflush(0)  # every draw was a known bug: send something harmless
        return Frame(frame_of(msg.TYPE, tag, encode_body(msg, self.dialect)), tag, msg)

    def burst(self) -> list[Frame]:
        """Requests sent back to back without waiting: some share a tag with
        one still in flight, some flush one. Never a fatal frame."""
        r = self.rng
        out: list[Frame] = []
        for _ in range(r.randint(3, 24)):
            for msg in self._operation():
                fr = self._frame(msg, mutate=r.random() < self.opts.mutate_rate)
                if fr.fatal:
                    continue
                if out and r.random() < 0.15:  # a tag already in flight
                    fr.tag = r.choice(out).tag
                    fr.data = fr.data[:5] + struct.pack("<H", fr.tag) + fr.data[7:]
                    fr.mutation = (fr.mutation + " " if fr.mutation else "") + "duplicate tag"
                out.append(fr)
                if out and r.random() < 0.1:
                    fl = m.Tflush(r.choice(out).tag)
                    tag = self._next_tag()
                    out.append(
                        Frame(frame_of(fl.TYPE, tag, encode_body(fl, self.dialect)), tag, fl)
                    )
        return out

    # --------------------------------------------------------- mutations --
    def _mutated(self, orig: m.Message, tag: int) -> Frame:
        r = self.rng
        msg = _copy(orig)
        fields = [(n, k) for n, k in type(msg).FIELDS if _present(k, self.dialect)]
        kind = r.random()
        ints = [(n, k) for n, k in fields if k in EDGES or k == "n_uname"]
        strs = [(n, k) for n, k in fields if k in ("s", "ext")]
        if kind < 0.35 and ints:
            name, k = r.choice(ints)
            edges = EDGES.get(k, U32_EDGES)
            setattr(msg, name, r.choice(edges))
            what = f"{name}={getattr(msg, name):#x}"
        elif kind < 0.5 and any("fid" in n for n, _ in fields):
            name = r.choice([n for n, _ in fields if "fid" in n])
            setattr(msg, name, r.choice((*FIDS_SPECIAL, *self.fids, r.randrange(1 << 32))))
            what = f"{name}={getattr(msg, name)}"
        elif kind < 0.62 and strs:
            name, _ = r.choice(strs)
            setattr(msg, name, r.choice(BAD_NAMES) if r.random() < 0.8 else _junk(r, 64))
            what = f"{name}=bad"
        elif kind < 0.66 and isinstance(msg, m.Twalk):
            msg.wnames = [r.choice((*self.names, "..", "."))] * r.choice((16, 17, 100))
            what = f"nwname={len(msg.wnames)}"
        else:
            return self._byte_mutation(msg, tag)
        body = encode_body(msg, self.dialect)
        if r.random() < 0.1:
            tag = r.choice((NOTAG, 0, tag))
            what += f" tag={tag}"
        return Frame(frame_of(msg.TYPE, tag, body), tag, msg, what)

    def _byte_mutation(self, msg: m.Message, tag: int) -> Frame:
        r = self.rng
        body = bytearray(encode_body(msg, self.dialect))
        mtype = int(msg.TYPE)
        k = r.randrange(6)
        if k == 0:  # swapped type: another request, a reply, or no type at all
            mtype = r.choice((r.choice(list(MsgType)), r.randrange(256)))
            what = f"type={mtype}"
            out: m.Message | None = None
        elif k == 1 and body:  # truncated body, size consistent
            body = body[: r.randrange(len(body))]
            what, out = f"truncated to {len(body)}", None
        elif k == 2:  # trailing junk, size consistent
            body += _junk(r, r.choice((1, 3, 17, 300)))
            what, out = "trailing junk", None
        elif k == 3 and body:  # random bytes flipped
            for _ in range(r.randint(1, 4)):
                body[r.randrange(len(body))] = r.randrange(256)
            what, out = "bytes flipped", None
        elif k == 4 and len(body) >= 2:  # a string or count length lies
            off = r.randrange(len(body) - 1)
            struct.pack_into("<H", body, off, r.choice(U16_EDGES))
            what, out = f"u16 at {off} lies", None
        else:  # Tflush of a tag not in flight / of itself
            fl = m.Tflush(r.choice((tag, 0, NOTAG, r.randrange(0x10000))))
            return Frame(frame_of(fl.TYPE, tag, encode_body(fl, self.dialect)), tag, fl, "flush")
        return Frame(frame_of(mtype, tag, bytes(body)), tag, out, what)

    def _fatal(self) -> Frame:
        """A frame whose size field cannot be trusted: the session ends."""
        r = self.rng
        msg = m.Tgetattr(0, c.GetattrMask.ALL) if self.dialect is c.Dialect.P9P2000L else m.Tstat(0)
        good = frame_of(msg.TYPE, 1, encode_body(msg, self.dialect))
        k = r.randrange(5)
        if k == 0:
            size, tail, what = r.choice((0, 1, 6)), good[4:], "size below the header"
        elif k == 1:
            size, tail, what = (
                r.choice((0xFFFFFFFF, 0x80000000, 16 << 20)),
                good[4:],
                "size > msize",
            )
        elif k == 2:
            size, tail, what = len(good) + r.choice((1, 100, 4000)), good[4:], "size past the end"
        elif k == 3:
            size, tail, what = len(good) - 2, good[4:] + _junk(r, 20), "size short, junk after"
        else:
            return Frame(good[: r.randrange(1, len(good))], 1, None, "truncated frame", fatal=True)
        return Frame(struct.pack("<I", size) + tail, 1, None, what, fatal=True)

    # -------------------------------------------------------- operations --
    def _attach(self, fid: int) -> m.Message:
        r = self.rng
        return m.Tattach(
            fid, NOFID, r.choice(self.opts.uname), self.export, r.choice(self.opts.n_uname)
        )

    def _new_fid(self) -> int:
        used = set(self.fids)
        for f in range(1, 1 << 16):
            if f not in used:
                return f
        return 1

    def _any_fid(self) -> int:
        return self.rng.choice(list(self.fids)) if self.fids else 0

    def _fid_where(self, pred: Callable[[FidState], bool]) -> int | None:
        cands = [n for n, f in self.fids.items() if pred(f)]
        return self.rng.choice(cands) if cands else None

    def _name(self) -> str:
        r = self.rng
        if r.random() < 0.6 and self.names:
            return r.choice(self.names)
        return r.choice(("f", "d", "s", "n", "l")) + str(r.randrange(40))

    def _operation(self) -> list[m.Message]:
        table = self._dotl_ops() if self.dialect is c.Dialect.P9P2000L else self._classic_ops()
        op = self.rng.choices([f for f, _ in table], [w for _, w in table])[0]
        return op()

    def _walk(self) -> list[m.Message]:
        r = self.rng
        src = self._fid_where(lambda f: f.is_dir and not f.opened)
        src = src if src is not None else self._any_fid()
        n = r.choice((0, 1, 1, 1, 2, 3))
        names = [r.choice((*self.names, "..", ".", self._name())) for _ in range(n)]
        newfid = src if r.random() < 0.1 else self._new_fid()
        return [m.Twalk(src, newfid, names)]

    def _clone_root(self) -> tuple[int, list[m.Message]]:
        """A new fid on a directory, to create in or open."""
        d = self._fid_where(lambda f: f.is_dir and not f.opened)
        nf = self._new_fid()
        return nf, [m.Twalk(d if d is not None else 0, nf, [])]

    def _walk_to(self) -> tuple[int, list[m.Message]]:
        nf = self._new_fid()
        d = self._fid_where(lambda f: f.is_dir and not f.opened)
        return nf, [m.Twalk(d if d is not None else 0, nf, [self._name()])]

    def _opened(self) -> int:
        f = self._fid_where(lambda f: f.opened)
        return f if f is not None else self._any_fid()

    def _dir_fid(self) -> int:
        f = self._fid_where(lambda f: f.is_dir and not f.opened)
        return f if f is not None else 0

    def _data(self) -> bytes:
        r = self.rng
        n = r.choice((0, 1, 100, 4096, 8000))
        return r.randbytes(n) if n <= 100 else bytes([r.randrange(256)]) * n

    def _offset(self) -> int:
        return self.rng.choice((0, 0, 1, 4096, 1 << 20, 1 << 40))

    def _clunk(self) -> list[m.Message]:
        f = self.rng.choice([n for n in self.fids if n != 0] or [0])
        return [m.Tclunk(f)]

    def _common_ops(self) -> list[tuple[Callable[[], list[m.Message]], int]]:
        r = self.rng
        return [
            (self._walk, 12),
            (
                lambda: [
                    m.Tread(
                        self._opened(),
                        self._offset(),
                        r.choice((0, 1, 100, 8192, 1 << 20, 0xFFFFFFFF)),
                    )
                ],
                6,
            ),
            (lambda: [m.Twrite(self._opened(), self._offset(), self._data())], 6),
            (self._clunk, 6),
            (lambda: [*self._walk_to()[1], m.Tremove(self._new_fid())], 2),
            (lambda: [m.Tremove(self._any_fid())], 1),
            (lambda: [m.Tflush(r.randrange(0x10000))], 1),
            (
                lambda: [
                    m.Tattach(
                        self._new_fid(),
                        NOFID,
                        "root",
                        r.choice((self.export, "", "nope", "/" + self.export)),
                        0,
                    )
                ],
                1,
            ),
            (lambda: [m.Tauth(self._new_fid(), "root", self.export, 0)], 1),
            (
                lambda: [
                    m.Tversion(
                        r.choice((*MSIZES, 0, 4095, 0xFFFFFFFF)),
                        r.choice(
                            (
                                self.dialect.value,
                                "9P2000",
                                "9P2000.L",
                                "9P2000.u",
                                "9P2000.x",
                                "unknown",
                                "",
                            )
                        ),
                    )
                ],
                1,
            ),
        ]

    def _dotl_ops(self) -> list[tuple[Callable[[], list[m.Message]], int]]:
        r = self.rng

        def lcreate() -> list[m.Message]:
            nf, pre = self._clone_root()
            return [
                *pre,
                m.Tlcreate(
                    nf,
                    self._name(),
                    r.choice(L_FLAGS),
                    r.choice(MODES),
                    r.choice((0, 1000, NONUNAME)),
                ),
            ]

        def lopen() -> list[m.Message]:
            nf, pre = self._walk_to() if r.random() < 0.7 else self._clone_root()
            return [*pre, m.Tlopen(nf, r.choice(L_FLAGS))]

        def xattrwrite() -> list[m.Message]:
            nf, pre = self._walk_to()
            size = r.choice((0, 5, 100, 65536, 65537, 1 << 32))
            data = b"v" * min(size, 200)
            return [
                *pre,
                m.Txattrcreate(nf, r.choice(XATTR_NAMES), size, r.choice((0, 1, 2, 3))),
                m.Twrite(nf, 0, data),
                m.Tclunk(nf),
            ]

        def xattrread() -> list[m.Message]:
            nf = self._new_fid()
            return [
                m.Txattrwalk(self._any_fid(), nf, r.choice((*XATTR_NAMES, ""))),
                m.Tread(nf, 0, r.choice((0, 10, 65536))),
                m.Tclunk(nf),
            ]

        def setattr_() -> list[m.Message]:
            valid = r.choice(
                (
                    1,
                    2,
                    4,
                    8,
                    0x10,
                    0x20,
                    0x40,
                    0x80 | 0x10,
                    0x100 | 0x20,
                    0x1FF,
                    r.randrange(1 << 9),
                )
            )
            return [
                m.Tsetattr(
                    self._any_fid(),
                    valid,
                    r.choice(MODES),
                    r.choice((0, 1000, NONUNAME)),
                    r.choice((0, 1000, NONUNAME)),
                    r.choice((0, 1, 4096, 1 << 30)),
                    r.choice((0, 1 << 31, 2000000000)),
                    r.choice((0, 999999999, 1 << 30)),
                    r.choice((0, 1 << 31, 2000000000)),
                    r.choice((0, 999999999)),
                )
            ]

        def lock() -> list[m.Message]:
            f = self._opened()
            return [
                m.Tlock(
                    f,
                    r.choice((0, 1, 2)),
                    r.choice((0, 1, 2)),
                    r.choice((0, 10, 1 << 40)),
                    r.choice((0, 1, 100)),
                    r.choice((1, 42)),
                    r.choice(("fuzz", "", "other")),
                ),
                m.Tgetlock(f, r.choice((0, 1, 2)), 0, 0, 1, "fuzz"),
            ]

        return [
            *self._common_ops(),
            (lcreate, 5),
            (lopen, 6),
            (
                lambda: [
                    m.Tgetattr(
                        self._any_fid(), r.choice((c.GetattrMask.ALL, c.GetattrMask.BASIC, 0))
                    )
                ],
                6,
            ),
            (setattr_, 4),
            (
                lambda: [
                    m.Tmkdir(
                        self._dir_fid(), self._name(), r.choice(MODES), r.choice((0, NONUNAME))
                    )
                ],
                3,
            ),
            (
                lambda: [
                    m.Tsymlink(
                        self._dir_fid(),
                        self._name(),
                        r.choice(("f0", "/etc/passwd", "../..", "x" * 300)),
                        0,
                    )
                ],
                2,
            ),
            (
                lambda: [
                    m.Tmknod(
                        self._dir_fid(),
                        self._name(),
                        r.choice(MODES),
                        r.choice((0, 1, 8, 255)),
                        r.choice((0, 1, 3)),
                        0,
                    )
                ],
                2,
            ),
            (
                lambda: [
                    m.Treaddir(
                        self._opened(),
                        r.choice((0, 0, 1, 3, 1 << 40)),
                        r.choice((0, 24, 100, 8192, 1 << 20)),
                    )
                ],
                4,
            ),
            (lambda: [m.Tfsync(self._opened(), r.choice((0, 1)))], 2),
            (lock, 2),
            (lambda: [m.Tlink(self._dir_fid(), self._any_fid(), self._name())], 2),
            (lambda: [m.Trename(self._any_fid(), self._dir_fid(), self._name())], 2),
            (
                lambda: [m.Trenameat(self._dir_fid(), self._name(), self._dir_fid(), self._name())],
                3,
            ),
            (
                lambda: [
                    m.Tunlinkat(self._dir_fid(), self._name(), r.choice((0, 0, c.AT_REMOVEDIR)))
                ],
                3,
            ),
            (lambda: [m.Treadlink(self._any_fid())], 1),
            (lambda: [m.Tstatfs(self._any_fid())], 1),
            (xattrwrite, 3),
            (xattrread, 3),
        ]

    def _classic_ops(self) -> list[tuple[Callable[[], list[m.Message]], int]]:
        r = self.rng
        dotu = self.dialect.is_dotu

        def create() -> list[m.Message]:
            nf, pre = self._clone_root()
            perm = r.choice(PERMS)
            ext = ""
            if dotu:
                ext = r.choice(
                    (
                        "",
                        "f0",
                        "/etc/passwd",
                        "c 1 3",
                        "b 8 0",
                        "p",
                        "c 1",
                        "x y z",
                        "c -1 0",
                        "c 99999999999 0",
                        str(self._any_fid()),
                        "c 4294967295 0",
                    )
                )
            return [*pre, m.Tcreate(nf, self._name(), perm, r.choice(OMODES), ext)]

        def open_() -> list[m.Message]:
            nf, pre = self._walk_to() if r.random() < 0.7 else self._clone_root()
            return [*pre, m.Topen(nf, r.choice(OMODES))]

        def wstat() -> list[m.Message]:
            st = m.Stat(
                0xFFFF,
                0xFFFFFFFF,
                Qid(0xFF, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF),
                0xFFFFFFFF,
                0xFFFFFFFF,
                0xFFFFFFFF,
                0xFFFFFFFFFFFFFFFF,
                "",
                "",
                "",
                "",
                "",
                NONUNAME,
                NONUNAME,
                NONUNAME,
            )
            for _ in range(r.randint(1, 2)):
                k = r.randrange(7)
                if k == 0:
                    st.mode = r.choice(PERMS)
                elif k == 1:
                    st.length = r.choice((0, 1, 4096, 1 << 40))
                elif k == 2:
                    st.name = self._name()
                elif k == 3:
                    st.mtime = r.choice((0, 1, 1 << 31))
                elif k == 4:
                    st.uid, st.gid = r.choice((("0", "0"), ("1000", "1000"), ("root", "x")))
                elif k == 5 and dotu:
                    st.n_uid, st.n_gid = r.choice(((0, 0), (1000, 1000), (NONUNAME, 5)))
                else:
                    st.extension = "c 1 1" if dotu else ""
            return [m.Twstat(self._any_fid(), st)]

        return [
            *self._common_ops(),
            (create, 6),
            (open_, 7),
            (lambda: [m.Tstat(self._any_fid())], 6),
            (wstat, 5),
        ]

    # ----------------------------------------------------------------- in --
    def on_reply(self, fr: Frame, reply: m.Message | None) -> None:
        """Keep the model in step with what the server confirmed."""
        msg = fr.msg
        if isinstance(reply, m.Rversion):  # even to a mangled frame that became a Tversion
            self.fids.clear()
            self.msize = max(7, reply.msize)
            if reply.version in (d.value for d in Dialect):
                self.dialect = Dialect(reply.version)
            self._started = False
            return
        if msg is None or reply is None:
            return
        if isinstance(msg, m.Tclunk | m.Tremove):
            self.fids.pop(msg.fid, None)  # a clunk or remove frees the fid either way
            return
        if isinstance(reply, m.Rlerror | m.Rerror):
            return
        if isinstance(msg, m.Tattach) and isinstance(reply, m.Rattach):
            self.fids[msg.fid] = FidState(True)
        elif isinstance(msg, m.Twalk) and isinstance(reply, m.Rwalk):
            if len(reply.qids) == len(msg.wnames):
                src = self.fids.get(msg.fid)
                is_dir = (
                    bool(reply.qids[-1].type & 0x80) if reply.qids else bool(src and src.is_dir)
                )
                self.fids[msg.newfid] = FidState(is_dir)
        elif isinstance(msg, m.Tlopen | m.Topen):
            if msg.fid in self.fids:
                self.fids[msg.fid].opened = True
        elif isinstance(msg, m.Tlcreate | m.Tcreate):
            is_dir = isinstance(msg, m.Tcreate) and bool(msg.perm & c.DMDIR)
            self.fids[msg.fid] = FidState(is_dir, opened=True)
            self._learn(msg.name)
        elif isinstance(msg, m.Tmkdir | m.Tsymlink | m.Tmknod | m.Tlink):
            self._learn(msg.name)
        elif isinstance(msg, m.Txattrwalk):
            self.fids[msg.newfid] = FidState(False, opened=True, xattr=True)
        elif isinstance(msg, m.Txattrcreate):
            self.fids[msg.fid] = FidState(False, opened=True, xattr=True)
        elif isinstance(msg, m.Trenameat):
            self._learn(msg.newname)
        elif isinstance(msg, m.Trename):
            self._learn(msg.name)

    def _learn(self, name: object) -> None:
        if isinstance(name, str) and name and len(self.names) < 64 and name not in self.names:
            self.names.append(name)


def _copy(msg: m.Message) -> m.Message:
    cls = type(msg)
    new = cls.__new__(cls)
    for name in cls.__dataclass_fields__:  # type: ignore[attr-defined]
        v = getattr(msg, name)
        setattr(new, name, list(v) if isinstance(v, list) else v)
    return new


def _junk(r: random.Random, n: int) -> bytes:
    return r.randbytes(n)
