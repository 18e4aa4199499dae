"""Small helpers shared by the case modules."""

from __future__ import annotations

import struct
from collections.abc import Callable

from ...protocol import constants as c
from ...protocol import messages as m
from ...protocol.constants import NOFID
from ...protocol.wire import HEADER, U16, U32
from ..context import Conn, Context
from ..registry import Failure


def frame(mtype: int, tag: int, body: bytes) -> bytes:
    """A frame with a correct size field."""
    return HEADER.pack(7 + len(body), mtype, tag) + body


def wstr(raw: bytes) -> bytes:
    return U16.pack(len(raw)) + raw


def u32(v: int) -> bytes:
    return U32.pack(v)


def u64(v: int) -> bytes:
    return struct.pack("<Q", v)


def file_in_casedir(ctx: Context, data: bytes = b"", name: str = "f") -> tuple[Conn, int, int]:
    """(conn, dirfid, filefid): a new file `name` in the case directory,
    walked to (not open)."""
    conn = ctx.conn()
    d = conn.casedir()
    conn.create(d, name, data)
    return conn, d, conn.walk(d, name)


def opened(ctx: Context, data: bytes = b"", mode: str = "rw") -> tuple[Conn, int, int]:
    conn, d, f = file_in_casedir(ctx, data)
    conn.open(f, mode)
    return conn, d, f


def getattr_of(conn: Conn, fid: int) -> m.Rgetattr:
    r = conn.ok(m.Tgetattr(fid, c.GetattrMask.ALL), m.Rgetattr)
    assert isinstance(r, m.Rgetattr)
    return r


def expect(cond: bool, text: str) -> None:
    if not cond:
        raise Failure(text)


def lcreate(conn: Conn, dirfid: int, name: str, flags: int = c.L_O_RDWR, mode: int = 0o644) -> int:
    """A new fid for a new file created (and open) in dirfid."""
    f = conn.clone(dirfid)
    conn.ok(m.Tlcreate(f, name, flags, mode, NOFID), m.Rlcreate)
    return f


def subdir(conn: Conn, dirfid: int, name: str = "d") -> int:
    conn.mkdir(dirfid, name)
    return conn.walk(dirfid, name)


def mkfifo(conn: Conn, dirfid: int, name: str = "fifo") -> int:
    conn.ok(m.Tmknod(dirfid, name, 0o010644, 0, 0, NOFID), m.Rmknod)
    return conn.walk(dirfid, name)


def readdir_all(conn: Conn, fid: int, count: int = 8192) -> list[m.Dirent]:
    out: list[m.Dirent] = []
    off = 0
    for _ in range(10000):
        r = conn.ok(m.Treaddir(fid, off, count), m.Rreaddir)
        assert isinstance(r, m.Rreaddir)
        ents = m.decode_dirents(r.data)
        if not ents:
            return out
        out += ents
        off = ents[-1].offset
    raise Failure("readdir never ended")


def slow_request(ctx: Context) -> tuple[Conn, int, Callable[[], m.Message], str]:
    """A connection, an open fid and a maker of requests on it that take the server some time,
    for the cases that need a request still outstanding: at msize above
    65547 a Tread of 1000000 bytes (pooled, §3.5); below that, under .L, a
    Tfsync of a file just written (pooled at any msize); otherwise a Tread
    of msize - 24 bytes (inline: it has always finished before the next
    frame is read, which §3.5 and §3.6 allow). The text says which."""
    conn = ctx.conn(msize=1048576 + 24)
    d = conn.casedir()
    size = 1000000
    if conn.rc.msize > 65536 + 11:
        conn.create(d, "big", b"y" * size)
        f = conn.walk(d, "big")
        conn.open(f)
        return conn, f, lambda: m.Tread(f, 0, size), f"Tread of {size} bytes (pooled)"
    conn.create(d, "big", b"y" * (conn.rc.msize * 4))
    f = conn.walk(d, "big")
    conn.open(f, "rw")
    if conn.dotl:
        conn.write_all(f, 0, b"z" * (conn.rc.msize * 4))
        return conn, f, lambda: m.Tfsync(f, 0), "Tfsync (pooled)"
    count = conn.rc.msize - c.IOHDRSZ
    return conn, f, lambda: m.Tread(f, 0, count), f"Tread of {count} bytes (inline at this msize)"
