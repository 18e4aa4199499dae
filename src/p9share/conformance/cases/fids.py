"""§4: fid space, fid states, walk rules, clunk and remove, lifetime."""

from __future__ import annotations

import errno

from ...protocol import constants as c
from ...protocol import messages as m
from ...protocol.constants import NOFID
from ..context import ROOT_FID, Context, describe
from ..registry import ALL, DOTL, case
from ._util import expect, file_in_casedir, getattr_of, opened, subdir


@case("fids.per-connection", "§4.1", "fids are not shared between connections", dialects=ALL)
def _(ctx: Context) -> str:
    a = ctx.conn()
    b = ctx.conn(attach=False)
    a.walk(ROOT_FID)  # fid 101 on a
    out = b.err(m.Tclunk(101), errno.EBADF)
    b.ok(m.Tattach(ROOT_FID, NOFID, "root", ctx.aname, 0), m.Rattach)
    return out + "; fid 0 attached on both"


_UNKNOWN = 4242
_UNKNOWN_FID_OPS: list[tuple[str, m.Message, frozenset[c.Dialect]]] = [
    ("clunk", m.Tclunk(_UNKNOWN), ALL),
    ("remove", m.Tremove(_UNKNOWN), ALL),
    ("walk", m.Twalk(_UNKNOWN, 4343, []), ALL),
    ("read", m.Tread(_UNKNOWN, 0, 10), ALL),
    ("write", m.Twrite(_UNKNOWN, 0, b"x"), ALL),
    ("getattr", m.Tgetattr(_UNKNOWN, c.GetattrMask.BASIC), DOTL),
    ("setattr", m.Tsetattr(_UNKNOWN, 0, 0, 0, 0, 0, 0, 0, 0, 0), DOTL),
    ("lopen", m.Tlopen(_UNKNOWN, 0), DOTL),
    ("readdir", m.Treaddir(_UNKNOWN, 0, 100), DOTL),
    ("statfs", m.Tstatfs(_UNKNOWN), DOTL),
    ("readlink", m.Treadlink(_UNKNOWN), DOTL),
    ("xattrwalk", m.Txattrwalk(_UNKNOWN, 4343, ""), DOTL),
    ("fsync", m.Tfsync(_UNKNOWN, 0), DOTL),
    ("mkdir", m.Tmkdir(_UNKNOWN, "x", 0o755, NOFID), DOTL),
    ("lock", m.Tlock(_UNKNOWN, 0, 0, 0, 0, 0, ""), DOTL),
]


def _unknown_case(name: str, msg: m.Message, dialects: frozenset[c.Dialect]) -> None:
    @case(f"fids.unknown.{name}", "§4.1", f"T{name} on an unknown fid is EBADF", dialects=dialects)
    def _(ctx: Context) -> str:
        return ctx.conn().err(msg, errno.EBADF)


for _n, _msg, _d in _UNKNOWN_FID_OPS:
    _unknown_case(_n, _msg, _d)


@case("fids.in-use.attach", "§4.1", "Tattach to a fid in use is EEXIST", dialects=ALL)
def _(ctx: Context) -> str:
    return ctx.conn().err(m.Tattach(ROOT_FID, NOFID, "root", ctx.aname, 0), errno.EEXIST)


@case("fids.in-use.walk", "§4.1", "Twalk to a newfid in use is EEXIST", dialects=ALL)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    f = conn.walk(ROOT_FID)
    return conn.err(m.Twalk(ROOT_FID, f, []), errno.EEXIST)


@case("fids.nofid", "§4.1", "NOFID cannot name a new fid (EBADF)", dialects=ALL)
def _(ctx: Context) -> str:
    return ctx.conn().err(m.Twalk(ROOT_FID, NOFID, []), errno.EBADF)


def _not_open_case(name: str, make: str) -> None:
    @case(f"fids.not-open.{name}", "§4.2", f"T{name} on a fid that is not open is EBADF")
    def _(ctx: Context) -> str:
        conn, d, f = file_in_casedir(ctx, b"abc")
        msg: m.Message = {
            "read": m.Tread(f, 0, 3),
            "write": m.Twrite(f, 0, b"x"),
            "readdir": m.Treaddir(d, 0, 1000),
            "fsync": m.Tfsync(f, 0),
            "lock": m.Tlock(f, 1, 0, 0, 0, 1, ""),
            "getlock": m.Tgetlock(f, 1, 0, 0, 1, ""),
        }[make]
        return conn.err(msg, errno.EBADF)


for _n in ("read", "write", "readdir", "fsync", "lock", "getlock"):
    _not_open_case(_n, _n)


@case("fids.open.relopen", "§4.2", "Tlopen of an open fid is EBADF")
def _(ctx: Context) -> str:
    conn, _d, f = opened(ctx)
    return conn.err(m.Tlopen(f, 0), errno.EBADF)


@case("fids.open.xattrcreate", "§4.2", "Txattrcreate on an open fid is EBADF")
def _(ctx: Context) -> str:
    conn, _d, f = opened(ctx)
    return conn.err(m.Txattrcreate(f, "user.x", 1, 0), errno.EBADF)


@case("fids.open.lcreate", "§4.2", "Tlcreate on an open directory fid is EBADF")
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    conn.open(d)
    return conn.err(m.Tlcreate(d, "n", 2, 0o644, NOFID), errno.EBADF)


@case("fids.open.walk-onto-itself", "§4.2", "Twalk of an open fid onto itself is EBUSY")
def _(ctx: Context) -> str:
    conn, _d, f = opened(ctx)
    return conn.err(m.Twalk(f, f, []), errno.EBUSY)


@case("fids.xattr.getattr", "§4.2", "an xattr-read fid refuses Tgetattr (EBADF)")
def _(ctx: Context) -> str:
    conn, _d, f = file_in_casedir(ctx)
    x = conn.fid()
    conn.ok(m.Txattrwalk(f, x, ""), m.Rxattrwalk)
    return conn.err(m.Tgetattr(x, 1), errno.EBADF)


@case("fids.xattr.walk", "§4.2", "an xattr-read fid refuses Twalk (EBADF)")
def _(ctx: Context) -> str:
    conn, _d, f = file_in_casedir(ctx)
    x = conn.fid()
    conn.ok(m.Txattrwalk(f, x, ""), m.Rxattrwalk)
    return conn.err(m.Twalk(x, conn.fid(), []), errno.EBADF)


@case("fids.xattr.remove", "§4.2", "Tremove of an xattr fid answers EBADF and releases it")
def _(ctx: Context) -> str:
    conn, d, f = file_in_casedir(ctx)
    x = conn.fid()
    conn.ok(m.Txattrwalk(f, x, ""), m.Rxattrwalk)
    out = conn.err(m.Tremove(x), errno.EBADF)
    conn.err(m.Tclunk(x), errno.EBADF)
    expect(conn.exists(d, "f"), "the file was removed")
    return out + "; fid gone, file kept"


@case("fids.dirfid-not-dir", "§4.2", "a directory request on a file fid is ENOTDIR")
def _(ctx: Context) -> str:
    conn, _d, f = file_in_casedir(ctx)
    return conn.err(m.Tmkdir(f, "x", 0o755, NOFID), errno.ENOTDIR)


@case("fids.dirfid-open-ok", "§4.2", "an open directory fid may be a dfid (Tmkdir)")
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    conn.open(d)
    return describe(conn.ok(m.Tmkdir(d, "sub", 0o755, NOFID), m.Rmkdir))


@case(
    "fids.create.attach-root",
    "§4.3",
    "Tattach creates a fid for the export root, not open",
    dialects=ALL,
)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    return conn.err(m.Tread(ROOT_FID, 0, 10), errno.EBADF)


@case("walk.clone", "§4.4", "nwname 0 clones: no qids, same file", dialects=ALL)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    r = conn.ok(m.Twalk(ROOT_FID, 300, []), m.Rwalk)
    assert isinstance(r, m.Rwalk)
    expect(r.qids == [], f"{len(r.qids)} qids")
    conn.clunk(300)
    return "Rwalk with no qids"


@case("walk.clone-not-open", "§4.4", "a clone of an open fid is not open", dialects=ALL)
def _(ctx: Context) -> str:
    conn, _d, f = file_in_casedir(ctx, b"abc")
    conn.open(f)
    g = conn.clone(f)
    return conn.err(m.Tread(g, 0, 3), errno.EBADF)


@case("walk.from-open", "§4.4", "walking from an open fid to a new fid is allowed", dialects=ALL)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    conn.create(d, "f")
    conn.open(d)
    return describe(conn.ok(m.Twalk(d, conn.fid(), ["f"]), m.Rwalk))


@case("walk.16-names", "§4.4", "a walk of 16 names returns 16 qids", dialects=ALL)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    sub = d
    for i in range(16):
        conn.mkdir(sub, f"n{i}")
        sub = conn.walk(sub, f"n{i}")
    r = conn.ok(m.Twalk(d, conn.fid(), [f"n{i}" for i in range(16)]), m.Rwalk)
    assert isinstance(r, m.Rwalk)
    expect(len(r.qids) == 16, f"{len(r.qids)} qids")
    return "16 qids"


@case("walk.17-names", "§4.4", "a walk of 17 names is malformed: EPROTO", dialects=ALL)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    data = m.Twalk(ROOT_FID, 300, ["."] * 16).encode(3, ctx.dialect)
    body = bytearray(data[7:])
    body[8:10] = (17).to_bytes(2, "little")
    body += b"\x01\x00."
    conn.send_raw(
        (7 + len(body)).to_bytes(4, "little") + bytes([110]) + (3).to_bytes(2, "little") + body
    )
    _, r = conn.recv()
    return conn.check_err(m.Twalk(0, 0), r, [errno.EPROTO])


@case("walk.first-fails", "§4.4", "if the first name fails the reply is its error", dialects=ALL)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    return conn.err(m.Twalk(d, conn.fid(), ["missing"]), errno.ENOENT)


@case(
    "walk.partial",
    "§4.4",
    "a later name failing gives the qids so far; newfid not created",
    dialects=ALL,
)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    conn.mkdir(d, "a")
    r = conn.ok(m.Twalk(d, 333, ["a", "missing", "x"]), m.Rwalk)
    assert isinstance(r, m.Rwalk)
    expect(len(r.qids) == 1, f"{len(r.qids)} qids")
    conn.err(m.Tclunk(333), errno.EBADF)
    return "Rwalk with 1 qid; newfid 333 unknown"


@case(
    "walk.partial-onto-itself",
    "§4.4",
    "a partial walk with newfid = fid leaves fid unchanged",
    dialects=ALL,
)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    conn.mkdir(d, "a")
    f = conn.clone(d)
    conn.ok(m.Twalk(f, f, ["a", "missing"]), m.Rwalk)
    r = conn.ok(m.Twalk(f, conn.fid(), ["a"]), m.Rwalk)
    return "fid still at the directory: " + describe(r)


@case("walk.onto-itself", "§4.4", "a walk with newfid = fid moves fid", dialects=ALL)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    conn.mkdir(d, "a")
    conn.create(d, "b")
    f = conn.clone(d)
    conn.ok(m.Twalk(f, f, ["a"]), m.Rwalk)
    return conn.err(m.Twalk(f, conn.fid(), ["b"]), errno.ENOENT) + " (fid now in a)"


@case("walk.empty-name", "§4.4", "an empty name is EINVAL", dialects=ALL)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    return conn.err(m.Twalk(conn.casedir(), conn.fid(), [""]), errno.EINVAL)


@case("walk.slash-name", "§4.4", "a name containing / is EINVAL, before any lookup", dialects=ALL)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    conn.mkdir(d, "a")
    return conn.err(m.Twalk(d, conn.fid(), ["missing", "a/b"]), errno.EINVAL)


@case("walk.through-file", "§4.4", "walking a name from a file is ENOTDIR", dialects=ALL)
def _(ctx: Context) -> str:
    conn, _d, f = file_in_casedir(ctx)
    return conn.err(m.Twalk(f, conn.fid(), ["x"]), errno.ENOTDIR)


@case("walk.dot", "§4.4", "'.' stays on the same file", dialects=ALL)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    conn.create(d, "f")
    f = conn.walk(d, ".", ".")
    return describe(conn.ok(m.Twalk(f, conn.fid(), ["f"]), m.Rwalk))


@case("walk.dotdot", "§4.4", "'..' goes to the parent directory", dialects=ALL)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    s = subdir(conn, d, "s")
    conn.create(d, "f")
    p = conn.walk(s, "..")
    return describe(conn.ok(m.Twalk(p, conn.fid(), ["f"]), m.Rwalk))


@case(
    "walk.symlink-not-followed", "§4.4", "a symlink is walked to itself; a name after it is ENOTDIR"
)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    conn.mkdir(d, "real")
    conn.ok(m.Tsymlink(d, "link", "real", NOFID), m.Rsymlink)
    r = conn.ok(m.Twalk(d, conn.fid(), ["link"]), m.Rwalk)
    assert isinstance(r, m.Rwalk)
    expect(r.qids[0].type == c.QidType.SYMLINK, f"qid {r.qids[0]}")
    r2 = conn.call(m.Twalk(d, conn.fid(), ["link", "x"]))
    expect(isinstance(r2, m.Rwalk) and len(r2.qids) == 1, f"walk through: {describe(r2)}")
    return "link qid type 0x02; walk through it stops after 1 name"


@case("clunk.after-error", "§4.5", "a clunk that fails still frees the fid")
def _(ctx: Context) -> str:
    conn, _d, f = file_in_casedir(ctx)
    conn.ok(m.Txattrcreate(f, "user.p9conf", 10, 0), m.Rxattrcreate)
    out = conn.err(m.Tclunk(f), errno.EINVAL)
    conn.err(m.Tclunk(f), errno.EBADF)
    return out + "; then EBADF"


@case("clunk.number-free", "§4.5", "a clunked fid number can be used again", dialects=ALL)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    conn.ok(m.Twalk(ROOT_FID, 77, []), m.Rwalk)
    conn.clunk(77)
    return describe(conn.ok(m.Twalk(ROOT_FID, 77, []), m.Rwalk))


@case(
    "remove.fid-gone-on-error", "§4.5", "a Tremove that fails still removes the fid", dialects=ALL
)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    s = subdir(conn, d, "s")
    conn.create(s, "f")
    out = conn.err(m.Tremove(s), errno.ENOTEMPTY, errno.EEXIST)
    conn.err(m.Tclunk(s), errno.EBADF)
    return out + "; fid gone"


@case(
    "lifetime.unlinked-open",
    "§4.6",
    "an open fid keeps working after its file is unlinked",
    dialects=ALL,
)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    conn.create(d, "f", b"still here")
    f = conn.walk(d, "f")
    conn.open(f)
    g = conn.walk(d, "f")
    conn.ok(m.Tremove(g), m.Rremove)
    r = conn.ok(m.Tread(f, 0, 100), m.Rread)
    assert isinstance(r, m.Rread)
    expect(bytes(r.data) == b"still here", f"read {bytes(r.data)!r}")
    return "read after unlink: 'still here'"


@case("lifetime.clunk-releases-locks", "§4.6", "closing a fid's open file releases its locks")
def _(ctx: Context) -> str:
    conn, d, f = opened(ctx, b"x")
    conn.ok(m.Tlock(f, c.LOCK_TYPE_WRLCK, 0, 0, 0, 1, "a"), m.Rlock)
    g = conn.walk(d, "f")
    conn.open(g, "rw")
    conn.clunk(f)
    r = conn.ok(m.Tlock(g, c.LOCK_TYPE_WRLCK, 0, 0, 0, 1, "a"), m.Rlock)
    assert isinstance(r, m.Rlock)
    expect(r.status == c.LOCK_SUCCESS, f"status {r.status}")
    return "lock through a second fid succeeds after the clunk"


@case(
    "lifetime.unlinked-getattr",
    "§4.6",
    "a fid holds the inode: Tgetattr after unlink shows nlink 0",
)
def _(ctx: Context) -> str:
    conn, d, f = file_in_casedir(ctx)
    conn.unlink(d, "f")
    a = getattr_of(conn, f)
    expect(a.nlink == 0, f"nlink {a.nlink}")
    return "nlink 0"
