"""Every security decision of the server, in one place.

The server asks the policy; the policy never touches the filesystem or the
wire. This module holds what the foundation needs: which export an attach
name selects, which names a client may use, and whom new files belong to.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field


class PolicyError(OSError):
    """A request the policy refuses; errno goes to the client, the reason to the log."""

    def __init__(self, err: int, reason: str) -> None:
        super().__init__(err, reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Export:
    name: str
    path: str
    readonly: bool = False


@dataclass(slots=True)
class Policy:
    exports: dict[str, Export] = field(default_factory=dict)
    # Ownership of new files: "passthrough" gives them the guest's uid/gid
    # (only meaningful when the server runs as root); "server" leaves them
    # owned by the server's own account.
    ownership: str = "passthrough" if os.geteuid() == 0 else "server"

    def select_export(self, aname: str) -> Export:
        """The export an attach name selects: its NAME, or '' for the only one."""
        if aname.strip("/") == "":
            if len(self.exports) == 1:
                return next(iter(self.exports.values()))
            raise PolicyError(
                errno.ENOENT, f"empty attach name but {len(self.exports)} exports: name one"
            )
        exp = self.exports.get(aname.strip("/"))
        if exp is None:
            raise PolicyError(errno.ENOENT, f"no export named {aname!r}")
        return exp

    @staticmethod
    def check_walk_name(name: str) -> None:
        """A walk element: one component; '..' is allowed (the backend clamps it)."""
        if not name or "/" in name:
            raise PolicyError(errno.EINVAL, f"bad path element {name!r}")

    @staticmethod
    def check_new_name(name: str) -> None:
        """A name to create, link or rename to: one component, never '.' or '..'."""
        if not name or "/" in name or name in (".", ".."):
            raise PolicyError(errno.EINVAL, f"bad file name {name!r}")

    def owner(self, uid: int, gid: int) -> tuple[int, int] | None:
        """The (uid, gid) a file created for this guest user gets, or None
        for the server's own account."""
        if self.ownership == "passthrough" and uid != 0xFFFFFFFF:
            return (uid, gid if gid != 0xFFFFFFFF else -1)  # -1: the host's default group
        return None
