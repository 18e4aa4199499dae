"""The server: listeners, accept threads and one Connection per client."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from ..backend.base import Backend
from ..policy import Export, Policy
from ..policy.peer import Peer
from ..protocol.connection import ServerConnection
from ..protocol.constants import DEFAULT_MAX_MSIZE, Dialect
from ..security.auth import Keyring
from .connection import Connection
from .session import Session
from .transport import Address, bound_address, open_listener, peer_of

log = logging.getLogger("p9share.server")

BackendFactory = Callable[[Export], Backend]


def host_backend(export: Export) -> Backend:
    from ..backend.hostfs import HostBackend

    return HostBackend(export.path, readonly=export.readonly)


class Server:
    def __init__(
        self,
        policy: Policy,
        *,
        msize: int = DEFAULT_MAX_MSIZE,
        dialects: frozenset[Dialect] = frozenset({Dialect.P9P2000L}),
        backend_factory: BackendFactory = host_backend,
        workers: int = 4,
        dispatch: str = "hybrid",
        keyring: Keyring | None = None,
        auth_required: bool = False,
    ) -> None:
        """dispatch: "hybrid" (the default: inline, slow requests pooled),
        "inline" (no pool) or "pool" (every request pooled); the last two exist
        to measure the choice. keyring, auth_required: see Session."""
        if auth_required and keyring is None:
            raise ValueError("auth_required needs a keyring")
        self.keyring = keyring
        self.auth_required = auth_required
        if dispatch not in ("hybrid", "inline", "pool"):
            raise ValueError(f"unknown dispatch model {dispatch!r}")
        self.dispatch = dispatch
        self.policy = policy
        self.msize = msize
        self.dialects = dialects
        self.backends: dict[str, Backend] = {
            name: backend_factory(exp) for name, exp in policy.exports.items()
        }
        self.pool = (
            ThreadPoolExecutor(workers, "p9share-io")
            if workers > 0 and dispatch != "inline"
            else None
        )
        self.addresses: list[Address] = []
        self._listeners: list[socket.socket] = []
        self._connections: set[Connection] = set()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._shut_down = False
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------- set-up --
    def listen(self, addr: Address) -> Address:
        """Bind one listener (raises AddressError). Returns the bound address.
        An inherited connected fd is served at once as a single connection."""
        sock, listening = open_listener(addr)
        if not listening:
            self.addresses.append(addr)
            self._start_connection(sock, peer_of(sock, addr), oneshot=True)
            return addr
        real = bound_address(sock, addr)
        self._listeners.append(sock)
        self.addresses.append(real)
        t = threading.Thread(target=self._accept_loop, args=(sock, real), daemon=True,
                             name=f"p9share-accept {real}")  # fmt: skip
        self._threads.append(t)
        t.start()
        return real

    def new_session(self, peer: Peer) -> Session:
        proto = ServerConnection(self.msize, self.dialects)
        return Session(proto, self.policy, self.backends, str(peer), peer_info=peer,
                       keyring=self.keyring, auth_required=self.auth_required)  # fmt: skip

    # ------------------------------------------------------------ running --
    def _accept_loop(self, lsock: socket.socket, addr: Address) -> None:
        while not self._stopped.is_set():
            try:
                sock, _ = lsock.accept()
            except OSError:
                if self._stopped.is_set():
                    return
                continue
            self._start_connection(sock, peer_of(sock, addr))

    def _start_connection(self, sock: socket.socket, peer: Peer, oneshot: bool = False) -> None:
        """Serve sock on a new thread. A oneshot connection (an inherited fd)
        stops the server when it ends if there is no listener left to serve."""
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = Connection(
            sock, self.new_session(peer), self.pool, pool_everything=self.dispatch == "pool"
        )
        with self._lock:
            self._connections.add(conn)
        log.info("%s: connected", peer)

        def run() -> None:
            try:
                conn.serve()
            finally:
                with self._lock:
                    self._connections.discard(conn)
                    last = oneshot and not self._listeners and not self._connections
                if last:
                    log.info("the inherited connection ended: stopping")
                    self._stopped.set()

        threading.Thread(target=run, daemon=True, name=f"p9share-conn {peer}").start()

    def connection_count(self) -> int:
        with self._lock:
            return len(self._connections)

    def wait(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)

    def stop(self) -> None:
        """Close listeners and connections and release the backends."""
        if self._shut_down:
            return
        self._shut_down = True
        self._stopped.set()
        for s in self._listeners:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        with self._lock:
            conns = list(self._connections)
        for c in conns:
            c.close()
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=False)
        for b in self.backends.values():
            b.shutdown()
