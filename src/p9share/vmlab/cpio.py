"""A minimal writer (and reader, for tests) of the cpio "newc" format.

This is the format the Linux kernel unpacks as an initramfs
(Documentation/driver-api/early-userspace/buffer-format.rst). Each entry is a
110-byte ASCII header (magic ``070701`` followed by thirteen 8-digit hex fields),
the NUL-terminated name, padding to a 4-byte boundary, the data, and padding to a
4-byte boundary again. The archive ends with an entry called ``TRAILER!!!``.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

MAGIC = b"070701"
TRAILER = "TRAILER!!!"
HEADER_LEN = 110


def _pad4(n: int) -> int:
    return (4 - n % 4) % 4


@dataclass(frozen=True)
class Entry:
    """One archive member as read back by :func:`read_archive`."""

    name: str
    mode: int
    data: bytes
    rdev: tuple[int, int] = (0, 0)
    uid: int = 0
    gid: int = 0
    mtime: int = 0


class CpioWriter:
    """Writes a newc archive to a binary stream.

    Names are stored without a leading ``/`` (as ``find . | cpio`` would, minus the
    ``./``). Inode numbers are allocated from ``first_ino`` upwards; every entry has
    ``nlink == 1`` (2 for directories), so the kernel never treats two entries as hard
    links, even across concatenated archives.
    """

    def __init__(self, out: BinaryIO, *, first_ino: int = 1, mtime: int = 0) -> None:
        self._out = out
        self._ino = first_ino
        self._mtime = mtime
        self._closed = False
        self.names: set[str] = set()

    def _entry(
        self,
        name: str,
        mode: int,
        data: bytes = b"",
        *,
        uid: int = 0,
        gid: int = 0,
        nlink: int = 1,
        rdev: tuple[int, int] = (0, 0),
    ) -> None:
        if self._closed:
            raise ValueError("archive already closed")
        name = name.lstrip("/") if name != TRAILER else name
        if not name:
            raise ValueError("empty member name")
        encoded = name.encode() + b"\0"
        fields = (
            self._ino if name != TRAILER else 0,
            mode,
            uid,
            gid,
            nlink,
            self._mtime,
            len(data),
            0,  # devmajor
            0,  # devminor
            rdev[0],
            rdev[1],
            len(encoded),
            0,  # check (only used by the "crc" variant)
        )
        header = MAGIC + b"".join(b"%08X" % f for f in fields)
        assert len(header) == HEADER_LEN
        self._out.write(header + encoded + b"\0" * _pad4(HEADER_LEN + len(encoded)))
        self._out.write(data + b"\0" * _pad4(len(data)))
        self._ino += 1
        self.names.add(name)

    def add_dir(self, name: str, perm: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | perm, nlink=2)

    def add_file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | perm, data)

    def add_symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def add_chardev(self, name: str, major: int, minor: int, perm: int = 0o600) -> None:
        self._entry(name, stat.S_IFCHR | perm, rdev=(major, minor))

    def add_parents(self, name: str, perm: int = 0o755) -> None:
        """Add every missing parent directory of ``name``."""
        parts = name.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in self.names:
                self.add_dir(d, perm)

    def close(self) -> None:
        if not self._closed:
            self._entry(TRAILER, 0)
            self._closed = True


def read_archive(stream: BinaryIO) -> Iterator[Entry]:
    """Parse one newc archive (up to its trailer). Used by the tests."""
    while True:
        header = stream.read(HEADER_LEN)
        if len(header) < HEADER_LEN:
            raise ValueError("truncated cpio header")
        if header[:6] != MAGIC:
            raise ValueError(f"bad cpio magic {header[:6]!r}")
        f = [int(header[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        mode, uid, gid, mtime, size, rmaj, rmin, namesize = (
            f[1],
            f[2],
            f[3],
            f[5],
            f[6],
            f[9],
            f[10],
            f[11],
        )
        name = stream.read(namesize)[:-1].decode()
        stream.read(_pad4(HEADER_LEN + namesize))
        data = stream.read(size)
        stream.read(_pad4(size))
        if name == TRAILER:
            return
        yield Entry(name, mode, data, (rmaj, rmin), uid, gid, mtime)
