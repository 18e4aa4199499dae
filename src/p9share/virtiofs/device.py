"""The transport edge of a vhost-user-fs device: socket, fds, mmap, threads.

One `VhostUserListener` per socket path serves one front end at a time (a
second connection while one is served is closed at once) and keeps listening
after it goes away, so a guest reboot or a QEMU restart reconnects to the same
service.  Per connection:

 - a control thread reads vhost-user messages, runs `BackendState`, and
   applies each event (maps memory, swaps eventfds, starts/stops queues);
 - per started queue, one thread waits on the kick eventfd, pops chains and
   runs the handler inline (as virtiofsd does with no thread pool: a thread
   hop per request costs more than it saves under the GIL).  A handler that
   must wait (a lock) calls `writer.defer()` and later `writer.complete()`
   from its own thread, and the queue goes on; `max_inflight` > 1 instead runs
   handlers in a small per-queue pool.  Neither ever holds up the control
   thread;
 - on disconnect every queue is stopped, every fd closed, memory unmapped,
   and the per-connection handler (from `handler_factory`) closed.

Everything a guest or front end can make us allocate is bounded: queues by
`max_queues`, ring sizes by `max_queue_size`, threads by 1 + `max_queues`
(+ `max_inflight` each with a pool), chains in flight (deferred ones
included) by the queue size.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import socket
import stat
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, cast

from .memory import GuestMemory, MemoryMapError, close_region, map_region
from .vhost_user import (
    HEADER_SIZE,
    MAX_MEM_REGIONS,
    BackendState,
    Event,
    MemoryRegionSpec,
    Request,
    VhostUserError,
    VringAddr,
    parse_header,
)
from .virtqueue import Chain, ChainReader, ChainWriter, RingError, Virtqueue

__all__ = ["ChainHandler", "HandlerFactory", "VhostUserListener"]

log = logging.getLogger("p9share.virtiofs")

_ONE = (1).to_bytes(8, "little")
_POLL_MS = 1000  # a queue also re-checks its ring this often: a lost kick costs at most this
_MAX_FDS = MAX_MEM_REGIONS
_MESSAGE_TIMEOUT = 10.0  # a message, once started, must arrive whole within this


class ChainHandler(Protocol):
    """What the FUSE session provides: read the request from `reader`, write
    the reply into `writer` (nothing for requests without a reply)."""

    def handle(self, reader: ChainReader, writer: ChainWriter) -> None: ...


HandlerFactory = Callable[[], ChainHandler]


def _is_eventfd(fd: int) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[eventfd]"
    except OSError:
        return False


def _close_fds(fds: tuple[int, ...] | list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


class _Queue:
    """One virtqueue's runtime: its eventfds, its ring engine and its thread."""

    def __init__(self, conn: _Connection, index: int) -> None:
        self.conn = conn
        self.index = index
        self.lock = threading.Lock()
        self.idle = threading.Condition(self.lock)
        self.kick_fd: int | None = None
        self.call_fd: int | None = None
        self.err_fd: int | None = None
        self.vq: Virtqueue | None = None
        self.enabled = False
        self.broken = False
        self.inflight = 0
        self.generation = 0
        self.processed = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._slots = threading.BoundedSemaphore(conn.max_inflight)
        self._pool: ThreadPoolExecutor | None = None

    # -- control-thread side ----------------------------------------------------

    def set_fd(self, kind: str, fd: int | None) -> None:
        with self.lock:
            old = getattr(self, kind)
            setattr(self, kind, fd)
        if old is not None and old != fd:
            _close_fds([old])

    def start(self, kick_fd: int) -> None:
        """SET_VRING_KICK: start the ring, or swap the kick fd of a running one."""
        self.stop_thread()
        state = self.conn.state
        num, addr, base = state.vring(self.index)
        self.set_fd("kick_fd", kick_fd)
        with self.lock:
            self.enabled = state.vrings[self.index].enabled
            if self.vq is None:  # a fresh start, not a new kick fd for a running ring
                self.generation += 1
                self._build_ring(num, addr, base)
        stop = threading.Event()
        self._stop = stop
        self._thread = threading.Thread(
            target=self._run,
            args=(stop,),
            name=f"vhost-user {self.conn.name} q{self.index}",
            daemon=True,
        )
        self._thread.start()

    def _build_ring(self, num: int, addr: VringAddr | None, base: int) -> None:
        """Build the ring engine (lock held); the queue is broken if it cannot be."""
        self.broken = False
        state = self.conn.state
        try:
            if addr is None:  # BackendState refuses a kick before the address
                raise RingError("no ring address")
            self.vq = Virtqueue(
                self.conn.memory,
                size=num,
                desc=addr.desc,
                avail=addr.avail,
                used=addr.used,
                base=base,
                event_idx=state.event_idx,
                indirect=state.indirect,
            )
        except RingError as e:
            self._break_locked(f"cannot start: {e}")

    def set_enabled(self, enabled: bool) -> None:
        with self.lock:
            self.enabled = enabled
            self._wake_locked()

    def remap(self, memory: GuestMemory) -> None:
        """A new memory table: re-locate the rings; chains in flight keep their
        slices of the old mapping, which stays alive until they finish."""
        with self.lock:
            if self.vq is not None and not self.broken:
                try:
                    self.vq.remap(memory)
                except RingError as e:
                    self._break_locked(f"after a new memory table: {e}")
            self._wake_locked()

    def stop_thread(self) -> None:
        t = self._thread
        if t is None:
            return
        self._stop.set()  # this thread's own event: a new start() cannot revive it
        with self.lock:
            self._wake_locked()
        t.join(self.conn.stop_timeout)
        if t.is_alive():
            log.warning("%s q%d: a handler is still running after stop", self.conn.name, self.index)
        self._thread = None

    def stop(self) -> int:
        """GET_VRING_BASE: stop, let in-flight chains finish (bounded), and
        return the avail index to resume from."""
        self.stop_thread()
        with self.lock:
            if self.inflight:
                self.idle.wait_for(lambda: self.inflight == 0, self.conn.stop_timeout)
            if self.inflight:
                log.warning(
                    "%s q%d: %d requests still running at stop; their replies are dropped",
                    self.conn.name,
                    self.index,
                    self.inflight,
                )
            self.generation += 1  # late completions must not touch the ring any more
            vq, self.vq = self.vq, None
            base = vq.last_avail if vq is not None else self.conn.state.vring(self.index)[2]
            if vq is not None:
                vq.release()
            kick, self.kick_fd = self.kick_fd, None
        if kick is not None:
            _close_fds([kick])
        return base

    def close(self) -> None:
        self.stop()
        self.set_fd("call_fd", None)
        self.set_fd("err_fd", None)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        with self.lock:  # a late completion must not write to a reused fd number
            _close_fds([self._wake_r, self._wake_w])
            self._wake_r = self._wake_w = -1

    # -- queue-thread side --------------------------------------------------------

    def _wake_locked(self) -> None:
        if self._wake_w >= 0:
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"\0")

    def _break_locked(self, reason: str) -> None:
        """The guest broke this ring: stop using it and tell the front end."""
        self.broken = True
        log.warning("%s q%d marked broken: %s", self.conn.name, self.index, reason)
        if self.err_fd is not None:
            with contextlib.suppress(OSError):
                os.write(self.err_fd, _ONE)

    def _run(self, stop: threading.Event) -> None:
        poller = select.poll()
        with self.lock:
            kick, wake = self.kick_fd, self._wake_r
        if kick is not None:
            poller.register(kick, select.POLLIN)
        poller.register(wake, select.POLLIN)
        while not stop.is_set():
            self._drain(stop)
            if stop.is_set():
                break  # the fds may be closed (and their numbers reused) from here on
            try:
                ready = poller.poll(_POLL_MS)
            except InterruptedError:
                continue
            if stop.is_set():
                break
            for fd, _ in ready:
                with contextlib.suppress(OSError):
                    os.read(fd, 4096 if fd == wake else 8)

    def _drain(self, stop: threading.Event) -> None:
        inline = self.conn.max_inflight == 1
        while not stop.is_set():
            if not inline:
                while not self._slots.acquire(timeout=0.2):
                    if stop.is_set():
                        return
            with self.lock:
                chain: Chain | None = None
                vq = self.vq
                # In flight (deferred ones too) never exceeds the queue size: a
                # guest that republishes heads still in flight cannot grow it.
                if vq is not None and self.enabled and not self.broken and self.inflight < vq.size:
                    try:
                        chain = vq.pop()
                        if chain is None and vq.arm_notification():
                            chain = vq.pop()
                    except RingError as e:
                        self._break_locked(str(e))
                if chain is None:
                    if not inline:
                        self._slots.release()
                    return
                self.inflight += 1
                generation = self.generation
            if inline:
                self._process(chain, generation)
            else:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(
                        self.conn.max_inflight, thread_name_prefix=f"vhost-user q{self.index}"
                    )
                self._pool.submit(self._process, chain, generation)

    def _process(self, chain: Chain, generation: int) -> None:
        writer = chain.writer
        writer.on_finish(lambda: self._finish(chain, generation))
        try:
            self.conn.handler.handle(chain.reader, writer)
        except Exception:
            log.exception("%s q%d: handler failed", self.conn.name, self.index)
            writer.deferred = False  # a failed handler's chain goes back now
        if not writer.deferred:
            writer.on_finish(None)
            self._finish(chain, generation)
        if self.conn.max_inflight > 1:
            self._slots.release()

    def _finish(self, chain: Chain, generation: int) -> None:
        """Return a chain to the guest: used element, used index, call eventfd."""
        written = chain.writer.written
        chain.release()  # the handler may not touch guest memory after this
        with self.lock:
            try:
                vq = self.vq
                if generation == self.generation and vq is not None and not self.broken:
                    vq.push(chain.head, written)
                    self.processed += 1
                    if vq.should_notify() and self.call_fd is not None:
                        with contextlib.suppress(OSError):
                            os.write(self.call_fd, _ONE)
            finally:
                self.inflight -= 1
                if self.inflight == 0:
                    self.idle.notify_all()
                if vq is not None and self.inflight == vq.size - 1:
                    self._wake_locked()  # the queue thread stopped popping at the cap


class _Connection:
    """One front end on one socket: its protocol state, memory and queues."""

    def __init__(self, sock: socket.socket, listener: VhostUserListener, name: str) -> None:
        self.sock = sock
        self.name = name
        self.max_inflight = listener.max_inflight
        self.stop_timeout = listener.stop_timeout
        self.require_sealed = listener.require_sealed
        self.state = BackendState(
            num_queues=listener.max_queues,
            max_queue_size=listener.max_queue_size,
            offer_mem_slots=listener.offer_mem_slots,
        )
        self.handler = listener.handler_factory()
        self.memory = GuestMemory()
        self.queues = [_Queue(self, i) for i in range(listener.max_queues)]

    # -- socket -------------------------------------------------------------------

    def _recv(self, n: int, fds: list[int], first: bool) -> bytes:
        buf = bytearray()
        anc = socket.CMSG_SPACE(_MAX_FDS * 4)
        while len(buf) < n:
            data, ancdata, flags, _ = self.sock.recvmsg(n - len(buf), anc, socket.MSG_CMSG_CLOEXEC)
            for level, kind, cdata in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    usable = len(cdata) - len(cdata) % 4
                    fds.extend(
                        int.from_bytes(cdata[i : i + 4], "little") for i in range(0, usable, 4)
                    )
            if flags & socket.MSG_CTRUNC:
                raise VhostUserError(f"more than {_MAX_FDS} fds with one message")
            if not data:
                if first and not buf:
                    raise EOFError
                raise VhostUserError(f"truncated message: {len(buf)} of {n} bytes, then EOF")
            if first and not buf:
                self.sock.settimeout(_MESSAGE_TIMEOUT)
            buf += data
        return bytes(buf)

    def serve(self) -> None:
        try:
            while True:
                fds: list[int] = []
                try:
                    self.sock.settimeout(None)
                    head = self._recv(HEADER_SIZE, fds, True)
                    header = parse_header(head)
                    payload = self._recv(header.size, fds, False) if header.size else b""
                    event = self.state.receive(header, payload, fds)
                except BaseException:
                    _close_fds(fds)
                    raise
                if log.isEnabledFor(logging.DEBUG):
                    log.debug(
                        "%s: %s %s %s", self.name, event.request.name, event.index, event.value
                    )
                reply = self.state.reply(event, self._apply(event))
                if reply:
                    self.sock.sendall(reply)
        except EOFError:
            log.info("%s: front end disconnected", self.name)
        except VhostUserError as e:
            log.warning("%s: closing: %s", self.name, e)
        except (TimeoutError, OSError) as e:
            log.info("%s: connection ended: %s", self.name, e)
        finally:
            self.close()

    # -- events -------------------------------------------------------------------

    def _apply(self, ev: Event) -> int:
        """Act on one validated event; returns GET_VRING_BASE's index."""
        req = ev.request
        try:
            if req in (Request.SET_VRING_KICK, Request.SET_VRING_CALL, Request.SET_VRING_ERR):
                for fd in ev.fds:
                    if not _is_eventfd(fd):
                        raise VhostUserError(f"{req.name} with an fd that is not an eventfd")
                    os.set_blocking(fd, False)
            if req == Request.SET_MEM_TABLE:
                specs = cast(tuple[MemoryRegionSpec, ...], ev.value)
                memory = GuestMemory.map(specs, ev.fds, require_sealed=self.require_sealed)
                self._set_memory(memory)
            elif req == Request.ADD_MEM_REG:
                spec = cast(MemoryRegionSpec, ev.value)
                region = map_region(spec, ev.fds[0], require_sealed=self.require_sealed)
                self._set_memory(self.memory.with_region(region), close_old=False)
            elif req == Request.REM_MEM_REG:
                new, gone = self.memory.without(cast(MemoryRegionSpec, ev.value))
                self._set_memory(new, close_old=False)
                if gone is not None:
                    close_region(gone)
            elif req == Request.SET_VRING_KICK:
                self.queues[ev.index].start(ev.fds[0])
                return 0  # the queue owns the fd now
            elif req == Request.SET_VRING_CALL:
                self.queues[ev.index].set_fd("call_fd", ev.fd)
                return 0
            elif req == Request.SET_VRING_ERR:
                self.queues[ev.index].set_fd("err_fd", ev.fd)
                return 0
            elif req == Request.SET_VRING_ENABLE:
                self.queues[ev.index].set_enabled(bool(ev.value))
            elif req == Request.GET_VRING_BASE:
                return self.queues[ev.index].stop()
            elif req in (Request.RESET_OWNER, Request.RESET_DEVICE):
                for q in self.queues:
                    q.stop()
        except MemoryMapError as e:
            _close_fds(ev.fds)
            raise VhostUserError(str(e)) from None
        except BaseException:
            _close_fds(ev.fds)
            raise
        # Memory fds are only needed to map: mmap holds its own reference.
        _close_fds(ev.fds)
        return 0

    def _set_memory(self, memory: GuestMemory, *, close_old: bool = True) -> None:
        old, self.memory = self.memory, memory
        for q in self.queues:
            q.remap(memory)
        if close_old:
            old.close()

    def close(self) -> None:
        for q in self.queues:
            q.close()
        self.memory.close()
        self.memory = GuestMemory()
        closer = getattr(self.handler, "close", None)
        if callable(closer):
            try:
                closer()
            except Exception:
                log.exception("%s: handler close failed", self.name)
        with contextlib.suppress(OSError):
            self.sock.close()


class VhostUserListener:
    """A vhost-user-fs device service on one Unix socket path.

    `handler_factory()` is called for each new front-end connection; the
    handler it returns serves that connection's chains and, if it has a
    `close()` method, is closed when the front end goes away.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        handler_factory: HandlerFactory,
        *,
        max_queues: int = 9,
        max_queue_size: int = 1024,
        max_inflight: int = 1,
        offer_mem_slots: bool = False,
        stop_timeout: float = 2.0,
        require_sealed: bool = False,
        handover_timeout: float = 2.0,
    ) -> None:
        if not 1 <= max_queues <= 64:
            raise ValueError("max_queues must be 1..64")
        if not 1 <= max_inflight <= 64:
            raise ValueError("max_inflight must be 1..64")
        self.path = os.fspath(path)
        self.handler_factory = handler_factory
        self.max_queues = max_queues
        self.max_queue_size = max_queue_size
        self.max_inflight = max_inflight
        self.offer_mem_slots = offer_mem_slots
        self.stop_timeout = stop_timeout
        self.require_sealed = require_sealed
        self.handover_timeout = handover_timeout
        self.connections = 0  # front ends served so far
        self.connection: _Connection | None = None
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._conn_thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = -1, -1

    def bind(self) -> None:
        """Make the listening socket (before the server's self-sandbox, which
        refuses new socket files); start() serves it."""
        if self._sock is not None:
            return
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(st.st_mode):
                raise OSError(errno.EEXIST, "exists and is not a socket", self.path)
            os.unlink(self.path)  # a stale socket from an earlier run
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.bind(self.path)
            sock.listen(4)
        except OSError:
            sock.close()
            raise
        self._sock = sock

    def start(self) -> None:
        self.bind()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC)
        self._thread = threading.Thread(
            target=self._accept_loop, name=f"vhost-user {self.path}", daemon=True
        )
        self._thread.start()

    def _accept_loop(self) -> None:
        assert self._sock is not None
        poller = select.poll()
        poller.register(self._sock, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while True:
            ready = {fd for fd, _ in poller.poll()}
            if self._wake_r in ready:
                return
            try:
                conn, _ = self._sock.accept()
            except OSError as e:
                log.warning("%s: accept: %s", self.path, e)
                time.sleep(0.1)  # EMFILE and the like: do not spin
                continue
            previous = self._conn_thread
            if previous is not None and previous.is_alive():
                # The last front end may be going away right now (a restarted
                # QEMU connects as the old one's teardown runs): give it a moment.
                previous.join(self.handover_timeout)
            with self._lock:
                busy = self._conn_thread is not None and self._conn_thread.is_alive()
                if busy:
                    log.warning("%s: a front end is already connected; refused another", self.path)
                    conn.close()
                    continue
                self.connections += 1
                try:
                    c = _Connection(conn, self, f"{self.path}#{self.connections}")
                except OSError as e:  # the handler factory refused it (a policy, a limit)
                    log.warning("%s: connection refused: %s", self.path, e.strerror or e)
                    conn.close()
                    continue
                except Exception:
                    log.exception("%s: cannot set up a connection", self.path)
                    conn.close()
                    continue
                self.connection = c
                self._conn_thread = threading.Thread(
                    target=self._serve, args=(c,), name=c.name, daemon=True
                )
                self._conn_thread.start()

    def _serve(self, c: _Connection) -> None:
        try:
            c.serve()
        finally:
            with self._lock:
                if self.connection is c:
                    self.connection = None

    def stop(self) -> None:
        if self._sock is None:
            return
        os.write(self._wake_w, b"\0")
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            c, t = self.connection, self._conn_thread
        if c is not None:
            with contextlib.suppress(OSError):
                c.sock.shutdown(socket.SHUT_RDWR)
        if t is not None:
            t.join()
        self._sock.close()
        self._sock = None
        _close_fds([self._wake_r, self._wake_w])
        with contextlib.suppress(OSError):
            os.unlink(self.path)

    def __enter__(self) -> VhostUserListener:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
