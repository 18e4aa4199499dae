"""A server-side TLS connection that one thread may read while others write.

ssl.SSLSocket is not safe for that: OpenSSL forbids using one SSL object from
two threads at once, and CPython does not lock it (reading on one thread while
another sends can crash the process, CPython gh-143756). The server reads
each connection on its own thread while pooled replies are sent from worker
threads, so here the TLS state is an ssl.SSLObject over memory buffers, used
only under a lock that is never held while waiting on the network; the
socket itself carries ciphertext only.

TlsSocket is a socket.socket so the connection code, timeouts and
getpeername work unchanged; every call that would move plaintext around
the TLS layer is refused.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

# ciphertext read from the socket at a time: a full TLS record and then some
_RECV_CHUNK = 64 * 1024

CertSubject = tuple[tuple[tuple[str, str], ...], ...]


class TlsSocket(socket.socket):
    """A connected TCP socket speaking TLS as the server; sock is taken over
    (detached). Call handshake() before anything else."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        # before taking the descriptor, so that a failure leaves sock intact
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        timeout = sock.gettimeout()
        super().__init__(sock.family, sock.type, sock.proto, fileno=sock.detach())
        self.settimeout(timeout)
        self._tls_lock = threading.Lock()  # the SSLObject and both buffers
        self._out_lock = threading.Lock()  # ciphertext reaches the socket in record order
        self._in_lock = threading.Lock()  # one reader at a time
        self._eof = False

    # ---------------------------------------------------------- ciphertext --
    def _flush(self) -> None:
        """Send whatever the TLS layer has produced (records, alerts)."""
        with self._out_lock:
            with self._tls_lock:
                data = self._outgoing.read()
            if data:
                super().sendall(data)

    def pending(self) -> int:
        """Decrypted bytes ready to read without touching the socket."""
        with self._tls_lock:
            return self._tls.pending()

    def _fill(self, dontwait: bool = False) -> None:
        """Feed the TLS layer the next ciphertext from the socket (blocks,
        unless dontwait: then BlockingIOError when nothing has arrived)."""
        data = super().recv(_RECV_CHUNK, socket.MSG_DONTWAIT if dontwait else 0)
        with self._tls_lock:
            if data:
                self._incoming.write(data)
            else:
                self._incoming.write_eof()
                self._eof = True

    def handshake(self, timeout: float) -> None:
        """Run the server side of the handshake; the client has timeout
        seconds in all to complete it (a client trickling bytes gains no
        time). Raises ssl.SSLError (a bad or missing certificate: the alert
        has been sent), TimeoutError or ConnectionError."""
        deadline = time.monotonic() + timeout
        self.settimeout(timeout)
        while True:
            try:
                with self._tls_lock:
                    self._tls.do_handshake()
                self._flush()
                return
            except ssl.SSLWantReadError:
                self._flush()
            except ssl.SSLError:
                self._flush_quietly()  # tell the client why
                raise
            if self._eof:
                raise ConnectionError("the client closed the connection during the TLS handshake")
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise TimeoutError
                self.settimeout(left)
                self._fill()
            except TimeoutError:
                raise TimeoutError(f"no TLS handshake within {timeout:g}s") from None

    def _flush_quietly(self) -> None:
        try:
            self._flush()
        except OSError:
            pass

    # ------------------------------------------------------------ identity --
    def peer_certificate(self) -> bytes | None:
        """The client certificate (DER) verified by the handshake, or None."""
        with self._tls_lock:
            return self._tls.getpeercert(binary_form=True)

    def peer_subject(self) -> CertSubject:
        with self._tls_lock:
            cert = self._tls.getpeercert()
        return tuple(cert.get("subject", ())) if cert else ()  # type: ignore[arg-type]

    def cipher(self) -> tuple[str, str, int] | None:
        with self._tls_lock:
            return self._tls.cipher()

    # ----------------------------------------------------------- plaintext --
    def recv_into(self, buffer: WriteableBuffer, nbytes: int = 0, flags: int = 0) -> int:
        if flags & ~socket.MSG_DONTWAIT:
            raise ValueError("recv_into: only MSG_DONTWAIT is supported on a TLS socket")
        dontwait = bool(flags & socket.MSG_DONTWAIT)
        view = memoryview(buffer).cast("B")
        n = nbytes or len(view)
        if n <= 0:
            return 0
        with self._in_lock:
            while True:
                try:
                    with self._tls_lock:
                        # with a buffer, read() returns a count (typeshed says bytes)
                        got: int = self._tls.read(n, view)  # type: ignore[assignment]
                        pending = self._outgoing.pending
                except ssl.SSLWantReadError:
                    got, pending = -1, 0
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    return 0  # close_notify, or the connection just ended
                if pending:  # e.g. the answer to a TLS 1.3 key update
                    self._flush()
                if got >= 0:
                    return got
                if self._eof:
                    return 0
                self._fill(dontwait)

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        buf = bytearray(bufsize)
        n = self.recv_into(buf, bufsize, flags)
        return bytes(buf[:n])

    def sendall(self, data: ReadableBuffer, flags: int = 0, /) -> None:
        if flags:
            raise ValueError("sendall: flags are not supported on a TLS socket")
        view = memoryview(data).cast("B")
        with self._out_lock:
            with self._tls_lock:
                done = 0
                while done < len(view):
                    done += self._tls.write(view[done:])
                out = self._outgoing.read()
            super().sendall(out)

    def send(self, data: ReadableBuffer, flags: int = 0, /) -> int:
        self.sendall(data, flags)
        return len(memoryview(data).cast("B"))

    def sendmsg(
        self,
        buffers: Iterable[ReadableBuffer],
        ancdata: Iterable[Any] = (),
        flags: int = 0,
        address: Any = None,
        /,
    ) -> int:
        """All of buffers as TLS records (what a plain socket's sendmsg does
        in one system call); no ancillary data."""
        if tuple(ancdata) or flags or address is not None:
            raise ValueError("sendmsg: only plain data can be sent on a TLS socket")
        data = b"".join(buffers)
        self.sendall(data)
        return len(data)

    def _plaintext_bypass(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise OSError("not supported on a TLS socket")

    recvfrom = recvfrom_into = recvmsg = recvmsg_into = _plaintext_bypass
    sendto = sendfile = makefile = dup = _plaintext_bypass
