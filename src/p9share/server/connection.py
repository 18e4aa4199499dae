"""One client connection: a reader thread that frames requests off a blocking
socket and answers them.

Concurrency model (measured, see docs/protocol.md "Concurrency"): requests
are handled on the reader thread itself, which costs no thread hop and gives
the lowest latency for the metadata requests that dominate 9P traffic.
Requests that may take long (fsync; reads, directory reads and writes that
move more than 64 KiB: a read's count alone does not decide, the kernel asks
for msize even from a small file) go to a shared worker pool so that one slow request does not hold up the
others; their replies may then come out of order. Tflush waits for the
flushed request to finish and is answered right after its reply.

Limits (see limits.py). A client over its ops/s or bytes/s rate has its
requests delayed, not failed: they wait, in order, on a per-connection
throttle thread while the reader keeps reading, so a Tflush can still cancel
a delayed request and other connections are never held up. Requests in
flight (pooled or delayed) are capped by backpressure: at the cap the reader
stops reading until a reply goes out. An error reply instead would reach the
guest's applications as a failed read or write (Linux does not retry), while
waiting costs a well-behaved guest only latency, and TCP's window then stops
a hostile one from sending more, so its memory stays bounded either way.

Output never blocks a shared thread. A reply is written at once without
waiting (MSG_DONTWAIT) when nothing is queued before it; what the socket
does not take goes on the connection's output queue, which a per-connection
flusher thread writes with a kernel send timeout (SO_SNDTIMEO = the
send_timeout limit): a peer that takes nothing for that long is closed and
audited. While the queue holds more than its budget (one msize) the reader
reads no further request and a pooled request waits (parked, off the pool)
until the flusher has made room, so a connection that does not read pins at
most about one msize of replies per worker and its budget, and the shared
pool serves everyone else. No lock is held across a blocking send.
"""

from __future__ import annotations

import errno
import itertools
import logging
import select
import socket
import struct
import threading
import time
from collections import deque
from concurrent.futures import Executor

from ..protocol import messages as m
from ..protocol.connection import BadRequest, FatalError, Request, ServerConnection
from ..protocol.constants import HEADER_SIZE, NOTAG
from ..protocol.wire import U32
from .limits import ClientMeter, LimitReporter, Limits
from .session import Session
from .tls import TlsSocket

log = logging.getLogger("p9share.server")

# Requests sent to the worker pool: those whose cost grows with data size or
# that wait for the disk. Everything else is answered on the reader thread.
POOLED_BYTES = 64 * 1024
# bytes one recv may take beyond the current request (saves a syscall per request)
READ_AHEAD = 64 * 1024


# seconds an idle flusher thread waits for more output before it ends
FLUSHER_LINGER = 5.0
# buffers the flusher hands one sendmsg (Linux's IOV_MAX is 1024)
_IOV_MAX = 512

# requests that act on the connection itself, not on files (see _dispatch)
_CONTROL = frozenset({m.Tversion, m.Tflush})


def _goes_to_pool(msg: m.Message, session: Session) -> bool:
    if isinstance(msg, (m.Tread, m.Treaddir)):
        # a big count alone is not enough: the bytes there are to read decide
        return msg.count > POOLED_BYTES and session.bytes_to_move(msg) > POOLED_BYTES
    if isinstance(msg, m.Twrite):
        return len(msg.data) > POOLED_BYTES
    return type(msg) is m.Tfsync


class _LimitClose(Exception):
    """The connection is closed because of a limit (the audit record's name)."""

    def __init__(self, limit: str, reason: str) -> None:
        super().__init__(reason)
        self.limit = limit
        self.reason = reason


# poll bits that mean the peer is gone (or the socket is dead)
_HANGUP = select.POLLHUP | select.POLLERR | select.POLLNVAL | getattr(select, "POLLRDHUP", 0)


class Connection:
    """Serves one connected socket until the peer goes away."""

    def __init__(
        self,
        sock: socket.socket,
        session: Session,
        pool: Executor | None,
        *,
        limits: Limits = Limits(),  # noqa: B008 - frozen, shared
        meter: ClientMeter | None = None,
        reporter: LimitReporter | None = None,
        pool_everything: bool = False,
    ) -> None:
        self.sock = sock
        self.session = session
        self.proto: ServerConnection = session.proto
        self.pool = pool
        self.peer = session.peer
        self._send_lock = threading.Lock()  # the output queue; never held across a blocking send
        self._room = threading.Condition(self._send_lock)  # the reader waits for output room
        self._more = threading.Condition(self._send_lock)  # an idle flusher waits for output
        # encoded bytes not yet on the socket, in order, and their total
        self._out: deque[memoryview] = deque()
        self._out_bytes = 0
        self._flusher: threading.Thread | None = None
        # pooled requests waiting for output room, off the pool: (tag, msg)
        self._parked: deque[tuple[int, m.Message]] = deque()
        # a TLS socket encrypts in its own sendall: always through the queue
        self._direct = not isinstance(sock, TlsSocket)
        self._started = time.monotonic()
        self._ever_attached = False
        self._state = threading.Condition()
        self._inflight: dict[int, list[int]] = {}  # tag -> tags of Tflushes waiting for it
        self._flush_tags: set[int] = set()  # tags of those waiting Tflushes
        self.limits = limits
        self.meter = meter  # None: no rate limits
        self.reporter = reporter or LimitReporter(peer=str(self.peer))
        self._max_inflight = limits.max_inflight
        # throttled requests waiting for their time, in arrival order: (due, tag, msg)
        self._delayed: deque[tuple[float, int, m.Message]] = deque()
        self._throttler: threading.Thread | None = None
        self._stopping = False  # close() was called: stop waiting for room
        self._closing = False
        self._set_fid_limit(limits.max_fids)
        self._set_send_timeout(limits.send_timeout)
        # read-ahead buffer: bytes [_rstart, _rend) are received, not yet framed
        self._rbuf = bytearray(READ_AHEAD)
        self._rview = memoryview(self._rbuf)
        self._rstart = self._rend = 0
        # only for measuring the alternative model (benchmarks/dispatch_model.py)
        self._pool_everything = pool_everything

    # --------------------------------------------------------------- output --
    def _send(self, tag: int, reply: m.Message) -> None:
        """Send a reply without ever waiting for the peer: what the socket does
        not take at once is queued for the flusher thread."""
        try:
            parts = self.proto.encode(tag, reply)
        except (ValueError, struct.error):  # a value the wire cannot carry: a server bug
            log.exception("%s: cannot encode %r", self.peer, reply)
            parts = self.proto.encode(tag, self.proto.error_reply(errno.EIO))
        with self._send_lock:
            if self._closing:
                return
            sent = 0
            if self._direct and not self._out:
                try:
                    sent = self.sock.sendmsg(parts, (), socket.MSG_DONTWAIT)
                except BlockingIOError:
                    sent = 0
                except OSError as e:
                    log.debug("%s: send failed: %s", self.peer, e)
                    self._closing = True
                    return
                if sent == sum(map(len, parts)):  # the common case: all of it
                    return
            for p in parts:
                view = memoryview(p).cast("B")
                if sent >= len(view):
                    sent -= len(view)
                    continue
                self._out.append(view[sent:])
                self._out_bytes += len(view) - sent
                sent = 0
            if self._out:
                if self._flusher is None:
                    self._flusher = threading.Thread(
                        target=self._flush, daemon=True, name=f"p9share-send {self.peer}"
                    )
                    self._flusher.start()
                else:
                    self._more.notify()

    def _flush(self) -> None:
        """The flusher thread: writes the output queue with the socket's send
        timeout, holding no lock while it waits; ends when the queue has been
        empty for FLUSHER_LINGER seconds (so that a TLS connection, whose
        every reply goes through it, does not start a thread per reply)."""
        while True:
            resume: list[tuple[int, m.Message]] = []
            chunk: list[memoryview] = []
            with self._send_lock:
                if not self._out and not self._closing:
                    self._room.notify_all()
                    resume = self._take_parked(all_of_them=True)
                    if not resume:
                        self._more.wait(FLUSHER_LINGER)
                if self._closing or (not self._out and not resume):
                    self._flusher = None
                    self._room.notify_all()
                    resume += self._take_parked(all_of_them=True)
                    break
                chunk = list(itertools.islice(self._out, _IOV_MAX))
            if not chunk:  # only parked requests to run again
                self._resume(resume)
                continue
            try:
                if self._direct:
                    sent = self.sock.sendmsg(chunk)
                else:
                    data = b"".join(chunk)
                    self.sock.sendall(data)
                    sent = len(data)
            except OSError as e:
                self._fail_output(isinstance(e, BlockingIOError | TimeoutError), e)
                return
            with self._send_lock:
                self._out_bytes -= sent
                while sent:
                    head = self._out[0]
                    if len(head) <= sent:
                        sent -= len(head)
                        self._out.popleft()
                    else:
                        self._out[0] = head[sent:]
                        sent = 0
                self._room.notify_all()
                resume = self._take_parked(all_of_them=False)
            self._resume(resume)
        self._resume(resume)

    def _over_budget(self) -> bool:
        """Whether the output queue is full (caller holds _send_lock)."""
        return self._out_bytes > self.proto.msize

    def _take_parked(self, all_of_them: bool) -> list[tuple[int, m.Message]]:
        """Parked requests that may run now (caller holds _send_lock)."""
        if not self._parked or (not all_of_them and self._over_budget()):
            return []
        out = list(self._parked)
        self._parked.clear()
        return out

    def _resume(self, parked: list[tuple[int, m.Message]]) -> None:
        for tag, msg in parked:
            if self._closing:
                self._forget(tag)
            else:
                self._submit(tag, msg)

    def _fail_output(self, timed_out: bool, e: OSError) -> None:
        """The peer took nothing within the send timeout (or the socket
        failed): drop the output and close the connection."""
        with self._send_lock:
            self._closing = True
            self._out.clear()
            self._out_bytes = 0
            self._flusher = None
            self._room.notify_all()
            parked = list(self._parked)
            self._parked.clear()
        for tag, _ in parked:
            self._forget(tag)
        if timed_out:
            reason = f"peer took no reply data for {self.limits.send_timeout:g} s"
            log.warning("%s: closing: %s", self.peer, reason)
            self.reporter.hit("send_timeout", "closed", reason=reason)
        else:
            log.debug("%s: send failed: %s", self.peer, e)
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # the reader sees EOF
        except OSError:
            pass

    def _forget(self, tag: int) -> None:
        """Free the tag of a request that will not run (the connection is closing)."""
        with self._state:
            self._inflight.pop(tag, None)
            self._state.notify_all()

    def _wait_for_room(self) -> bool:
        """Before reading another request: wait while the output queue is over
        its budget (the flusher's send timeout bounds the wait). False if the
        connection is closing."""
        with self._send_lock:
            while self._over_budget() and not self._closing and not self._stopping:
                self._room.wait(1.0)
            return not self._closing

    def _set_send_timeout(self, seconds: float) -> None:
        """The kernel's send timeout (SO_SNDTIMEO): only the flusher thread
        makes blocking sends, and it gives up after this long without progress."""
        whole = int(seconds)
        tv = struct.pack("@ll", whole, int((seconds - whole) * 1e6))
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
        except OSError:  # not a socket we can set it on: the flusher may then wait longer
            log.debug("%s: cannot set a send timeout", self.peer)

    # ---------------------------------------------------------------- input --
    def _wait_readable(self, deadline: float) -> bool:
        """Wait until the socket has input (or has hung up); False at the deadline."""
        pending = getattr(self.sock, "pending", None)  # TLS: bytes already decrypted
        if pending is not None and pending():
            return True
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLIN | _HANGUP)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if poller.poll(max(1, int(left * 1000 + 0.999))):
                return True

    def _recv_exact(self, view: memoryview, deadline: float | None) -> bool:
        """Fill view; False at EOF. Past the deadline, _LimitClose."""
        got = 0
        while got < len(view):
            if deadline is None:
                n = self.sock.recv_into(view[got:])
            else:
                try:  # the rest of a frame has usually arrived already: no poll
                    n = self.sock.recv_into(view[got:], 0, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    if not self._wait_readable(deadline):
                        raise _LimitClose(
                            "header_timeout",
                            f"message not complete within {self.limits.header_timeout:g} s",
                        ) from None
                    continue
            if n == 0:
                return False
            got += n
        return True

    def _await_request(self) -> None:
        """Wait for the next request's first byte. With an idle timeout, a
        connection with no request for that long and none in flight is
        closed; with an attach timeout, one that has attached nothing that
        long after connecting is closed."""
        while True:
            idle = self.limits.idle_timeout
            attach = 0.0 if self._attached() else self.limits.attach_timeout
            if not idle and not attach:
                return
            now = time.monotonic()
            attach_due = self._started + attach
            deadline = min(now + idle if idle else attach_due, attach_due if attach else now + idle)
            if self._wait_readable(deadline):
                return
            if attach and time.monotonic() >= attach_due and not self._attached():
                raise _LimitClose("attach_timeout", f"nothing attached within {attach:g} s")
            if idle and time.monotonic() >= now + idle:
                with self._state:
                    busy = bool(self._inflight)
                if not busy:
                    raise _LimitClose("idle_timeout", f"no request for {idle:g} s")

    def _attached(self) -> bool:
        """Whether the session has attached an export since the connection began."""
        if not self._ever_attached and self.session.exports_attached:
            self._ever_attached = True
        return self._ever_attached

    def _read_frame(self) -> memoryview | FatalError | None:
        # One recv of up to READ_AHEAD bytes usually brings a whole request
        # (one syscall, not two); what comes after it stays in _rbuf for the
        # next call. Each frame gets its own buffer: handlers keep slices of it.
        rbuf = self._rbuf
        if self._rstart == self._rend:
            self._rstart = 0
            if self.limits.idle_timeout or (self.limits.attach_timeout and not self._ever_attached):
                # what has arrived is taken at once: a TLS socket may hold a
                # whole request already read off the wire, which poll cannot see
                try:
                    self._rend = self.sock.recv_into(self._rview, 0, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    self._await_request()
                    self._rend = self.sock.recv_into(self._rview)
            else:
                self._rend = self.sock.recv_into(self._rview)
            if self._rend == 0:
                return None
        start, avail = self._rstart, self._rend - self._rstart
        if avail >= 4:
            (size,) = U32.unpack_from(rbuf, start)
            if avail >= size >= HEADER_SIZE and size <= self.proto.msize:
                # the common case: the whole request is here
                self._rstart = start + size
                return memoryview(rbuf[start : start + size])  # a copy: rbuf is reused
        # a half-sent message holds a reader thread and a buffer: bound its time
        timeout = self.limits.header_timeout
        deadline = time.monotonic() + timeout if timeout else None
        if avail < 4:
            head = bytearray(4)
            head[:avail] = rbuf[start : start + avail]
            self._rstart = self._rend = 0
            if not self._recv_exact(memoryview(head)[avail:], deadline):
                return None
            (size,) = U32.unpack(head)
            prefix: bytes | bytearray = head
        else:
            (size,) = U32.unpack_from(rbuf, start)
            prefix = b""
        bad = self.proto.check_size(size)
        if bad is not None:
            return bad
        if prefix:
            frame = bytearray(size)
            frame[:4] = prefix
            have = 4
        elif avail >= size:
            self._rstart = start + size
            return memoryview(rbuf[start : start + size])  # a copy: rbuf is reused
        else:
            frame = bytearray(size)
            frame[:avail] = rbuf[start : start + avail]
            self._rstart = self._rend = 0
            have = avail
        view = memoryview(frame)
        if not self._recv_exact(view[have:], deadline):
            log.info("%s: connection closed in the middle of a message", self.peer)
            return None
        return view

    # ----------------------------------------------------------------- loop --
    def serve(self) -> None:
        try:
            self._loop()
        except _LimitClose as e:
            log.warning("%s: closing: %s", self.peer, e.reason)
            self.reporter.hit(e.limit, "closed", reason=e.reason)
        except OSError as e:
            log.info("%s: connection error: %s", self.peer, e)
        except Exception:  # a server bug ends this connection only
            log.exception("%s: closing after an internal error", self.peer)
        finally:
            self._discard_delayed()
            self._drain()
            with self._send_lock:
                # replies already queued go out first (the send timeout bounds it)
                while self._out and self._flusher is not None and not self._stopping:
                    self._room.wait(1.0)
                self._closing = True
                self._more.notify_all()
                flusher = self._flusher
            if flusher is not None:  # wake it from a blocked send, let it go first
                try:
                    self.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                flusher.join(5)
            self.session.reset()
            try:
                self.sock.close()
            except OSError:
                pass
            log.info("%s: disconnected", self.peer)

    def _loop(self) -> None:
        while not self._closing:
            if self._out_bytes > self.proto.msize and not self._wait_for_room():
                return  # the peer does not read its replies: the flusher closed it
            frame = self._read_frame()
            if frame is None:
                return
            if isinstance(frame, FatalError):
                log.warning("%s: closing: %s", self.peer, frame.reason)
                return
            ev = self.proto.parse_frame(frame)
            if (self._inflight or self._flush_tags) and self._tag_busy(ev.tag):
                log.warning("%s: closing: tag %d reused while in flight", self.peer, ev.tag)
                return
            if isinstance(ev, BadRequest):
                log.info(
                    "%s: bad request (type %d tag %d): %s", self.peer, ev.mtype, ev.tag, ev.reason
                )
                self._send(ev.tag, self.proto.error_reply(ev.errno, ev.reason))
                continue
            assert isinstance(ev, Request)
            msg = ev.msg
            # the common request (no rate limit, nothing queued) skips _dispatch's checks
            if type(msg) in _CONTROL or self.meter is not None or self._delayed:
                if not self._dispatch(ev):
                    return
            elif not self._run(ev.tag, msg):
                return

    def _dispatch(self, req: Request) -> bool:
        msg, tag = req.msg, req.tag
        if isinstance(msg, m.Tversion):
            self._discard_delayed()  # Tversion aborts what has not started
            self._drain()
            self.session.reset()
            self._send(tag, self.proto.version(msg))
            return True
        if isinstance(msg, m.Tflush):
            with self._state:
                if self._cancel_delayed(msg.oldtag):
                    waiting = None  # it never ran: no reply for it, Rflush at once
                else:
                    waiting = self._inflight.get(msg.oldtag)
                if waiting is not None:
                    waiting.append(tag)
                    self._flush_tags.add(tag)
                    return True
            self._send(tag, m.Rflush())
            return True
        delay = self._throttle(msg)
        if delay > 0 or self._delayed:  # queued ones go first: keep the order
            due = time.monotonic() + delay
            if not self._reserve(tag):
                return False
            with self._state:
                self._delayed.append((due, tag, msg))
                self._state.notify_all()
                if self._throttler is None:
                    self._throttler = threading.Thread(
                        target=self._run_delayed, daemon=True, name=f"p9share-throttle {self.peer}"
                    )
                    self._throttler.start()
            return True
        return self._run(tag, msg)

    def _run(self, tag: int, msg: m.Message) -> bool:
        """Answer a request inline, or hand it to the pool (deciding once);
        False if the connection closes while waiting for room."""
        if not self._pooled(msg):
            self._send(tag, self.session.handle(msg))
            return True
        if not self._reserve(tag):
            return False
        self._submit(tag, msg)
        return True

    def _pooled(self, msg: m.Message) -> bool:
        return self.pool is not None and (self._pool_everything or _goes_to_pool(msg, self.session))

    def _submit(self, tag: int, msg: m.Message) -> None:
        """Run a request (its tag reserved) on the pool."""
        assert self.pool is not None
        try:
            self.pool.submit(self._run_pooled, tag, msg)
        except RuntimeError:  # pool shut down: the server is stopping
            with self._state:
                del self._inflight[tag]
                self._state.notify_all()
            self._send(tag, self.proto.error_reply(errno.ESHUTDOWN))

    # --------------------------------------------------------------- limits --
    def _set_fid_limit(self, max_fids: int) -> None:
        self.session.fids.set_limit(
            max_fids, lambda: self.reporter.hit("max_fids", "EMFILE", max=max_fids)
        )

    def apply_limits(self, limits: Limits, meter: ClientMeter | None) -> None:
        """Serve under other limits from now on: max_fids, max_inflight, the
        timeouts and the rates of meter (None: no rate limits). The server
        calls it when a key identifies the client at a Tattach (not per
        request). Fids already held stay even past the new max_fids; the
        negotiated msize stays (the server caps a later Tversion's)."""
        self._set_fid_limit(limits.max_fids)
        self._set_send_timeout(limits.send_timeout)
        with self._state:  # waiters for room under max_inflight look again
            self.limits = limits
            self.meter = meter
            self._max_inflight = limits.max_inflight
            self._state.notify_all()

    def _throttle(self, msg: m.Message) -> float:
        """Charge the client's rate buckets; the delay this request must wait."""
        if self.meter is None:
            return 0.0
        nbytes = 0
        if isinstance(msg, m.Tread):
            nbytes = min(msg.count, self.proto.msize)
        elif isinstance(msg, m.Twrite):
            nbytes = len(msg.data)
        delay, limit = self.meter.charge(nbytes)
        if delay > 0:
            self.reporter.hit(limit, "delayed", delay=round(delay, 3))
        return delay

    def _reserve(self, tag: int) -> bool:
        """Mark tag in flight, first waiting for room under max_inflight
        (backpressure: nothing is read meanwhile). False if the connection
        is closing or its peer hung up while waiting."""
        with self._state:
            if len(self._inflight) >= self._max_inflight:
                self.reporter.hit("max_inflight", "paused reading", max=self._max_inflight)
            while len(self._inflight) >= self._max_inflight:
                if self._stopping or self._hung_up():
                    self._discard_delayed()
                    return False
                self._state.wait(1.0)
            self._inflight[tag] = []
            return True

    def _hung_up(self) -> bool:
        """Whether the peer has gone (checked while not reading: a client that
        leaves with throttled requests queued must not keep them waiting)."""
        poller = select.poll()
        poller.register(self.sock.fileno(), _HANGUP)
        return bool(poller.poll(0))

    def _run_delayed(self) -> None:
        """The throttle thread: runs delayed requests in order when due; ends
        when none is left (the next delayed request starts a new one)."""
        while True:
            with self._state:
                while True:
                    if not self._delayed:
                        self._throttler = None
                        return
                    due, tag, msg = self._delayed[0]
                    left = due - time.monotonic()
                    if left <= 0:
                        self._delayed.popleft()
                        break
                    self._state.wait(left)
            if self._pooled(msg):
                self._submit(tag, msg)
            else:
                self._run_pooled(tag, msg)

    def _cancel_delayed(self, tag: int) -> bool:
        """Drop a delayed request that has not started (caller holds _state)."""
        for i, (_, t, _) in enumerate(self._delayed):
            if t == tag:
                del self._delayed[i]
                del self._inflight[tag]
                self._state.notify_all()
                return True
        return False

    def _discard_delayed(self) -> None:
        """Forget every delayed request (Tversion, connection end): they get no reply."""
        with self._state:
            while self._delayed:
                _, tag, _ = self._delayed.popleft()
                self._inflight.pop(tag, None)
            self._state.notify_all()

    def _tag_busy(self, tag: int) -> bool:
        """A tag is busy from its request until its reply (or Rflush) is sent.
        The caller skips this when nothing is pooled or delayed (no lock
        needed: the common case)."""
        # a pooled request's reply goes out before its tag is freed, both under
        # _state: the client may already reuse the tag, so wait for the lock
        with self._state:
            return tag in self._inflight or tag in self._flush_tags

    def _run_pooled(self, tag: int, msg: m.Message) -> None:
        if self.pool is not None:
            with self._send_lock:
                if self._over_budget() and not self._closing:
                    # its reply would only wait in the queue: give the worker
                    # back; the flusher resubmits it when there is room
                    self._parked.append((tag, msg))
                    return
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
        with self._state:
            self._stopping = True
            self._state.notify_all()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


__all__ = ["NOTAG", "Connection"]
