"""A FUSE session as a vhost-user-fs device's request handler.

The device edge hands each descriptor chain to handle(); the session
answers with FUSE bytes, at once for nearly every request, later for a
SETLKW that must wait (the chain is deferred and the queue goes on).
"""

from __future__ import annotations

import errno
import logging

from . import fuse
from .session import FuseSession
from .virtqueue import ChainError, ChainReader, ChainWriter

log = logging.getLogger("p9share.virtiofs")

_OUT_HEADER = 16  # fuse_out_header: len, error, unique


class FuseRequestHandler:
    """Feeds one connection's chains to its FuseSession."""

    def __init__(self, session: FuseSession) -> None:
        self.session = session

    def handle(self, reader: ChainReader, writer: ChainWriter) -> None:
        data = reader.read(reader.remaining)  # bounded by the chain: the guest's own buffers
        writer.defer()

        def done(reply: bytes | None) -> None:
            try:
                if reply is not None:
                    _write_reply(writer, data, reply)
            finally:
                writer.complete()

        self.session.submit(data, done)

    def close(self) -> None:
        self.session.close()


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
