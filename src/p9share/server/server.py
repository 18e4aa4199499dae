"""The server: listeners, accept threads and one Connection per client."""

from __future__ import annotations

import errno
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..audit import NULL_AUDIT, AuditLog
from ..backend.base import Backend
from ..policy import Export, Policy, PolicyError
from ..policy.peer import Peer
from ..policy.quota import QuotaLedger
from ..protocol.connection import ServerConnection
from ..protocol.constants import DEFAULT_MAX_MSIZE, Dialect
from ..security.auth import Key, Keyring
from ..virtiofs.device import VhostUserListener
from ..virtiofs.service import FuseRequestHandler
from ..virtiofs.session import FuseSession
from .connection import Connection
from .limits import ClientMeter, LimitReporter, Limits, RecordGate
from .metrics import Gauges, Metrics
from .session import Session
from .tls import TlsSocket
from .transport import (
    Address,
    AddressError,
    TlsSettings,
    bound_address,
    open_listener,
    peer_of,
    server_context,
)

log = logging.getLogger("p9share.server")

BackendFactory = Callable[[Export], Backend]


def host_backend(export: Export) -> Backend:
    """The backend of a host directory; a mapped export keeps the guest's ids,
    modes and special files in xattrs on top of it."""
    from ..backend.hostfs import HostBackend

    backend: Backend = HostBackend(
        export.path, readonly=export.readonly, cross_mounts=export.cross_mounts
    )
    if export.idmap.mode == "mapped":
        from ..backend.mapped import MappedBackend

        backend = MappedBackend(backend, export.idmap.xattr_layout)
    return backend


def _ledgers(
    policy: Policy, backends: dict[str, Backend], kept: dict[str, QuotaLedger]
) -> dict[str, QuotaLedger]:
    """A quota ledger for each export with a quota, starting from what its
    backend holds now (kept ones carry on)."""
    out = {}
    for name, exp in policy.exports.items():
        if exp.quota_bytes or exp.quota_files:
            out[name] = kept.get(name) or QuotaLedger(exp, *backends[name].usage())
    return out


def _keyring_of(policy: Policy) -> Keyring:
    return Keyring(Key(key_id, secret) for key_id, secret in policy.keys.items())


@dataclass(slots=True)
class _Counted:
    """The client one connection is counted under, and that client's meter:
    first its transport's identity, then the client a key proves (Tattach)."""

    client: str
    meter: ClientMeter


# connections (each a reader thread, and at most a throttle and a flusher
# thread more) the whole server serves at once, TLS handshakes included
DEFAULT_MAX_CONNECTIONS = 128


def _rate_meter(limits: Limits, meter: ClientMeter) -> ClientMeter | None:
    """The meter a connection charges, None when there are no rates to keep."""
    return meter if limits.ops_per_second or limits.bytes_per_second else None


class Server:
    def __init__(
        self,
        policy: Policy,
        *,
        msize: int = DEFAULT_MAX_MSIZE,
        dialects: frozenset[Dialect] = frozenset(Dialect),
        backend_factory: BackendFactory = host_backend,
        workers: int = 4,
        dispatch: str = "hybrid",
        limits: Limits = Limits(),  # noqa: B008 - frozen, shared
        audit: AuditLog = NULL_AUDIT,
        keyring: Keyring | None = None,
        auth_required: bool = False,
        metrics: bool = False,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        """dispatch: "hybrid" (the default: inline, slow requests pooled),
        "inline" (no pool) or "pool" (every request pooled); the last two exist
        to measure the choice. limits: the defaults of every client (a
        policy's client can override them). keyring, auth_required: see Session.
        max_connections: connections served at once by the whole server,
        whoever the clients are (0: no cap); past it a connection is refused."""
        if isinstance(max_connections, bool) or not isinstance(max_connections, int):
            raise ValueError(f"max_connections must be an integer, not {max_connections!r}")
        if max_connections < 0:
            raise ValueError("max_connections must not be negative")
        self.max_connections = max_connections
        self._own_keyring = keyring  # given by the caller, not by the policy
        if keyring is None and policy.keys:
            keyring = _keyring_of(policy)
        if auth_required and keyring is None:
            raise ValueError("auth_required needs a keyring")
        self.keyring = keyring
        self.auth_required = auth_required
        if dispatch not in ("hybrid", "inline", "pool"):
            raise ValueError(f"unknown dispatch model {dispatch!r}")
        self.dispatch = dispatch
        self.policy = policy
        self.audit = audit
        self.backend_factory = backend_factory
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
        self.quotas = _ledgers(policy, self.backends, {})
        self.pool = (
            ThreadPoolExecutor(workers, "p9share-io")
            if workers > 0 and dispatch != "inline"
            else None
        )
        self.addresses: list[Address] = []
        self._listeners: list[socket.socket] = []
        self._connections: set[Connection] = set()
        self._handshaking: set[socket.socket] = set()  # TLS connections not yet served
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._shut_down = False
        self._threads: list[threading.Thread] = []
        self._retired: list[Backend] = []  # backends replaced by a reload
        self._pending: list[Callable[[], None]] = []  # bound, not yet served
        self._vhost: list[VhostUserListener] = []  # virtio-fs devices
        self._reload_lock = threading.RLock()
        # live metrics (--metrics): counters per client and export
        self.metrics = Metrics(self._gauges) if metrics else None
        if self.metrics is not None:
            if audit is NULL_AUDIT:  # observers need an audit log of this server's own
                self.audit = audit = AuditLog(None)
            audit.observers.append(self.metrics.on_audit)

    # ------------------------------------------------------------- set-up --
    def listen(
        self, addr: Address, tls: TlsSettings | None = None, name: str | None = None
    ) -> Address:
        """Bind one listener and serve it at once (see bind)."""
        real = self.bind(addr, tls, name)
        self.start()
        return real

    def bind(
        self,
        addr: Address,
        tls: TlsSettings | None = None,
        name: str | None = None,
        export: str | None = None,
    ) -> Address:
        """Bind one listener (raises AddressError) without starting a thread:
        start() serves it, so that the self-sandbox can be applied in between
        (it needs a single-threaded process). Returns the bound address.
        An inherited connected fd is served as a single connection.
        A tls: address needs tls, its certificate, key and client CA (raises
        TlsConfigError, an AddressError, when they cannot be loaded). name is
        what the policy matches clients on (default: the address).
        A vhost-user: address serves one export as a virtio-fs device:
        `export`, or the only one the listener's client may attach."""
        if addr.kind == "vhost-user":
            return self._bind_vhost_user(addr, name or str(addr), export)
        context = None
        if addr.kind == "tls":
            if tls is None:
                raise AddressError(
                    f"{addr}: a TLS listener needs TLS settings "
                    "(server certificate, key and client CA bundle)"
                )
            context = server_context(tls)
        elif tls is not None:
            raise AddressError(f"{addr}: TLS settings given for a {addr.kind} listener")
        sock, listening = open_listener(addr)
        if not listening:
            self.addresses.append(addr)
            self._pending.append(
                lambda: self._start_connection(sock, peer_of(sock, addr, name), oneshot=True)
            )
            return addr
        real = bound_address(sock, addr)
        label = name or str(real)
        self._listeners.append(sock)
        self.addresses.append(real)
        handshake = None if context is None or tls is None else (context, tls.handshake_timeout)
        t = threading.Thread(target=self._accept_loop, args=(sock, real, label, handshake),
                             daemon=True, name=f"p9share-accept {real}")  # fmt: skip
        self._threads.append(t)
        self._pending.append(t.start)
        return real

    def _bind_vhost_user(self, addr: Address, label: str, export: str | None) -> Address:
        """A virtio-fs device on a Unix socket: one front end (QEMU) at a
        time, a FUSE session per connection, identity = the listener."""
        peer = Peer(label, "vhost-user")
        try:
            exp, _ = self.policy.select_export(export or "", self.policy.identify(peer))
        except PolicyError as e:
            raise AddressError(f"{addr}: {e.reason}") from None
        export_of = [exp.name]  # this listener's own (names may repeat outside a policy file)

        def session() -> FuseRequestHandler:
            # the policy and backends of now: a reload applies from the next connection
            name = export_of[0]
            try:
                self.policy.select_export(name, self.policy.identify(peer))
            except PolicyError as e:  # a reload took the grant away
                self.audit.emit("attach-denied", peer=label, aname=name, rule=e.rule,
                                reason=e.reason, transport="virtio-fs")  # fmt: skip
                raise OSError(e.errno or errno.EACCES, e.reason) from None
            observe = None
            if self.metrics is not None:
                client = self.policy.identify(peer)
                who = client.name if client is not None and self.policy.clients else label
                observe = self.metrics.stats("virtio-fs", who, name).request
            return FuseRequestHandler(FuseSession(
                self.policy, self.backends, name, peer, audit=self.audit, quotas=self.quotas,
                cache=self.policy.exports[name].cache,
            ), observe)  # fmt: skip

        listener = VhostUserListener(addr.path, session)
        try:
            listener.bind()
        except OSError as e:
            raise AddressError(f"cannot listen on {addr}: {e.strerror}") from None
        self._vhost.append(listener)
        self.addresses.append(addr)
        self._pending.append(listener.start)
        return addr

    def start(self) -> None:
        """Serve every listener bound since the last start()."""
        pending, self._pending = self._pending, []
        for begin in pending:
            begin()

    def client_name(self, peer: Peer) -> str:
        """The key per-client limits are kept under: the policy's client that
        the peer matches by transport; under the open policy (or before a key
        is proven) the Unix peer's uid, the TCP source address, else the
        listener. A key proven at a Tattach moves the connection to its
        client (see _identified).

        Unidentified network peers share one bucket per listener: counted by
        source address, a local user with the 127.0.0.0/8 aliases (or a
        guest behind NAT with many addresses) would multiply its share."""
        client = self.policy.identify(peer)
        if client is not None and self.policy.clients is not None:
            return client.name
        if peer.uid is not None:
            return f"uid:{peer.uid}"
        return f"unidentified:{peer.listener}"

    def limits_for(self, client: str) -> Limits:
        """The limits of a client (by client_name): the policy's client's own
        values over the server's defaults."""
        cl = self.policy.clients.get(client) if self.policy.clients else None
        if cl is None or not cl.limits:
            return self.limits
        return Limits.from_mapping(cl.limits, base=self.limits)

    def new_session(self, peer: Peer) -> Session:
        max_msize = self.limits_for(self.client_name(peer)).max_msize
        proto = ServerConnection(min(self.msize, max_msize), self.dialects)
        return Session(proto, self.policy, self.backends, str(peer), peer_info=peer,
                       audit=self.audit, keyring=self.keyring, quotas=self.quotas,
                       auth_required=self.auth_required, metrics=self.metrics,
                       client_label=self.client_name(peer))  # fmt: skip

    def _gauges(self) -> Gauges:
        """What the server holds now, for a metrics scrape."""
        with self._lock:
            conns = list(self._connections)
        connections: dict[tuple[str, str], int] = {}
        fids: dict[tuple[str, str, str], int] = {}
        for conn in conns:
            sess = conn.session
            client = sess.client.name if sess.client and self.policy.clients else sess.client_label
            connections["9p", client] = connections.get(("9p", client), 0) + 1
            for export, n in sess.fids.count_by_export().items():
                fids["9p", client, export] = fids.get(("9p", client, export), 0) + n
        for v in self._vhost:  # virtio-fs: one front end per socket, its inodes
            vc = v.connection
            handler = vc.handler if vc is not None else None
            if isinstance(handler, FuseRequestHandler):
                fs = handler.session
                who = (
                    fs.client.name if fs.client and self.policy.clients else f"vhost-user:{v.path}"
                )
                connections["virtio-fs", who] = connections.get(("virtio-fs", who), 0) + 1
                fids["virtio-fs", who, fs.export.name] = fs.inode_count()
        quota = {name: (q.bytes_used, q.files_used, q.export.quota_bytes, q.export.quota_files)
                 for name, q in self.quotas.items()}  # fmt: skip
        return Gauges(connections, fids, quota)

    # ------------------------------------------------------------ running --
    def _accept_loop(
        self,
        lsock: socket.socket,
        addr: Address,
        label: str,
        tls: tuple[ssl.SSLContext, float] | None,
    ) -> None:
        while not self._stopped.is_set():
            try:
                sock, _ = lsock.accept()
            except OSError:
                if self._stopped.is_set():
                    return
                continue
            if tls is None:
                self._start_connection(sock, peer_of(sock, addr, label))
            else:
                self._start_tls_handshake(sock, addr, label, *tls)

    def _start_tls_handshake(
        self,
        sock: socket.socket,
        addr: Address,
        label: str,
        context: ssl.SSLContext,
        timeout: float,
    ) -> None:
        """Run the TLS handshake on a thread of its own, so that a client that
        never completes it holds up nobody, then serve the connection."""
        try:
            source = "{}:{}".format(*sock.getpeername()[:2])
        except OSError:
            source = "?"
        try:
            tls_sock = TlsSocket(sock, context)
        except OSError as e:
            log.warning("%s<-%s: cannot start TLS: %s", addr, source, e)
            sock.close()
            return
        with self._lock:
            full = self._at_capacity()
            if not full:
                self._handshaking.add(tls_sock)
        if full:
            self._refuse_over_capacity(tls_sock, f"{addr}<-{source}")
            return

        def run() -> None:
            try:
                tls_sock.handshake(timeout)
                tls_sock.settimeout(None)
            except (OSError, ValueError) as e:
                log.warning("%s<-%s: TLS handshake failed: %s", addr, source, e)
                tls_sock.close()
                return
            finally:
                with self._lock:
                    self._handshaking.discard(tls_sock)
            if self._stopped.is_set():
                tls_sock.close()
                return
            peer = peer_of(tls_sock, addr, label)
            # what a policy can match this client on
            log.info("%s: TLS client %r sha256 %s", peer, peer.tls_subject, peer.tls_fingerprint)
            self._start_connection(tls_sock, peer)

        threading.Thread(target=run, daemon=True, name=f"p9share-tls {source}").start()

    def _start_connection(self, sock: socket.socket, peer: Peer, oneshot: bool = False) -> None:
        """Serve sock on a new thread. A oneshot connection (an inherited fd)
        stops the server when it ends if there is no listener left to serve."""
        with self._reload_lock:  # a reload never misses a session being made
            self._admit(sock, peer, oneshot)

    def _at_capacity(self) -> bool:
        """Whether the server serves max_connections already (caller holds _lock)."""
        cap = self.max_connections
        return bool(cap) and len(self._connections) + len(self._handshaking) >= cap

    def _refuse_over_capacity(self, sock: socket.socket, who: str) -> None:
        log.warning("%s: refused: the server serves %d connections already", who,
                    self.max_connections)  # fmt: skip
        held_back = self._refusals.allow("(server)")
        if held_back is not None:
            self.audit.emit("refused", peer=who, limit="server max_connections",
                            max=self.max_connections,
                            **({"suppressed_since": held_back} if held_back else {}))  # fmt: skip
        sock.close()

    def _admit(self, sock: socket.socket, peer: Peer, oneshot: bool) -> None:
        with self._lock:
            full = self._at_capacity()
        if full:
            self._refuse_over_capacity(sock, str(peer))
            return
        if not self.policy.admits(peer):
            log.warning("%s: refused: no client matches this connection", peer)
            self.audit.emit("refused", peer=str(peer), reason="no client matches")
            sock.close()
            return
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
        counted = _Counted(client, meter)
        try:
            conn = Connection(
                sock, self.new_session(peer), self.pool, limits=limits,
                meter=_rate_meter(limits, meter),
                reporter=LimitReporter(self.audit, str(peer), client),
                pool_everything=self.dispatch == "pool",
            )  # fmt: skip
        except BaseException:
            meter.disconnect()
            sock.close()
            raise
        conn.session.on_identified = lambda name: self._identified(conn, counted, name)
        with self._lock:
            self._connections.add(conn)
        who = conn.session.client
        log.info("%s: connected (client %s)", peer, who.name if who else "to be proven")
        self.audit.emit("connect", peer=str(peer), client=client)

        def run() -> None:
            try:
                conn.serve()
            finally:
                counted.meter.disconnect()
                self.audit.emit("disconnect", peer=str(peer), client=counted.client)
                with self._lock:
                    self._connections.discard(conn)
                    last = oneshot and not self._listeners and not self._connections
                self._forget_idle_meters()
                if last:
                    log.info("the inherited connection ended: stopping")
                    self._stopped.set()

        threading.Thread(target=run, daemon=True, name=f"p9share-conn {peer}").start()

    def _identified(self, conn: Connection, counted: _Counted, name: str) -> None:
        """A key proved at a Tattach identifies the connection's client as
        name: from now on the connection is counted under that client and
        serves under its limits (fids, requests in flight, rates, timeouts;
        a later Tversion's msize). Over the client's max_connections the
        attach is refused (PolicyError EUSERS) and nothing changes. Runs on
        the thread handling the Tattach, never per request."""
        if self.policy.clients is None or name not in self.policy.clients:
            return  # the open policy: no per-client limits to take
        if name == counted.client:
            return  # already counted there (by transport, or an earlier attach)
        limits = self.limits_for(name)
        meter = self._connect_meter(name, limits)
        peer = str(conn.session.peer_info)
        if meter is None:
            log.warning("%s: attach refused: client %s has %d connections already", peer, name,
                        limits.max_connections)  # fmt: skip
            held_back = self._refusals.allow(f"attach {name}")
            if held_back is not None:
                self.audit.emit("limit", peer=peer, client=name, limit="max_connections",
                                action="attach refused", max=limits.max_connections,
                                **({"suppressed_since": held_back} if held_back else {}))  # fmt: skip
            raise PolicyError(
                errno.EUSERS,
                f"client {name!r} has {limits.max_connections} connections already",
                "max_connections",
            )
        previous, counted.client, counted.meter = counted.meter, name, meter
        previous.disconnect()
        conn.reporter.client = name
        conn.apply_limits(limits, _rate_meter(limits, meter))
        conn.proto.max_msize = min(self.msize, limits.max_msize)  # msize is negotiated already
        log.info("%s: identified by key as client %s (was %s): its limits apply", peer, name,
                 previous.name)  # fmt: skip
        self._forget_idle_meters()

    def reload(self, policy: Policy) -> list[str]:
        """Serve a new policy from now on. Exports whose definition changed get
        a new backend. A connection is closed when its client no longer
        matches, or when an export it attached was removed or changed, or its
        rights there changed; the others carry on under the new policy.
        Returns the peers whose connections were closed."""
        with self._reload_lock:
            return self._reload(policy)

    def _reload(self, policy: Policy) -> list[str]:
        old = self.policy
        changed = {n for n, e in old.exports.items() if policy.exports.get(n) != e}
        backends = {n: b for n, b in self.backends.items() if n not in changed}
        for name, exp in policy.exports.items():
            if name not in backends:
                backends[name] = self.backend_factory(exp)
        # the keys are the policy's: a key removed from it stops working
        keyring = _keyring_of(policy) if policy.keys else self._own_keyring
        quotas = _ledgers(policy, backends, {n: q for n, q in self.quotas.items()
                                             if n not in changed})  # fmt: skip
        closed: list[str] = []
        with self._lock:
            conns = list(self._connections)
        for conn in conns:
            sess = conn.session
            if self._keeps(sess, old, policy, changed):
                # backends first: an attach racing this sees every export it can select
                sess.backends, sess.quotas = backends, quotas
                sess.policy = policy
                sess.keyring = keyring
                sess.client = policy.identify(sess.peer_info, sess.auth_key)
            else:
                closed.append(str(sess.peer_info))
                conn.close()
        # backends of changed exports stay open for fids still in use by the
        # closing connections; they are few and released at stop()
        self._retired.extend(b for n, b in self.backends.items() if n in changed)
        self.policy, self.backends, self.quotas = policy, backends, quotas
        self.keyring = keyring
        return closed

    @staticmethod
    def _keeps(sess: Session, old: Policy, new: Policy, changed: set[str]) -> bool:
        client = new.identify(sess.peer_info, sess.auth_key)
        if client is None:
            # nothing attached and no key proven yet: it may still prove one
            return (
                not sess.exports_attached and sess.auth_key is None and new.admits(sess.peer_info)
            )
        before = sess.client
        if sess.exports_attached and (before is None or before.name != client.name):
            return False
        for name in sess.exports_attached:
            if name in changed or before is None:
                return False
            try:
                if new.select_export(name, client)[1] != old.select_export(name, before)[1]:
                    return False
            except OSError:
                return False
        return True

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
        for v in self._vhost:
            v.stop()
        for s in self._listeners:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        with self._lock:
            conns = list(self._connections)
            handshaking = list(self._handshaking)
        for s in handshaking:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for c in conns:
            c.close()
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=False)
        for b in [*self.backends.values(), *self._retired]:
            b.shutdown()
