"""`p9share mount` as a process: unmounting, daemonising, errors, read-only,
and surviving a server that is killed and restarted."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .mountlib import FuseSetup, env, is_mounted, wait_for


@pytest.fixture
def setup_factory() -> Iterator[list[FuseSetup]]:
    made: list[FuseSetup] = []
    yield made
    for s in made:
        s.close()


def fuse(made: list[FuseSetup], *args: str) -> FuseSetup:
    s = FuseSetup(*args)
    made.append(s)
    return s.start()


def mount_cmd(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "p9share", "mount", *map(str, args)]


def test_sigterm_and_sigint_unmount(setup_factory: list[FuseSetup]) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        s = fuse(setup_factory)
        (s.mount.mountpoint / "f").write_text("x")
        assert s.mount.proc is not None
        s.mount.proc.send_signal(sig)
        assert s.mount.proc.wait(15) == 0
        assert not is_mounted(s.mount.mountpoint)
        assert (s.export / "f").read_text() == "x"


def test_fusermount_u_ends_the_process(setup_factory: list[FuseSetup]) -> None:
    s = fuse(setup_factory)
    assert s.mount.proc is not None
    subprocess.run(["fusermount3", "-u", str(s.mount.mountpoint)], check=True, timeout=10)
    assert s.mount.proc.wait(15) == 0


def _pids_with_arg(arg: str) -> list[int]:
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    if arg.encode() in f.read().split(b"\0"):
                        pids.append(int(d))
            except OSError:
                pass
    return pids


def test_daemon(setup_factory: list[FuseSetup]) -> None:
    s = FuseSetup()
    setup_factory.append(s)
    s.server.start()
    mnt = s.mount.mountpoint
    mnt.mkdir()
    r = subprocess.run(mount_cmd(s.server.address, mnt, "--daemon"), env=env(),
                       capture_output=True, text=True, timeout=30)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert is_mounted(mnt)  # up before the foreground process returned
    (mnt / "d").write_text("daemon")
    assert (s.export / "d").read_text() == "daemon"
    pids = _pids_with_arg(str(mnt))
    assert len(pids) == 1
    subprocess.run(["fusermount3", "-u", str(mnt)], check=True, timeout=10)
    wait_for(lambda: not _pids_with_arg(str(mnt)), "the daemon to exit", 15)


def test_errors_are_reported_in_the_foreground(tmp_path: Path) -> None:
    if (reason := FuseSetup.unavailable()) is not None:
        pytest.skip(reason)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    for extra in ([], ["--daemon"]):
        r = subprocess.run(mount_cmd(f"unix:{tmp_path}/none.sock", mnt, *extra), env=env(),
                           capture_output=True, text=True, timeout=30)  # fmt: skip
        assert r.returncode == 1 and "none.sock" in r.stderr, r.stderr
        assert not is_mounted(mnt)
    r = subprocess.run(mount_cmd("unix:/x", tmp_path / "nodir"), env=env(),
                       capture_output=True, text=True, timeout=30)  # fmt: skip
    assert r.returncode == 1 and "not a directory" in r.stderr
    r = subprocess.run(mount_cmd("bogus", mnt), env=env(), capture_output=True, text=True,
                       timeout=30)  # fmt: skip
    assert r.returncode == 1 and "bad address" in r.stderr, r.stderr


def test_read_only(setup_factory: list[FuseSetup]) -> None:
    s = FuseSetup("--read-only")
    setup_factory.append(s)
    (s.export / "f").write_text("ro")
    s.start()
    mnt = s.mount.mountpoint
    assert (mnt / "f").read_text() == "ro"
    for attempt in (
        lambda: (mnt / "g").write_text("x"),
        lambda: (mnt / "f").write_text("x"),
        lambda: os.mkdir(mnt / "d"),
        lambda: os.unlink(mnt / "f"),
    ):
        with pytest.raises(OSError) as e:
            attempt()
        assert e.value.errno == errno.EROFS
    assert (s.export / "f").read_text() == "ro"


COPIER = r"""
import os, sys
path, total = sys.argv[1], int(sys.argv[2])
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
done = 0
while done < total:
    block = bytes([done // 65536 % 251]) * 65536
    try:
        n = os.write(fd, block)
    except OSError as e:
        print("error", e.errno, flush=True)
        sys.exit(1)
    done += n
    print("written", done, flush=True)
os.close(fd)
print("finished", flush=True)
"""


def test_server_killed_and_restarted_mid_copy(setup_factory: list[FuseSetup]) -> None:
    s = fuse(setup_factory, "--reconnect-timeout", "20")
    mnt = s.mount.mountpoint
    total = 24 << 20
    (s.top / "src.bin").write_bytes(os.urandom(8 << 20))
    reader = subprocess.Popen(["cp", str(s.top / "src.bin"), str(mnt / "cp.bin")])
    copier = subprocess.Popen([sys.executable, "-c", COPIER, str(mnt / "big"), str(total)],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert copier.stdout is not None
    reported = 0
    for line in copier.stdout:
        reported = int(line.split()[1])
        if reported >= 4 << 20:
            break
    s.server.kill()  # kill -9 in the middle of the copy
    time.sleep(0.5)
    s.server.start()  # same socket; the mount reconnects and the copy goes on
    for line in copier.stdout:
        word, *rest = line.split()
        if word == "written":
            reported = int(rest[0])
    assert copier.wait(60) == 0, "the copier got an error"
    assert reader.wait(60) == 0
    assert reported == total
    data = (s.export / "big").read_bytes()
    assert len(data) == total
    for off in range(0, total, 65536):
        assert data[off : off + 65536] == bytes([off // 65536 % 251]) * 65536, off
    assert (s.export / "cp.bin").read_bytes() == (s.top / "src.bin").read_bytes()


def test_server_gone_gives_eio_then_recovers(setup_factory: list[FuseSetup]) -> None:
    s = fuse(setup_factory, "--reconnect-timeout", "1.5", "--attr-timeout", "0")
    mnt = s.mount.mountpoint
    (mnt / "kept").write_text("kept")
    (mnt / "replaced").write_text("old")
    kept = os.open(mnt / "kept", os.O_RDWR)
    replaced = os.open(mnt / "replaced", os.O_RDONLY)
    try:
        s.server.kill()
        start = time.monotonic()
        with pytest.raises(OSError) as e:
            os.stat(mnt / "kept")
        assert e.value.errno == errno.EIO
        with pytest.raises(OSError) as e:
            os.pwrite(kept, b"k", 0)  # (a read may be served by the page cache)
        assert e.value.errno == errno.EIO
        assert time.monotonic() - start < 10  # bounded waits, no hang
        # While the server is down the host replaces one file with another.
        os.unlink(s.export / "replaced")
        (s.export / "replaced").write_text("new")
        s.server.start()
        # kept: walked again by its path, reopened, same file: works.
        wait_for(lambda: _readable(kept), "the mount to reconnect")
        assert os.pread(kept, 10, 0) == b"kept"
        os.pwrite(kept, b"K", 0)
        assert (s.export / "kept").read_text() == "Kept"
        # replaced: the path names another file now: EIO, not the new file.
        os.posix_fadvise(replaced, 0, 0, os.POSIX_FADV_DONTNEED)  # drop cached pages
        with pytest.raises(OSError) as e:
            os.pread(replaced, 10, 0)
        assert e.value.errno == errno.EIO
        assert (mnt / "replaced").read_text() == "new"  # a new lookup finds it
    finally:
        os.close(kept)
        os.close(replaced)


def _readable(fd: int) -> bool:
    try:
        os.pread(fd, 1, 0)
        return True
    except OSError:
        return False
