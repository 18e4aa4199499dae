"""The server: listeners, accept threads and one Connection per client."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from ..audit import NULL_AUDIT, AuditLog
from ..backend.base import Backend
from ..policy import Export, Policy
from ..policy.peer import Peer
from ..protocol.connection import ServerConnection
from ..protocol.constants import DEFAULT_MAX_MSIZE, Dialect
from .connection import Connection
from .limits import ClientMeter, LimitReporter, Limits, RecordGate
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
        limits: Limits = Limits(),  # noqa: B008 - frozen, shared
        audit: AuditLog = NULL_AUDIT,
    ) -> None:
        """dispatch: "hybrid" (the default: inline, slow requests pooled),
        "inline" (no pool) or "pool" (every request pooled); the last two exist
        to measure the choice. limits: for every client (see limits_for)."""
        if dispatch not in ("hybrid", "inline", "pool"):
            raise ValueError(f"unknown dispatch model {dispatch!r}")
        self.dispatch = dispatch
        self.policy = policy
        self.msize = msize
        self.dialects = dialects
        self.limits = limits
        self.audit = audit
        # per-client state, by client_name(); kept while it has connections or rate debt
        self._meters: dict[str, ClientMeter] = {}
        self._refusals = RecordGate()  # one "refused" record per client a minute
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

    def client_name(self, peer: Peer) -> str:
        """The key per-client limits are kept under: the Unix peer's uid, the
        TCP source address, else the listener."""
        if peer.uid is not None:
            return f"uid:{peer.uid}"
        if peer.address is not None:
            return peer.address
        return peer.listener

    def limits_for(self, client: str) -> Limits:
        """The limits of a client (by client_name); one set for all for now."""
        return self.limits

    def new_session(self, peer: Peer) -> Session:
        max_msize = self.limits_for(self.client_name(peer)).max_msize
        proto = ServerConnection(min(self.msize, max_msize), self.dialects)
        return Session(proto, self.policy, self.backends, str(peer), peer_info=peer)

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
        client = self.client_name(peer)
        limits = self.limits_for(client)
        meter = self._connect_meter(client, limits)
        if meter is None:
            log.warning("%s: refused: client %s has %d connections already", peer, client,
                        limits.max_connections)  # fmt: skip
            held_back = self._refusals.allow(client)
            if held_back is not None:
                self.audit.emit("refused", peer=str(peer), client=client, limit="max_connections",
                                max=limits.max_connections,
                                **({"suppressed_since": held_back} if held_back else {}))  # fmt: skip
            self._forget_idle_meters()
            sock.close()
            return
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            conn = Connection(
                sock, self.new_session(peer), self.pool, limits=limits,
                meter=meter if limits.ops_per_second or limits.bytes_per_second else None,
                reporter=LimitReporter(self.audit, str(peer), client),
                pool_everything=self.dispatch == "pool",
            )  # fmt: skip
        except BaseException:
            meter.disconnect()
            sock.close()
            raise
        with self._lock:
            self._connections.add(conn)
        log.info("%s: connected", peer)
        self.audit.emit("connect", peer=str(peer), client=client)

        def run() -> None:
            try:
                conn.serve()
            finally:
                meter.disconnect()
                self.audit.emit("disconnect", peer=str(peer), client=client)
                with self._lock:
                    self._connections.discard(conn)
                    last = oneshot and not self._listeners and not self._connections
                self._forget_idle_meters()
                if last:
                    log.info("the inherited connection ended: stopping")
                    self._stopped.set()

        threading.Thread(target=run, daemon=True, name=f"p9share-conn {peer}").start()

    def _connect_meter(self, client: str, limits: Limits) -> ClientMeter | None:
        """The client's meter with this connection counted, or None if the
        client is at its connection limit."""
        with self._lock:  # one step, so a meter being forgotten is never counted on
            meter = self._meters.get(client)
            if meter is None:
                meter = self._meters[client] = ClientMeter(client, limits)
            return meter if meter.try_connect() else None

    def _forget_idle_meters(self) -> None:
        """Drop meters with no connection and no rate debt (a client cannot
        shed its debt by reconnecting, and many past clients cost nothing)."""
        with self._lock:
            for name in [n for n, mt in self._meters.items() if mt.idle()]:
                del self._meters[name]

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
