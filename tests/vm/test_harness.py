"""The VM harness itself, proven against Debian's diod (each test boots one guest)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from p9share.vmlab import (
    STATUS_MOUNT_FAILED,
    STATUS_TIMEOUT,
    Assets,
    GuestResult,
    run_guest,
)
from p9share.vmlab.diod import Diod, free_port
from p9share.vmlab.recorder import Recorder

from ..conftest import watch_server_stderr

pytestmark = pytest.mark.vm


def _discard(res: GuestResult) -> None:
    """Failed runs keep their run directory; drop it when the failure was the point."""
    if res.run_dir is not None:
        shutil.rmtree(res.run_dir, ignore_errors=True)


def test_boot_without_mount(vm_assets: Assets, tmp_path: Path) -> None:
    host_file = tmp_path / "tool.sh"
    host_file.write_text("#!/bin/sh\necho tool-ran\n")
    host_file.chmod(0o755)
    script = (
        'echo "args=$#:$1:$2"\n'
        "uname -r\n"
        "grep -c ' 9p ' /proc/mounts || true\n"
        "cat /etc/payload\n"
        "/opt/tool.sh\n"
        "ls /bin/p9xattr /bin/p9lock\n"
        "printf 'no newline at the end'\n"
        "exit 7\n"
    )
    res = run_guest(
        script,
        transport="none",
        args=["one", "two words"],
        extra_files={"/etc/payload": b"payload-bytes\n", "/opt/tool.sh": host_file},
        timeout=120,
        assets=vm_assets,
    )
    _discard(res)
    assert res.status == 7, res.describe()
    assert res.output == (
        "args=2:one:two words\n"
        f"{vm_assets.kernel_version}\n"
        "0\n"
        "payload-bytes\n"
        "tool-ran\n"
        "/bin/p9lock   /bin/p9xattr\n"
        "no newline at the end"
    ), res.describe()
    assert res.mount_line == ""
    assert res.boot_seconds is not None and 0 < res.boot_seconds < res.wall_seconds
    assert "P9VMLAB-" in res.console


def test_tcp_mount_write_and_read(vm_assets: Assets, diod_tcp: Diod, export_dir: Path) -> None:
    (export_dir / "from-host.txt").write_text("written on the host\n")
    script = (
        "pwd\n"
        "cat from-host.txt\n"
        "printf 'line1\\nline2\\n' > from-guest.txt\n"
        "mkdir -p sub/dir && echo nested > sub/dir/n.txt\n"
        "grep ' /mnt 9p ' /proc/mounts\n"
    )
    res = run_guest(
        script,
        transport="tcp",
        port=diod_tcp.port,
        aname=diod_tcp.aname,
        timeout=120,
        assets=vm_assets,
    ).check()
    assert res.output.splitlines()[:2] == ["/mnt", "written on the host"]
    assert (export_dir / "from-guest.txt").read_text() == "line1\nline2\n"
    assert (export_dir / "sub/dir/n.txt").read_text() == "nested\n"
    assert "trans=tcp" in res.mount_line
    assert f"port={diod_tcp.port}" in res.mount_line
    assert f"aname={export_dir}" in res.mount_line
    assert res.mount_line.startswith("10.0.2.2 /mnt 9p ")


@pytest.mark.parametrize("model", ["passthrough", "mapped-xattr"])
def test_virtio_mount_is_qemus_own_9p(vm_assets: Assets, export_dir: Path, model: str) -> None:
    (export_dir / "from-host.txt").write_text("written on the host\n")
    script = "cat from-host.txt\nchmod 640 from-host.txt\necho guest > from-guest.txt\n"
    res = run_guest(
        script,
        transport="virtio",
        virtio_dir=export_dir,
        virtio_security=model,
        timeout=120,
        assets=vm_assets,
    ).check()
    assert res.output == "written on the host\n"
    assert (export_dir / "from-guest.txt").read_text() == "guest\n"
    assert res.mount_line.startswith("p9share /mnt 9p ") and "trans=virtio" in res.mount_line
    host_mode = (export_dir / "from-host.txt").stat().st_mode & 0o777
    # passthrough changes the host file; mapped-xattr keeps the guest's mode in an xattr
    assert (host_mode == 0o640) == (model == "passthrough")


def test_fd_mount_through_virtio_serial(
    vm_assets: Assets, diod_unix: Diod, export_dir: Path
) -> None:
    script = (
        "dd if=/dev/zero bs=1k count=300 2>/dev/null | tr '\\0' x > big.txt\n"
        "wc -c < big.txt\n"
        "echo via-fd > small.txt\n"
        "cat small.txt\n"
    )
    assert diod_unix.socket_path is not None
    res = run_guest(
        script,
        transport="fd",
        socket_path=diod_unix.socket_path,
        aname=diod_unix.aname,
        mount_opts="msize=65536",
        timeout=120,
        assets=vm_assets,
    ).check()
    assert res.output.split() == ["307200", "via-fd"]
    assert (export_dir / "small.txt").read_text() == "via-fd\n"
    assert (export_dir / "big.txt").read_bytes() == b"x" * 307200
    assert "trans=fd" in res.mount_line


def test_xattr_helper(vm_assets: Assets, diod_tcp: Diod, export_dir: Path) -> None:
    script = (
        "echo data > f\n"
        "p9xattr set f user.color blue\n"
        "p9xattr set f user.shape round create\n"
        "p9xattr set f user.shape square create || echo create-again-failed\n"
        "p9xattr get f user.color\n"
        "p9xattr getx f user.shape\n"
        "p9xattr size f user.color\n"
        "p9xattr list f | sort\n"
        "p9xattr remove f user.shape\n"
        "p9xattr get f user.shape || echo get-removed-failed\n"
        "p9xattr set f user.keep kept\n"
    )
    res = run_guest(
        script,
        transport="tcp",
        port=diod_tcp.port,
        aname=diod_tcp.aname,
        timeout=120,
        assets=vm_assets,
    ).check()
    lines = res.output.splitlines()
    assert "create-again-failed" in lines
    assert any("EEXIST" in line for line in lines), res.output
    i = lines.index("create-again-failed")
    assert lines[i + 1 : i + 6] == [
        "blue",
        b"round".hex(),
        "4",
        "user.color",
        "user.shape",
    ], res.output
    assert any("ENODATA" in line for line in lines), res.output
    assert lines[-1] == "get-removed-failed"
    # the attributes really are on the host file
    f = export_dir / "f"
    assert os.getxattr(f, "user.color") == b"blue"
    assert os.getxattr(f, "user.keep") == b"kept"
    assert "user.shape" not in os.listxattr(f)


def test_lock_helper_contention(vm_assets: Assets, diod_tcp: Diod) -> None:
    # A holds a write lock on lk, F an flock on fl. B's and G's non-blocking attempts
    # fail while they are held; C blocks in F_SETLKW until A unlocks. Marker files in
    # the guest's /tmp sequence the processes. (fcntl and flock locks go to separate
    # files on purpose: Linux 6.1's v9fs turns flock() into a POSIX lock owned by the
    # open file, so one process's fcntl lock and its flock on a file conflict.)
    script = (
        "p9lock -t A lk wr 0 0 touch /tmp/a-held wait /tmp/probed sleep 300"
        " echo releasing un 0 0 wait /tmp/c-done &\n"
        "a=$!\n"
        "p9lock -t F fl flock ex touch /tmp/f-held wait /tmp/probed flock un &\n"
        "f=$!\n"
        "p9lock -t B lk wait /tmp/a-held wr 0 0 rd 5 10 get wr 0 0\n"
        "p9lock -t G fl wait /tmp/f-held flocknb ex flocknb sh touch /tmp/probed\n"
        "p9lock -t C lk wrw 0 0 echo got-it un 0 0 touch /tmp/c-done\n"
        "wait $a $f\n"
        "p9lock -t D lk wr 0 0 un 0 0\n"
        "p9lock -t E fl flocknb ex flock un\n"
    )
    res = run_guest(
        script,
        transport="tcp",
        port=diod_tcp.port,
        aname=diod_tcp.aname,
        timeout=120,
        assets=vm_assets,
    ).check()
    lines = res.output.splitlines()
    assert "A wr 0 0: ok" in lines and "F flock ex: ok" in lines, res.output
    assert "B wr 0 0: EAGAIN" in lines, res.output
    assert "B rd 5 10: EAGAIN" in lines, res.output
    assert any(ln.startswith("B get wr 0 0: locked wr start=0 len=0 pid=") for ln in lines)
    assert "G flocknb ex: EAGAIN" in lines, res.output
    assert "G flocknb sh: EAGAIN" in lines, res.output
    # C's blocking lock was granted only after A released it
    assert lines.index("A releasing") < lines.index("C wrw 0 0: ok"), res.output
    assert "C got-it" in lines
    assert lines[-4:] == ["D wr 0 0: ok", "D un 0 0: ok", "E flocknb ex: ok", "E flock un: ok"]


def test_mount_failure_is_reported(vm_assets: Assets) -> None:
    port = free_port()  # nothing listens there
    res = run_guest(
        "echo should-not-run",
        transport="tcp",
        port=port,
        aname="/nonexistent",
        mount_retries=1,
        timeout=120,
        assets=vm_assets,
    )
    try:
        assert res.status == STATUS_MOUNT_FAILED, res.describe()
        assert res.mount_failed
        assert "should-not-run" not in res.output
        assert "mount" in res.output  # busybox mount's own error message
        assert "guest kernel messages" in res.output
        assert f"port={port}" in res.error
        assert res.run_dir is not None and (res.run_dir / "console.log").is_file()
    finally:
        _discard(res)


def test_timeout_kills_qemu(vm_assets: Assets) -> None:
    t0 = time.monotonic()
    res = run_guest("echo started; sleep 600", transport="none", timeout=12, assets=vm_assets)
    elapsed = time.monotonic() - t0
    try:
        assert res.status == STATUS_TIMEOUT, res.describe()
        assert res.timed_out
        assert res.output.strip() == "started"
        assert elapsed < 40
    finally:
        _discard(res)


def test_recorder_between_guest_and_diod(vm_assets: Assets, diod_tcp: Diod, tmp_path: Path) -> None:
    out = tmp_path / "session.jsonl"
    assert diod_tcp.port is not None
    with Recorder(out, ("127.0.0.1", diod_tcp.port), meta={"test": True}) as rec:
        run_guest(
            "echo recorded > r.txt && cat r.txt",
            transport="tcp",
            port=rec.port,
            aname=diod_tcp.aname,
            timeout=120,
            assets=vm_assets,
        ).check()
    assert not rec.errors
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records[0] == {"meta": {"test": True}}
    frames = [r for r in records if "hex" in r]
    names = [r["name"] for r in frames]
    assert names[:2] == ["Tversion", "Rversion"]
    for n in ("Tattach", "Tlcreate", "Twrite", "Tread", "Tclunk"):
        assert n in names
    assert any(r.get("event") == "close" for r in records)  # umount closed the connection
    for r in frames:
        raw = bytes.fromhex(r["hex"])
        assert int.from_bytes(raw[:4], "little") == len(raw)
        assert raw[4] == r["type"]
        assert r["dir"] == ("c2s" if r["type"] % 2 == 0 else "s2c")


def test_fd_relay_carries_messages_larger_than_a_pipe(vm_assets: Assets, export_dir: Path) -> None:
    # Regression: with the FIFOs opened read-write, trans_fd (2 poll-wait slots) never
    # registered the tx FIFO's write wakeup, so any 9P message > 64 KiB hung the mount.
    # diod caps msize at 64 KiB, so this needs a server that offers more: p9share.
    sock = export_dir.parent / f"{export_dir.name}.sock"
    server = subprocess.Popen(
        [sys.executable, "-m", "p9share", "serve", "--export", f"export={export_dir}",
         "--listen", f"unix:{sock}", "--msize", str(1024 * 1024 + 24)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    watch_server_stderr(server)
    try:
        deadline = time.monotonic() + 20
        while not sock.is_socket():
            assert server.poll() is None, server.communicate(timeout=10)[1].decode()
            assert time.monotonic() < deadline, "p9share serve did not create its socket"
            time.sleep(0.1)
        res = run_guest(
            "dd if=/dev/urandom of=big bs=1M count=4 2>/dev/null\n"
            "md5sum < big\n"
            "p9_drop_caches\n"
            "dd if=big bs=1M 2>/dev/null | md5sum\n",
            transport="fd",
            socket_path=sock,
            aname="export",
            mount_opts="msize=1048576",
            timeout=90,
            assets=vm_assets,
        ).check()
    finally:
        server.terminate()
        server.wait(timeout=10)
        sock.unlink(missing_ok=True)
    assert "msize=1048576" in res.mount_line
    sums = [line.split()[0] for line in res.output.splitlines()]
    host = hashlib.md5((export_dir / "big").read_bytes()).hexdigest()
    assert sums == [host, host], res.output
