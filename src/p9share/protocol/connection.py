"""The sans-IO server side of a 9P connection: framing, validation, version
negotiation and error replies. No sockets, files or threads: bytes go in
through receive_data(), events come out of next_event(), and replies come out
as buffers ready to send. A transport drives it; tests drive it byte by byte.
"""

from __future__ import annotations

import errno as errno_mod
import os
import struct
from dataclasses import dataclass

from .constants import (
    DEFAULT_MAX_MSIZE,
    HEADER_SIZE,
    MIN_MSIZE,
    NOTAG,
    VERSION_UNKNOWN,
    Dialect,
    MsgType,
)
from .messages import (
    Decoder,
    Encoder,
    Message,
    Rerror,
    Rlerror,
    Rversion,
    Tversion,
    decode_body,
    encoders,
    request_decoders,
)
from .wire import HEADER, U32, ProtocolError


@dataclass(slots=True)
class Request:
    """A well-formed request."""

    tag: int
    msg: Message


@dataclass(slots=True)
class BadRequest:
    """A whole frame whose body is malformed or not allowed now. The connection
    survives: answer it with error_reply(errno) under its tag."""

    tag: int
    mtype: int
    reason: str
    errno: int = errno_mod.EPROTO


@dataclass(slots=True)
class FatalError:
    """The byte stream cannot be framed any more (a lying size field). The
    connection must be closed; nothing can be answered."""

    reason: str


Event = Request | BadRequest | FatalError


def negotiate_version(
    req: Tversion, max_msize: int, dialects: frozenset[Dialect] = frozenset(Dialect)
) -> Rversion:
    """The Rversion for a Tversion: msize never exceeds the client's; a
    version we do not speak, or an msize below 4096, gets 'unknown'."""
    msize = min(req.msize, max_msize)
    dialect = parse_version(req.version)
    if dialect is None or dialect not in dialects or msize < MIN_MSIZE:
        return Rversion(msize, VERSION_UNKNOWN)
    return Rversion(msize, dialect.value)


def parse_version(version: str) -> Dialect | None:
    """The dialect a version string names. As the Plan 9 manual says, '9P2000'
    followed by a period and anything unknown is plain 9P2000."""
    if version in ("9P2000.L", "9P2000.u"):
        return Dialect(version)
    if version == "9P2000" or version.startswith("9P2000."):
        return Dialect.P9P2000
    return None


class ServerConnection:
    """Protocol state of one connection, server side."""

    def __init__(
        self,
        max_msize: int = DEFAULT_MAX_MSIZE,
        dialects: frozenset[Dialect] = frozenset(Dialect),
    ) -> None:
        if max_msize < MIN_MSIZE:
            raise ValueError(f"max_msize must be at least {MIN_MSIZE}")
        self.max_msize = max_msize
        self.dialects = dialects
        self.msize = max_msize  # limit on incoming frames until negotiated
        self.dialect: Dialect | None = None
        # the negotiated dialect's codec: requests allowed now, reply encoders
        self._requests: dict[int, Decoder] = {}
        self._encoders: dict[type[Message], Encoder] = encoders(Dialect.P9P2000)
        self._buf = bytearray()
        self._closed = False

    # ---- input
    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        if not self._closed:  # after a FatalError the stream is dead: drop input
            self._buf += data

    def next_event(self) -> Event | None:
        """The next event, or None if more bytes are needed."""
        if self._closed:
            return None
        if len(self._buf) < 4:
            return None
        (size,) = U32.unpack_from(self._buf, 0)
        bad = self.check_size(size)
        if bad is not None:
            self._closed = True
            return bad
        if len(self._buf) < size:
            return None
        frame = bytes(self._buf[:size])
        del self._buf[:size]
        return self.parse_frame(memoryview(frame))

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as events (a half-sent message)."""
        return len(self._buf)

    def check_size(self, size: int) -> FatalError | None:
        """Validate a frame's size field before reading the frame."""
        if size < HEADER_SIZE:
            return FatalError(f"size field {size} is smaller than the 7-byte header")
        if size > self.msize:
            return FatalError(f"size field {size} exceeds msize {self.msize}")
        return None

    def parse_frame(self, frame: memoryview) -> Request | BadRequest:
        """Decode one complete frame (its size already checked)."""
        _, mtype, tag = HEADER.unpack_from(frame, 0)
        dec = self._requests.get(mtype)
        if dec is None:
            return self._parse_other(frame, mtype, tag)
        if tag == NOTAG:
            return BadRequest(tag, mtype, "NOTAG is only for Tversion", errno_mod.EINVAL)
        try:
            return Request(tag, dec(frame[HEADER_SIZE:]))
        except ProtocolError as e:
            return BadRequest(tag, mtype, str(e), errno_mod.EPROTO)
        except (struct.error, ValueError, TypeError) as e:  # defensive, as decode_body
            return BadRequest(tag, mtype, str(e), errno_mod.EPROTO)

    def _parse_other(self, frame: memoryview, mtype: int, tag: int) -> Request | BadRequest:
        """Tversion, or a request the negotiated dialect does not allow now."""
        if mtype == MsgType.TVERSION:
            try:
                msg = decode_body(mtype, frame[HEADER_SIZE:], Dialect.P9P2000)
            except ProtocolError as e:
                return BadRequest(tag, mtype, str(e), errno_mod.EPROTO)
            return Request(tag, msg)
        if self.dialect is None:
            return BadRequest(tag, mtype, "Tversion must come first", errno_mod.EPROTO)
        if tag == NOTAG:
            return BadRequest(tag, mtype, "NOTAG is only for Tversion", errno_mod.EINVAL)
        # not a request of this dialect (every allowed one has a decoder)
        return BadRequest(
            tag, mtype, f"message type {mtype} is not a {self.dialect.value} request",
            errno_mod.EOPNOTSUPP,
        )  # fmt: skip

    # ---- session
    def version(self, req: Tversion) -> Rversion:
        """Answer a Tversion and reset the negotiated state. The caller resets
        fids and aborts outstanding I/O (a Tversion starts a new session)."""
        reply = negotiate_version(req, self.max_msize, self.dialects)
        if reply.version == VERSION_UNKNOWN:
            self.dialect = None
            self.msize = self.max_msize
            self._requests = {}
            self._encoders = encoders(Dialect.P9P2000)
        else:
            self.dialect = parse_version(reply.version)
            self.msize = reply.msize
            assert self.dialect is not None
            self._requests = request_decoders(self.dialect)
            self._encoders = encoders(self.dialect)
        return reply

    # ---- output
    def error_reply(self, err: int, text: str | None = None) -> Message:
        """The error message of the negotiated dialect for errno err."""
        if self.dialect is Dialect.P9P2000L:
            return Rlerror(err)
        ename = text or os.strerror(err)
        if self.dialect is Dialect.P9P2000U:
            return Rerror(ename, err)
        return Rerror(ename)

    def encode(self, tag: int, msg: Message) -> list[bytes | memoryview]:
        """Encode a reply as send buffers. A reply that would exceed msize is a
        server bug; it is replaced by an error so the client never sees one."""
        parts = self._encoders[type(msg)](msg)
        size = HEADER_SIZE + sum(map(len, parts))
        if size > self.msize:
            parts = self._encoders[type(err := self.error_reply(errno_mod.EMSGSIZE))](err)
            msg, size = err, HEADER_SIZE + sum(map(len, parts))
        parts.insert(0, HEADER.pack(size, msg.TYPE, tag))
        return parts
