"""A FUSE session as a vhost-user-fs device's request handler.

The device edge hands each descriptor chain to handle(); the session
answers with FUSE bytes, at once for nearly every request, later for a
SETLKW that must wait (the chain is deferred and the queue goes on).
READ and WRITE take another way: their file data goes between the host file
and the chain's guest-memory buffers (preadv/pwritev), never through a
Python bytes object; only their 80-byte prefix is read out of the chain.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable

from . import fuse
from .session import FuseSession
from .virtqueue import ChainError, ChainReader, ChainWriter

log = logging.getLogger("p9share.virtiofs")

_OUT_HEADER = fuse.OUT_HEADER_SIZE  # fuse_out_header: len, error, unique
_IO_PREFIX = fuse.IO_PREFIX_SIZE  # fuse_in_header and fuse_read_in / fuse_write_in
_READ, _WRITE = int(fuse.Opcode.READ), int(fuse.Opcode.WRITE)


# what each finished request is told to: (op, errno, seconds, bytes read, bytes written)
Observer = Callable[[str, int, float, int, int], None]


class FuseRequestHandler:
    """Feeds one connection's chains to its FuseSession."""

    def __init__(self, session: FuseSession, observe: Observer | None = None) -> None:
        self.session = session
        self.observe = observe  # the live metrics, when the server keeps them

    def handle(self, reader: ChainReader, writer: ChainWriter) -> None:
        total = reader.remaining
        head = reader.read(_IO_PREFIX)
        if len(head) == _IO_PREFIX:
            opcode = int.from_bytes(head[4:8], "little")
            if opcode in (_READ, _WRITE):
                self._data(opcode, head, total, reader, writer)
                return
        # every other request: its bytes (bounded by the chain: the guest's own buffers)
        data = head + reader.read(reader.remaining) if reader.remaining else head
        writer.defer()
        t0 = time.perf_counter()

        def done(reply: bytes | None) -> None:
            try:
                if reply is not None:
                    _write_reply(writer, data, reply)
            finally:
                writer.complete()
                if self.observe is not None:
                    _observe(self.observe, data, reply, time.perf_counter() - t0)

        self.session.submit(data, done)

    def _data(
        self, opcode: int, head: bytes, total: int, reader: ChainReader, writer: ChainWriter
    ) -> None:
        """READ and WRITE: the file data goes straight between the file and
        the chain's buffers (see FuseSession.read_into and write_from)."""
        t0 = time.perf_counter()
        if opcode == _READ:
            n, err = self.session.read_into(head, total, writer)
            if self.observe is not None:
                nread = n - _OUT_HEADER if n and not err else 0
                self.observe("read", err, time.perf_counter() - t0, nread, 0)
            return
        reply = self.session.write_from(head, total, reader.views())
        _write_reply(writer, head, reply)
        if self.observe is not None:
            _observe(self.observe, head, reply, time.perf_counter() - t0)

    def close(self) -> None:
        self.session.close()


def _observe(observe: Observer, request: bytes, reply: bytes | None, seconds: float) -> None:
    """What one request did, from its bytes: opcode, errno, data moved."""
    if len(request) < 8:
        return
    opcode = int.from_bytes(request[4:8], "little")
    err = -int.from_bytes(reply[4:8], "little", signed=True) if reply and len(reply) >= 16 else 0
    nread = nwritten = 0
    if not err and reply is not None:
        if opcode == fuse.Opcode.READ:
            nread = len(reply) - _OUT_HEADER
        elif opcode == fuse.Opcode.WRITE and len(reply) >= _OUT_HEADER + 4:
            nwritten = int.from_bytes(reply[16:20], "little")
    observe(fuse.opcode_name(opcode).lower(), max(0, err), seconds, nread, nwritten)


def _write_reply(writer: ChainWriter, request: bytes, reply: bytes) -> None:
    """The reply, or EIO when the guest gave too little room for it (a
    guest bug: the kernel sizes its buffers from what it asked)."""
    try:
        writer.write(reply)
        return
    except ChainError as e:
        log.info("virtio-fs: %s", e)
    if writer.available >= _OUT_HEADER and len(request) >= 16:
        unique = int.from_bytes(request[8:16], "little")
        writer.write(fuse.reply_error(unique, errno.EIO))
