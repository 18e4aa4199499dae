"""§3.4-§3.8: tags, concurrency, Tflush, reply sizes, end of a connection."""

from __future__ import annotations

import errno

from ...protocol import constants as c
from ...protocol import messages as m
from ...protocol.constants import NOTAG
from ..context import ROOT_FID, Conn, Context, describe, is_error
from ..registry import ALL, DOTL, Failure, NotApplicable, case
from ._util import expect, file_in_casedir, frame, slow_request

# tries of tags.duplicate-pooled-closes, each with 4 more requests
DUPLICATE_TRIES = 5


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
    conn, _f, make, kind = slow_request(ctx)
    if "pooled" not in kind:
        raise NotApplicable(
            f"server msize {conn.rc.msize}: no {ctx.dialect.value} request is pooled at this "
            "msize, and reusing the tag of an inline request is never detected (§3.4)"
        )
    # N slow requests (the pool has 4 threads, so the last waits its turn),
    # then a Tclunk of an unknown fid under the last one's tag. Whether that
    # request was still running is known from the replies: an answer to the
    # duplicate before the reply to the request it duplicates proves it was.
    for attempt in range(1, DUPLICATE_TRIES + 1):
        tags = list(range(7, 11 + 4 * attempt))
        dup = tags[-1]
        conn.send_raw(
            b"".join(make().encode(t, ctx.dialect) for t in tags)
            + m.Tclunk(4242).encode(dup, ctx.dialect)
        )
        replies: list[tuple[int, m.Message]] = []
        try:
            while len(replies) < len(tags) + 1:
                replies.append(conn.recv())
        except ConnectionError:
            return _closed_after(replies, tags, kind)
        under = [(i, r) for i, (t, r) in enumerate(replies) if t == dup]
        done = [i for i, r in under if not is_error(r)]
        dupe = [i for i, r in under if is_error(r)]
        expect(
            len(done) == 1 and len(dupe) == 1,
            f"replies under tag {dup}: {[describe(r) for _i, r in under]}",
        )
        first, second = done[0], dupe[0]
        if second < first:
            raise Failure(
                f"reused tag {dup} not detected: the duplicate was answered "
                f"({describe(replies[second][1])}) while the {kind} under that tag was still "
                f"running (its reply came later); the connection stayed open"
            )
    raise Failure(
        f"reused tag never detected in {DUPLICATE_TRIES} tries of up to {len(tags)} "
        f"requests ({kind}); each time the server answered the duplicate too"
    )


def _closed_after(replies: list[tuple[int, m.Message]], tags: list[int], kind: str) -> str:
    """The connection was closed after a duplicate tag: every request sent
    before it is answered exactly once (§3.8), the duplicate not at all."""
    got = sorted(t for t, _r in replies)
    errors = [describe(r) for _t, r in replies if is_error(r)]
    expect(not errors, f"connection closed after {len(replies)} replies, among them {errors}")
    expect(
        got == tags,
        f"connection closed after replies under tags {got}; every one of {tags} needed one",
    )
    return f"connection closed after the {len(tags)} replies to the {kind} requests"


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
    conn, f, make, kind = slow_request(ctx)
    reqs = [make(), m.Tclunk(4242), make(), m.Twalk(f, 900, [])]
    conn.send_raw(b"".join(r.encode(30 + i, ctx.dialect) for i, r in enumerate(reqs)))
    got = sorted(conn.recv()[0] for _ in reqs)
    expect(got == [30, 31, 32, 33], f"reply tags {got}")
    extra = _one_more(conn)
    expect(extra is None, f"a fifth reply: {extra}")
    return f"4 replies, tags 30..33, then nothing ({kind})"


def _one_more(conn: Conn, wait: float = 0.5) -> str | None:
    """Whatever reply arrives within wait seconds (None: nothing)."""
    conn.rc.sock.settimeout(wait)
    try:
        tag, r = conn.recv()
    except TimeoutError:
        return None
    finally:
        conn.rc.sock.settimeout(conn.ctx.timeout)
    return f"{describe(r)} under tag {tag}"


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
    conn, _f, make, kind = slow_request(ctx)
    conn.send_raw(make().encode(61, ctx.dialect) + m.Tflush(61).encode(62, ctx.dialect))
    t1, r1 = conn.recv()
    t2, r2 = conn.recv()
    expect((t1, t2) == (61, 62), f"reply tags {t1}, {t2}")
    expect(not is_error(r1) and isinstance(r2, m.Rflush), f"{describe(r1)}, {describe(r2)}")
    return f"{describe(r1)} then Rflush ({kind})"


@case(
    "flush.repeated",
    "§3.6",
    "two Tflush of one running request: reply, then both Rflush in order",
    dialects=ALL,
)
def _(ctx: Context) -> str:
    conn, _f, make, kind = slow_request(ctx)
    conn.send_raw(
        make().encode(71, ctx.dialect)
        + m.Tflush(71).encode(72, ctx.dialect)
        + m.Tflush(71).encode(73, ctx.dialect)
    )
    replies = [conn.recv() for _ in range(3)]
    tags = [t for t, _r in replies]
    expect(tags == [71, 72, 73], f"reply tags {tags}")
    expect(
        not is_error(replies[0][1]) and all(isinstance(r, m.Rflush) for _t, r in replies[1:]),
        f"replies {[describe(r) for _t, r in replies]}",
    )
    return f"replies under {tags} ({kind})"


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
