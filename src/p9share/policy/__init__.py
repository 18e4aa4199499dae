"""Every security decision of the server, in one place.

The server asks the policy; the policy never touches the filesystem or the
wire. It answers: which client a connection is (from what the host can trust
about it, never from what the guest claims), which exports that client may
attach and with what rights, which names may be used, what may be created,
which xattr names are reachable, and how guest ids map to host ids (idmap).

A Policy with no clients (`clients is None`) is the open policy the command
line stands for: every connection may attach every export, read-write unless
the export is read-only.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import PolicyError
from .idmap import IdMap, passthrough, squash
from .peer import Peer

__all__ = ["Client", "Export", "Match", "Policy", "PolicyError", "Rights"]

# xattr names p9share keeps for itself (the mapped id layouts): never reachable
# by a guest, whatever namespaces it is granted (the same as backend.mapped's:
# the policy refuses them first, the mapped backend hides them too).
RESERVED_XATTR_PREFIXES = ("user.p9share.", "user.virtfs.")
XATTR_NAMESPACES = frozenset({"user", "trusted", "security", "system"})
SETID_BITS = stat.S_ISUID | stat.S_ISGID


def default_idmap() -> IdMap:
    """Root keeps the guest's ids (passthrough); anyone else creates files as
    itself (squash to the server's account, ids shown as they are)."""
    return passthrough() if os.geteuid() == 0 else squash()


@dataclass(frozen=True, slots=True)
class Export:
    name: str
    path: str
    readonly: bool = False
    idmap: IdMap = field(default_factory=default_idmap)
    cross_mounts: bool = True  # False: refuse to walk into another filesystem
    max_file_size: int = 0  # bytes; 0: no limit
    quota_bytes: int = 0  # bytes written into the export by guests; 0: no limit
    quota_files: int = 0  # files created by guests; 0: no limit
    cache: str = "auto"  # virtio-fs: "none" | "auto" | "always" (the guest's cache timeouts)


@dataclass(frozen=True, slots=True)
class Rights:
    """What one client may do in one export."""

    readonly: bool = False
    devices: bool = False  # mknod of character and block devices
    fifos: bool = False
    sockets: bool = False
    setid: bool = False  # keep setuid/setgid bits on create, chmod and write
    symlinks: bool = True
    hardlinks: bool = True
    xattr_namespaces: frozenset[str] = frozenset({"user"})

    def with_readonly(self, readonly: bool) -> Rights:
        return dataclasses.replace(self, readonly=readonly)


# The open (command-line) policy keeps what the foundation served: FIFOs and
# sockets may be made; device nodes and setuid bits may not.
OPEN_RIGHTS = Rights(fifos=True, sockets=True)


@dataclass(frozen=True, slots=True)
class Match:
    """One way to recognise a client; every field given must hold."""

    listener: str | None = None  # the listener's name (or its address as configured)
    peer_uid: int | None = None  # SO_PEERCRED of a Unix socket peer
    peer_gid: int | None = None
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None  # TCP source
    tls_fingerprint: str | None = None  # sha256 of the client certificate, hex
    tls_subject: str | None = None
    key: str | None = None  # key id proven through Tauth

    def matches(self, peer: Peer, key: str | None) -> bool:
        if self.key is not None and self.key != key:
            return False
        if self.listener is not None and self.listener != peer.listener:
            return False
        if self.peer_uid is not None and self.peer_uid != peer.uid:
            return False
        if self.peer_gid is not None and self.peer_gid != peer.gid:
            return False
        if self.network is not None:
            if peer.address is None:
                return False
            try:
                addr = ipaddress.ip_address(peer.address.split("%")[0])
            except ValueError:
                return False
            if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
                addr = addr.ipv4_mapped
            if addr not in self.network:
                return False
        if self.tls_fingerprint is not None and (
            peer.tls_fingerprint is None
            or peer.tls_fingerprint.lower() != self.tls_fingerprint.lower()
        ):
            return False
        return self.tls_subject is None or self.tls_subject == peer.tls_subject


@dataclass(frozen=True, slots=True)
class Client:
    name: str
    matches: tuple[Match, ...]
    grants: Mapping[str, Rights]  # export name -> rights
    limits: Mapping[str, Any] = field(default_factory=dict)  # server.limits.Limits fields


ANYONE = Client("anyone", (Match(),), {})


@dataclass(slots=True)
class Policy:
    exports: dict[str, Export] = field(default_factory=dict)
    clients: dict[str, Client] | None = None  # None: the open policy
    keys: dict[str, bytes] = field(default_factory=dict)  # key id -> secret (Tauth)

    # ------------------------------------------------------------- who --
    def identify(self, peer: Peer, key: str | None = None) -> Client | None:
        """The first client (in the policy's order) that peer matches; with
        key, a client matched by that key is preferred. None: nobody."""
        if self.clients is None:
            return ANYONE
        if key is not None:
            for cl in self.clients.values():
                if any(mt.key == key and mt.matches(peer, key) for mt in cl.matches):
                    return cl
        for cl in self.clients.values():
            if any(mt.key is None and mt.matches(peer, None) for mt in cl.matches):
                return cl
        return None

    def admits(self, peer: Peer) -> bool:
        """Whether a connection may stay open at all: it matches a client by
        transport, or some client could still be proven by a key."""
        if self.identify(peer) is not None:
            return True
        assert self.clients is not None
        return any(
            any(mt.key is not None and mt.matches(peer, mt.key) for mt in cl.matches)
            for cl in self.clients.values()
        )

    # ---------------------------------------------------------- attach --
    def select_export(self, aname: str, client: Client | None = ANYONE) -> tuple[Export, Rights]:
        """The export an attach name selects for client, and the client's
        rights in it: its NAME, or '' for the only one the client may attach."""
        if client is None:
            raise PolicyError(errno.EACCES, "no client identity matches this connection",
                              "identity")  # fmt: skip
        visible = self._visible(client)
        name = aname.strip("/")
        if name == "":
            if len(visible) == 1:
                name = visible[0]
            else:
                raise PolicyError(
                    errno.ENOENT,
                    f"empty attach name but {len(visible)} exports for client "
                    f"{client.name!r}: name one",
                    "aname",
                )
        exp = self.exports.get(name)
        if exp is None:
            raise PolicyError(errno.ENOENT, f"no export named {aname!r}", "aname")
        if name not in visible:
            raise PolicyError(errno.EACCES, f"client {client.name!r} may not attach {name!r}",
                              "grant")  # fmt: skip
        return exp, self.rights(client, exp)

    def _visible(self, client: Client) -> list[str]:
        if self.clients is None:
            return list(self.exports)
        return [n for n in client.grants if n in self.exports]

    def rights(self, client: Client, exp: Export) -> Rights:
        base = OPEN_RIGHTS if self.clients is None else client.grants[exp.name]
        return base.with_readonly(True) if exp.readonly and not base.readonly else base

    # ----------------------------------------------------------- names --
    @staticmethod
    def check_walk_name(name: str) -> None:
        """A walk element: one component; '..' is allowed (the backend clamps it)."""
        if not name or "/" in name or "\0" in name:
            raise PolicyError(errno.EINVAL, f"bad path element {name!r}", "name")

    @staticmethod
    def check_new_name(name: str) -> None:
        """A name to create, link or rename to: one component, never '.' or '..'."""
        if not name or "/" in name or "\0" in name or name in (".", ".."):
            raise PolicyError(errno.EINVAL, f"bad file name {name!r}", "name")

    # --------------------------------------------------------- changes --
    @staticmethod
    def check_write(rights: Rights) -> None:
        if rights.readonly:
            raise PolicyError(errno.EROFS, "export is read-only", "readonly")

    @staticmethod
    def check_mknod(rights: Rights, mode: int) -> None:
        kind = stat.S_IFMT(mode)
        if kind in (stat.S_IFCHR, stat.S_IFBLK) and not rights.devices:
            raise PolicyError(errno.EPERM, "device nodes are not allowed", "devices")
        if kind == stat.S_IFIFO and not rights.fifos:
            raise PolicyError(errno.EPERM, "FIFOs are not allowed", "fifos")
        if kind == stat.S_IFSOCK and not rights.sockets:
            raise PolicyError(errno.EPERM, "sockets are not allowed", "sockets")
        if kind not in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFREG):
            raise PolicyError(errno.EINVAL, f"mknod of file type {kind:#o}", "mknod")

    @staticmethod
    def check_symlink(rights: Rights) -> None:
        if not rights.symlinks:
            raise PolicyError(errno.EPERM, "symlinks are not allowed", "symlinks")

    @staticmethod
    def check_hardlink(rights: Rights) -> None:
        if not rights.hardlinks:
            raise PolicyError(errno.EPERM, "hard links are not allowed", "hardlinks")

    @staticmethod
    def new_mode(rights: Rights, mode: int) -> int:
        """Permission bits for a create or chmod: setuid/setgid stripped
        unless the client may set them."""
        return mode if rights.setid else mode & ~SETID_BITS

    @staticmethod
    def check_xattr(rights: Rights, name: str, write: bool) -> None:
        """Whether a guest may read (write=False) or write the xattr called
        name. A reserved name reads as absent (ENODATA) and cannot be set."""
        if name.startswith(RESERVED_XATTR_PREFIXES):
            err = errno.EPERM if write else errno.ENODATA
            raise PolicyError(err, f"xattr {name!r} is reserved by p9share", "xattr-reserved")
        ns = name.partition(".")[0]
        if ns not in rights.xattr_namespaces:
            raise PolicyError(errno.EOPNOTSUPP, f"xattr namespace {ns!r} is not allowed",
                              "xattr-namespace")  # fmt: skip

    @staticmethod
    def visible_xattrs(rights: Rights, names: list[str]) -> list[str]:
        return [
            n
            for n in names
            if not n.startswith(RESERVED_XATTR_PREFIXES)
            and n.partition(".")[0] in rights.xattr_namespaces
        ]

    @staticmethod
    def check_size(exp: Export, end: int) -> None:
        if exp.max_file_size and end > exp.max_file_size:
            raise PolicyError(errno.EFBIG, f"file would exceed {exp.max_file_size} bytes",
                              "max-file-size")  # fmt: skip
