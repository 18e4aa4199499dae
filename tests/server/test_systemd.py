"""systemd socket activation and readiness notification: the parsing, and a
real `p9share serve` started by systemd-socket-activate with a NOTIFY_SOCKET
that the test owns; the unit files pass `systemd-analyze verify`."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from p9share.client.raw import RawClient
from p9share.protocol import messages as m
from p9share.server import systemd

CONTRIB = Path(__file__).resolve().parents[2] / "contrib" / "systemd"
ACTIVATE = shutil.which("systemd-socket-activate")
needs_activate = pytest.mark.skipif(ACTIVATE is None, reason="systemd-socket-activate missing")


# ------------------------------------------------------------- parsing --


def test_passed_sockets_by_name_and_only_for_this_process() -> None:
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "2", "LISTEN_FDNAMES": "vm1:vm1-fs"}
    r, w = os.pipe()  # fds that exist; which ones does not matter to the parsing
    try:
        assert systemd.passed_sockets(env) == {"vm1": 3, "vm1-fs": 4}
    finally:
        os.close(r)
        os.close(w)
    assert env == {}  # consumed: a child must not take them for its own
    other = {"LISTEN_PID": "1", "LISTEN_FDS": "1"}
    assert systemd.passed_sockets(other) == {}
    assert systemd.passed_sockets({}) == {}


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"LISTEN_FDS": "x"}, "not a count"),
        ({"LISTEN_FDS": "2", "LISTEN_FDNAMES": "a"}, "names 1 sockets"),
        ({"LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:a"}, "two passed sockets"),
    ],
)
def test_bad_activation_variables_are_one_clear_error(env: dict[str, str], says: str) -> None:
    env["LISTEN_PID"] = str(os.getpid())
    with pytest.raises(systemd.ActivationError, match=says):
        systemd.passed_sockets(env)


def test_every_listener_passed_and_every_passed_socket_named() -> None:
    assert systemd.resolve(["vm1"], {"vm1": 3}) == {"vm1": 3}
    with pytest.raises(systemd.ActivationError, match="systemd:vm2: no socket of that name"):
        systemd.resolve(["vm2"], {"vm1": 3})
    with pytest.raises(systemd.ActivationError, match="'vm1' is named by no listener"):
        systemd.resolve([], {"vm1": 3})


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(tmp_path / "notify"))
    s.settimeout(30)
    yield s
    s.close()


def test_notifier_sends_datagrams_and_watchdog(
    notify_socket: socket.socket, tmp_path: Path
) -> None:
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "200000"}
    n = systemd.Notifier(env)
    assert n.watchdog_interval == pytest.approx(0.1)
    n.ready("serving\nsomething")
    assert notify_socket.recv(4096) == b"READY=1\nSTATUS=serving something"
    assert n.tick() <= 0.1 + 1e-9  # the next WATCHDOG=1 is due in one interval
    assert notify_socket.recv(4096) == b"WATCHDOG=1"
    n.close()
    assert not systemd.Notifier({}).notify(READY=1)  # nobody to tell: a no-op


# --------------------------------------------------------------- live --


def messages(s: socket.socket, until: bytes, timeout: float = 30) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s.settimeout(max(0.1, deadline - time.monotonic()))
        got.append(s.recv(4096))
        if until in got[-1]:
            return got
    raise AssertionError(f"no {until!r} in {got}")


def activate(tmp_path: Path, fdname: str, *serve_args: str) -> subprocess.Popen[str]:
    assert ACTIVATE is not None
    env = dict(os.environ, NOTIFY_SOCKET=str(tmp_path / "notify"))
    passthrough = [f"-E{k}" for k in ("PATH", "PYTHONPATH", "NOTIFY_SOCKET") if k in env]
    return subprocess.Popen(
        [ACTIVATE, "-l", str(tmp_path / "vm.sock"), f"--fdname={fdname}", *passthrough,
         sys.executable, "-m", "p9share", "serve", *serve_args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def connect_when_listening(path: Path) -> RawClient:
    deadline = time.monotonic() + 20
    while True:
        try:
            return RawClient.connect(f"unix:{path}", timeout=20)
        except (FileNotFoundError, ConnectionRefusedError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@needs_activate
def test_socket_activation_readiness_reload_and_stop(
    tmp_path: Path, notify_socket: socket.socket
) -> None:
    (tmp_path / "share").mkdir()
    (tmp_path / "share" / "hello").write_text("hi")
    policy = tmp_path / "policy.toml"
    policy.write_text(
        textwrap.dedent(f"""
        [server]
        listen = [{{ address = "systemd:vm1", name = "vm1" }}]
        [exports.share]
        path = "{tmp_path}/share"
        [clients.vm1]
        match = {{ listener = "vm1" }}
        exports = {{ share = "ro" }}
    """)
    )
    proc = activate(tmp_path, "vm1", "--config", str(policy), "--landlock", "off")
    try:
        # systemd-socket-activate starts the server on the first connection
        cl = connect_when_listening(tmp_path / "vm.sock")
        got = messages(notify_socket, b"READY=1")
        assert b"STATUS=serving 1 listeners" in got[-1]
        cl.version()
        cl.attach(0, "")  # identified by the passed socket's name: client vm1
        cl.walk(0, 1, ["hello"])
        assert isinstance(cl.rpc(m.Tgetattr(1, 0x7FF)), m.Rgetattr)
        proc.send_signal(signal.SIGHUP)
        got = messages(notify_socket, b"READY=1")
        assert got[0].startswith(b"RELOADING=1\nMONOTONIC_USEC=")
        assert b"policy reloaded" in got[-1]
        cl.close()
        proc.send_signal(signal.SIGTERM)
        assert messages(notify_socket, b"STOPPING=1")
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.stderr is not None
    err = proc.stderr.read()
    assert "serving on systemd:vm1 (fd 3)" in err, err


@needs_activate
@pytest.mark.parametrize(
    ("listen", "says"),
    [
        ("systemd:vm2", "listener systemd:vm2: no socket of that name was passed "
                        "(FileDescriptorName=; passed: vm1)"),
        ("unix:{tmp}/other.sock", "passed socket 'vm1' is named by no listener "
                                  "(add --listen systemd:vm1)"),
    ],
)  # fmt: skip
def test_activation_mismatch_is_one_error_line(tmp_path: Path, listen: str, says: str) -> None:
    proc = activate(tmp_path, "vm1", str(tmp_path), "--listen", listen.format(tmp=tmp_path))
    try:
        connect_when_listening(tmp_path / "vm.sock").close()
        assert proc.wait(20) == 2
        assert proc.stderr is not None
        # systemd-socket-activate says what it does on the same stderr
        ours = [ln for ln in proc.stderr.read().splitlines() if ln.startswith("p9share")]
        assert ours == [f"p9share: error: {says}"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --------------------------------------------------------- unit files --


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_unit_files_verify(tmp_path: Path) -> None:
    for f in CONTRIB.iterdir():
        text = f.read_text().replace("/usr/local/bin/p9share", sys.executable)
        name = f.name.replace("@.", "@vm1.")  # a template is verified as an instance
        (tmp_path / name).write_text(text)
    units = sorted(str(p) for p in tmp_path.iterdir())
    assert len(units) == 3
    r = subprocess.run(["systemd-analyze", "verify", *units], capture_output=True, text=True,
                       timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == "", r.stderr
