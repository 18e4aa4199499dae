"""Run Debian's diod (a C 9P2000.L server) as a reference peer for harness tests.

``diod -f -c /dev/null -n -l ADDR -e EXPORT``: foreground, no config file, no munge
authentication, listening on 127.0.0.1:PORT or a Unix socket path, exporting EXPORT.
The guest must attach with ``aname=EXPORT``. As non-root, diod refuses the guest
root's attach, so ``-S`` (squash all users) is added then.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from .assets import VMLabError, apt_install


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 5) -> None:
    """Stop a server process: SIGTERM, and SIGKILL if it has not gone within timeout."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def ensure_diod() -> str:
    path = shutil.which("diod") or ("/usr/sbin/diod" if os.path.exists("/usr/sbin/diod") else None)
    if not path:
        apt_install(["diod"])
        path = shutil.which("diod") or "/usr/sbin/diod"
        if not os.path.exists(path):
            raise VMLabError("diod not found after apt-get install diod")
    return path


def _check_reachable(export: Path) -> None:
    """The Linux client attaches as user 'nobody' first, so diod (which switches to
    the attaching user) needs every directory up to the export to be o+x."""
    for d in (export, *export.parents):
        if not d.stat().st_mode & stat.S_IXOTH:
            raise VMLabError(
                f"diod export {export}: {d} is not searchable by others (mode "
                f"{stat.S_IMODE(d.stat().st_mode):o}); the client attaches as 'nobody' and "
                "would get EACCES. Use a directory like tempfile.mkdtemp() + chmod 0o755."
            )


class Diod:
    """A diod process serving ``export``, over TCP (default) or a Unix socket.

    >>> with Diod(export_dir) as d:            # TCP on a free port
    ...     run_guest(..., transport="tcp", port=d.port, aname=d.aname)
    >>> with Diod(export_dir, unix=True) as d:  # Unix socket for trans=fd
    ...     run_guest(..., transport="fd", socket_path=d.socket_path, aname=d.aname)
    """

    def __init__(
        self,
        export: str | os.PathLike[str],
        *,
        unix: bool = False,
        port: int | None = None,
        socket_path: str | os.PathLike[str] | None = None,
        debug: bool = False,
        extra_args: tuple[str, ...] = (),
        start_timeout: float = 15,
    ) -> None:
        self.export = Path(export).resolve()
        self.unix = unix or socket_path is not None
        self.port: int | None = None
        self.socket_path: Path | None = None
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        if self.unix:
            if socket_path is None:
                self._tmpdir = tempfile.TemporaryDirectory(prefix="p9vmlab-diod-")
                socket_path = Path(self._tmpdir.name) / "diod.sock"
            self.socket_path = Path(socket_path).resolve()
        else:
            self.port = port or free_port()
        self.debug = debug
        self.extra_args = extra_args
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in __exit__

    @property
    def aname(self) -> str:
        return str(self.export)

    @property
    def listen(self) -> str:
        return str(self.socket_path) if self.socket_path else f"127.0.0.1:{self.port}"

    def log_text(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def start(self) -> Diod:
        diod = ensure_diod()
        self.export.mkdir(parents=True, exist_ok=True)
        _check_reachable(self.export)
        if self.socket_path:
            self.socket_path.unlink(missing_ok=True)
        cmd = [diod, "-f", "-c", "/dev/null", "-n", "-l", self.listen, "-e", str(self.export)]
        if os.geteuid() != 0:
            cmd.append("-S")
        if self.debug:
            cmd += ["-d", "1"]
        cmd += list(self.extra_args)
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log
        )
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.proc.poll() is not None:
                raise VMLabError(f"diod exited with {self.proc.returncode}:\n{self.log_text()}")
            if self._listening():
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise VMLabError(f"diod not listening on {self.listen} after {self.start_timeout}s")
            time.sleep(0.05)

    def _listening(self) -> bool:
        try:
            if self.socket_path:
                if not self.socket_path.exists():
                    return False
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.settimeout(1)
                    s.connect(str(self.socket_path))
            else:
                assert self.port is not None
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    pass
        except OSError:
            return False
        return True

    def stop(self) -> None:
        if self.proc:
            stop_process(self.proc)
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def __enter__(self) -> Diod:
        return self.start()

    def __exit__(
        self,
        et: type[BaseException] | None,
        ev: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        self._log.close()
