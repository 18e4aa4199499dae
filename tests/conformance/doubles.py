"""Test doubles for the conformance suite: a live p9share behind a proxy that
breaks one rule of docs/protocol.md, built on the project's codec. The suite
must fail each of them; a suite that lets one through has a hole."""

from __future__ import annotations

import errno
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from p9share.protocol import messages as m
from p9share.protocol.connection import parse_version
from p9share.protocol.constants import NOTAG, Dialect, MsgType
from p9share.protocol.wire import HEADER, U16, U32


def _recv_frame(sock: socket.socket) -> bytes | None:
    """One whole frame, or None at the end of the stream."""
    buf = b""
    while len(buf) < 4:
        chunk = sock.recv(4 - len(buf))
        if not chunk:
            return None
        buf += chunk
    (size,) = U32.unpack(buf)
    while len(buf) < size:
        chunk = sock.recv(size - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


class Proxy:
    """Forwards every frame between a client and the server at `upstream`
    (tcp:HOST:PORT), passing requests through request() and replies through
    reply(), which subclasses override. One instance per client connection."""

    def request(self, frame: bytes) -> bytes:
        return frame

    def reply(self, frame: bytes) -> bytes:
        return frame


class EmptyReadForEinval(Proxy):
    """Answers an empty Rread / Rreaddir where the server answers a Tread or
    Treaddir with EINVAL (.L and .u), as if the directory had ended: what a
    server does that never tells a too-small count from the end (§5.16, §6.8)."""

    def __init__(self) -> None:
        self.types: dict[int, int] = {}  # tag -> request type
        self.dialect = Dialect.P9P2000L

    def request(self, frame: bytes) -> bytes:
        _size, mtype, tag = HEADER.unpack_from(frame)
        self.types[tag] = mtype
        return frame

    def reply(self, frame: bytes) -> bytes:
        _size, mtype, tag = HEADER.unpack_from(frame)
        asked = self.types.pop(tag, None)
        if mtype == MsgType.RVERSION:
            _, r = m.decode_message(frame, Dialect.P9P2000)
            assert isinstance(r, m.Rversion)
            self.dialect = parse_version(r.version) or self.dialect
        if mtype not in (MsgType.RLERROR, MsgType.RERROR) or self.dialect is Dialect.P9P2000:
            return frame
        _, r = m.decode_message(frame, self.dialect)
        code = r.ecode if isinstance(r, m.Rlerror) else getattr(r, "errno", 0)
        if code != errno.EINVAL:
            return frame
        if asked == MsgType.TREAD:
            return m.encode_message(m.Rread(b""), tag, self.dialect)
        if asked == MsgType.TREADDIR:
            return m.encode_message(m.Rreaddir(b""), tag, self.dialect)
        return frame


class XattrsVanish(Proxy):
    """Serves user xattrs on the first connection (where the suite probes for
    them) and answers EOPNOTSUPP to every Txattrwalk and Txattrcreate on any
    later one: a server that claims "no xattrs here" only when it suits it."""

    connections = 0

    def __init__(self) -> None:
        type(self).connections += 1
        self.first = type(self).connections == 1

    def request(self, frame: bytes) -> bytes:
        _size, mtype, tag = HEADER.unpack_from(frame)
        if self.first or mtype not in (MsgType.TXATTRWALK, MsgType.TXATTRCREATE):
            return frame
        # a request the server never sees: turned into a Tflush of nothing,
        # whose Rflush reply() turns into the error under the same tag
        return m.encode_message(m.Tflush(NOTAG - 1), tag, Dialect.P9P2000L)

    def reply(self, frame: bytes) -> bytes:
        _size, mtype, tag = HEADER.unpack_from(frame)
        if not self.first and mtype == MsgType.RFLUSH:
            return m.encode_message(m.Rlerror(errno.EOPNOTSUPP), tag, Dialect.P9P2000L)
        return frame


class IgnoreReusedTags(Proxy):
    """Gives every request a tag of its own on the way to the server (and the
    client's back on the reply), so a tag the client reuses while its request
    runs is never seen as reused: the connection is not closed (§3.4)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.next = 0
        self.client_tag: dict[int, int] = {}  # server tag -> client tag
        self.latest: dict[int, int] = {}  # client tag -> its newest server tag

    def request(self, frame: bytes) -> bytes:
        size, mtype, tag = HEADER.unpack_from(frame)
        if tag == NOTAG:
            return frame
        with self.lock:
            self.next = self.next % 60000 + 1
            new = self.next
            self.client_tag[new] = tag
            self.latest[tag] = new
            body = frame[7:]
            if mtype == MsgType.TFLUSH and len(body) == 2:
                (old,) = U16.unpack(body)
                body = U16.pack(self.latest.get(old, old))
        return HEADER.pack(size, mtype, new) + body

    def reply(self, frame: bytes) -> bytes:
        size, mtype, tag = HEADER.unpack_from(frame)
        with self.lock:
            orig = self.client_tag.pop(tag, tag)
        return HEADER.pack(size, mtype, orig) + frame[7:]


@contextmanager
def proxied(upstream: str, make: type[Proxy]) -> Iterator[str]:
    """Listen on loopback; each connection gets a make() between it and the
    server at upstream. Yields the proxy's address."""
    host, port = upstream.removeprefix("tcp:").rsplit(":", 1)
    lsock = socket.create_server(("127.0.0.1", 0))
    socks: list[socket.socket] = [lsock]
    threads: list[threading.Thread] = []

    def pump(src: socket.socket, dst: socket.socket, change: Callable[[bytes], bytes]) -> None:
        try:
            while (frame := _recv_frame(src)) is not None:
                dst.sendall(change(frame))
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def accept() -> None:
        while True:
            try:
                client, _ = lsock.accept()
            except OSError:
                return
            server = socket.create_connection((host, int(port)))
            socks.extend((client, server))
            proxy = make()
            for args in ((client, server, proxy.request), (server, client, proxy.reply)):
                t = threading.Thread(target=pump, args=args, daemon=True)
                t.start()
                threads.append(t)

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield f"tcp:127.0.0.1:{lsock.getsockname()[1]}"
    finally:
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        acceptor.join(5)
        for t in threads:
            t.join(5)
