"""What the host knows about a connection before it says a word: the facts a
client identity can be matched on (the guest's own claims, such as uname,
are never among them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Peer:
    listener: str  # the listener's configured address (or name), e.g. "unix:/run/vm1.sock"
    transport: str  # "tcp" | "unix" | "fd" | "tls"
    address: str | None = None  # TCP source address
    port: int | None = None  # TCP source port
    uid: int | None = None  # SO_PEERCRED of a Unix socket peer
    gid: int | None = None
    pid: int | None = None
    tls_subject: str | None = None  # verified client certificate (mutual TLS)
    tls_fingerprint: str | None = None  # sha256 of the client certificate, hex

    def __str__(self) -> str:
        if self.address is not None:
            return f"{self.listener}<-{self.address}:{self.port}"
        if self.pid is not None:
            return f"{self.listener}<-pid {self.pid} uid {self.uid}"
        return self.listener
