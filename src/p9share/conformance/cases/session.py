"""§3.4-§3.8: tags, concurrency, Tflush, reply sizes, end of a connection."""

from __future__ import annotations

import errno

from ...protocol import constants as c
from ...protocol import messages as m
from ...protocol.constants import NOTAG
from ..context import ROOT_FID, Conn, Context, describe
from ..registry import ALL, DOTL, Failure, NotApplicable, case
from ._util import expect, file_in_casedir, frame


def _pooled(ctx: Context, size: int = 400000) -> tuple[Conn, int]:
    """A connection with msize 1 MiB + 24 and an open fid on a file of `size`
    bytes, so that a Tread of it is pooled (count > 65536)."""
    conn = ctx.conn(msize=1048576 + 24)
    if conn.rc.msize <= 65536 + 11:
        raise NotApplicable(f"server msize {conn.rc.msize}: no read is large enough to be pooled")
    d = conn.casedir()
    conn.create(d, "big", b"y" * size)
    f = conn.walk(d, "big")
    conn.open(f)
    return conn, f


@case("tags.notag-einval", "§3.4", "NOTAG on a request other than Tversion is EINVAL", dialects=ALL)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    conn.send_raw(m.Tclunk(ROOT_FID).encode(NOTAG, ctx.dialect))
    tag, r = conn.recv()
    expect(tag == NOTAG, f"reply tag {tag}")
    return conn.check_err(m.Tclunk(0), r, [errno.EINVAL])


@case(
    "tags.reuse-after-reply", "§3.4", "a tag may be reused once its reply has arrived", dialects=ALL
)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    for _ in range(3):
        n = conn.fid()
        conn.rc.send(m.Twalk(d, n, []), tag=42)
        tag, r = conn.recv()
        expect(tag == 42 and isinstance(r, m.Rwalk), f"got {describe(r)} tag {tag}")
    return "three requests under tag 42 answered"


@case(
    "tags.duplicate-pooled-closes",
    "§3.4",
    "reusing the tag of a running pooled request closes the connection",
    dialects=ALL,
)
def _(ctx: Context) -> str:
    conn, f = _pooled(ctx, 1000000)
    # eight pooled reads keep the worker pool busy, so the last is still
    # pending when the duplicate of its tag arrives
    reads = b"".join(m.Tread(f, 0, 1000000).encode(t, ctx.dialect) for t in range(7, 15))
    conn.send_raw(reads + m.Tclunk(4242).encode(14, ctx.dialect))
    replies: list[str] = []
    try:
        while True:
            _, r = conn.recv()
            replies.append(describe(r))
            if len(replies) == 9:
                raise NotApplicable(
                    "every request was answered: the reads finished before the duplicate arrived"
                )
    except ConnectionError:
        return f"connection closed after {len(replies)} replies"


@case(
    "concurrency.inline-order",
    "§3.5",
    "replies to inline requests come in request order",
    dialects=ALL,
)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    d = conn.casedir()
    tags = list(range(10, 20))
    conn.send_raw(b"".join(m.Twalk(d, 500 + t, []).encode(t, ctx.dialect) for t in tags))
    got = [conn.recv()[0] for _ in tags]
    expect(got == tags, f"reply order {got}")
    return f"tags {got[0]}..{got[-1]} in order"


@case(
    "concurrency.one-reply-each",
    "§3.5",
    "pipelined pooled and inline requests each get exactly one reply",
    dialects=ALL,
)
def _(ctx: Context) -> str:
    conn, f = _pooled(ctx)
    reqs = [m.Tread(f, 0, 300000), m.Tclunk(4242), m.Tread(f, 10, 100000), m.Twalk(f, 900, [])]
    conn.send_raw(b"".join(r.encode(30 + i, ctx.dialect) for i, r in enumerate(reqs)))
    got = sorted(conn.recv()[0] for _ in reqs)
    expect(got == [30, 31, 32, 33], f"reply tags {got}")
    return "4 replies, tags 30..33"


@case("flush.finished", "§3.6", "Tflush of an answered request gets Rflush", dialects=ALL)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    t = conn.rc.send(m.Tclunk(4242))
    conn.recv()
    r = conn.ok(m.Tflush(t), m.Rflush)
    return describe(r)


@case("flush.unknown-tag", "§3.6", "Tflush of a tag never used gets Rflush", dialects=ALL)
def _(ctx: Context) -> str:
    return describe(ctx.conn().ok(m.Tflush(12345), m.Rflush))


@case("flush.own-tag", "§3.6", "Tflush naming its own tag gets Rflush", dialects=ALL)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    conn.rc.send(m.Tflush(55), tag=55)
    tag, r = conn.recv()
    expect(tag == 55 and isinstance(r, m.Rflush), f"got {describe(r)} under {tag}")
    return "Rflush"


@case("flush.notag", "§3.6", "a Tflush under NOTAG is EINVAL (a frame-level error)", dialects=ALL)
def _(ctx: Context) -> str:
    conn = ctx.conn()
    conn.send_raw(frame(108, NOTAG, (1).to_bytes(2, "little")))
    _tag, r = conn.recv()
    return conn.check_err(m.Tflush(1), r, [errno.EINVAL])


@case(
    "flush.pending",
    "§3.6",
    "Tflush of a running request: its reply first, then Rflush",
    dialects=ALL,
)
def _(ctx: Context) -> str:
    conn, f = _pooled(ctx, 1000000)
    conn.send_raw(
        m.Tread(f, 0, 1000000).encode(61, ctx.dialect) + m.Tflush(61).encode(62, ctx.dialect)
    )
    t1, r1 = conn.recv()
    t2, r2 = conn.recv()
    expect((t1, t2) == (61, 62), f"reply tags {t1}, {t2}")
    expect(isinstance(r1, m.Rread) and isinstance(r2, m.Rflush), f"{describe(r1)}, {describe(r2)}")
    return f"{describe(r1)} then Rflush"


@case(
    "flush.repeated",
    "§3.6",
    "two Tflush of one running request: reply, then both Rflush in order",
    dialects=ALL,
)
def _(ctx: Context) -> str:
    conn, f = _pooled(ctx, 1000000)
    conn.send_raw(
        m.Tread(f, 0, 1000000).encode(71, ctx.dialect)
        + m.Tflush(71).encode(72, ctx.dialect)
        + m.Tflush(71).encode(73, ctx.dialect)
    )
    tags = [conn.recv()[0] for _ in range(3)]
    expect(tags == [71, 72, 73], f"reply tags {tags}")
    return f"replies under {tags}"


@case("flush.never-cancels", "§3.6", "a flushed write still takes effect", dialects=ALL)
def _(ctx: Context) -> str:
    conn, _d, f = file_in_casedir(ctx)
    conn.open(f, "rw")
    conn.send_raw(
        m.Twrite(f, 0, b"kept").encode(81, ctx.dialect) + m.Tflush(81).encode(82, ctx.dialect)
    )
    t1, _r1 = conn.recv()
    t2, _r2 = conn.recv()
    expect((t1, t2) == (81, 82), f"reply tags {t1}, {t2}")
    r = conn.ok(m.Tread(f, 0, 10), m.Rread)
    assert isinstance(r, m.Rread)
    expect(bytes(r.data) == b"kept", f"file holds {bytes(r.data)!r}")
    return "Rwrite, Rflush; data written"


@case("replysize.read", "§3.7", "Rread never exceeds msize (count larger than msize)", dialects=ALL)
def _(ctx: Context) -> str:
    conn = ctx.conn(msize=4096)
    d = conn.casedir()
    conn.create(d, "f", b"z" * 10000)
    f = conn.walk(d, "f")
    conn.open(f)
    r = conn.ok(m.Tread(f, 0, 100000), m.Rread)
    assert isinstance(r, m.Rread)
    expect(len(r.data) <= 4096 - 11, f"{len(r.data)} bytes")
    return f"{len(r.data)} bytes (msize 4096)"


@case("replysize.read-count", "§3.7", "Rread holds at most count bytes", dialects=ALL)
def _(ctx: Context) -> str:
    conn, _d, f = file_in_casedir(ctx, b"q" * 1000)
    conn.open(f)
    r = conn.ok(m.Tread(f, 0, 17), m.Rread)
    assert isinstance(r, m.Rread)
    expect(len(r.data) == 17, f"{len(r.data)} bytes")
    return "17 bytes"


@case("replysize.readdir", "§3.7", "Rreaddir never exceeds msize or count", dialects=DOTL)
def _(ctx: Context) -> str:
    conn = ctx.conn(msize=4096)
    d = conn.casedir()
    for i in range(200):
        conn.create(d, f"entry-with-a-longish-name-{i:04}")
    f = conn.clone(d)
    conn.open(f)
    r = conn.ok(m.Treaddir(f, 0, 1 << 20), m.Rreaddir)
    assert isinstance(r, m.Rreaddir)
    expect(len(r.data) <= 4096 - 11, f"{len(r.data)} bytes")
    r = conn.ok(m.Treaddir(f, 0, 100), m.Rreaddir)
    assert isinstance(r, m.Rreaddir)
    expect(len(r.data) <= 100, f"{len(r.data)} bytes for count 100")
    return f"{len(r.data)} bytes for count 100; full page within 4085"


@case(
    "eoc.other-connections", "§3.8", "one connection ending does not affect another", dialects=ALL
)
def _(ctx: Context) -> str:
    a = ctx.conn()
    b = ctx.conn()
    a.casedir()
    a.rc.close()
    r = b.ok(m.Twalk(ROOT_FID, b.fid(), []), m.Rwalk)
    return describe(r)


@case("eoc.locks-released", "§3.8", "the end of a connection releases its locks")
def _(ctx: Context) -> str:
    a, _d, f = file_in_casedir(ctx, b"data")
    a.open(f, "rw")
    a.ok(m.Tlock(f, c.LOCK_TYPE_WRLCK, 0, 0, 0, 1, "a"), m.Rlock)
    b = ctx.conn()
    g = b.walk(b.casedir(), "f")
    b.open(g, "rw")
    r = b.ok(m.Tlock(g, c.LOCK_TYPE_WRLCK, 0, 0, 0, 2, "b"), m.Rlock)
    assert isinstance(r, m.Rlock)
    expect(r.status == c.LOCK_BLOCKED, f"lock held by a: status {r.status}")
    a.rc.close()
    for _ in range(50):
        r = b.ok(m.Tlock(g, c.LOCK_TYPE_WRLCK, 0, 0, 0, 2, "b"), m.Rlock)
        assert isinstance(r, m.Rlock)
        if r.status == c.LOCK_SUCCESS:
            return "BLOCKED while a held it, SUCCESS after a closed"
        import time

        time.sleep(0.05)
    raise Failure("lock still BLOCKED 2.5 s after the holder's connection closed")
