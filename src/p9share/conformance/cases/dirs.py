"""§5.16, §5.18-§5.25: readdir and the directory-changing requests."""

from __future__ import annotations

import errno
import stat

from ...protocol import constants as c
from ...protocol import messages as m
from ...protocol.constants import NOFID
from ..context import ROOT_FID, Conn, Context, describe
from ..registry import case
from ._util import expect, file_in_casedir, getattr_of, mkfifo, readdir_all, subdir


def _listing(ctx: Context, names: int = 0) -> tuple[Conn, int]:
    conn = ctx.conn()
    d = conn.casedir()
    for i in range(names):
        conn.create(d, f"e{i:03}")
    f = conn.clone(d)
    conn.open(f)
    return conn, f


@case("readdir.dot-first", "§5.16", "the listing starts with '.' and '..'")
def _(ctx: Context) -> str:
    conn, f = _listing(ctx, 3)
    ents = readdir_all(conn, f)
    names = [e.name for e in ents]
    expect(names[:2] == [".", ".."], f"first names {names[:2]}")
    expect(sorted(names[2:]) == ["e000", "e001", "e002"], f"names {names}")
    return f"{len(names)} entries: {names}"


@case("readdir.root-dotdot", "§5.16", "'..' of the export root has the root's qid")
def _(ctx: Context) -> str:
    conn = ctx.conn()
    f = conn.clone(ROOT_FID)
    r = conn.open(f)
    assert isinstance(r, m.Rlopen)
    ents = readdir_all(conn, f)
    dotdot = [e for e in ents if e.name == ".."]
    expect(bool(dotdot) and dotdot[0].qid.path == r.qid.path, f"'..' {dotdot}, root {r.qid}")
    return f"'..' qid.path {dotdot[0].qid.path:#x} = root"


@case("readdir.paging-one", "§5.16", "a count that fits one entry pages through every entry")
def _(ctx: Context) -> str:
    conn, f = _listing(ctx, 20)
    ents = readdir_all(conn, f, count=24 + 4)
    names = [e.name for e in ents]
    expect(len(names) == 22 and len(set(names)) == 22, f"{len(names)} entries")
    return "22 entries one by one"


@case("readdir.paging-odd", "§5.16", "awkward counts (37, 100, 333) list every entry exactly once")
def _(ctx: Context) -> str:
    conn, f = _listing(ctx, 30)
    for count in (37, 100, 333):
        names = [e.name for e in readdir_all(conn, f, count=count)]
        expect(len(names) == 32 and len(set(names)) == 32, f"count {count}: {len(names)} entries")
    return "32 entries at counts 37, 100, 333"


@case("readdir.count-too-small", "§5.16", "a count too small for the next entry is EINVAL")
def _(ctx: Context) -> str:
    conn, f = _listing(ctx, 1)
    return conn.err(m.Treaddir(f, 0, 10), errno.EINVAL)


@case("readdir.past-end", "§5.16", "a cookie past the end gives an empty reply")
def _(ctx: Context) -> str:
    conn, f = _listing(ctx, 2)
    ents = readdir_all(conn, f)
    r = conn.ok(m.Treaddir(f, ents[-1].offset, 4096), m.Rreaddir)
    assert isinstance(r, m.Rreaddir)
    expect(len(r.data) == 0, f"{len(r.data)} bytes")
    return "empty"


@case("readdir.types", "§5.16", "entry types: DIR 4, REG 8, LNK 10, FIFO 1; qid types match")
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    conn.create(d, "f")
    conn.mkdir(d, "s")
    conn.ok(m.Tsymlink(d, "l", "f", NOFID), m.Rsymlink)
    mkfifo(conn, d)
    f = conn.clone(d)
    conn.open(f)
    got = {e.name: (e.type, e.qid.type) for e in readdir_all(conn, f)}
    want = {"f": (8, 0), "s": (4, 0x80), "l": (10, 2), "fifo": (1, 0)}
    for name, w in want.items():
        expect(got.get(name) == w, f"{name}: (type, qid type) {got.get(name)}, want {w}")
    return str({k: got[k] for k in want})


@case("readdir.not-open", "§5.16", "Treaddir on a directory that is not open is EBADF")
def _(ctx: Context) -> str:
    conn = ctx.conn()
    return conn.err(m.Treaddir(conn.casedir(), 0, 1000), errno.EBADF)


@case("readdir.file", "§5.16", "Treaddir on an open file is ENOTDIR")
def _(ctx: Context) -> str:
    conn, _d, f = file_in_casedir(ctx)
    conn.open(f)
    return conn.err(m.Treaddir(f, 0, 1000), errno.ENOTDIR)


@case("readdir.snapshot", "§5.16", "offset 0 lists afresh: a new entry appears after a rewind")
def _(ctx: Context) -> str:
    conn, f = _listing(ctx, 2)
    first = readdir_all(conn, f)
    conn.create(conn.casedir(), "late")
    again = [e.name for e in readdir_all(conn, f)]
    expect("late" in again, f"after rewind: {again}")
    return f"{len(first)} then {len(again)} entries"


@case("mkdir.creates", "§5.18", "Tmkdir creates a directory; its qid type is 0x80")
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    r = conn.ok(m.Tmkdir(d, "s", 0o750, NOFID), m.Rmkdir)
    assert isinstance(r, m.Rmkdir)
    expect(r.qid.type == 0x80, f"qid {r.qid}")
    return describe(r)


@case("mkdir.exists", "§5.18", "Tmkdir of an existing name is EEXIST")
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    conn.create(d, "f")
    return conn.err(m.Tmkdir(d, "f", 0o755, NOFID), errno.EEXIST)


@case("mkdir.bad-name", "§5.18", "Tmkdir of '..' is EINVAL")
def _(ctx: Context) -> str:
    conn = ctx.conn()
    return conn.err(m.Tmkdir(conn.casedir(), "..", 0o755, NOFID), errno.EINVAL)


@case("symlink.empty-target", "§5.19", "an empty symlink target is ENOENT")
def _(ctx: Context) -> str:
    conn = ctx.conn()
    return conn.err(m.Tsymlink(conn.casedir(), "l", "", NOFID), errno.ENOENT)


@case("symlink.target-verbatim", "§5.19", "the target is stored as given, never resolved")
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    conn.ok(m.Tsymlink(d, "l", "/etc/../../x//y", NOFID), m.Rsymlink)
    r = conn.ok(m.Treadlink(conn.walk(d, "l")), m.Rreadlink)
    assert isinstance(r, m.Rreadlink)
    expect(r.target == "/etc/../../x//y", f"target {r.target!r}")
    return f"target {r.target!r}"


@case("symlink.exists", "§5.19", "Tsymlink over an existing name is EEXIST")
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    conn.create(d, "f")
    return conn.err(m.Tsymlink(d, "f", "x", NOFID), errno.EEXIST)


@case("mknod.device", "§5.20", "a character device is never created: EPERM")
def _(ctx: Context) -> str:
    conn = ctx.conn()
    return conn.err(m.Tmknod(conn.casedir(), "null", 0o020666, 1, 3, NOFID), errno.EPERM)


@case("mknod.block-device", "§5.20", "a block device is never created: EPERM")
def _(ctx: Context) -> str:
    conn = ctx.conn()
    return conn.err(m.Tmknod(conn.casedir(), "blk", 0o060666, 8, 0, NOFID), errno.EPERM)


@case("mknod.fifo", "§5.20", "a FIFO is created with the exact permission bits")
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    conn.ok(m.Tmknod(d, "p", 0o010640, 0, 0, NOFID), m.Rmknod)
    mode = getattr_of(conn, conn.walk(d, "p")).mode
    expect(mode == stat.S_IFIFO | 0o640, f"mode {mode:o}")
    return f"mode {mode:o}"


@case("mknod.regular", "§5.20", "file type 0 creates a regular file")
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    conn.ok(m.Tmknod(d, "r", 0o644, 0, 0, NOFID), m.Rmknod)
    mode = getattr_of(conn, conn.walk(d, "r")).mode
    expect(stat.S_ISREG(mode), f"mode {mode:o}")
    return f"mode {mode:o}"


@case("mknod.directory-type", "§5.20", "file type directory in Tmknod is EINVAL")
def _(ctx: Context) -> str:
    conn = ctx.conn()
    return conn.err(m.Tmknod(conn.casedir(), "x", 0o040755, 0, 0, NOFID), errno.EINVAL)


@case("readlink.not-symlink", "§5.21", "Treadlink of a regular file is EINVAL")
def _(ctx: Context) -> str:
    conn, _d, f = file_in_casedir(ctx)
    return conn.err(m.Treadlink(f), errno.EINVAL)


@case("link.creates", "§5.22", "Tlink makes a second name; nlink is 2")
def _(ctx: Context) -> str:
    conn, d, f = file_in_casedir(ctx)
    conn.ok(m.Tlink(d, f, "g"), m.Rlink)
    a = getattr_of(conn, conn.walk(d, "g"))
    expect(a.nlink == 2, f"nlink {a.nlink}")
    return "nlink 2"


@case("link.directory", "§5.22", "Tlink of a directory is EPERM")
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    return conn.err(m.Tlink(d, subdir(conn, d), "again"), errno.EPERM)


@case("link.exists", "§5.22", "Tlink onto an existing name is EEXIST")
def _(ctx: Context) -> str:
    conn, d, f = file_in_casedir(ctx)
    conn.create(d, "g")
    return conn.err(m.Tlink(d, f, "g"), errno.EEXIST)


@case("rename.cross-directory", "§5.23", "Trename moves a file into another directory")
def _(ctx: Context) -> str:
    conn, d, f = file_in_casedir(ctx, b"moved")
    s = subdir(conn, d, "s")
    conn.ok(m.Trename(f, s, "g"), m.Rrename)
    expect(conn.exists(s, "g") and not conn.exists(d, "f"), "not moved")
    return "f moved to s/g"


@case("rename.root", "§5.23", "Trename of the export root is EBUSY")
def _(ctx: Context) -> str:
    conn = ctx.conn()
    return conn.err(m.Trename(ROOT_FID, conn.casedir(), "root"), errno.EBUSY)


@case("rename.into-itself", "§5.23", "moving a directory into itself is EINVAL")
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    s = subdir(conn, d, "s")
    return conn.err(m.Trename(s, s, "inner"), errno.EINVAL)


@case("rename.onto-nonempty", "§5.23", "renaming a directory onto a non-empty one is ENOTEMPTY")
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    a = subdir(conn, d, "a")
    b = subdir(conn, d, "b")
    conn.create(b, "x")
    return conn.err(m.Trename(a, d, "b"), errno.ENOTEMPTY, errno.EEXIST)


@case("rename.replaces", "§5.23", "renaming a file onto another file replaces it")
def _(ctx: Context) -> str:
    conn, d, f = file_in_casedir(ctx, b"new")
    conn.create(d, "g", b"old")
    conn.ok(m.Trename(f, d, "g"), m.Rrename)
    g = conn.walk(d, "g")
    conn.open(g)
    data = conn.read_all(g)
    expect(data == b"new", f"g holds {data!r}")
    return "g replaced"


@case("rename.file-onto-dir", "§5.23", "renaming a file onto a directory is EISDIR")
def _(ctx: Context) -> str:
    conn, d, f = file_in_casedir(ctx)
    conn.mkdir(d, "s")
    return conn.err(m.Trename(f, d, "s"), errno.EISDIR)


@case("renameat.moves", "§5.24", "Trenameat moves a name; fids follow")
def _(ctx: Context) -> str:
    conn, d, f = file_in_casedir(ctx)
    s = subdir(conn, d, "s")
    conn.ok(m.Trenameat(d, "f", s, "g"), m.Rrenameat)
    conn.ok(m.Tremove(f), m.Rremove)
    expect(not conn.exists(s, "g"), "s/g still exists after Tremove through the old fid")
    return "moved; Tremove through the old fid removed s/g"


@case("renameat.missing", "§5.24", "Trenameat of a missing name is ENOENT")
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    return conn.err(m.Trenameat(d, "missing", d, "x"), errno.ENOENT)


@case("renameat.bad-newname", "§5.24", "Trenameat to '.' is EINVAL")
def _(ctx: Context) -> str:
    conn, d, _f = file_in_casedir(ctx)
    return conn.err(m.Trenameat(d, "f", d, "."), errno.EINVAL)


@case("unlinkat.bad-flags", "§5.25", "Tunlinkat with a flag other than AT_REMOVEDIR is EINVAL")
def _(ctx: Context) -> str:
    conn, d, _f = file_in_casedir(ctx)
    return conn.err(m.Tunlinkat(d, "f", 0x100), errno.EINVAL)


@case("unlinkat.dir-without-flag", "§5.25", "unlinking a directory without AT_REMOVEDIR is EISDIR")
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    conn.mkdir(d, "s")
    return conn.err(m.Tunlinkat(d, "s", 0), errno.EISDIR)


@case("unlinkat.file-with-flag", "§5.25", "AT_REMOVEDIR on a file is ENOTDIR")
def _(ctx: Context) -> str:
    conn, d, _f = file_in_casedir(ctx)
    return conn.err(m.Tunlinkat(d, "f", c.AT_REMOVEDIR), errno.ENOTDIR)


@case("unlinkat.not-empty", "§5.25", "removing a non-empty directory is ENOTEMPTY")
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    s = subdir(conn, d, "s")
    conn.create(s, "x")
    return conn.err(m.Tunlinkat(d, "s", c.AT_REMOVEDIR), errno.ENOTEMPTY, errno.EEXIST)


@case("unlinkat.missing", "§5.25", "unlinking a missing name is ENOENT")
def _(ctx: Context) -> str:
    conn = ctx.conn()
    return conn.err(m.Tunlinkat(conn.casedir(), "missing", 0), errno.ENOENT)


@case("unlinkat.removes", "§5.25", "Tunlinkat removes a file and an empty directory")
def _(ctx: Context) -> str:
    conn, d, _f = file_in_casedir(ctx)
    conn.mkdir(d, "s")
    conn.ok(m.Tunlinkat(d, "f", 0), m.Runlinkat)
    conn.ok(m.Tunlinkat(d, "s", c.AT_REMOVEDIR), m.Runlinkat)
    expect(not conn.exists(d, "f") and not conn.exists(d, "s"), "still there")
    return "both removed"
