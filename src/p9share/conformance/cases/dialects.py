"""§1.3, §3.1-§3.3: dialects, version negotiation, msize, session reset."""

from __future__ import annotations

import errno

from ...protocol import constants as c
from ...protocol import messages as m
from ...protocol.constants import NOTAG, Dialect
from ..context import ROOT_FID, Context, describe, is_error
from ..registry import ALL, Failure, case
from ._util import expect, frame, slow_request, u32


def _version(ctx: Context, msize: int, version: str, tag: int = NOTAG) -> m.Rversion:
    conn = ctx.raw(Dialect.P9P2000)
    conn.send_raw(m.Tversion(msize, version).encode(tag, Dialect.P9P2000))
    rtag, r = conn.recv()
    if not isinstance(r, m.Rversion):
        raise Failure(f"Tversion {version!r}: got {describe(r)}")
    expect(rtag == tag, f"Rversion under tag {rtag}, sent {tag}")
    ctx.note(f"Tversion({msize}, {version!r}) -> Rversion({r.msize}, {r.version!r})")
    return r


for _d in Dialect:

    def _served(ctx: Context, d: Dialect = _d) -> str:
        r = _version(ctx, 8192, d.value)
        expect(r.version == d.value, f"Tversion {d.value}: got {r.version!r}")
        return f"Rversion {r.version!r}"

    case(f"dialect.served.{_d.value}", "§1.3", f"the server negotiates {_d.value}",
          dialects=ALL)(_served)  # fmt: skip


@case(
    "version.canonical", "§3.1", "the reply names the dialect asked for, canonically", dialects=ALL
)
def _(ctx: Context) -> str:
    r = _version(ctx, 8192, ctx.dialect.value)
    expect(r.version == ctx.dialect.value, f"got {r.version!r}")
    return f"Rversion {r.version!r}"


@case(
    "version.any-tag",
    "§3.1",
    "Tversion under a tag other than NOTAG is answered under it",
    dialects=ALL,
)
def _(ctx: Context) -> str:
    r = _version(ctx, 8192, ctx.dialect.value, tag=77)
    return f"Rversion {r.version!r} under tag 77"


@case(
    "version.msize-huge",
    "§3.1",
    "a huge msize is answered with at most the server maximum",
    dialects=ALL,
)
def _(ctx: Context) -> str:
    r = _version(ctx, 0xFFFFFFFF, ctx.dialect.value)
    expect(4096 <= r.msize < 0xFFFFFFFF, f"msize {r.msize}")
    return f"msize {r.msize}"


@case("version.msize-echo", "§3.1", "an msize below the maximum is echoed exactly", dialects=ALL)
def _(ctx: Context) -> str:
    r = _version(ctx, 5000, ctx.dialect.value)
    expect(r.msize == 5000, f"msize {r.msize}")
    return f"msize {r.msize}"


@case("version.msize-too-small", "§3.1", "an msize below 4096 gets 'unknown'", dialects=ALL)
def _(ctx: Context) -> str:
    r = _version(ctx, 4095, ctx.dialect.value)
    expect(r.version == "unknown", f"version {r.version!r}")
    return f"Rversion({r.msize}, {r.version!r})"


@case("version.unknown-string", "§3.1", "a version naming no dialect gets 'unknown'", dialects=ALL)
def _(ctx: Context) -> str:
    r = _version(ctx, 8192, "9P3000")
    expect(r.version == "unknown", f"version {r.version!r}")
    return f"Rversion {r.version!r}"


@case(
    "version.case-sensitive",
    "§3.1",
    "version strings are case-sensitive ('9p2000.l' is unknown)",
    dialects=ALL,
)
def _(ctx: Context) -> str:
    r = _version(ctx, 8192, "9p2000.l")
    expect(r.version == "unknown", f"version {r.version!r}")
    return f"Rversion {r.version!r}"


@case("version.empty-string", "§3.1", "an empty version string gets 'unknown'", dialects=ALL)
def _(ctx: Context) -> str:
    r = _version(ctx, 8192, "")
    expect(r.version == "unknown", f"version {r.version!r}")
    return f"Rversion {r.version!r}"


@case(
    "version.unknown-unnegotiates",
    "§3.1",
    "after 'unknown' requests get EPROTO again",
    dialects=ALL,
)
def _(ctx: Context) -> str:
    conn = ctx.conn(attach=False)
    r = conn.rc.version(8192, "9P3000")
    expect(r.version == "unknown", f"version {r.version!r}")
    conn.rc.dialect = Dialect.P9P2000  # un-negotiated: errors in the 9P2000 form
    conn.send_raw(frame(120, 1, u32(0)))
    _, e = conn.recv()
    expect(isinstance(e, m.Rerror), f"Tclunk after 'unknown': {describe(e)}")
    return describe(e)


@case("msize.iounit", "§3.2", "iounit of Rlopen is msize - 24")
def _(ctx: Context) -> str:
    conn = ctx.conn(msize=9000)
    d = conn.casedir()
    conn.create(d, "f")
    f = conn.walk(d, "f")
    r = conn.ok(m.Tlopen(f, 0), m.Rlopen)
    assert isinstance(r, m.Rlopen)
    expect(r.iounit == 9000 - 24, f"iounit {r.iounit}")
    return f"iounit {r.iounit}"


@case(
    "msize.never-above-asked",
    "§3.2",
    "the negotiated msize never exceeds what the client asked",
    dialects=ALL,
)
def _(ctx: Context) -> str:
    r = _version(ctx, 1048576, ctx.dialect.value)
    expect(r.msize <= 1048576, f"msize {r.msize}")
    return f"msize {r.msize}"


@case("reset.fids-clunked", "§3.3", "Tversion clunks every fid of the session", dialects=ALL)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    conn.rc.version(65560)
    return conn.err(m.Tclunk(ROOT_FID), errno.EBADF)


@case("reset.xattr-committed", "§3.3", "Tversion commits a complete pending xattr value")
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    conn.create(d, "f")
    x = conn.walk(d, "f")
    conn.ok(m.Txattrcreate(x, "user.p9conf", 3, 0), m.Rxattrcreate)
    conn.ok(m.Twrite(x, 0, b"abc"), m.Rwrite)
    conn.rc.version(65560)
    conn.ok(m.Tattach(ROOT_FID, c.NOFID, "root", ctx.aname, 0))
    d = conn.casedir()
    f = conn.walk(d, "f")
    r = conn.ok(m.Txattrwalk(f, conn.fid(), "user.p9conf"), m.Rxattrwalk)
    assert isinstance(r, m.Rxattrwalk)
    expect(r.size == 3, f"xattr size {r.size} after Tversion")
    return f"Rxattrwalk size {r.size}"


@case(
    "reset.pooled-completed",
    "§3.3",
    "Tversion waits for a running request, whose reply comes first",
    dialects=ALL,
)
def _(ctx: Context) -> str:
    conn, _f, make, kind = slow_request(ctx)
    t1 = conn.rc.send(make())
    conn.rc.send(m.Tversion(65560, ctx.dialect.value), tag=NOTAG)
    tag1, r1 = conn.recv()
    _tag2, r2 = conn.recv()
    expect(
        tag1 == t1 and not is_error(r1) and not isinstance(r1, m.Rversion),
        f"first reply {describe(r1)} tag {tag1}",
    )
    expect(isinstance(r2, m.Rversion), f"second reply {describe(r2)}")
    return f"{describe(r1)} then {describe(r2)} ({kind})"
