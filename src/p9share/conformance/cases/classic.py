"""§6: 9P2000.u and 9P2000 (Topen, Tcreate, Tstat, Twstat, directory reads, Rerror)."""

from __future__ import annotations

import errno

from ...protocol import constants as c
from ...protocol import messages as m
from ...protocol.constants import Dialect
from ...protocol.wire import Qid
from ..context import ROOT_FID, Conn, Context, describe
from ..registry import CLASSIC, Failure, case
from ._util import expect, frame, u32

DOTU = frozenset({Dialect.P9P2000U})
_KEEP_QID = Qid(0xFF, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF)


def blank_stat(**changes: object) -> m.Stat:
    """A Twstat stat that changes nothing except the fields given."""
    st = m.Stat(type=0xFFFF, dev=0xFFFFFFFF, qid=_KEEP_QID, mode=0xFFFFFFFF, atime=0xFFFFFFFF,
                mtime=0xFFFFFFFF, length=0xFFFFFFFFFFFFFFFF, name="", uid="", gid="", muid="",
                extension="", n_uid=c.NONUNAME, n_gid=c.NONUNAME, n_muid=c.NONUNAME)  # fmt: skip
    for k, v in changes.items():
        setattr(st, k, v)
    return st


def stat_of(conn: Conn, fid: int) -> m.Stat:
    r = conn.ok(m.Tstat(fid), m.Rstat)
    assert isinstance(r, m.Rstat)
    return r.stat


def _file(ctx: Context, data: bytes = b"", name: str = "f") -> tuple[Conn, int, int]:
    conn = ctx.conn()
    d = conn.casedir()
    conn.create(d, name, data)
    return conn, d, conn.walk(d, name)


@case(
    "classic.served",
    "§6.1",
    "Topen, Tcreate, Tstat and Twstat are served (not EOPNOTSUPP)",
    dialects=CLASSIC,
)
def _(ctx: Context) -> str:
    conn, _d, f = _file(ctx, b"x")
    stat_of(conn, f)
    conn.ok(m.Twstat(f, blank_stat()), m.Rwstat)
    return describe(conn.ok(m.Topen(f, c.OREAD), m.Ropen))


@case(
    "classic.attach-layout",
    "§6.2",
    "Tattach in the dialect's layout (no n_uname in 9P2000) attaches",
    dialects=CLASSIC,
)
def _(ctx: Context) -> str:
    conn = ctx.conn(attach=False)
    return describe(conn.ok(m.Tattach(ROOT_FID, c.NOFID, "0", ctx.aname, 0), m.Rattach))


@case("classic.rerror", "§6.3", "errors are Rerror; in .u with the Linux errno", dialects=CLASSIC)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    r = conn.call(m.Tclunk(4242))
    expect(isinstance(r, m.Rerror) and r.ename != "", f"got {describe(r)}")
    assert isinstance(r, m.Rerror)
    if ctx.dialect is Dialect.P9P2000U:
        expect(r.errno == errno.EBADF, f"errno {r.errno}")
    return describe(r)


@case(
    "classic.rerror-no-errno",
    "§6.3",
    "9P2000's Rerror has no errno field (the frame ends after ename)",
    dialects=frozenset({Dialect.P9P2000}),
)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    conn.send_raw(m.Tclunk(4242).encode(3, ctx.dialect))
    raw = conn.rc.recv_frame()
    n = int.from_bytes(raw[7:9], "little")
    expect(raw[4] == 107 and len(raw) == 9 + n, f"frame of {len(raw)} bytes, ename of {n}")
    return f"Rerror {raw[9:].decode()!r}"


@case(
    "open.read",
    "§6.4",
    "Topen OREAD: Ropen with qid and iounit msize-24; data readable",
    dialects=CLASSIC,
)
def _(ctx: Context) -> str:
    conn, _d, f = _file(ctx, b"hello")
    r = conn.ok(m.Topen(f, c.OREAD), m.Ropen)
    assert isinstance(r, m.Ropen)
    expect(r.iounit == conn.rc.msize - 24, f"iounit {r.iounit}")
    expect(conn.read_all(f) == b"hello", "wrong data")
    return describe(r)


@case("open.oexec", "§6.4", "OEXEC opens read-only", dialects=CLASSIC)
def _(ctx: Context) -> str:
    conn, _d, f = _file(ctx, b"x")
    conn.ok(m.Topen(f, c.OEXEC), m.Ropen)
    conn.ok(m.Tread(f, 0, 1), m.Rread)
    return conn.err(m.Twrite(f, 0, b"y"), errno.EBADF)


@case("open.otrunc", "§6.4", "OTRUNC truncates", dialects=CLASSIC)
def _(ctx: Context) -> str:
    conn, _d, f = _file(ctx, b"0123")
    conn.ok(m.Topen(f, c.OWRITE | c.OTRUNC), m.Ropen)
    st = stat_of(conn, f)
    expect(st.length == 0, f"length {st.length}")
    return "length 0"


@case("open.bad-mode", "§6.4", "an unknown mode bit (0x08) is EINVAL", dialects=CLASSIC)
def _(ctx: Context) -> str:
    conn, _d, f = _file(ctx)
    return conn.err(m.Topen(f, 0x08), errno.EINVAL)


@case("open.dir-write", "§6.4", "a directory opened for writing is EISDIR", dialects=CLASSIC)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    return conn.err(m.Topen(conn.casedir(), c.OWRITE), errno.EISDIR)


@case("open.twice", "§6.4", "Topen of an open fid is EBADF", dialects=CLASSIC)
def _(ctx: Context) -> str:
    conn, _d, f = _file(ctx)
    conn.ok(m.Topen(f, c.OREAD), m.Ropen)
    return conn.err(m.Topen(f, c.OREAD), errno.EBADF)


@case("open.orclose", "§6.4", "ORCLOSE removes the file at Tclunk", dialects=CLASSIC)
def _(ctx: Context) -> str:
    conn, d, f = _file(ctx)
    conn.ok(m.Topen(f, c.ORDWR | c.ORCLOSE), m.Ropen)
    conn.clunk(f)
    expect(not conn.exists(d, "f"), "file still there")
    return "removed at clunk"


@case(
    "create.file",
    "§6.5",
    "Tcreate makes fid the new file, open, with the permission bits",
    dialects=CLASSIC,
)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    f = conn.clone(d)
    r = conn.ok(m.Tcreate(f, "n", 0o640, c.ORDWR), m.Rcreate)
    conn.ok(m.Twrite(f, 0, b"abc"), m.Rwrite)
    st = stat_of(conn, f)
    expect(st.mode & 0o777 == 0o640 and st.length == 3 and st.name == "n",
           f"mode {st.mode:o} length {st.length} name {st.name!r}")  # fmt: skip
    return describe(r)


@case(
    "create.dir",
    "§6.5",
    "Tcreate with DMDIR makes a directory (qid 0x80, open for reading)",
    dialects=CLASSIC,
)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    f = conn.clone(d)
    r = conn.ok(m.Tcreate(f, "s", c.DMDIR | 0o755, c.OREAD), m.Rcreate)
    assert isinstance(r, m.Rcreate)
    expect(r.qid.type == c.QidType.DIR, f"qid {r.qid}")
    rr = conn.ok(m.Tread(f, 0, 4096), m.Rread)
    return f"{describe(r)}; {describe(rr)}"


@case("create.exists", "§6.5", "Tcreate of an existing name fails (EEXIST)", dialects=CLASSIC)
def _(ctx: Context) -> str:
    conn, d, _f = _file(ctx)
    return conn.err(m.Tcreate(conn.clone(d), "f", 0o644, c.ORDWR), errno.EEXIST)


@case("create.bad-name", "§6.5", "Tcreate of '..' is EINVAL", dialects=CLASSIC)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    return conn.err(m.Tcreate(conn.clone(conn.casedir()), "..", 0o644, c.ORDWR), errno.EINVAL)


@case("create.on-file", "§6.5", "Tcreate on a file fid is ENOTDIR", dialects=CLASSIC)
def _(ctx: Context) -> str:
    conn, _d, f = _file(ctx)
    return conn.err(m.Tcreate(f, "x", 0o644, c.ORDWR), errno.ENOTDIR)


@case(
    "create.dir-write",
    "§6.5",
    "Tcreate of a directory opened for writing is EISDIR",
    dialects=CLASSIC,
)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    return conn.err(
        m.Tcreate(conn.clone(conn.casedir()), "s", c.DMDIR | 0o755, c.OWRITE), errno.EISDIR
    )


@case("create.symlink", "§6.5", ".u: DMSYMLINK creates a symlink to the extension", dialects=DOTU)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    conn.ok(m.Tcreate(conn.clone(d), "l", c.DMSYMLINK | 0o777, c.OREAD, "/some/where"), m.Rcreate)
    st = stat_of(conn, conn.walk(d, "l"))
    expect(bool(st.mode & c.DMSYMLINK) and st.extension == "/some/where",
           f"mode {st.mode:#x} extension {st.extension!r}")  # fmt: skip
    return f"extension {st.extension!r}"


@case("create.fifo", "§6.5", ".u: DMNAMEDPIPE creates a FIFO", dialects=DOTU)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    conn.ok(m.Tcreate(conn.clone(d), "p", c.DMNAMEDPIPE | 0o644, c.OREAD, ""), m.Rcreate)
    st = stat_of(conn, conn.walk(d, "p"))
    expect(bool(st.mode & c.DMNAMEDPIPE), f"mode {st.mode:#x}")
    return f"mode {st.mode:#x}"


@case("create.device", "§6.5", ".u: DMDEVICE is refused (EPERM)", dialects=DOTU)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    msg = m.Tcreate(conn.clone(conn.casedir()), "null", c.DMDEVICE | 0o666, c.OREAD, "c 1 3")
    return conn.err(msg, errno.EPERM)


@case(
    "create.hardlink",
    "§6.5",
    ".u: DMLINK with a fid number in extension makes a hard link",
    dialects=DOTU,
)
def _(ctx: Context) -> str:
    conn, d, f = _file(ctx, b"x")
    conn.ok(m.Tcreate(conn.clone(d), "g", c.DMLINK, c.OREAD, str(f)), m.Rcreate)
    expect(conn.exists(d, "g"), "no link")
    return "link g created"


@case(
    "create.plain-special",
    "§6.5",
    "9P2000: .u-only perm bits (DMSYMLINK) are EINVAL",
    dialects=frozenset({Dialect.P9P2000}),
)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    return conn.err(
        m.Tcreate(conn.clone(conn.casedir()), "l", c.DMSYMLINK | 0o777, c.OREAD), errno.EINVAL
    )


@case("stat.file", "§6.6", "Tstat of a file: name, length, mode, qid", dialects=CLASSIC)
def _(ctx: Context) -> str:
    conn, d, f = _file(ctx, b"12345")
    st = stat_of(conn, f)
    w = conn.ok(m.Twalk(d, conn.fid(), ["f"]), m.Rwalk)
    assert isinstance(w, m.Rwalk)
    expect(st.name == "f" and st.length == 5 and not st.mode & c.DMDIR, repr(st))
    expect(st.qid.path == w.qids[0].path, f"qid {st.qid} vs walk {w.qids[0]}")
    return f"name {st.name!r} length {st.length} mode {st.mode:o}"


@case("stat.dir", "§6.7", "a directory's stat has DMDIR and qid type 0x80", dialects=CLASSIC)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    st = stat_of(conn, conn.casedir())
    expect(bool(st.mode & c.DMDIR) and st.qid.type == 0x80, f"mode {st.mode:#x} qid {st.qid}")
    return f"mode {st.mode:#x}"


@case(
    "stat.dotu-ids", "§6.7", ".u stat carries numeric n_uid/n_gid matching uid/gid", dialects=DOTU
)
def _(ctx: Context) -> str:
    conn, _d, f = _file(ctx)
    st = stat_of(conn, f)
    expect(st.uid == str(st.n_uid) and st.gid == str(st.n_gid), repr(st))
    return f"uid {st.uid} n_uid {st.n_uid}"


@case("stat.size-field", "§6.6", "Rstat's n equals the stat's size + 2", dialects=CLASSIC)
def _(ctx: Context) -> str:
    conn, _d, f = _file(ctx)
    conn.send_raw(m.Tstat(f).encode(4, ctx.dialect))
    raw = conn.rc.recv_frame()
    n = int.from_bytes(raw[7:9], "little")
    size = int.from_bytes(raw[9:11], "little")
    expect(n == size + 2 and len(raw) == 9 + n, f"n {n}, stat size {size}, frame {len(raw)}")
    return f"n {n}, size {size}"


@case(
    "wstat.n-mismatch",
    "§6.6",
    "a Twstat whose n does not match the stat is EPROTO",
    dialects=CLASSIC,
)
def _(ctx: Context) -> str:
    conn, _d, f = _file(ctx)
    enc = blank_stat().encode(ctx.dialect)
    body = u32(f) + (len(enc) + 1).to_bytes(2, "little") + enc + b"\0"
    conn.send_raw(frame(126, 4, body))
    _, r = conn.recv()
    return conn.check_err(m.Twstat(0, blank_stat()), r, [errno.EPROTO])


@case(
    "wstat.stat-size-mismatch",
    "§6.7",
    "a stat whose size field does not match its contents is EPROTO",
    dialects=CLASSIC,
)
def _(ctx: Context) -> str:
    conn, _d, f = _file(ctx)
    enc = bytearray(blank_stat().encode(ctx.dialect)) + b"\0\0"
    enc[0:2] = (len(enc) - 2).to_bytes(2, "little")
    body = u32(f) + len(enc).to_bytes(2, "little") + bytes(enc)
    conn.send_raw(frame(126, 4, body))
    _, r = conn.recv()
    return conn.check_err(m.Twstat(0, blank_stat()), r, [errno.EPROTO])


@case("wstat.rename", "§6.7", "Twstat of name renames within the directory", dialects=CLASSIC)
def _(ctx: Context) -> str:
    conn, d, f = _file(ctx)
    conn.ok(m.Twstat(f, blank_stat(name="g")), m.Rwstat)
    expect(conn.exists(d, "g") and not conn.exists(d, "f"), "not renamed")
    return "f -> g"


@case("wstat.length", "§6.7", "Twstat of length truncates", dialects=CLASSIC)
def _(ctx: Context) -> str:
    conn, _d, f = _file(ctx, b"0123456")
    conn.ok(m.Twstat(f, blank_stat(length=2)), m.Rwstat)
    st = stat_of(conn, f)
    expect(st.length == 2, f"length {st.length}")
    return "length 2"


@case("wstat.mode", "§6.7", "Twstat of mode changes the permission bits", dialects=CLASSIC)
def _(ctx: Context) -> str:
    conn, _d, f = _file(ctx)
    conn.ok(m.Twstat(f, blank_stat(mode=0o600)), m.Rwstat)
    st = stat_of(conn, f)
    expect(st.mode & 0o777 == 0o600, f"mode {st.mode:o}")
    return f"mode {st.mode & 0o777:o}"


@case("wstat.mtime", "§6.7", "Twstat of mtime sets it", dialects=CLASSIC)
def _(ctx: Context) -> str:
    conn, _d, f = _file(ctx)
    conn.ok(m.Twstat(f, blank_stat(mtime=1234567)), m.Rwstat)
    st = stat_of(conn, f)
    expect(st.mtime == 1234567, f"mtime {st.mtime}")
    return "mtime 1234567"


@case("wstat.nothing", "§6.7", "a Twstat that changes nothing succeeds (a sync)", dialects=CLASSIC)
def _(ctx: Context) -> str:
    conn, _d, f = _file(ctx, b"x")
    conn.ok(m.Topen(f, c.ORDWR), m.Ropen)
    return describe(conn.ok(m.Twstat(f, blank_stat()), m.Rwstat))


@case(
    "wstat.all-or-nothing",
    "§6.7",
    "a Twstat with an invalid field changes nothing",
    dialects=CLASSIC,
)
def _(ctx: Context) -> str:
    conn, _d, f = _file(ctx, b"0123")
    out = conn.err(m.Twstat(f, blank_stat(length=1, dev=5)), errno.EINVAL)
    st = stat_of(conn, f)
    expect(st.length == 4, f"length {st.length}")
    return out + "; length unchanged"


@case("wstat.dirbit", "§6.7", "Twstat cannot change DMDIR (EINVAL)", dialects=CLASSIC)
def _(ctx: Context) -> str:
    conn, _d, f = _file(ctx)
    return conn.err(m.Twstat(f, blank_stat(mode=c.DMDIR | 0o755)), errno.EINVAL)


def _dir_read(conn: Conn, fid: int, count: int) -> list[m.Stat]:
    out: list[m.Stat] = []
    off = 0
    for _ in range(10000):
        r = conn.ok(m.Tread(fid, off, count), m.Rread)
        assert isinstance(r, m.Rread)
        if not r.data:
            return out
        out += m.decode_stats(r.data, conn.dialect)
        off += len(r.data)
    raise Failure("directory read never ended")


@case(
    "dirread.stats",
    "§6.8",
    "Tread on a directory returns whole stat entries (no . or ..)",
    dialects=CLASSIC,
)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    for i in range(5):
        conn.create(d, f"e{i}", b"x" * i)
    conn.mkdir(d, "sub")
    f = conn.clone(d)
    conn.ok(m.Topen(f, c.OREAD), m.Ropen)
    stats = _dir_read(conn, f, 8192)
    names = sorted(s.name for s in stats)
    expect(names == ["e0", "e1", "e2", "e3", "e4", "sub"], f"names {names}")
    e3 = next(s for s in stats if s.name == "e3")
    expect(e3.length == 3, f"e3 length {e3.length}")
    return f"{len(stats)} entries"


@case(
    "dirread.paging",
    "§6.8",
    "small counts page through every entry once, never a partial stat",
    dialects=CLASSIC,
)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    for i in range(25):
        conn.create(d, f"entry{i:02}")
    f = conn.clone(d)
    conn.ok(m.Topen(f, c.OREAD), m.Ropen)
    for count in (150, 333):
        names = [s.name for s in _dir_read(conn, f, count)]
        expect(len(names) == 25 and len(set(names)) == 25, f"count {count}: {len(names)} entries")
    return "25 entries at counts 150 and 333"


@case(
    "dirread.bad-offset",
    "§6.8",
    "a directory read at an offset other than 0 or the previous end is an error",
    dialects=CLASSIC,
)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    conn.create(d, "a")
    f = conn.clone(d)
    conn.ok(m.Topen(f, c.OREAD), m.Ropen)
    conn.ok(m.Tread(f, 0, 4096), m.Rread)
    return conn.err(m.Tread(f, 7, 4096), errno.EINVAL)


@case(
    "dirread.count-too-small",
    "§6.8",
    "a count too small for the next stat is an error, not a partial stat",
    dialects=CLASSIC,
)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    conn.create(d, "a")
    f = conn.clone(d)
    conn.ok(m.Topen(f, c.OREAD), m.Ropen)
    r = conn.call(m.Tread(f, 0, 20))
    if isinstance(r, m.Rread) and len(r.data) == 0:
        raise Failure("empty Rread (the end of the directory) instead of EINVAL: entries remain")
    return conn.check_err(m.Tread(f, 0, 20), r, [errno.EINVAL])


@case(
    "open.oappend", "§6.4", "OAPPEND (0x80, Linux's .u client) writes at the end", dialects=CLASSIC
)
def _(ctx: Context) -> str:
    conn, _d, f = _file(ctx, b"0123")
    conn.ok(m.Topen(f, c.OWRITE | c.OAPPEND), m.Ropen)
    conn.ok(m.Twrite(f, 0, b"ab"), m.Rwrite)
    st = stat_of(conn, f)
    expect(st.length == 6, f"length {st.length}")
    return "length 6 after a write at offset 0"


@case("open.symlink", "§6.4", ".u: Topen of a symbolic link is ELOOP", dialects=DOTU)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    conn.symlink(d, "l", "target")
    return conn.err(m.Topen(conn.walk(d, "l"), c.OREAD), errno.ELOOP)


@case("wstat.root-name", "§6.6", "Twstat renaming the export root is EBUSY", dialects=CLASSIC)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    return conn.err(m.Twstat(conn.clone(ROOT_FID), blank_stat(name="elsewhere")), errno.EBUSY)


@case(
    "wstat.readonly",
    "§6.6",
    "Twstat changing a file on a read-only export is EROFS",
    dialects=CLASSIC,
)
def _(ctx: Context) -> str:
    rw, _d, f = _file(ctx, b"abc")
    ro = ctx.ro_conn()
    rf = ro.walk(ctx.casedir(ro), "f")
    out = ro.err(m.Twstat(rf, blank_stat(length=0)), errno.EROFS)
    expect(stat_of(rw, f).length == 3, "truncated anyway")
    return out
