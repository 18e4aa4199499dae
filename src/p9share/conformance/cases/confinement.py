"""§7 and §8: attach names, authentication, identity, read-only exports, ownership, confinement."""

from __future__ import annotations

import errno
import stat

from ...protocol import constants as c
from ...protocol import messages as m
from ...protocol.constants import NOFID
from ...protocol.wire import Qid
from ..context import ROOT_FID, Context, describe
from ..registry import ALL, NotApplicable, case
from ._util import expect, file_in_casedir, getattr_of


@case("aname.slashes", "§7.4", "'/NAME/' selects the same export as NAME", dialects=ALL)
def _(ctx: Context) -> str:
    if not ctx.aname.strip("/"):
        raise NotApplicable("needs a non-empty --aname")
    conn = ctx.conn()
    r = conn.ok(
        m.Tattach(conn.fid(), NOFID, "root", "/" + ctx.aname.strip("/") + "/", 0), m.Rattach
    )
    return describe(r)


@case("aname.subdirectory", "§7.4", "NAME/sub selects no export (ENOENT)", dialects=ALL)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    aname = ctx.aname.strip("/") + "/" + ctx.scratch
    return conn.err(m.Tattach(conn.fid(), NOFID, "root", aname, 0), errno.ENOENT)


@case("aname.slash-only", "§7.4", "the attach name '/' is the empty name", dialects=ALL)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    slash = conn.call(m.Tattach(conn.fid(), NOFID, "root", "/", 0))
    empty = conn.call(m.Tattach(conn.fid(), NOFID, "root", "", 0))
    # the same export (same root qid), or the same refusal
    expect(describe(slash) == describe(empty),
           f"'/' gave {describe(slash)}, '' gave {describe(empty)}")  # fmt: skip
    return describe(slash)


@case(
    "auth.default-none",
    "§7.3",
    "by default Tattach with afid NOFID needs no authentication",
    dialects=ALL,
)
def _(ctx: Context) -> str:
    conn = ctx.conn(attach=False)
    return describe(conn.ok(m.Tattach(ROOT_FID, NOFID, "nobody", ctx.aname, 65534), m.Rattach))


@case(
    "identity.no-access-checks",
    "§7.5",
    "the server makes no permission checks of its own (mode 000 file readable)",
)
def _(ctx: Context) -> str:
    conn = ctx.conn(attach=False)
    conn.ok(m.Tattach(ROOT_FID, NOFID, "u", ctx.aname, 4321), m.Rattach)
    d = conn.casedir()
    conn.create(d, "f", b"secret", mode=0o000)
    f = conn.walk(d, "f")
    conn.open(f)
    return describe(conn.ok(m.Tread(f, 0, 10), m.Rread))


@case(
    "ownership.new-file",
    "§7.8",
    "a new file belongs to the attach uid and gid (root server) or to the server",
)
def _(ctx: Context) -> str:
    conn = ctx.conn(attach=False)
    conn.ok(m.Tattach(ROOT_FID, NOFID, "u", ctx.aname, 4321), m.Rattach)
    d = conn.casedir()
    f = conn.clone(d)
    conn.ok(m.Tlcreate(f, "f", 2, 0o644, 5432), m.Rlcreate)
    a = getattr_of(conn, f)
    root = getattr_of(conn, ROOT_FID)
    ok = (a.uid, a.gid) == (4321, 5432) or a.uid == root.uid
    expect(ok, f"owner {a.uid}:{a.gid}")
    return f"owner {a.uid}:{a.gid}"


@case("ownership.chown", "§7.8", "Tsetattr UID/GID changes ownership (root server), or EPERM")
def _(ctx: Context) -> str:
    conn, _d, f = file_in_casedir(ctx)
    r = conn.call(
        m.Tsetattr(f, c.SetattrValid.UID | c.SetattrValid.GID, 0, 1234, 2345, 0, 0, 0, 0, 0)
    )
    if isinstance(r, m.Rsetattr):
        a = getattr_of(conn, f)
        expect((a.uid, a.gid) == (1234, 2345), f"owner {a.uid}:{a.gid}")
        return "owner 1234:2345"
    return conn.check_err(m.Tsetattr(0, 0, 0, 0, 0, 0, 0, 0, 0, 0), r, [errno.EPERM])


def _ro_case(cid: str, title: str, op: str) -> None:
    @case(cid, "§7.6", title)
    def _(ctx: Context) -> str:
        rw = ctx.conn()
        d = rw.casedir()
        rw.create(d, "f", b"data")
        rw.mkdir(d, "s")
        ro = ctx.ro_conn()
        rd = ctx.casedir(ro)
        f = ro.walk(rd, "f")
        msgs: dict[str, m.Message] = {
            "lopen-write": m.Tlopen(f, 1),
            "lopen-trunc": m.Tlopen(f, c.L_O_TRUNC),
            "lcreate": m.Tlcreate(ro.clone(rd), "n", 2, 0o644, NOFID),
            "mkdir": m.Tmkdir(rd, "n", 0o755, NOFID),
            "symlink": m.Tsymlink(rd, "n", "x", NOFID),
            "mknod": m.Tmknod(rd, "n", 0o010644, 0, 0, NOFID),
            "link": m.Tlink(rd, f, "n"),
            "rename": m.Trename(f, rd, "n"),
            "renameat": m.Trenameat(rd, "f", rd, "n"),
            "unlinkat": m.Tunlinkat(rd, "f", 0),
            "remove": m.Tremove(f),
            "setattr": m.Tsetattr(f, c.SetattrValid.CTIME, 0, 0, 0, 0, 0, 0, 0, 0),
            "xattrcreate": m.Txattrcreate(f, "user.x", 1, 0),
        }
        if op == "reads":
            ro.open(f)
            ro.ok(m.Tread(f, 0, 10), m.Rread)
            ro.ok(m.Tgetattr(f, 1), m.Rgetattr)
            ro.ok(m.Tstatfs(f), m.Rstatfs)
            ro.ok(m.Tfsync(f, 0), m.Rfsync)
            ro.ok(m.Tlock(f, c.LOCK_TYPE_RDLCK, 0, 0, 0, 1, ""), m.Rlock)
            dd = ro.clone(rd)
            ro.open(dd)
            ro.ok(m.Treaddir(dd, 0, 4096), m.Rreaddir)
            return "read, getattr, statfs, fsync, lock, readdir work"
        out = ro.err(msgs[op], errno.EROFS)
        expect(rw.exists(d, "f"), "the file is gone")
        return out


for _op in ("lopen-write", "lopen-trunc", "lcreate", "mkdir", "symlink", "mknod", "link", "rename",
            "renameat", "unlinkat", "remove", "setattr", "xattrcreate"):  # fmt: skip
    _ro_case(f"readonly.{_op}", f"T{_op} on a read-only export is EROFS", _op)
_ro_case(
    "readonly.reads-work",
    "reading, walking, getattr, statfs, readdir, fsync, locks work read-only",
    "reads",
)


@case(
    "confine.handles",
    "§8.1",
    "a fid follows its inode, not a path: after a rename it reads the same file",
    dialects=ALL,
)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    conn.create(d, "a", b"AAA")
    f = conn.walk(d, "a")
    b = conn.walk(d, "a")
    if ctx.dotl:
        conn.ok(m.Trename(b, d, "b"), m.Rrename)
    else:
        st = m.Stat(type=0xFFFF, dev=0xFFFFFFFF, qid=Qid(0xFF, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF),
                    mode=0xFFFFFFFF, atime=0xFFFFFFFF, mtime=0xFFFFFFFF,
                    length=0xFFFFFFFFFFFFFFFF, name="b")  # fmt: skip
        conn.ok(m.Twstat(b, st), m.Rwstat)
    conn.create(d, "a", b"new")
    conn.open(f)
    data = conn.read_all(f)
    expect(data == b"AAA", f"read {data!r}")
    return "old fid reads the renamed file"


@case("confine.names", "§8.2", "'..' and '.' are never names to create", dialects=ALL)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    f = conn.clone(d)
    msg: m.Message = (
        m.Tlcreate(f, "..", 2, 0o644, NOFID) if ctx.dotl else m.Tcreate(f, "..", 0o644, 2)
    )
    return conn.err(msg, errno.EINVAL)


@case(
    "confine.dotdot-root", "§8.3", "'..' at the export root stays at the root (§9.5)", dialects=ALL
)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    r = conn.ok(m.Twalk(ROOT_FID, conn.fid(), [".."] * 16), m.Rwalk)
    a = conn.ok(m.Tattach(conn.fid(), NOFID, "root", ctx.aname, 0), m.Rattach)
    assert isinstance(r, m.Rwalk) and isinstance(a, m.Rattach)
    expect(all(q.path == a.qid.path for q in r.qids), f"qids {r.qids[:2]}..., root {a.qid}")
    expect(
        bool(ctx.scratch) and conn.exists(conn.walk(ROOT_FID, ".."), ctx.scratch), "not at the root"
    )
    return f"16 x '..' stays at root path {a.qid.path:#x}"


@case("confine.dotdot-mixed", "§8.3", "'../x/..' style walks never leave the root", dialects=ALL)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    f = conn.walk(ROOT_FID, ctx.scratch, "..", "..", "..")
    expect(conn.exists(f, ctx.scratch), "not at the export root")
    return "back at the root"


@case(
    "confine.symlink-absolute",
    "§8.4",
    "a symlink to / is never followed: walk through it is ENOTDIR",
)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    conn.ok(m.Tsymlink(d, "etc", "/etc", NOFID), m.Rsymlink)
    r = conn.call(m.Twalk(d, conn.fid(), ["etc", "passwd"]))
    expect(isinstance(r, m.Rwalk) and len(r.qids) == 1, f"walk through: {describe(r)}")
    return describe(r)


@case("confine.symlink-lcreate", "§8.4", "Tlcreate of a symlink's name never creates through it")
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    conn.ok(m.Tsymlink(d, "l", "target-p9conf", NOFID), m.Rsymlink)
    out = conn.err(m.Tlcreate(conn.clone(d), "l", 2, 0o644, NOFID), errno.ELOOP, errno.EEXIST)
    expect(not conn.exists(d, "target-p9conf"), "the target was created")
    return out


@case(
    "confine.symlink-loop",
    "§8.4",
    "a symlink loop is just a link: walk returns it, Tlopen is ELOOP",
)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    conn.ok(m.Tsymlink(d, "a", "b", NOFID), m.Rsymlink)
    conn.ok(m.Tsymlink(d, "b", "a", NOFID), m.Rsymlink)
    return conn.err(m.Tlopen(conn.walk(d, "a"), 0), errno.ELOOP)


@case("confine.symlink-setattr", "§8.4", "Tsetattr times act on the link itself, not the target")
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    conn.create(d, "t")
    conn.ok(m.Tsymlink(d, "l", "t", NOFID), m.Rsymlink)
    v = c.SetattrValid.MTIME | c.SetattrValid.MTIME_SET
    conn.ok(m.Tsetattr(conn.walk(d, "l"), v, 0, 0, 0, 0, 0, 0, 12345, 0), m.Rsetattr)
    tm = getattr_of(conn, conn.walk(d, "t")).mtime_sec
    expect(tm != 12345, "the target's mtime changed")
    return "target untouched"


@case("confine.device", "§8.5", "device nodes are never created (EPERM)")
def _(ctx: Context) -> str:
    conn = ctx.conn()
    return conn.err(
        m.Tmknod(conn.casedir(), "zero", stat.S_IFCHR | 0o666, 1, 5, NOFID), errno.EPERM
    )


@case(
    "confine.race-name-swapped",
    "§8.6",
    "Trename through a fid whose name now names another file is ENOENT",
)
def _(ctx: Context) -> str:
    conn, d, f = file_in_casedir(ctx)
    conn.unlink(d, "f")
    conn.create(d, "f", b"other")
    out = conn.err(m.Trename(f, d, "g"), errno.ENOENT)
    expect(conn.exists(d, "f") and not conn.exists(d, "g"), "the swapped-in file was renamed")
    return out


@case(
    "confine.qid-path-stable",
    "§8.7",
    "qid.path of one file is the same through walk, getattr and readdir",
)
def _(ctx: Context) -> str:
    conn, d, f = file_in_casedir(ctx)
    w = conn.ok(m.Twalk(d, conn.fid(), ["f"]), m.Rwalk)
    assert isinstance(w, m.Rwalk)
    g = getattr_of(conn, f).qid.path
    dd = conn.clone(d)
    conn.open(dd)
    from ._util import readdir_all

    e = next(x for x in readdir_all(conn, dd) if x.name == "f")
    expect(w.qids[0].path == g == e.qid.path, f"{w.qids[0].path:#x} {g:#x} {e.qid.path:#x}")
    return f"path {g:#x}"


@case(
    "exports.one-root",
    "§7.1",
    "an export is one directory: every attach reaches the same root",
    dialects=ALL,
)
def _(ctx: Context) -> str:
    a = ctx.conn(attach=False)
    b = ctx.conn(attach=False)
    ra = a.ok(m.Tattach(ROOT_FID, NOFID, "root", ctx.aname, 0), m.Rattach)
    rb = b.ok(m.Tattach(ROOT_FID, NOFID, "nobody", ctx.aname, 65534), m.Rattach)
    assert isinstance(ra, m.Rattach) and isinstance(rb, m.Rattach)
    expect(ra.qid.path == rb.qid.path, f"{ra.qid} vs {rb.qid}")
    expect(b.exists(ROOT_FID, ctx.scratch), "the scratch directory is not visible from b")
    return f"root qid.path {ra.qid.path:#x} on both"


@case(
    "resources.many-fids",
    "§8.8",
    "no per-client fid limit by default: 2000 fids on one connection",
    dialects=ALL,
)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    batch = b"".join(
        m.Twalk(d, 10000 + i, []).encode(1 + i % 1000, ctx.dialect) for i in range(2000)
    )
    conn.send_raw(batch)
    bad = 0
    for _ in range(2000):
        _, r = conn.recv()
        bad += not isinstance(r, m.Rwalk)
    expect(bad == 0, f"{bad} of 2000 walks refused")
    return "2000 fids"
