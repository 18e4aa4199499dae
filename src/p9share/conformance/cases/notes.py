"""§9 (where sources disagree) and §11.1 (authentication offered)."""

from __future__ import annotations

import errno

from ...protocol import constants as c
from ...protocol import messages as m
from ...protocol.constants import NOFID, NOTAG, Dialect
from ..context import ROOT_FID, Context, describe
from ..registry import ALL, CLASSIC, case
from ._util import expect, file_in_casedir, getattr_of, opened


@case("notes.qtsymlink", "§9.2", "a symlink's qid has 0x02 and never 0x01")
def _(ctx: Context) -> str:
    conn = ctx.conn()
    r = conn.ok(m.Tsymlink(conn.casedir(), "l", "x", NOFID), m.Rsymlink)
    assert isinstance(r, m.Rsymlink)
    expect(r.qid.type == 0x02, f"qid type {r.qid.type:#x}")
    return f"qid type {r.qid.type:#x}"


@case(
    "notes.oexcl", "§9.3", "Tcreate with OEXCL (0x04) of an existing name fails", dialects=CLASSIC
)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    conn.create(d, "f")
    return conn.err(m.Tcreate(conn.clone(d), "f", 0o644, c.ORDWR | c.OEXCL), errno.EEXIST)


@case(
    "notes.lcreate-flags", "§9.4", "Tlcreate applies its flags: TRUNC of an existing file truncates"
)
def _(ctx: Context) -> str:
    conn, d, f = file_in_casedir(ctx, b"abc")
    g = conn.clone(d)
    conn.ok(m.Tlcreate(g, "f", c.L_O_RDWR | c.L_O_TRUNC, 0o644, NOFID), m.Rlcreate)
    size = getattr_of(conn, f).size
    expect(size == 0, f"size {size}")
    return "truncated"


@case(
    "notes.dotdot-root",
    "§9.5",
    "'..' at the root stays at the root (not diod's walk out)",
    dialects=ALL,
)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    up = conn.walk(ROOT_FID, "..")
    expect(conn.exists(up, ctx.scratch), "'..' of the root is not the root")
    return "root"


@case(
    "notes.walk-open", "§9.6", "walking from an open fid: allowed to a new fid, EBUSY onto itself"
)
def _(ctx: Context) -> str:
    conn, _d, f = opened(ctx)
    conn.ok(m.Twalk(f, conn.fid(), []), m.Rwalk)
    return conn.err(m.Twalk(f, f, []), errno.EBUSY)


@case("notes.getattr-mask", "§9.7", "request_mask SIZE only still reports BASIC")
def _(ctx: Context) -> str:
    conn, _d, f = file_in_casedir(ctx)
    r = conn.ok(m.Tgetattr(f, c.GetattrMask.SIZE), m.Rgetattr)
    assert isinstance(r, m.Rgetattr)
    expect(r.valid & 0x7FF == 0x7FF, f"valid {r.valid:#x}")
    return f"valid {r.valid:#x}"


@case("notes.locks-real", "§9.8", "locks are real: a second open's conflicting lock is BLOCKED")
def _(ctx: Context) -> str:
    conn, d, f = opened(ctx)
    g = conn.walk(d, "f")
    conn.open(g, "rw")
    conn.ok(m.Tlock(f, 1, 0, 0, 1, 1, ""), m.Rlock)
    r = conn.ok(m.Tlock(g, 1, 0, 0, 1, 1, ""), m.Rlock)
    assert isinstance(r, m.Rlock)
    expect(r.status == c.LOCK_BLOCKED, describe(r))
    return describe(r)


@case("notes.unknown-fid", "§9.9", "an unknown fid is always EBADF (Tgetattr, Twalk, Tclunk)")
def _(ctx: Context) -> str:
    conn = ctx.conn()
    conn.err(m.Tgetattr(555, 1), errno.EBADF)
    conn.err(m.Twalk(555, 556, []), errno.EBADF)
    return conn.err(m.Tclunk(555), errno.EBADF)


@case("notes.read-dir", "§9.10", "Tread on a directory under .L is EISDIR")
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    conn.open(d)
    return conn.err(m.Tread(d, 0, 100), errno.EISDIR)


@case("notes.getlock-unlck", "§9.11", "Tgetlock with type UNLCK is answered (not EINVAL)")
def _(ctx: Context) -> str:
    conn, _d, f = opened(ctx)
    return describe(conn.ok(m.Tgetlock(f, c.LOCK_TYPE_UNLCK, 0, 0, 1, ""), m.Rgetlock))


@case(
    "notes.empty-xattr",
    "§9.12",
    "Txattrcreate size 0 of an absent attribute is removal (ENODATA), not an empty value",
)
def _(ctx: Context) -> str:
    conn, _d, f = file_in_casedir(ctx)
    x = conn.clone(f)
    conn.ok(m.Txattrcreate(x, "user.p9conf-empty", 0, 0), m.Rxattrcreate)
    return conn.err(m.Tclunk(x), errno.ENODATA)


@case("notes.pre-1970", "§9.13", "atime before 1970 round-trips as two's complement")
def _(ctx: Context) -> str:
    conn, _d, f = file_in_casedir(ctx)
    neg = (-1) & 0xFFFF_FFFF_FFFF_FFFF
    v = c.SetattrValid.ATIME | c.SetattrValid.ATIME_SET
    conn.ok(m.Tsetattr(f, v, 0, 0, 0, 0, neg, 500, 0, 0), m.Rsetattr)
    a = getattr_of(conn, f)
    expect((a.atime_sec, a.atime_nsec) == (neg, 500), f"atime {a.atime_sec:#x}.{a.atime_nsec}")
    return f"atime_sec {a.atime_sec:#x}"


@case(
    "notes.msize-1mib", "§9.14", "msize 1048576 (Linux's cap) is negotiated as asked", dialects=ALL
)
def _(ctx: Context) -> str:
    conn = ctx.raw()
    r = conn.rc.version(1048576)
    expect(r.msize == 1048576, f"msize {r.msize}")
    return f"msize {r.msize}"


@case("notes.version-tag", "§9.15", "Tversion under tag 0 is answered under tag 0", dialects=ALL)
def _(ctx: Context) -> str:
    conn = ctx.raw(Dialect.P9P2000)
    conn.send_raw(m.Tversion(8192, ctx.dialect.value).encode(0, Dialect.P9P2000))
    tag, r = conn.recv()
    expect(tag == 0 and isinstance(r, m.Rversion), f"{describe(r)} under {tag}")
    return f"{describe(r)} under tag 0"


@case(
    "notes.flush-order",
    "§9.16",
    "a flushed inline request's reply precedes the Rflush",
    dialects=ALL,
)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    conn.send_raw(
        m.Twalk(ROOT_FID, 600, []).encode(5, ctx.dialect) + m.Tflush(5).encode(6, ctx.dialect)
    )
    t1, r1 = conn.recv()
    t2, r2 = conn.recv()
    expect(
        (t1, t2) == (5, 6) and isinstance(r2, m.Rflush), f"{describe(r1)}@{t1}, {describe(r2)}@{t2}"
    )
    return f"{describe(r1)} then Rflush"


@case(
    "notes.version-dot-anything",
    "§9.17",
    "'9P2000.x' is parsed as 9P2000 (answered 9P2000 or unknown)",
    dialects=ALL,
)
def _(ctx: Context) -> str:
    conn = ctx.raw(Dialect.P9P2000)
    conn.send_raw(m.Tversion(8192, "9P2000.x").encode(NOTAG, Dialect.P9P2000))
    _, r = conn.recv()
    expect(isinstance(r, m.Rversion), f"got {describe(r)}")
    assert isinstance(r, m.Rversion)
    expect(r.version in ("9P2000", "unknown"), f"version {r.version!r}")
    return f"Rversion {r.version!r}"


@case(
    "notes.lopen-flags",
    "§9.18",
    "Tlopen drops EXCL and CREAT (the file is opened, not created anew)",
)
def _(ctx: Context) -> str:
    conn, _d, f = file_in_casedir(ctx, b"abc")
    conn.ok(m.Tlopen(f, c.L_O_RDONLY | c.L_O_CREAT | c.L_O_EXCL), m.Rlopen)
    r = conn.ok(m.Tread(f, 0, 3), m.Rread)
    assert isinstance(r, m.Rread)
    expect(bytes(r.data) == b"abc", f"read {bytes(r.data)!r}")
    return "opened; data intact"


@case("notes.setattr-bits", "§9.19", "Tsetattr with bit 0x400 is EINVAL, not ignored")
def _(ctx: Context) -> str:
    conn, _d, f = file_in_casedir(ctx)
    return conn.err(m.Tsetattr(f, 0x400, 0, 0, 0, 0, 0, 0, 0, 0), errno.EINVAL)


@case(
    "authn.not-offered",
    "§11.1",
    "without a keyring: Tauth EOPNOTSUPP, Tattach with an afid EINVAL",
    dialects=ALL,
)
def _(ctx: Context) -> str:
    conn = ctx.conn(attach=False)
    conn.err(m.Tauth(9, "root", ctx.aname, 0), errno.EOPNOTSUPP)
    return conn.err(m.Tattach(ROOT_FID, 9, "root", ctx.aname, 0), errno.EINVAL)
