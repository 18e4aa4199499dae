"""How guest user and group ids relate to host ids, per export.

Four modes, each a small frozen object the session consults:

- passthrough: guest ids are host ids (new files get the guest's ids; the
  server must run as root for that). Allowed id ranges can be limited.
- squash: every file is created as one host uid/gid (by default the server's
  own account); the guest sees configured ids, or the host's.
- mapped: host files stay owned by the service account; the guest's ids, mode,
  file type and rdev live in xattrs (the MappedBackend stores them), so the
  ids given to the backend are the guest's own.
- range: guest id ranges map onto host ranges, like subuid/subgid; ids outside
  the map are refused or squashed.

The NO_ID value (2**32 - 1, the wire's "no uid") always means "not given".
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from .errors import PolicyError

NO_ID = 0xFFFFFFFF
OVERFLOW_ID = 65534  # what a host id with no guest meaning is shown as (nobody)

Owner = tuple[int, int] | None  # host (uid, gid) of a new file; None: the server's own


@dataclass(frozen=True, slots=True)
class IdRange:
    """count ids: guest [guest, guest+count) <-> host [host, host+count)."""

    guest: int
    host: int
    count: int

    def to_host(self, gid: int) -> int | None:
        if self.guest <= gid < self.guest + self.count:
            return self.host + gid - self.guest
        return None

    def to_guest(self, hid: int) -> int | None:
        if self.host <= hid < self.host + self.count:
            return self.guest + hid - self.host
        return None


def _in(ranges: tuple[tuple[int, int], ...], value: int) -> bool:
    return any(lo <= value <= hi for lo, hi in ranges)


@dataclass(frozen=True, slots=True)
class IdMap:
    """The id mapping of one export. Build with one of the constructors below."""

    mode: str  # "passthrough" | "squash" | "mapped" | "range"
    # passthrough: the allowed guest ids (empty: any)
    allowed_uids: tuple[tuple[int, int], ...] = ()
    allowed_gids: tuple[tuple[int, int], ...] = ()
    # squash: host ids of new files (None: the server's own) and what the guest sees
    host_uid: int | None = None
    host_gid: int | None = None
    guest_uid: int | None = None  # None: show the host's ids
    guest_gid: int | None = None
    # range
    uid_map: tuple[IdRange, ...] = ()
    gid_map: tuple[IdRange, ...] = ()
    unmapped: str = "refuse"  # "refuse" | "squash" (to host_uid/host_gid)
    # mapped
    xattr_layout: str = "p9share"  # "p9share" | "virtfs"

    # ------------------------------------------------------------ requests --
    def owner(self, uid: int, gid: int) -> Owner:
        """The ids a file created for guest uid/gid gets: host ids, or for
        mapped exports the guest ids the backend stores. None: the server's
        own account. Raises PolicyError(EPERM) for a refused id."""
        if self.mode == "squash":
            if self.host_uid is None:
                return None
            return (self.host_uid, self.host_gid if self.host_gid is not None else -1)
        if uid == NO_ID:
            return None
        hu, hg = self.host_ids(uid, gid if gid != NO_ID else None)
        return (hu if hu is not None else -1, hg if hg is not None else -1)

    def host_ids(self, uid: int | None, gid: int | None) -> tuple[int | None, int | None]:
        """Host ids for a chown to guest uid/gid (None: unchanged). In squash
        mode ownership is not kept, so a chown changes nothing (None, None)."""
        if self.mode == "squash":
            return (None, None)
        return (self._one(uid, self.allowed_uids, self.uid_map, self.host_uid, "uid"),
                self._one(gid, self.allowed_gids, self.gid_map, self.host_gid, "gid"))  # fmt: skip

    def _one(
        self,
        value: int | None,
        allowed: tuple[tuple[int, int], ...],
        ranges: tuple[IdRange, ...],
        squash_to: int | None,
        what: str,
    ) -> int | None:
        if value is None or value == NO_ID:
            return None
        if self.mode == "range":
            for r in ranges:
                hid = r.to_host(value)
                if hid is not None:
                    return hid
            if self.unmapped == "squash":
                return squash_to
            raise PolicyError(errno.EPERM, f"guest {what} {value} is outside the export's id map")
        if allowed and not _in(allowed, value):
            raise PolicyError(errno.EPERM, f"guest {what} {value} is not allowed on this export")
        return value

    def guest_ids(self, uid: int, gid: int) -> tuple[int, int]:
        """What the guest sees for a file the host says is owned by uid/gid."""
        if self.mode == "squash":
            return (
                self.guest_uid if self.guest_uid is not None else uid,
                self.guest_gid if self.guest_gid is not None else gid,
            )
        if self.mode == "range":
            return (_reverse(self.uid_map, uid), _reverse(self.gid_map, gid))
        return (uid, gid)


def _reverse(ranges: tuple[IdRange, ...], hid: int) -> int:
    for r in ranges:
        gid = r.to_guest(hid)
        if gid is not None:
            return gid
    return OVERFLOW_ID


def passthrough(
    uids: tuple[tuple[int, int], ...] = (), gids: tuple[tuple[int, int], ...] = ()
) -> IdMap:
    return IdMap("passthrough", allowed_uids=uids, allowed_gids=gids)


def squash(
    host_uid: int | None = None,
    host_gid: int | None = None,
    guest_uid: int | None = None,
    guest_gid: int | None = None,
) -> IdMap:
    return IdMap("squash", host_uid=host_uid, host_gid=host_gid,
                 guest_uid=guest_uid, guest_gid=guest_gid)  # fmt: skip


def mapped(layout: str = "p9share") -> IdMap:
    if layout not in ("p9share", "virtfs"):
        raise ValueError(f"unknown xattr layout {layout!r}: use p9share or virtfs")
    return IdMap("mapped", xattr_layout=layout)


def id_range_map(
    uid_map: tuple[IdRange, ...],
    gid_map: tuple[IdRange, ...],
    unmapped: str = "refuse",
    squash_uid: int | None = None,
    squash_gid: int | None = None,
) -> IdMap:
    if unmapped not in ("refuse", "squash"):
        raise ValueError(f"unknown unmapped policy {unmapped!r}: use refuse or squash")
    if unmapped == "squash" and (squash_uid is None or squash_gid is None):
        raise ValueError("unmapped = squash needs squash_uid and squash_gid")
    return IdMap("range", uid_map=uid_map, gid_map=gid_map, unmapped=unmapped,
                 host_uid=squash_uid, host_gid=squash_gid)  # fmt: skip
