"""The asyncio client against a scripted server on loopback: the test sees
every request and decides when and how each is answered."""

from __future__ import annotations

import asyncio
import errno
import time
from collections.abc import Awaitable, Callable

import pytest

from p9share.client.aio import Client, parse_client_address
from p9share.client.errors import ConnectionLost
from p9share.protocol import messages as m
from p9share.protocol.connection import Request, ServerConnection
from p9share.protocol.constants import NOFID
from p9share.protocol.wire import Qid

ROOT_QID = Qid(0x80, 0, 1)


class ScriptedServer:
    """One-connection 9P server whose replies the test writes by hand."""

    def __init__(self, version: str = "9P2000.L") -> None:
        self.version = version
        self.requests: asyncio.Queue[Request] = asyncio.Queue()
        self.conn = ServerConnection(max_msize=65536)
        self.writer: asyncio.StreamWriter | None = None
        self.address = ""

    async def start(self) -> ScriptedServer:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.address = f"tcp:127.0.0.1:{port}"
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        while data := await reader.read(65536):
            self.conn.receive_data(data)
            while (ev := self.conn.next_event()) is not None:
                assert isinstance(ev, Request), ev
                if isinstance(ev.msg, m.Tversion):
                    r = self.conn.version(ev.msg)
                    if self.version != "9P2000.L":
                        r = m.Rversion(r.msize, self.version)
                    self.reply(ev.tag, r)
                else:
                    self.requests.put_nowait(ev)

    async def next(self) -> Request:
        return await asyncio.wait_for(self.requests.get(), 5)

    def reply(self, tag: int, msg: m.Message) -> None:
        assert self.writer is not None
        self.writer.write(b"".join(self.conn.encode(tag, msg)))

    def send_raw(self, data: bytes) -> None:
        assert self.writer is not None
        self.writer.write(data)

    def drop(self) -> None:
        assert self.writer is not None
        self.writer.close()

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.server.close()
        await self.server.wait_closed()


def scripted(test: Callable[[ScriptedServer, Client], Awaitable[None]]) -> None:
    async def main() -> None:
        srv = await ScriptedServer().start()
        client = await Client.connect(srv.address, msize=65536, timeout=5)
        try:
            await asyncio.wait_for(test(srv, client), 10)
        finally:
            await client.close()
            await srv.close()

    asyncio.run(main())


def test_many_requests_in_flight_with_out_of_order_replies() -> None:
    async def body(srv: ScriptedServer, client: Client) -> None:
        reads = [asyncio.ensure_future(client.read(7, i * 10, 10)) for i in range(20)]
        got = [await srv.next() for _ in range(20)]
        assert len({r.tag for r in got}) == 20  # all in flight at once, distinct tags
        for r in reversed(got):  # answer last first
            assert isinstance(r.msg, m.Tread)
            client_data = f"off{r.msg.offset}".encode()
            srv.reply(r.tag, m.Rread(client_data))
        results = await asyncio.gather(*reads)
        assert results == [f"off{i * 10}".encode() for i in range(20)]
        assert client.tags_in_use == frozenset()

    scripted(body)


def test_cancel_sends_tflush_and_reuses_the_tag_only_after_rflush() -> None:
    async def body(srv: ScriptedServer, client: Client) -> None:
        slow = asyncio.ensure_future(client.read(7, 0, 10))
        req = await srv.next()
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        flush = await srv.next()
        assert isinstance(flush.msg, m.Tflush) and flush.msg.oldtag == req.tag
        assert {req.tag, flush.tag} <= client.tags_in_use
        # a request made while the flush is pending gets neither tag
        other = asyncio.ensure_future(client.getattr(0))
        r2 = await srv.next()
        assert r2.tag not in (req.tag, flush.tag)
        srv.reply(r2.tag, m.Rlerror(errno.EBADF))
        with pytest.raises(OSError) as e:
            await other
        assert e.value.errno == errno.EBADF
        # the late reply to the flushed request is ignored, then the Rflush frees both tags
        srv.reply(req.tag, m.Rread(b"late"))
        srv.reply(flush.tag, m.Rflush())
        for _ in range(50):
            if not client.tags_in_use:
                break
            await asyncio.sleep(0.01)
        assert client.tags_in_use == frozenset()
        again = asyncio.ensure_future(client.read(7, 0, 1))
        r3 = await srv.next()
        assert r3.tag == min(req.tag, flush.tag)  # the lowest free tag: reused now
        srv.reply(r3.tag, m.Rread(b"x"))
        assert await again == b"x"

    scripted(body)


def test_cancelled_walk_whose_reply_won_clunks_the_new_fid() -> None:
    async def body(srv: ScriptedServer, client: Client) -> None:
        walk = asyncio.ensure_future(client.walk(0, ["a"]))
        req = await srv.next()
        assert isinstance(req.msg, m.Twalk)
        newfid = req.msg.newfid
        walk.cancel()
        flush = await srv.next()
        assert isinstance(flush.msg, m.Tflush)
        srv.reply(req.tag, m.Rwalk([Qid(0, 0, 5)]))  # the server did walk: the fid exists
        srv.reply(flush.tag, m.Rflush())
        clunk = await srv.next()
        assert isinstance(clunk.msg, m.Tclunk) and clunk.msg.fid == newfid
        srv.reply(clunk.tag, m.Rclunk())
        for _ in range(50):
            if not len(client.fids):
                break
            await asyncio.sleep(0.01)
        assert len(client.fids) == 0

    scripted(body)


def test_cancelled_walk_flushed_first_frees_the_fid_number() -> None:
    async def body(srv: ScriptedServer, client: Client) -> None:
        walk = asyncio.ensure_future(client.walk(0, ["a"]))
        req = await srv.next()
        walk.cancel()
        flush = await srv.next()
        srv.reply(flush.tag, m.Rflush())  # no reply to the walk: it never happened
        for _ in range(50):
            if not client.tags_in_use:
                break
            await asyncio.sleep(0.01)
        assert len(client.fids) == 0
        assert isinstance(req.msg, m.Twalk)
        nxt = asyncio.ensure_future(client.walk(0, []))
        r = await srv.next()
        assert isinstance(r.msg, m.Twalk) and r.msg.newfid == req.msg.newfid  # number reused
        srv.reply(r.tag, m.Rwalk([]))
        assert (await nxt)[0] == req.msg.newfid

    scripted(body)


def test_connection_loss_fails_pending_and_later_requests() -> None:
    async def body(srv: ScriptedServer, client: Client) -> None:
        pending = [asyncio.ensure_future(client.read(1, 0, 1)) for _ in range(3)]
        for _ in range(3):
            await srv.next()
        srv.drop()
        for p in pending:
            with pytest.raises(ConnectionLost, match="lost: server closed the connection"):
                await p
        with pytest.raises(ConnectionLost):
            await client.read(1, 0, 1)
        assert client.closed

    scripted(body)


def test_unframeable_reply_kills_the_connection_clearly() -> None:
    async def body(srv: ScriptedServer, client: Client) -> None:
        p = asyncio.ensure_future(client.read(1, 0, 1))
        await srv.next()
        srv.send_raw(b"\xff\xff\xff\x7f" + b"\x00" * 10)  # size far beyond msize
        with pytest.raises(ConnectionLost, match="frame of size"):
            await p

    scripted(body)


def test_malformed_reply_body_fails_only_its_request() -> None:
    # a well-framed reply whose Rread count overruns the frame
    async def body2(srv: ScriptedServer, client: Client) -> None:
        p = asyncio.ensure_future(client.read(1, 0, 1))
        req = await srv.next()
        frame = bytearray(m.Rread(b"abc").encode(req.tag))
        frame[7:11] = (99).to_bytes(4, "little")  # count 99, only 3 bytes follow
        srv.send_raw(bytes(frame))
        with pytest.raises(OSError) as e:
            await p
        assert e.value.errno == errno.EPROTO
        q = asyncio.ensure_future(client.getattr(0))
        r = await srv.next()
        srv.reply(r.tag, m.Rlerror(errno.ENOENT))
        with pytest.raises(FileNotFoundError):
            await q

    scripted(body2)


def test_error_replies_are_oserror_subclasses() -> None:
    async def body(srv: ScriptedServer, client: Client) -> None:
        cases = {errno.ENOENT: FileNotFoundError, errno.EACCES: PermissionError,
                 errno.EEXIST: FileExistsError, errno.ENOTDIR: NotADirectoryError,
                 errno.EISDIR: IsADirectoryError, errno.EIO: OSError}  # fmt: skip
        for err, cls in cases.items():
            p = asyncio.ensure_future(client.mkdir(0, "x", 0o755, 0))
            r = await srv.next()
            srv.reply(r.tag, m.Rlerror(err))
            with pytest.raises(cls) as e:
                await p
            assert e.value.errno == err

    scripted(body)


def test_server_without_9p2000l_is_refused() -> None:
    async def main() -> None:
        srv = ScriptedServer(version="unknown")
        await srv.start()
        with pytest.raises(ConnectionError, match=r"does not speak 9P2000\.L"):
            await Client.connect(srv.address, timeout=5)
        await srv.close()

    asyncio.run(main())


@pytest.mark.parametrize("addr", ["", "tcp:", "tcp:host", "tcp:host:x", "tcp::1", "unix:",
                                  "udp:1.2.3.4:5", "tcp:h:70000"])  # fmt: skip
def test_bad_addresses(addr: str) -> None:
    with pytest.raises(ValueError, match="bad address"):
        parse_client_address(addr)


def test_attach_sends_the_user_and_nofid() -> None:
    async def body(srv: ScriptedServer, client: Client) -> None:
        p = asyncio.ensure_future(client.attach("exp", "alice", 1000))
        r = await srv.next()
        assert isinstance(r.msg, m.Tattach)
        assert (r.msg.afid, r.msg.uname, r.msg.aname, r.msg.n_uname) == (
            NOFID, "alice", "exp", 1000)  # fmt: skip
        srv.reply(r.tag, m.Rattach(ROOT_QID))
        fid, qid = await p
        assert qid == ROOT_QID and fid == r.msg.fid

    scripted(body)


def test_blocking_call_timeout_flushes_the_request() -> None:
    """The blocking API's timeout cancels the call on the client loop: a
    Tflush goes out for the request the server never answered."""
    from p9share.client.sync import FS, LoopThread

    server_loop = LoopThread("scripted-server")
    srv = server_loop.run(ScriptedServer().start())

    async def answer_attach() -> None:
        r = await srv.next()
        assert isinstance(r.msg, m.Tattach)
        srv.reply(r.tag, m.Rattach(ROOT_QID))

    attach = asyncio.run_coroutine_threadsafe(answer_attach(), server_loop.loop)
    fs = FS.connect(srv.address, timeout=5)
    attach.result(5)
    fs.timeout = 0.2
    try:
        with pytest.raises(TimeoutError):
            fs.stat("/")  # a Twalk the server never answers
        walk = server_loop.run(srv.next())
        flush = server_loop.run(srv.next())
        assert isinstance(walk.msg, m.Twalk)
        assert isinstance(flush.msg, m.Tflush) and flush.msg.oldtag == walk.tag
        server_loop.loop.call_soon_threadsafe(srv.reply, flush.tag, m.Rflush())
        server_loop.loop.call_soon_threadsafe(srv.drop)  # close() has nothing left to clunk
        for _ in range(100):
            if fs.aio.client.closed:
                break
            time.sleep(0.01)
        assert fs.aio.client.closed
    finally:
        fs.close()
        server_loop.run(srv.close())
        server_loop.stop()
