"""A p9share server and a `p9share mount` of it, both real subprocesses."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from ..conftest import watch_server_stderr

SRC = str(Path(__file__).resolve().parents[2] / "src")


def fuse_available() -> str | None:
    """Why FUSE mounts cannot run here, or None if they can."""
    try:
        import pyfuse3  # noqa: F401
    except ImportError as e:
        return f"pyfuse3 is not installed ({e}); ./scripts/install.sh --test installs it"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is missing (Debian package fuse3)"
    return None


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = SRC + os.pathsep + e.get("PYTHONPATH", "")
    return e


def is_mounted(path: Path) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


def wait_for(cond: object, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Server:
    """`p9share serve EXPORT --listen unix:SOCK` (restartable on the same socket)."""

    def __init__(self, export: Path, sock: Path) -> None:
        self.export = export
        self.sock = sock
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = sock.with_suffix(".log")

    @property
    def address(self) -> str:
        return f"unix:{self.sock}"

    def start(self) -> Server:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "p9share", "serve", str(self.export),
                 "--listen", self.address, "--log-level", "warning"],
                env=env(), stdout=log, stderr=log,
            )  # fmt: skip
        watch_server_stderr(self.log)
        # The socket appears (bound) before the server accepts: connecting is fine then.
        wait_for(lambda: self.sock.exists() and self._connectable(), "the server's socket")
        return self

    def _connectable(self) -> bool:
        import socket

        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(str(self.sock))
            return True
        except OSError:
            return False
        finally:
            s.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


class Mount:
    """`p9share mount ADDR MOUNTPOINT` in the foreground, as a subprocess."""

    def __init__(self, address: str, mountpoint: Path, *extra: str) -> None:
        self.address = address
        self.mountpoint = mountpoint
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = mountpoint.with_name(mountpoint.name + ".mount.log")

    def start(self) -> Mount:
        self.mountpoint.mkdir(exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "p9share", "mount", self.address, str(self.mountpoint),
                 *self.extra],
                env=env(), stdout=log, stderr=log,
            )  # fmt: skip
        try:
            wait_for(lambda: is_mounted(self.mountpoint) or self.proc.poll() is not None,  # type: ignore[union-attr]
                     "the FUSE mount")  # fmt: skip
        except TimeoutError:
            self.stop()
            raise
        if not is_mounted(self.mountpoint):
            raise RuntimeError(f"p9share mount failed: {self.log.read_text()[-2000:]}")
        return self

    def stop(self) -> int | None:
        """SIGTERM (unmounts); the exit status, None if it had to be killed."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], check=False)
                return None
        if is_mounted(self.mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], check=False)
        return self.proc.returncode


class FuseSetup:
    """A temp dir with export/, the server's socket and a mountpoint mnt/."""

    unavailable = staticmethod(fuse_available)

    def __init__(self, *mount_args: str) -> None:
        reason = fuse_available()
        if reason:
            pytest.skip(reason)
        self.top = Path(tempfile.mkdtemp(prefix="p9fuse-"))
        self.top.chmod(0o755)
        self.export = self.top / "export"
        self.export.mkdir()
        self.server = Server(self.export, self.top / "p9.sock")
        self.mount = Mount(self.server.address, self.top / "mnt", *mount_args)

    def start(self) -> FuseSetup:
        self.server.start()
        try:
            self.mount.start()
        except BaseException:
            self.server.stop()
            raise
        return self

    def close(self) -> None:
        try:
            self.mount.stop()
        finally:
            self.server.stop()
            if not is_mounted(self.mount.mountpoint):
                shutil.rmtree(self.top, ignore_errors=True)
