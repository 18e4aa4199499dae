"""A remote file as a real io.RawIOBase, so io.BufferedReader/Writer/Random
and io.TextIOWrapper work on it exactly as on a local file."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from ..protocol.constants import LOCK_TYPE_WRLCK
from .fs import AsyncFile

T = TypeVar("T")
Runner = Callable[[Coroutine[Any, Any, T]], T]


class RemoteFile(io.RawIOBase):
    """Unbuffered binary I/O on an open 9P fid. run executes a coroutine of
    the file's AsyncFS to completion (the sync API's event-loop thread)."""

    def __init__(self, afile: AsyncFile, run: Runner[Any], mode: str) -> None:
        super().__init__()
        self._afile = afile
        self._run = run
        self.name = afile.path
        self.mode = mode
        self._pos = 0
        if afile.mode.append:
            self._pos = self._size()

    # ---- io.RawIOBase
    def readable(self) -> bool:
        return self._afile.mode.readable

    def writable(self) -> bool:
        return self._afile.mode.writable

    def seekable(self) -> bool:
        return True

    def _size(self) -> int:
        st: os.stat_result = self._run(self._afile.stat())
        return st.st_size

    def readinto(self, b: Any) -> int:
        self._checkClosed()
        if not self.readable():
            raise io.UnsupportedOperation("File not open for reading")
        view = memoryview(b).cast("B")
        data: bytes = self._run(self._afile.pread(len(view), self._pos))
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def readall(self) -> bytes:
        self._checkClosed()
        if not self.readable():
            raise io.UnsupportedOperation("File not open for reading")
        parts = []
        want = max(self._size() - self._pos, 0) + 1  # +1 sees EOF or growth
        while True:
            data: bytes = self._run(self._afile.pread(want, self._pos))
            if not data:
                break
            parts.append(data)
            self._pos += len(data)
            want = 1 << 20
        return b"".join(parts)

    def write(self, b: Any) -> int:
        self._checkClosed()
        if not self.writable():
            raise io.UnsupportedOperation("File not open for writing")
        if self._afile.mode.append:
            self._pos = self._size()  # O_APPEND: every write goes to the end
        data = bytes(b)
        n: int = self._run(self._afile.pwrite(data, self._pos))
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._checkClosed()
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._size() + offset
        else:
            raise ValueError(f"invalid whence ({whence}, should be 0, 1 or 2)")
        if pos < 0:
            raise OSError(22, "Invalid argument", self.name)
        self._pos = pos
        return pos

    def tell(self) -> int:
        self._checkClosed()
        return self._pos

    def truncate(self, size: int | None = None) -> int:
        self._checkClosed()
        if not self.writable():
            raise io.UnsupportedOperation("File not open for writing")
        size = self._pos if size is None else size
        self._run(self._afile.truncate(size))
        return size

    def close(self) -> None:
        if not self.closed:
            try:
                self._run(self._afile.close())
            finally:
                super().close()

    # ---- beyond io
    def stat(self) -> os.stat_result:
        """As os.fstat."""
        self._checkClosed()
        result: os.stat_result = self._run(self._afile.stat())
        return result

    def fsync(self, datasync: bool = False) -> None:
        self._checkClosed()
        self._run(self._afile.fsync(datasync))

    def lock(self, type: int, start: int = 0, length: int = 0, *, wait: bool = False) -> bool:
        """A byte-range lock; see AsyncFile.lock."""
        self._checkClosed()
        ok: bool = self._run(self._afile.lock(type, start, length, wait=wait))
        return ok

    def getlock(
        self, type: int = LOCK_TYPE_WRLCK, start: int = 0, length: int = 0
    ) -> tuple[int, int, int, int, str] | None:
        self._checkClosed()
        r: tuple[int, int, int, int, str] | None = self._run(
            self._afile.getlock(type, start, length)
        )
        return r


def wrap(
    raw: RemoteFile,
    mode: str,
    buffering: int,
    encoding: str | None,
    errors: str | None,
    newline: str | None,
    default_buffer: int,
) -> Any:
    """The io stack builtins.open() would build over raw."""
    binary = "b" in mode
    if binary and (encoding is not None or errors is not None or newline is not None):
        raise ValueError("binary mode doesn't take an encoding, errors or newline argument")
    if buffering == 0:
        if not binary:
            raise ValueError("can't have unbuffered text I/O")
        return raw
    line_buffering = buffering == 1 and not binary
    size = default_buffer if buffering in (-1, 1) else buffering
    buffered: io.BufferedIOBase
    if raw.readable() and raw.writable():
        buffered = io.BufferedRandom(raw, size)
    elif raw.writable():
        buffered = io.BufferedWriter(raw, size)
    else:
        buffered = io.BufferedReader(raw, size)
    if binary:
        return buffered
    text = io.TextIOWrapper(
        buffered, encoding or "utf-8", errors, newline, line_buffering=line_buffering
    )
    text.mode = mode  # type: ignore[misc]
    return text
