"""The `p9share serve` command line, run as a real process."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from p9share.client.raw import RawClient, ServerError
from p9share.protocol import messages as m

from .conftest import watch_server_stderr

P9SHARE = [sys.executable, "-m", "p9share"]


def serve(*args: str, cwd: Path | None = None, **kw: object) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [*P9SHARE, "serve", *args], cwd=cwd, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, **kw,  # type: ignore[call-overload]
    )  # fmt: skip
    watch_server_stderr(proc)
    return proc


def wait_listening(proc: subprocess.Popen[str]) -> str:
    """Read stderr until the 'serving on ADDR' line; return ADDR."""
    assert proc.stderr is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        if line.startswith("p9share: serving on "):
            return line.split("serving on ", 1)[1].strip()
    raise AssertionError(f"server did not start (exit {proc.poll()})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def one_error_line(*args: str, cwd: Path | None = None) -> str:
    r = subprocess.run([*P9SHARE, *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("p9share: error: "), r.stderr
    return lines[0]


def test_defaults_export_cwd_on_5640_with_mount_hint_and_warning(tmp_path: Path) -> None:
    (tmp_path / "hello").write_text("hi")
    try:
        with socket.create_connection(("127.0.0.1", 5640), timeout=0.5):
            pytest.skip("port 5640 is in use on this machine")
    except OSError:
        pass
    proc = serve(cwd=tmp_path)
    try:
        addr = wait_listening(proc)
        assert addr == "tcp:127.0.0.1:5640"
        assert proc.stderr is not None
        hint = proc.stderr.readline()
        assert "mount -t 9p -o trans=tcp,port=5640" in hint and "10.0.2.2" in hint
        warning = proc.stderr.readline()
        assert "warning" in warning and "any local user" in warning
        with RawClient.connect(addr) as c:
            c.version()
            c.attach(0, "")  # the only export
            c.walk(0, 1, ["hello"])
            c.rpc(m.Tlopen(1, 0))
            assert c.rpc(m.Tread(1, 0, 10)) == m.Rread(b"hi")
            with pytest.raises(ServerError):
                c.attach(2, "no-such-export")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0


def test_named_exports_and_read_only(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    port = free_port()
    proc = serve("--export", f"one={tmp_path / 'a'}", "--export", f"two={tmp_path / 'b'}:ro",
                 "--listen", f"tcp:127.0.0.1:{port}", "--msize", "65560")  # fmt: skip
    try:
        addr = wait_listening(proc)
        with RawClient.connect(addr) as c:
            assert c.version(1 << 20).msize == 65560
            c.attach(0, "one")
            c.attach(1, "two")
            c.rpc(m.Tmkdir(0, "ok", 0o755, 0))
            with pytest.raises(ServerError) as e:
                c.rpc(m.Tmkdir(1, "no", 0o755, 0))
            assert e.value.errno == 30  # EROFS
        assert (tmp_path / "a" / "ok").is_dir()
    finally:
        proc.terminate()
        proc.wait(20)


def test_unix_listener(tmp_path: Path) -> None:
    sock = tmp_path / "s.sock"
    proc = serve(str(tmp_path), "--listen", f"unix:{sock}")
    try:
        addr = wait_listening(proc)
        assert addr == f"unix:{sock}"
        with RawClient.connect(addr) as c:
            c.version()
            c.attach(0, "")
    finally:
        proc.terminate()
        proc.wait(20)


def test_inherited_connected_fd_is_served_then_server_exits(tmp_path: Path) -> None:
    ours, theirs = socket.socketpair()
    proc = serve(str(tmp_path), "--listen", f"fd:{theirs.fileno()}", pass_fds=(theirs.fileno(),))
    theirs.close()
    try:
        c = RawClient(ours)
        c.version()
        c.attach(0, "")
        c.rpc(m.Tmkdir(0, "via-fd", 0o755, 0))
        assert (tmp_path / "via-fd").is_dir()
        c.close()
        assert proc.wait(20) == 0  # the one connection ended: so does the server
    finally:
        if proc.poll() is None:
            proc.kill()


def test_inherited_listening_fd(tmp_path: Path) -> None:
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen()
    port = lsock.getsockname()[1]
    proc = serve(str(tmp_path), "--listen", f"fd:{lsock.fileno()}", pass_fds=(lsock.fileno(),))
    lsock.close()
    try:
        wait_listening(proc)
        for _ in range(2):  # accepts more than one connection
            with RawClient.connect(f"tcp:127.0.0.1:{port}") as c:
                c.version()
                c.attach(0, "")
    finally:
        proc.terminate()
        proc.wait(20)


def test_bad_arguments_give_one_clear_line(tmp_path: Path) -> None:
    assert "no such directory" in one_error_line("serve", str(tmp_path / "missing"))
    (tmp_path / "file").write_text("")
    assert "not a directory" in one_error_line("serve", str(tmp_path / "file"))
    assert "unknown transport" in one_error_line("serve", str(tmp_path), "--listen", "udp:1:2")
    assert "expected tcp:HOST:PORT" in one_error_line("serve", str(tmp_path), "--listen", "tcp:5")
    assert "bad port" in one_error_line("serve", str(tmp_path), "--listen", "tcp:127.0.0.1:99999")
    assert "bad --export" in one_error_line("serve", "--export", "nopath")
    assert "--msize" in one_error_line("serve", str(tmp_path), "--msize", "100")
    assert "used twice" in one_error_line(
        "serve", "--export", f"x={tmp_path}", "--export", f"x={tmp_path}"
    )
    assert "fd:99" in one_error_line("serve", str(tmp_path), "--listen", "fd:99")


def test_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = one_error_line("serve", str(tmp_path), "--listen", f"tcp:127.0.0.1:{port}")
        assert "in use" in line


def test_help_and_no_command() -> None:
    r = subprocess.run([*P9SHARE], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "serve" in r.stdout
    r = subprocess.run([*P9SHARE, "serve", "--help"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "--export" in r.stdout
