"""Small helpers shared by the case modules."""

from __future__ import annotations

import struct

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
