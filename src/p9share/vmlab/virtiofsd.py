"""vhost-user-fs back ends for virtio-fs guests: QEMU's virtiofsd (the reference
peer, beside diod for 9P) and p9share's own ``serve --listen vhost-user:SOCK``.

Both listen on a Unix socket that QEMU connects to (``run_guest(transport=
"virtiofs", socket_path=...)``). Readiness is checked passively, in
/proc/net/unix: virtiofsd accepts exactly one connection and exits when it
closes, so a probe connection would use up the guest's.

virtiofsd (``/usr/lib/qemu/virtiofsd``, the C one of qemu-system-common 7.2)::

    virtiofsd --socket-path=SOCK -o source=DIR -o cache=none|auto|always
              -o sandbox=namespace|chroot [-o xattr -o posix_lock -o flock]

As root its default sandbox (``namespace``: mount, pid and net namespaces and
pivot_root into DIR) works on this host; after QEMU connects it forks into the
new pid namespace, so its CPU time is the process tree's. Observed here: it
leaves the socket file behind when it exits, and it serves no second connection
(the socket is closed after the first accept).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

from .assets import VMLabError, apt_install
from .diod import stop_process

CACHE_MODES = ("none", "auto", "always")
SANDBOXES = ("namespace", "chroot")
VIRTIOFSD_PATHS = ("/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd")
_SO_ACCEPTCON = 0x10000  # /proc/net/unix "Flags": a listening socket


def unix_socket_listening(path: str | os.PathLike[str]) -> bool:
    """True if some process listens on the Unix socket ``path`` (in this network
    namespace), read from /proc/net/unix without connecting to it."""
    want = os.fspath(path)
    try:
        with open("/proc/net/unix", encoding="utf-8", errors="replace") as f:
            next(f, None)  # header
            for line in f:
                fields = line.split(None, 7)
                if (
                    len(fields) == 8
                    and fields[7].rstrip("\n") == want
                    and int(fields[3], 16) & _SO_ACCEPTCON
                ):
                    return True
    except OSError:
        return False
    return False


def find_virtiofsd() -> str:
    """QEMU's virtiofsd: $P9SHARE_VMLAB_VIRTIOFSD, a known path, or apt-get install."""
    env = os.environ.get("P9SHARE_VMLAB_VIRTIOFSD")
    if env:
        if not os.access(env, os.X_OK):
            raise VMLabError(f"P9SHARE_VMLAB_VIRTIOFSD={env} is not an executable")
        return env
    for p in (*VIRTIOFSD_PATHS, shutil.which("virtiofsd") or ""):
        if p and os.access(p, os.X_OK):
            return p
    apt_install(["qemu-system-common"])  # Debian 12 ships it there
    for p in VIRTIOFSD_PATHS:
        if os.access(p, os.X_OK):
            return p
    raise VMLabError("virtiofsd not found after apt-get install qemu-system-common")


class BackendError(VMLabError):
    """A back end did not come up. ``unsupported`` is True when it refused the
    vhost-user listener itself (an option or address it does not know yet)."""

    def __init__(self, message: str, *, unsupported: bool = False) -> None:
        super().__init__(message)
        self.unsupported = unsupported


class VhostUserBackend:
    """A back end process serving ``export`` on the Unix socket ``socket_path``
    (a private temporary one by default). Subclasses give the command line."""

    name = "vhost-user back end"
    #: observed behaviour: does the socket serve a second QEMU after the first leaves?
    survives_disconnect = True

    def __init__(
        self,
        export: str | os.PathLike[str],
        *,
        socket_path: str | os.PathLike[str] | None = None,
        start_timeout: float = 20,
    ) -> None:
        self.export = Path(export).resolve()
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        if socket_path is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="p9vmlab-vu-")
            socket_path = Path(self._tmpdir.name) / "vhost-user.sock"
        self.socket_path = Path(socket_path).resolve()
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()

    def command(self) -> list[str]:
        raise NotImplementedError

    def _unsupported(self, log: str) -> bool:
        return False

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise VMLabError(f"{self.name} is not running")
        return self.proc.pid

    def log_text(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def start(self) -> VhostUserBackend:
        self.export.mkdir(parents=True, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)
        cmd = self.command()
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log
        )
        deadline = time.monotonic() + self.start_timeout
        while not unix_socket_listening(self.socket_path):
            if self.proc.poll() is not None:
                log = self.log_text()
                raise BackendError(
                    f"{self.name} exited with status {self.proc.returncode} before listening "
                    f"on {self.socket_path}:\n$ {' '.join(cmd)}\n{log.strip()[-2000:]}",
                    unsupported=self._unsupported(log),
                )
            if time.monotonic() > deadline:
                self.stop()
                raise BackendError(
                    f"{self.name} not listening on {self.socket_path} after "
                    f"{self.start_timeout}s:\n{self.log_text().strip()[-2000:]}"
                )
            time.sleep(0.05)
        return self

    def wait_exit(self, timeout: float) -> int | None:
        """The exit status once the process has ended, or None if it still runs."""
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        if self.proc:
            stop_process(self.proc)
        self.socket_path.unlink(missing_ok=True)
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def close(self) -> None:
        self.stop()
        self._log.close()

    def __enter__(self) -> VhostUserBackend:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        et: type[BaseException] | None,
        ev: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Virtiofsd(VhostUserBackend):
    """QEMU's virtiofsd serving ``export`` with a cache mode (none, auto, always).

    >>> with Virtiofsd(export_dir, cache="none") as v:
    ...     run_guest(..., transport="virtiofs", socket_path=v.socket_path)

    ``xattr``, ``posix_lock`` and ``flock`` turn on virtiofsd's ``-o`` options of
    those names (all off by default: then the guest kernel keeps fcntl and flock
    locks to itself). Observed with ``-o flock`` here: an exclusive flock held by one
    guest process did not stop another's ``LOCK_EX|LOCK_NB`` (both got it). One
    daemon serves one guest boot.
    """

    name = "virtiofsd"
    survives_disconnect = False  # observed: exits when QEMU disconnects

    def __init__(
        self,
        export: str | os.PathLike[str],
        *,
        cache: str = "auto",
        sandbox: str = "namespace",
        xattr: bool = False,
        posix_lock: bool = False,
        flock: bool = False,
        extra_args: Sequence[str] = (),
        socket_path: str | os.PathLike[str] | None = None,
        start_timeout: float = 20,
    ) -> None:
        if cache not in CACHE_MODES:
            raise ValueError(f"cache must be one of {', '.join(CACHE_MODES)}, not {cache!r}")
        if sandbox not in SANDBOXES:
            raise ValueError(f"sandbox must be one of {', '.join(SANDBOXES)}, not {sandbox!r}")
        super().__init__(export, socket_path=socket_path, start_timeout=start_timeout)
        self.cache = cache
        self.sandbox = sandbox
        self.xattr = xattr
        self.posix_lock = posix_lock
        self.flock = flock
        self.extra_args = tuple(extra_args)

    def command(self) -> list[str]:
        cmd = [
            find_virtiofsd(),
            f"--socket-path={self.socket_path}",
            "-o", f"source={self.export}",
            "-o", f"cache={self.cache}",
            "-o", f"sandbox={self.sandbox}",
        ]  # fmt: skip
        if self.xattr:
            cmd += ["-o", "xattr"]
        if self.posix_lock:
            cmd += ["-o", "posix_lock"]
        if self.flock:
            cmd += ["-o", "flock"]
        return cmd + list(self.extra_args)


class P9shareVhostUser(VhostUserBackend):
    """``p9share serve EXPORT --listen vhost-user:SOCK [--cache MODE]`` (issue 10's
    contract) in a subprocess, or, with ``config``, ``p9share serve --config FILE``:
    the policy file then names the exports, the cache modes and the listeners, and
    one of its vhost-user listeners must be ``socket_path`` (the socket this object
    waits for and QEMU connects to); ``export`` is only the directory to create.
    Raises :class:`BackendError` with ``unsupported`` set while the server refuses
    that address or option."""

    name = "p9share serve --listen vhost-user"
    survives_disconnect = True  # the contract: the socket serves the next boot

    def __init__(
        self,
        export: str | os.PathLike[str],
        *,
        cache: str | None = None,
        config: str | os.PathLike[str] | None = None,
        extra_args: Sequence[str] = (),
        socket_path: str | os.PathLike[str] | None = None,
        start_timeout: float = 20,
    ) -> None:
        if cache is not None and cache not in CACHE_MODES:
            raise ValueError(f"cache must be one of {', '.join(CACHE_MODES)}, not {cache!r}")
        if config is not None and (cache is not None or socket_path is None):
            raise ValueError(
                "with config= the policy file sets the cache mode (no cache=) and "
                "socket_path= must be the vhost-user listener it names"
            )
        super().__init__(export, socket_path=socket_path, start_timeout=start_timeout)
        self.cache = cache
        self.config = None if config is None else Path(config).resolve()
        self.extra_args = tuple(extra_args)

    def command(self) -> list[str]:
        serve = [sys.executable, "-m", "p9share", "serve", "--log-level", "warning"]
        if self.config is not None:
            return [*serve, "--config", str(self.config), *self.extra_args]
        cmd = [*serve, str(self.export), "--listen", f"vhost-user:{self.socket_path}"]
        if self.cache is not None:
            cmd += ["--cache", self.cache]
        return cmd + list(self.extra_args)

    def _unsupported(self, log: str) -> bool:
        return bool(
            re.search(r"unknown transport 'vhost-user'|unrecognized arguments:.*--cache", log)
        )
