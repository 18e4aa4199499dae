"""The blocking API: the asyncio client runs on an event loop in a
background thread, and every call here waits for its result. Calls may come
from any number of threads at once (each is a request in flight on the one
connection), which is what a FUSE layer needs. Interrupting a call
(KeyboardInterrupt) cancels it, which sends a Tflush. The timeout is each
request's (see aio.Client): a call of many requests (rmtree) may take
longer, but never waits for a silent server longer than the timeout.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

from ..security.auth import Key
from .aio import DEFAULT_MSIZE, DEFAULT_TIMEOUT
from .file import RemoteFile, wrap
from .fs import AsyncFS, DirEntry

T = TypeVar("T")


class LoopThread:
    """An asyncio event loop running in a daemon thread."""

    def __init__(self, name: str = "p9share-client") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run coro on the loop and wait for it; cancelled if we are interrupted."""
        if threading.get_ident() == self._thread.ident:
            coro.close()
            raise RuntimeError("a blocking p9share call from the client's own event loop")
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout)
        except BaseException:
            fut.cancel()
            raise

    def stop(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
        if not self._thread.is_alive() and not self.loop.is_closed():
            self.loop.close()


class FS:
    """A 9P2000.L export with the os / shutil / open() vocabulary:
    ``with FS.connect("tcp:127.0.0.1:564", aname="export") as fs: ...``."""

    def __init__(self, afs: AsyncFS, loop: LoopThread) -> None:
        self.aio = afs
        self._loop = loop

    @property
    def timeout(self) -> float | None:
        """Seconds each request may wait for its reply; None waits for ever."""
        return self.aio.client.timeout

    @timeout.setter
    def timeout(self, value: float | None) -> None:
        self.aio.client.timeout = value

    @classmethod
    def connect(
        cls,
        address: str,
        *,
        aname: str = "",
        uname: str | None = None,
        n_uname: int | None = None,
        key: Key | str | os.PathLike[str] | None = None,
        msize: int = DEFAULT_MSIZE,
        timeout: float | None = DEFAULT_TIMEOUT,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
    ) -> FS:
        """See AsyncFS.connect; timeout bounds the connect and each later request."""
        loop = LoopThread()
        try:
            afs = loop.run(
                AsyncFS.connect(
                    address, aname=aname, uname=uname, n_uname=n_uname, key=key, msize=msize,
                    timeout=timeout, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key,
                )
            )  # fmt: skip
        except BaseException:
            loop.stop()
            raise
        return cls(afs, loop)

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run any coroutine of this connection (e.g. a message-level call on
        self.aio.client) from a thread, waiting for its result."""
        return self._loop.run(coro)

    def close(self) -> None:
        try:
            if not self._loop.loop.is_closed():
                self._loop.run(self.aio.close(), 10)
        finally:
            self._loop.stop()

    def __enter__(self) -> FS:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def msize(self) -> int:
        return self.aio.client.msize

    # ------------------------------------------------------------- files --
    def open(
        self,
        path: str,
        mode: str = "r",
        buffering: int = -1,
        encoding: str | None = None,
        errors: str | None = None,
        newline: str | None = None,
        *,
        perm: int = 0o666,
    ) -> Any:
        """As builtins.open (text defaults to UTF-8). buffering=0 in binary
        mode gives the RemoteFile itself."""
        afile = self.call(self.aio.open(path, mode, perm))
        try:
            raw = RemoteFile(afile, self.call, mode)
            return wrap(raw, mode, buffering, encoding, errors, newline,
                        max(64 * 1024, min(self.aio.client.iosize, 1 << 20)))  # fmt: skip
        except BaseException:
            if not afile.closed:
                self.call(afile.close())
            raise

    def read_bytes(self, path: str) -> bytes:
        return self.call(self.aio.read_bytes(path))

    def write_bytes(self, path: str, data: bytes) -> int:
        return self.call(self.aio.write_bytes(path, data))

    def read_text(self, path: str, encoding: str = "utf-8") -> str:
        return self.read_bytes(path).decode(encoding)

    def write_text(self, path: str, text: str, encoding: str = "utf-8") -> int:
        self.write_bytes(path, text.encode(encoding))
        return len(text)

    # -------------------------------------------------------- attributes --
    def stat(self, path: str, *, follow_symlinks: bool = True) -> os.stat_result:
        return self.call(self.aio.stat(path, follow_symlinks=follow_symlinks))

    def stat_many(
        self, paths: list[str], *, follow_symlinks: bool = True
    ) -> list[os.stat_result | OSError]:
        """See AsyncFS.stat_many: one round trip's latency for many paths."""
        return self.call(self.aio.stat_many(paths, follow_symlinks=follow_symlinks))

    def lstat(self, path: str) -> os.stat_result:
        return self.call(self.aio.lstat(path))

    def exists(self, path: str) -> bool:
        return self.call(self.aio.exists(path))

    def isdir(self, path: str) -> bool:
        return self.call(self.aio.isdir(path))

    def isfile(self, path: str) -> bool:
        return self.call(self.aio.isfile(path))

    def chmod(self, path: str, mode: int, *, follow_symlinks: bool = True) -> None:
        self.call(self.aio.chmod(path, mode, follow_symlinks=follow_symlinks))

    def chown(self, path: str, uid: int, gid: int, *, follow_symlinks: bool = True) -> None:
        self.call(self.aio.chown(path, uid, gid, follow_symlinks=follow_symlinks))

    def utime(
        self,
        path: str,
        times: tuple[float, float] | None = None,
        *,
        ns: tuple[int, int] | None = None,
        follow_symlinks: bool = True,
    ) -> None:
        self.call(self.aio.utime(path, times, ns=ns, follow_symlinks=follow_symlinks))

    def truncate(self, path: str, length: int) -> None:
        self.call(self.aio.truncate(path, length))

    def statfs(self, path: str = "/") -> os.statvfs_result:
        return self.call(self.aio.statfs(path))

    statvfs = statfs

    # ------------------------------------------------------- directories --
    def scandir(self, path: str = "/") -> Iterator[DirEntry]:
        entries = self.call(self.aio.scandir(path))
        for e in entries:
            e.stat_fn = self._entry_stat
        return iter(entries)

    def _entry_stat(self, path: str, follow: bool) -> os.stat_result:
        return self.stat(path, follow_symlinks=follow)

    def listdir(self, path: str = "/") -> list[str]:
        return self.call(self.aio.listdir(path))

    def walk(
        self,
        top: str = "/",
        topdown: bool = True,
        onerror: Callable[[OSError], object] | None = None,
    ) -> Iterator[tuple[str, list[str], list[str]]]:
        """As os.walk (symlinks to directories are listed, not followed)."""
        walker = self.aio.walk_or_errors(top, topdown)

        async def step() -> tuple[str, list[str], list[str]] | OSError | None:
            return await anext(walker, None)

        try:
            while (item := self.call(step())) is not None:
                if not isinstance(item, OSError):
                    yield item
                elif onerror is not None:
                    onerror(item)
        finally:
            if self._loop.loop.is_running():  # not when collected after close()
                self.call(walker.aclose())

    def mkdir(self, path: str, mode: int = 0o777) -> None:
        self.call(self.aio.mkdir(path, mode))

    def makedirs(self, path: str, mode: int = 0o777, exist_ok: bool = False) -> None:
        self.call(self.aio.makedirs(path, mode, exist_ok))

    def remove(self, path: str) -> None:
        self.call(self.aio.remove(path))

    unlink = remove

    def rmdir(self, path: str) -> None:
        self.call(self.aio.rmdir(path))

    def rmtree(self, path: str) -> None:
        self.call(self.aio.rmtree(path))

    def rename(self, src: str, dst: str) -> None:
        self.call(self.aio.rename(src, dst))

    replace = rename

    # ------------------------------------------------------------- links --
    def symlink(self, target: str, path: str) -> None:
        self.call(self.aio.symlink(target, path))

    def readlink(self, path: str) -> str:
        return self.call(self.aio.readlink(path))

    def link(self, src: str, dst: str) -> None:
        self.call(self.aio.link(src, dst))

    def mknod(self, path: str, mode: int = 0o600 | 0o100000, device: int = 0) -> None:
        self.call(self.aio.mknod(path, mode, device))

    # ------------------------------------------------------------ xattrs --
    def getxattr(self, path: str, name: str, *, follow_symlinks: bool = True) -> bytes:
        return self.call(self.aio.getxattr(path, name, follow_symlinks=follow_symlinks))

    def setxattr(
        self, path: str, name: str, value: bytes, flags: int = 0, *, follow_symlinks: bool = True
    ) -> None:
        self.call(self.aio.setxattr(path, name, value, flags, follow_symlinks=follow_symlinks))

    def listxattr(self, path: str, *, follow_symlinks: bool = True) -> list[str]:
        return self.call(self.aio.listxattr(path, follow_symlinks=follow_symlinks))

    def removexattr(self, path: str, name: str, *, follow_symlinks: bool = True) -> None:
        self.call(self.aio.removexattr(path, name, follow_symlinks=follow_symlinks))


def connect(address: str, **kw: Any) -> FS:
    """FS.connect(address, aname=..., key=..., ...)."""
    return FS.connect(address, **kw)
