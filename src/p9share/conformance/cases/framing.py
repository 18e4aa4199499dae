"""§2: framing, data types, validation of incoming frames, error replies."""

from __future__ import annotations

import errno
import socket

from ...protocol import constants as c
from ...protocol import messages as m
from ...protocol.constants import NOTAG, Dialect
from ...protocol.wire import HEADER, U32
from ..context import ROOT_FID, Context, describe, error_number
from ..registry import ALL, DOTL, Failure, case
from ._util import expect, file_in_casedir, frame, getattr_of, u32, wstr


@case(
    "frame.header.reply-type",
    "§2.1",
    "reply type is request type + 1, size counts the whole frame",
    dialects=ALL,
)
def _(ctx: Context) -> str:
    conn = ctx.raw()
    conn.send_raw(m.Tversion(8192, ctx.dialect.value).encode(NOTAG, Dialect.P9P2000))
    raw = conn.rc.recv_frame()
    size, mtype, tag = HEADER.unpack_from(raw, 0)
    expect(size == len(raw), f"size field {size} but frame of {len(raw)} bytes")
    expect(mtype == 101 and tag == NOTAG, f"reply type {mtype} tag {tag:#x}")
    return f"Rversion: size {size}, type {mtype}, tag {tag:#x}"


@case(
    "frame.int.little-endian",
    "§2.2",
    "integers are little-endian (msize 0x00009a18 echoed)",
    dialects=ALL,
)
def _(ctx: Context) -> str:
    conn = ctx.raw()
    r = conn.rc.version(0x9A18)
    expect(r.msize == 0x9A18, f"msize {r.msize:#x}")
    return f"Rversion msize {r.msize:#x}"


@case(
    "frame.string.empty-valid",
    "§2.3",
    "the empty string is valid on the wire (empty uname)",
    dialects=ALL,
)
def _(ctx: Context) -> str:
    conn = ctx.conn(attach=False)
    return describe(conn.ok(m.Tattach(ROOT_FID, c.NOFID, "", ctx.aname, 0), m.Rattach))


def _bad_string_case(cid: str, raw: bytes, title: str) -> None:
    @case(cid, "§2.3", title, dialects=ALL)
    def _(ctx: Context) -> str:
        conn = ctx.conn()
        body = u32(ROOT_FID) + u32(conn.fid()) + b"\x01\x00" + wstr(raw)
        conn.send_raw(frame(110, 3, body))
        tag, r = conn.recv()
        expect(tag == 3, f"reply under tag {tag}")
        return conn.check_err(m.Twalk(0, 0), r, [errno.EPROTO])


_bad_string_case("frame.string.invalid-utf8", b"\xff\xfe", "a string that is not UTF-8 is EPROTO")
_bad_string_case("frame.string.overlong-utf8", b"\xc0\xaf", "an overlong UTF-8 form is EPROTO")
_bad_string_case("frame.string.surrogate", b"\xed\xa0\x80", "an encoded surrogate is EPROTO")
_bad_string_case("frame.string.nul", b"a\x00b", "a NUL byte in a string is EPROTO")


@case("frame.string.utf8-roundtrip", "§2.3", "a non-ASCII UTF-8 name is stored and listed as sent")
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    conn.create(d, "żółw-é")
    expect(conn.exists(d, "żółw-é"), "walk to the created name failed")
    return "created and walked 'żółw-é'"


@case("frame.qid.dir", "§2.4", "a directory's qid type is 0x80", dialects=ALL)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    q = conn.ok(m.Tattach(conn.fid(), c.NOFID, "root", ctx.aname, 0), m.Rattach)
    assert isinstance(q, m.Rattach)
    expect(q.qid.type == 0x80, f"root qid type {q.qid.type:#x}")
    return f"root qid type {q.qid.type:#x}"


@case("frame.qid.file", "§2.4", "a regular file's qid type is 0x00", dialects=ALL)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    conn.create(d, "f")
    r = conn.ok(m.Twalk(d, conn.fid(), ["f"]), m.Rwalk)
    assert isinstance(r, m.Rwalk)
    expect(r.qids[0].type == 0, f"qid type {r.qids[0].type:#x}")
    return f"qid {r.qids[0]}"


@case("frame.qid.symlink", "§2.4", "a symbolic link's qid type is 0x02 (QTSYMLINK)")
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    r = conn.ok(m.Tsymlink(d, "l", "target", c.NOFID), m.Rsymlink)
    assert isinstance(r, m.Rsymlink)
    w = conn.ok(m.Twalk(d, conn.fid(), ["l"]), m.Rwalk)
    assert isinstance(w, m.Rwalk)
    expect(r.qid.type == 2 and w.qids[0].type == 2, f"Rsymlink {r.qid}, Rwalk {w.qids[0]}")
    return f"qid type {w.qids[0].type:#x}"


@case(
    "frame.qid.version-changes", "§2.4", "a regular file's qid.version changes when it is written"
)
def _(ctx: Context) -> str:
    conn, d, f = file_in_casedir(ctx, b"abc")
    before = getattr_of(conn, f).qid.version
    w = conn.clone(f)
    conn.open(w, "w")
    conn.write_all(w, 3, b"defgh")
    after = getattr_of(conn, f).qid.version
    expect(before != after, f"version {before:#x} before and after the write")
    dq = getattr_of(conn, d).qid.version
    expect(dq == 0, f"directory qid version {dq}")
    return f"version {before:#x} -> {after:#x}; directory version 0"


@case(
    "frame.qid.path-unique",
    "§2.4",
    "two files have different qid.path; one file keeps its path",
    dialects=ALL,
)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    conn.create(d, "a")
    conn.create(d, "b")
    qa = conn.ok(m.Twalk(d, conn.fid(), ["a"]), m.Rwalk)
    qb = conn.ok(m.Twalk(d, conn.fid(), ["b"]), m.Rwalk)
    qa2 = conn.ok(m.Twalk(d, conn.fid(), ["a"]), m.Rwalk)
    assert isinstance(qa, m.Rwalk) and isinstance(qb, m.Rwalk) and isinstance(qa2, m.Rwalk)
    expect(qa.qids[0].path != qb.qids[0].path, "two files share a qid.path")
    expect(qa.qids[0].path == qa2.qids[0].path, "one file walked twice has two paths")
    return f"paths {qa.qids[0].path:#x}, {qb.qids[0].path:#x}"


@case("frame.compound.nwname-17", "§2.5", "a Twalk of 17 names is malformed: EPROTO", dialects=ALL)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    body = u32(ROOT_FID) + u32(conn.fid()) + (17).to_bytes(2, "little") + wstr(b".") * 17
    conn.send_raw(frame(110, 4, body))
    _, r = conn.recv()
    return conn.check_err(m.Twalk(0, 0), r, [errno.EPROTO])


@case(
    "frame.compound.data-count-lies",
    "§2.5",
    "a Twrite whose count exceeds the bytes present: EPROTO",
    dialects=ALL,
)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    body = u32(ROOT_FID) + (0).to_bytes(8, "little") + u32(100) + b"x" * 10
    conn.send_raw(frame(118, 4, body))
    _, r = conn.recv()
    return conn.check_err(m.Twrite(0, 0, b""), r, [errno.EPROTO])


@case(
    "frame.const.maxwelem", "§2.6", "MAXWELEM is 16: a walk of 16 names is accepted", dialects=ALL
)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    r = conn.ok(m.Twalk(d, conn.fid(), ["."] * 16), m.Rwalk)
    assert isinstance(r, m.Rwalk)
    expect(len(r.qids) == 16, f"{len(r.qids)} qids")
    return "16 qids"


def _closes(cid: str, title: str, make: str) -> None:
    @case(cid, "§2.7", title, dialects=ALL)
    def _(ctx: Context) -> str:
        conn = ctx.conn(msize=8192) if make != "unversioned" else ctx.raw()
        if make == "small":
            conn.send_raw(U32.pack(5) + b"\x78\x01\x00")
        elif make == "over-msize":
            conn.send_raw(HEADER.pack(9000, 120, 1) + b"\0" * 4)
        elif make == "unversioned":
            conn.send_raw(HEADER.pack(0x7FFFFFFF, 100, NOTAG))
        elif make == "truncated":
            conn.send_raw(HEADER.pack(11, 120, 1) + b"\0")
            conn.rc.sock.shutdown(socket.SHUT_WR)
        expect(conn.closed(), "the connection stayed open")
        return "connection closed, nothing sent"


_closes("frame.check1.size-below-7", "a size below 7 closes the connection", "small")
_closes(
    "frame.check2.size-over-msize",
    "a size above the negotiated msize closes the connection",
    "over-msize",
)
_closes(
    "frame.check2.size-over-max",
    "before Tversion, a size above the server maximum closes",
    "unversioned",
)
_closes(
    "frame.check3.eof-mid-frame", "the peer closing mid-frame closes the connection", "truncated"
)


@case(
    "frame.check4.bad-tversion",
    "§2.7",
    "a malformed Tversion is EPROTO, the connection stays",
    dialects=ALL,
)
def _(ctx: Context) -> str:
    conn = ctx.raw(Dialect.P9P2000)
    conn.send_raw(frame(100, NOTAG, u32(8192) + b"\x09\x00" + b"9P"))
    _tag, r = conn.recv()
    expect(error_number(r) is not None, f"got {describe(r)}")
    v = conn.rc.version(8192, ctx.dialect.value)
    expect(v.version != "", "no Rversion after the malformed one")
    return f"{describe(r)} then {describe(v)}"


@case(
    "frame.check5.before-version",
    "§2.7",
    "a request before Tversion gets Rerror (EPROTO)",
    dialects=ALL,
)
def _(ctx: Context) -> str:
    conn = ctx.raw(Dialect.P9P2000)
    conn.send_raw(frame(120, 1, u32(0)))
    tag, r = conn.recv()
    expect(isinstance(r, m.Rerror), f"got {describe(r)}")
    return f"{describe(r)} under tag {tag}"


@case("frame.check6.notag", "§2.7", "a request under NOTAG gets EINVAL under NOTAG", dialects=ALL)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    conn.send_raw(frame(120, NOTAG, u32(ROOT_FID)))
    tag, r = conn.recv()
    expect(tag == NOTAG, f"reply under tag {tag}")
    return conn.check_err(m.Tclunk(0), r, [errno.EINVAL])


def _not_a_request(
    cid: str, mtype: int, title: str, dialects: frozenset[Dialect], body: bytes = b""
) -> None:
    @case(cid, "§2.7", title, dialects=dialects)
    def _(ctx: Context) -> str:
        conn = ctx.conn()
        conn.send_raw(frame(mtype, 9, body or u32(ROOT_FID)))
        tag, r = conn.recv()
        expect(tag == 9, f"reply under tag {tag}")
        out = conn.check_err(m.Tclunk(0), r, [errno.EOPNOTSUPP])
        conn.ok(m.Tclunk(ROOT_FID))  # still alive
        return f"type {mtype}: {out}"


_not_a_request("frame.check7.unknown-type", 200, "an unknown message type is EOPNOTSUPP", ALL)
_not_a_request("frame.check7.reply-type", 25, "a reply type (odd number) is EOPNOTSUPP", ALL)
_not_a_request("frame.check7.tlerror", 6, "Tlerror (6) is never valid: EOPNOTSUPP", ALL)
_not_a_request("frame.check7.terror", 106, "Terror (106) is never valid: EOPNOTSUPP", ALL)
for _t, _n in ((112, "Topen"), (114, "Tcreate"), (124, "Tstat"), (126, "Twstat")):
    _not_a_request(
        f"frame.check7.dotl-no-{_n.lower()}", _t, f"{_n} ({_t}) under .L is EOPNOTSUPP", DOTL
    )


def _malformed(cid: str, mtype: int, body: bytes, title: str) -> None:
    @case(cid, "§2.7", title, dialects=ALL)
    def _(ctx: Context) -> str:
        conn = ctx.conn()
        conn.send_raw(frame(mtype, 5, body))
        tag, r = conn.recv()
        expect(tag == 5, f"reply under tag {tag}")
        out = conn.check_err(m.Tclunk(0), r, [errno.EPROTO])
        r2 = conn.call(m.Tclunk(ROOT_FID))
        expect(isinstance(r2, m.Rclunk), f"after the bad frame, Tclunk got {describe(r2)}")
        return out + "; connection still usable"


_malformed(
    "frame.check8.too-short", 120, b"\x00\x00", "a body too short is EPROTO, connection stays"
)
_malformed("frame.check8.left-over", 120, u32(0) + b"xx", "bytes after the last field are EPROTO")
_malformed("frame.check8.string-past-end", 110, u32(0) + u32(1) + b"\x01\x00" + b"\x64\x00abc",
           "a string running past the end is EPROTO")  # fmt: skip


@case("frame.errors.dotl-rlerror", "§2.8", "under .L every error is Rlerror with a Linux errno")
def _(ctx: Context) -> str:
    conn = ctx.conn()
    r = conn.call(m.Tclunk(4242))
    expect(isinstance(r, m.Rlerror) and r.ecode == errno.EBADF, f"got {describe(r)}")
    return describe(r)


@case("frame.errors.emsgsize", "§2.8", "a reply larger than msize is replaced by EMSGSIZE")
def _(ctx: Context) -> str:
    big = ctx.conn()
    d = big.casedir()
    target = "t" * 4090
    big.ok(m.Tsymlink(d, "long", target, c.NOFID), m.Rsymlink)
    small = ctx.conn(msize=4096)
    sd = small.casedir()
    link = small.walk(sd, "long")
    return small.err(m.Treadlink(link), errno.EMSGSIZE)


@case(
    "frame.errors.rerror-before-version",
    "§2.8",
    "before negotiation errors use Rerror (9P2000 form)",
    dialects=ALL,
)
def _(ctx: Context) -> str:
    conn = ctx.raw(Dialect.P9P2000)
    conn.send_raw(frame(110, 1, u32(0) + u32(1) + b"\x00\x00"))
    _, r = conn.recv()
    if not isinstance(r, m.Rerror):
        raise Failure(f"got {describe(r)}")
    return describe(r)
