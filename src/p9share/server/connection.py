"""One client connection: a reader thread that frames requests off a blocking
socket and answers them.

Concurrency model (measured, see docs/protocol.md "Concurrency"): requests
are handled on the reader thread itself, which costs no thread hop and gives
the lowest latency for the metadata requests that dominate 9P traffic.
Requests that may take long (fsync, large reads and writes, directory reads)
go to a shared worker pool so that one slow request does not hold up the
others; their replies may then come out of order. Tflush waits for the
flushed request to finish and is answered right after its reply.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
import threading
from concurrent.futures import Executor

from ..protocol import messages as m
from ..protocol.connection import BadRequest, FatalError, Request, ServerConnection
from ..protocol.constants import NOTAG
from ..protocol.wire import U32
from .session import Session

log = logging.getLogger("p9share.server")

# Requests sent to the worker pool: those whose cost grows with data size or
# that wait for the disk. Everything else is answered on the reader thread.
POOLED_BYTES = 64 * 1024


def _goes_to_pool(msg: m.Message) -> bool:
    t = type(msg)
    if t is m.Tread or t is m.Treaddir:
        return msg.count > POOLED_BYTES  # type: ignore[attr-defined, no-any-return]
    if t is m.Twrite:
        return len(msg.data) > POOLED_BYTES  # type: ignore[attr-defined]
    return t is m.Tfsync


class Connection:
    """Serves one connected socket until the peer goes away."""

    def __init__(
        self,
        sock: socket.socket,
        session: Session,
        pool: Executor | None,
        *,
        max_inflight: int = 64,
        pool_everything: bool = False,
    ) -> None:
        self.sock = sock
        self.session = session
        self.proto: ServerConnection = session.proto
        self.pool = pool
        self.peer = session.peer
        self._send_lock = threading.Lock()
        self._state = threading.Condition()
        self._inflight: dict[int, list[int]] = {}  # tag -> tags of Tflushes waiting for it
        self._flush_tags: set[int] = set()  # tags of those waiting Tflushes
        self._max_inflight = max_inflight
        self._closing = False
        # only for measuring the alternative model (benchmarks/dispatch_model.py)
        self._pool_everything = pool_everything

    # --------------------------------------------------------------- output --
    def _send(self, tag: int, reply: m.Message) -> None:
        try:
            parts = self.proto.encode(tag, reply)
        except (ValueError, struct.error):  # a value the wire cannot carry: a server bug
            log.exception("%s: cannot encode %r", self.peer, reply)
            parts = self.proto.encode(tag, self.proto.error_reply(errno.EIO))
        with self._send_lock:
            if self._closing:
                return
            try:
                total = sum(len(p) for p in parts)
                sent = self.sock.sendmsg(parts)
                if sent < total:  # rare: a signal or a full buffer split the write
                    self.sock.sendall(b"".join(bytes(p) for p in parts)[sent:])
            except OSError as e:
                log.debug("%s: send failed: %s", self.peer, e)
                self._closing = True

    # ---------------------------------------------------------------- input --
    def _recv_exact(self, view: memoryview) -> bool:
        got = 0
        while got < len(view):
            n = self.sock.recv_into(view[got:])
            if n == 0:
                return False
            got += n
        return True

    def _read_frame(self) -> memoryview | FatalError | None:
        head = bytearray(4)
        if not self._recv_exact(memoryview(head)):
            return None
        (size,) = U32.unpack(head)
        bad = self.proto.check_size(size)
        if bad is not None:
            return bad
        frame = bytearray(size)
        frame[:4] = head
        view = memoryview(frame)
        if not self._recv_exact(view[4:]):
            log.info("%s: connection closed in the middle of a message", self.peer)
            return None
        return view

    # ----------------------------------------------------------------- loop --
    def serve(self) -> None:
        try:
            self._loop()
        except OSError as e:
            log.info("%s: connection error: %s", self.peer, e)
        except Exception:  # a server bug ends this connection only
            log.exception("%s: closing after an internal error", self.peer)
        finally:
            self._drain()
            with self._send_lock:
                self._closing = True
            self.session.reset()
            try:
                self.sock.close()
            except OSError:
                pass
            log.info("%s: disconnected", self.peer)

    def _loop(self) -> None:
        while not self._closing:
            frame = self._read_frame()
            if frame is None:
                return
            if isinstance(frame, FatalError):
                log.warning("%s: closing: %s", self.peer, frame.reason)
                return
            ev = self.proto.parse_frame(frame)
            if self._tag_busy(ev.tag):
                log.warning("%s: closing: tag %d reused while in flight", self.peer, ev.tag)
                return
            if isinstance(ev, BadRequest):
                log.info(
                    "%s: bad request (type %d tag %d): %s", self.peer, ev.mtype, ev.tag, ev.reason
                )
                self._send(ev.tag, self.proto.error_reply(ev.errno, ev.reason))
                continue
            assert isinstance(ev, Request)
            if not self._dispatch(ev):
                return

    def _dispatch(self, req: Request) -> bool:
        msg, tag = req.msg, req.tag
        if isinstance(msg, m.Tversion):
            self._drain()
            self.session.reset()
            self._send(tag, self.proto.version(msg))
            return True
        if isinstance(msg, m.Tflush):
            with self._state:
                waiting = self._inflight.get(msg.oldtag)
                if waiting is not None:
                    waiting.append(tag)
                    self._flush_tags.add(tag)
                    return True
            self._send(tag, m.Rflush())
            return True
        if self.pool is None or not (self._pool_everything or _goes_to_pool(msg)):
            self._send(tag, self.session.handle(msg))
            return True
        with self._state:
            while len(self._inflight) >= self._max_inflight:
                self._state.wait()
            self._inflight[tag] = []
        try:
            self.pool.submit(self._run_pooled, tag, msg)
        except RuntimeError:  # pool shut down: the server is stopping
            with self._state:
                del self._inflight[tag]
                self._state.notify_all()
            self._send(tag, self.proto.error_reply(errno.ESHUTDOWN))
        return True

    def _tag_busy(self, tag: int) -> bool:
        """A tag is busy from its request until its reply (or Rflush) is sent."""
        with self._state:
            return tag in self._inflight or tag in self._flush_tags

    def _run_pooled(self, tag: int, msg: m.Message) -> None:
        try:
            reply = self.session.handle(msg)
        except BaseException:  # handle() answers errors itself; this is a last resort
            log.exception("%s: request %r failed", self.peer, msg)
            reply = self.proto.error_reply(errno.EIO)
        # the reply and any Rflush for it go out together, in that order
        with self._state:
            try:
                self._send(tag, reply)
                flushes = self._inflight.pop(tag, [])
                for ftag in flushes:
                    self._flush_tags.discard(ftag)
                    self._send(ftag, m.Rflush())
            finally:
                self._inflight.pop(tag, None)
                self._state.notify_all()

    def _drain(self) -> None:
        """Wait until no request of this connection is running."""
        with self._state:
            while self._inflight:
                self._state.wait()

    def close(self) -> None:
        """Stop serving (server shutdown): the reader sees EOF."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


__all__ = ["NOTAG", "Connection"]
