"""Listener addresses: tcp:HOST:PORT, tls:HOST:PORT, unix:PATH, fd:N and systemd:NAME.

tls:HOST:PORT is TCP with mutual TLS: the server presents its certificate and
requires a client certificate signed by the configured CA; a client is then
identified by that verified certificate (Peer.tls_subject, tls_fingerprint).

fd:N is a socket inherited from the parent: a connected one (QEMU's chardev,
a socketpair) is served as one connection; a listening one (systemd socket
activation) is accepted on like any listener. systemd:NAME is the socket
that systemd passed with FileDescriptorName=NAME (server/systemd.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import ssl
import stat
import struct
from dataclasses import dataclass

from ..policy.peer import Peer
from .tls import TlsSocket


class AddressError(ValueError):
    """A listen address that cannot be parsed or used; the message says why."""


class TlsConfigError(AddressError):
    """A TLS listener's certificate, key or CA cannot be used; the message
    names the file. An AddressError so that callers reporting bad listeners
    report this too."""


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """What a tls: listener needs: its certificate chain and key (PEM files)
    and the CA bundle that client certificates must chain to."""

    cert: str
    key: str
    client_ca: str
    # False accepts clients without a certificate (their Peer has no tls_*
    # fields); a certificate that is presented must still verify.
    require_client_cert: bool = True
    handshake_timeout: float = 10.0  # seconds a client may take to finish the handshake


@dataclass(frozen=True, slots=True)
class Address:
    # "tcp" | "tls" | "unix" | "fd" | "systemd" (path: the name; fd once passed) | "vhost-user"
    kind: str
    host: str = ""
    port: int = 0
    path: str = ""
    fd: int = -1

    def __str__(self) -> str:
        if self.kind in ("tcp", "tls"):
            host = f"[{self.host}]" if ":" in self.host else self.host
            return f"{self.kind}:{host}:{self.port}"
        if self.kind in ("unix", "vhost-user"):
            return f"{self.kind}:{self.path}"
        if self.kind == "systemd":
            return f"systemd:{self.path}" + (f" (fd {self.fd})" if self.fd >= 0 else "")
        return f"fd:{self.fd}"


def parse_address(text: str) -> Address:
    kind, sep, rest = text.partition(":")
    if not sep or not rest:
        raise AddressError(
            f"bad address {text!r}: expected tcp:HOST:PORT, tls:HOST:PORT, unix:PATH, fd:N, "
            "systemd:NAME or vhost-user:PATH"
        )
    if kind in ("tcp", "tls"):
        host, sep, port_s = rest.rpartition(":")
        if not sep or not host:
            raise AddressError(f"bad address {text!r}: expected {kind}:HOST:PORT")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
            raise AddressError(f"bad port {port_s!r} in {text!r}: expected 0-65535")
        return Address(kind, host=host, port=int(port_s))
    if kind == "unix":
        return Address("unix", path=rest)
    if kind == "fd":
        if not rest.isdigit():
            raise AddressError(f"bad descriptor {rest!r} in {text!r}: expected fd:N")
        return Address("fd", fd=int(rest))
    if kind == "vhost-user":
        return Address("vhost-user", path=rest)
    if kind == "systemd":
        if not rest.replace("-", "").replace("_", "").replace(".", "").replace("@", "").isalnum():
            raise AddressError(f"bad socket name {rest!r} in {text!r}: expected systemd:NAME "
                               "(the socket unit's FileDescriptorName=)")  # fmt: skip
        return Address("systemd", path=rest)
    raise AddressError(
        f"unknown transport {kind!r} in {text!r}: use tcp, tls, unix, fd, systemd or vhost-user"
    )


def open_listener(addr: Address) -> tuple[socket.socket, bool]:
    """A bound socket for addr and whether it is listening (False for an
    inherited connected fd). Raises AddressError with a clear message. A tls
    listener is a TCP one: TLS starts on each accepted connection."""
    if addr.kind in ("tcp", "tls"):
        try:
            infos = socket.getaddrinfo(addr.host, addr.port, type=socket.SOCK_STREAM)
        except socket.gaierror as e:
            raise AddressError(f"cannot resolve {addr.host!r}: {e.strerror}") from None
        family, _, _, _, sockaddr = infos[0]
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(sockaddr)
            s.listen(64)
        except OSError as e:
            s.close()
            raise AddressError(f"cannot listen on {addr}: {e.strerror}") from None
        return s, True
    if addr.kind == "unix":
        # replace a stale socket file, never anything else
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.lstat(addr.path).st_mode):
                os.unlink(addr.path)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.bind(addr.path)
            s.listen(64)
        except OSError as e:
            s.close()
            raise AddressError(f"cannot listen on {addr}: {e.strerror}") from None
        return s, True
    if addr.kind == "systemd" and addr.fd < 0:
        raise AddressError(f"{addr}: no socket of that name was passed by systemd")
    try:
        st = os.fstat(addr.fd)
    except OSError:
        raise AddressError(f"{addr}: no such open descriptor") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise AddressError(f"{addr}: not a socket")
    s = socket.socket(fileno=addr.fd)
    listening = bool(s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    return s, listening


def bound_address(sock: socket.socket, addr: Address) -> Address:
    """The address actually bound (tcp port 0 becomes the real port)."""
    if addr.kind in ("tcp", "tls"):
        host, port = sock.getsockname()[:2]
        return Address(addr.kind, host=host, port=port)
    return addr


def peer_of(sock: socket.socket, listener: Address, label: str | None = None) -> Peer:
    """What the host can trust about a connected socket; label names the
    listener for the policy (default: its address). For a TLS connection
    this includes the client certificate, verified by the handshake."""
    name = label or str(listener)
    if isinstance(sock, TlsSocket):
        host, port = sock.getpeername()[:2]
        der = sock.peer_certificate()
        if der is None:  # no certificate (require_client_cert=False)
            return Peer(name, "tls", address=host, port=port)
        return Peer(name, "tls", address=host, port=port,
                    tls_subject=subject_string(sock.peer_subject()),
                    tls_fingerprint=hashlib.sha256(der).hexdigest())  # fmt: skip
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        host, port = sock.getpeername()[:2]
        return Peer(name, listener.kind if listener.kind != "fd" else "tcp",
                    address=host, port=port)  # fmt: skip
    if sock.family == socket.AF_UNIX:
        try:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            pid, uid, gid = struct.unpack("3i", creds)
        except OSError:
            return Peer(name, "unix")
        return Peer(name, "unix", uid=uid, gid=gid, pid=pid)
    return Peer(name, listener.kind)


# ------------------------------------------------------------------- TLS --
def _readable(path: str, what: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise TlsConfigError(f"cannot read TLS {what} {path}: {e.strerror}") from None


def _encrypted_key(path: str) -> bytes:
    # called by OpenSSL only for an encrypted key; never prompt on the terminal
    raise TlsConfigError(f"TLS key {path} is encrypted: give an unencrypted key file")


def server_context(settings: TlsSettings) -> ssl.SSLContext:
    """The SSLContext of a tls: listener. Raises TlsConfigError naming the
    file that cannot be loaded."""
    if not settings.handshake_timeout > 0:
        raise TlsConfigError(
            f"TLS handshake timeout must be positive: {settings.handshake_timeout}"
        )
    if settings.require_client_cert and not settings.client_ca:
        raise TlsConfigError("mutual TLS needs a client CA bundle (client_ca)")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # TLS 1.3 only: Python and OpenSSL >= 1.1.1 speak it, and it leaves out
    # renegotiation, static RSA and the rest of 1.2's options
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if ssl.HAS_TLSv1_3 else ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    # no session resumption: every connection proves its certificate afresh
    ctx.options |= ssl.OP_NO_TICKET
    ctx.num_tickets = 0
    _readable(settings.cert, "certificate")
    _readable(settings.key, "key")
    try:
        # parse the certificate alone first, so an error names the right file
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=settings.cert)
    except ssl.SSLError as e:
        raise TlsConfigError(f"TLS certificate {settings.cert} holds no usable PEM certificate: {e.reason or e}") from None  # fmt: skip
    try:
        ctx.load_cert_chain(
            settings.cert, settings.key, password=lambda: _encrypted_key(settings.key)
        )
    except ssl.SSLError as e:
        raise TlsConfigError(f"TLS key {settings.key} cannot be loaded or does not match certificate {settings.cert}: {e.reason or e}") from None  # fmt: skip
    if settings.client_ca:
        _readable(settings.client_ca, "client CA bundle")
        try:
            ctx.load_verify_locations(cafile=settings.client_ca)
        except ssl.SSLError as e:
            raise TlsConfigError(f"TLS client CA bundle {settings.client_ca} holds no usable PEM certificate: {e.reason or e}") from None  # fmt: skip
        ctx.verify_mode = ssl.CERT_REQUIRED if settings.require_client_cert else ssl.CERT_OPTIONAL
    return ctx


# short names of RFC 4514 section 3; other attributes keep OpenSSL's name
_RDN_SHORT = {
    "commonName": "CN",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "streetAddress": "STREET",
    "domainComponent": "DC",
    "userId": "UID",
}


def _rdn_value(value: str) -> str:
    out = "".join("\\" + c if c in ',+"\\<>;' else c for c in value)
    if out.startswith(("#", " ")):
        out = "\\" + out
    if out.endswith(" ") and len(out) > 1:
        out = out[:-1] + "\\ "
    return out


def subject_string(subject: tuple[tuple[tuple[str, str], ...], ...]) -> str:
    """A certificate subject as an RFC 4514 string, most specific name first,
    e.g. "CN=vm1,O=Example": the form `openssl x509 -noout -subject -nameopt
    RFC2253` prints, so a policy can quote it. subject is the ssl module's
    getpeercert()["subject"]."""
    return ",".join(
        "+".join(f"{_RDN_SHORT.get(k, k)}={_rdn_value(v)}" for k, v in rdn)
        for rdn in reversed(subject)
    )
