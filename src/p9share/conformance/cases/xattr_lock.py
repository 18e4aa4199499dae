"""§5.26-§5.31: extended attributes and locks."""

from __future__ import annotations

import errno

from ...protocol import constants as c
from ...protocol import messages as m
from ...protocol.constants import NOFID
from ..context import Conn, Context, describe
from ..registry import Failure, case
from ._util import expect, file_in_casedir, opened

NAME = "user.p9conf"


def _set(conn: Conn, fid: int, name: str, value: bytes, flags: int = 0) -> m.Message:
    """Set an xattr through a clone of fid; the reply of the committing Tclunk."""
    x = conn.clone(fid)
    r = conn.call(m.Txattrcreate(x, name, len(value), flags))
    if not isinstance(r, m.Rxattrcreate):
        return r
    if value:
        conn.ok(m.Twrite(x, 0, value), m.Rwrite)
    r = conn.call(m.Tclunk(x))
    conn.ctx.check_xattr_support(r)  # the host decides at the commit (§5.27)
    if conn.ctx.xattrs is False and isinstance(r, m.Rclunk) and value:
        raise Failure("a user xattr was set, though the probe of this run got EOPNOTSUPP")
    return r


def _get(conn: Conn, fid: int, name: str) -> bytes:
    x = conn.fid()
    r = conn.ok(m.Txattrwalk(fid, x, name), m.Rxattrwalk)
    assert isinstance(r, m.Rxattrwalk)
    data = b""
    while len(data) < r.size:
        rr = conn.ok(m.Tread(x, len(data), 4096), m.Rread)
        assert isinstance(rr, m.Rread)
        if not rr.data:
            break
        data += bytes(rr.data)
    conn.clunk(x)
    return data


@case("xattrwalk.missing", "§5.26", "Txattrwalk of a missing attribute is ENODATA")
def _(ctx: Context) -> str:
    conn, _d, f = file_in_casedir(ctx)
    return conn.err(m.Txattrwalk(f, conn.fid(), "user.p9conf-missing"), errno.ENODATA)


@case("xattrwalk.newfid-in-use", "§5.26", "Txattrwalk to a newfid in use is EEXIST")
def _(ctx: Context) -> str:
    conn, d, f = file_in_casedir(ctx)
    return conn.err(m.Txattrwalk(f, d, ""), errno.EEXIST)


@case("xattrwalk.list", "§5.26", "an empty name lists the names, each NUL-terminated")
def _(ctx: Context) -> str:
    conn, _d, f = file_in_casedir(ctx)
    r = _set(conn, f, NAME, b"v")
    expect(isinstance(r, m.Rclunk), f"set: {describe(r)}")
    data = _get(conn, f, "")
    expect(data.endswith(b"\0") and NAME.encode() in data.split(b"\0"), f"list {data!r}")
    return f"list {data!r}"


@case("xattrwalk.read-past-end", "§5.26", "reading an xattr fid past its size is empty")
def _(ctx: Context) -> str:
    conn, _d, f = file_in_casedir(ctx)
    _set(conn, f, NAME, b"abc")
    x = conn.fid()
    conn.ok(m.Txattrwalk(f, x, NAME), m.Rxattrwalk)
    r = conn.ok(m.Tread(x, 3, 100), m.Rread)
    assert isinstance(r, m.Rread)
    expect(len(r.data) == 0, f"{len(r.data)} bytes")
    return "empty"


@case("xattrwalk.clunk-only", "§5.26", "a client may Tclunk right after Txattrwalk (size only)")
def _(ctx: Context) -> str:
    conn, _d, f = file_in_casedir(ctx)
    _set(conn, f, NAME, b"abcd")
    x = conn.fid()
    r = conn.ok(m.Txattrwalk(f, x, NAME), m.Rxattrwalk)
    assert isinstance(r, m.Rxattrwalk)
    expect(r.size == 4, f"size {r.size}")
    conn.clunk(x)
    return "size 4, clunked"


@case(
    "xattrcreate.bad-flags", "§5.27", "Txattrcreate with a flag other than CREATE/REPLACE is EINVAL"
)
def _(ctx: Context) -> str:
    conn, _d, f = file_in_casedir(ctx)
    return conn.err(m.Txattrcreate(f, NAME, 1, 4), errno.EINVAL)


@case("xattrcreate.too-big", "§5.27", "attr_size above 65536 is E2BIG")
def _(ctx: Context) -> str:
    conn, _d, f = file_in_casedir(ctx)
    return conn.err(m.Txattrcreate(f, NAME, 65537, 0), errno.E2BIG)


@case("xattrcreate.empty-name", "§5.27", "an empty name is EINVAL")
def _(ctx: Context) -> str:
    conn, _d, f = file_in_casedir(ctx)
    return conn.err(m.Txattrcreate(f, "", 1, 0), errno.EINVAL)


@case("xattrcreate.nothing-until-clunk", "§5.27", "nothing changes on the host before the clunk")
def _(ctx: Context) -> str:
    conn, _d, f = file_in_casedir(ctx)
    x = conn.clone(f)
    conn.ok(m.Txattrcreate(x, NAME, 3, 0), m.Rxattrcreate)
    conn.ok(m.Twrite(x, 0, b"abc"), m.Rwrite)
    out = conn.err(m.Txattrwalk(f, conn.fid(), NAME), errno.ENODATA)
    conn.clunk(x)
    expect(_get(conn, f, NAME) == b"abc", "value not set at clunk")
    return out + " before the clunk; set after"


@case("xattr.roundtrip", "§5.28", "a value set in two writes is read back")
def _(ctx: Context) -> str:
    conn, _d, f = file_in_casedir(ctx)
    x = conn.clone(f)
    conn.ok(m.Txattrcreate(x, NAME, 6, 0), m.Rxattrcreate)
    conn.ok(m.Twrite(x, 0, b"abc"), m.Rwrite)
    conn.ok(m.Twrite(x, 3, b"def"), m.Rwrite)
    conn.clunk(x)
    v = _get(conn, f, NAME)
    expect(v == b"abcdef", f"value {v!r}")
    return f"value {v!r}"


@case("xattr.out-of-order", "§5.28", "a Twrite at the wrong offset is EINVAL")
def _(ctx: Context) -> str:
    conn, _d, f = file_in_casedir(ctx)
    x = conn.clone(f)
    conn.ok(m.Txattrcreate(x, NAME, 6, 0), m.Rxattrcreate)
    return conn.err(m.Twrite(x, 3, b"def"), errno.EINVAL)


@case("xattr.too-long", "§5.28", "writing past attr_size is EINVAL")
def _(ctx: Context) -> str:
    conn, _d, f = file_in_casedir(ctx)
    x = conn.clone(f)
    conn.ok(m.Txattrcreate(x, NAME, 2, 0), m.Rxattrcreate)
    return conn.err(m.Twrite(x, 0, b"abc"), errno.EINVAL)


@case(
    "xattr.short-at-clunk",
    "§5.28",
    "a value shorter than attr_size fails at Tclunk (EINVAL), nothing set",
)
def _(ctx: Context) -> str:
    conn, _d, f = file_in_casedir(ctx)
    x = conn.clone(f)
    conn.ok(m.Txattrcreate(x, NAME, 5, 0), m.Rxattrcreate)
    conn.ok(m.Twrite(x, 0, b"ab"), m.Rwrite)
    out = conn.err(m.Tclunk(x), errno.EINVAL)
    conn.err(m.Txattrwalk(f, conn.fid(), NAME), errno.ENODATA)
    return out


@case("xattr.size-zero-removes", "§5.28", "attr_size 0 removes the attribute (§9.12)")
def _(ctx: Context) -> str:
    conn, _d, f = file_in_casedir(ctx)
    _set(conn, f, NAME, b"v")
    r = _set(conn, f, NAME, b"")
    expect(isinstance(r, m.Rclunk), f"removal: {describe(r)}")
    return conn.err(m.Txattrwalk(f, conn.fid(), NAME), errno.ENODATA)


@case("xattr.remove-absent", "§5.28", "removing an absent attribute fails at Tclunk with ENODATA")
def _(ctx: Context) -> str:
    conn, _d, f = file_in_casedir(ctx)
    r = _set(conn, f, NAME, b"")
    return conn.check_err(m.Tclunk(0), r, [errno.ENODATA])


@case("xattr.create-exists", "§5.28", "XATTR_CREATE of an existing attribute is EEXIST at Tclunk")
def _(ctx: Context) -> str:
    conn, _d, f = file_in_casedir(ctx)
    _set(conn, f, NAME, b"v")
    r = _set(conn, f, NAME, b"w", c.XATTR_CREATE)
    return conn.check_err(m.Tclunk(0), r, [errno.EEXIST])


@case("xattr.replace-missing", "§5.28", "XATTR_REPLACE of a missing attribute is ENODATA at Tclunk")
def _(ctx: Context) -> str:
    conn, _d, f = file_in_casedir(ctx)
    r = _set(conn, f, NAME, b"w", c.XATTR_REPLACE)
    return conn.check_err(m.Tclunk(0), r, [errno.ENODATA])


@case("xattr.symlink-own", "§5.28", "a symlink's attribute list is its own, not its target's")
def _(ctx: Context) -> str:
    conn, d, f = file_in_casedir(ctx)
    _set(conn, f, NAME, b"target's")
    conn.ok(m.Tsymlink(d, "l", "f", NOFID), m.Rsymlink)
    lst = _get(conn, conn.walk(d, "l"), "")
    expect(NAME.encode() not in lst.split(b"\0"), f"symlink lists {lst!r}")
    return f"symlink's list {lst!r}"


def _two_opens(ctx: Context, mode: str = "rw") -> tuple[Conn, int, Conn, int]:
    a, _d, f = opened(ctx, b"0123456789", mode)
    b = ctx.conn()
    g = b.walk(b.casedir(), "f")
    b.open(g, mode)
    return a, f, b, g


def _lock(conn: Conn, fid: int, typ: int, start: int = 0, length: int = 0, flags: int = 0) -> int:
    r = conn.ok(m.Tlock(fid, typ, flags, start, length, 1, "p9conf"), m.Rlock)
    assert isinstance(r, m.Rlock)
    return r.status


@case("lock.bad-type", "§5.29", "a lock type outside 0-2 is EINVAL")
def _(ctx: Context) -> str:
    conn, _d, f = opened(ctx)
    return conn.err(m.Tlock(f, 3, 0, 0, 0, 1, ""), errno.EINVAL)


@case("lock.bad-flags", "§5.29", "lock flags other than BLOCK and RECLAIM are EINVAL")
def _(ctx: Context) -> str:
    conn, _d, f = opened(ctx)
    return conn.err(m.Tlock(f, 1, 4, 0, 0, 1, ""), errno.EINVAL)


@case("lock.start-2-63", "§5.29", "a start of 2^63 or more is EINVAL")
def _(ctx: Context) -> str:
    conn, _d, f = opened(ctx)
    return conn.err(m.Tlock(f, 1, 0, 1 << 63, 0, 1, ""), errno.EINVAL)


@case("lock.contention", "§5.29", "a conflicting write lock through another open is BLOCKED")
def _(ctx: Context) -> str:
    a, f, b, g = _two_opens(ctx)
    expect(_lock(a, f, c.LOCK_TYPE_WRLCK) == c.LOCK_SUCCESS, "first lock not granted")
    st = _lock(b, g, c.LOCK_TYPE_WRLCK)
    expect(st == c.LOCK_BLOCKED, f"status {st}")
    return "SUCCESS, then BLOCKED"


@case("lock.block-flag-no-wait", "§5.29", "BLOCK does not make the server wait: BLOCKED at once")
def _(ctx: Context) -> str:
    a, f, b, g = _two_opens(ctx)
    _lock(a, f, c.LOCK_TYPE_WRLCK)
    st = _lock(b, g, c.LOCK_TYPE_WRLCK, flags=c.LOCK_FLAGS_BLOCK)
    expect(st == c.LOCK_BLOCKED, f"status {st}")
    return "BLOCKED"


@case("lock.unlock-releases", "§5.29", "UNLCK removes the fid's lock; the other fid then gets it")
def _(ctx: Context) -> str:
    a, f, b, g = _two_opens(ctx)
    _lock(a, f, c.LOCK_TYPE_WRLCK)
    expect(_lock(a, f, c.LOCK_TYPE_UNLCK) == c.LOCK_SUCCESS, "unlock failed")
    st = _lock(b, g, c.LOCK_TYPE_WRLCK)
    expect(st == c.LOCK_SUCCESS, f"status {st}")
    return "SUCCESS after UNLCK"


@case("lock.read-on-write-only", "§5.29", "a read lock on a write-only open is EBADF (host)")
def _(ctx: Context) -> str:
    conn, _d, f = opened(ctx, b"x", "w")
    return conn.err(m.Tlock(f, c.LOCK_TYPE_RDLCK, 0, 0, 0, 1, ""), errno.EBADF)


@case("getlock.no-conflict", "§5.30", "no conflict: UNLCK with the request's own range")
def _(ctx: Context) -> str:
    conn, _d, f = opened(ctx)
    r = conn.ok(m.Tgetlock(f, c.LOCK_TYPE_WRLCK, 5, 10, 77, "me"), m.Rgetlock)
    assert isinstance(r, m.Rgetlock)
    expect((r.type, r.start, r.length) == (c.LOCK_TYPE_UNLCK, 5, 10), describe(r))
    return describe(r)


@case("getlock.conflict", "§5.30", "a conflict is described: type, start, length")
def _(ctx: Context) -> str:
    a, f, b, g = _two_opens(ctx)
    _lock(a, f, c.LOCK_TYPE_WRLCK, 2, 3)
    r = b.ok(m.Tgetlock(g, c.LOCK_TYPE_WRLCK, 0, 0, 1, "b"), m.Rgetlock)
    assert isinstance(r, m.Rgetlock)
    expect((r.type, r.start, r.length) == (c.LOCK_TYPE_WRLCK, 2, 3), describe(r))
    return describe(r)


@case("getlock.unlck-as-wrlck", "§5.30", "Tgetlock type UNLCK is tested as WRLCK (§9.11)")
def _(ctx: Context) -> str:
    a, f, b, g = _two_opens(ctx)
    _lock(a, f, c.LOCK_TYPE_RDLCK)
    r = b.ok(m.Tgetlock(g, c.LOCK_TYPE_UNLCK, 0, 0, 1, "b"), m.Rgetlock)
    assert isinstance(r, m.Rgetlock)
    expect(r.type == c.LOCK_TYPE_RDLCK, describe(r))
    return describe(r)


@case("getlock.bad-type", "§5.30", "a Tgetlock type outside 0-2 is EINVAL")
def _(ctx: Context) -> str:
    conn, _d, f = opened(ctx)
    return conn.err(m.Tgetlock(f, 7, 0, 0, 1, ""), errno.EINVAL)


@case("locks.read-shared", "§5.31", "read locks of two opens do not conflict")
def _(ctx: Context) -> str:
    a, f, b, g = _two_opens(ctx)
    _lock(a, f, c.LOCK_TYPE_RDLCK)
    st = _lock(b, g, c.LOCK_TYPE_RDLCK)
    expect(st == c.LOCK_SUCCESS, f"status {st}")
    return "both SUCCESS"


@case("locks.same-fid", "§5.31", "locks through one open fid never conflict with each other")
def _(ctx: Context) -> str:
    conn, _d, f = opened(ctx)
    _lock(conn, f, c.LOCK_TYPE_RDLCK)
    st = _lock(conn, f, c.LOCK_TYPE_WRLCK)
    expect(st == c.LOCK_SUCCESS, f"status {st}")
    return "read then write lock: SUCCESS"


@case(
    "locks.byte-ranges", "§5.31", "locks are exact byte ranges (§9.8): disjoint ranges both succeed"
)
def _(ctx: Context) -> str:
    a, f, b, g = _two_opens(ctx)
    _lock(a, f, c.LOCK_TYPE_WRLCK, 0, 5)
    st = _lock(b, g, c.LOCK_TYPE_WRLCK, 5, 5)
    expect(st == c.LOCK_SUCCESS, f"status {st}")
    st2 = _lock(b, g, c.LOCK_TYPE_WRLCK, 4, 1)
    expect(st2 == c.LOCK_BLOCKED, f"overlap status {st2}")
    return "[0,5) and [5,10) both held; [4,5) BLOCKED"


@case("locks.same-connection", "§5.31", "two open fids of one connection conflict")
def _(ctx: Context) -> str:
    conn, d, f = opened(ctx)
    g = conn.walk(d, "f")
    conn.open(g, "rw")
    _lock(conn, f, c.LOCK_TYPE_WRLCK)
    st = _lock(conn, g, c.LOCK_TYPE_WRLCK)
    expect(st == c.LOCK_BLOCKED, f"status {st}")
    return "BLOCKED"
