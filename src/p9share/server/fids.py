"""The fid table of one connection.

A fid can be in use by a request running on a worker thread while another
request clunks it. The table removes a clunked fid at once (its number is free
for reuse) but the fid's resources are released only when the last request
using it finishes, so an open file descriptor is never closed under a running
pread and then reused for another file.
"""

from __future__ import annotations

import enum
import errno
import threading
from collections.abc import Callable
from dataclasses import dataclass

from ..backend.base import Backend, Node, OpenFile
from ..policy import OPEN_RIGHTS, Export, Rights
from ..protocol.constants import NOFID
from ..security.auth import AuthExchange


class FidKind(enum.Enum):
    FILE = "file"  # refers to a node, maybe opened
    XATTR_READ = "xattr-read"  # Txattrwalk result: a value or a name list to read
    XATTR_WRITE = "xattr-write"  # after Txattrcreate: collects the value until clunk
    AUTH = "auth"  # Tauth's afid: carries an AuthExchange, refers to no file


@dataclass(slots=True, eq=False)
class XattrWrite:
    name: str
    size: int
    flags: int
    data: bytearray


@dataclass(slots=True, eq=False)
class Fid:
    num: int
    export: Export
    backend: Backend
    node: Node
    uid: int  # the guest user this fid was attached for
    kind: FidKind = FidKind.FILE
    file: OpenFile | None = None
    open_flags: int = 0  # host flags of the open file
    is_dir: bool = False
    xattr_value: bytes = b""
    xattr_write: XattrWrite | None = None
    # 9P2000/.u directory reads: stat entries not yet returned, and the offset they start at
    dir_pending: bytes = b""
    dir_offset: int = 0
    dir_cookie: int = 0
    remove_on_clunk: bool = False
    rights: Rights = OPEN_RIGHTS  # what the attaching client may do in this export
    path: str = "/"  # as walked, inside the export: for logs and the audit trail only
    setid_checked: bool = False  # setuid/setgid bits already dropped for this open file
    auth: AuthExchange | None = None  # the exchange of an AUTH fid
    auth_key: str | None = None  # key id that authenticated the attach this fid descends from
    xattr_charge: int = 0  # bytes of xattr buffer counted against the table's budget
    # bookkeeping
    users: int = 0
    clunked: bool = False

    def release_resources(self) -> None:
        if self.file is not None:
            file, self.file = self.file, None
            self.backend.close(file)
        self.backend.release(self.node)


# what one connection's xattr fids may hold at once (values read, values
# being written): the Linux client uses one at a time, each at most 64 KiB
XATTR_BUDGET = 4 << 20

# stripes of the fid state locks: fids whose numbers share one only wait for
# each other's opens, creates and clunks, which take microseconds
_STATE_STRIPES = 64


class FidTable:
    def __init__(self) -> None:
        self._fids: dict[int, Fid] = {}
        self._lock = threading.Lock()
        self._state_locks = tuple(threading.Lock() for _ in range(_STATE_STRIPES))
        self._max_fids = 0  # 0: no limit
        self.xattr_bytes = 0  # held by xattr fids, at most XATTR_BUDGET
        self._on_limit: Callable[[], None] | None = None

    def set_limit(self, max_fids: int, on_limit: Callable[[], None] | None = None) -> None:
        """Hold at most max_fids fids (0: no limit). Adding one more fails
        with EMFILE and calls on_limit (outside the table's lock)."""
        self._max_fids = max_fids
        self._on_limit = on_limit

    def __len__(self) -> int:
        return len(self._fids)

    def acquire(self, num: int) -> Fid:
        """The fid for a request; pair with release(). EBADF if unknown."""
        with self._lock:
            f = self._fids.get(num)
            if f is None:
                raise OSError(errno.EBADF, f"unknown fid {num}")
            f.users += 1
            return f

    def state_lock(self, num: int) -> threading.Lock:
        """The lock that requests changing fid num's state (open, create, walk
        or xattrwalk onto itself, xattrcreate, clunk, remove) hold from their
        check to their change, so that two of them on one fid run in turn.
        Reads and writes never take it. Keyed by number, not by Fid: a
        request that waited for a walk onto the fid sees its Fid clunked."""
        return self._state_locks[num % _STATE_STRIPES]

    def peek(self, num: int) -> Fid | None:
        """The fid with that number, not held: for logging and estimates only."""
        with self._lock:
            return self._fids.get(num)

    def charge_xattr(self, f: Fid, nbytes: int) -> None:
        """Count an xattr fid's buffer against the budget, or ENOMEM."""
        with self._lock:
            if self.xattr_bytes + nbytes > XATTR_BUDGET:
                raise OSError(errno.ENOMEM, f"xattr buffers of this connection would exceed "
                                            f"{XATTR_BUDGET} bytes: clunk some xattr fids")  # fmt: skip
            self.xattr_bytes += nbytes
            f.xattr_charge += nbytes

    def uncharge_xattr(self, f: Fid) -> None:
        """Give back f's charge (a fid that never made it into the table)."""
        with self._lock:
            self.xattr_bytes = max(0, self.xattr_bytes - f.xattr_charge)
            f.xattr_charge = 0

    def release(self, f: Fid) -> None:
        with self._lock:
            f.users -= 1
            done = f.clunked and f.users == 0
            if done:
                self.xattr_bytes = max(0, self.xattr_bytes - f.xattr_charge)
                f.xattr_charge = 0
        if done:
            f.release_resources()

    def add(self, f: Fid) -> None:
        """Insert a new fid; EEXIST if the number is taken, EBADF for NOFID,
        EMFILE past the limit."""
        if f.num == NOFID:
            raise OSError(errno.EBADF, "NOFID cannot name a fid")
        with self._lock:
            if f.num in self._fids:
                raise OSError(errno.EEXIST, f"fid {f.num} is in use")
            full = 0 < self._max_fids <= len(self._fids)
            if not full:
                self._fids[f.num] = f
        if full:
            if self._on_limit is not None:
                self._on_limit()
            raise OSError(errno.EMFILE, f"too many fids (limit {self._max_fids})")

    def count_by_export(self) -> dict[str, int]:
        """How many fids refer to each export (for the live metrics)."""
        with self._lock:
            fids = list(self._fids.values())
        out: dict[str, int] = {}
        for f in fids:
            out[f.export.name] = out.get(f.export.name, 0) + 1
        return out

    def check_free(self, num: int) -> None:
        if num == NOFID:
            raise OSError(errno.EBADF, "NOFID cannot name a fid")
        with self._lock:
            if num in self._fids:
                raise OSError(errno.EEXIST, f"fid {num} is in use")

    def replace(self, f: Fid, new: Fid) -> None:
        """Put `new` under f's number (walk with newfid == fid); f is released
        when its users finish."""
        with self._lock:
            self._fids[f.num] = new
            f.clunked = True

    def clunk(self, f: Fid) -> None:
        """Remove f (which the caller holds) from the table; its resources go
        when the last user releases it."""
        with self._lock:
            if self._fids.get(f.num) is f:
                del self._fids[f.num]
            f.clunked = True

    def clear(self) -> list[Fid]:
        """Forget every fid (Tversion, connection end). Returns the idle ones,
        for the caller to release; busy ones are released by their last user."""
        with self._lock:
            fids = list(self._fids.values())
            self._fids.clear()
            for f in fids:
                f.clunked = True
            idle = [f for f in fids if f.users == 0]
            for f in idle:
                self.xattr_bytes = max(0, self.xattr_bytes - f.xattr_charge)
                f.xattr_charge = 0
            return idle
