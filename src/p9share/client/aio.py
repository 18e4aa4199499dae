"""An asyncio 9P2000.L client: one connection, many requests in flight.

Every request gets a tag from the sans-IO ClientConnection; a reader task
matches replies to their futures by tag, so replies may come in any order.
Cancelling a request (task.cancel(), asyncio.wait_for) sends a Tflush; the
tag is reused only after the Rflush. A fid the cancelled request may have
created on the server (Twalk, Txattrwalk, Tattach) is clunked if the server
did create it. Losing the connection fails every pending request with
ConnectionLost.

The server is not trusted: every request has a timeout (Client.timeout,
30 s by default, checked every timeout/4 and at least every second;
TimeoutError with errno ETIMEDOUT, and the request is flushed), a Tflush
that is not answered within the same time, or a server that reads nothing
for twice the timeout, closes the connection, and a reply that cannot be true (more bytes than asked for, more
qids than names, a directory entry that is not one name, an error number out
of range) is an EPROTO or EIO OSError, never a hang or another exception.

Methods map one-to-one onto the 9P2000.L messages; fids are allocated here
(lowest free number first) and freed by clunk/remove. fs.py builds the
path-level API on top.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import getpass
import heapq
import os
import socket
import ssl
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ..protocol import messages as m
from ..protocol.client import ClientConnection, Reply, StreamError
from ..protocol.constants import IOHDRSZ, MAXWELEM, NOFID, Dialect
from ..protocol.wire import Qid
from ..security.auth import ClientAuth, Key, load_key
from .errors import ConnectionLost, protocol_error, remote_error, reply_error

DEFAULT_MSIZE = 1024 * 1024 + IOHDRSZ
DEFAULT_TIMEOUT = 30.0  # seconds for the handshake and for each request
PIPELINE = 8  # chunk requests in flight for one big read or write
MAX_IN_FLIGHT = 1024
XATTR_SIZE_MAX = 65536  # Linux's limit for one value, and for a name list

R = TypeVar("R", bound=m.Message)
T = TypeVar("T")


class FidPool:
    """Fid numbers, the lowest free one first (0 .. NOFID-1)."""

    def __init__(self) -> None:
        self._next = 0
        self._free: list[int] = []
        self._used: set[int] = set()

    def alloc(self) -> int:
        fid = heapq.heappop(self._free) if self._free else self._next
        if fid == self._next:
            if fid >= NOFID:
                raise OSError(errno.EMFILE, "no fid numbers left")
            self._next += 1
        self._used.add(fid)
        return fid

    def release(self, fid: int) -> None:
        if fid in self._used:
            self._used.discard(fid)
            heapq.heappush(self._free, fid)

    def __len__(self) -> int:
        return len(self._used)


@dataclass(slots=True)
class _Orphan:
    """A cancelled request whose Tflush is in flight."""

    msg: m.Message
    newfid: int | None


def parse_client_address(address: str) -> tuple[str, str, int]:
    """(kind, host_or_path, port) of tcp:HOST:PORT, tls:HOST:PORT or unix:PATH."""
    kind, sep, rest = address.partition(":")
    if sep and kind == "unix" and rest:
        return kind, rest, 0
    if sep and kind in ("tcp", "tls"):
        host, _, port = rest.rpartition(":")
        host = host.strip("[]")
        if host and port.isdigit() and 0 < int(port) < 65536:
            return kind, host, int(port)
    raise ValueError(f"bad address {address!r}: expected tcp:HOST:PORT, tls:HOST:PORT or unix:PATH")


def _tls_context(ca: str | None, cert: str | None, key: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca)
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


class Client:
    """One 9P2000.L connection. Create with ``await Client.connect(address)``."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        conn: ClientConnection,
        address: str,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> None:
        self.address = address
        self.timeout = timeout  # per request; None waits for ever
        self._reader = reader
        self._writer = writer
        self._conn = conn
        self.fids = FidPool()
        self._pending: dict[int, asyncio.Future[m.Message]] = {}
        self._orphans: dict[int, _Orphan] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._error: ConnectionLost | None = None
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        # Request timeouts: a send time per tag and one watchdog per connection
        # (a timer per request costs 10-25 us, a dict entry under 1 us).
        self._sent_at: dict[int, float] = {}
        self._expired: set[int] = set()
        loop = asyncio.get_running_loop()
        self._reader_task = loop.create_task(self._read_loop())
        self._watchdog = loop.create_task(self._watch())

    @classmethod
    async def connect(
        cls,
        address: str,
        *,
        msize: int = DEFAULT_MSIZE,
        timeout: float | None = DEFAULT_TIMEOUT,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
    ) -> Client:
        """Connect and negotiate 9P2000.L (Tversion) within timeout seconds;
        timeout is then each request's (the timeout attribute, None: no limit)."""
        kind, host, port = parse_client_address(address)

        async def handshake() -> Client:
            if kind == "unix":
                reader, writer = await asyncio.open_unix_connection(host)
            else:
                ctx = _tls_context(tls_ca, tls_cert, tls_key) if kind == "tls" else None
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=ctx, server_hostname=host if ctx else None
                )
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                conn = ClientConnection(msize, Dialect.P9P2000L)
                writer.write(conn.version_request())
                await writer.drain()
                while True:
                    ev = conn.next_reply()
                    if isinstance(ev, StreamError):
                        raise ConnectionError(ev.reason)
                    if isinstance(ev, Reply):
                        if ev.msg is None:
                            raise ConnectionError(ev.error)
                        err = reply_error(ev.msg)
                        if err is not None:
                            raise ConnectionError(f"server refused Tversion: {err.strerror}")
                        conn.accept_version(ev.msg)
                        return cls(reader, writer, conn, address, timeout)
                    data = await reader.read(65536)
                    if not data:
                        raise ConnectionError("server closed the connection during Tversion")
                    conn.receive_data(data)
            except BaseException:
                writer.close()
                raise

        return await asyncio.wait_for(handshake(), timeout)

    # ------------------------------------------------------------ state --
    @property
    def msize(self) -> int:
        return self._conn.msize

    @property
    def iosize(self) -> int:
        """The largest read or write payload one message carries."""
        return self._conn.msize - IOHDRSZ

    @property
    def tags_in_use(self) -> frozenset[int]:
        return self._conn.tags_in_use

    @property
    def closed(self) -> bool:
        return self._error is not None

    async def close(self) -> None:
        if self._error is None:
            self._fail(ConnectionLost(f"connection to {self.address} was closed by the client"))
        self._reader_task.cancel()
        self._watchdog.cancel()
        background = list(self._background)
        for t in background:
            t.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()
        with contextlib.suppress(BaseException):
            await self._reader_task
        with contextlib.suppress(BaseException):
            await self._watchdog

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ----------------------------------------------------------- engine --
    async def _read_loop(self) -> None:
        try:
            while True:
                data = await self._reader.read(1 << 20)
                if not data:
                    raise ConnectionLost("server closed the connection")
                self._conn.receive_data(data)
                while (ev := self._conn.next_reply()) is not None:
                    if isinstance(ev, StreamError):
                        raise ConnectionLost(ev.reason)
                    self._dispatch(ev)
        except (OSError, EOFError) as e:  # ConnectionLost is an OSError too
            reason = str(e) or type(e).__name__
            self._fail(ConnectionLost(f"connection to {self.address} lost: {reason}"))

    def _fail(self, err: ConnectionLost) -> None:
        if self._error is None:
            self._error = err
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(ConnectionLost(str(err)))
        self._orphans.clear()
        with contextlib.suppress(Exception):
            self._writer.transport.abort()  # unblocks a drain() on a server that stopped reading

    async def _watch(self) -> None:
        """Every min(timeout / 4, 1 s): cancel the futures of requests older
        than the timeout (rpc turns that into TimeoutError and a Tflush). A
        request still not past its send after twice the timeout means the
        server has stopped reading: the connection is closed."""
        loop = asyncio.get_running_loop()
        while self._error is None:
            timeout = self.timeout
            await asyncio.sleep(1.0 if timeout is None else min(timeout / 4, 1.0))
            timeout = self.timeout
            if timeout is None:
                continue
            now = loop.time()
            for tag, sent in list(self._sent_at.items()):
                if tag not in self._expired and now - sent >= timeout:
                    self._expired.add(tag)
                    fut = self._pending.get(tag)
                    if fut is not None and not fut.done():
                        fut.cancel()
                elif now - sent >= 2 * timeout:
                    self._fail(ConnectionLost(
                        f"{self.address} has not read a request for {2 * timeout} s; "
                        "connection closed"
                    ))  # fmt: skip
                    return

    def _dispatch(self, ev: Reply) -> None:
        fut = self._pending.pop(ev.tag, None)
        if fut is not None:
            if fut.done():
                return
            if ev.msg is None:
                fut.set_exception(OSError(errno.EPROTO, ev.error))
            else:
                fut.set_result(ev.msg)
            return
        orphan = self._orphans.pop(ev.tag, None)
        if orphan is not None and ev.msg is not None:
            self._adopt(orphan, ev.msg)
        # Anything else is a reply to no request: ignored, as Linux does.

    def _adopt(self, orphan: _Orphan, reply: m.Message) -> None:
        """The reply to a flushed request came first: undo a fid it created
        (or free the number of the fid it clunked)."""
        if isinstance(orphan.msg, m.Tclunk):
            self.fids.release(orphan.msg.fid)
            return
        if orphan.newfid is None:
            return
        if _created_fid(orphan.msg, reply):
            self.clunk_soon(orphan.newfid)
        else:
            self.fids.release(orphan.newfid)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _check_open(self) -> None:
        if self._error is not None:
            raise ConnectionLost(str(self._error))

    def _send(self, tag: int, msg: m.Message) -> None:
        self._writer.write(self._conn.encode(tag, msg))

    async def rpc(self, msg: m.Message, *, newfid: int | None = None) -> m.Message:
        """Send msg and await its reply; an error reply raises the matching
        OSError. newfid: a fid this request creates, freed if it fails."""
        self._check_open()
        async with self._slots:
            self._check_open()
            tag = self._conn.alloc_tag()
            fut: asyncio.Future[m.Message] = asyncio.get_running_loop().create_future()
            self._pending[tag] = fut
            self._sent_at[tag] = asyncio.get_running_loop().time()
            try:
                self._send(tag, msg)
                await self._writer.drain()
                if self._error is not None:  # closed while we waited to send
                    raise ConnectionLost(str(self._error))
                reply = await fut
            except asyncio.CancelledError:
                self._cancelled(tag, fut, msg, newfid)
                task = asyncio.current_task()
                if tag in self._expired and task is not None and not task.cancelling():
                    raise TimeoutError(  # the watchdog's doing, not the caller's
                        errno.ETIMEDOUT, f"no reply to {type(msg).__name__} from "
                        f"{self.address} within {self.timeout} s",
                    ) from None  # fmt: skip
                raise
            except BaseException as e:
                self._pending.pop(tag, None)
                self._conn.release_tag(tag)
                if newfid is not None:
                    self.fids.release(newfid)
                if isinstance(e, OSError) and self._error is not None:
                    raise ConnectionLost(str(self._error)) from None  # e.g. aborted in drain()
                raise
            finally:
                self._sent_at.pop(tag, None)
                self._expired.discard(tag)
        self._conn.release_tag(tag)
        err = reply_error(reply)
        if err is not None:
            if newfid is not None:
                self.fids.release(newfid)
            raise err
        return reply

    def _cancelled(
        self, tag: int, fut: asyncio.Future[m.Message], msg: m.Message, newfid: int | None
    ) -> None:
        self._pending.pop(tag, None)
        if fut.done() and not fut.cancelled() and fut.exception() is None:
            self._conn.release_tag(tag)  # the reply beat the cancellation
            if newfid is not None or isinstance(msg, m.Tclunk):
                self._adopt(_Orphan(msg, newfid), fut.result())
            return
        if self._error is not None:
            self._conn.release_tag(tag)
            if newfid is not None:
                self.fids.release(newfid)
            return
        self._orphans[tag] = _Orphan(msg, newfid)
        self._spawn(self._flush(tag))

    async def _flush(self, oldtag: int) -> None:
        ftag = self._conn.start_flush(oldtag)
        fut: asyncio.Future[m.Message] = asyncio.get_running_loop().create_future()
        self._pending[ftag] = fut
        timeout = self.timeout
        try:
            self._send(ftag, m.Tflush(oldtag))
            await asyncio.wait_for(fut, timeout)  # Rflush (any reply ends the flush)
        except (OSError, asyncio.CancelledError) as e:
            if isinstance(e, TimeoutError) and self._error is None:
                # Without the Rflush neither tag may be reused, and the server
                # is not answering: a connection we cannot trust any more.
                self._fail(ConnectionLost(
                    f"{self.address} did not answer a Tflush within {timeout} s; "
                    "connection closed"
                ))  # fmt: skip
            if self._error is not None:
                self._conn.finish_flush(ftag)  # no reply can come: both tags are free
            return
        self._conn.finish_flush(ftag)
        orphan = self._orphans.pop(oldtag, None)
        if orphan is not None and orphan.newfid is not None:
            self.fids.release(orphan.newfid)  # flushed before it ran: no fid made

    async def _call(self, msg: m.Message, rtype: type[R], newfid: int | None = None) -> R:
        reply = await self.rpc(msg, newfid=newfid)
        if not isinstance(reply, rtype):
            if newfid is not None:
                self.clunk_soon(newfid)  # whether the server made it is unknown
            raise protocol_error(
                f"{type(reply).__name__} in answer to {type(msg).__name__}"
            )  # fmt: skip
        return reply

    # --------------------------------------------------------- sessions --
    async def auth(self, uname: str, aname: str, n_uname: int) -> tuple[int, Qid]:
        afid = self.fids.alloc()
        r = await self._call(m.Tauth(afid, uname, aname, n_uname), m.Rauth, newfid=afid)
        return afid, r.aqid

    async def authenticate(self, key: Key, uname: str, aname: str, n_uname: int) -> int:
        """Tauth and the p9share-hmac-sha256-v1 exchange (docs/protocol.md
        §11); the server's proof is checked. Returns the afid for Tattach."""
        afid, _ = await self.auth(uname, aname, n_uname)
        try:
            client = ClientAuth(key, uname, aname, n_uname)
            challenge = await self.read(afid, 0, 256)
            await self.write(afid, 0, client.response(challenge))
            client.verify_proof(await self.read(afid, 0, 256))
        except BaseException:
            await self.clunk(afid)
            raise
        return afid

    async def attach(
        self,
        aname: str = "",
        uname: str | None = None,
        n_uname: int | None = None,
        *,
        key: Key | str | os.PathLike[str] | None = None,
    ) -> tuple[int, Qid]:
        """Attach to aname (authenticating with key first, when given); the
        user defaults to this process's. Returns (fid, qid) of the root."""
        uname = getpass.getuser() if uname is None else uname
        n_uname = os.getuid() if n_uname is None else n_uname
        afid = NOFID
        if key is not None:
            k = key if isinstance(key, Key) else load_key(key)
            afid = await self.authenticate(k, uname, aname, n_uname)
        fid = self.fids.alloc()
        try:
            r = await self._call(m.Tattach(fid, afid, uname, aname, n_uname), m.Rattach, fid)
        finally:
            if afid != NOFID:
                await self.clunk(afid)
        return fid, r.qid

    # ------------------------------------------------------------- fids --
    async def walk(self, fid: int, names: Sequence[str]) -> tuple[int, list[Qid]]:
        """A new fid for fid/names (a clone when names is empty). A walk that
        stops early raises ENOENT (or the server's error)."""
        names = list(names)
        newfid = self.fids.alloc()
        first = names[:MAXWELEM]
        r = await self._call(m.Twalk(fid, newfid, first), m.Rwalk, newfid)
        qids = list(r.qids)
        if len(qids) > len(first):
            self.clunk_soon(newfid)  # whether the server made it is unknown
            raise protocol_error(f"Rwalk with {len(qids)} qids for {len(first)} names")
        if len(qids) < len(first):
            self.fids.release(newfid)  # a partial walk makes no fid
            raise remote_error(errno.ENOENT)
        try:
            rest = names[MAXWELEM:]
            while rest:
                part, rest = rest[:MAXWELEM], rest[MAXWELEM:]
                r = await self._call(m.Twalk(newfid, newfid, part), m.Rwalk)
                if len(r.qids) > len(part):
                    raise protocol_error(f"Rwalk with {len(r.qids)} qids for {len(part)} names")
                if len(r.qids) < len(part):
                    raise remote_error(errno.ENOENT)
                qids += r.qids
        except BaseException:
            await self.clunk(newfid)
            raise
        return newfid, qids

    async def clunk(self, fid: int) -> None:
        """Clunk fid; its number is free afterwards even if the server errs.
        Not interrupted by cancellation (it is quick, and a half-clunked fid
        would leak on the server). A Tclunk that timed out keeps its number
        until the server's late reply says it is done; flushed before it ran,
        the fid lives on in the server and its number is never reused."""
        release = True
        try:
            await asyncio.shield(self._call(m.Tclunk(fid), m.Rclunk))
        except ConnectionLost:
            pass
        except TimeoutError:
            release = False  # the flushed request's outcome decides (_adopt)
            raise
        finally:
            if release:
                self.fids.release(fid)

    async def quiesce(self) -> None:
        """Wait for background work (clunk_soon, flushes) to finish."""
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    def clunk_soon(self, fid: int) -> None:
        """Clunk fid without waiting for the reply (for fids only walked to
        look at something): saves a round trip; the number is reused only
        after the Rclunk."""
        if self._error is not None:
            self.fids.release(fid)
            return
        self._spawn(self._quiet_clunk(fid))

    async def _quiet_clunk(self, fid: int) -> None:
        try:
            await self.clunk(fid)
        except OSError:
            pass  # the server refused to clunk a fid it has: nothing we can do

    async def remove(self, fid: int) -> None:
        """Tremove: remove the file and clunk fid (freed either way)."""
        try:
            await self._call(m.Tremove(fid), m.Rremove)
        finally:
            self.fids.release(fid)

    # ------------------------------------------------------------- .L ops --
    async def statfs(self, fid: int) -> m.Rstatfs:
        return await self._call(m.Tstatfs(fid), m.Rstatfs)

    async def lopen(self, fid: int, flags: int) -> tuple[Qid, int]:
        r = await self._call(m.Tlopen(fid, flags), m.Rlopen)
        return r.qid, r.iounit

    async def lcreate(
        self, fid: int, name: str, flags: int, mode: int, gid: int
    ) -> tuple[Qid, int]:
        r = await self._call(m.Tlcreate(fid, name, flags, mode, gid), m.Rlcreate)
        return r.qid, r.iounit

    async def symlink(self, dfid: int, name: str, target: str, gid: int) -> Qid:
        return (await self._call(m.Tsymlink(dfid, name, target, gid), m.Rsymlink)).qid

    async def mknod(self, dfid: int, name: str, mode: int, major: int, minor: int, gid: int) -> Qid:
        return (await self._call(m.Tmknod(dfid, name, mode, major, minor, gid), m.Rmknod)).qid

    async def rename(self, fid: int, dfid: int, name: str) -> None:
        await self._call(m.Trename(fid, dfid, name), m.Rrename)

    async def readlink(self, fid: int) -> str:
        return (await self._call(m.Treadlink(fid), m.Rreadlink)).target

    async def getattr(self, fid: int, mask: int = 0x3FFF) -> m.Rgetattr:
        return await self._call(m.Tgetattr(fid, mask), m.Rgetattr)

    async def setattr(
        self,
        fid: int,
        valid: int,
        *,
        mode: int = 0,
        uid: int = 0,
        gid: int = 0,
        size: int = 0,
        atime_ns: int = 0,
        mtime_ns: int = 0,
    ) -> None:
        a_s, a_ns = divmod(atime_ns, 10**9)
        m_s, m_ns = divmod(mtime_ns, 10**9)
        msg = m.Tsetattr(fid, valid, mode, uid, gid, size, a_s, a_ns, m_s, m_ns)
        await self._call(msg, m.Rsetattr)

    async def xattrwalk(self, fid: int, name: str) -> tuple[int, int]:
        """(newfid, size) for reading attribute name ('' lists the names)."""
        newfid = self.fids.alloc()
        r = await self._call(m.Txattrwalk(fid, newfid, name), m.Rxattrwalk, newfid)
        return newfid, r.size

    async def read_xattr(self, fid: int, name: str) -> bytes:
        """The value of attribute name of fid ('' lists the names, NUL-
        separated). A size above XATTR_SIZE_MAX is E2BIG: nothing is read."""
        xfid, size = await self.xattrwalk(fid, name)
        try:
            if size > XATTR_SIZE_MAX:
                raise remote_error(
                    errno.E2BIG, text=f"server says the attribute has {size} bytes "
                    f"(more than {XATTR_SIZE_MAX})",
                )  # fmt: skip
            return await self.pread(xfid, 0, size) if size else b""
        finally:
            self.clunk_soon(xfid)

    async def xattrcreate(self, fid: int, name: str, size: int, flags: int) -> None:
        await self._call(m.Txattrcreate(fid, name, size, flags), m.Rxattrcreate)

    async def readdir(self, fid: int, offset: int, count: int | None = None) -> list[m.Dirent]:
        """Entries after cookie offset. Every name is one path component
        (or "." / ".."); anything else is EPROTO."""
        count = self.iosize if count is None else min(count, self.iosize)
        r = await self._call(m.Treaddir(fid, offset, count), m.Rreaddir)
        if len(r.data) > count:
            raise protocol_error(f"Rreaddir of {len(r.data)} bytes for a count of {count}")
        try:
            entries = m.decode_dirents(r.data)
        except Exception as e:  # ProtocolError: the server sent garbage
            raise protocol_error(f"malformed Rreaddir: {e}") from None
        for d in entries:
            if not d.name or "/" in d.name:
                raise protocol_error(f"directory entry name {d.name!r}")
        return entries

    async def fsync(self, fid: int, datasync: bool = False) -> None:
        await self._call(m.Tfsync(fid, int(datasync)), m.Rfsync)

    async def lock(
        self,
        fid: int,
        type: int,
        flags: int,
        start: int,
        length: int,
        proc_id: int,
        client_id: str,
    ) -> int:
        """Tlock; returns the status (LOCK_SUCCESS, LOCK_BLOCKED, ...)."""
        msg = m.Tlock(fid, type, flags, start, length, proc_id, client_id)
        return (await self._call(msg, m.Rlock)).status

    async def getlock(
        self, fid: int, type: int, start: int, length: int, proc_id: int, client_id: str
    ) -> m.Rgetlock:
        return await self._call(m.Tgetlock(fid, type, start, length, proc_id, client_id),
                                m.Rgetlock)  # fmt: skip

    async def link(self, dfid: int, fid: int, name: str) -> None:
        await self._call(m.Tlink(dfid, fid, name), m.Rlink)

    async def mkdir(self, dfid: int, name: str, mode: int, gid: int) -> Qid:
        return (await self._call(m.Tmkdir(dfid, name, mode, gid), m.Rmkdir)).qid

    async def renameat(self, olddirfid: int, oldname: str, newdirfid: int, newname: str) -> None:
        await self._call(m.Trenameat(olddirfid, oldname, newdirfid, newname), m.Rrenameat)

    async def unlinkat(self, dirfid: int, name: str, flags: int = 0) -> None:
        await self._call(m.Tunlinkat(dirfid, name, flags), m.Runlinkat)

    # -------------------------------------------------------------- I/O --
    async def read(self, fid: int, offset: int, count: int) -> bytes:
        """One Tread (count is capped to what fits a message)."""
        count = min(count, self.iosize)
        r = await self._call(m.Tread(fid, offset, count), m.Rread)
        if len(r.data) > count:
            raise protocol_error(f"Rread of {len(r.data)} bytes for a count of {count}")
        return bytes(r.data)

    async def write(self, fid: int, offset: int, data: bytes | memoryview) -> int:
        """One Twrite of at most iosize bytes; returns the count written."""
        part = data[: self.iosize]
        r = await self._call(m.Twrite(fid, offset, part), m.Rwrite)
        if r.count > len(part):
            raise protocol_error(f"Rwrite counts {r.count} bytes of the {len(part)} sent")
        return r.count

    async def pread(self, fid: int, offset: int, size: int, iounit: int = 0) -> bytes:
        """Up to size bytes at offset, in chunks with several in flight;
        shorter only at end of file."""
        chunk = _chunk_size(self.iosize, iounit)
        out: list[bytes] = []
        while size > 0:
            batch = []
            for i in range(PIPELINE):
                n = min(chunk, size - i * chunk)
                if n <= 0:
                    break
                batch.append(self.read(fid, offset + i * chunk, n))
            parts = await _gather(batch)
            for i, part in enumerate(parts):
                out.append(part)
                expected = min(chunk, size - i * chunk)
                if len(part) < expected:
                    return b"".join(out)
            got = sum(len(p) for p in parts)
            offset += got
            size -= got
        return b"".join(out)

    async def pwrite(self, fid: int, offset: int, data: bytes | memoryview, iounit: int = 0) -> int:
        """Write all of data at offset, in chunks with several in flight.
        Returns the bytes written (less only if the server wrote short)."""
        chunk = _chunk_size(self.iosize, iounit)
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            starts = [done + i * chunk for i in range(PIPELINE) if done + i * chunk < len(view)]
            counts = await _gather(
                [self.write(fid, offset + s, view[s : s + chunk]) for s in starts]
            )
            for s, n in zip(starts, counts, strict=True):
                done = s + n
                if n < len(view[s : s + chunk]):
                    return done
        return done


def _chunk_size(iosize: int, iounit: int) -> int:
    return min(iosize, iounit) if iounit > 0 else iosize


async def _gather(coros: Sequence[Coroutine[Any, Any, T]]) -> list[T]:
    """All results in order; on the first failure the rest are cancelled
    (each cancellation flushes its request) before the error propagates."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _created_fid(msg: m.Message, reply: m.Message) -> bool:
    """Whether the server made msg's new fid (so it must be clunked)."""
    if isinstance(msg, m.Twalk):
        return isinstance(reply, m.Rwalk) and len(reply.qids) == len(msg.wnames)
    return isinstance(reply, m.Rattach | m.Rxattrwalk | m.Rauth)
