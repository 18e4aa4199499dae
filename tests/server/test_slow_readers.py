"""Clients that never read their replies: they must not hold the shared
worker pool, the server's memory for them stays bounded, and past the send
timeout they are closed and audited (issue 11, worker pool starvation)."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from p9share.client.raw import RawClient
from p9share.protocol import messages as m
from p9share.protocol.constants import DEFAULT_MAX_MSIZE
from p9share.server.limits import Limits
from p9share.server.transport import parse_address, peer_of

from ..conftest import LiveServer
from .test_limits import Audited

MSIZE = DEFAULT_MAX_MSIZE  # 1 MiB of data per read
CHUNK = MSIZE - 24
SLOW = 4  # as many as the pool has workers
WORKERS = 4


def slow_reader(live: LiveServer, path: str) -> RawClient:
    """A connection with a tiny receive buffer that asks for many large reads
    of `path` and never reads a reply."""
    host, port = live.tcp.removeprefix("tcp:").rsplit(":", 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    sock.settimeout(10)
    sock.connect((host, int(port)))
    c = RawClient(sock)
    c.version(MSIZE)
    c.attach(0, "")
    c.walk(0, 1, [path])
    c.rpc(m.Tlopen(1, os.O_RDONLY))
    for i in range(64):
        c.send(m.Tread(1, (i % 8) * CHUNK, CHUNK), tag=100 + i)
    return c


@contextmanager
def slow_readers(live: LiveServer, n: int) -> Iterator[list[RawClient]]:
    clients = [slow_reader(live, "big") for _ in range(n)]
    try:
        yield clients
    finally:  # their going away also frees a server that is stuck on them
        for c in clients:
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
            c.close()


def big_file(live: LiveServer) -> None:
    (live.root / "big").write_bytes(os.urandom(1024) * 8 * 1024)  # 8 MiB


def good_client_io(live: LiveServer) -> float:
    """Large reads, writes and fsyncs on another connection; the seconds they took."""
    c = live.client(msize=MSIZE)
    c.sock.settimeout(20)  # on the old code this is where the test fails
    start = time.monotonic()
    c.walk(0, 1, ["big"])
    c.rpc(m.Tlopen(1, os.O_RDONLY))
    c.walk(0, 2, [])
    c.rpc(m.Tlcreate(2, "out", os.O_RDWR, 0o644, 0))
    payload = b"x" * CHUNK
    for i in range(4):
        r = c.rpc(m.Tread(1, i * CHUNK, CHUNK))
        assert isinstance(r, m.Rread) and len(r.data) == CHUNK
        w = c.rpc(m.Twrite(2, i * CHUNK, payload))
        assert isinstance(w, m.Rwrite) and w.count == CHUNK
        assert isinstance(c.rpc(m.Tfsync(2, 0)), m.Rfsync)
    took = time.monotonic() - start
    c.close()
    return took


def test_readers_that_never_read_do_not_starve_the_pool(
    make_server: Callable[..., LiveServer],
) -> None:
    live = make_server(workers=WORKERS)
    big_file(live)
    with slow_readers(live, SLOW):
        time.sleep(1.0)  # let their reads reach the pool and fill their sockets
        took = good_client_io(live)
        assert took < 10, f"a good client's large I/O took {took:.1f} s"
        # what the server keeps for them is bounded: its queue budget (one
        # msize) plus what the workers had read when the budget filled
        with live.server._lock:
            conns = list(live.server._connections)
        for conn in conns:
            assert conn._out_bytes <= MSIZE + WORKERS * MSIZE
        # the slow ones are still connected (the send timeout is far off)
        assert live.server.connection_count() >= SLOW


def test_reader_that_never_reads_is_closed_after_send_timeout(
    make_server: Callable[..., LiveServer],
) -> None:
    audited = Audited()
    live = make_server(workers=WORKERS, limits=Limits(send_timeout=0.5), audit=audited.log)
    big_file(live)
    with slow_readers(live, 1) as (slow,):
        deadline = time.monotonic() + 15
        while live.server.connection_count() > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert live.server.connection_count() == 0
        slow.sock.settimeout(5)
        with pytest.raises((ConnectionResetError, ConnectionAbortedError, OSError)):
            while slow.sock.recv(1 << 20):  # what was sent, then the close
                pass
            raise ConnectionResetError
    assert good_client_io(live) < 10
    recs = audited.records("limit", limit="send_timeout")
    assert len(recs) == 1 and recs[0]["action"] == "closed"


def test_flushed_and_pooled_replies_still_arrive_in_order(live: LiveServer) -> None:
    """The output queue keeps the reply-before-Rflush order of a normal reader."""
    big_file(live)
    c = live.client(msize=MSIZE)
    c.walk(0, 1, ["big"])
    c.rpc(m.Tlopen(1, os.O_RDONLY))
    for i in range(8):
        c.send(m.Tread(1, i * CHUNK, CHUNK), tag=10 + i)
        c.send(m.Tflush(10 + i), tag=50 + i)
    seen: list[int] = []
    for _ in range(16):
        tag, r = c.recv()
        seen.append(tag)
        if tag < 50:
            assert isinstance(r, m.Rread) and len(r.data) == CHUNK
    for i in range(8):
        if 10 + i in seen:  # a flushed read that ran: its reply comes before its Rflush
            assert seen.index(10 + i) < seen.index(50 + i)
    assert sorted(t for t in seen if t >= 50) == list(range(50, 58))
    c.close()


def test_thousands_of_queued_small_replies_arrive_whole_and_in_order(
    live: LiveServer,
) -> None:
    """A reader that falls behind on small inline replies: they wait in the
    output queue (more buffers than one sendmsg may carry) and all arrive.
    Served over a socket pair with small buffers, so the queue surely grows."""
    mine, theirs = socket.socketpair()
    for s in (mine, theirs):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    live.server._start_connection(theirs, peer_of(theirs, parse_address("fd:0"), "pair"))
    mine.settimeout(20)
    c = RawClient(mine)
    c.version(MSIZE)
    c.attach(0, "")
    n = 5000
    frames = [m.Tgetattr(0, 0x7FF).encode(i) for i in range(n)]
    sender = threading.Thread(target=mine.sendall, args=(b"".join(frames),))
    sender.start()  # it blocks until the server reads on: while we do not read
    time.sleep(0.5)  # the server answers into a full socket meanwhile
    with live.server._lock:
        (conn,) = [k for k in live.server._connections if k.sock is theirs]
    assert len(conn._out) > 1024  # more than one sendmsg may carry
    for i in range(n):
        tag, r = c.recv()
        assert tag == i and isinstance(r, m.Rgetattr)
    sender.join()
    assert isinstance(c.rpc(m.Tgetattr(0, 0x7FF)), m.Rgetattr)
    c.close()
