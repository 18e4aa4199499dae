"""An fsspec filesystem for any 9P2000.L server, protocol "9p".

    fs = fsspec.filesystem("9p", host="127.0.0.1", port=5640, aname="export")
    fs = fsspec.filesystem("9p", address="unix:/run/p9.sock", aname="export")
    with fsspec.open("9p://127.0.0.1:5640/dir/file.txt", "rt", aname="export") as f: ...

Paths are absolute inside the export ("/dir/file"). Registered through the
"fsspec.specs" entry point; fsspec is an optional dependency (extra "fsspec").
"""

from __future__ import annotations

import datetime
import errno
import posixpath
import stat as stat_mod
from typing import Any

from fsspec.spec import AbstractFileSystem  # type: ignore[import-untyped]

from .sync import FS

COPY_CHUNK = 4 * 1024 * 1024


def _datetime(ts: float, path: str) -> datetime.datetime:
    """A server's time as a datetime; one no calendar holds is EOVERFLOW."""
    try:
        return datetime.datetime.fromtimestamp(ts, tz=datetime.UTC)
    except (OverflowError, OSError, ValueError):
        raise OSError(errno.EOVERFLOW, f"server time {ts} is out of range", path) from None


class NinePFileSystem(AbstractFileSystem):  # type: ignore[misc]
    protocol = "9p"
    root_marker = "/"

    def __init__(
        self,
        address: str | None = None,
        *,
        host: str | None = None,
        port: int | None = None,
        aname: str = "",
        key: str | None = None,
        uname: str | None = None,
        n_uname: int | None = None,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        timeout: float | None = 30.0,
        auto_mkdir: bool = True,
        **kwargs: Any,
    ) -> None:
        """address: tcp:HOST:PORT, unix:PATH or tls:HOST:PORT; or host and
        port (tcp; port 564 by default), as a 9p://HOST:PORT/ URL gives them.
        auto_mkdir: writing a file makes its missing parent directories."""
        super().__init__(**kwargs)
        self.auto_mkdir = auto_mkdir
        if address is None:
            if host is None:
                raise ValueError("NinePFileSystem needs address= or host= (and port=)")
            address = f"tcp:{host}:{port or 564}"
        self.address = address
        self.client = FS.connect(address, aname=aname, key=key, uname=uname, n_uname=n_uname,
                                 timeout=timeout, tls_ca=tls_ca, tls_cert=tls_cert,
                                 tls_key=tls_key)  # fmt: skip

    # ------------------------------------------------------------- paths --
    @classmethod
    def _strip_protocol(cls, path: Any) -> str:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]  # type: ignore[return-value]
        path = str(path)
        if path.startswith("9p://"):
            rest = path[len("9p://") :]
            path = rest[rest.index("/") :] if "/" in rest else ""
        path = path.strip("/")
        return "/" + path if path else "/"

    @staticmethod
    def _get_kwargs_from_urls(path: str) -> dict[str, Any]:
        if not path.startswith("9p://"):
            return {}
        netloc = path[len("9p://") :].split("/", 1)[0]
        host, sep, port = netloc.rpartition(":")
        if sep and port.isdigit():
            return {"host": host.strip("[]"), "port": int(port)}
        return {"host": netloc} if netloc else {}

    # -------------------------------------------------------------- info --
    def _info_of(self, path: str, st: Any, islink: bool) -> dict[str, Any]:
        mode = st.st_mode
        kind = (
            "directory" if stat_mod.S_ISDIR(mode) else "file" if stat_mod.S_ISREG(mode) else "other"
        )
        return {
            "name": path,
            "size": st.st_size if kind != "directory" else 0,
            "type": kind,
            "mode": mode,
            "uid": st.st_uid,
            "gid": st.st_gid,
            "nlink": st.st_nlink,
            "ino": st.st_ino,
            "mtime": st.st_mtime,
            "created": st.st_ctime,
            "islink": islink,
        }

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        lst = self.client.lstat(path)
        if not stat_mod.S_ISLNK(lst.st_mode):
            return self._info_of(path, lst, False)
        try:
            st = self.client.stat(path)
        except FileNotFoundError:  # a dangling link is still an entry
            st = lst
        out = self._info_of(path, st, True)
        out["destination"] = self.client.readlink(path)
        return out

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        path = self._strip_protocol(path)
        info = self.info(path)
        if info["type"] != "directory":
            return [info] if detail else [path]
        entries = sorted(self.client.scandir(path), key=lambda e: e.name)
        names = [posixpath.join(path, e.name) for e in entries]
        if not detail:
            return names
        out = []
        stats = self.client.stat_many(names, follow_symlinks=False)  # all in flight at once
        for name, st in zip(names, stats, strict=True):
            if isinstance(st, FileNotFoundError):
                continue  # removed since the listing
            if isinstance(st, OSError):
                raise st
            if stat_mod.S_ISLNK(st.st_mode):
                out.append(self.info(name))
            else:
                out.append(self._info_of(name, st, False))
        return out

    def created(self, path: str) -> datetime.datetime:
        path = self._strip_protocol(path)
        return _datetime(self.client.stat(path).st_ctime, path)

    def modified(self, path: str) -> datetime.datetime:
        path = self._strip_protocol(path)
        return _datetime(self.client.stat(path).st_mtime, path)

    # -------------------------------------------------------- directories --
    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        path = self._strip_protocol(path)
        if create_parents:
            self.client.makedirs(path, exist_ok=True)
        else:
            self.client.mkdir(path)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        self.client.makedirs(self._strip_protocol(path), exist_ok=exist_ok)

    def rmdir(self, path: str) -> None:
        self.client.rmdir(self._strip_protocol(path))

    def rm_file(self, path: str) -> None:
        self.client.remove(self._strip_protocol(path))

    def _rm(self, path: str) -> None:
        path = self._strip_protocol(path)
        if stat_mod.S_ISDIR(self.client.lstat(path).st_mode):
            self.client.rmdir(path)
        else:
            self.client.remove(path)

    def rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None) -> None:
        if recursive and maxdepth is None:  # whole trees: one rmtree each
            for p in self.expand_path(path, recursive=False):
                self.client.rmtree(self._strip_protocol(p))
            return
        paths = self.expand_path(path, recursive=recursive, maxdepth=maxdepth)
        for p in reversed(paths):  # children come after their parents
            self._rm(p)

    # -------------------------------------------------------------- files --
    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: int | None = None,
        autocommit: bool = True,
        cache_options: Any = None,
        **kwargs: Any,
    ) -> Any:
        if not autocommit:
            raise NotImplementedError("9p files are written in place (autocommit only)")
        buffering = block_size if block_size and block_size > 1 else -1
        path = self._strip_protocol(path)
        if "r" not in mode:
            self._make_parent(path)
        return self.client.open(path, mode, buffering)

    def _make_parent(self, path: str) -> None:
        if self.auto_mkdir:
            self.client.makedirs(posixpath.dirname(path), exist_ok=True)

    def cat_file(
        self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any
    ) -> bytes:
        path = self._strip_protocol(path)
        if start is None and end is None:
            return self.client.read_bytes(path)
        with self.client.open(path, "rb", buffering=0) as f:
            size = f.stat().st_size
            lo = 0 if start is None else (start if start >= 0 else max(size + start, 0))
            hi = size if end is None else (end if end >= 0 else max(size + end, 0))
            f.seek(lo)
            # In pieces to hi or the end of the file: memory follows the
            # bytes that come, not a size the server claims.
            parts = []
            while lo < hi and (data := f.read(min(hi - lo, COPY_CHUNK))):
                parts.append(data)
                lo += len(data)
            return b"".join(parts)

    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        open_mode = "xb" if mode == "create" else "wb"
        path = self._strip_protocol(path)
        self._make_parent(path)
        with self.client.open(path, open_mode) as f:
            f.write(value)

    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        src, dst = self._strip_protocol(path1), self._strip_protocol(path2)
        if self.isdir(src):
            self.client.makedirs(dst, exist_ok=True)
            return
        self._make_parent(dst)
        with (
            self.client.open(src, "rb", buffering=0) as fin,
            self.client.open(dst, "wb", buffering=0) as fout,
        ):
            while data := fin.read(COPY_CHUNK):
                view = memoryview(data)
                while view:
                    view = view[fout.write(view) :]

    def mv(self, path1: Any, path2: Any, recursive: bool = False, maxdepth: Any = None,
           **kwargs: Any) -> None:  # fmt: skip
        """A server-side rename when both are single paths; else copy + rm."""
        if (
            isinstance(path1, str)
            and isinstance(path2, str)
            and not any(ch in path1 for ch in "*?[")
        ):
            src, dst = self._strip_protocol(path1), self._strip_protocol(path2)
            if self.isdir(dst):
                dst = posixpath.join(dst, posixpath.basename(src))
            self.client.rename(src, dst)
            return
        super().mv(path1, path2, recursive=recursive, maxdepth=maxdepth, **kwargs)

    def close(self) -> None:
        self.client.close()
