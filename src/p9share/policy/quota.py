"""Per-export quotas on bytes and on file count (like Xen's 9pfsd limits).

A ledger starts from what the export holds at start-up (the backend counts
it: apparent sizes of regular files, every inode once) and then counts what
guests do: files created and removed, bytes added by writes and
truncates. Changes made on the host behind the server's back are not seen
until the next start; the quota bounds what guests can add, it is not a host
filesystem quota.

A write or truncate measures the file, charges the difference and then
changes it; the server holds the file's size lock (size_lock) across the
three, so another size change of that file cannot slip in between and the
ledger moves by what the disk did.
"""

from __future__ import annotations

import errno
import threading

from . import Export
from .errors import PolicyError

# stripes of the per-file size locks: files that share one only take turns
_SIZE_STRIPES = 64


class QuotaLedger:
    """What one export holds, against its limits; thread-safe."""

    def __init__(self, export: Export, bytes_used: int = 0, files_used: int = 0) -> None:
        self.export = export
        self.bytes_used = bytes_used
        self.files_used = files_used
        self._lock = threading.Lock()
        self._size_locks = tuple(threading.Lock() for _ in range(_SIZE_STRIPES))

    def size_lock(self, file_key: int) -> threading.Lock:
        """The lock to hold while measuring, charging and changing the size
        of the file identified by file_key (its qid path: hard links share
        it). charge and refund may be called while holding it."""
        return self._size_locks[file_key % _SIZE_STRIPES]

    def charge(self, nbytes: int = 0, nfiles: int = 0) -> None:
        """Count nbytes and nfiles more, or raise EDQUOT and count nothing."""
        with self._lock:
            limit_b, limit_f = self.export.quota_bytes, self.export.quota_files
            if nbytes > 0 and limit_b and self.bytes_used + nbytes > limit_b:
                raise PolicyError(errno.EDQUOT, f"export {self.export.name!r} would exceed "
                                  f"its quota of {limit_b} bytes", "quota-bytes")  # fmt: skip
            if nfiles > 0 and limit_f and self.files_used + nfiles > limit_f:
                raise PolicyError(errno.EDQUOT, f"export {self.export.name!r} would exceed "
                                  f"its quota of {limit_f} files", "quota-files")  # fmt: skip
            self.bytes_used = max(0, self.bytes_used + nbytes)
            self.files_used = max(0, self.files_used + nfiles)

    def refund(self, nbytes: int = 0, nfiles: int = 0) -> None:
        with self._lock:
            self.bytes_used = max(0, self.bytes_used - nbytes)
            self.files_used = max(0, self.files_used - nfiles)
