"""The sans-IO client side of a 9P connection: tag allocation, request
encoding and reply framing. No sockets or event loops: requests go out as
bytes, received bytes go in through receive_data(), replies come out of
next_reply(). The tag pool knows about Tflush: a flushed tag (and the tag of
the Tflush itself) is reused only after the Rflush arrives, as the protocol
requires, so a late reply to the old request can never be mistaken for the
reply to a new one.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from .constants import HEADER_SIZE, MIN_MSIZE, NOTAG, VERSION_UNKNOWN, Dialect
from .messages import Message, Rversion, Tversion, decode_body, encode_message
from .wire import HEADER, U32, ProtocolError

MAX_TAGS = 0xFFFF  # tags 0..0xFFFE; 0xFFFF is NOTAG


@dataclass(slots=True)
class Reply:
    """A reply frame for tag. msg is None when its body could not be decoded
    (error says why); the stream itself is still in sync."""

    tag: int
    msg: Message | None
    error: str = ""


@dataclass(slots=True)
class StreamError:
    """The byte stream cannot be framed any more; the connection is dead."""

    reason: str


class TagsExhausted(Exception):
    """Every tag is in flight."""


class ClientConnection:
    """Protocol state of one connection, client side."""

    def __init__(self, msize: int, dialect: Dialect = Dialect.P9P2000L) -> None:
        if msize < MIN_MSIZE:
            raise ValueError(f"msize must be at least {MIN_MSIZE}")
        self.msize = msize  # the offer; lowered by the Rversion
        self.dialect = dialect
        self._buf = bytearray()
        self._dead = False
        self._next_tag = 0
        self._free: list[int] = []  # a heap of released tags below _next_tag
        self._in_use: set[int] = set()
        self._flushing: dict[int, int] = {}  # flush tag -> the tag it flushes

    # ---- version
    def version_request(self) -> bytes:
        return encode_message(Tversion(self.msize, self.dialect.value), NOTAG, self.dialect)

    def accept_version(self, reply: Message) -> None:
        """Take the server's Rversion; ConnectionError if it refuses us."""
        if not isinstance(reply, Rversion):
            raise ConnectionError(f"expected Rversion, got {type(reply).__name__}")
        if reply.version == VERSION_UNKNOWN or reply.version != self.dialect.value:
            raise ConnectionError(
                f"server does not speak {self.dialect.value} (it answered {reply.version!r})"
            )
        if reply.msize < MIN_MSIZE or reply.msize > self.msize:
            raise ConnectionError(f"server chose an unusable msize {reply.msize}")
        self.msize = reply.msize

    # ---- tags
    def alloc_tag(self) -> int:
        """The lowest free tag."""
        if self._free:
            tag = heapq.heappop(self._free)
        elif self._next_tag < MAX_TAGS:
            tag = self._next_tag
            self._next_tag += 1
        else:
            raise TagsExhausted(f"all {MAX_TAGS} tags are in flight")
        self._in_use.add(tag)
        return tag

    def release_tag(self, tag: int) -> None:
        """Free tag, unless a Tflush of it is outstanding (finish_flush frees it)."""
        if tag in self._flushing.values():
            return
        if tag in self._in_use:
            self._in_use.discard(tag)
            heapq.heappush(self._free, tag)

    def start_flush(self, oldtag: int) -> int:
        """A tag for the Tflush of oldtag. Neither tag is reusable until
        finish_flush(flush_tag), which the caller does on the Rflush."""
        tag = self.alloc_tag()
        self._flushing[tag] = oldtag
        return tag

    def finish_flush(self, flush_tag: int) -> int | None:
        """Release the flush tag and the tag it flushed; return the latter."""
        old = self._flushing.pop(flush_tag, None)
        if flush_tag in self._in_use:
            self._in_use.discard(flush_tag)
            heapq.heappush(self._free, flush_tag)
        if old is not None:
            self.release_tag(old)
        return old

    @property
    def tags_in_use(self) -> frozenset[int]:
        return frozenset(self._in_use)

    # ---- framing
    def encode(self, tag: int, msg: Message) -> bytes:
        data = encode_message(msg, tag, self.dialect)
        if len(data) > self.msize:
            raise ValueError(
                f"{type(msg).__name__} of {len(data)} bytes exceeds msize {self.msize}"
            )
        return data

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        if not self._dead:
            self._buf += data

    def next_reply(self) -> Reply | StreamError | None:
        """The next reply, or None if more bytes are needed."""
        if self._dead or len(self._buf) < 4:
            return None
        (size,) = U32.unpack_from(self._buf, 0)
        if size < HEADER_SIZE or size > self.msize:
            self._dead = True
            return StreamError(f"server sent a frame of size {size} (msize {self.msize})")
        if len(self._buf) < size:
            return None
        frame = memoryview(bytes(self._buf[:size]))
        del self._buf[:size]
        _, mtype, tag = HEADER.unpack_from(frame, 0)
        if mtype % 2 == 0:
            return Reply(tag, None, f"server sent a request type {mtype}")
        try:
            msg = decode_body(mtype, frame[HEADER_SIZE:], self.dialect)
        except ProtocolError as e:
            return Reply(tag, None, f"malformed reply: {e}")
        return Reply(tag, msg)
