"""§5.1-§5.15, §5.17, §5.32-§5.34: the .L requests on files."""

from __future__ import annotations

import errno
import stat
import time

from ...protocol import constants as c
from ...protocol import messages as m
from ...protocol.constants import NOFID
from ..context import ROOT_FID, Context, describe
from ..registry import ALL, DOTL, case
from ._util import expect, file_in_casedir, getattr_of, lcreate, mkfifo, opened, subdir

V = c.SetattrValid


def _setattr(fid: int, valid: int, *, mode: int = 0, uid: int = 0, gid: int = 0, size: int = 0,
             at: tuple[int, int] = (0, 0), mt: tuple[int, int] = (0, 0)) -> m.Tsetattr:  # fmt: skip
    return m.Tsetattr(fid, valid, mode, uid, gid, size, at[0], at[1], mt[0], mt[1])


for _bad in ("", ".", "..", "a/b"):

    def _bad_name(ctx: Context, name: str = _bad) -> str:
        conn = ctx.conn()
        d = conn.casedir()
        return conn.err(m.Tlcreate(conn.clone(d), name, 2, 0o644, NOFID), errno.EINVAL)

    case(f"common.bad-name.{ {'': 'empty', '.': 'dot', '..': 'dotdot', 'a/b': 'slash'}[_bad]}",
         "§5.1", f"a new name {_bad!r} is EINVAL (Tlcreate)")(_bad_name)  # fmt: skip


@case("common.mode-exact", "§5.1", "Tlcreate's mode is set exactly, no umask applied")
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    f = lcreate(conn, d, "f", mode=0o767)
    mode = stat.S_IMODE(getattr_of(conn, f).mode)
    expect(mode == 0o767, f"mode {mode:o}")
    return f"mode {mode:o}"


@case("common.mkdir-mode-exact", "§5.1", "Tmkdir's mode is set exactly, no umask applied")
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    conn.ok(m.Tmkdir(d, "s", 0o777, NOFID), m.Rmkdir)
    mode = stat.S_IMODE(getattr_of(conn, conn.walk(d, "s")).mode)
    expect(mode == 0o777, f"mode {mode:o}")
    return f"mode {mode:o}"


@case("auth.not-offered", "§5.3", "without a keyring Tauth is EOPNOTSUPP", dialects=ALL)
def _(ctx: Context) -> str:
    return ctx.conn(attach=False).err(m.Tauth(5, "root", ctx.aname, 0), errno.EOPNOTSUPP)


@case("attach.afid-not-nofid", "§5.4", "Tattach with afid other than NOFID is EINVAL", dialects=ALL)
def _(ctx: Context) -> str:
    conn = ctx.conn(attach=False)
    return conn.err(m.Tattach(ROOT_FID, 7, "root", ctx.aname, 0), errno.EINVAL)


@case("attach.unknown-aname", "§5.4", "an aname that selects no export is ENOENT", dialects=ALL)
def _(ctx: Context) -> str:
    conn = ctx.conn(attach=False)
    return conn.err(m.Tattach(ROOT_FID, NOFID, "root", "/no/such/export-p9conf", 0), errno.ENOENT)


@case("attach.root-qid", "§5.4", "Rattach carries the root's qid (a directory)", dialects=ALL)
def _(ctx: Context) -> str:
    conn = ctx.conn(attach=False)
    r = conn.ok(m.Tattach(ROOT_FID, NOFID, "root", ctx.aname, 0), m.Rattach)
    assert isinstance(r, m.Rattach)
    expect(r.qid.type == c.QidType.DIR, f"qid {r.qid}")
    return describe(r)


@case("attach.nonuname-uname-digits", "§5.4", "n_uname NONUNAME with a numeric uname attaches")
def _(ctx: Context) -> str:
    conn = ctx.conn(attach=False)
    return describe(conn.ok(m.Tattach(ROOT_FID, NOFID, "1000", ctx.aname, c.NONUNAME), m.Rattach))


def _lopen_err(cid: str, title: str, setup: str, flags: int, err: int) -> None:
    @case(cid, "§5.7", title)
    def _(ctx: Context) -> str:
        conn = ctx.conn()
        d = conn.casedir()
        if setup == "dir":
            f = subdir(conn, d)
        elif setup == "symlink":
            conn.ok(m.Tsymlink(d, "l", "target", NOFID), m.Rsymlink)
            f = conn.walk(d, "l")
        elif setup == "fifo":
            f = mkfifo(conn, d)
        elif setup == "socket":
            conn.ok(m.Tmknod(d, "sock", 0o140644, 0, 0, NOFID), m.Rmknod)
            f = conn.walk(d, "sock")
        else:
            conn.create(d, "f")
            f = conn.walk(d, "f")
        return conn.err(m.Tlopen(f, flags), err)


_lopen_err(
    "lopen.unknown-flag", "a flag outside the table is EINVAL", "file", 0o10000000, errno.EINVAL
)
_lopen_err("lopen.noaccess", "access mode 3 (NOACCESS) is EINVAL", "file", 3, errno.EINVAL)
_lopen_err("lopen.dir-write", "a directory opened for writing is EISDIR", "dir", 1, errno.EISDIR)
_lopen_err("lopen.dir-rdwr", "a directory opened read-write is EISDIR", "dir", 2, errno.EISDIR)
_lopen_err(
    "lopen.dir-trunc", "a directory opened with TRUNC is EISDIR", "dir", c.L_O_TRUNC, errno.EISDIR
)
_lopen_err("lopen.symlink", "a symbolic link is ELOOP", "symlink", 0, errno.ELOOP)
_lopen_err("lopen.fifo", "a FIFO is ENXIO", "fifo", 0, errno.ENXIO)
_lopen_err("lopen.socket", "a socket is ENXIO", "socket", 0, errno.ENXIO)
_lopen_err("lopen.file-directory-flag", "a regular file with DIRECTORY is ENOTDIR", "file",
           c.L_O_DIRECTORY, errno.ENOTDIR)  # fmt: skip


@case("lopen.dir-readonly", "§5.7", "a directory opens read-only; Rlopen has its qid and iounit")
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    r = conn.ok(m.Tlopen(d, c.L_O_DIRECTORY), m.Rlopen)
    assert isinstance(r, m.Rlopen)
    expect(r.qid.type == c.QidType.DIR, f"qid {r.qid}")
    expect(r.iounit == conn.rc.msize - 24, f"iounit {r.iounit}")
    return describe(r)


@case("openflags.trunc", "§5.7.1", "TRUNC truncates the file")
def _(ctx: Context) -> str:
    conn, _d, f = file_in_casedir(ctx, b"0123456789")
    conn.ok(m.Tlopen(f, c.L_O_WRONLY | c.L_O_TRUNC), m.Rlopen)
    size = getattr_of(conn, f).size
    expect(size == 0, f"size {size}")
    return "size 0"


@case("openflags.append", "§5.7.1", "APPEND writes go to the end whatever the offset")
def _(ctx: Context) -> str:
    conn, d, f = file_in_casedir(ctx, b"0123")
    conn.ok(m.Tlopen(f, c.L_O_WRONLY | c.L_O_APPEND), m.Rlopen)
    conn.ok(m.Twrite(f, 0, b"ab"), m.Rwrite)
    g = conn.walk(d, "f")
    conn.open(g)
    data = conn.read_all(g)
    expect(data == b"0123ab", f"file holds {data!r}")
    return f"file holds {data!r}"


@case(
    "openflags.dropped",
    "§5.7.1",
    "CREAT, EXCL, NOCTTY, FASYNC, DIRECT, LARGEFILE, CLOEXEC are accepted and dropped",
)
def _(ctx: Context) -> str:
    conn, _d, f = file_in_casedir(ctx, b"x")
    flags = (c.L_O_CREAT | c.L_O_EXCL | c.L_O_NOCTTY | c.L_O_FASYNC | c.L_O_DIRECT
             | c.L_O_LARGEFILE | c.L_O_CLOEXEC)  # fmt: skip
    r = conn.ok(m.Tlopen(f, flags), m.Rlopen)
    conn.ok(m.Tread(f, 0, 1), m.Rread)
    return describe(r) + " and readable"


@case("openflags.sync-nofollow-nonblock", "§5.7.1", "SYNC, DSYNC, NONBLOCK, NOFOLLOW are accepted")
def _(ctx: Context) -> str:
    conn, _d, f = file_in_casedir(ctx, b"x")
    flags = c.L_O_RDWR | c.L_O_SYNC | c.L_O_DSYNC | c.L_O_NONBLOCK | c.L_O_NOFOLLOW
    r = conn.ok(m.Tlopen(f, flags), m.Rlopen)
    conn.ok(m.Twrite(f, 0, b"y"), m.Rwrite)
    return describe(r)


@case("lcreate.new-open", "§5.8", "Tlcreate makes fid the new file, open, with iounit msize-24")
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    f = conn.clone(d)
    r = conn.ok(m.Tlcreate(f, "n", c.L_O_RDWR, 0o644, NOFID), m.Rlcreate)
    assert isinstance(r, m.Rlcreate)
    expect(r.qid.type == 0 and r.iounit == conn.rc.msize - 24, describe(r))
    conn.ok(m.Twrite(f, 0, b"hello"), m.Rwrite)
    r2 = conn.ok(m.Tread(f, 0, 10), m.Rread)
    assert isinstance(r2, m.Rread)
    expect(bytes(r2.data) == b"hello", f"read {bytes(r2.data)!r}")
    return describe(r)


@case("lcreate.excl-exists", "§5.8", "an existing name with EXCL is EEXIST")
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    conn.create(d, "f")
    return conn.err(
        m.Tlcreate(conn.clone(d), "f", c.L_O_RDWR | c.L_O_EXCL, 0o644, NOFID), errno.EEXIST
    )


@case("lcreate.exists-opens", "§5.8", "an existing name without EXCL is opened, mode unchanged")
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    conn.create(d, "f", b"old", mode=0o600)
    f = conn.clone(d)
    conn.ok(m.Tlcreate(f, "f", c.L_O_RDWR, 0o666, NOFID), m.Rlcreate)
    r = conn.ok(m.Tread(f, 0, 10), m.Rread)
    assert isinstance(r, m.Rread)
    mode = stat.S_IMODE(getattr_of(conn, f).mode)
    expect(bytes(r.data) == b"old" and mode == 0o600, f"data {bytes(r.data)!r} mode {mode:o}")
    return "opened the existing file, mode 600 kept"


@case("lcreate.exists-dir", "§5.8", "an existing directory name without EXCL is EISDIR")
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    conn.mkdir(d, "s")
    return conn.err(m.Tlcreate(conn.clone(d), "s", c.L_O_RDWR, 0o644, NOFID), errno.EISDIR)


@case("lcreate.exists-fifo", "§5.8", "an existing FIFO is never opened (ENXIO)")
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    mkfifo(conn, d)
    return conn.err(m.Tlcreate(conn.clone(d), "fifo", c.L_O_RDWR, 0o644, NOFID), errno.ENXIO)


@case("lcreate.on-file", "§5.8", "Tlcreate on a file fid is ENOTDIR")
def _(ctx: Context) -> str:
    conn, _d, f = file_in_casedir(ctx)
    return conn.err(m.Tlcreate(f, "x", c.L_O_RDWR, 0o644, NOFID), errno.ENOTDIR)


@case("lcreate.bad-flags", "§5.8", "Tlcreate with an unknown flag is EINVAL")
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    return conn.err(m.Tlcreate(conn.clone(d), "x", 0o10000000 | 2, 0o644, NOFID), errno.EINVAL)


@case("lcreate.directory-flag", "§5.8", "DIRECTORY in the flags of a new file is EINVAL")
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    return conn.err(m.Tlcreate(conn.clone(d), "x", c.L_O_RDWR | c.L_O_DIRECTORY, 0o644, NOFID),
                    errno.EINVAL)  # fmt: skip


@case("read.past-end", "§5.9", "a read at or past the end of file is empty", dialects=ALL)
def _(ctx: Context) -> str:
    conn, _d, f = file_in_casedir(ctx, b"abc")
    conn.open(f)
    for off in (3, 1000):
        r = conn.ok(m.Tread(f, off, 10), m.Rread)
        assert isinstance(r, m.Rread)
        expect(len(r.data) == 0, f"offset {off}: {len(r.data)} bytes")
    return "empty at 3 and 1000"


@case("read.short-at-eof", "§5.9", "a read across the end returns the bytes up to it", dialects=ALL)
def _(ctx: Context) -> str:
    conn, _d, f = file_in_casedir(ctx, b"abcdef")
    conn.open(f)
    r = conn.ok(m.Tread(f, 4, 100), m.Rread)
    assert isinstance(r, m.Rread)
    expect(bytes(r.data) == b"ef", f"read {bytes(r.data)!r}")
    return "read 'ef'"


@case("read.directory", "§5.9", "Tread on an open directory is EISDIR (§9.10)")
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    conn.open(d)
    return conn.err(m.Tread(d, 0, 100), errno.EISDIR)


@case("read.write-only", "§5.9", "Tread on a write-only fid is EBADF", dialects=ALL)
def _(ctx: Context) -> str:
    conn, _d, f = file_in_casedir(ctx, b"abc")
    conn.open(f, "w")
    return conn.err(m.Tread(f, 0, 3), errno.EBADF)


@case("read.offset-2-63", "§5.9", "a read offset of 2^63 or more is EINVAL")
def _(ctx: Context) -> str:
    conn, _d, f = opened(ctx, b"abc", "r")
    return conn.err(m.Tread(f, 1 << 63, 3), errno.EINVAL)


@case("read.zero-count", "§5.9", "a read of count 0 is an empty Rread", dialects=ALL)
def _(ctx: Context) -> str:
    conn, _d, f = opened(ctx, b"abc", "r")
    r = conn.ok(m.Tread(f, 0, 0), m.Rread)
    assert isinstance(r, m.Rread)
    expect(len(r.data) == 0, f"{len(r.data)} bytes")
    return describe(r)


@case(
    "read.msize-boundary",
    "§5.9",
    "a read of exactly msize - 11 bytes fills one Rread of msize",
    dialects=ALL,
)
def _(ctx: Context) -> str:
    conn = ctx.conn(msize=8192)
    d = conn.casedir()
    conn.create(d, "f", b"m" * 9000)
    f = conn.walk(d, "f")
    conn.open(f)
    r = conn.ok(m.Tread(f, 0, 8192 - 11), m.Rread)
    assert isinstance(r, m.Rread)
    expect(len(r.data) == 8192 - 11, f"{len(r.data)} bytes")
    return f"{len(r.data)} bytes"


@case("write.read-only", "§5.10", "Twrite on a read-only fid is EBADF", dialects=ALL)
def _(ctx: Context) -> str:
    conn, _d, f = opened(ctx, b"abc", "r")
    return conn.err(m.Twrite(f, 0, b"x"), errno.EBADF)


@case("write.directory", "§5.10", "Twrite on an open directory is EBADF")
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    conn.open(d)
    return conn.err(m.Twrite(d, 0, b"x"), errno.EBADF)


@case("write.offset-2-63", "§5.10", "a write offset of 2^63 or more is EINVAL")
def _(ctx: Context) -> str:
    conn, _d, f = opened(ctx, b"abc", "rw")
    return conn.err(m.Twrite(f, 1 << 63, b"x"), errno.EINVAL)


@case(
    "write.zero-length",
    "§5.10",
    "a zero-length write answers count 0 and changes nothing",
    dialects=ALL,
)
def _(ctx: Context) -> str:
    conn, _d, f = opened(ctx, b"abc", "rw")
    r = conn.ok(m.Twrite(f, 10, b""), m.Rwrite)
    assert isinstance(r, m.Rwrite)
    expect(r.count == 0, f"count {r.count}")
    if ctx.dotl:
        size = getattr_of(conn, f).size
        expect(size == 3, f"size {size}")
    return "Rwrite count 0"


@case(
    "write.msize-boundary",
    "§5.10",
    "a Twrite frame of exactly msize bytes is accepted",
    dialects=ALL,
)
def _(ctx: Context) -> str:
    conn = ctx.conn(msize=8192)
    d = conn.casedir()
    conn.create(d, "f")
    f = conn.walk(d, "f")
    conn.open(f, "rw")
    n = 8192 - 23  # size[4] type[1] tag[2] fid[4] offset[8] count[4]
    r = conn.ok(m.Twrite(f, 0, b"w" * n), m.Rwrite)
    assert isinstance(r, m.Rwrite)
    expect(r.count == n, f"count {r.count}")
    return f"wrote {n} bytes in a frame of 8192"


@case(
    "write.over-msize-closes",
    "§5.10",
    "a Twrite frame one byte over msize closes the connection",
    dialects=ALL,
)
def _(ctx: Context) -> str:
    conn = ctx.conn(msize=8192)
    d = conn.casedir()
    conn.create(d, "f")
    f = conn.walk(d, "f")
    conn.open(f, "rw")
    conn.send_raw(m.Twrite(f, 0, b"w" * (8192 - 22)).encode(5, ctx.dialect))
    expect(conn.closed(), "connection stayed open")
    return "connection closed"


@case("write.large", "§5.10", "a write of 1 MiB in one frame is written whole", dialects=ALL)
def _(ctx: Context) -> str:
    conn = ctx.conn(msize=1048576 + 24)
    d = conn.casedir()
    conn.create(d, "f")
    f = conn.walk(d, "f")
    conn.open(f, "rw")
    n = conn.rc.msize - 23
    r = conn.ok(m.Twrite(f, 0, b"L" * n), m.Rwrite)
    assert isinstance(r, m.Rwrite)
    expect(r.count == n, f"count {r.count} of {n}")
    back = conn.read_all(f)
    expect(back == b"L" * n, f"read back {len(back)} bytes")
    return f"{n} bytes written and read back"


@case("clunk.unknown", "§5.11", "Tclunk of an unknown fid is EBADF", dialects=ALL)
def _(ctx: Context) -> str:
    return ctx.conn().err(m.Tclunk(9999), errno.EBADF)


@case("remove.root", "§5.12", "Tremove of the export root is EBUSY", dialects=ALL)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    return conn.err(m.Tremove(conn.clone(ROOT_FID)), errno.EBUSY)


@case("remove.file", "§5.12", "Tremove removes the file and the fid", dialects=ALL)
def _(ctx: Context) -> str:
    conn, d, f = file_in_casedir(ctx)
    conn.ok(m.Tremove(f), m.Rremove)
    expect(not conn.exists(d, "f"), "file still there")
    conn.err(m.Tclunk(f), errno.EBADF)
    return "removed; fid gone"


@case("remove.empty-dir", "§5.12", "Tremove of an empty directory removes it", dialects=ALL)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    s = subdir(conn, d)
    conn.ok(m.Tremove(s), m.Rremove)
    expect(not conn.exists(d, "d"), "directory still there")
    return "removed"


@case("remove.name-replaced", "§5.12", "Tremove after the name was unlinked and reused is ENOENT")
def _(ctx: Context) -> str:
    conn, d, f = file_in_casedir(ctx)
    conn.unlink(d, "f")
    conn.create(d, "f", b"new")
    out = conn.err(m.Tremove(f), errno.ENOENT)
    expect(conn.exists(d, "f"), "the new file was removed")
    return out + "; new file kept"


@case("remove.one-link", "§5.12", "Tremove removes only the link the fid was walked by")
def _(ctx: Context) -> str:
    conn, d, f = file_in_casedir(ctx)
    conn.ok(m.Tlink(d, f, "g"), m.Rlink)
    g = conn.walk(d, "g")
    conn.ok(m.Tremove(g), m.Rremove)
    expect(conn.exists(d, "f") and not conn.exists(d, "g"), "wrong link removed")
    return "g removed, f kept"


@case("getattr.valid", "§5.13", "Rgetattr valid is BASIC (plus BTIME), gen and data_version 0")
def _(ctx: Context) -> str:
    conn, _d, f = file_in_casedir(ctx, b"abc")
    a = getattr_of(conn, f)
    expect(a.valid & 0x7FF == 0x7FF and not a.valid & ~0xFFF, f"valid {a.valid:#x}")
    expect(a.gen == 0 and a.data_version == 0, f"gen {a.gen} data_version {a.data_version}")
    expect(a.size == 3 and stat.S_ISREG(a.mode), f"size {a.size} mode {a.mode:o}")
    return f"valid {a.valid:#x}"


@case("getattr.mask-ignored", "§5.13", "request_mask 0 still gets the full BASIC reply (§9.7)")
def _(ctx: Context) -> str:
    conn, _d, f = file_in_casedir(ctx, b"abc")
    r = conn.ok(m.Tgetattr(f, 0), m.Rgetattr)
    assert isinstance(r, m.Rgetattr)
    expect(r.valid & 0x7FF == 0x7FF and r.size == 3, f"valid {r.valid:#x} size {r.size}")
    return f"valid {r.valid:#x}"


@case("getattr.mode-type-bits", "§5.13", "mode carries S_IFMT: directory, file, symlink, FIFO")
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    conn.create(d, "f")
    conn.ok(m.Tsymlink(d, "l", "f", NOFID), m.Rsymlink)
    mkfifo(conn, d)
    kinds = {
        ".": stat.S_IFDIR, "f": stat.S_IFREG, "l": stat.S_IFLNK, "fifo": stat.S_IFIFO,
    }  # fmt: skip
    for name, kind in kinds.items():
        mode = getattr_of(conn, conn.walk(d, name)).mode
        expect(stat.S_IFMT(mode) == kind, f"{name}: mode {mode:o}")
    return "S_IFDIR, S_IFREG, S_IFLNK, S_IFIFO"


@case("getattr.nsec-range", "§5.13", "every *_nsec is below 10^9")
def _(ctx: Context) -> str:
    conn, _d, f = file_in_casedir(ctx)
    a = getattr_of(conn, f)
    for n in (a.atime_nsec, a.mtime_nsec, a.ctime_nsec, a.btime_nsec):
        expect(n < 1_000_000_000, f"nsec {n}")
    return "ok"


@case("setattr.unknown-bit", "§5.14", "a valid bit outside 0x1ff is EINVAL (§9.19)")
def _(ctx: Context) -> str:
    conn, _d, f = file_in_casedir(ctx)
    return conn.err(_setattr(f, 0x200), errno.EINVAL)


@case("setattr.zero", "§5.14", "valid 0 succeeds and changes nothing")
def _(ctx: Context) -> str:
    conn, _d, f = file_in_casedir(ctx, b"abc")
    before = getattr_of(conn, f)
    conn.ok(_setattr(f, 0, size=0, mode=0), m.Rsetattr)
    after = getattr_of(conn, f)
    expect(after.size == 3 and after.mode == before.mode, "attributes changed")
    return "Rsetattr, nothing changed"


@case("setattr.nsec-too-big", "§5.14", "MTIME|MTIME_SET with nsec >= 10^9 is EINVAL")
def _(ctx: Context) -> str:
    conn, _d, f = file_in_casedir(ctx)
    return conn.err(_setattr(f, V.MTIME | V.MTIME_SET, mt=(5, 1_000_000_000)), errno.EINVAL)


@case("setattr.mode", "§5.14", "MODE sets the permission bits, file type ignored")
def _(ctx: Context) -> str:
    conn, _d, f = file_in_casedir(ctx)
    conn.ok(_setattr(f, V.MODE, mode=0o040604), m.Rsetattr)
    a = getattr_of(conn, f)
    expect(a.mode == stat.S_IFREG | 0o604, f"mode {a.mode:o}")
    return f"mode {a.mode:o}"


@case("setattr.mode-symlink", "§5.14", "MODE on a symbolic link is EOPNOTSUPP")
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    conn.ok(m.Tsymlink(d, "l", "x", NOFID), m.Rsymlink)
    return conn.err(_setattr(conn.walk(d, "l"), V.MODE, mode=0o600), errno.EOPNOTSUPP)


@case("setattr.size", "§5.14", "SIZE truncates and extends")
def _(ctx: Context) -> str:
    conn, _d, f = file_in_casedir(ctx, b"abcdef")
    conn.ok(_setattr(f, V.SIZE, size=2), m.Rsetattr)
    expect(getattr_of(conn, f).size == 2, "not truncated")
    conn.ok(_setattr(f, V.SIZE, size=100), m.Rsetattr)
    expect(getattr_of(conn, f).size == 100, "not extended")
    return "size 2 then 100"


@case("setattr.size-dir", "§5.14", "SIZE on a directory is EISDIR")
def _(ctx: Context) -> str:
    conn = ctx.conn()
    return conn.err(_setattr(conn.casedir(), V.SIZE, size=0), errno.EISDIR)


@case("setattr.size-fifo", "§5.14", "SIZE on a FIFO is EINVAL")
def _(ctx: Context) -> str:
    conn = ctx.conn()
    return conn.err(_setattr(mkfifo(conn, conn.casedir()), V.SIZE, size=0), errno.EINVAL)


@case("setattr.size-2-63", "§5.14", "SIZE of 2^63 or more is EINVAL")
def _(ctx: Context) -> str:
    conn, _d, f = file_in_casedir(ctx)
    return conn.err(_setattr(f, V.SIZE, size=1 << 63), errno.EINVAL)


@case("setattr.times-set", "§5.14", "ATIME|ATIME_SET and MTIME|MTIME_SET set the given times")
def _(ctx: Context) -> str:
    conn, _d, f = file_in_casedir(ctx)
    v = V.ATIME | V.ATIME_SET | V.MTIME | V.MTIME_SET
    conn.ok(_setattr(f, v, at=(1000000, 5), mt=(2000000, 7)), m.Rsetattr)
    a = getattr_of(conn, f)
    got = (a.atime_sec, a.atime_nsec, a.mtime_sec, a.mtime_nsec)
    expect(got == (1000000, 5, 2000000, 7), f"times {got}")
    return f"atime {a.atime_sec}.{a.atime_nsec}, mtime {a.mtime_sec}.{a.mtime_nsec}"


@case("setattr.time-now", "§5.14", "MTIME without MTIME_SET means the current time")
def _(ctx: Context) -> str:
    conn, _d, f = file_in_casedir(ctx)
    conn.ok(_setattr(f, V.MTIME | V.MTIME_SET, mt=(1000, 0)), m.Rsetattr)
    conn.ok(_setattr(f, V.MTIME, mt=(1000, 0)), m.Rsetattr)
    a = getattr_of(conn, f)
    expect(abs(a.mtime_sec - time.time()) < 3600, f"mtime {a.mtime_sec}")
    return f"mtime {a.mtime_sec} (now)"


@case("setattr.set-without-time", "§5.14", "MTIME_SET without MTIME is ignored")
def _(ctx: Context) -> str:
    conn, _d, f = file_in_casedir(ctx)
    before = getattr_of(conn, f).mtime_sec
    conn.ok(_setattr(f, V.MTIME_SET, mt=(1000, 0)), m.Rsetattr)
    after = getattr_of(conn, f).mtime_sec
    expect(after == before, f"mtime {before} -> {after}")
    return "mtime unchanged"


@case("setattr.ctime-alone", "§5.14", "CTIME alone succeeds")
def _(ctx: Context) -> str:
    conn, _d, f = file_in_casedir(ctx)
    return describe(conn.ok(_setattr(f, V.CTIME), m.Rsetattr))


@case(
    "setattr.before-1970",
    "§5.14",
    "a time before 1970 is sent and read back as two's complement (§9.13)",
)
def _(ctx: Context) -> str:
    conn, _d, f = file_in_casedir(ctx)
    neg = (-86400) & 0xFFFF_FFFF_FFFF_FFFF
    conn.ok(_setattr(f, V.MTIME | V.MTIME_SET, mt=(neg, 0)), m.Rsetattr)
    a = getattr_of(conn, f)
    expect(a.mtime_sec == neg, f"mtime_sec {a.mtime_sec:#x}")
    return f"mtime_sec {a.mtime_sec:#x}"


@case("setattr.not-atomic-order", "§5.14", "MODE applied before a failing SIZE stays applied")
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    fifo = mkfifo(conn, d)
    conn.err(_setattr(fifo, V.MODE | V.SIZE, mode=0o600, size=0), errno.EINVAL)
    mode = stat.S_IMODE(getattr_of(conn, fifo).mode)
    expect(mode == 0o600, f"mode {mode:o}")
    return "EINVAL for SIZE, mode 600 applied"


@case("statfs.type", "§5.15", "Rstatfs type is V9FS_MAGIC 0x01021997")
def _(ctx: Context) -> str:
    conn = ctx.conn()
    r = conn.ok(m.Tstatfs(ROOT_FID), m.Rstatfs)
    assert isinstance(r, m.Rstatfs)
    expect(r.type == 0x01021997, f"type {r.type:#x}")
    expect(r.bsize > 0 and r.namelen > 0, describe(r))
    return f"type {r.type:#x} bsize {r.bsize} namelen {r.namelen}"


@case("fsync.file", "§5.17", "Tfsync of an open file, data and metadata", dialects=DOTL)
def _(ctx: Context) -> str:
    conn, _d, f = opened(ctx, b"abc", "rw")
    conn.ok(m.Tfsync(f, 0), m.Rfsync)
    return describe(conn.ok(m.Tfsync(f, 1), m.Rfsync))


@case("fsync.directory", "§5.17", "an open directory may be synced")
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    conn.open(d)
    return describe(conn.ok(m.Tfsync(d, 0), m.Rfsync))


@case(
    "unlinked.io", "§5.32", "read, write, setattr, fsync, statfs keep working on an unlinked file"
)
def _(ctx: Context) -> str:
    conn, d, f = opened(ctx, b"abc", "rw")
    conn.unlink(d, "f")
    conn.ok(m.Twrite(f, 3, b"def"), m.Rwrite)
    r = conn.ok(m.Tread(f, 0, 10), m.Rread)
    assert isinstance(r, m.Rread)
    expect(bytes(r.data) == b"abcdef", f"read {bytes(r.data)!r}")
    conn.ok(_setattr(f, V.SIZE | V.MODE, size=2, mode=0o600), m.Rsetattr)
    conn.ok(m.Tfsync(f, 0), m.Rfsync)
    conn.ok(m.Tstatfs(f), m.Rstatfs)
    a = getattr_of(conn, f)
    expect(a.nlink == 0 and a.size == 2, f"nlink {a.nlink} size {a.size}")
    return "all worked; nlink 0"


@case("unlinked.walk-from-dir", "§5.32", "Twalk of a name from an unlinked directory is ENOENT")
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    s = subdir(conn, d, "s")
    conn.unlink(d, "s")
    return conn.err(m.Twalk(s, conn.fid(), ["s"]), errno.ENOENT)


@case("unlinked.remove", "§5.32", "Tremove of an unlinked file is ENOENT")
def _(ctx: Context) -> str:
    conn, d, f = file_in_casedir(ctx)
    conn.unlink(d, "f")
    return conn.err(m.Tremove(f), errno.ENOENT)


@case("unlinked.link", "§5.32", "Tlink of an unlinked file is ENOENT")
def _(ctx: Context) -> str:
    conn, d, f = file_in_casedir(ctx)
    conn.unlink(d, "f")
    return conn.err(m.Tlink(d, f, "again"), errno.ENOENT)


@case(
    "renamed.fid-follows",
    "§5.32",
    "after Trename by another connection, Tremove through the old fid acts on the new name",
)
def _(ctx: Context) -> str:
    a, d, f = file_in_casedir(ctx)
    b = ctx.conn()
    bd = b.casedir()
    bf = b.walk(bd, "f")
    b.ok(m.Trename(bf, bd, "g"), m.Rrename)
    a.ok(m.Tremove(f), m.Rremove)
    expect(not a.exists(d, "g") and not a.exists(d, "f"), "g still exists")
    return "g removed through a's fid"


@case("special.socket", "§5.33", "a socket made by Tmknod has qid type 0 and cannot be opened")
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    r = conn.ok(m.Tmknod(d, "s", 0o140600, 0, 0, NOFID), m.Rmknod)
    assert isinstance(r, m.Rmknod)
    expect(r.qid.type == 0, f"qid {r.qid}")
    return conn.err(m.Tlopen(conn.walk(d, "s"), 0), errno.ENXIO)


@case("special.symlink-attrs", "§5.33", "Tgetattr of a symlink describes the link itself")
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    conn.create(d, "big", b"x" * 5000)
    conn.ok(m.Tsymlink(d, "l", "big", NOFID), m.Rsymlink)
    a = getattr_of(conn, conn.walk(d, "l"))
    expect(stat.S_ISLNK(a.mode) and a.size == 3, f"mode {a.mode:o} size {a.size}")
    return "S_IFLNK, size 3"


@case("lerror.tlerror", "§5.34", "Tlerror (6) is never a valid request")
def _(ctx: Context) -> str:
    conn = ctx.conn()
    conn.send_raw((11).to_bytes(4, "little") + bytes([6]) + (3).to_bytes(2, "little") + b"\0" * 4)
    _, r = conn.recv()
    expect(isinstance(r, m.Rlerror), f"got {describe(r)}")
    return conn.check_err(m.Tclunk(0), r, [errno.EOPNOTSUPP])
