"""Primitive wire types and the decoding error.

Everything is little-endian. Strings are len[2] + UTF-8 with no NUL; a qid is
type[1] version[4] path[8].
"""

from __future__ import annotations

import struct
from typing import NamedTuple

U8 = struct.Struct("<B")
U16 = struct.Struct("<H")
U32 = struct.Struct("<I")
U64 = struct.Struct("<Q")
HEADER = struct.Struct("<IBH")
QID = struct.Struct("<BIQ")


class ProtocolError(Exception):
    """A message that breaks the wire format. Raised only inside the codec;
    the connection layer turns it into a value (see connection.py)."""


class Qid(NamedTuple):
    type: int
    version: int
    path: int


def decode_string(buf: bytes | memoryview, off: int) -> tuple[str, int]:
    if off + 2 > len(buf):
        raise ProtocolError("string length runs past the end of the message")
    (n,) = U16.unpack_from(buf, off)
    off += 2
    end = off + n
    if end > len(buf):
        raise ProtocolError(f"string of {n} bytes runs past the end of the message")
    raw = bytes(buf[off:end])
    if b"\x00" in raw:
        raise ProtocolError("string contains a NUL byte")
    try:
        return raw.decode("utf-8"), end
    except UnicodeDecodeError:
        raise ProtocolError("string is not valid UTF-8") from None


def encode_string(s: str) -> bytes:
    raw = s.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise ValueError("string longer than 65535 bytes")
    if b"\x00" in raw:
        raise ValueError("string contains a NUL byte")
    return U16.pack(len(raw)) + raw
