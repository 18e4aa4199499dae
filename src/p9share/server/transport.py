"""Listener addresses: tcp:HOST:PORT, unix:PATH and fd:N.

fd:N is a socket inherited from the parent: a connected one (QEMU's chardev,
a socketpair) is served as one connection; a listening one (systemd socket
activation) is accepted on like any listener.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import struct
from dataclasses import dataclass

from ..policy.peer import Peer


class AddressError(ValueError):
    """A listen address that cannot be parsed or used; the message says why."""


@dataclass(frozen=True, slots=True)
class Address:
    kind: str  # "tcp" | "unix" | "fd"
    host: str = ""
    port: int = 0
    path: str = ""
    fd: int = -1

    def __str__(self) -> str:
        if self.kind == "tcp":
            host = f"[{self.host}]" if ":" in self.host else self.host
            return f"tcp:{host}:{self.port}"
        if self.kind == "unix":
            return f"unix:{self.path}"
        return f"fd:{self.fd}"


def parse_address(text: str) -> Address:
    kind, sep, rest = text.partition(":")
    if not sep or not rest:
        raise AddressError(f"bad address {text!r}: expected tcp:HOST:PORT, unix:PATH or fd:N")
    if kind == "tcp":
        host, sep, port_s = rest.rpartition(":")
        if not sep or not host:
            raise AddressError(f"bad address {text!r}: expected tcp:HOST:PORT")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
            raise AddressError(f"bad port {port_s!r} in {text!r}: expected 0-65535")
        return Address("tcp", host=host, port=int(port_s))
    if kind == "unix":
        return Address("unix", path=rest)
    if kind == "fd":
        if not rest.isdigit():
            raise AddressError(f"bad descriptor {rest!r} in {text!r}: expected fd:N")
        return Address("fd", fd=int(rest))
    raise AddressError(f"unknown transport {kind!r} in {text!r}: use tcp, unix or fd")


def open_listener(addr: Address) -> tuple[socket.socket, bool]:
    """A bound socket for addr and whether it is listening (False for an
    inherited connected fd). Raises AddressError with a clear message."""
    if addr.kind == "tcp":
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
    if addr.kind == "tcp":
        host, port = sock.getsockname()[:2]
        return Address("tcp", host=host, port=port)
    return addr


def peer_of(sock: socket.socket, listener: Address, label: str | None = None) -> Peer:
    """What the host can trust about a connected socket. label names the
    listener for the policy (default: its address)."""
    name = label or str(listener)
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
