"""Client subcommands of the p9share command line, for any 9P2000.L server:

  p9share ls ADDR [--aname NAME] [-l] [PATH]
  p9share stat ADDR [--aname NAME] PATH
  p9share cat ADDR [--aname NAME] PATH
  p9share get ADDR [--aname NAME] REMOTE LOCAL      (recursive for directories)
  p9share put ADDR [--aname NAME] LOCAL REMOTE      (recursive for directories)
  p9share rm ADDR [--aname NAME] [-r] PATH
  p9share mkdir ADDR [--aname NAME] [-p] PATH
  p9share mv ADDR [--aname NAME] OLD NEW
  p9share mount ADDR MOUNTPOINT [--aname NAME] [--read-only] [--key FILE] [--daemon]

Exit status: 0 success, 1 a remote (or local file) error, reported as one
line "p9share: CMD: PATH: message", 2 bad usage. get/put draw a progress bar
on stderr when it is a terminal (--progress=always forces it).
"""

from __future__ import annotations

import argparse
import os
import posixpath
import stat
import sys
import time
from collections.abc import Callable
from typing import IO, Any

from .client.sync import FS
from .protocol.constants import DT_DIR, DT_LNK

CHUNK = 4 * 1024 * 1024  # one read/write call; split into pipelined 9P requests


class Progress:
    """A one-line progress bar, redrawn at most ten times a second."""

    def __init__(self, label: str, total: int, stream: IO[str], enabled: bool) -> None:
        self.label = label if len(label) <= 30 else "…" + label[-29:]
        self.total = total
        self.done = 0
        self.stream = stream
        self.enabled = enabled
        self.start = time.monotonic()
        self._last = 0.0

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and now - self._last >= 0.1:
            self._last = now
            self._draw(now)

    def finish(self) -> None:
        if self.enabled:
            self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self, now: float) -> None:
        frac = min(self.done / self.total, 1.0) if self.total else 1.0
        width = 24
        bar = "#" * int(frac * width)
        rate = self.done / max(now - self.start, 1e-6)
        self.stream.write(
            f"\r{self.label:<30} {frac * 100:3.0f}% [{bar:<{width}}] "
            f"{_size(self.done)}/{_size(self.total)} {_size(int(rate))}/s"
        )
        self.stream.flush()


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


class _IntermixedParser(argparse.ArgumentParser):
    """Options may come between positionals: `ls ADDR --aname N PATH` would
    otherwise lose the optional PATH (plain argparse binds it empty early)."""

    _inner = False

    def parse_known_args(  # type: ignore[override]
        self, args: Any = None, namespace: Any = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if self._inner:
            return super().parse_known_args(args, namespace)
        self._inner = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inner = False


class Failure(Exception):
    """A one-line error for the user (exit status 1)."""


def add_commands(subparsers: Any) -> None:
    """Add the client subcommands to the p9share parser's subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("address", metavar="ADDR",
                        help="server: tcp:HOST:PORT, unix:PATH or tls:HOST:PORT")  # fmt: skip
    common.add_argument("--aname", default="", metavar="NAME", help="export to attach to")
    common.add_argument("--key", metavar="FILE", help="authenticate with this key file (Tauth)")
    common.add_argument("--tls-ca", metavar="PEM", help="CA bundle to verify a tls: server")
    common.add_argument("--tls-cert", metavar="PEM", help="client certificate for tls:")
    common.add_argument("--tls-key", metavar="PEM", help="client certificate's private key")
    common.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                        help="give up on each request after this long (default 30)")  # fmt: skip

    def add(name: str, help: str, func: Callable[[FS, argparse.Namespace], None]) -> Any:
        p = subparsers.add_parser(name, parents=[common], help=help)
        p.__class__ = _IntermixedParser  # created by cli.py's subparsers; see the class
        p.set_defaults(func=lambda args: run(name, func, args))
        return p

    p = add("ls", "list a remote directory", cmd_ls)
    p.add_argument("-l", dest="long", action="store_true", help="type, mode, size and mtime")
    p.add_argument("path", nargs="?", default="/", metavar="PATH")
    add("stat", "show a remote file's attributes", cmd_stat).add_argument("path", metavar="PATH")
    add("cat", "write a remote file to stdout", cmd_cat).add_argument("path", metavar="PATH")
    for name, help, func, a, b in (
        ("get", "copy a remote file or directory here", cmd_get, "remote", "local"),
        ("put", "copy a local file or directory to the server", cmd_put, "local", "remote"),
    ):
        p = add(name, help, func)
        p.add_argument(a, metavar=a.upper())
        p.add_argument(b, metavar=b.upper())
        p.add_argument("--progress", choices=["auto", "always", "never"], default="auto",
                       help="progress bar on stderr (auto: when it is a terminal)")  # fmt: skip
    p = add("rm", "remove a remote file (-r: a directory tree)", cmd_rm)
    p.add_argument("-r", dest="recursive", action="store_true", help="remove directories too")
    p.add_argument("path", metavar="PATH")
    p = add("mkdir", "make a remote directory", cmd_mkdir)
    p.add_argument("-p", dest="parents", action="store_true", help="make parents as needed")
    p.add_argument("path", metavar="PATH")
    p = add("mv", "rename a remote file", cmd_mv)
    p.add_argument("old", metavar="OLD")
    p.add_argument("new", metavar="NEW")
    p = subparsers.add_parser("mount", parents=[common], help="mount an export with FUSE")
    p.__class__ = _IntermixedParser
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("--read-only", action="store_true", help="mount read-only")
    p.add_argument("--daemon", action="store_true",
                   help="go to the background once the mount is up")  # fmt: skip
    p.add_argument("--reconnect-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="how long requests wait for a lost server before EIO (default 30)")  # fmt: skip
    p.add_argument("--attr-timeout", type=float, default=1.0, metavar="SECONDS",
                   help="how long the kernel caches attributes and names (default 1)")  # fmt: skip
    p.add_argument(
        "--allow-other",
        action="store_true",
        help="let other users use the mount, each as itself (one 9P attach per caller uid)",
    )
    p.set_defaults(func=cmd_mount)


def run(name: str, func: Callable[[FS, argparse.Namespace], None], args: argparse.Namespace) -> int:
    def fail(msg: str) -> int:
        print(f"p9share: {name}: {msg}", file=sys.stderr)
        return 1

    try:
        fs = FS.connect(args.address, aname=args.aname, key=args.key, timeout=args.timeout,
                        tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key)  # fmt: skip
    except ValueError as e:  # a bad address or key file: usage
        print(f"p9share: {name}: {e}", file=sys.stderr)
        return 2
    except TimeoutError:
        return fail(f"{args.address}: timed out connecting")
    except OSError as e:
        return fail(f"{args.address}: {_describe(e)}")
    try:
        func(fs, args)
    except Failure as e:
        return fail(str(e))
    except TimeoutError:
        return fail("timed out waiting for the server")
    except BrokenPipeError:
        return 1
    except OSError as e:
        where = e.filename if e.filename is not None else args.address
        return fail(f"{where}: {_describe(e)}")
    finally:
        try:
            fs.close()
        except OSError:
            pass
    return 0


def _describe(e: OSError) -> str:
    if e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


# -------------------------------------------------------------- commands --
def cmd_ls(fs: FS, args: argparse.Namespace) -> None:
    st = fs.stat(args.path)
    if not stat.S_ISDIR(st.st_mode):
        print(_long(args.path, st) if args.long else args.path)
        return
    for e in sorted(fs.scandir(args.path), key=lambda e: e.name):
        if args.long:
            print(_long(e.name, fs.lstat(e.path)))
        else:
            print(e.name)


def _long(name: str, st: os.stat_result) -> str:
    try:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(st.st_mtime))
    except (OverflowError, OSError, ValueError):  # a time no calendar holds
        when = f"@{st.st_mtime_ns // 10**9}"
    return f"{stat.filemode(st.st_mode)} {st.st_nlink:3} {st.st_size:12} {when} {name}"


def cmd_stat(fs: FS, args: argparse.Namespace) -> None:
    st = fs.lstat(args.path)
    kind = _KINDS.get(stat.S_IFMT(st.st_mode), "unknown")
    lines = [
        ("path", args.path), ("type", kind), ("mode", f"{stat.S_IMODE(st.st_mode):04o}"),
        ("size", st.st_size), ("uid", st.st_uid), ("gid", st.st_gid),
        ("nlink", st.st_nlink), ("inode", st.st_ino), ("blocks", st.st_blocks),
        ("atime", _iso(st.st_atime_ns)), ("mtime", _iso(st.st_mtime_ns)),
        ("ctime", _iso(st.st_ctime_ns)),
    ]  # fmt: skip
    if kind == "symlink":
        lines.append(("target", fs.readlink(args.path)))
    for k, v in lines:
        print(f"{k}: {v}")


_KINDS = {stat.S_IFREG: "file", stat.S_IFDIR: "directory", stat.S_IFLNK: "symlink",
          stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket", stat.S_IFCHR: "character device",
          stat.S_IFBLK: "block device"}  # fmt: skip


def _iso(ns: int) -> str:
    secs, frac = divmod(ns, 10**9)
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"
    except (OverflowError, OSError, ValueError):  # a time no calendar holds
        return f"@{secs}.{frac:09d}"


def cmd_cat(fs: FS, args: argparse.Namespace) -> None:
    out = sys.stdout.buffer
    with fs.open(args.path, "rb", buffering=0) as f:
        while data := f.read(CHUNK):
            out.write(data)
    out.flush()


def _progress_on(args: argparse.Namespace) -> bool:
    if args.progress == "always":
        return True
    return args.progress == "auto" and sys.stderr.isatty()


def cmd_get(fs: FS, args: argparse.Namespace) -> None:
    st = fs.stat(args.remote)
    local = args.local
    if os.path.isdir(local):
        local = os.path.join(local, posixpath.basename(args.remote.rstrip("/")) or "root")
    if stat.S_ISDIR(st.st_mode):
        _get_tree(fs, args.remote, local, _progress_on(args))
    else:
        _get_file(fs, args.remote, local, st, _progress_on(args))


def _get_file(
    fs: FS, remote: str, local: str, st: os.stat_result, progress: bool, follow: bool = True
) -> None:
    """follow=False below the top of a tree: a symlink already at local (the
    server listed a name twice) is refused, never written through."""
    bar = Progress(posixpath.basename(remote), st.st_size, sys.stderr, progress)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (0 if follow else os.O_NOFOLLOW)
    with fs.open(remote, "rb", buffering=0) as src, open(os.open(local, flags, 0o600), "wb") as dst:
        while data := src.read(CHUNK):
            dst.write(data)
            bar.update(len(data))
    os.chmod(local, stat.S_IMODE(st.st_mode) & 0o777)  # never set-id bits a server chose
    bar.finish()


def _get_tree(fs: FS, remote: str, local: str, progress: bool) -> None:
    """The server names what is written here: each name is one component
    (the client library checks), is written once, and nothing below local
    is followed through a symlink. A stack, not recursion: a directory that
    contains itself ends at PATH_MAX, not in a RecursionError."""
    os.makedirs(local, exist_ok=True)
    todo = [(remote, local)]
    while todo:
        rdir, ldir = todo.pop()
        seen: set[str] = set()
        for e in fs.scandir(rdir):
            if e.name in seen:
                raise Failure(f"{rdir}: the server lists {e.name!r} twice")
            seen.add(e.name)
            target = os.path.join(ldir, e.name)
            if e.d_type == DT_DIR:
                try:
                    os.mkdir(target)
                except FileExistsError:
                    if not stat.S_ISDIR(os.lstat(target).st_mode):
                        raise Failure(f"{target}: exists and is not a directory") from None
                todo.append((e.path, target))
            elif e.d_type == DT_LNK:
                if os.path.lexists(target):
                    os.unlink(target)
                os.symlink(fs.readlink(e.path), target)
            else:
                _get_file(fs, e.path, target, fs.stat(e.path), progress, follow=False)


def cmd_put(fs: FS, args: argparse.Namespace) -> None:
    local = args.local
    if not os.path.lexists(local):
        raise FileNotFoundError(2, "No such file or directory", local)
    remote = args.remote
    if fs.isdir(remote):
        remote = posixpath.join(remote, os.path.basename(os.path.normpath(local)))
    if os.path.isdir(local):
        _put_tree(fs, local, remote, _progress_on(args))
    else:
        _put_file(fs, local, remote, _progress_on(args))


def _put_file(fs: FS, local: str, remote: str, progress: bool) -> None:
    st = os.stat(local)
    bar = Progress(os.path.basename(local), st.st_size, sys.stderr, progress)
    with open(local, "rb") as src, fs.open(remote, "wb", 0, perm=stat.S_IMODE(st.st_mode)) as dst:
        while data := src.read(CHUNK):
            view = memoryview(data)
            while view:
                n = dst.write(view)
                if not n:
                    raise Failure(f"{remote}: the server accepted no bytes")
                view = view[n:]
            bar.update(len(data))
    bar.finish()


def _put_tree(fs: FS, local: str, remote: str, progress: bool) -> None:
    try:
        fs.mkdir(remote, stat.S_IMODE(os.stat(local).st_mode) | 0o700)
    except FileExistsError:
        if not fs.isdir(remote):
            raise
    with os.scandir(local) as it:
        entries = sorted(it, key=lambda e: e.name)
    for e in entries:
        target = posixpath.join(remote, e.name)
        if e.is_symlink():
            fs.symlink(os.readlink(e.path), target)
        elif e.is_dir():
            _put_tree(fs, e.path, target, progress)
        elif e.is_file():
            _put_file(fs, e.path, target, progress)
        else:
            print(f"p9share: put: {e.path}: skipped (not a regular file)", file=sys.stderr)


def cmd_rm(fs: FS, args: argparse.Namespace) -> None:
    if args.recursive:
        fs.rmtree(args.path)
        return
    if stat.S_ISDIR(fs.lstat(args.path).st_mode):
        raise IsADirectoryError(21, "Is a directory (use -r)", args.path)
    fs.remove(args.path)


def cmd_mkdir(fs: FS, args: argparse.Namespace) -> None:
    if args.parents:
        fs.makedirs(args.path, exist_ok=True)
    else:
        fs.mkdir(args.path)


def cmd_mv(fs: FS, args: argparse.Namespace) -> None:
    new = args.new
    if fs.isdir(new) and not fs.isdir(args.old):
        new = posixpath.join(new, posixpath.basename(args.old))
    fs.rename(args.old, new)


def cmd_mount(args: argparse.Namespace) -> int:
    """FUSE-mount the export until unmounted (or SIGINT/SIGTERM)."""
    try:
        from .fuse.mount import MountOptions, daemonize_and_mount, run_mount
    except ImportError as e:
        print(f"p9share: mount: FUSE support is not installed ({e}); install the "
              "'fuse' extra (pip install 'p9share[fuse]') and libfuse3", file=sys.stderr)  # fmt: skip
        return 2
    opts = MountOptions(
        args.address, args.mountpoint, aname=args.aname, read_only=args.read_only,
        key=args.key, reconnect_timeout=args.reconnect_timeout,
        attr_timeout=args.attr_timeout, allow_other=args.allow_other, timeout=args.timeout,
        tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key,
    )  # fmt: skip
    if args.daemon:
        return daemonize_and_mount(opts)

    def ready(err: str | None) -> None:
        if err is not None:
            print(f"p9share: mount: {err}", file=sys.stderr)

    return run_mount(opts, ready)
