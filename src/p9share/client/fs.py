"""The path-level asyncio API, shaped like os / os.path / shutil.

Paths are POSIX paths inside the export: '/a/b' and 'a/b' name the same
file, '..' never climbs above the export root. A final symlink is followed
where the os function would follow it (stat, open, chmod, ...), reading the
link and resolving it client-side (9P walks do not follow links); an
absolute link target is taken relative to the export root.
Errors are OSError subclasses with the server's errno and the path.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import posixpath
import socket
import stat as stat_mod
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field

from ..protocol import constants as c
from ..protocol.messages import Rgetattr
from ..protocol.wire import Qid
from ..security.auth import Key
from .aio import DEFAULT_MSIZE, DEFAULT_TIMEOUT, Client
from .errors import ConnectionLost, protocol_error, remote_error, with_path

MAX_SYMLINKS = 40
MAX_DIR_ENTRIES = 1 << 22  # one listing; a server could otherwise list for ever
PATH_MAX = 4096  # as Linux: a path, with its NUL
_UNSUPPORTED = (errno.EOPNOTSUPP, errno.ENOSYS)
_NS = 10**9


def split_path(path: str) -> list[str]:
    """The names of path below the root ('..' is clamped at the root)."""
    if not isinstance(path, str):
        path = os.fsdecode(path)
    if "\0" in path:
        raise ValueError("embedded null character in path")
    norm = posixpath.normpath("/" + path)
    if len(norm.encode("utf-8", "surrogateescape")) >= PATH_MAX:
        raise remote_error(errno.ENAMETOOLONG, path[:64] + "...")
    return [p for p in norm.split("/") if p]


def join_path(names: list[str]) -> str:
    return "/" + "/".join(names)


def stat_result(r: Rgetattr) -> os.stat_result:
    """An os.stat_result from an Rgetattr."""
    at = r.atime_sec * _NS + r.atime_nsec
    mt = r.mtime_sec * _NS + r.mtime_nsec
    ct = r.ctime_sec * _NS + r.ctime_nsec
    return os.stat_result(
        (
            r.mode, r.qid.path, 0, r.nlink, r.uid, r.gid, r.size,
            r.atime_sec, r.mtime_sec, r.ctime_sec,
            at / _NS, mt / _NS, ct / _NS, at, mt, ct,
            r.blksize, r.blocks, r.rdev,
        )
    )  # fmt: skip


@dataclass(slots=True)
class DirEntry:
    """Like os.DirEntry. is_dir()/is_file() of a symlink follow it only when
    a stat function is attached (the sync API attaches one)."""

    name: str
    path: str
    d_type: int
    ino: int
    stat_fn: Callable[[str, bool], os.stat_result] | None = field(default=None, repr=False)

    def inode(self) -> int:
        return self.ino

    def is_symlink(self) -> bool:
        return self.d_type == c.DT_LNK

    def _followed_mode(self) -> int | None:
        if self.stat_fn is None:
            return None
        try:
            return self.stat_fn(self.path, True).st_mode
        except OSError:
            return None

    def is_dir(self, *, follow_symlinks: bool = True) -> bool:
        if self.d_type == c.DT_LNK and follow_symlinks:
            mode = self._followed_mode()
            return mode is not None and stat_mod.S_ISDIR(mode)
        return self.d_type == c.DT_DIR

    def is_file(self, *, follow_symlinks: bool = True) -> bool:
        if self.d_type == c.DT_LNK and follow_symlinks:
            mode = self._followed_mode()
            return mode is not None and stat_mod.S_ISREG(mode)
        return self.d_type == c.DT_REG

    def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
        if self.stat_fn is None:
            raise TypeError("use 'await fs.stat(entry.path)' with the async API")
        return self.stat_fn(self.path, follow_symlinks)


@dataclass(slots=True)
class OpenMode:
    """A parsed open() mode string."""

    readable: bool
    writable: bool
    append: bool
    create: bool
    exclusive: bool
    truncate: bool
    binary: bool

    @property
    def flags(self) -> int:
        if self.readable and self.writable:
            flags = c.L_O_RDWR
        elif self.writable:
            flags = c.L_O_WRONLY
        else:
            flags = c.L_O_RDONLY
        if self.truncate:
            flags |= c.L_O_TRUNC
        return flags


def parse_mode(mode: str) -> OpenMode:
    chars = set(mode)
    if len(chars) != len(mode) or not chars <= set("rwaxbt+") or len(chars & set("rwax")) != 1:
        raise ValueError(f"invalid mode: {mode!r}")
    if "b" in chars and "t" in chars:
        raise ValueError(f"invalid mode: {mode!r}")
    plus = "+" in chars
    return OpenMode(
        readable="r" in chars or plus,
        writable="r" not in chars or plus,
        append="a" in chars,
        create="r" not in chars,
        exclusive="x" in chars,
        truncate="w" in chars,
        binary="b" in chars,
    )


class AsyncFile:
    """An open remote file: positioned pread/pwrite plus locks and attributes."""

    def __init__(self, fs: AsyncFS, fid: int, path: str, mode: OpenMode, iounit: int) -> None:
        self.fs = fs
        self.fid = fid
        self.path = path
        self.mode = mode
        self.iounit = iounit
        self.closed = False

    def _check(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file")

    async def pread(self, size: int, offset: int) -> bytes:
        self._check()
        try:
            return await self.fs.client.pread(self.fid, offset, size, self.iounit)
        except OSError as e:
            raise with_path(e, self.path) from None

    async def pwrite(self, data: bytes | memoryview, offset: int) -> int:
        self._check()
        try:
            return await self.fs.client.pwrite(self.fid, offset, data, self.iounit)
        except OSError as e:
            raise with_path(e, self.path) from None

    async def stat(self) -> os.stat_result:
        self._check()
        return stat_result(await self.fs.client.getattr(self.fid))

    async def truncate(self, size: int) -> None:
        self._check()
        await self.fs.client.setattr(self.fid, c.SetattrValid.SIZE, size=size)

    async def fsync(self, datasync: bool = False) -> None:
        self._check()
        await self.fs.client.fsync(self.fid, datasync)

    async def lock(self, type: int, start: int = 0, length: int = 0, *, wait: bool = False) -> bool:
        """A POSIX byte-range lock (type LOCK_TYPE_RDLCK/WRLCK/UNLCK; length 0
        is to end of file). False if it is held elsewhere and wait is False;
        with wait, retries until granted. Without wait, a server still in its
        grace period after the client's timeout (30 s if none) is ENOLCK."""
        self._check()
        flags = c.LOCK_FLAGS_BLOCK if wait else 0
        delay = 0.01
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.fs.client.timeout or DEFAULT_TIMEOUT)
        while True:
            status = await self.fs.client.lock(
                self.fid, type, flags, start, length, self.fs.proc_id, self.fs.client_id
            )
            if status == c.LOCK_SUCCESS:
                return True
            if status == c.LOCK_ERROR:
                raise remote_error(errno.ENOLCK, self.path)
            if status not in (c.LOCK_BLOCKED, c.LOCK_GRACE):
                raise with_path(protocol_error(f"Rlock status {status}"), self.path)
            if status == c.LOCK_BLOCKED and not wait:
                return False
            if not wait and loop.time() >= deadline:
                raise remote_error(
                    errno.ENOLCK, self.path, None, "server stays in its grace period"
                )
            await asyncio.sleep(delay)  # blocked (waiting) or grace period
            delay = min(delay * 2, 0.5)

    async def getlock(
        self, type: int = c.LOCK_TYPE_WRLCK, start: int = 0, length: int = 0
    ) -> tuple[int, int, int, int, str] | None:
        """The lock that would block one of type over the range, as
        (type, start, length, proc_id, client_id); None if none would."""
        self._check()
        r = await self.fs.client.getlock(
            self.fid, type, start, length, self.fs.proc_id, self.fs.client_id
        )
        if r.type == c.LOCK_TYPE_UNLCK:
            return None
        return (r.type, r.start, r.length, r.proc_id, r.client_id)

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            await self.fs.client.clunk(self.fid)

    async def __aenter__(self) -> AsyncFile:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncFS:
    """A 9P2000.L export seen as a file system. ``await AsyncFS.connect(...)``."""

    def __init__(self, client: Client, root: int, root_qid: Qid) -> None:
        self.client = client
        self.root = root
        self.root_qid = root_qid
        self.gid = os.getgid()  # group of files we create
        self.proc_id = os.getpid()
        self.client_id = socket.gethostname()[:64]

    @classmethod
    async def connect(
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
    ) -> AsyncFS:
        """Connect to address (tcp:HOST:PORT, unix:PATH, tls:HOST:PORT) and
        attach to aname, authenticating with key (a Key or key file) if given.
        timeout bounds the connect and then each request (client.timeout)."""
        client = await Client.connect(address, msize=msize, timeout=timeout,
                                      tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key)  # fmt: skip
        try:
            fid, qid = await client.attach(aname, uname, n_uname, key=key)
        except BaseException:
            await client.close()
            raise
        return cls(client, fid, qid)

    async def close(self) -> None:
        """Clunk the root and close; a server that stops answering delays
        this by at most a few seconds."""
        try:
            if not self.client.closed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.client.quiesce(), 2)
                with contextlib.suppress(OSError, TimeoutError):
                    await asyncio.wait_for(self.client.clunk(self.root), 2)
        finally:
            await self.client.close()

    async def __aenter__(self) -> AsyncFS:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------ walking --
    async def walk_fid(self, path: str, *, follow_symlinks: bool = False) -> tuple[int, Qid, str]:
        """A fresh fid for path (the caller clunks it), its qid, and the path
        it resolved to."""
        names = split_path(path)
        for _ in range(MAX_SYMLINKS):
            try:
                fid, qids = await self.client.walk(self.root, names)
            except OSError as e:
                raise with_path(e, path) from None
            qid = qids[-1] if qids else self.root_qid
            if not (follow_symlinks and qid.type & c.QidType.SYMLINK):
                return fid, qid, join_path(names)
            try:
                target = await self.client.readlink(fid)
            finally:
                self.client.clunk_soon(fid)
            if target.startswith("/"):
                names = split_path(target)
            else:
                names = split_path(posixpath.join(join_path(names[:-1]), target))
        raise remote_error(errno.ELOOP, path)

    async def _parent(self, path: str) -> tuple[int, str]:
        """A fid for path's directory and its last name."""
        names = split_path(path)
        if not names:
            raise remote_error(errno.EBUSY, path)  # the root has no parent entry
        try:
            fid, _, _ = await self.walk_fid(join_path(names[:-1]))
        except OSError as e:  # name the path asked about, as os.mkdir("/a/b/c") does
            if e.errno is None or isinstance(e, ConnectionLost):
                raise
            raise remote_error(e.errno, path, None, e.strerror) from None
        return fid, names[-1]

    # ------------------------------------------------------- attributes --
    async def stat(self, path: str, *, follow_symlinks: bool = True) -> os.stat_result:
        fid, _, _ = await self.walk_fid(path, follow_symlinks=follow_symlinks)
        try:
            return stat_result(await self.client.getattr(fid))
        except OSError as e:
            raise with_path(e, path) from None
        finally:
            self.client.clunk_soon(fid)

    async def stat_many(
        self, paths: list[str], *, follow_symlinks: bool = True
    ) -> list[os.stat_result | OSError]:
        """stat of many paths at once (all in flight together); a path that
        fails gives its OSError in place of a result."""

        async def one(p: str) -> os.stat_result | OSError:
            try:
                return await self.stat(p, follow_symlinks=follow_symlinks)
            except OSError as e:
                if isinstance(e, ConnectionLost):
                    raise
                return e

        return list(await asyncio.gather(*(one(p) for p in paths)))

    async def lstat(self, path: str) -> os.stat_result:
        return await self.stat(path, follow_symlinks=False)

    async def exists(self, path: str) -> bool:
        try:
            await self.stat(path)
        except FileNotFoundError:
            return False
        return True

    async def isdir(self, path: str) -> bool:
        try:
            return stat_mod.S_ISDIR((await self.stat(path)).st_mode)
        except (FileNotFoundError, NotADirectoryError):
            return False

    async def isfile(self, path: str) -> bool:
        try:
            return stat_mod.S_ISREG((await self.stat(path)).st_mode)
        except (FileNotFoundError, NotADirectoryError):
            return False

    async def _setattr(self, path: str, follow: bool, valid: int, **kw: int) -> None:
        fid, _, _ = await self.walk_fid(path, follow_symlinks=follow)
        try:
            await self.client.setattr(fid, valid, **kw)
        except OSError as e:
            raise with_path(e, path) from None
        finally:
            self.client.clunk_soon(fid)

    async def chmod(self, path: str, mode: int, *, follow_symlinks: bool = True) -> None:
        await self._setattr(path, follow_symlinks, c.SetattrValid.MODE, mode=mode)

    async def chown(self, path: str, uid: int, gid: int, *, follow_symlinks: bool = True) -> None:
        """uid or gid -1 leaves it unchanged, as in os.chown."""
        valid = (c.SetattrValid.UID if uid != -1 else 0) | (c.SetattrValid.GID if gid != -1 else 0)
        if valid:
            await self._setattr(path, follow_symlinks, valid, uid=max(uid, 0), gid=max(gid, 0))

    async def utime(
        self,
        path: str,
        times: tuple[float, float] | None = None,
        *,
        ns: tuple[int, int] | None = None,
        follow_symlinks: bool = True,
    ) -> None:
        """As os.utime: no times means now (the server's clock)."""
        if times is not None and ns is not None:
            raise ValueError("utime: you may specify either 'times' or 'ns' but not both")
        valid = c.SetattrValid.ATIME | c.SetattrValid.MTIME
        if times is None and ns is None:
            await self._setattr(path, follow_symlinks, valid)
            return
        if times is not None:
            ns = (int(times[0] * _NS), int(times[1] * _NS))
        assert ns is not None
        valid |= c.SetattrValid.ATIME_SET | c.SetattrValid.MTIME_SET
        await self._setattr(path, follow_symlinks, valid, atime_ns=ns[0], mtime_ns=ns[1])

    async def truncate(self, path: str, length: int) -> None:
        await self._setattr(path, True, c.SetattrValid.SIZE, size=length)

    async def statfs(self, path: str = "/") -> os.statvfs_result:
        """As os.statvfs (f_fsid included)."""
        fid, _, _ = await self.walk_fid(path)
        try:
            r = await self.client.statfs(fid)
        except OSError as e:
            raise with_path(e, path) from None
        finally:
            self.client.clunk_soon(fid)
        return os.statvfs_result(
            (r.bsize, r.bsize, r.blocks, r.bfree, r.bavail, r.files, r.ffree, r.ffree, 0,
             r.namelen, r.fsid)
        )  # fmt: skip

    # -------------------------------------------------------- directories --
    async def scandir(self, path: str = "/") -> list[DirEntry]:
        fid, _, _ = await self.walk_fid(path, follow_symlinks=True)
        entries: list[DirEntry] = []
        try:
            await self.client.lopen(fid, c.L_O_RDONLY | c.L_O_DIRECTORY)
            offset = 0
            asked = {0}  # cookies are opaque: a repeated one means the listing loops
            while True:
                batch = await self.client.readdir(fid, offset)
                if not batch:
                    break
                if len(entries) + len(batch) > MAX_DIR_ENTRIES:
                    raise remote_error(errno.EOVERFLOW, path, None,
                                       f"more than {MAX_DIR_ENTRIES} entries")  # fmt: skip
                for d in batch:
                    if d.name not in (".", ".."):
                        entries.append(
                            DirEntry(
                                d.name, posixpath.join(path or "/", d.name), d.type, d.qid.path
                            )
                        )
                offset = batch[-1].offset
                if offset in asked:
                    raise protocol_error(f"readdir cookie {offset} again: the listing loops")
                asked.add(offset)
        except OSError as e:
            raise with_path(e, path) from None
        finally:
            self.client.clunk_soon(fid)
        return entries

    async def listdir(self, path: str = "/") -> list[str]:
        return [e.name for e in await self.scandir(path)]

    async def walk(
        self, top: str = "/", topdown: bool = True
    ) -> AsyncIterator[tuple[str, list[str], list[str]]]:
        """As os.walk (errors below top are skipped, symlinks not followed)."""
        async for item in self.walk_or_errors(top, topdown):
            if not isinstance(item, OSError):
                yield item

    async def walk_or_errors(
        self, top: str = "/", topdown: bool = True
    ) -> AsyncGenerator[tuple[str, list[str], list[str]] | OSError, None]:
        """walk(), with the OSError of each directory that could not be
        listed in its place (the sync API's onerror). With a stack, not
        recursion: a server directory that contains itself ends at PATH_MAX
        (ENAMETOOLONG), not in a RecursionError."""
        stack: list[str | tuple[str, list[str], list[str]]] = [top]
        while stack:
            item = stack.pop()
            if not isinstance(item, str):
                yield item  # bottom-up: after everything below it
                continue
            try:
                entries = await self.scandir(item)
            except OSError as e:
                yield e
                continue
            dirs = [e.name for e in entries if e.d_type == c.DT_DIR]
            files = [e.name for e in entries if e.d_type != c.DT_DIR]
            if topdown:
                yield item, dirs, files  # the caller may prune dirs in place
            else:
                stack.append((item, dirs, files))
            stack.extend(posixpath.join(item, d) for d in reversed(dirs))

    async def mkdir(self, path: str, mode: int = 0o777) -> None:
        dfid, name = await self._parent(path)
        try:
            await self.client.mkdir(dfid, name, mode, self.gid)
        except OSError as e:
            raise with_path(e, path) from None
        finally:
            self.client.clunk_soon(dfid)

    async def makedirs(self, path: str, mode: int = 0o777, exist_ok: bool = False) -> None:
        names = split_path(path)
        if exist_ok and await self.isdir(path):
            return  # the common case, in one stat
        for i in range(1, len(names) + 1):
            sub = join_path(names[:i])
            try:
                await self.mkdir(sub, mode)
            except FileExistsError:
                if i == len(names) and not exist_ok:
                    raise
                if not await self.isdir(sub):
                    raise
        if not names and not exist_ok:
            raise remote_error(errno.EEXIST, path)

    async def _unlink(self, path: str, flags: int) -> None:
        dfid, name = await self._parent(path)
        try:
            await self.client.unlinkat(dfid, name, flags)
        except OSError as e:
            if e.errno not in _UNSUPPORTED:
                raise with_path(e, path) from None
        else:
            return
        finally:
            self.client.clunk_soon(dfid)
        await self._remove_fallback(path, flags)

    async def _remove_fallback(self, path: str, flags: int) -> None:
        """Tremove, for servers without Tunlinkat (diod)."""
        fid, qid, _ = await self.walk_fid(path)
        is_dir = bool(qid.type & c.QidType.DIR)
        if is_dir != bool(flags & c.AT_REMOVEDIR):
            self.client.clunk_soon(fid)
            raise remote_error(errno.ENOTDIR if not is_dir else errno.EISDIR, path)
        try:
            await self.client.remove(fid)
        except OSError as e:
            raise with_path(e, path) from None

    async def remove(self, path: str) -> None:
        await self._unlink(path, 0)

    unlink = remove

    async def rmdir(self, path: str) -> None:
        await self._unlink(path, c.AT_REMOVEDIR)

    async def rmtree(self, path: str) -> None:
        """Remove path and everything below it (symlinks are not followed)."""
        st = await self.lstat(path)
        if not stat_mod.S_ISDIR(st.st_mode):
            await self.remove(path)
            return
        entries = await self.scandir(path)
        for i in range(0, len(entries), 32):  # removals in flight together
            await asyncio.gather(
                *(
                    self.rmtree(e.path) if e.d_type == c.DT_DIR else self.remove(e.path)
                    for e in entries[i : i + 32]
                )
            )
        await self.rmdir(path)

    async def rename(self, src: str, dst: str) -> None:
        sfid, sname = await self._parent(src)
        try:
            dfid, dname = await self._parent(dst)
            try:
                try:
                    await self.client.renameat(sfid, sname, dfid, dname)
                except OSError as e:
                    if e.errno not in _UNSUPPORTED:
                        raise
                    await self._rename_fallback(src, dfid, dname)
            finally:
                self.client.clunk_soon(dfid)
        except OSError as e:
            raise with_path(e, src, dst) from None
        finally:
            self.client.clunk_soon(sfid)

    async def _rename_fallback(self, src: str, dfid: int, dname: str) -> None:
        """Trename, for servers without Trenameat (diod)."""
        fid, _, _ = await self.walk_fid(src)
        try:
            await self.client.rename(fid, dfid, dname)
        finally:
            self.client.clunk_soon(fid)

    replace = rename

    # -------------------------------------------------------------- links --
    async def symlink(self, target: str, path: str) -> None:
        """Make path a symlink to target (argument order of os.symlink)."""
        dfid, name = await self._parent(path)
        try:
            await self.client.symlink(dfid, name, target, self.gid)
        except OSError as e:
            raise with_path(e, path) from None
        finally:
            self.client.clunk_soon(dfid)

    async def readlink(self, path: str) -> str:
        fid, _, _ = await self.walk_fid(path)
        try:
            return await self.client.readlink(fid)
        except OSError as e:
            raise with_path(e, path) from None
        finally:
            self.client.clunk_soon(fid)

    async def link(self, src: str, dst: str) -> None:
        """Make dst a hard link to src."""
        fid, _, _ = await self.walk_fid(src)
        try:
            dfid, name = await self._parent(dst)
            try:
                await self.client.link(dfid, fid, name)
            finally:
                self.client.clunk_soon(dfid)
        except OSError as e:
            raise with_path(e, src, dst) from None
        finally:
            self.client.clunk_soon(fid)

    async def mknod(self, path: str, mode: int = 0o600 | stat_mod.S_IFREG, device: int = 0) -> None:
        dfid, name = await self._parent(path)
        try:
            await self.client.mknod(dfid, name, mode, os.major(device), os.minor(device), self.gid)
        except OSError as e:
            raise with_path(e, path) from None
        finally:
            self.client.clunk_soon(dfid)

    # -------------------------------------------------------------- xattrs --
    async def getxattr(self, path: str, name: str, *, follow_symlinks: bool = True) -> bytes:
        fid, _, _ = await self.walk_fid(path, follow_symlinks=follow_symlinks)
        try:
            return await self.client.read_xattr(fid, name)
        except OSError as e:
            raise with_path(e, path) from None
        finally:
            self.client.clunk_soon(fid)

    async def listxattr(self, path: str, *, follow_symlinks: bool = True) -> list[str]:
        fid, _, _ = await self.walk_fid(path, follow_symlinks=follow_symlinks)
        try:
            data = await self.client.read_xattr(fid, "")
        except OSError as e:
            raise with_path(e, path) from None
        finally:
            self.client.clunk_soon(fid)
        return [n for n in data.decode("utf-8", "surrogateescape").split("\0") if n]

    async def setxattr(
        self, path: str, name: str, value: bytes, flags: int = 0, *, follow_symlinks: bool = True
    ) -> None:
        """flags: 0, os.XATTR_CREATE or os.XATTR_REPLACE (the same numbers on the wire)."""
        fid, _, _ = await self.walk_fid(path, follow_symlinks=follow_symlinks)
        try:
            await self.client.xattrcreate(fid, name, len(value), flags)
            if value:
                n = await self.client.pwrite(fid, 0, value)
                if n != len(value):
                    raise remote_error(errno.EIO, path)
        except OSError as e:
            self.client.clunk_soon(fid)
            raise with_path(e, path) from None
        try:
            await self.client.clunk(fid)  # the clunk commits the value
        except OSError as e:
            raise with_path(e, path) from None

    async def removexattr(self, path: str, name: str, *, follow_symlinks: bool = True) -> None:
        """An empty Txattrcreate with XATTR_REPLACE removes it (as Linux does)."""
        await self.setxattr(path, name, b"", c.XATTR_REPLACE, follow_symlinks=follow_symlinks)

    # --------------------------------------------------------------- files --
    async def open(self, path: str, mode: str = "rb", perm: int = 0o666) -> AsyncFile:
        """Open path with an open() mode string (text/binary is the caller's
        business here; the sync API builds io wrappers on top)."""
        om = parse_mode(mode)
        flags = om.flags
        if om.exclusive:
            return await self._create(path, om, flags | c.L_O_EXCL, perm)
        try:
            fid, qid, real = await self.walk_fid(path, follow_symlinks=True)
        except FileNotFoundError:
            if not om.create:
                raise
            return await self._create(path, om, flags, perm)
        if qid.type & c.QidType.DIR and om.writable:
            self.client.clunk_soon(fid)
            raise remote_error(errno.EISDIR, path)
        try:
            _, iounit = await self.client.lopen(fid, flags)
        except OSError as e:
            self.client.clunk_soon(fid)
            raise with_path(e, path) from None
        return AsyncFile(self, fid, real, om, iounit)

    async def _create(self, path: str, om: OpenMode, flags: int, perm: int) -> AsyncFile:
        fid, name = await self._parent(path)
        try:
            _, iounit = await self.client.lcreate(fid, name, flags | c.L_O_CREAT, perm, self.gid)
        except OSError as e:
            self.client.clunk_soon(fid)
            raise with_path(e, path) from None
        return AsyncFile(self, fid, join_path(split_path(path)), om, iounit)

    async def read_bytes(self, path: str) -> bytes:
        async with await self.open(path, "rb") as f:
            size = (await f.stat()).st_size
            data = await f.pread(max(size, 1), 0)
            if len(data) < size or size == 0:
                return data
            rest = [data]
            offset = len(data)
            while chunk := await f.pread(1 << 20, offset):
                rest.append(chunk)
                offset += len(chunk)
            return b"".join(rest)

    async def write_bytes(self, path: str, data: bytes | memoryview) -> int:
        async with await self.open(path, "wb") as f:
            return await f.pwrite(data, 0)
