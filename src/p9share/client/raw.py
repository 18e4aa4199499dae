"""A blocking, message-level 9P client over a socket.

It sends exactly the messages it is given (or raw bytes), so tests and the
conformance suite can speak correct and deliberately broken 9P to any server.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterable
from typing import TypeVar

from ..protocol import messages as m
from ..protocol.constants import NOFID, NOTAG, Dialect
from ..protocol.wire import U32
from ..security.auth import ClientAuth, Key
from .errors import protocol_error, reply_error

MAX_FRAME = 16 << 20


class ServerError(OSError):
    """An Rlerror / Rerror reply, as the matching OSError."""


def connect(
    address: str,
    timeout: float | None = 30.0,
    *,
    tls_ca: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
) -> socket.socket:
    """A socket connected to tcp:HOST:PORT, tls:HOST:PORT or unix:PATH.

    For tls: the server certificate is verified against tls_ca (a PEM bundle;
    the system's CAs when None) and must name HOST; tls_cert and tls_key are
    the client certificate and key to present (none when tls_cert is None).
    The handshake is done when this returns; a server that refuses the client
    certificate may, under TLS 1.3, only say so on the first read."""
    kind, _, rest = address.partition(":")
    if kind == "unix":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(rest)
        return s
    if kind == "tcp":
        host, _, port = rest.rpartition(":")
        host = host.strip("[]")
        s = socket.create_connection((host, int(port)), timeout=timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s
    if kind == "tls":
        host, _, port = rest.rpartition(":")
        host = host.strip("[]")
        ctx = ssl.create_default_context(cafile=tls_ca)
        if tls_cert is not None:
            ctx.load_cert_chain(tls_cert, tls_key)
        raw = socket.create_connection((host, int(port)), timeout=timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            return ctx.wrap_socket(raw, server_hostname=host)
        except BaseException:
            raw.close()
            raise
    raise ValueError(f"bad address {address!r}: expected tcp:HOST:PORT, tls:HOST:PORT or unix:PATH")


class RawClient:
    def __init__(self, sock: socket.socket, dialect: Dialect = Dialect.P9P2000L) -> None:
        self.sock = sock
        self.dialect = dialect
        self.msize = 8192
        self._next_tag = 1

    @classmethod
    def connect(
        cls,
        address: str,
        timeout: float | None = 30.0,
        *,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
    ) -> RawClient:
        return cls(connect(address, timeout, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key))

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- framing
    def tag(self) -> int:
        t = self._next_tag
        self._next_tag = (self._next_tag % 0xFFFE) + 1
        return t

    def send(self, msg: m.Message, tag: int | None = None) -> int:
        tag = self.tag() if tag is None else tag
        self.sock.sendall(m.encode_message(msg, tag, self.dialect))
        return tag

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("server closed the connection")
            buf += chunk
        return bytes(buf)

    def recv_frame(self) -> bytes:
        head = self._recv_exact(4)
        (size,) = U32.unpack(head)
        # Frames are bounded by msize; a tool that skipped version() still
        # gets at most MAX_FRAME, never whatever a server claims.
        if size < 7 or size > max(self.msize, MAX_FRAME):
            raise ConnectionError(f"server sent a frame of size {size}")
        return head + self._recv_exact(size - 4)

    def recv(self) -> tuple[int, m.Message]:
        frame = self.recv_frame()
        return m.decode_message(frame, self.dialect)

    def rpc(self, msg: m.Message) -> m.Message:
        """Send msg and return its reply; raise ServerError for an error reply."""
        tag = self.send(msg)
        rtag, reply = self.recv()
        if rtag != tag:
            raise ConnectionError(f"reply tag {rtag} for request tag {tag}")
        check(reply)
        return reply

    # ---- conveniences
    def version(self, msize: int = 65536 + 24, version: str | None = None) -> m.Rversion:
        self.send(m.Tversion(msize, version or self.dialect.value), tag=NOTAG)
        _, reply = self.recv()
        check(reply)
        r = expect(reply, m.Rversion)
        self.msize = min(r.msize, msize)  # frames above our offer are refused
        return r

    def attach(
        self, fid: int = 0, aname: str = "", uname: str = "root", n_uname: int = 0
    ) -> m.Rattach:
        return expect(self.rpc(m.Tattach(fid, NOFID, uname, aname, n_uname)), m.Rattach)

    def auth_attach(
        self, fid: int, afid: int, uname: str, aname: str, key: Key, n_uname: int = 0
    ) -> m.Rattach:
        """Tauth, the p9share-hmac-sha256-v1 exchange on afid (docs/protocol.md
        §11), then Tattach through it. The server's proof is checked before the
        attach; afid is clunked at the end either way."""
        self.rpc(m.Tauth(afid, uname, aname, n_uname))
        try:
            client = ClientAuth(key, uname, aname, n_uname)
            challenge = expect(self.rpc(m.Tread(afid, 0, 256)), m.Rread)
            self.rpc(m.Twrite(afid, 0, client.response(bytes(challenge.data))))
            proof = expect(self.rpc(m.Tread(afid, 0, 256)), m.Rread)
            client.verify_proof(bytes(proof.data))
            return expect(self.rpc(m.Tattach(fid, afid, uname, aname, n_uname)), m.Rattach)
        finally:
            try:
                self.rpc(m.Tclunk(afid))
            except OSError:  # an error reply, or a broken connection: the first error matters
                pass

    def walk(self, fid: int, newfid: int, names: Iterable[str]) -> m.Rwalk:
        return expect(self.rpc(m.Twalk(fid, newfid, list(names))), m.Rwalk)


R = TypeVar("R", bound=m.Message)


def expect(reply: m.Message, rtype: type[R]) -> R:
    """reply, if it is an rtype; ServerError(EPROTO) if not."""
    if not isinstance(reply, rtype):
        err = protocol_error(f"{type(reply).__name__} where {rtype.__name__} was due")
        raise ServerError(err.errno, err.strerror)
    return reply


def check(reply: m.Message) -> None:
    err = reply_error(reply)  # an errno out of range becomes EIO, never OverflowError
    if err is not None:
        raise ServerError(err.errno, err.strerror)
